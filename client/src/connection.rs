//! One connection to a server: tokio-tungstenite over a byte-counting TCP stream, the
//! `hello`/`welcome` handshake, reconnection, subscriptions and pushed changes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use assetsync_protocol::engine::{Follow, Losses, Pushes, Subscription, Welcome, Welcomed, hello, welcome};
use assetsync_protocol::{AssetPath, ClientMessage, Scope, ServerMessage, VersionId};
use futures_util::{SinkExt, StreamExt};

use crate::Error;
use crate::download::Downloads;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A failed WebSocket upgrade: a server that answered HTTP without upgrading is not a sync
/// endpoint (a user's mistake, said so at once); anything else broke the connection.
fn handshake_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Http(response) => Error::BadUrl(format!(
            "{url} is not an assetsync endpoint (it answered HTTP {}): use ws://HOST:PORT/sync",
            response.status()
        )),
        WsError::HttpFormat(e) => Error::BadUrl(format!(
            "{url} is not an assetsync endpoint (it does not speak WebSocket: {e}): use ws://HOST:PORT/sync"
        )),
        e => Error::Lost(format!("WebSocket handshake with {url} failed: {e}")),
    }
}

/// Byte counters shared with the [`Counted`] stream.
#[derive(Default)]
struct Counters {
    read: AtomicU64,
    written: AtomicU64,
}

/// A stream that counts the bytes that cross it: the wire bytes we report are socket bytes.
struct Counted<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.counters.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) struct Connection {
    ws: WebSocketStream<Counted<TcpStream>>,
    /// Where to reconnect to after a lost connection.
    pub(crate) url: String,
    /// Offloaded answers' HTTP client, made on the first.
    pub(crate) downloads: Option<Downloads>,
    token: Option<String>,
    /// The servers this client relays for, sent in `hello` (see [`welcome`]).
    via: Vec<String>,
    /// What the server said about itself in the last `welcome`.
    pub(crate) welcomed: Welcomed,
    /// Shared by every socket of this connection, so the wire counts survive reconnections.
    counters: Arc<Counters>,
    /// The bytes written when last sampled by [`Connection::written_delta`].
    seen_written: u64,
    pub(crate) next_id: u32,
    /// Messages sent so far (requests).
    pub(crate) requests: u32,
    /// `changed` pushes that arrived while an answer was being read.
    pushes: Pushes,
    /// Subscribed: a lost connection is left to [`follow`], which reconnects, subscribes again
    /// and resyncs everything (a quiet reconnection would lose the subscriptions).
    pub(crate) follows: bool,
}

impl Connection {
    /// Connects, upgrades and exchanges `hello`/`welcome`.
    /// `via` names the servers this client relays for (an edge's own id).
    pub(crate) async fn open(url: &str, token: Option<&str>, via: &[String]) -> Result<Self, Error> {
        let counters = Arc::new(Counters::default());
        let (ws, welcomed) = Self::handshake(url, token, via, counters.clone()).await?;
        let (url, token) = (url.to_owned(), token.map(str::to_owned));
        let mut conn = Connection {
            ws,
            url,
            downloads: None,
            token,
            via: via.to_vec(),
            welcomed,
            counters,
            seen_written: 0,
            next_id: 1,
            requests: 0,
            pushes: Pushes::default(),
            follows: false,
        };
        conn.seen_written = conn.wire().1;
        Ok(conn)
    }

    /// [`Connection::open`], retried with backoff when the connection breaks during the
    /// handshake. An unreachable server or a refusal fails at once.
    pub(crate) async fn open_resilient(url: &str, token: Option<&str>) -> Result<Self, Error> {
        // The engine's resume policy: the same waits, and as many attempts, as a cut transfer.
        let mut losses = Losses::default();
        loop {
            match Self::open(url, token, &[]).await {
                Err(e @ Error::Lost(_)) => match losses.next(&e.to_string()) {
                    Ok(after_ms) => {
                        tracing::warn!(error = %e, "handshake broke; retrying");
                        tokio::time::sleep(Duration::from_millis(after_ms.into())).await;
                    }
                    Err(_) => return Err(e),
                },
                result => return result,
            }
        }
    }

    /// Replaces a lost socket with a new one (same counters; pending pushes are kept).
    pub(crate) async fn reconnect(&mut self) -> Result<(), Error> {
        (self.ws, self.welcomed) =
            Self::handshake(&self.url, self.token.as_deref(), &self.via, self.counters.clone()).await?;
        Ok(())
    }

    async fn handshake(
        url: &str,
        token: Option<&str>,
        via: &[String],
        counters: Arc<Counters>,
    ) -> Result<(WebSocketStream<Counted<TcpStream>>, Welcomed), Error> {
        let request = url
            .into_client_request()
            .map_err(|e| Error::BadUrl(format!("invalid server URL {url:?}: {e}")))?;
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            let why = format!(
                "unsupported server URL {url:?}: use ws://HOST:PORT/sync (put TLS in a reverse proxy)"
            );
            return Err(Error::BadUrl(why));
        }
        let host = uri.host().ok_or_else(|| Error::BadUrl(format!("server URL {url:?} has no host")))?;
        let host = host.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| Error::Unreachable(format!("cannot connect to {url}: timed out")))?
            .map_err(|e| Error::Unreachable(format!("cannot connect to {url}: {e}")))?;
        tcp.set_nodelay(true).map_err(|e| Error::Lost(format!("connection to {url} lost: {e}")))?;
        let stream = Counted { inner: tcp, counters };
        // Compressed batches hold up to 8 MiB of chunks and may, on incompressible data, be a
        // little larger than that.
        let config =
            WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| handshake_error(url, e))?;
        let agent = concat!("assetsync-cli/", env!("CARGO_PKG_VERSION"));
        let hello = hello(agent, token.map(str::to_owned), via.to_vec());
        let lost = || Error::Lost(format!("connection to {url} lost during the handshake"));
        ws.send(Message::text(serde_json::to_string(&hello).expect("client messages serialise")))
            .await
            .map_err(|_| lost())?;
        let answer = match ws.next().await {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<ServerMessage>(&t)
                .map_err(|e| Error::Lost(format!("invalid answer to hello from {url}: {e}")))?,
            _ => return Err(lost()),
        };
        match welcome(answer, via) {
            Ok(welcomed) => Ok((ws, welcomed)),
            Err(Welcome::Refused(message)) => Err(Error::Refused(message)),
            Err(e @ Welcome::Loop(_)) => Err(Error::Refused(e.to_string())),
            Err(e @ Welcome::Unexpected(_)) => Err(Error::Lost(format!("{url}: {e}"))),
        }
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) -> Result<(), Error> {
        let text = serde_json::to_string(message).expect("client messages serialise");
        self.requests += 1;
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| Error::Lost(format!("connection lost while sending: {e}")))
    }

    /// Sends binary frames (an upload's), flushed once at the end.
    pub(crate) async fn send_frames(&mut self, frames: &[Vec<u8>]) -> Result<(), Error> {
        let lost = |e| Error::Lost(format!("connection lost while sending: {e}"));
        for frame in frames {
            self.ws.feed(Message::binary(frame.clone())).await.map_err(lost)?;
        }
        self.ws.flush().await.map_err(lost)
    }

    /// Subscribes to changes of `scope`, one of `follow`'s, as the engine reads the answer.
    pub(crate) async fn subscribe(&mut self, scope: &Scope, follow: &mut Follow) -> Result<(), Error> {
        let id = self.next_id;
        self.next_id += 1;
        self.follows = true;
        self.send(&ClientMessage::Subscribe { id, path: scope.to_string() }).await?;
        loop {
            match self.recv().await? {
                Received::Message(message, _) => match follow.answer(scope, id, message) {
                    Ok(Subscription::Confirmed) => return Ok(()),
                    Ok(Subscription::Changed { asset, version }) => self.push_change(asset, version),
                    Err(error) => return Err(Error::sync(scope, error)),
                },
                Received::Frame(..) => {
                    return Err(Error::Lost("unexpected binary frame in answer to subscribe".into()));
                }
            }
        }
    }

    /// Notes an announced change (the latest of each asset only: the queue stays bounded
    /// however fast the server pushes).
    pub(crate) fn push_change(&mut self, asset: AssetPath, version: Option<VersionId>) {
        self.pushes.push(asset, version);
    }

    /// The next announced change, waiting for one.
    pub(crate) async fn change(&mut self) -> Result<(AssetPath, Option<VersionId>), Error> {
        loop {
            if let Some(change) = self.pushes.pop() {
                return Ok(change);
            }
            match self.recv().await? {
                Received::Message(ServerMessage::Changed { asset, version }, _) => {
                    self.push_change(asset, version)
                }
                Received::Message(ServerMessage::Error { id: None, message, .. }, _) => {
                    return Err(Error::Lost(format!("server closed the connection: {message}")));
                }
                Received::Message(other, _) => {
                    let why = format!("unexpected `{}` message while waiting for changes", other.kind());
                    return Err(Error::Lost(why));
                }
                Received::Frame(..) => {
                    return Err(Error::Lost("unexpected binary frame while waiting for changes".into()));
                }
            }
        }
    }

    /// The next message, each text parsed once here; a closed socket is a lost connection, and
    /// a text that does not parse means the stream went bad.
    pub(crate) async fn recv(&mut self) -> Result<Received, Error> {
        loop {
            let message = match self.ws.next().await {
                None => return Err(Error::Lost("connection lost: the server closed the socket".into())),
                Some(Err(e)) => return Err(Error::Lost(format!("connection lost: {e}"))),
                Some(Ok(m)) => m,
            };
            return Ok(match message {
                Message::Text(t) => Received::Message(
                    serde_json::from_str(&t)
                        .map_err(|e| Error::Lost(format!("invalid message from server: {e}: {t:.200}")))?,
                    on_the_wire(t.len()),
                ),
                Message::Binary(b) => Received::Frame(b.to_vec(), on_the_wire(b.len())),
                Message::Close(frame) => {
                    let reason = frame.map(|f| format!(": {}", f.reason)).unwrap_or_default();
                    return Err(Error::Lost(format!("server closed the connection{reason}")));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Socket bytes (read, written) so far.
    pub(crate) fn wire(&self) -> (u64, u64) {
        (self.counters.read.load(Ordering::Relaxed), self.counters.written.load(Ordering::Relaxed))
    }

    /// Socket bytes written since the last call. (Bytes read are counted per message: a read
    /// from the socket may hold several messages.)
    pub(crate) fn written_delta(&mut self) -> u64 {
        let now = self.wire().1;
        let delta = now - self.seen_written;
        self.seen_written = now;
        delta
    }
}

/// A message as it arrived: a control message (parsed) or a binary frame, with the bytes it
/// took on the wire.
pub(crate) enum Received {
    Message(ServerMessage, u64),
    Frame(Vec<u8>, u64),
}

/// The bytes a server message of `len` payload bytes takes on the wire: the payload and an
/// unmasked WebSocket frame header (RFC 6455 5.2), 2 bytes plus 2 or 8 for a longer length.
fn on_the_wire(len: usize) -> u64 {
    let header = match len {
        0..126 => 2,
        126..65536 => 4,
        _ => 10,
    };
    (header + len) as u64
}
