//! The client behind a `SyncClient`: its connection, store and subscriptions, and the setup of
//! each sync around the engine (see `drive.rs`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use assetsync_protocol::engine::{AssetSync, Follow, MAX_OTHER_VERSIONS, Machine, hello, welcome};
use assetsync_protocol::{AssetPath, ChunkId, ClientMessage, Manifest, Scope, VersionId};
use futures_channel::oneshot;
use futures_util::lock::Mutex;
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::drive::{Driven, Stopped};
use crate::socket::{Incoming, Socket};
use crate::store::{FileRead, Store, StoreError};
use crate::{SyncResult, digest, js_error, now_ms};

/// The client behind a [`SyncClient`], shared with the task that listens for pushed changes.
pub(crate) struct Client {
    pub(crate) url: String,
    pub(crate) socket: Mutex<Option<Socket>>,
    /// The current socket's browser handle, so `close` works while a sync holds the lock.
    pub(crate) raw: RefCell<Option<web_sys::WebSocket>>,
    pub(crate) store: Store,
    /// The current sync's base file, being read and verified while its request is on the wire.
    pub(crate) prefetched: RefCell<Option<(VersionId, Prefetch)>>,
    pub(crate) next_id: Cell<u32>,
    /// Message payload bytes sent and received on all this client's sockets.
    pub(crate) sent: Cell<u64>,
    pub(crate) received: Rc<Cell<u64>>,
    /// Body bytes of offloaded answers fetched over HTTP by this client.
    pub(crate) downloaded: Cell<u64>,
    /// The last verified bytes of each asset synced by this client, so that a sync that finds
    /// the asset unchanged need not read and hash it again (`memoryCache: false` turns it off).
    pub(crate) remembered: RefCell<Remembered>,
    pub(crate) memory_cache: bool,
    /// The server's shared secret, sent in `hello`.
    pub(crate) token: Option<String>,
    /// What `subscribe` asked for (each scope once, renewed on every new connection), and the
    /// reconnection backoff.
    pub(crate) follow: RefCell<Follow>,
    /// The page's callbacks, by scope.
    pub(crate) callbacks: RefCell<Vec<(Scope, Function)>>,
    /// Held while a pushed change (or a reconnection's catching up) is brought in and told, so
    /// that each delivery sees what the one before committed: one change is told once.
    pub(crate) delivering: Mutex<()>,
    /// Set by `close`: no more reconnecting.
    pub(crate) closed: Cell<bool>,
}

impl Client {
    /// Opens the store and, with `connect`, a socket (not greeted yet) at the same time.
    pub(crate) async fn open(
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
            downloaded: Cell::new(0),
            received,
            remembered: RefCell::default(),
            memory_cache,
            token,
            follow: RefCell::default(),
            callbacks: RefCell::default(),
            delivering: Mutex::new(()),
            closed: Cell::new(false),
        };
        Ok((client, socket?))
    }

    pub(crate) async fn sync(
        self: &Rc<Self>,
        asset: String,
        on_progress: Option<Function>,
    ) -> Result<SyncResult, JsError> {
        let started = now_ms();
        if asset.is_empty() || asset.ends_with('/') {
            return Err(js_error(format!("{asset:?} is a folder: sync it with syncFolder({asset:?})")));
        }
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
        let run = self.drive(&mut machine, &mut guard, file.flatten(), on_progress.as_ref()).await;
        self.next_id.set(machine.next_id());
        self.prefetched.take();
        let driven = self.stopped(run, &mut guard, asset.as_str())?;
        drop(guard);
        let wire = (self.received.get() - in0, self.sent.get() - out0);
        Ok(self.result(machine.finish(), driven.unchanged, Some(wire), &driven.timings, started))
    }

    /// The outcome of a run; on failure the connection is dropped unless it is still in step.
    pub(crate) fn stopped(
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

    pub(crate) async fn read(&self, asset: String) -> Result<JsValue, JsError> {
        let asset = AssetPath::new(&asset).map_err(js_error)?;
        Ok(match self.store.read(&asset).await? {
            Some(data) => data.into(),
            None => JsValue::NULL,
        })
    }

    pub(crate) async fn gc(&self) -> Result<JsValue, JsError> {
        let report = self.store.gc().await?;
        let out = Object::new();
        Reflect::set(&out, &"chunksDeleted".into(), &report.chunks_deleted.into()).expect("plain object");
        Reflect::set(&out, &"versionsDeleted".into(), &report.versions_deleted.into()).expect("plain object");
        Reflect::set(&out, &"packsDeleted".into(), &report.packs_deleted.into()).expect("plain object");
        Reflect::set(&out, &"bytesFreed".into(), &(report.bytes_freed as f64).into()).expect("plain object");
        Ok(out.into())
    }

    pub(crate) fn close(&self) {
        self.closed.set(true);
        if let Some(ws) = self.raw.take() {
            let _ = ws.close();
        }
        self.store.close();
    }
}

/// A committed file being read in the background.
pub(crate) type Prefetch = oneshot::Receiver<Result<FileRead, StoreError>>;

/// Per asset: the version last verified by this client, and its bytes.
pub(crate) type Remembered = HashMap<AssetPath, (VersionId, Bytes)>;

/// A verified file's bytes: in WASM memory where this client rebuilt it, on the JS side where it
/// read it back from the store. Each is copied across only when it is used on the other side.
#[derive(Clone)]
pub(crate) enum Bytes {
    Wasm(Rc<Vec<u8>>),
    Js(Uint8Array),
}

impl Bytes {
    /// A copy for JS.
    pub(crate) fn to_js(&self) -> Uint8Array {
        match self {
            Bytes::Wasm(data) => Uint8Array::from(data.as_slice()),
            Bytes::Js(data) => data.slice(0, data.length()),
        }
    }

    /// A copy for WASM.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        match self {
            Bytes::Wasm(data) => data.as_ref().clone(),
            Bytes::Js(data) => data.to_vec(),
        }
    }
}

impl Client {
    /// The committed file of `manifest`: from memory if this client verified it in this session,
    /// else read back from IndexedDB and verified. `Err` inside names missing or damaged chunks.
    pub(crate) async fn file(&self, manifest: &Manifest) -> Result<Result<Bytes, Vec<ChunkId>>, StoreError> {
        let version = manifest.version();
        let remembered = self.remembered.borrow().get(&manifest.path).filter(|(v, _)| *v == version).cloned();
        if let Some((_, data)) = remembered {
            return Ok(Ok(data));
        }
        let prefetched = self.prefetched.borrow_mut().take_if(|(v, _)| *v == version);
        let read = match prefetched {
            Some((_, loading)) => loading
                .await
                .unwrap_or_else(|_| Err(StoreError::Unusable("the background read was cancelled".into())))?,
            None => self.store.file(manifest).await?,
        };
        Ok(read.map(Bytes::Js))
    }

    /// Starts reading and verifying `file`, the committed file of `base`, in the background,
    /// unless this client holds it in memory: whether the answer is `up_to_date` or a delta
    /// against it, the sync needs it, and the read then overlaps the round trip.
    pub(crate) fn prefetch(&self, base: &Manifest, file: Option<web_sys::Blob>) {
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
    pub(crate) fn send(&self, socket: &Socket, message: &ClientMessage) -> Result<u64, String> {
        let text = serde_json::to_string(message).expect("client messages serialise");
        self.sent.set(self.sent.get() + text.len() as u64);
        socket.send_text(&text).map_err(|e| e.0)?;
        Ok(text.len() as u64)
    }

    /// The open socket, connecting first if there is none or it has closed since the last
    /// request (a server restart in between is not a lost transfer).
    /// An error for a client the page closed.
    pub(crate) fn usable(&self) -> Result<(), JsError> {
        match self.closed.get() {
            true => Err(js_error("this client is closed: make a new one with SyncClient.connect")),
            false => Ok(()),
        }
    }

    pub(crate) async fn connected<'a>(
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
    pub(crate) async fn handshake(self: &Rc<Self>) -> Result<Socket, JsError> {
        let socket = Socket::open(&self.url, self.received.clone()).await?;
        self.greet(socket).await
    }

    /// Exchanges `hello`/`welcome` on a new socket and renews the subscriptions.
    pub(crate) async fn greet(self: &Rc<Self>, mut socket: Socket) -> Result<Socket, JsError> {
        let hello =
            hello(concat!("assetsync-wasm/", env!("CARGO_PKG_VERSION")), self.token.clone(), Vec::new());
        self.send(&socket, &hello).map_err(js_error)?;
        match next(&mut socket).await.map_err(js_error)? {
            Incoming::Message(answer, _) => {
                welcome(answer, &[]).map_err(js_error)?;
                self.raw.replace(Some(socket.handle()));
                self.renew_subscriptions(&mut socket).await?;
                Ok(socket)
            }
            _ => Err(js_error("unexpected binary frame during the handshake")),
        }
    }
}

/// The next data message; a closed socket is a lost connection.
pub(crate) async fn next(socket: &mut Socket) -> Result<Incoming, String> {
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
