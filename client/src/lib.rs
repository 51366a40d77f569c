//! assetsync's native client.
//!
//! - [`pull`]: `pull` and `pull --follow`, and the events they report.
//! - [`push`]: `push`, uploads of new versions (only the chunks the server lacks).
//! - [`status`]: a server's `/status` (`assetsync status`).
//! - `connection`: one WebSocket connection (tokio-tungstenite over a byte-counting stream),
//!   the handshake, reconnection, subscriptions and pushed changes.
//! - `download`: offloaded answers over HTTP(S) (reqwest), resumed with `Range`.
//! - `drive`: runs the protocol crate's engine machines over a connection and the cache.
//! - `shape`: a pulled folder's folders, links and modes made the server's.
//! - [`cache`]: the on-disk chunk cache, committed by atomic renames.
//! - [`Error`]: why a pull failed, and whether reconnecting can help.
//!
//! Every sync decision is the protocol crate's engine; this crate moves bytes. It knows nothing
//! of the server (no axum, no file watching); its zstd encoder compresses uploads.

pub mod cache;
mod connection;
mod download;
mod drive;
mod error;
pub mod pull;
pub mod push;
mod shape;
pub mod status;

pub use error::{CacheError, Error};
