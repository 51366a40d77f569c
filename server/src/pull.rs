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
use assetsync_protocol::engine::{
    Action, AssetSync, ClientError, FIRST_BACKOFF_MS, Fetched, Finished, FolderSync, Input,
    MAX_OTHER_VERSIONS, MAX_RECONNECTS, MAX_RESUME_BACKOFF_MS, Machine,
};
use assetsync_protocol::{
    AssetPath, ClientMessage, Hash, Manifest, PROTOCOL_VERSION, Scope, ServerMessage, VersionId, compress,
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
    for target in targets {
        // A lost connection is resumed inside: only what cannot be fixed by retrying ends here.
        if let Err(e) = conn.pull_target(&mut cache, target, config, &mut collect).await {
            result = Err(e.context(target.to_string()));
            break;
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
const FIRST_BACKOFF: Duration = Duration::from_millis(FIRST_BACKOFF_MS as u64);
/// Longest wait between reconnection attempts of `--follow`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait between reconnections while resuming one transfer.
const MAX_RESUME_BACKOFF: Duration = Duration::from_millis(MAX_RESUME_BACKOFF_MS as u64);

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
    /// The counters (read, written) when last sampled by [`Connection::wire_delta`].
    seen: (u64, u64),
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
        let mut conn = Connection {
            ws,
            url,
            token,
            counters,
            seen: (0, 0),
            next_id: 1,
            changes: VecDeque::new(),
            follows: false,
        };
        conn.seen = conn.wire();
        Ok(conn)
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

    /// Subscribes to changes of `scope`.
    async fn subscribe(&mut self, scope: &Scope) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.follows = true;
        self.send(&ClientMessage::Subscribe { id, path: scope.to_string() }).await?;
        loop {
            match self.recv_message().await? {
                ServerMessage::Subscribed { id: got } if got == id => return Ok(()),
                ServerMessage::Changed { asset, version } => self.push_change(asset, version),
                ServerMessage::Error { message, .. } => bail!("server refused to watch {scope}: {message}"),
                other => bail!("unexpected `{}` answer to subscribe", other.kind()),
            }
        }
    }

    /// Notes an announced change. Only the last change of each asset is kept, so the queue holds
    /// at most one entry per asset however fast the server pushes.
    fn push_change(&mut self, asset: AssetPath, version: Option<VersionId>) {
        self.changes.retain(|(a, _)| *a != asset);
        self.changes.push_back((asset, version));
    }

    /// The next announced change, waiting for one.
    async fn change(&mut self) -> anyhow::Result<(AssetPath, Option<VersionId>)> {
        loop {
            if let Some(change) = self.changes.pop_front() {
                return Ok(change);
            }
            match self.recv_message().await? {
                ServerMessage::Changed { asset, version } => self.push_change(asset, version),
                ServerMessage::Error { id: None, message, .. } => {
                    bail!("server closed the connection: {message}")
                }
                other => bail!("unexpected `{}` message while waiting for changes", other.kind()),
            }
        }
    }

    /// The next control message, parsed.
    async fn recv_message(&mut self) -> anyhow::Result<ServerMessage> {
        match self.recv_raw().await? {
            Raw::Text(t) => {
                serde_json::from_str(&t).with_context(|| format!("invalid message from server: {t:.200}"))
            }
            Raw::Binary(_) => bail!("unexpected binary frame"),
        }
    }

    /// The next message as it arrived; a closed socket is a lost connection.
    async fn recv_raw(&mut self) -> anyhow::Result<Raw> {
        loop {
            let message = match self.ws.next().await {
                None => bail!("connection lost: the server closed the socket"),
                Some(Err(e)) => bail!("connection lost: {e}"),
                Some(Ok(m)) => m,
            };
            return Ok(match message {
                Message::Text(t) => Raw::Text(t.to_string()),
                Message::Binary(b) => Raw::Binary(b.to_vec()),
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
        let (started, wire0) = (Instant::now(), self.wire());
        // Whole-target figures come from the socket counters: they also cover the handshakes of
        // reconnections and the partial messages a cut threw away.
        let wire = |conn: &Self| {
            let now = conn.wire();
            (now.0 - wire0.0, now.1 - wire0.1)
        };
        match target {
            Scope::Asset(asset) => {
                let base = cache.current(asset);
                let others = cache.others(asset, MAX_OTHER_VERSIONS);
                let mut machine = AssetSync::new(asset.clone(), base, others, self.next_id);
                if self.follows {
                    machine = machine.without_resume();
                }
                let unchanged = self.drive(&mut machine, cache, config, report).await?;
                self.next_id = machine.next_id();
                let done = machine.finish();
                if let (Fetched::Unchanged(_), Some(data)) = (&done.fetched, unchanged) {
                    // The cached copy is current: `--out` gets it again, as a single pull repairs.
                    write_out(config, done.manifest(), &data)?;
                }
                report(&PullEvent::Pulled(PullReport::new(&done, started, Some(wire(self)))));
            }
            folder => {
                let held =
                    cache.assets().filter(|a| folder.covers(a)).filter_map(|a| cache.current(&a)).collect();
                let mut machine = FolderSync::new(folder.clone(), held, self.next_id);
                if self.follows {
                    machine = machine.without_resume();
                }
                self.drive(&mut machine, cache, config, report).await?;
                self.next_id = machine.next_id();
                let done = machine.finish();
                let (wire_bytes_in, wire_bytes_out) = wire(self);
                report(&PullEvent::Folder(FolderReport {
                    folder: folder.to_string(),
                    files: done.files,
                    fetched: done.fetched.len(),
                    removed: done.removed.len(),
                    wire_bytes_in,
                    wire_bytes_out,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                }));
            }
        }
        Ok(())
    }

    /// Runs `machine` to its end, moving bytes between it, the socket and the cache. Returns the
    /// file of an unchanged asset, as read back from the cache.
    async fn drive(
        &mut self,
        machine: &mut impl Machine,
        cache: &mut Cache,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let mut unchanged = None;
        let mut file_started = Instant::now();
        loop {
            let input = match machine.poll() {
                Action::Send(message) => match self.send(&message).await {
                    Ok(()) => Input::Sent { wire: self.wire_delta().1 },
                    Err(e) => Input::Lost(format!("{e:#}")),
                },
                Action::Receive => {
                    let received = self.recv_raw().await;
                    let wire = self.wire_delta().0;
                    match received {
                        Ok(Raw::Text(text)) => {
                            machine.handle(Input::Text { text: &text, wire });
                            continue;
                        }
                        Ok(Raw::Binary(frame)) => {
                            machine.handle(Input::Frame { frame: &frame, wire });
                            continue;
                        }
                        Err(e) => Input::Lost(format!("{e:#}")),
                    }
                }
                Action::LoadFile(m) => Input::File(cache.file(m)),
                Action::CheckFile(m) => Input::Checked(cache.file(m).map(|data| unchanged = Some(data))),
                // This driver leaves hashing to the machine.
                Action::FinishHashing => continue,
                Action::LoadChunks { ids, .. } => {
                    Input::Chunks(ids.into_iter().filter_map(|id| Some((id, cache.chunk(&id)?))).collect())
                }
                Action::Verify(data) => Input::Digest(Hash::of(data)),
                Action::Keep(chunks) => {
                    cache.store_chunks(chunks).context(CommitFailed)?;
                    Input::Stored
                }
                Action::Commit(synced) => {
                    let out = config.out.as_ref().map(|dir| dir.join(synced.manifest.path.as_str()));
                    let file = out.as_deref().map(|p| (p, &synced.data[..]));
                    cache
                        .commit(&synced.manifest, synced.version, &synced.received, file)
                        .context(CommitFailed)?;
                    Input::Stored
                }
                Action::Remove(asset) => {
                    let out = config.out.as_ref().map(|dir| dir.join(asset.as_str()));
                    cache.remove(asset, out.as_deref()).context(CommitFailed)?;
                    report(&PullEvent::Removed { asset: asset.to_string() });
                    Input::Stored
                }
                Action::Discard(ids) => {
                    cache.discard(&ids);
                    continue;
                }
                Action::Reconnect { after_ms } => {
                    tokio::time::sleep(Duration::from_millis(after_ms.into())).await;
                    match self.reconnect().await {
                        Ok(()) => Input::Reconnected,
                        Err(e) => Input::Lost(format!("{e:#}")),
                    }
                }
                Action::Changed { asset, version } => {
                    self.push_change(asset, version);
                    continue;
                }
                Action::Warn(line) => {
                    tracing::warn!("{line}");
                    continue;
                }
                Action::FileDone(done) => {
                    report(&PullEvent::Pulled(PullReport::new(&done, file_started, None)));
                    file_started = Instant::now();
                    continue;
                }
                // The chunk cache keeps chunks, so kept ones are simply part of the commit.
                Action::Prefetch(_) | Action::Release(_) | Action::Progress { .. } => continue,
                Action::Done => return Ok(unchanged),
                Action::Failed(error) => return Err(error.into()),
            };
            machine.handle(input);
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
            Err(e) if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Refused { .. })) => {
                report(&PullEvent::Failed { asset: target.to_string(), error: format!("{e:#}") });
            }
            Err(e) if e.downcast_ref::<CommitFailed>().is_some() => return Err(Fatal(e)),
            Err(e) => return Err(Lost(e)),
        }
        Ok(())
    }

    /// Socket bytes (read, written) so far.
    fn wire(&self) -> (u64, u64) {
        (self.counters.read.load(Ordering::Relaxed), self.counters.written.load(Ordering::Relaxed))
    }

    /// Socket bytes (read, written) since the last call.
    fn wire_delta(&mut self) -> (u64, u64) {
        let now = self.wire();
        let delta = (now.0 - self.seen.0, now.1 - self.seen.1);
        self.seen = now;
        delta
    }
}

/// Writes `data`, the verified file of `manifest`, to `config.out` if set.
fn write_out(config: &PullConfig, manifest: &Manifest, data: &[u8]) -> anyhow::Result<()> {
    let Some(dir) = &config.out else { return Ok(()) };
    let path = dir.join(manifest.path.as_str());
    crate::cache::write_file_atomic(&path, data)
        .with_context(|| format!("cannot write {}", path.display()))
        .context(CommitFailed)
}

impl PullReport {
    /// The report of `done`, with the socket bytes `wire` (read, written) if measured, else the
    /// machine's count of the bytes of the messages it was given.
    fn new(done: &Finished, started: Instant, wire: Option<(u64, u64)>) -> Self {
        let manifest = done.manifest();
        let (wire_bytes_in, wire_bytes_out) = wire.unwrap_or((done.report.wire_in, done.report.wire_out));
        PullReport {
            asset: manifest.path.to_string(),
            version: manifest.version().to_hex(),
            bytes: manifest.len,
            chunks: manifest.chunks.len(),
            chunks_reused: done.chunks_reused(),
            wire_bytes_in,
            wire_bytes_out,
            elapsed_ms: started.elapsed().as_millis() as u64,
            requests: done.report.requests,
            retried: done.report.retried,
        }
    }
}

/// A message as it arrived, before the machine parses it.
enum Raw {
    Text(String),
    Binary(Vec<u8>),
}
