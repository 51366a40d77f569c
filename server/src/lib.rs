//! assetsync's server.
//!
//! - [`server`]: the axum app (`/sync` WebSocket endpoint plus static files) and [`server::run`].
//! - [`session`]: one WebSocket connection, answering requests in order and pushing changes.
//! - [`watch`]: watches the root, re-indexes changed assets once and announces them.
//! - [`bus`]: the Redis change bus between instances that serve one build folder (`--bus`).
//! - [`encode`]: zstd compression of missing chunks against the client's old version.
//! - [`index`]: asset path -> current manifest and bytes, re-indexed only when the file changes,
//!   with a bounded history of versions; confines every path to its root.
//! - [`roots`]: where asset paths lead on disk: `--root`, or the modules' folders.
//! - [`modules`]: modules and users (`--config`): who may read and write what, and limits.
//! - [`offload`]: large answers put in immutable objects that clients fetch over HTTP, through
//!   a CDN (`--offload-url`), and the `/offload` endpoint that serves them.
//! - [`shared`]: the object store (S3) shared between instances: versions and answers.
//! - [`store`]: the version store on disk, which keeps remembered versions across restarts.
//! - `warm`: best-level answers for a new version's likely first clients, computed ahead.
//! - `limit`: per-connection request and byte rates, which slow a connection down.
//! - [`origin`]: which web pages may connect (cross-site WebSocket hijacking).
//! - [`forwarded`]: the client's address behind a trusted reverse proxy (`X-Forwarded-For`).
//! - [`demo`]: the built-in demo folder and its "rebuild" endpoint.
//! - [`upstream`]: an edge's upstream (`--upstream`), as its follower reports it.
//! - `status`: `GET /status`, and the byte counts of every socket.
//!
//! All sync logic lives in `assetsync-protocol`; this crate does the I/O around it. It knows
//! nothing of the native client (`assetsync-client`).

pub mod bus;
pub mod demo;
pub mod encode;
pub mod forwarded;
pub mod index;
mod limit;
pub mod modules;
pub mod offload;
pub mod origin;
pub mod roots;
pub mod server;
mod session;
pub mod shared;
mod status;
pub mod store;
pub mod upstream;
mod warm;
pub mod watch;
mod write;

pub use index::StoreConfig;
pub use server::{ServeConfig, SessionLimits, run};
