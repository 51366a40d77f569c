//! A browser WebSocket as an async message stream, with owned event handlers.

use std::cell::Cell;
use std::rc::Rc;

use futures_channel::mpsc;
use futures_util::StreamExt;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

/// What the socket delivers.
#[derive(Debug)]
pub enum Incoming {
    Open,
    Text(String),
    Binary(Vec<u8>),
    Closed { code: u16, reason: String },
}

/// Transport errors, turned into JS `Error`s at the API edge.
#[derive(Debug)]
pub struct SocketError(pub String);

/// An open WebSocket. Event handlers are `Closure`s owned here and detached on drop; nothing is
/// leaked with `forget()`.
pub struct Socket {
    ws: WebSocket,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// `changed` pushes, kept apart from answers; ends when the socket closes.
    pushes: Option<mpsc::UnboundedReceiver<String>>,
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
        let (push_tx, pushes) = mpsc::unbounded();
        let close_push = push_tx.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let data = e.data();
            let item = if let Some(text) = data.as_string() {
                received.set(received.get() + text.len() as u64);
                // Pushes may arrive between answers, or while one is being read.
                if text.starts_with(r#"{"type":"changed""#) {
                    let _ = push_tx.unbounded_send(text);
                    return;
                }
                Incoming::Text(text)
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
            close_push.close_channel();
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));

        let mut socket = Socket {
            ws,
            incoming: rx,
            pushes: Some(pushes),
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        };
        match socket.incoming.next().await {
            Some(Incoming::Open) => Ok(socket),
            Some(Incoming::Closed { code, .. }) => {
                Err(SocketError(format!("cannot connect to {url} (WebSocket closed with code {code})")))
            }
            _ => Err(SocketError(format!("cannot connect to {url}"))),
        }
    }

    /// Sends a text frame.
    pub fn send_text(&self, text: &str) -> Result<(), SocketError> {
        self.ws
            .send_with_str(text)
            .map_err(|e| SocketError(format!("connection lost while sending: {}", describe(&e))))
    }

    /// The next message or event; `None` once the socket is gone.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.next().await
    }

    /// The `changed` pushes received on this socket; the stream ends when the socket closes.
    /// `None` after the first call.
    pub fn take_pushes(&mut self) -> Option<mpsc::UnboundedReceiver<String>> {
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
