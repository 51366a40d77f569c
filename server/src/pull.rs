//! The native client: drives [`assetsync_protocol::ClientSync`] over tokio-tungstenite and
//! commits verified results to a [`Cache`] and an output folder.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use assetsync_protocol::{
    AssetPath, ChunkId, ChunkSet, ClientMessage, ClientSync, Error as SyncError, Event, Have, MAX_REQUESTS,
    Manifest, PROTOCOL_VERSION, Scope, ServerMessage, Synced, VerifiedChunk, VersionId, compress,
    folder_changes, held_chunk_ids,
};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cache::Cache;

/// How many other cached assets' versions accompany each request (their chunks count as held).
const MAX_OTHER_VERSIONS: usize = 64;

/// Where to pull from and to.
#[derive(Clone, Debug)]
pub struct PullConfig {
    /// `ws://host:port/sync`.
    pub server: String,
    /// The chunk cache directory.
    pub cache: PathBuf,
    /// Each asset is written to `out/ASSET`; `None` only updates the cache.
    pub out: Option<PathBuf>,
    /// The server's shared secret, if it requires one.
    pub token: Option<String>,
}

/// What one asset's sync did, printed by `pull --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PullReport {
    /// The asset path.
    pub asset: String,
    /// The committed version id.
    pub version: String,
    /// File size.
    pub bytes: u64,
    /// Manifest entries.
    pub chunks: usize,
    /// Entries not transferred because the cache had them.
    pub chunks_reused: usize,
    /// Bytes read from the socket for this asset (WebSocket framing included).
    pub wire_bytes_in: u64,
    /// Bytes written to the socket for this asset.
    pub wire_bytes_out: u64,
    /// Wall time of the sync, commit included.
    pub elapsed_ms: u64,
    /// `sync` requests made: 1, or more when the server did not know the cached version or the
    /// data failed verification.
    pub requests: u32,
    /// Whether an attempt failed verification and was retried.
    pub retried: bool,
}

/// Pulls each asset in turn over one connection, calling `report` after each commit.
pub async fn pull(
    config: &PullConfig,
    targets: &[Scope],
    mut report: impl FnMut(&PullEvent),
) -> anyhow::Result<Vec<PullReport>> {
    let mut cache = open_cache(&config.cache).await?;
    let mut conn = Connection::open_resilient(&config.server, config.token.as_deref()).await?;
    let mut reports = Vec::new();
    let mut collect = |e: &PullEvent| {
        if let PullEvent::Pulled(r) = e {
            reports.push(r.clone());
        }
        report(e);
    };
    let mut result = Ok(());
    'targets: for target in targets {
        let mut losses = 0;
        loop {
            match conn.pull_target(&mut cache, target, config, &mut collect).await {
                Ok(()) => break,
                // A folder interrupted midway: its files committed so far are now held, so
                // asking again fetches only the rest. (A single asset resumes by itself.)
                Err(e) if !matches!(target, Scope::Asset(_)) && resumable(&e) && losses < MAX_RECONNECTS => {
                    losses += 1;
                    tracing::warn!(folder = %target, error = %format!("{e:#}"), "connection lost; resuming");
                    tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(losses)).await;
                    let _ = conn.reconnect().await;
                }
                Err(e) => {
                    result = Err(e.context(target.to_string()));
                    break 'targets;
                }
            }
        }
    }
    conn.close().await;
    result.map(|()| reports)
}

/// What one folder sync did.
#[derive(Clone, Debug, Serialize)]
pub struct FolderReport {
    /// The folder (`""` for the root).
    pub folder: String,
    /// Files the server listed.
    pub files: usize,
    /// Files fetched (new or changed).
    pub fetched: usize,
    /// Files deleted because the server no longer lists them.
    pub removed: usize,
    /// Bytes read from the socket for the whole folder.
    pub wire_bytes_in: u64,
    /// Bytes written to the socket for the whole folder.
    pub wire_bytes_out: u64,
    /// Wall time, commits included.
    pub elapsed_ms: u64,
}

/// What `pull` reports as it goes (and `pull --follow` for as long as it runs).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// An asset was synced and written.
    Pulled(PullReport),
    /// A folder was synced: its new and changed files were `pulled`, its gone ones `removed`.
    Folder(FolderReport),
    /// An asset is gone from the server: deleted from `--out` and the cache's pointers.
    Removed {
        /// The asset path.
        asset: String,
    },
    /// An asset could not be synced; the others go on.
    Failed {
        /// The asset path.
        asset: String,
        /// Why.
        error: String,
    },
    /// The connection is down; the next attempt is in `retry_ms`.
    Disconnected {
        /// Why.
        error: String,
        /// Wait before reconnecting.
        retry_ms: u64,
    },
}

/// First wait before reconnecting; doubled after each failed attempt, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait between reconnections while resuming one transfer.
const MAX_RESUME_BACKOFF: Duration = Duration::from_secs(5);
/// Connections one transfer may lose before `pull` gives up.
const MAX_RECONNECTS: u32 = 8;

/// Pulls `assets`, then keeps the connection: each time the server announces that one changed,
/// pulls it again (or deletes it from `out` when it is gone). When the connection is lost it
/// reconnects with exponential backoff and pulls everything again, so nothing announced while
/// it was away is missed. Runs until an error that retrying cannot fix (a cache it cannot open
/// or write).
pub async fn follow(
    config: &PullConfig,
    targets: &[Scope],
    mut report: impl FnMut(&PullEvent),
) -> anyhow::Result<()> {
    let mut cache = open_cache(&config.cache).await?;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut connected = false;
        let error = match follow_once(config, &mut cache, targets, &mut report, &mut connected).await {
            Ok(never) => match never {},
            Err(Lost(e)) => e,
            Err(Fatal(e)) => return Err(e),
        };
        if connected {
            backoff = FIRST_BACKOFF;
        }
        let retry_ms = backoff.as_millis() as u64;
        report(&PullEvent::Disconnected { error: format!("{error:#}"), retry_ms });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens the cache on the blocking pool: it may wait for another process's lock.
async fn open_cache(dir: &std::path::Path) -> anyhow::Result<Cache> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || Cache::open(&dir)).await.context("opening the cache panicked")?
}

/// Marks a connection that broke between the TCP connect and `welcome`: worth retrying.
#[derive(Debug)]
struct HandshakeBroke;

impl std::fmt::Display for HandshakeBroke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection broke during the handshake")
    }
}

/// Whether reconnecting may get past `e`: not a refusal by the server, nor a local write failure.
fn resumable(e: &anyhow::Error) -> bool {
    !matches!(e.downcast_ref::<SyncError>(), Some(SyncError::Server { .. }))
        && e.downcast_ref::<CommitFailed>().is_none()
}

/// Marks errors of writing the cache or `--out`, which a reconnection cannot fix.
#[derive(Debug)]
struct CommitFailed;

impl std::fmt::Display for CommitFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot write to the cache or --out (the previous version is kept)")
    }
}

/// How one connection of [`follow`] ended.
enum FollowEnd {
    /// The connection failed or was lost: reconnect.
    Lost(anyhow::Error),
    /// Retrying cannot help.
    Fatal(anyhow::Error),
}
use FollowEnd::{Fatal, Lost};

async fn follow_once(
    config: &PullConfig,
    cache: &mut Cache,
    targets: &[Scope],
    report: &mut impl FnMut(&PullEvent),
    connected: &mut bool,
) -> Result<std::convert::Infallible, FollowEnd> {
    let mut conn = Connection::open(&config.server, config.token.as_deref()).await.map_err(Lost)?;
    // Subscribed before the first pull, so that a change during it is not missed.
    for target in targets {
        conn.subscribe(target).await.map_err(Lost)?;
    }
    *connected = true;
    for target in targets {
        conn.follow_pull(cache, target, config, report).await?;
    }
    loop {
        let (asset, version) = conn.change().await.map_err(Lost)?;
        match version {
            Some(version) if cache.current(&asset).is_some_and(|m| m.version() == version) => {}
            Some(_) => conn.follow_pull(cache, &Scope::Asset(asset), config, report).await?,
            None => {
                let out = config.out.as_ref().map(|dir| dir.join(asset.as_str()));
                cache.remove(&asset, out.as_deref()).map_err(Fatal)?;
                report(&PullEvent::Removed { asset: asset.to_string() });
            }
        }
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

struct Connection {
    ws: WebSocketStream<Counted<TcpStream>>,
    /// Where to reconnect to after a lost connection.
    url: String,
    token: Option<String>,
    /// Shared by every socket of this connection, so the wire counts survive reconnections.
    counters: Arc<Counters>,
    next_id: u32,
    /// `changed` pushes that arrived while an answer was being read.
    changes: VecDeque<(AssetPath, Option<VersionId>)>,
    /// Subscribed: a lost connection is left to [`follow`], which reconnects, subscribes again
    /// and resyncs everything (a quiet reconnection would lose the subscriptions).
    follows: bool,
}

impl Connection {
    /// Connects, upgrades and exchanges `hello`/`welcome`.
    async fn open(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters::default());
        let ws = Self::handshake(url, token, counters.clone()).await?;
        let (url, token) = (url.to_owned(), token.map(str::to_owned));
        Ok(Connection { ws, url, token, counters, next_id: 1, changes: VecDeque::new(), follows: false })
    }

    /// [`Connection::open`], retried with backoff when the connection breaks during the
    /// handshake. An unreachable server or a refusal fails at once.
    async fn open_resilient(url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let mut backoff = FIRST_BACKOFF;
        for _ in 0..MAX_RECONNECTS {
            match Self::open(url, token).await {
                Err(e) if e.downcast_ref::<HandshakeBroke>().is_some() => {
                    tracing::warn!(error = %format!("{e:#}"), "handshake broke; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RESUME_BACKOFF);
                }
                result => return result,
            }
        }
        Self::open(url, token).await
    }

    /// Replaces a lost socket with a new one (same counters; pending pushes are kept).
    async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.ws = Self::handshake(&self.url, self.token.as_deref(), self.counters.clone()).await?;
        Ok(())
    }

    async fn handshake(
        url: &str,
        token: Option<&str>,
        counters: Arc<Counters>,
    ) -> anyhow::Result<WebSocketStream<Counted<TcpStream>>> {
        let request = url.into_client_request().with_context(|| format!("invalid server URL {url:?}"))?;
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            bail!("unsupported server URL {url:?}: use ws://HOST:PORT/sync (put TLS in a reverse proxy)");
        }
        let host = uri.host().context("server URL has no host")?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| anyhow!("cannot connect to {url}: timed out"))?
            .with_context(|| format!("cannot connect to {url}"))?;
        tcp.set_nodelay(true)?;
        let stream = Counted { inner: tcp, counters };
        // Compressed batches hold up to 8 MiB of chunks and may, on incompressible data, be a
        // little larger than that.
        let config =
            WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| anyhow::Error::new(e).context(HandshakeBroke))
            .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        let agent = concat!("assetsync-cli/", env!("CARGO_PKG_VERSION")).to_owned();
        let encodings = vec![compress::ZSTD.to_owned()];
        let token = token.map(str::to_owned);
        let hello = ClientMessage::Hello { protocol: PROTOCOL_VERSION, agent, encodings, token };
        ws.send(Message::text(serde_json::to_string(&hello).expect("client messages serialise")))
            .await
            .context("connection lost while sending")?;
        let answer = match ws.next().await {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<ServerMessage>(&t).ok(),
            _ => {
                return Err(
                    anyhow!(HandshakeBroke).context(format!("connection to {url} lost during the handshake"))
                );
            }
        };
        match answer {
            Some(ServerMessage::Welcome { protocol: PROTOCOL_VERSION, .. }) => Ok(ws),
            Some(ServerMessage::Error { message, .. }) => bail!("server refused the connection: {message}"),
            other => bail!("unexpected handshake answer from server: {other:?}"),
        }
    }

    async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        let text = serde_json::to_string(message).expect("client messages serialise");
        self.ws.send(Message::text(text)).await.context("connection lost while sending")
    }

    /// The next message of an answer; `changed` pushes are set aside for [`Connection::change`].
    async fn recv(&mut self) -> anyhow::Result<Incoming> {
        loop {
            match self.recv_any().await? {
                Incoming::Control(ServerMessage::Changed { asset, version }) => {
                    self.changes.push_back((asset, version));
                }
                other => return Ok(other),
            }
        }
    }

    /// Subscribes to changes of `scope`.
    async fn subscribe(&mut self, scope: &Scope) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.follows = true;
        self.send(&ClientMessage::Subscribe { id, path: scope.to_string() }).await?;
        match self.recv().await? {
            Incoming::Control(ServerMessage::Subscribed { id: got }) if got == id => Ok(()),
            Incoming::Control(ServerMessage::Error { message, .. }) => {
                bail!("server refused to watch {scope}: {message}")
            }
            other => bail!("unexpected `{}` answer to subscribe", other.kind()),
        }
    }

    /// The next announced change, waiting for one. Of several changes to one asset, only the
    /// last is returned.
    async fn change(&mut self) -> anyhow::Result<(AssetPath, Option<VersionId>)> {
        loop {
            if let Some((asset, version)) = self.changes.pop_front() {
                if !self.changes.iter().any(|(a, _)| *a == asset) {
                    return Ok((asset, version));
                }
                continue;
            }
            match self.recv_any().await? {
                Incoming::Control(ServerMessage::Changed { asset, version }) => {
                    self.changes.push_back((asset, version));
                }
                Incoming::Control(ServerMessage::Error { id: None, message, .. }) => {
                    bail!("server closed the connection: {message}")
                }
                other => bail!("unexpected `{}` message while waiting for changes", other.kind()),
            }
        }
    }

    async fn recv_any(&mut self) -> anyhow::Result<Incoming> {
        loop {
            let message = match self.ws.next().await {
                None => bail!("connection lost: the server closed the socket"),
                Some(Err(e)) => bail!("connection lost: {e}"),
                Some(Ok(m)) => m,
            };
            return Ok(match message {
                Message::Text(t) => Incoming::Control(
                    serde_json::from_str(&t)
                        .with_context(|| format!("invalid message from server: {t:.200}"))?,
                ),
                Message::Binary(b) => Incoming::Frame(b.to_vec()),
                Message::Close(frame) => bail!(
                    "server closed the connection{}",
                    frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                ),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Pulls one asset, or every file of a folder, reporting each as it lands.
    async fn pull_target(
        &mut self,
        cache: &mut Cache,
        target: &Scope,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> anyhow::Result<()> {
        match target {
            Scope::Asset(asset) => report(&PullEvent::Pulled(self.pull_one(cache, asset, config).await?)),
            folder => {
                let r = self.pull_folder(cache, folder, config, report).await?;
                report(&PullEvent::Folder(r));
            }
        }
        Ok(())
    }

    /// Syncs a folder in one round trip: its listing, then every new or changed file, each
    /// committed as it arrives; files no longer listed are removed. A file whose data fails
    /// verification is pulled again on its own afterwards.
    async fn pull_folder(
        &mut self,
        cache: &mut Cache,
        folder: &Scope,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> anyhow::Result<FolderReport> {
        let started = Instant::now();
        let (in0, out0) = self.wire();
        let held: Vec<Manifest> =
            cache.assets().filter(|a| folder.covers(a)).filter_map(|a| cache.current(&a)).collect();
        let versions: Vec<VersionId> = held.iter().map(Manifest::version).collect();
        let mut chunks = ChunkSet::default();
        let (id, files) = loop {
            let id = self.next_id;
            self.next_id += 1;
            let have = Have { versions: versions.clone(), chunks: chunks.clone() };
            self.send(&ClientMessage::SyncFolder { id, folder: folder.to_string(), have }).await?;
            match self.recv().await? {
                Incoming::Control(ServerMessage::Folder { id: got, files }) if got == id => {
                    break (id, files);
                }
                // The server forgot some of these versions: list their chunks instead.
                Incoming::Control(ServerMessage::UnknownBase { id: got })
                    if got == id && chunks.is_empty() =>
                {
                    chunks = ChunkSet::new(held_chunk_ids(&held));
                }
                Incoming::Control(ServerMessage::Error { id: Some(_), code, message }) => {
                    return Err(SyncError::Server { code, message }.into());
                }
                other => bail!("unexpected `{}` answer to sync_folder", other.kind()),
            }
        };
        let changes = folder_changes(&held, &files);
        let mut again = Vec::new();
        for asset in &changes.fetch {
            let (t0, (file_in0, _)) = (Instant::now(), self.wire());
            let mut machine = ClientSync::for_folder_file(id, asset.clone(), held.clone(), chunks.prefix());
            if let Err(error) = self.receive(&mut machine, cache).await? {
                tracing::warn!(%asset, %error, "folder file failed verification; pulling it again");
                again.push(asset.clone());
                continue;
            }
            // Chunks sent for earlier files of this answer are in the cache by now.
            let synced = match finish(machine, cache).0 {
                Ok(synced) => synced,
                Err(error) => {
                    tracing::warn!(%asset, %error, "folder file failed verification; pulling it again");
                    again.push(asset.clone());
                    continue;
                }
            };
            commit(cache, &synced, config)?;
            let wire = (self.wire().0 - file_in0, 0);
            report(&PullEvent::Pulled(PullReport::new(&synced, wire, t0, 1, false)));
        }
        for asset in &changes.removed {
            let out = config.out.as_ref().map(|dir| dir.join(asset.as_str()));
            cache.remove(asset, out.as_deref()).context(CommitFailed)?;
            report(&PullEvent::Removed { asset: asset.to_string() });
        }
        for asset in &again {
            report(&PullEvent::Pulled(self.pull_one(cache, asset, config).await?));
        }
        let (in1, out1) = self.wire();
        Ok(FolderReport {
            folder: folder.to_string(),
            files: files.len(),
            fetched: changes.fetch.len(),
            removed: changes.removed.len(),
            wire_bytes_in: in1 - in0,
            wire_bytes_out: out1 - out0,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Feeds one answer to `machine` until it is complete. Bad data (and `unknown_base`) comes
    /// back as the inner `Err` once the whole answer has been read, so the stream stays usable.
    async fn receive(
        &mut self,
        machine: &mut ClientSync,
        cache: &Cache,
    ) -> anyhow::Result<Result<(), SyncError>> {
        loop {
            let event = match self.recv().await? {
                Incoming::Control(m) => machine.on_message(m),
                Incoming::Frame(f) => machine.on_frame(&f),
            };
            if let Some(prefix) = machine.wanted_prefix() {
                machine.set_prefix(cache.file(prefix), true);
            }
            match event {
                Ok(Event::Complete) => return Ok(Ok(())),
                Ok(Event::Progress { .. }) => {}
                Err(
                    error @ (SyncError::FileMismatch | SyncError::MissingLocal(_) | SyncError::UnknownBase),
                ) => {
                    return Ok(Err(error));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// [`Connection::pull_target`] for [`follow`]: a request the server refused (an asset not
    /// there yet, say) is reported and the connection goes on.
    async fn follow_pull(
        &mut self,
        cache: &mut Cache,
        target: &Scope,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> Result<(), FollowEnd> {
        match self.pull_target(cache, target, config, report).await {
            Ok(()) => {}
            Err(e) if matches!(e.downcast_ref::<SyncError>(), Some(SyncError::Server { .. })) => {
                report(&PullEvent::Failed { asset: target.to_string(), error: format!("{e:#}") });
            }
            Err(e) if e.downcast_ref::<CommitFailed>().is_some() => return Err(Fatal(e)),
            Err(e) => return Err(Lost(e)),
        }
        Ok(())
    }

    fn wire(&self) -> (u64, u64) {
        (self.counters.read.load(Ordering::Relaxed), self.counters.written.load(Ordering::Relaxed))
    }

    /// Syncs one asset: a first request naming the cache's versions, then, if the server does
    /// not know them or the data fails verification, requests listing the chunks still held
    /// (see [`SyncError::retry_holding`]).
    async fn pull_one(
        &mut self,
        cache: &mut Cache,
        asset: &AssetPath,
        config: &PullConfig,
    ) -> anyhow::Result<PullReport> {
        let started = Instant::now();
        let (in0, out0) = self.wire();
        let (mut base, mut others) = (cache.current(asset), cache.others(asset, MAX_OTHER_VERSIONS));
        let (mut held, mut requests, mut retried) = (Vec::new(), 0, false);
        let (mut losses, mut backoff) = (0, FIRST_BACKOFF);
        let synced = loop {
            requests += 1;
            let have = ChunkSet::new(held.clone());
            match self.attempt(cache, asset, base.clone(), others.clone(), have).await? {
                Outcome::Done(synced) => break synced,
                Outcome::Lost { error, .. } if self.follows => return Err(error),
                Outcome::Lost { error, kept } => {
                    // Resume: the same request again, plus the chunks that did arrive.
                    losses += 1;
                    requests -= 1;
                    if losses > MAX_RECONNECTS {
                        bail!("connection lost {losses} times, giving up: {error:#}");
                    }
                    tracing::warn!(%asset, error = %format!("{error:#}"), kept = kept.len(), "connection lost; resuming");
                    held.extend(kept);
                    loop {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_RESUME_BACKOFF);
                        match self.reconnect().await {
                            Ok(()) => break,
                            Err(e) if losses < MAX_RECONNECTS => {
                                losses += 1;
                                tracing::warn!(error = %format!("{e:#}"), "reconnecting failed");
                            }
                            Err(e) => return Err(e.context("connection lost, and reconnecting failed")),
                        }
                    }
                }
                Outcome::Retry { error, .. } if requests == MAX_REQUESTS => {
                    bail!("giving up after {requests} requests: {error}")
                }
                Outcome::Retry { error: SyncError::UnknownBase, held: h } => {
                    tracing::info!(%asset, chunks = h.len(), "server does not know the cached version");
                    (base, held) = (None, h);
                }
                Outcome::Retry { error, held: h } => {
                    tracing::warn!(%asset, %error, "sync failed verification; retrying");
                    // A clean start: only the chunks found intact.
                    (base, held, retried) = (None, h, true);
                    others.clear();
                }
            }
        };
        commit(cache, &synced, config)?;
        let (in1, out1) = self.wire();
        Ok(PullReport::new(&synced, (in1 - in0, out1 - out0), started, requests, retried))
    }

    /// One request/answer exchange. Errors are fatal (connection, server refusal, protocol
    /// violation); bad data is an [`Outcome::Retry`].
    async fn attempt(
        &mut self,
        cache: &Cache,
        asset: &AssetPath,
        base: Option<assetsync_protocol::Manifest>,
        others: Vec<assetsync_protocol::Manifest>,
        have_chunks: ChunkSet,
    ) -> anyhow::Result<Outcome> {
        let id = self.next_id;
        self.next_id += 1;
        let (mut machine, request) = ClientSync::new(id, asset.clone(), base, others, have_chunks);
        let received = match self.send(&request).await {
            Ok(()) => self.receive(&mut machine, cache).await,
            Err(e) => Err(e),
        };
        match received {
            Ok(Ok(())) => {}
            Ok(Err(error @ SyncError::Server { .. })) => return Err(error.into()),
            Ok(Err(error)) => {
                let held = error.retry_holding(machine.held_chunks(), machine.chunk_prefix());
                return Ok(Outcome::Retry { error, held: held.unwrap_or_default() });
            }
            Err(error) => {
                // Lost, or the stream went bad: keep what arrived (each chunk is named by the
                // hash of its bytes) so that the next attempt does not fetch it again.
                let kept = machine.take_received();
                cache.store_chunks(&kept).context(CommitFailed)?;
                return Ok(Outcome::Lost { error, kept: kept.iter().map(VerifiedChunk::id).collect() });
            }
        }
        let prefix = machine.chunk_prefix();
        let (result, held) = finish(machine, cache);
        match result {
            Ok(synced) => Ok(Outcome::Done(synced)),
            Err(error) => {
                let Some(held) = error.retry_holding(held, prefix) else { return Err(error.into()) };
                if let SyncError::MissingLocal(damaged) = &error {
                    cache.discard(damaged);
                }
                Ok(Outcome::Retry { error, held })
            }
        }
    }
}

/// Rebuilds and verifies the file of a complete answer from its received chunks and the ones
/// `machine` needs from `cache`. Also returns the ids of the chunks found in the cache.
fn finish(machine: ClientSync, cache: &Cache) -> (Result<Synced, SyncError>, Vec<ChunkId>) {
    let local: Vec<_> =
        machine.local_chunks().into_iter().filter_map(|id| Some((id, cache.chunk(&id)?))).collect();
    let held = local.iter().map(|(id, _)| *id).collect();
    (machine.finish(local), held)
}

/// Writes a verified version to `config.out` (if set) and commits it to `cache`.
fn commit(cache: &mut Cache, synced: &Synced, config: &PullConfig) -> anyhow::Result<()> {
    let out = config.out.as_ref().map(|dir| dir.join(synced.manifest.path.as_str()));
    let file = out.as_deref().map(|p| (p, &synced.data[..]));
    cache.commit(&synced.manifest, synced.version, &synced.received, file).context(CommitFailed)
}

impl PullReport {
    fn new(
        synced: &Synced,
        (wire_in, wire_out): (u64, u64),
        started: Instant,
        requests: u32,
        retried: bool,
    ) -> Self {
        PullReport {
            asset: synced.manifest.path.to_string(),
            version: synced.version.to_hex(),
            bytes: synced.manifest.len,
            chunks: synced.manifest.chunks.len(),
            chunks_reused: synced.chunks_reused,
            wire_bytes_in: wire_in,
            wire_bytes_out: wire_out,
            elapsed_ms: started.elapsed().as_millis() as u64,
            requests,
            retried,
        }
    }
}

/// How one attempt ended.
enum Outcome {
    /// Verified and ready to commit.
    Done(Synced),
    /// The connection was lost (or its stream went bad) mid-answer; `kept` are the chunks that
    /// had arrived, now in the cache.
    Lost { error: anyhow::Error, kept: Vec<ChunkId> },
    /// The server did not know the cached version, or the data was bad; retry naming `held`
    /// (the intact chunks) in the digest.
    Retry { error: SyncError, held: Vec<ChunkId> },
}

#[derive(Debug)]
enum Incoming {
    Control(ServerMessage),
    Frame(Vec<u8>),
}

impl Incoming {
    /// What arrived, for errors: the message's `type`, or a binary frame.
    fn kind(&self) -> &'static str {
        match self {
            Incoming::Control(message) => message.kind(),
            Incoming::Frame(_) => "binary frame",
        }
    }
}
