//! assetsync's server and native client.
//!
//! - [`server`]: the axum app (`/sync` WebSocket endpoint plus static files) and [`server::run`].
//! - [`session`]: one WebSocket connection, answering requests in order and pushing changes.
//! - [`watch`]: watches the root, re-indexes changed assets once and announces them.
//! - [`encode`]: zstd compression of missing chunks against the client's old version.
//! - [`index`]: asset path -> current manifest and bytes, re-indexed only when the file changes,
//!   with a bounded history of versions; confines every path to the root.
//! - `limit`: per-connection request and byte rates, which slow a connection down.
//! - [`origin`]: which web pages may connect (cross-site WebSocket hijacking).
//! - [`pull`]: the native client, driving the protocol crate's `ClientSync` over tokio-tungstenite.
//! - [`cache`]: the native client's on-disk chunk cache, committed by atomic renames.
//! - [`demo`]: the built-in demo folder and its "rebuild" endpoint.
//!
//! All sync logic lives in `assetsync-protocol`; this crate does the I/O around it.

pub mod cache;
pub mod demo;
pub mod encode;
pub mod index;
mod limit;
pub mod origin;
pub mod pull;
pub mod server;
mod session;
pub mod watch;

pub use server::{ServeConfig, SessionLimits, run};
