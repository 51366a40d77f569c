//! A browser WebSocket as an async message stream, with owned event handlers. Each text message
//! is parsed once, here, and routed on its type: `changed` pushes go to a [`PushStream`] (at most
//! one per asset waits there), everything else to the answer being read.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use assetsync_protocol::engine::Pushes;
use assetsync_protocol::{AssetPath, ServerMessage, VersionId};
use futures_channel::mpsc;
use futures_util::StreamExt;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

/// What the socket delivers.
#[derive(Debug)]
pub enum Incoming {
    Open,
    /// A control message, and its size.
    Message(ServerMessage, usize),
    Binary(Vec<u8>),
    /// A text that is not a valid message: the stream went bad.
    Invalid(String),
    Closed {
        code: u16,
        reason: String,
    },
}

/// The `changed` pushes of one socket, the latest per asset; ends once the socket is closed and
/// every push was taken.
pub struct PushStream {
    queue: Rc<RefCell<Pushes>>,
    wake: mpsc::Receiver<()>,
}

impl PushStream {
    /// The next push, waiting for one.
    pub async fn next(&mut self) -> Option<(AssetPath, Option<VersionId>)> {
        loop {
            if let Some(push) = self.queue.borrow_mut().pop() {
                return Some(push);
            }
            self.wake.next().await?;
        }
    }
}

/// Transport errors, turned into JS `Error`s at the API edge.
#[derive(Debug)]
pub struct SocketError(pub String);

/// An open WebSocket. Event handlers are `Closure`s owned here and detached on drop; nothing is
/// leaked with `forget()`.
pub struct Socket {
    ws: WebSocket,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// `changed` pushes, kept apart from answers.
    pushes: Option<PushStream>,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Socket {
    /// Connects and waits until the socket is open. Payload bytes of the frames it receives
    /// are added to `received`, for the wire statistics.
    pub async fn open(url: &str, received: Rc<Cell<u64>>) -> Result<Socket, SocketError> {
        let ws = WebSocket::new(url)
            .map_err(|e| SocketError(format!("invalid server URL {url:?}: {}", describe(&e))))?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let (tx, rx) = mpsc::unbounded();

        let open_tx = tx.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_| {
            let _ = open_tx.unbounded_send(Incoming::Open);
        });
        let msg_tx = tx.clone();
        let queue = Rc::new(RefCell::new(Pushes::default()));
        // Room for one wake-up: a waiting one covers every push queued after it.
        let (wake_tx, wake) = mpsc::channel(0);
        let (mut push_wake, mut close_wake) = (wake_tx.clone(), wake_tx);
        let push_queue = Rc::clone(&queue);
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let data = e.data();
            let item = if let Some(text) = data.as_string() {
                received.set(received.get() + text.len() as u64);
                match serde_json::from_str::<ServerMessage>(&text) {
                    // Pushes may arrive between answers, or while one is being read.
                    Ok(ServerMessage::Changed { asset, version }) => {
                        push_queue.borrow_mut().push(asset, version);
                        let _ = push_wake.try_send(());
                        return;
                    }
                    Ok(message) => Incoming::Message(message, text.len()),
                    Err(e) => Incoming::Invalid(format!("invalid message from server: {e}")),
                }
            } else if let Ok(buf) = data.dyn_into::<js_sys::ArrayBuffer>() {
                received.set(received.get() + u64::from(buf.byte_length()));
                Incoming::Binary(js_sys::Uint8Array::new(&buf).to_vec())
            } else {
                return;
            };
            let _ = msg_tx.unbounded_send(item);
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            let _ = tx.unbounded_send(Incoming::Closed { code: e.code(), reason: e.reason() });
            close_wake.close_channel();
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));

        let mut socket = Socket {
            ws,
            incoming: rx,
            pushes: Some(PushStream { queue, wake }),
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        };
        match socket.incoming.next().await {
            Some(Incoming::Open) => Ok(socket),
            Some(Incoming::Closed { code, .. }) => Err(SocketError(diagnose(url, code).await)),
            _ => Err(SocketError(format!("cannot connect to {url}"))),
        }
    }

    /// Sends a text frame.
    pub fn send_text(&self, text: &str) -> Result<(), SocketError> {
        self.ws
            .send_with_str(text)
            .map_err(|e| SocketError(format!("connection lost while sending: {}", describe(&e))))
    }

    /// Sends a binary frame (an upload's).
    pub fn send_binary(&self, frame: &[u8]) -> Result<(), SocketError> {
        self.ws
            .send_with_u8_array(frame)
            .map_err(|e| SocketError(format!("connection lost while sending: {}", describe(&e))))
    }

    /// Bytes queued by `send_*` that the browser has not sent yet.
    pub fn buffered(&self) -> u64 {
        self.ws.buffered_amount().into()
    }

    /// The next message or event; `None` once the socket is gone.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.next().await
    }

    /// The `changed` pushes received on this socket. `None` after the first call.
    pub fn take_pushes(&mut self) -> Option<PushStream> {
        self.pushes.take()
    }

    /// Whether the socket is still open.
    pub fn is_open(&self) -> bool {
        self.ws.ready_state() == WebSocket::OPEN
    }

    /// The browser's handle, for closing from outside a sync.
    pub fn handle(&self) -> WebSocket {
        self.ws.clone()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// Why a WebSocket to `url` closed (with `code`) before it opened. Browsers hide the reason (a
/// refused upgrade and a dead server both close with 1006), so this asks the same URL over
/// HTTP: nothing answering means the server is down; a page's own server answering 404 or 200
/// means the path is wrong; a server that answers but refused the WebSocket most likely refused
/// this page's origin, which its log says.
async fn diagnose(url: &str, code: u16) -> String {
    let failed = format!("cannot connect to {url} (WebSocket closed with code {code})");
    let Some(global) = crate::global::Global::get() else { return failed };
    let http = url.replacen("ws", "http", 1);
    let origin = global.origin();
    let same_origin = http.starts_with(&format!("{origin}/"));
    let init = web_sys::RequestInit::new();
    if !same_origin {
        // An opaque answer: it says only that something answered.
        init.set_mode(web_sys::RequestMode::NoCors);
    }
    let answer = wasm_bindgen_futures::JsFuture::from(global.fetch(&http, &init)).await;
    let Ok(response) = answer.and_then(|r| r.dyn_into::<web_sys::Response>()) else {
        if is_loopback(host_of(url)) && !is_loopback(host_of(&origin)) {
            // Browsers keep a page of another site from local addresses (unless the user allows
            // it), the probe included, so it cannot tell these apart.
            return format!(
                "{failed}: nothing answers there, or the server refused this page's origin ({origin}; \
                 start it with --allow-origin {origin}, its log says so), or the browser kept this page \
                 of another site from a local address"
            );
        }
        return format!("{failed}: nothing answers there; is the server running?");
    };
    match response.status() {
        404 => format!(
            "{failed}: there is no assetsync endpoint at that path (HTTP 404); it is ws://HOST:PORT/sync"
        ),
        status @ 200..=399 => {
            format!(
                "{failed}: that path is not an assetsync endpoint (HTTP {status}); it is ws://HOST:PORT/sync"
            )
        }
        _ => format!(
            "{failed}: the server answers but refused the WebSocket; if the URL is right, it refused this \
             page's origin ({origin}): start it with --allow-origin {origin} (its log says why)"
        ),
    }
}

/// The host of `url` (`ws://HOST:PORT/...`, an IPv6 address in brackets).
fn host_of(url: &str) -> &str {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or_default();
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    }
}

/// Whether `host` names this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// A JS exception as text: `name: message` for an `Error` or `DOMException`, else the value
/// itself if it is a string.
pub fn describe(e: &JsValue) -> String {
    let field = |name: &str| js_sys::Reflect::get(e, &name.into()).ok().and_then(|v| v.as_string());
    match (field("name"), field("message")) {
        (Some(name), Some(message)) if !message.is_empty() => format!("{name}: {message}"),
        (Some(name), _) => name,
        _ => e.as_string().unwrap_or_else(|| "an unknown JavaScript error".into()),
    }
}
