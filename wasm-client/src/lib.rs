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

mod digest;
mod drive;
mod folder;
mod socket;
mod store;
mod subscribe;
mod task;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use assetsync_protocol::engine::{AssetSync, Follow, MAX_OTHER_VERSIONS, Machine};
use assetsync_protocol::{
    AssetPath, ChunkId, ClientMessage, Manifest, PROTOCOL_VERSION, Scope, ServerMessage, VersionId, compress,
};
use futures_channel::oneshot;
use futures_util::lock::Mutex;
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::drive::{Driven, Stopped};
use crate::socket::{Incoming, Socket, SocketError};
use crate::store::{FileRead, Store, StoreError};

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
  elapsedMs: number;
  /** Connections lost during this folder sync and resumed. */
  reconnects: number;
}
/** What `gc` freed. */
export interface GcReport {
  /** Chunks kept from transfers that broke and never committed. */
  chunksDeleted: number;
  /** Stored files of versions no asset points to any more. */
  versionsDeleted: number;
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

/// The client behind a [`SyncClient`], shared with the task that listens for pushed changes.
struct Client {
    url: String,
    socket: Mutex<Option<Socket>>,
    /// The current socket's browser handle, so `close` works while a sync holds the lock.
    raw: RefCell<Option<web_sys::WebSocket>>,
    store: Store,
    /// The current sync's base file, being read and verified while its request is on the wire.
    prefetched: RefCell<Option<(VersionId, Prefetch)>>,
    next_id: Cell<u32>,
    /// Message payload bytes sent and received on all this client's sockets.
    sent: Cell<u64>,
    received: Rc<Cell<u64>>,
    /// The last verified bytes of each asset synced by this client, so that a sync that finds
    /// the asset unchanged need not read and hash it again (`memoryCache: false` turns it off).
    remembered: RefCell<Remembered>,
    memory_cache: bool,
    /// The server's shared secret, sent in `hello`.
    token: Option<String>,
    /// What `subscribe` asked for (each scope once, renewed on every new connection), and the
    /// reconnection backoff.
    follow: RefCell<Follow>,
    /// The page's callbacks, by scope.
    callbacks: RefCell<Vec<(Scope, Function)>>,
    /// Set by `close`: no more reconnecting.
    closed: Cell<bool>,
}

/// The verified result of one sync.
#[wasm_bindgen]
pub struct SyncResult {
    asset: AssetPath,
    version: VersionId,
    /// Where it already is (see [`Bytes`]); copied for JS by `bytes()`.
    data: Bytes,
    stats: Object,
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
        self.stats.clone().into()
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
        self.inner.sync(asset, on_progress).await
    }

    /// Syncs a whole folder (`"dist/"`, or `""` for the whole root) in one round trip: fetches
    /// and commits every new or changed file, each verified, and deletes from the store the
    /// files the server no longer has. Chunks shared by several files cross the wire once.
    #[wasm_bindgen(js_name = syncFolder, unchecked_return_type = "FolderResult")]
    pub async fn sync_folder(&self, folder: String) -> Result<JsValue, JsError> {
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
        self.inner.subscribe(path, on_update).await
    }

    /// The cached, verified copy of `asset`, without using the network; `null` if none.
    #[wasm_bindgen(unchecked_return_type = "Uint8Array | null")]
    pub async fn read(&self, asset: String) -> Result<JsValue, JsError> {
        self.inner.read(asset).await
    }

    /// Deletes stored chunks and manifests that no committed version references.
    #[wasm_bindgen(unchecked_return_type = "GcReport")]
    pub async fn gc(&self) -> Result<JsValue, JsError> {
        self.inner.gc().await
    }

    /// Closes the connection (failing a sync in flight with "connection lost"), ends
    /// subscriptions, and closes the database.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Client {
    /// Opens the store and, with `connect`, a socket (not greeted yet) at the same time.
    async fn open(
        url: String,
        options: Option<Object>,
        connect: bool,
    ) -> Result<(Client, Option<Socket>), JsError> {
        let option = |name: &str| options.as_ref().and_then(|o| Reflect::get(o, &name.into()).ok());
        let db = option("db").and_then(|v| v.as_string()).unwrap_or_else(|| "assetsync".into());
        let memory_cache = option("memoryCache").and_then(|v| v.as_bool()).unwrap_or(true);
        let token = option("token").and_then(|v| v.as_string());
        let received = Rc::default();
        let socket = async {
            match connect {
                true => Socket::open(&url, Rc::clone(&received)).await.map(Some),
                false => Ok(None),
            }
        };
        let (store, socket) = futures_util::future::join(Store::open(&db), socket).await;
        let client = Client {
            url,
            socket: Mutex::new(None),
            raw: RefCell::new(None),
            store: store?,
            prefetched: RefCell::default(),
            next_id: Cell::new(1),
            sent: Cell::new(0),
            received,
            remembered: RefCell::default(),
            memory_cache,
            token,
            follow: RefCell::default(),
            callbacks: RefCell::default(),
            closed: Cell::new(false),
        };
        Ok((client, socket?))
    }

    async fn sync(
        self: &Rc<Self>,
        asset: String,
        on_progress: Option<Function>,
    ) -> Result<SyncResult, JsError> {
        let started = now_ms();
        let asset = AssetPath::new(&asset).map_err(js_error)?;
        let mut guard = self.socket.lock().await;
        let (in0, out0) = (self.received.get(), self.sent.get());
        let (current, others) = futures_util::future::join(
            self.store.current_file(&asset),
            self.store.others(&asset, MAX_OTHER_VERSIONS),
        )
        .await;
        let (base, file) = current?.unzip();
        let mut machine = AssetSync::new(asset.clone(), base, others?, self.next_id.get());
        if digest::subtle() {
            machine.set_driver_hashes();
        }
        self.connected(&mut guard).await?;
        let run =
            self.drive(&mut machine, &mut guard, asset.as_str(), file.flatten(), on_progress.as_ref()).await;
        self.next_id.set(machine.next_id());
        self.prefetched.take();
        let driven = self.stopped(run, &mut guard, asset.as_str())?;
        drop(guard);
        let wire = (self.received.get() - in0, self.sent.get() - out0);
        Ok(self.result(machine.finish(), driven.unchanged, Some(wire), &driven.timings, started))
    }

    /// The outcome of a run; on failure the connection is dropped unless it is still in step.
    fn stopped(
        &self,
        run: Result<Driven, Stopped>,
        socket: &mut Option<Socket>,
        target: &str,
    ) -> Result<Driven, JsError> {
        run.map_err(|stop| {
            if !stop.in_step {
                *socket = None;
            }
            js_error(format!("{target}: {}", stop.message))
        })
    }

    async fn read(&self, asset: String) -> Result<JsValue, JsError> {
        let asset = AssetPath::new(&asset).map_err(js_error)?;
        Ok(match self.store.read(&asset).await? {
            Some(data) => data.into(),
            None => JsValue::NULL,
        })
    }

    async fn gc(&self) -> Result<JsValue, JsError> {
        let report = self.store.gc().await?;
        let out = Object::new();
        Reflect::set(&out, &"chunksDeleted".into(), &report.chunks_deleted.into()).expect("plain object");
        Reflect::set(&out, &"versionsDeleted".into(), &report.versions_deleted.into()).expect("plain object");
        Reflect::set(&out, &"bytesFreed".into(), &(report.bytes_freed as f64).into()).expect("plain object");
        Ok(out.into())
    }

    fn close(&self) {
        self.closed.set(true);
        if let Some(ws) = self.raw.take() {
            let _ = ws.close();
        }
        self.store.close();
    }
}

/// A committed file being read in the background.
type Prefetch = oneshot::Receiver<Result<FileRead, StoreError>>;

/// Per asset: the version last verified by this client, and its bytes.
type Remembered = HashMap<AssetPath, (VersionId, Bytes)>;

/// A verified file's bytes: in WASM memory where this client rebuilt it, on the JS side where it
/// read it back from the store. Each is copied across only when it is used on the other side.
#[derive(Clone)]
pub(crate) enum Bytes {
    Wasm(Rc<Vec<u8>>),
    Js(Uint8Array),
}

impl Bytes {
    /// A copy for JS.
    fn to_js(&self) -> Uint8Array {
        match self {
            Bytes::Wasm(data) => Uint8Array::from(data.as_slice()),
            Bytes::Js(data) => data.slice(0, data.length()),
        }
    }

    /// A copy for WASM.
    fn to_vec(&self) -> Vec<u8> {
        match self {
            Bytes::Wasm(data) => data.as_ref().clone(),
            Bytes::Js(data) => data.to_vec(),
        }
    }
}

impl Client {
    /// The committed file of `manifest`: from memory if this client verified it in this session,
    /// else read back from IndexedDB and verified. `Err` inside names missing or damaged chunks.
    async fn file(&self, manifest: &Manifest) -> Result<Result<Bytes, Vec<ChunkId>>, StoreError> {
        let version = manifest.version();
        let remembered = self.remembered.borrow().get(&manifest.path).filter(|(v, _)| *v == version).cloned();
        if let Some((_, data)) = remembered {
            return Ok(Ok(data));
        }
        let prefetched = self.prefetched.borrow_mut().take_if(|(v, _)| *v == version);
        let read = match prefetched {
            Some((_, loading)) => {
                loading.await.unwrap_or_else(|_| Err(StoreError("read cancelled".into())))?
            }
            None => self.store.file(manifest).await?,
        };
        Ok(read.map(Bytes::Js))
    }

    /// Starts reading and verifying `file`, the committed file of `base`, in the background,
    /// unless this client holds it in memory: whether the answer is `up_to_date` or a delta
    /// against it, the sync needs it, and the read then overlaps the round trip.
    fn prefetch(&self, base: &Manifest, file: Option<web_sys::Blob>) {
        let version = base.version();
        if self.remembered.borrow().get(&base.path).is_some_and(|(v, _)| *v == version) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let base = base.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let _ = tx.send(Store::check(&base, file).await);
        });
        self.prefetched.replace(Some((version, rx)));
    }

    /// Sends `message`; returns its size, or why the connection is lost.
    fn send(&self, socket: &Socket, message: &ClientMessage) -> Result<u64, String> {
        let text = serde_json::to_string(message).expect("client messages serialise");
        self.sent.set(self.sent.get() + text.len() as u64);
        socket.send_text(&text).map_err(|e| e.0)?;
        Ok(text.len() as u64)
    }

    /// The open socket, connecting first if there is none or it has closed since the last
    /// request (a server restart in between is not a lost transfer).
    async fn connected<'a>(
        self: &Rc<Self>,
        socket: &'a mut Option<Socket>,
    ) -> Result<&'a mut Socket, JsError> {
        if !socket.as_ref().is_some_and(Socket::is_open) {
            *socket = None;
            *socket = Some(self.handshake().await?);
        }
        Ok(socket.as_mut().expect("connected above"))
    }

    /// Opens a socket, exchanges `hello`/`welcome` and renews the subscriptions.
    async fn handshake(self: &Rc<Self>) -> Result<Socket, JsError> {
        let socket = Socket::open(&self.url, self.received.clone()).await?;
        self.greet(socket).await
    }

    /// Exchanges `hello`/`welcome` on a new socket and renews the subscriptions.
    async fn greet(self: &Rc<Self>, mut socket: Socket) -> Result<Socket, JsError> {
        let agent = concat!("assetsync-wasm/", env!("CARGO_PKG_VERSION")).to_owned();
        let fail = |why: String| js_error(why);
        let hello = ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            agent,
            encodings: vec![compress::ZSTD.into()],
            token: self.token.clone(),
        };
        self.send(&socket, &hello).map_err(fail)?;
        match next(&mut socket).await.map_err(fail)? {
            Incoming::Message(message, _) => match message {
                ServerMessage::Welcome { protocol: PROTOCOL_VERSION, .. } => {
                    self.raw.replace(Some(socket.handle()));
                    self.renew_subscriptions(&mut socket).await?;
                    Ok(socket)
                }
                ServerMessage::Error { message, .. } => Err(js_error(format!("server refused: {message}"))),
                other => Err(js_error(format!("unexpected `{}` answer to hello", other.kind()))),
            },
            _ => Err(js_error("unexpected binary frame during the handshake")),
        }
    }
}

/// The next data message; a closed socket is a lost connection.
async fn next(socket: &mut Socket) -> Result<Incoming, String> {
    loop {
        let message = match socket.recv().await {
            Some(Incoming::Closed { code, reason }) => {
                let reason = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                format!("connection lost (WebSocket closed with code {code}{reason})")
            }
            None => "connection lost".to_owned(),
            Some(Incoming::Open) => continue,
            // Mid-answer, a text that does not parse means the stream went bad.
            Some(Incoming::Invalid(why)) => return Err(why),
            Some(other) => return Ok(other),
        };
        return Err(message);
    }
}

fn report_progress(on_progress: Option<&Function>, received: u64, total: u64) {
    if let Some(f) = on_progress {
        let p = Object::new();
        Reflect::set(&p, &"receivedBytes".into(), &(received as f64).into()).expect("plain object");
        Reflect::set(&p, &"totalBytes".into(), &(total as f64).into()).expect("plain object");
        // A throwing callback must not break the sync.
        let _ = f.call1(&JsValue::NULL, &p);
    }
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or_else(js_sys::Date::now)
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
