//! The pure core of assetsync: everything both ends of a sync agree on, with no I/O.
//!
//! - [`chunk`]: FastCDC v2020 cutting and SHA-256 [`ChunkId`]s; [`VerifiedChunk`] is the only
//!   form in which chunk bytes may enter a store.
//! - [`manifest`]: [`Manifest`] (one asset version's recipe), its [`VersionId`], and the
//!   [`RecipeOp`] delta that sends a new manifest relative to one the client holds.
//! - [`Have`]: the client's digest, version ids or a compact [`ChunkSet`].
//! - [`message`]: the wire contract, JSON [`ClientMessage`]/[`ServerMessage`] and binary
//!   [`ChunkFrame`]s.
//! - [`plan`]: the server's decision of what to answer and which chunks to send.
//! - [`compress`]: decoding of chunk batches compressed against a file the client holds.
//! - [`offload`]: large answers fetched over plain HTTP, through any CDN.
//! - [`patch`]: binary patches (bsdiff's method) for compiled assets such as WebAssembly.
//! - [`pack`]: small new files of a folder answer, many to a compressed frame.
//! - [`upload`]: uploads, a new version sent to the server as a delta, with the same pieces.
//! - [`varint`]: the LEB128 numbers of packs, patches and WebAssembly maps (and of the browser
//!   store's pointer table).
//! - [`wasm`]: WebAssembly-aware preprocessing of binary patches (Courgette's idea).
//! - [`client`]: the client's sans-IO [`ClientSync`] machine for one answer.
//! - [`engine`]: the whole client policy (retry, resume, commit, folders) as sans-IO machines
//!   that both drivers run.
//!
//! This crate never touches sockets, files, clocks or IndexedDB, so it cannot fail for I/O
//! reasons and compiles unchanged for `wasm32-unknown-unknown`.

pub mod chunk;
pub mod client;
pub mod compress;
pub mod engine;
mod error;
mod hash;
mod have;
pub mod manifest;
pub mod message;
pub mod offload;
pub mod pack;
pub mod patch;
mod path;
pub mod plan;
pub mod shape;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod upload;
pub mod varint;
pub mod wasm;

pub use chunk::{ChunkId, ChunkParams, ChunkRef, VerifiedChunk, chunk_data};
pub use client::{Assembled, ClientSync, Event, MAX_HELD, MAX_REQUESTS, Synced, held_chunk_ids};
pub use error::Error;
pub use hash::Hash;
pub use have::{ChunkSet, Have};
pub use manifest::{Applied, MAX_CHUNKS, Manifest, RecipeOp, UNKNOWN_ID, VersionId, apply, cut_runs, diff};
pub use message::{
    BATCH_PART, ChunkFrame, ClientMessage, ErrorCode, FolderEntry, LISTING_PAGE, Limits,
    OLDEST_PROTOCOL_VERSION, Offloaded, PAGES_ENCODING, PROTOCOL_VERSION, ServerMessage, Update,
    UploadRequest,
};
pub use path::{AssetPath, Scope};
pub use plan::{
    ClientView, FolderChanges, Plan, apply_listing_delta, ask_for_chunks, client_holds, folder_changes,
    folder_listing, folder_sends, folder_version, listing_delta, listing_pages, plan,
};
