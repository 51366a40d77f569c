//! The change bus (`--bus redis://HOST:PORT[/DB]`): instances that serve one build folder tell
//! each other's subscribers about changes.
//!
//! Each instance publishes on a Redis channel the changes its own index announces, and the files
//! its watcher saw change without indexing them (nobody asked it for them; another instance may
//! serve them), and records the same news per asset in a Redis hash. Each instance also listens:
//! news from another instance makes it re-check that asset against its own root (see
//! [`watch::recheck`]), and its index then announces any change to its own subscribers as if its
//! own watcher had fired. The hash is how missed messages are recovered: after every
//! (re)connection an instance reads it and re-checks each asset whose version there differs from
//! its own.
//!
//! Redis carries news, never content: versions are always read and hashed from this instance's
//! own root, so a stale, repeated or forged message costs a re-check, never a wrong byte. While
//! Redis is unreachable the instance keeps serving and retries with backoff; only its
//! subscribers miss other instances' changes until the bus is back. Separate deployments that
//! share a Redis server use separate databases (`redis://HOST:PORT/1`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use assetsync_protocol::{AssetPath, Hash, VersionId};
use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::index::AssetIndex;
use crate::watch::{self, Change, Hub};

/// The pub/sub channel every change is published on.
const CHANNEL: &str = "assetsync:changes";
/// The hash of asset -> its latest [`News`], encoded.
const VERSIONS: &str = "assetsync:versions";
/// Longest wait for Redis to connect or answer one command.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle subscription is pinged, so that a dead connection is noticed.
const PING_EVERY: Duration = Duration::from_secs(15);

/// One piece of news, as published on [`CHANNEL`].
#[derive(Serialize, Deserialize)]
struct Message {
    /// The publishing instance, so that it ignores its own messages.
    from: String,
    asset: AssetPath,
    /// [`News::encode`].
    news: String,
}

/// What one instance knows about an asset.
#[derive(Clone, Copy, Debug, PartialEq)]
enum News {
    /// Indexed at this version, or gone (`None`).
    Version(Option<VersionId>),
    /// Changed on disk, but not indexed by the instance that saw it.
    Touched,
}

impl News {
    /// The version in hex, `""` once the file is gone, `"?"` when touched.
    fn encode(self) -> String {
        match self {
            News::Version(Some(v)) => v.to_hex(),
            News::Version(None) => String::new(),
            News::Touched => "?".to_owned(),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        match s {
            "" => Some(News::Version(None)),
            "?" => Some(News::Touched),
            hex => Hash::from_hex(hex).ok().map(|v| News::Version(Some(v))),
        }
    }

    /// Whether this news from another instance may concern this one's `index`.
    async fn is_new_to(self, index: &AssetIndex, asset: &AssetPath) -> bool {
        match self {
            News::Version(version) => index.peek(asset).await != version,
            News::Touched => true,
        }
    }
}

/// The bus at `url`, checked but not yet connected to.
pub fn open(url: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(url)
        .with_context(|| format!("--bus {url}: not a Redis URL (expected redis://HOST:PORT[/DB])"))
}

/// Connects this instance to the bus `client`, publishing `hub`'s changes and re-checking
/// `index`'s assets on other instances' news, until `shutdown`. An unreachable Redis is retried
/// in the background.
pub fn start(
    client: redis::Client,
    index: Arc<AssetIndex>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> Arc<Claims> {
    let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let me = Hash::of(format!("{} {}", std::process::id(), started.as_nanos()).as_bytes()).to_hex()[..16]
        .to_owned();
    tracing::info!(bus = %client.get_connection_info().addr(), instance = %me, "joining the change bus");
    let news = (hub.listen(), hub.listen_touched());
    tokio::spawn(publish(client.clone(), me.clone(), index.clone(), news, shutdown.clone()));
    tokio::spawn(listen(client.clone(), me.clone(), index, hub, shutdown));
    Arc::new(Claims { client, me, conn: tokio::sync::Mutex::default() })
}

/// Work one instance does for all of them (an answer the others then fetch from the shared
/// store), claimed through the bus: a Redis key that only one instance can set, and that
/// expires.
pub struct Claims {
    client: redis::Client,
    me: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Claims {
    /// Claims `what` for `ttl`: whether this instance now holds it (`false`: another does).
    /// Also `true` when Redis cannot be reached: doing the work twice beats not doing it.
    pub async fn claim(&self, what: &str, ttl: Duration) -> bool {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = connect(&self.client).await.ok();
        }
        let Some(redis) = conn.as_mut() else { return true };
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(format!("assetsync:claim:{what}"))
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(redis)
            .await;
        match set {
            Ok(set) => set.is_some(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot claim work on the bus");
                *conn = None;
                true
            }
        }
    }
}

/// Publishes every change `hub` announces and every file its watcher touched. News that arrives
/// while Redis is unreachable is kept (the latest of each asset) and sent once it is back.
async fn publish(
    client: redis::Client,
    me: String,
    index: Arc<AssetIndex>,
    (mut changes, mut touched): (broadcast::Receiver<Arc<Change>>, broadcast::Receiver<AssetPath>),
    shutdown: CancellationToken,
) {
    let mut pending = BTreeMap::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::default();
    loop {
        if pending.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(change) => take_change(&change, &mut pending),
                    Err(RecvError::Lagged(_)) => requeue_all(&index, &mut pending).await,
                    Err(RecvError::Closed) => return,
                },
                asset = touched.recv() => match asset {
                    Ok(asset) => take_touched(asset, &mut pending),
                    Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "too many untracked files changed at once to tell other instances"),
                    Err(RecvError::Closed) => return,
                },
            }
        }
        // Whatever else has arrived goes in the same transaction.
        loop {
            match changes.try_recv() {
                Ok(change) => take_change(&change, &mut pending),
                Err(TryRecvError::Lagged(_)) => requeue_all(&index, &mut pending).await,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        while let Ok(asset) = touched.try_recv() {
            take_touched(asset, &mut pending);
        }
        let sent = match conn.as_mut() {
            Some(conn) => send(conn, &me, &pending).await,
            None => match connect(&client).await {
                Ok(c) => send(conn.insert(c), &me, &pending).await,
                Err(e) => Err(e),
            },
        };
        match sent {
            Ok(()) => {
                pending.clear();
                backoff = Backoff::default();
            }
            Err(e) => {
                conn = None;
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, waiting = pending.len(), "cannot publish changes on the bus");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

fn take_change(change: &Change, pending: &mut BTreeMap<AssetPath, News>) {
    pending.insert(change.asset.clone(), News::Version(change.version));
}

/// A touched file that this instance has since indexed keeps its version.
fn take_touched(asset: AssetPath, pending: &mut BTreeMap<AssetPath, News>) {
    pending.entry(asset).or_insert(News::Touched);
}

/// After this publisher fell behind the hub, every asset's current version is published again.
async fn requeue_all(index: &AssetIndex, pending: &mut BTreeMap<AssetPath, News>) {
    for asset in index.assets() {
        let version = index.peek(&asset).await;
        pending.insert(asset, News::Version(version));
    }
}

/// Records and publishes `pending` in one transaction.
async fn send(
    conn: &mut MultiplexedConnection,
    me: &str,
    pending: &BTreeMap<AssetPath, News>,
) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (asset, news) in pending {
        let message = Message { from: me.to_owned(), asset: asset.clone(), news: news.encode() };
        pipe.hset(VERSIONS, asset.as_str(), &message.news).ignore();
        pipe.publish(CHANNEL, serde_json::to_string(&message)?).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
}

/// Follows other instances' changes, reconnecting with backoff whenever the subscription is lost.
async fn listen(
    client: redis::Client,
    me: String,
    index: Arc<AssetIndex>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let lost = tokio::select! {
            () = shutdown.cancelled() => return,
            lost = follow(&client, &me, &index, &hub, &mut backoff) => lost,
        };
        let wait = backoff.next();
        tracing::warn!(error = %lost, retry_in = ?wait, "lost the change bus; other instances' changes wait until it is back");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Subscribes, catches up on what was missed, then re-checks each asset another instance changes,
/// until the connection fails (the error says how).
async fn follow(
    client: &redis::Client,
    me: &str,
    index: &AssetIndex,
    hub: &Hub,
    backoff: &mut Backoff,
) -> anyhow::Error {
    let result: anyhow::Result<std::convert::Infallible> = async {
        let pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
            .await
            .context("connecting timed out")??;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(TIMEOUT, sink.subscribe(CHANNEL)).await.context("subscribing timed out")??;
        // Subscribed first, so that a change published from now on arrives as a message, and one
        // published before is in the hash.
        let versions: HashMap<String, String> =
            redis::cmd("HGETALL").arg(VERSIONS).query_async(&mut connect(client).await?).await?;
        let mut behind = 0;
        for (asset, news) in versions {
            let (Ok(asset), Some(news)) = (AssetPath::new(&asset), News::decode(&news)) else {
                tracing::warn!(%asset, "ignoring a malformed entry in {VERSIONS}");
                continue;
            };
            if news.is_new_to(index, &asset).await {
                behind += 1;
                watch::recheck(index, hub, &asset).await;
            }
        }
        *backoff = Backoff::default();
        tracing::info!(rechecked = behind, "following the change bus");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                message = stream.next() => {
                    let message = message.context("connection closed")?;
                    let message: Message = match serde_json::from_slice(message.get_payload_bytes()) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed message on {CHANNEL}");
                            continue;
                        }
                    };
                    let Some(news) = News::decode(&message.news) else {
                        tracing::warn!(news = message.news, "ignoring a malformed message on {CHANNEL}");
                        continue;
                    };
                    if message.from != me && news.is_new_to(index, &message.asset).await {
                        watch::recheck(index, hub, &message.asset).await;
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(TIMEOUT, sink.ping::<String>()).await.context("ping timed out")??;
                }
            }
        }
    }
    .await;
    match result {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Exponential backoff between reconnections: 100 ms, doubling up to 10 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        wait
    }
}
