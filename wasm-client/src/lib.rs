//! assetsync's browser client: the protocol crate's [`ClientSync`] machine driven over a browser
//! WebSocket ([`socket`]), with verified results committed to IndexedDB ([`store`]).
//!
//! JS API (TypeScript definitions are generated alongside the glue):
//!
//! ```js
//! import init, { SyncClient } from "/pkg/assetsync.js";
//! await init();
//! const client = await SyncClient.connect("ws://127.0.0.1:8080/sync", { db: "assetsync" });
//! const result = await client.sync("js/app.js", (p) => console.log(p.receivedBytes, p.totalBytes));
//! result.bytes(); result.stats;
//! const saved = await client.upload("js/app.js", edited, { onProgress: (p) => {} });
//! saved.stats.chunksSent;
//! await client.read("js/app.js");
//! await client.gc();
//! client.close();
//! ```
//!
//! Errors cross into JS as `Error` objects here, at the API edge, and nowhere else.

mod client;
mod digest;
mod download;
mod drive;
mod folder;
mod global;
mod socket;
mod store;
mod subscribe;
mod task;
mod upload;
#[cfg(feature = "worker")]
mod worker;

use std::rc::Rc;

use assetsync_protocol::{AssetPath, Scope, VersionId};
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

pub(crate) use crate::client::{Bytes, Client, next};
use crate::socket::SocketError;

/// Talc instead of the standard library's dlmalloc: a smaller `.wasm` (2.5 KiB gzip), and as
/// fast in the browser benchmark.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options for `SyncClient.connect`. */
export interface ConnectOptions {
  /** IndexedDB database name (default "assetsync"). */
  db?: string;
  /**
   * Keep the last verified bytes of each synced asset in memory (default true), so that a sync
   * finding the asset unchanged answers without reading and hashing it again.
   */
  memoryCache?: boolean;
  /** The server's shared secret, for a server started with `--token-file`. */
  token?: string;
}
/**
 * Passed to the `sync` progress callback as chunk bytes arrive: at the start, every 64 KiB of
 * the transfer, and at the end. Within a compressed batch, `receivedBytes` counts its chunks in
 * proportion to its compressed bytes received.
 */
export interface SyncProgress {
  receivedBytes: number;
  totalBytes: number;
}
/** Options for `upload`. */
export interface UploadOptions {
  /** The version id (hex) the bytes were made from; by default the one this client last synced. */
  base?: string;
  /** Called as the chunks are sent. */
  onProgress?: (p: UploadProgress) => void;
}
/** Passed to the `upload` progress callback. */
export interface UploadProgress {
  sentBytes: number;
  totalBytes: number;
}
/** What one sync did. */
export interface SyncStats {
  /** Committed version id (hex). */
  version: string;
  /** Asset size in bytes. */
  bytes: number;
  /** Manifest entries. */
  chunks: number;
  /** Entries taken from the local store instead of the network. */
  chunksReused: number;
  /** Message payload bytes received / sent for this sync (WebSocket framing excluded). */
  wireBytesIn: number;
  wireBytesOut: number;
  /** Body bytes of answers the server offloaded to HTTP (its `--offload-url`), not counted in
   *  `wireBytesIn`. */
  httpBytesIn: number;
  /** Wall time, commit included. */
  elapsedMs: number;
  /** `sync` requests made: 1, or more when the server did not know the cached version or the
   *  data failed verification. */
  requests: number;
  /** Whether an attempt failed verification and was retried. */
  retried: boolean;
  /** Connections lost during this sync and resumed: chunks that had arrived were kept. */
  reconnects: number;
  /** Time spent in IndexedDB (reading reused chunks, committing). */
  storeMs: number;
  /** Time spent rebuilding the file and checking its SHA-256. */
  verifyMs: number;
  /** Time spent rebuilding the file from a binary patch (0 when the answer was not one). */
  patchMs: number;
  /** `upload` only: distinct chunks whose bytes were sent. */
  chunksSent?: number;
}
/** Passed to a `subscribe` callback when an asset it covers changed on the server. */
export interface AssetUpdate {
  /** The asset. */
  asset: string;
  /** Its new version id (hex); null when it was removed on the server, and so locally. */
  version: string | null;
  /** The verified new copy, already committed. */
  result?: SyncResult;
  /** Why syncing the change failed; the previous copy is still readable. */
  error?: Error;
}
/** What `syncFolder` did. */
export interface FolderResult {
  folder: string;
  /** Files the server lists in the folder. */
  files: number;
  /** New and changed files, fetched, verified and committed. */
  fetched: string[];
  /** Files deleted from the store because the server no longer has them. */
  removed: string[];
  wireBytesIn: number;
  wireBytesOut: number;
  /** Body bytes of answers fetched over HTTP (see `SyncStats.httpBytesIn`). */
  httpBytesIn: number;
  elapsedMs: number;
  /** Connections lost during this folder sync and resumed. */
  reconnects: number;
  /** The folder's version now committed (hex): the same files, the same version. */
  version: string;
}
/** What `gc` freed. */
export interface GcReport {
  /** Chunks kept from transfers that broke and never committed. */
  chunksDeleted: number;
  /** Stored files of versions no asset points to any more. */
  versionsDeleted: number;
  /** Packs of small files (committed together) none of which an asset points to any more. */
  packsDeleted: number;
  bytesFreed: number;
}
"#;

fn js_error(message: impl std::fmt::Display) -> JsError {
    JsError::new(&message.to_string())
}

impl From<SocketError> for JsError {
    fn from(e: SocketError) -> Self {
        js_error(e.0)
    }
}

/// A connection to an assetsync server plus the local IndexedDB store.
///
/// The socket is opened by `connect` (or by the first `sync` after `open`). When it is lost in
/// the middle of a request, the client keeps the chunks that arrived (in IndexedDB), reconnects
/// with backoff and asks again for the rest; lost between requests, it is reopened by the next
/// one. The lock around it serialises syncs: a second `sync` waits until
/// the first has read its whole answer, so at most one request is in flight (browser WebSockets
/// have no backpressure).
#[wasm_bindgen]
pub struct SyncClient {
    inner: Rc<Client>,
}

/// The verified result of one sync.
#[wasm_bindgen]
pub struct SyncResult {
    asset: AssetPath,
    version: VersionId,
    /// Where it already is (see [`Bytes`]); copied for JS by `bytes()`.
    data: Bytes,
    stats: drive::Stats,
}

#[wasm_bindgen]
impl SyncResult {
    /// The verified asset bytes.
    pub fn bytes(&self) -> Uint8Array {
        self.data.to_js()
    }

    /// Statistics of the sync.
    #[wasm_bindgen(getter, unchecked_return_type = "SyncStats")]
    pub fn stats(&self) -> JsValue {
        self.stats.to_js()
    }
}

#[wasm_bindgen]
impl SyncClient {
    /// Opens the IndexedDB store and connects to `url` (`ws://host:port/sync`); rejects if the
    /// server cannot be reached.
    pub async fn connect(
        url: String,
        #[wasm_bindgen(unchecked_optional_param_type = "ConnectOptions")] options: Option<Object>,
    ) -> Result<SyncClient, JsError> {
        // The store opens while the socket connects.
        let (client, socket) = Client::open(url, options, true).await?;
        let inner = Rc::new(client);
        let socket = inner.greet(socket.expect("opened above")).await?;
        *inner.socket.lock().await = Some(socket);
        Ok(SyncClient { inner })
    }

    /// Opens the IndexedDB store only; the connection is made by the first `sync`. For offline
    /// starts: `read` works without a server.
    pub async fn open(
        url: String,
        #[wasm_bindgen(unchecked_optional_param_type = "ConnectOptions")] options: Option<Object>,
    ) -> Result<SyncClient, JsError> {
        Ok(SyncClient { inner: Rc::new(Client::open(url, options, false).await?.0) })
    }

    /// Syncs `asset`, calling `on_progress({receivedBytes, totalBytes})` as chunks arrive, and
    /// commits the verified result. A connection lost mid-transfer is resumed: the client
    /// reconnects with backoff (up to 8 times) and fetches only what had not arrived. Rejects
    /// with an `Error` saying what failed; the previous version stays readable.
    pub async fn sync(
        &self,
        asset: String,
        #[wasm_bindgen(unchecked_optional_param_type = "(p: SyncProgress) => void")] on_progress: Option<
            Function,
        >,
    ) -> Result<SyncResult, JsError> {
        self.inner.usable()?;
        self.inner.sync(asset, on_progress).await
    }

    /// Uploads `bytes` as the new version of `asset` (the server must run with `--allow-write`,
    /// and this client connect with its token), sending only the chunks the server lacks, then
    /// commits it here too, so that `read` returns it and a sync finds it current. The upload
    /// is made from `options.base`, a version id (hex) the bytes were edited from, or by default
    /// from the version this client last synced or uploaded (none: the asset must not exist on
    /// the server yet); if the server's file is another version by then, it rejects with a
    /// `conflict` error and nothing is written. `options.onProgress({sentBytes, totalBytes})`
    /// follows the chunks sent. A connection lost mid-upload is resumed without sending again
    /// what the server kept. Resolves with the same stats as `sync`, plus `chunksSent`.
    pub async fn upload(
        &self,
        asset: String,
        bytes: Vec<u8>,
        #[wasm_bindgen(unchecked_optional_param_type = "UploadOptions")] options: Option<Object>,
    ) -> Result<SyncResult, JsError> {
        self.inner.usable()?;
        self.inner.upload(asset, bytes, options).await
    }

    /// Syncs a whole folder (`"dist/"`, or `""` for the whole root) in one round trip: fetches
    /// and commits every new or changed file, each verified, and deletes from the store the
    /// files the server no longer has. Chunks shared by several files cross the wire once.
    #[wasm_bindgen(js_name = syncFolder, unchecked_return_type = "FolderResult")]
    pub async fn sync_folder(&self, folder: String) -> Result<JsValue, JsError> {
        self.inner.usable()?;
        let scope = Scope::new(&folder).map_err(js_error)?;
        Ok(self.inner.sync_folder(&scope).await?.to_js(&scope))
    }

    /// Follows `path` (an asset, a folder ending in `/`, or `""` for everything): whenever the
    /// server announces that an asset inside it changed, the client syncs and commits it, then
    /// calls `on_update({asset, version, result})`; for an asset removed on the server it deletes
    /// the local copy and calls `on_update({asset, version: null})`; a failed sync is reported as
    /// `{asset, version, error}`. Resolves once the server confirmed the subscription. If the
    /// connection drops, the client reconnects with backoff, subscribes again and brings `path`
    /// up to date (a folder with `syncFolder`), reporting what changed meanwhile.
    pub async fn subscribe(
        &self,
        path: String,
        #[wasm_bindgen(unchecked_param_type = "(u: AssetUpdate) => void")] on_update: Function,
    ) -> Result<(), JsError> {
        self.inner.usable()?;
        self.inner.subscribe(path, on_update).await
    }

    /// The cached, verified copy of `asset`, without using the network; `null` if none.
    #[wasm_bindgen(unchecked_return_type = "Uint8Array | null")]
    pub async fn read(&self, asset: String) -> Result<JsValue, JsError> {
        self.inner.usable()?;
        self.inner.read(asset).await
    }

    /// Deletes stored chunks and manifests that no committed version references.
    #[wasm_bindgen(unchecked_return_type = "GcReport")]
    pub async fn gc(&self) -> Result<JsValue, JsError> {
        self.inner.usable()?;
        self.inner.gc().await
    }

    /// Closes the connection (failing a sync in flight with "connection lost"), ends
    /// subscriptions, and closes the database.
    pub fn close(&self) {
        self.inner.close();
    }
}

/// Calls `on_progress({[done_key]: done, totalBytes: total})`: `receivedBytes` for a sync,
/// `sentBytes` for an upload.
fn report_progress(on_progress: Option<&Function>, done_key: &str, done: u64, total: u64) {
    if let Some(f) = on_progress {
        let p = Object::new();
        Reflect::set(&p, &done_key.into(), &(done as f64).into()).expect("plain object");
        Reflect::set(&p, &"totalBytes".into(), &(total as f64).into()).expect("plain object");
        // A throwing callback must not break the sync.
        let _ = f.call1(&JsValue::NULL, &p);
    }
}

thread_local! {
    /// The global scope's `performance`, found once: a folder sync asks the time tens of
    /// thousands of times, and each lookup is three calls into JavaScript.
    static PERFORMANCE: Option<web_sys::Performance> = global::Global::get().and_then(|g| g.performance());
}

fn now_ms() -> f64 {
    PERFORMANCE.with(|p| p.as_ref().map_or_else(js_sys::Date::now, web_sys::Performance::now))
}

/// SHA-256 of `data` as lowercase hex, computed in WASM: for pages that check bytes they got
/// elsewhere, and for comparing with `crypto.subtle.digest` in the browser benchmark.
#[wasm_bindgen(js_name = sha256Hex)]
pub fn sha256_hex(data: &[u8]) -> String {
    assetsync_protocol::Hash::of(data).to_hex()
}

/// Decodes one zstd frame with the decoder the client uses for compressed chunk batches, with
/// `prefix` as the raw-content history it was compressed against (`zstd --patch-from`), refusing
/// output over `maxLen` bytes: for tools, and for measuring the decoder in the browser benchmark.
#[wasm_bindgen(js_name = zstdDecompress)]
pub fn zstd_decompress(
    frame: &[u8],
    prefix: Option<Vec<u8>>,
    #[wasm_bindgen(js_name = maxLen)] max_len: usize,
) -> Result<Vec<u8>, JsError> {
    assetsync_protocol::compress::decompress(frame, prefix.as_deref(), max_len).map_err(js_error)
}
