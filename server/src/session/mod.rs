//! One WebSocket connection: handshake, then one answer per request, in order, and pushed
//! changes between answers.
//!
//! - `answer`: `sync` and `sync_folder`, planned, encoded and paced out.
//! - `subscribe`: subscriptions, counted in the hub while the session lives.
//! - `upload`: `get_manifest` and `upload` (new versions sent by clients), `list_folder` and
//!   `delete` (folder pushes), `get_shape` (folder pulls of protocol 4).
//! - `admit`: who may read and write what (modules and users), checked before each request.

use std::sync::Arc;

use assetsync_protocol::{
    ClientMessage, ErrorCode, Hash, LISTING_PAGE, OLDEST_PROTOCOL_VERSION, PAGES_ENCODING, PROTOCOL_VERSION,
    ServerMessage, compress, listing_pages, offload, patch,
};
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::SinkExt;
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::Error as WsError;

mod admit;
mod answer;
mod subscribe;
mod throttle;
mod upload;

pub(crate) use upload::KeptUploads;

use crate::forwarded::Remote;
use crate::modules::Need;
use crate::server::AppState;
use admit::{Signed, Visits, admit};
use answer::{FolderRequest, Request, refuse, sync, sync_folder};
use subscribe::{Subscriptions, subscribe};
use throttle::Throttle;

/// Why a session ends early: sent as an `error` message, then a close frame.
struct Fatal {
    code: ErrorCode,
    close: u16,
    message: String,
}

impl Fatal {
    fn new(code: ErrorCode, close: u16, message: impl Into<String>) -> Self {
        Fatal { code, close, message: message.into() }
    }
}

/// Runs one session until the client leaves, breaks the protocol, idles out, or the server shuts
/// down. `_permit` holds the connection's place under the connection limit.
#[tracing::instrument(name = "session", skip_all, fields(%peer))]
pub(crate) async fn run(
    mut socket: WebSocket,
    state: Arc<AppState>,
    peer: Remote,
    _permit: OwnedSemaphorePermit,
) {
    tracing::debug!("connected");
    // Set by `hello`.
    let mut peer_caps: Option<Peer> = None;
    let mut subscriptions = Subscriptions::new(&state);
    let mut visits = Visits::default();
    // For a downstream edge's connection: the upstream's path, and the ids the edge relays for.
    let mut relayed: Option<(tokio::sync::watch::Receiver<Vec<String>>, Vec<String>)> = None;
    let mut throttle = Throttle::new(&state);
    let mut changes = state.hub.listen();
    // A subscribed client may rightly be silent for hours: an idle period earns it a ping, and
    // only a second one in a row (no pong) ends the session.
    let mut pinged = false;
    let outcome = loop {
        let received = tokio::select! {
            () = state.shutdown.cancelled() => {
                break Err(Fatal::new(ErrorCode::ShuttingDown, close_code::AWAY, "server is shutting down"));
            }
            change = changes.recv(), if !subscriptions.is_empty() => {
                let change = match change {
                    Ok(change) => change,
                    Err(RecvError::Lagged(n)) => {
                        let why = format!("fell {n} changes behind; reconnect and sync again");
                        break Err(Fatal::new(ErrorCode::Lagged, close_code::AGAIN, why));
                    }
                    Err(RecvError::Closed) => continue,
                };
                if subscriptions.covers(&change.asset) {
                    let message = ServerMessage::Changed { asset: change.asset.clone(), version: change.version };
                    if let Err(fatal) = send_json(&mut socket, &message).await {
                        break Err(fatal);
                    }
                }
                continue;
            }
            Some(changed) = async { Some(relayed.as_mut()?.0.changed().await) }, if relayed.is_some() => {
                if changed.is_err() {
                    relayed = None;
                    continue;
                }
                if let Some(why) = relayed.as_ref().and_then(|(_, via)| loop_through(&state, via)) {
                    break Err(Fatal::new(ErrorCode::Loop, close_code::POLICY, why));
                }
                // The relaying client's `welcome` named the old path: it reconnects for the new.
                let why = "this server's path to the origin changed: reconnect";
                break Err(Fatal::new(ErrorCode::Moved, close_code::AGAIN, why));
            }
            r = tokio::time::timeout(state.limits.idle_timeout, socket.recv()) => r,
        };
        let message = match received {
            Err(_) if !subscriptions.is_empty() && !pinged => {
                pinged = true;
                if let Err(fatal) = socket.send(Message::Ping(Default::default())).await.map_err(gone) {
                    break Err(fatal);
                }
                continue;
            }
            Err(_) => break Err(Fatal::new(ErrorCode::IdleTimeout, close_code::POLICY, "idle timeout")),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => {
                let e = e.into_inner();
                if let Some(WsError::Capacity(too_big)) = e.downcast_ref::<WsError>() {
                    break Err(Fatal::new(ErrorCode::TooLarge, close_code::SIZE, too_big.to_string()));
                }
                tracing::debug!(error = %e, "connection lost");
                break Ok(());
            }
            Ok(Some(Ok(m))) => m,
        };
        pinged = false;
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                break Err(Fatal::new(
                    ErrorCode::BadMessage,
                    close_code::UNSUPPORTED,
                    "binary frames are only accepted after an upload that announces them",
                ));
            }
            Message::Close(_) => break Ok(()),
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if peer_caps.is_some() {
            // Paced before parsing, so a flood costs no more than the allowed rate.
            if let Err(fatal) = throttle.request().await {
                break Err(fatal);
            }
        }
        let result = match serde_json::from_str::<ClientMessage>(&text) {
            Err(e) => {
                Err(Fatal::new(ErrorCode::BadMessage, close_code::PROTOCOL, format!("invalid message: {e}")))
            }
            Ok(ClientMessage::Hello { .. }) if peer_caps.is_some() => {
                Err(Fatal::new(ErrorCode::BadMessage, close_code::PROTOCOL, "hello sent twice"))
            }
            Ok(ClientMessage::Hello { protocol, agent, encodings, token, via }) => {
                let hello = Hello {
                    protocol,
                    agent: &agent,
                    encodings: &encodings,
                    token: token.as_deref(),
                    via: &via,
                };
                let greeted = greet(&mut socket, &state, hello).await.map(|p| peer_caps = Some(p));
                // A downstream edge: watched for a loop the upstream's path may close later.
                if greeted.is_ok() && !via.is_empty() {
                    relayed = state.upstream.as_ref().map(|u| (u.watch_path(), via));
                }
                greeted
            }
            Ok(_) if peer_caps.is_none() => {
                Err(Fatal::new(ErrorCode::BadMessage, close_code::PROTOCOL, "request before hello"))
            }
            Ok(request) => {
                let peer = peer_caps.expect("checked above");
                let (id, path, need) = named(&request);
                let admitted = admit(&state, peer.signed, &mut visits, path, need);
                if let Err((code, why)) = &admitted {
                    tracing::info!(path, %code, reason = %why, "request refused");
                }
                match (admitted, request) {
                    // Refused or not, its frames are read.
                    (admitted, ClientMessage::Upload(request)) => {
                        upload::upload(&mut socket, &state, admitted, request).await
                    }
                    (Err((code, why)), _) => send_json(&mut socket, &refuse(id, code, why)).await,
                    (Ok(_), request) => match request {
                        ClientMessage::Sync { id, asset, have, direct, no_patch } => {
                            let request = Request { id, asset: &asset, have, direct, no_patch };
                            sync(&mut socket, &state, peer, &mut throttle, request).await
                        }
                        ClientMessage::SyncFolder { id, folder, since, have, shape } => {
                            let request = FolderRequest { id, folder: &folder, since, have, shape };
                            sync_folder(&mut socket, &state, peer, &mut throttle, request).await
                        }
                        ClientMessage::GetManifest { id, asset, resume } => {
                            upload::get_manifest(&mut socket, &state, id, &asset, resume).await
                        }
                        ClientMessage::ListFolder { id, folder } => {
                            upload::list_folder(&mut socket, &state, &peer, id, &folder).await
                        }
                        ClientMessage::Delete { id, asset, base } => {
                            upload::delete(&mut socket, &state, id, &asset, base).await
                        }
                        ClientMessage::GetShape { id, folder, have } => {
                            upload::get_shape(&mut socket, &state, id, &folder, have).await
                        }
                        ClientMessage::Subscribe { id, path } => {
                            if subscriptions.is_empty() {
                                // Only changes from now on: none queued while nothing was subscribed.
                                changes = changes.resubscribe();
                            }
                            subscribe(&mut socket, &state, &mut subscriptions, id, &path).await
                        }
                        ClientMessage::Hello { .. } | ClientMessage::Upload(_) => {
                            unreachable!("answered above")
                        }
                    },
                }
            }
        };
        if let Err(fatal) = result {
            break Err(fatal);
        }
    };
    match outcome {
        Ok(()) => tracing::debug!("client closed"),
        Err(fatal) => {
            tracing::info!(code = ?fatal.code, reason = %fatal.message, "closing session");
            let error = ServerMessage::Error { id: None, code: fatal.code, message: fatal.message.clone() };
            let mut reason = fatal.message;
            reason.truncate(reason.floor_char_boundary(120));
            // The peer may already be gone; nothing more to do then.
            let _ = send_json(&mut socket, &error).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame { code: fatal.close, reason: reason.into() })))
                .await;
            // Wait briefly for the client's close reply. Dropping a socket with unread input
            // makes the kernel send RST, which can destroy the error message in flight.
            let drain = async {
                while let Some(Ok(m)) = socket.recv().await {
                    if let Message::Close(_) = m {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        }
    }
}

/// The request's id, the path it names and what it does there. `hello` is answered before
/// this is asked.
fn named(request: &ClientMessage) -> (u32, &str, Need) {
    match request {
        ClientMessage::Sync { id, asset, .. } => (*id, asset, Need::Read),
        ClientMessage::SyncFolder { id, folder, .. } => (*id, folder, Need::Read),
        ClientMessage::Subscribe { id, path } => (*id, path, Need::Read),
        ClientMessage::GetManifest { id, asset, .. } => (*id, asset, Need::Write),
        ClientMessage::ListFolder { id, folder } => (*id, folder, Need::Read),
        ClientMessage::Delete { id, asset, .. } => (*id, asset, Need::Write),
        ClientMessage::GetShape { id, folder, .. } => (*id, folder, Need::Read),
        ClientMessage::Upload(request) => (request.id, &request.asset, Need::Write),
        ClientMessage::Hello { .. } => unreachable!("hello names no path"),
    }
}

/// What `hello` established about the client.
#[derive(Clone, Copy)]
struct Peer {
    /// The protocol version both ends speak.
    protocol: u32,
    /// Whether the client decodes zstd-compressed batches.
    zstd: bool,
    /// Whether the client fetches large answers over HTTP (see [`crate::offload`]).
    offload: bool,
    /// Whether the client applies binary patches (see [`assetsync_protocol::patch`]).
    patch: bool,
    /// Whether it cuts a patch's runs of chunks itself ([`patch::CUT_ENCODING`]).
    cut: bool,
    /// Whether it remaps a WebAssembly base before a patch ([`patch::WASM_ENCODING`]).
    wasm: bool,
    /// Whether it takes a patch with a tail ([`patch::TAIL_ENCODING`]).
    tail: bool,
    /// Whether it takes a folder listing in pages ([`PAGES_ENCODING`]).
    pages: bool,
    /// Who the client signed in as.
    signed: Signed,
}

/// The fields of a `hello`.
struct Hello<'a> {
    protocol: u32,
    agent: &'a str,
    encodings: &'a [String],
    token: Option<&'a str>,
    via: &'a [String],
}

/// Whether `token` is the secret whose SHA-256 is `expected`. Compared as digests, in constant
/// time: neither the length nor a prefix leaks.
pub(crate) fn token_matches(token: &str, expected: &Hash) -> bool {
    bool::from(Hash::of(token.as_bytes()).0.ct_eq(&expected.0))
}

/// Why a client relaying for the servers `via` closes a loop: this server, or one on its path
/// to the origin, is among them.
fn loop_through(state: &AppState, via: &[String]) -> Option<String> {
    let path = state.path();
    let looped = path.iter().find(|id| via.contains(id))?;
    Some(format!(
        "relay loop: server {looped} follows this one and is on its path to the origin ({}): point its --upstream at the origin or at an edge closer to it",
        path.join(" -> ")
    ))
}

/// Checks the client's token (if the server requires one) and protocol version, and answers
/// `welcome` with the version both speak.
async fn greet(socket: &mut WebSocket, state: &AppState, hello: Hello<'_>) -> Result<Peer, Fatal> {
    let Hello { protocol, agent, encodings, token, via } = hello;
    let matches = token_matches;
    let signed = match (&state.modules, token) {
        (Some(modules), Some(token)) => match modules.sign_in(token) {
            Some(user) => Signed::User(user),
            None => {
                let why = "wrong user or secret: give USER:SECRET as in the server's secrets file";
                return Err(Fatal::new(ErrorCode::Unauthorized, close_code::POLICY, why));
            }
        },
        (None, Some(t)) if state.write_token.as_ref().is_some_and(|w| matches(t, w)) => Signed::Writer,
        _ => Signed::Nobody,
    };
    if let Some(expected) = &state.token {
        let why = match token {
            None => Some(
                "this server requires a token: give it with pull --token-file FILE, or SyncClient.connect(url, { token })",
            ),
            Some(t) if !matches(t, expected) => {
                Some("wrong token: use the one in the file the server's --token-file names")
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            return Err(Fatal::new(ErrorCode::Unauthorized, close_code::POLICY, why));
        }
    }
    if let Some(why) = loop_through(state, via) {
        return Err(Fatal::new(ErrorCode::Loop, close_code::POLICY, why));
    }
    if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) {
        return Err(Fatal::new(
            ErrorCode::ProtocolVersion,
            close_code::PROTOCOL,
            format!(
                "client speaks protocol {protocol}, this server speaks {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            ),
        ));
    }
    let zstd = state.compress && encodings.iter().any(|e| e == compress::ZSTD);
    // Only compressed answers are offloaded.
    let offload = zstd && state.offload.is_some() && encodings.iter().any(|e| e == offload::ENCODING);
    // Patches travel as zstd frames, and come with the best-level answers.
    let patch = zstd && encodings.iter().any(|e| e == patch::ENCODING);
    let cut = patch && encodings.iter().any(|e| e == patch::CUT_ENCODING);
    let wasm = patch && encodings.iter().any(|e| e == patch::WASM_ENCODING);
    let tail = wasm && encodings.iter().any(|e| e == patch::TAIL_ENCODING);
    let pages = encodings.iter().any(|e| e == PAGES_ENCODING);
    tracing::debug!(agent = %agent.chars().take(100).collect::<String>(), protocol, zstd, offload, patch, cut, wasm, tail, pages, "hello");
    let used = [
        (zstd, compress::ZSTD),
        (offload, offload::ENCODING),
        (patch, patch::ENCODING),
        (cut, patch::CUT_ENCODING),
        (wasm, patch::WASM_ENCODING),
        (tail, patch::TAIL_ENCODING),
        (pages, PAGES_ENCODING),
    ];
    let welcome = ServerMessage::Welcome {
        protocol,
        server: concat!("assetsync/", env!("CARGO_PKG_VERSION")).into(),
        limits: state.limits.announced(),
        encodings: used.iter().filter(|(on, _)| *on).map(|(_, name)| (*name).to_owned()).collect(),
        path: state.path(),
        stale: state.upstream.as_ref().and_then(|u| u.stale()),
    };
    send_json(socket, &welcome).await.map(|()| Peer {
        protocol,
        zstd,
        offload,
        patch,
        cut,
        wasm,
        tail,
        pages,
        signed,
    })
}

/// Sends a folder listing, in pages of [`LISTING_PAGE`] entries to a client that takes them:
/// the server holds one page's JSON at a time, and the client one message's.
async fn send_listing(socket: &mut WebSocket, listing: ServerMessage, peer: &Peer) -> Result<(), Fatal> {
    let page = if peer.pages { LISTING_PAGE } else { usize::MAX };
    for page in listing_pages(listing, page) {
        feed_json(socket, &page).await?;
    }
    socket.flush().await.map_err(gone)
}

async fn send_json(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), Fatal> {
    feed_json(socket, message).await?;
    socket.flush().await.map_err(gone)
}

/// [`send_json`] without the flush: the message goes out when the write buffer fills or is
/// flushed.
async fn feed_json(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), Fatal> {
    let text = serde_json::to_string(message).expect("server messages serialise");
    socket.feed(Message::Text(text.into())).await.map_err(gone)
}

fn gone(e: axum::Error) -> Fatal {
    Fatal::new(ErrorCode::Internal, close_code::ERROR, format!("send failed: {e}"))
}
