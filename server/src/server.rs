//! The axum application: `/sync` WebSocket endpoint, static files, the root watcher, limits and
//! graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use assetsync_protocol::{ChunkParams, Hash, Limits};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as HttpBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;

use crate::demo::Demo;
use crate::encode::{EncodeConfig, Encoder};
use crate::forwarded::Remote;
use crate::index::{AssetIndex, IndexConfig, StoreConfig};
use crate::modules::Modules;
use crate::offload::{Offload, OffloadConfig};
use crate::origin::OriginPolicy;
use crate::roots::Roots;
use crate::session;
use crate::shared::Shared;
use crate::status::{Counted, Traffic};
use crate::upstream::Upstream;
use crate::watch::{self, Hub};

/// Everything `assetsync serve` can be told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Folder whose files are served as assets (unless `modules` are).
    pub root: PathBuf,
    /// Named modules with their own folders, users and limits (`--config`), served instead of
    /// `root`: asset paths start with a module's name.
    pub modules: Option<Arc<Modules>>,
    /// This server's id, in `welcome`'s path and `/status` (random by default).
    pub id: String,
    /// The upstream this edge follows (`--upstream`), whose follower keeps `root` in step.
    pub upstream: Option<Arc<Upstream>>,
    /// Folder served at `/` (the demo page and the WASM client), if any.
    pub www: Option<PathBuf>,
    /// Chunking parameters for indexed files.
    pub params: ChunkParams,
    /// Versions remembered per asset, the current one included.
    pub keep_versions: usize,
    /// The version store, which keeps remembered versions on disk across restarts (`None`:
    /// in memory only, lost on restart).
    pub store: Option<StoreConfig>,
    /// Earlier releases still on disk, whose files are remembered as older versions at
    /// start-up (`--history`).
    pub history: Vec<PathBuf>,
    /// Largest asset served, in bytes.
    pub max_asset_bytes: u64,
    /// Most files one folder listing may hold.
    pub max_folder_files: usize,
    /// Per-connection limits.
    pub limits: SessionLimits,
    /// Most simultaneous WebSocket connections; more are refused with 503.
    pub max_connections: usize,
    /// Context compression of missing chunks (`None`: send chunks uncompressed).
    pub encode: Option<EncodeConfig>,
    /// Reverse proxies whose `X-Forwarded-For` names the client in logs (`--trusted-proxy`;
    /// see [`crate::forwarded`]).
    pub trusted_proxies: Vec<IpAddr>,
    /// The built-in demo, when serving it: enables `GET /demo/build` and `POST /demo/rebuild`.
    pub demo: Option<Arc<Demo>>,
    /// A shared secret every client must present in `hello` (`--token-file`).
    pub token: Option<String>,
    /// Accept uploads of new versions from clients that present this secret in `hello`
    /// (`--allow-write` makes it `--token-file`'s; the demo makes one up and hands it to its page).
    pub write_token: Option<String>,
    /// Exact origins whose pages may connect besides the default ones (see [`crate::origin`]);
    /// `"*"` allows any page.
    pub allow_origins: Vec<String>,
    /// Watch the root and push changes to subscribers once a changed file has been quiet for
    /// this long (`None`: no watching; changes are still noticed by the next `sync`).
    pub watch: Option<Duration>,
    /// The Redis change bus shared with other instances (`--bus redis://HOST:PORT[/DB]`), which
    /// tells this instance's subscribers about changes another instance indexed.
    pub bus: Option<String>,
    /// The object store shared with other instances (`--shared-store s3://BUCKET/PREFIX` or
    /// `file:///PATH`; see [`crate::shared`]).
    pub shared_store: Option<String>,
    /// CDN offload of large answers (`--offload-url`, `--offload-min`; see [`crate::offload`]).
    pub offload: Option<OffloadConfig>,
}

/// Limits that apply to each WebSocket connection.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Largest message (and frame) accepted from a client.
    pub max_message_bytes: usize,
    /// Most entries in one `have` digest.
    pub max_have: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Requests a connection may make per minute, in bursts of as many (0: no limit). Over
    /// that, the connection is slowed down, not refused.
    pub requests_per_minute: u32,
    /// Pushed changes a subscribed connection may fall behind by (while it is busy answering a
    /// request, say) before it is closed with 1013 ("try again later"); its client then
    /// reconnects and resyncs.
    pub change_backlog: usize,
    /// Bytes a connection may be sent per minute, in bursts of as many (0: no limit). Over
    /// that, sending is slowed down to this rate.
    pub bytes_per_minute: u64,
}

impl SessionLimits {
    /// The part of the limits announced to clients in `welcome`.
    pub fn announced(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes as u32,
            max_have: self.max_have as u32,
            requests_per_minute: self.requests_per_minute,
            bytes_per_minute: self.bytes_per_minute,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            root: PathBuf::from("."),
            modules: None,
            id: new_id(),
            upstream: None,
            www: None,
            params: ChunkParams::default(),
            keep_versions: 8,
            store: None,
            history: Vec::new(),
            max_asset_bytes: 512 << 20,
            max_folder_files: 100_000,
            limits: SessionLimits {
                // 64 Ki digest entries of 66 JSON bytes each fit in 8 MiB; nothing else is large.
                max_message_bytes: 8 << 20,
                max_have: 65_536,
                idle_timeout: Duration::from_secs(120),
                requests_per_minute: 600,
                change_backlog: 16_384,
                bytes_per_minute: 1 << 30,
            },
            max_connections: 4096,
            encode: Some(EncodeConfig::default()),
            demo: None,
            watch: Some(Duration::from_millis(100)),
            bus: None,
            shared_store: None,
            offload: None,
            trusted_proxies: Vec::new(),
            allow_origins: Vec::new(),
            token: None,
            write_token: None,
        }
    }
}

/// State shared by all connections.
pub struct AppState {
    pub(crate) index: Arc<AssetIndex>,
    pub(crate) hub: Arc<Hub>,
    /// Whether the root is watched, so that subscriptions mean something.
    pub(crate) watching: bool,
    pub(crate) trusted_proxies: Vec<IpAddr>,
    pub(crate) encoder: Encoder,
    /// Whether to offer zstd to clients that can decode it.
    pub(crate) compress: bool,
    /// Where large answers go, for clients that fetch them over HTTP.
    pub(crate) offload: Option<Arc<Offload>>,
    pub(crate) limits: SessionLimits,
    connections: Arc<Semaphore>,
    origins: OriginPolicy,
    /// SHA-256 of the token clients must present, if any.
    pub(crate) token: Option<Hash>,
    /// SHA-256 of the secret a client must present to upload, if uploads are accepted (with
    /// `--root`; modules name their writers).
    pub(crate) write_token: Option<Hash>,
    /// The modules, their users and limits, when serving modules.
    pub(crate) modules: Option<Arc<Modules>>,
    pub(crate) id: String,
    pub(crate) upstream: Option<Arc<Upstream>>,
    pub(crate) started: Instant,
    /// Bytes every socket carried.
    pub(crate) traffic: Arc<Traffic>,
    max_connections: usize,
    /// What was received of uploads cut short.
    pub(crate) uploads: crate::session::KeptUploads,
    pub(crate) shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl AppState {
    /// This server's path to the origin: its id, then its upstream's path.
    pub(crate) fn path(&self) -> Vec<String> {
        let upstream = self.upstream.as_ref().map(|u| u.path()).unwrap_or_default();
        std::iter::once(self.id.clone()).chain(upstream).collect()
    }

    /// Open WebSocket connections.
    pub(crate) fn clients(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }
}

/// A random id for a server: 16 hex digits from the clock, the process and the address space.
fn new_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let local = 0u8;
    let seed = format!("{now:?} {} {:p}", std::process::id(), &local);
    Hash::of(seed.as_bytes()).to_hex()[..16].to_owned()
}

/// Builds the router: `/sync` for WebSockets, `/status`, `/offload/<name>` with CDN offload, the demo's
/// rebuild and write-secret endpoints when serving the demo, and the `www` folder (if any) at `/`.
pub fn app(state: Arc<AppState>, www: Option<PathBuf>, demo: Option<Arc<Demo>>) -> Router {
    let offload = state.offload.clone();
    let mut router = Router::new()
        .route("/sync", get(ws_upgrade))
        .route("/status", get(crate::status::status))
        .with_state(state);
    if let Some(offload) = offload {
        router = router.merge(crate::offload::routes(offload));
    }
    if let Some(demo) = demo {
        let (current, token) = (demo.clone(), demo.clone());
        router = router
            .route("/demo/build", get(move || async move { Json(current.current()) }))
            .route("/demo/token", get(move || async move { token.write_token().to_owned() }))
            .route("/demo/rebuild", post(move || rebuild(demo)));
    }
    match www {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router,
    }
}

async fn rebuild(demo: Arc<Demo>) -> Response {
    match tokio::task::spawn_blocking(move || demo.rebuild()).await.expect("rebuild task panicked") {
        Ok(build) => {
            tracing::info!(build = build.build, bytes = build.bytes, "demo bundle rebuilt");
            Json(build).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rebuild failed: {e}\n")).into_response(),
    }
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let peer = Remote::new(peer, forwarded, &state.trusted_proxies);
    if let Err(why) = state.origins.check(header(header::ORIGIN), header(header::HOST)) {
        tracing::warn!(%peer, "refusing connection: {why}");
        return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "refusing connection: connection limit reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let max = state.limits.max_message_bytes;
    let tasks = state.tasks.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tasks.track_future(session::run(socket, state, peer, permit)))
}

/// Bytes of offloaded answers kept without a version store (in a temporary folder).
const OFFLOAD_BYTES_IN_MEMORY: u64 = 512 << 20;

/// How long a client may take to send an HTTP request's headers (the upgrade included) before
/// its connection is closed: slow-header ("slowloris") connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown`, then cancels `token` (which ends every session) and
/// lets HTTP connections finish. Like `axum::serve`, plus a header read timeout.
async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    token: &CancellationToken,
    tasks: &TaskTracker,
    traffic: Arc<Traffic>,
) {
    let mut builder = HttpBuilder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone().layer(Extension(ConnectInfo(peer))));
        let (builder, token, traffic) = (builder.clone(), token.clone(), traffic.clone());
        tasks.spawn(async move {
            let stream = Counted { inner: stream, traffic };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                }
                () = token.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracing::info!("shutting down");
    token.cancel();
}

/// Serves on `listener` until `shutdown` completes, then closes every session (code 1001) and
/// waits for them to finish.
pub async fn run(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.params.validate()?;
    let bus = config.bus.as_deref().map(crate::bus::open).transpose()?;
    let shared = config.shared_store.as_deref().map(Shared::open).transpose()?.map(Arc::new);
    let hub = Arc::new(Hub::new(config.limits.change_backlog));
    let offload = match &config.offload {
        Some(offload) => {
            let store = config.store.as_ref();
            // Beside the version store, a quarter of its budget, as its kept answers get.
            let max_bytes = store.map_or(OFFLOAD_BYTES_IN_MEMORY, |s| s.max_bytes / 4);
            let offload = Offload::new(offload, store.map(|s| s.dir.as_path()), max_bytes, shared.clone())?;
            Some(Arc::new(offload))
        }
        None => None,
    };
    let roots = match &config.modules {
        Some(modules) => modules.roots(),
        None => Roots::One(config.root),
    };
    let index_config = IndexConfig {
        roots,
        params: config.params,
        keep_versions: config.keep_versions,
        store: config.store,
        history: config.history,
        max_asset_bytes: config.max_asset_bytes,
        max_folder_files: config.max_folder_files,
        shared: shared.clone(),
    };
    // Opening the store and importing --history read the disk.
    let opened = hub.clone();
    let index = Arc::new(tokio::task::spawn_blocking(move || AssetIndex::new(index_config, opened)).await??);
    for (prefix, dir) in index.roots().dirs() {
        match prefix.trim_end_matches('/') {
            "" => tracing::info!(root = %dir.display(), "serving"),
            module => tracing::info!(module, folder = %dir.display(), "serving"),
        }
    }
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let state = Arc::new(AppState {
        index,
        hub,
        watching: config.watch.is_some() || config.bus.is_some(),
        trusted_proxies: config.trusted_proxies,
        encoder: Encoder::new(config.encode.unwrap_or_default()),
        compress: config.encode.is_some(),
        offload,
        limits: config.limits,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        origins: OriginPolicy::new(&config.allow_origins)?,
        token: config.token.as_deref().map(|t| Hash::of(t.as_bytes())),
        write_token: config.write_token.as_deref().map(|t| Hash::of(t.as_bytes())),
        modules: config.modules,
        id: config.id,
        upstream: config.upstream,
        started: Instant::now(),
        traffic: Arc::default(),
        max_connections: config.max_connections,
        uploads: Default::default(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    if config.encode.is_some() {
        crate::warm::start(state.clone());
    }
    if let Some(quiet) = config.watch {
        watch::start(state.index.clone(), state.hub.clone(), quiet, state.shutdown.clone())?;
    }
    if let Some(bus) = bus {
        let claims = crate::bus::start(bus, state.index.clone(), state.hub.clone(), state.shutdown.clone());
        if let Some(shared) = &shared {
            shared.coordinate(claims);
        }
    }
    let token = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let index = state.index.clone();
    let traffic = state.traffic.clone();
    let router = app(state, config.www, config.demo);
    serve(listener, router, shutdown, &token, &tasks, traffic).await;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.is_err() {
        tracing::warn!("some sessions did not finish within 10 s");
    }
    tokio::task::spawn_blocking(move || index.close()).await?;
    Ok(())
}
