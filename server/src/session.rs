//! One WebSocket connection: handshake, then one answer per `sync`, in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashSet;

use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkId, ClientMessage, ClientView, ErrorCode, FolderEntry, Hash, Have,
    OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Scope, ServerMessage, ask_for_chunks, compress, folder_sends,
    plan,
};
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::SinkExt;
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_util::sync::CancellationToken;

use crate::encode::Batch;
use crate::index::{IndexError, Indexed};
use crate::limit::Rate;
use crate::server::AppState;
use crate::watch::Hub;

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
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    tracing::debug!("connected");
    // Set by `hello`.
    let mut peer_caps: Option<Peer> = None;
    let mut subscriptions = Subscriptions { hub: state.hub.clone(), scopes: Vec::new() };
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
            change = changes.recv(), if !subscriptions.scopes.is_empty() => {
                let change = match change {
                    Ok(change) => change,
                    Err(RecvError::Lagged(n)) => {
                        let why = format!("fell {n} changes behind; reconnect and sync again");
                        break Err(Fatal::new(ErrorCode::Lagged, close_code::AGAIN, why));
                    }
                    Err(RecvError::Closed) => continue,
                };
                if subscriptions.scopes.iter().any(|s| s.covers(&change.asset)) {
                    let message = ServerMessage::Changed { asset: change.asset.clone(), version: change.version };
                    if let Err(fatal) = send_json(&mut socket, &message).await {
                        break Err(fatal);
                    }
                }
                continue;
            }
            r = tokio::time::timeout(state.limits.idle_timeout, socket.recv()) => r,
        };
        let message = match received {
            Err(_) if !subscriptions.scopes.is_empty() && !pinged => {
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
                    "binary frames are not accepted from clients",
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
            Ok(ClientMessage::Hello { protocol, agent, encodings, token }) => {
                let hello = Hello { protocol, agent: &agent, encodings: &encodings, token: token.as_deref() };
                greet(&mut socket, &state, hello).await.map(|p| peer_caps = Some(p))
            }
            Ok(_) if peer_caps.is_none() => {
                Err(Fatal::new(ErrorCode::BadMessage, close_code::PROTOCOL, "request before hello"))
            }
            Ok(ClientMessage::Sync { id, asset, have }) => {
                let peer = peer_caps.expect("checked above");
                sync(&mut socket, &state, peer, &mut throttle, Request { id, asset: &asset, have }).await
            }
            Ok(ClientMessage::SyncFolder { id, folder, have }) => {
                let peer = peer_caps.expect("checked above");
                sync_folder(&mut socket, &state, peer, &mut throttle, id, &folder, have).await
            }
            Ok(ClientMessage::Subscribe { id, path }) => {
                if subscriptions.scopes.is_empty() {
                    // Only changes from now on: none queued while nothing was subscribed.
                    changes = changes.resubscribe();
                }
                subscribe(&mut socket, &state, &mut subscriptions, id, &path).await
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

/// Most subscriptions per connection.
const MAX_SUBSCRIPTIONS: usize = 256;

/// A session's subscriptions, counted in the hub while the session lives.
struct Subscriptions {
    hub: Arc<Hub>,
    scopes: Vec<Scope>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for scope in &self.scopes {
            self.hub.remove(scope);
        }
    }
}

/// Answers `subscribe`: from now on, changes inside `path` are pushed as `changed`.
async fn subscribe(
    socket: &mut WebSocket,
    state: &AppState,
    subscriptions: &mut Subscriptions,
    id: u32,
    path: &str,
) -> Result<(), Fatal> {
    let scope = match Scope::new(path) {
        Ok(scope) => scope,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    if !state.watching {
        let message = "this server does not watch its files (it runs with --no-watch)".to_owned();
        return send_json(socket, &refuse(id, ErrorCode::Unsupported, message)).await;
    }
    if subscriptions.scopes.len() >= MAX_SUBSCRIPTIONS {
        let message = format!("more than {MAX_SUBSCRIPTIONS} subscriptions on one connection");
        return send_json(socket, &refuse(id, ErrorCode::TooLarge, message)).await;
    }
    tracing::debug!(%scope, "subscribed");
    state.hub.add(&scope);
    subscriptions.scopes.push(scope);
    send_json(socket, &ServerMessage::Subscribed { id }).await
}

/// Paces a connection to its request and byte rates (`--max-requests-per-minute`,
/// `--max-bytes-per-minute`): over them, the session waits instead of failing, and meanwhile
/// reads nothing more from the client.
struct Throttle {
    requests: Option<Rate>,
    bytes: Option<Rate>,
    shutdown: CancellationToken,
    /// Whether this session was already logged as throttled.
    logged: bool,
}

impl Throttle {
    fn new(state: &AppState) -> Self {
        let now = Instant::now();
        Throttle {
            requests: Rate::per_minute(state.limits.requests_per_minute.into(), now),
            bytes: Rate::per_minute(state.limits.bytes_per_minute, now),
            shutdown: state.shutdown.clone(),
            logged: false,
        }
    }

    /// Waits until one more request is within the rate.
    async fn request(&mut self) -> Result<(), Fatal> {
        let wait = self.requests.as_mut().map(|r| r.take(1, Instant::now()));
        self.wait(wait, "requests").await
    }

    /// Waits until `n` more bytes are within the rate.
    async fn bytes(&mut self, n: usize) -> Result<(), Fatal> {
        let wait = self.bytes.as_mut().map(|r| r.take(n as u64, Instant::now()));
        self.wait(wait, "bytes").await
    }

    async fn wait(&mut self, wait: Option<Duration>, what: &str) -> Result<(), Fatal> {
        let Some(wait) = wait.filter(|w| !w.is_zero()) else { return Ok(()) };
        if !std::mem::replace(&mut self.logged, true) {
            tracing::info!(over = what, "over the per-connection rate; slowing this connection down");
        }
        tokio::select! {
            () = self.shutdown.cancelled() => {
                Err(Fatal::new(ErrorCode::ShuttingDown, close_code::AWAY, "server is shutting down"))
            }
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }
}

/// What `hello` established about the client.
#[derive(Clone, Copy)]
struct Peer {
    /// The protocol version both ends speak.
    protocol: u32,
    /// Whether the client decodes zstd-compressed batches.
    zstd: bool,
}

/// The fields of a `hello`.
struct Hello<'a> {
    protocol: u32,
    agent: &'a str,
    encodings: &'a [String],
    token: Option<&'a str>,
}

/// Checks the client's token (if the server requires one) and protocol version, and answers
/// `welcome` with the version both speak.
async fn greet(socket: &mut WebSocket, state: &AppState, hello: Hello<'_>) -> Result<Peer, Fatal> {
    let Hello { protocol, agent, encodings, token } = hello;
    if let Some(expected) = &state.token {
        // Compared as SHA-256 digests, in constant time: neither the length nor a prefix leaks.
        let matches = |t: &str| bool::from(Hash::of(t.as_bytes()).0.ct_eq(&expected.0));
        let why = match token {
            None => Some("this server requires a token"),
            Some(t) if !matches(t) => Some("wrong token"),
            Some(_) => None,
        };
        if let Some(why) = why {
            return Err(Fatal::new(ErrorCode::Unauthorized, close_code::POLICY, why));
        }
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
    tracing::debug!(agent = %agent.chars().take(100).collect::<String>(), protocol, zstd, "hello");
    let welcome = ServerMessage::Welcome {
        protocol,
        server: concat!("assetsync/", env!("CARGO_PKG_VERSION")).into(),
        limits: state.limits.announced(),
        encodings: if zstd { vec![compress::ZSTD.to_owned()] } else { Vec::new() },
    };
    send_json(socket, &welcome).await.map(|()| Peer { protocol, zstd })
}

/// One `sync` request.
struct Request<'a> {
    id: u32,
    asset: &'a str,
    have: assetsync_protocol::Have,
}

/// Answers one `sync`. Request-level problems (bad path, unknown asset, digest over the limit)
/// are answered with an `error` and the session goes on.
async fn sync(
    socket: &mut WebSocket,
    state: &AppState,
    peer: Peer,
    throttle: &mut Throttle,
    request: Request<'_>,
) -> Result<(), Fatal> {
    let Request { id, asset, have } = request;
    let started = Instant::now();
    if have.len() > state.limits.max_have {
        return send_json(socket, &too_many_entries(id, &have, state)).await;
    }
    let asset = match AssetPath::new(asset) {
        Ok(asset) => asset,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    let current = match state.index.current(&asset).await {
        Ok(current) => current,
        Err(e) => {
            tracing::info!(%asset, error = %e, "sync refused");
            return send_json(socket, &refuse(id, code_of(&e), e.to_string())).await;
        }
    };
    let (known, held) = state.index.resolve_have(&have, [current.manifest.as_ref()]);
    // The delta base: the first version named that the server knows.
    let base = known.into_iter().next();
    let own_version_unknown = base.as_ref().is_none_or(|(i, _)| *i != 0);
    if peer.protocol >= 2 && !have.versions.is_empty() && own_version_unknown && have.chunks.is_empty() {
        // The client's own version (listed first) is one this server never saw or has
        // forgotten (a restart drops them all): its chunk list costs far less than resending
        // the chunks it holds.
        return send_json(socket, &ServerMessage::UnknownBase { id }).await;
    }
    let sent = answer(socket, state, peer, throttle, id, None, &current, base.as_ref(), &held).await?;
    tracing::info!(
        %asset,
        version = %&current.version.to_hex()[..12],
        base = base.is_some(),
        chunks = current.manifest.chunks.len(),
        sent_chunks = sent.chunks.len(),
        frame_bytes = sent.frame_bytes,
        dict = sent.dict,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sync"
    );
    Ok(())
}

/// Answers `sync_folder`: the listing, then one `update` per file whose version the client does
/// not hold, each chunk sent at most once across the whole answer.
async fn sync_folder(
    socket: &mut WebSocket,
    state: &AppState,
    peer: Peer,
    throttle: &mut Throttle,
    id: u32,
    folder: &str,
    have: Have,
) -> Result<(), Fatal> {
    let started = Instant::now();
    if have.len() > state.limits.max_have {
        return send_json(socket, &too_many_entries(id, &have, state)).await;
    }
    let scope = match Scope::new(folder) {
        Ok(Scope::Asset(_)) => {
            let message = format!("{folder:?} is not a folder: end it with '/' (or use \"\" for the root)");
            return send_json(socket, &refuse(id, ErrorCode::BadPath, message)).await;
        }
        Ok(scope) => scope,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    let files = match state.index.list(&scope).await {
        Ok(files) => files,
        Err(e) => {
            tracing::info!(%scope, error = %e, "folder sync refused");
            return send_json(socket, &refuse(id, code_of(&e), e.to_string())).await;
        }
    };
    let (known, mut held) = state.index.resolve_have(&have, files.iter().map(|f| f.manifest.as_ref()));
    if ask_for_chunks(peer.protocol, &have, known.len() < have.versions.len()) {
        return send_json(socket, &ServerMessage::UnknownBase { id }).await;
    }
    let entries =
        files.iter().map(|f| FolderEntry { asset: f.manifest.path.clone(), version: f.version }).collect();
    send_json(socket, &ServerMessage::Folder { id, files: entries }).await?;
    let (mut updated, mut frame_bytes) = (0, 0);
    for file in files.iter().filter(|f| folder_sends(&have, &f.version)) {
        // The delta base and compression prefix: the client's version of the same file.
        let base = known.iter().find(|(_, k)| k.manifest.path == file.manifest.path);
        let path = Some(file.manifest.path.clone());
        let sent = answer(socket, state, peer, throttle, id, path, file, base, &held).await?;
        // Later files reference these chunks instead of carrying them again.
        held.extend(sent.chunks.iter().map(|&i| file.manifest.chunks[i as usize].id));
        updated += 1;
        frame_bytes += sent.frame_bytes;
    }
    tracing::info!(
        folder = %scope,
        files = files.len(),
        updated,
        frame_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "folder sync"
    );
    Ok(())
}

/// What [`answer`] sent.
struct Sent {
    /// Manifest positions whose bytes went out.
    chunks: Vec<u32>,
    /// Bytes of binary frames.
    frame_bytes: usize,
    /// Whether batches were compressed against the base version.
    dict: bool,
}

/// Plans, encodes and sends the answer for `current` to a client holding `held` (`update` with
/// its chunk frames, or `up_to_date` when `base` is the current version itself).
#[allow(clippy::too_many_arguments)]
async fn answer(
    socket: &mut WebSocket,
    state: &AppState,
    peer: Peer,
    throttle: &mut Throttle,
    id: u32,
    asset: Option<AssetPath>,
    current: &Arc<Indexed>,
    base: Option<&(u32, Arc<Indexed>)>,
    held: &HashSet<ChunkId>,
) -> Result<Sent, Fatal> {
    let view = ClientView { base: base.map(|(i, b)| (*i, b.version, b.manifest.as_ref())), held };
    let mut answer = plan(id, &current.manifest, current.version, view);
    let encoded = match &mut answer.message {
        ServerMessage::Update(update) => {
            update.asset = asset;
            if peer.zstd && !answer.send.is_empty() {
                let encoded = state.encoder.encode(current, &answer.send, base.map(|(_, b)| b)).await;
                update.dict = encoded.prefixed;
                Some(encoded)
            } else {
                None
            }
        }
        _ => None,
    };
    send_json(socket, &answer.message).await?;
    let mut frame_bytes = 0usize;
    let plain = |index: u32| ChunkFrame::Chunk { id, index, bytes: current.chunk(index as usize) }.encode();
    let frames: Box<dyn Iterator<Item = Vec<u8>> + Send> = match &encoded {
        None => Box::new(answer.send.iter().map(|&i| plain(i))),
        Some(encoded) => Box::new(encoded.batches.iter().flat_map(|batch| match batch {
            Batch::Compressed { indices, frame } => {
                let frame = ChunkFrame::Batch { id, indices: indices.clone(), compressed: frame };
                vec![frame.encode()]
            }
            Batch::Plain { indices } => indices.iter().map(|&i| plain(i)).collect(),
        })),
    };
    for frame in frames {
        frame_bytes += frame.len();
        throttle.bytes(frame.len()).await?;
        // `feed` waits while tungstenite's bounded write buffer is full: a slow reader slows
        // this loop down instead of making the server buffer without limit.
        socket.feed(Message::Binary(frame.into())).await.map_err(gone)?;
    }
    socket.flush().await.map_err(gone)?;
    let dict = encoded.as_ref().is_some_and(|e| e.prefixed);
    Ok(Sent { chunks: answer.send, frame_bytes, dict })
}

fn refuse(id: u32, code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error { id: Some(id), code, message }
}

fn too_many_entries(id: u32, have: &Have, state: &AppState) -> ServerMessage {
    let message = format!("digest has {} entries, over the limit of {}", have.len(), state.limits.max_have);
    refuse(id, ErrorCode::TooLarge, message)
}

fn code_of(e: &IndexError) -> ErrorCode {
    match e {
        IndexError::Unknown(_) => ErrorCode::UnknownAsset,
        IndexError::Escapes(_) => ErrorCode::BadPath,
        IndexError::TooLarge { .. } | IndexError::TooManyFiles { .. } => ErrorCode::TooLarge,
        IndexError::Io { .. } => ErrorCode::Internal,
    }
}

async fn send_json(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), Fatal> {
    let text = serde_json::to_string(message).expect("server messages serialise");
    socket.send(Message::Text(text.into())).await.map_err(gone)
}

fn gone(e: axum::Error) -> Fatal {
    Fatal::new(ErrorCode::Internal, close_code::ERROR, format!("send failed: {e}"))
}
