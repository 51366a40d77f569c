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
//! await client.read("js/app.js");
//! await client.gc();
//! client.close();
//! ```
//!
//! Errors cross into JS as `Error` objects here, at the API edge, and nowhere else.

mod socket;
mod store;

use std::cell::Cell;

use assetsync_protocol::{
    AssetPath, ChunkId, ClientMessage, ClientSync, Error as SyncError, Event, Manifest, PROTOCOL_VERSION,
    ServerMessage, Synced,
};
use futures_util::StreamExt;
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::socket::{Incoming, Socket, SocketError};
use crate::store::{Store, StoreError};

/// How many other cached assets' versions accompany each request.
const MAX_OTHER_VERSIONS: usize = 64;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options for `SyncClient.connect`. */
export interface ConnectOptions {
  /** IndexedDB database name (default "assetsync"). */
  db?: string;
}
/** Passed to the `sync` progress callback as chunk bytes arrive. */
export interface SyncProgress {
  receivedBytes: number;
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
  /** Wall time, commit included. */
  elapsedMs: number;
  /** Whether the first attempt failed verification and was retried. */
  retried: boolean;
}
/** What `gc` freed. */
export interface GcReport {
  chunksDeleted: number;
  bytesFreed: number;
}
"#;

fn js_error(message: impl std::fmt::Display) -> JsError {
    JsError::new(&message.to_string())
}

impl From<StoreError> for JsError {
    fn from(e: StoreError) -> Self {
        js_error(e.0)
    }
}

impl From<SocketError> for JsError {
    fn from(e: SocketError) -> Self {
        js_error(e.0)
    }
}

/// A connection to an assetsync server plus the local IndexedDB store.
#[wasm_bindgen]
pub struct SyncClient {
    socket: Socket,
    store: Store,
    next_id: Cell<u32>,
    sent: Cell<u64>,
}

/// The verified result of one sync.
#[wasm_bindgen]
pub struct SyncResult {
    data: Vec<u8>,
    stats: Object,
}

#[wasm_bindgen]
impl SyncResult {
    /// The verified asset bytes.
    pub fn bytes(&self) -> Uint8Array {
        Uint8Array::from(self.data.as_slice())
    }

    /// Statistics of the sync.
    #[wasm_bindgen(getter, unchecked_return_type = "SyncStats")]
    pub fn stats(&self) -> JsValue {
        self.stats.clone().into()
    }
}

#[wasm_bindgen]
impl SyncClient {
    /// Connects to `url` (`ws://host:port/sync`) and opens the IndexedDB store.
    pub async fn connect(
        url: String,
        #[wasm_bindgen(unchecked_param_type = "ConnectOptions")] options: Option<Object>,
    ) -> Result<SyncClient, JsError> {
        let db = options
            .and_then(|o| Reflect::get(&o, &"db".into()).ok())
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| "assetsync".into());
        let store = Store::open(&db).await?;
        let socket = Socket::open(&url).await?;
        let client = SyncClient { socket, store, next_id: Cell::new(1), sent: Cell::new(0) };
        let agent = concat!("assetsync-wasm/", env!("CARGO_PKG_VERSION")).to_owned();
        client.send(&ClientMessage::Hello { protocol: PROTOCOL_VERSION, agent })?;
        let mut rx = client.socket.receiver().lock().await;
        match next_message(&mut rx).await? {
            ServerMessage::Welcome { protocol: PROTOCOL_VERSION, .. } => {}
            ServerMessage::Error { message, .. } => {
                return Err(js_error(format!("server refused: {message}")));
            }
            other => return Err(js_error(format!("unexpected handshake answer: {other:?}"))),
        }
        drop(rx);
        Ok(client)
    }

    /// Syncs `asset`, calling `on_progress({receivedBytes, totalBytes})` as chunks arrive, and
    /// commits the verified result. Rejects with an `Error` saying what failed.
    pub async fn sync(
        &self,
        asset: String,
        #[wasm_bindgen(unchecked_param_type = "(p: SyncProgress) => void")] on_progress: Option<Function>,
    ) -> Result<SyncResult, JsError> {
        let started = now_ms();
        let asset = AssetPath::new(&asset).map_err(js_error)?;
        // One sync at a time per connection: the lock is held until the answer is fully read.
        let mut rx = self.socket.receiver().lock().await;
        let (in0, out0) = (self.socket.received_bytes(), self.sent.get());
        let base = self.store.current(&asset).await?;
        let others = self.store.others(&asset, MAX_OTHER_VERSIONS).await?;
        let mut outcome =
            self.attempt(&mut rx, &asset, base, others, Vec::new(), on_progress.as_ref()).await?;
        let mut retried = false;
        if let Err((error, held)) = outcome {
            retried = true;
            web_sys::console::warn_1(&format!("assetsync: {asset}: {error}; retrying once").into());
            outcome = self.attempt(&mut rx, &asset, None, Vec::new(), held, on_progress.as_ref()).await?;
        }
        let synced =
            outcome.map_err(|(e, _)| js_error(format!("{asset}: verification failed after retry: {e}")))?;
        self.store.commit(&synced).await.map_err(|e| js_error(format!("{asset}: {}", e.0)))?;
        let stats = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&stats, &k.into(), &v).expect("set on a plain object");
        set("version", synced.version.to_hex().into());
        set("bytes", (synced.manifest.len as f64).into());
        set("chunks", (synced.manifest.chunks.len() as f64).into());
        set("chunksReused", (synced.chunks_reused as f64).into());
        set("wireBytesIn", ((self.socket.received_bytes() - in0) as f64).into());
        set("wireBytesOut", ((self.sent.get() - out0) as f64).into());
        set("elapsedMs", (now_ms() - started).into());
        set("retried", retried.into());
        Ok(SyncResult { data: synced.data, stats })
    }

    /// The cached, verified copy of `asset`, without using the network; `null` if none.
    pub async fn read(&self, asset: String) -> Result<Option<Uint8Array>, JsError> {
        let asset = AssetPath::new(&asset).map_err(js_error)?;
        Ok(self.store.read(&asset).await?.map(|d| Uint8Array::from(d.as_slice())))
    }

    /// Deletes stored chunks and manifests that no committed version references.
    #[wasm_bindgen(unchecked_return_type = "GcReport")]
    pub async fn gc(&self) -> Result<JsValue, JsError> {
        let report = self.store.gc().await?;
        let out = Object::new();
        Reflect::set(&out, &"chunksDeleted".into(), &report.chunks_deleted.into()).expect("plain object");
        Reflect::set(&out, &"bytesFreed".into(), &(report.bytes_freed as f64).into()).expect("plain object");
        Ok(out.into())
    }

    /// Closes the connection and the database.
    pub fn close(&self) {
        self.socket.close();
        self.store.close();
    }
}

type Receiver = futures_channel::mpsc::UnboundedReceiver<Incoming>;

/// An attempt's data error, with the chunks still held intact to name in the retry's digest.
type DataError = (SyncError, Vec<ChunkId>);

impl SyncClient {
    fn send(&self, message: &ClientMessage) -> Result<(), JsError> {
        let text = serde_json::to_string(message).expect("client messages serialise");
        self.sent.set(self.sent.get() + text.len() as u64);
        Ok(self.socket.send_text(&text)?)
    }

    /// One request and its whole answer. `Err` is fatal; `Ok(Err(..))` is bad data worth a retry.
    async fn attempt(
        &self,
        rx: &mut Receiver,
        asset: &AssetPath,
        base: Option<Manifest>,
        others: Vec<Manifest>,
        have_chunks: Vec<ChunkId>,
        on_progress: Option<&Function>,
    ) -> Result<Result<Synced, DataError>, JsError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (mut machine, request) = ClientSync::new(id, asset.clone(), base, others, have_chunks);
        self.send(&request)?;
        loop {
            let event = match next(rx).await? {
                Incoming::Text(text) => machine.on_message(parse(&text)?),
                Incoming::Binary(frame) => machine.on_frame(&frame),
                Incoming::Open | Incoming::Closed { .. } => unreachable!("handled by next()"),
            };
            match event {
                Ok(Event::Complete) => break,
                Ok(Event::Progress { received, total }) => {
                    if let Some(f) = on_progress {
                        let p = Object::new();
                        Reflect::set(&p, &"receivedBytes".into(), &(received as f64).into())
                            .expect("plain object");
                        Reflect::set(&p, &"totalBytes".into(), &(total as f64).into()).expect("plain object");
                        let _ = f.call1(&JsValue::NULL, &p);
                    }
                }
                Err(e @ SyncError::ChunkMismatch { .. }) => {
                    // Discard the rest of this answer so the retry starts on a clean stream.
                    for _ in 0..machine.pending_frames() {
                        next(rx).await?;
                    }
                    return Ok(Err((e, Vec::new())));
                }
                Err(e) => return Err(js_error(format!("{asset}: {e}"))),
            }
        }
        let local = self.store.chunks(&machine.local_chunks()).await?;
        let held = local.iter().map(|c| c.id()).collect();
        match machine.finish(local) {
            Ok(synced) => Ok(Ok(synced)),
            Err(e @ SyncError::MissingLocal(_)) => Ok(Err((e, held))),
            Err(e @ SyncError::FileMismatch) => Ok(Err((e, Vec::new()))),
            Err(e) => Err(js_error(format!("{asset}: {e}"))),
        }
    }
}

/// The next data message; a closed socket is an error.
async fn next(rx: &mut Receiver) -> Result<Incoming, JsError> {
    match rx.next().await {
        Some(Incoming::Closed { code, reason }) => Err(js_error(format!(
            "connection lost (WebSocket closed with code {code}{}{reason})",
            if reason.is_empty() { "" } else { ": " }
        ))),
        None => Err(js_error("connection lost")),
        Some(Incoming::Open) => Box::pin(next(rx)).await,
        Some(other) => Ok(other),
    }
}

async fn next_message(rx: &mut Receiver) -> Result<ServerMessage, JsError> {
    match next(rx).await? {
        Incoming::Text(text) => parse(&text),
        _ => Err(js_error("expected a control message, got a binary frame")),
    }
}

fn parse(text: &str) -> Result<ServerMessage, JsError> {
    serde_json::from_str(text).map_err(|e| js_error(format!("invalid message from server: {e}")))
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or_else(js_sys::Date::now)
}
