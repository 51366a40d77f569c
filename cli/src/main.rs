//! The `assetsync` command: `serve`, `pull`, `push`, `store` and `gc`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use assetsync::cache::Cache;
use assetsync::demo::Demo;
use assetsync::encode::EncodeConfig;
use assetsync::modules::Modules;
use assetsync::offload::OffloadConfig;
use assetsync::pull::{PullConfig, PullEvent, follow, pull};
use assetsync::push::{PushConfig, push};
use assetsync::store::{Store, StoreError};
use assetsync::{ServeConfig, SessionLimits, StoreConfig};
use assetsync_protocol::{ChunkParams, Hash, Scope};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

mod edge;

/// The demo folder shipped in the repository, so that `assetsync serve` works with no arguments.
const DEMO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo");
/// The web page and WASM client folder shipped in the repository.
const WWW_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../www");

#[derive(Parser)]
#[command(
    name = "assetsync",
    version,
    about = "Sync large web assets over WebSockets, sending only the chunks a client lacks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every file under --root at ws://LISTEN/sync, and --www at http://LISTEN/
    Serve(Box<ServeArgs>),
    /// Fetch assets into --out, transferring only the chunks the cache lacks
    Pull(PullArgs),
    /// Upload files from --from as new versions of the server's assets, sending only the
    /// chunks the server lacks (the server must run with --allow-write)
    Push(PushArgs),
    /// Inspect or check a server's version store (stop the server first)
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print what a server (origin or edge) is doing: its upstream and lag, clients,
    /// subscriptions, bytes in and out
    Status {
        /// Server endpoint, e.g. ws://127.0.0.1:8080/sync
        #[arg(long)]
        server: String,
        /// File holding the server's shared secret (see serve --token-file)
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Print the server's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Delete cached chunks and manifests that no committed version references
    Gc {
        /// The chunk cache directory
        #[arg(long)]
        cache: PathBuf,
        /// Print the result as one JSON object
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Versions kept per asset, chunk and answer bytes
    Stats(StoreArgs),
    /// Re-hash every chunk and check every version and answer; drop what is damaged
    Verify(StoreArgs),
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The store folder (as given to serve --store)
    #[arg(long, value_name = "DIR", required_unless_present = "root")]
    store: Option<PathBuf>,
    /// The served folder whose default store to open (when serve had no --store)
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    root: Option<PathBuf>,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Folder whose files are served as assets (default: a private copy of the bundled demo
    /// folder, with a "rebuild" button on the demo page)
    #[arg(long)]
    root: Option<PathBuf>,
    /// Serve the modules this TOML file declares instead of one --root, rsyncd-style: each has
    /// its own folder (asset paths start with its name, e.g. site/js/app.js), who may read and
    /// write it, a connection limit, a largest file and a byte quota; users sign in with the
    /// USER:SECRET of a secrets file that only the server's user may read (see the README)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["root", "token_file", "allow_write"])]
    config: Option<PathBuf>,
    /// Run as an edge of this server (ws://HOST:PORT/sync, an origin or another edge): follow
    /// it into a folder of this server's own and serve that, pushing each change to this
    /// server's clients as soon as it arrives whole and verified; when the upstream is
    /// unreachable, keep serving the last verified versions
    #[arg(long, value_name = "URL", conflicts_with_all = ["root", "config", "allow_write", "history"])]
    upstream: Option<String>,
    /// File holding the upstream's shared secret (USER:SECRET for a server with modules)
    #[arg(long, value_name = "PATH", requires = "upstream")]
    upstream_token_file: Option<PathBuf>,
    /// The part of the upstream to mirror: a folder ending in '/' (a module's, for an upstream
    /// with modules); default: everything
    #[arg(long, value_name = "FOLDER/", requires = "upstream", default_value = "")]
    upstream_scope: String,
    /// Where an edge keeps its files and its cache (default: a folder per upstream under
    /// $XDG_STATE_HOME/assetsync/edges, or ~/.local/state/assetsync/edges)
    #[arg(long, value_name = "DIR", requires = "upstream")]
    edge_dir: Option<PathBuf>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder served at /, with a copy of the built WASM client in its pkg/ (default: the www
    /// folder of the source tree this binary was built in, when it is still there)
    #[arg(long)]
    www: Option<PathBuf>,
    /// Versions remembered per asset, so older clients still get small deltas
    #[arg(long, default_value_t = 8)]
    keep_versions: usize,
    /// Folder where remembered versions are kept, so that a restart, or a deploy to a new
    /// --root sharing it, still sends returning clients small updates (default: one folder per
    /// --root under $XDG_STATE_HOME/assetsync, or ~/.local/state/assetsync). An object store
    /// URL (s3://BUCKET/PREFIX, file:///PATH) keeps them there alone: --no-store --shared-store URL
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// An earlier release's folder still on disk (repeatable, oldest first): its files are
    /// remembered at start-up as older versions of the assets at the same paths, so that their
    /// clients get small updates even from a new machine with an empty store
    #[arg(long, value_name = "DIR")]
    history: Vec<PathBuf>,
    /// Remember versions in memory only: a restart forgets them
    #[arg(long, conflicts_with = "store")]
    no_store: bool,
    /// Most bytes of chunks the version store keeps; past it, the oldest versions are dropped
    /// (never an asset's current one). Kept answers get a quarter of it on top
    #[arg(long, default_value_t = 2 << 30)]
    store_max_bytes: u64,
    /// Average chunk size in bytes (min = avg/4, max = avg*4)
    #[arg(long, default_value_t = 8192)]
    avg_chunk: u32,
    /// Largest asset served, in bytes
    #[arg(long, default_value_t = 512 << 20)]
    max_asset_bytes: u64,
    /// Most files one folder sync may list
    #[arg(long, default_value_t = 100_000)]
    max_folder_files: usize,
    /// Most simultaneous WebSocket connections
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Largest message accepted from a client, in bytes
    #[arg(long, default_value_t = 8 << 20)]
    max_message_bytes: usize,
    /// Most entries in one client digest
    #[arg(long, default_value_t = 65_536)]
    max_have: usize,
    /// Close connections idle for this many seconds
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Requests one connection may make per minute, in bursts of as many; more are slowed
    /// down, not refused (0: no limit)
    #[arg(long, default_value_t = 600)]
    max_requests_per_minute: u32,
    /// Bytes one connection may be sent per minute, in bursts of as many; more are sent at
    /// that rate (0: no limit)
    #[arg(long, default_value_t = 1 << 30)]
    max_bytes_per_minute: u64,
    /// Require every client to present the secret in this file (its first line) in its first
    /// message; browsers pass it to SyncClient.connect as { token }
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Also let pages from this origin connect (repeatable; "*" for any page). By default only
    /// pages from localhost, and from the server's own address, may connect
    #[arg(long, value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Do not watch --root: subscriptions are refused, and changes are noticed only by the next
    /// sync of each asset
    #[arg(long)]
    no_watch: bool,
    /// How long a changed file must stay untouched before it is re-indexed and pushed
    /// (rebuilds write in bursts)
    #[arg(long, default_value_t = 100, value_name = "MS")]
    quiet_ms: u64,
    /// Share changes with other instances serving the same build folder through this Redis
    /// server: a client subscribed here is told about a change another instance indexed
    /// (redis://HOST:PORT[/DB]; one database per deployment)
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// Share remembered versions and computed answers with other instances through this
    /// object store: s3://BUCKET/PREFIX (credentials, region and endpoint from the AWS_*
    /// environment variables) or file:///PATH
    #[arg(long, value_name = "URL")]
    shared_store: Option<String>,
    /// A reverse proxy (load balancer) in front of this server whose X-Forwarded-For header is
    /// believed, for the client addresses in the logs (repeatable; an IP address such as
    /// 127.0.0.1). From anyone else the header is ignored
    #[arg(long, value_name = "IP")]
    trusted_proxy: Vec<std::net::IpAddr>,
    /// Offload large answers to a CDN: put them in immutable objects (served by this server at
    /// /offload/NAME, the CDN's origin) and tell clients to fetch URL/NAME over HTTP(S), so that
    /// the WebSocket carries only the plan. URL is the CDN's address for /offload, or a path on
    /// this server such as /offload
    #[arg(long, value_name = "URL")]
    offload_url: Option<String>,
    /// Answers whose chunks take at least this many bytes are offloaded (with --offload-url)
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10, requires = "offload_url")]
    offload_min: u64,
    /// Send missing chunks uncompressed, even to clients that decode zstd
    #[arg(long)]
    no_compress: bool,
    /// zstd level of cached answers (the missing chunks, compressed against the client's old
    /// version when the server has it)
    #[arg(long, default_value_t = EncodeConfig::default().level)]
    zstd_level: i32,
    /// zstd level of the first answer of a large update, sent while the --zstd-level one is
    /// computed in the background for later clients
    #[arg(long, default_value_t = EncodeConfig::default().fast_level)]
    zstd_fast_level: i32,
    /// Never compute binary patches (bsdiff's method, for compiled assets such as WebAssembly):
    /// they cost seconds of CPU per new version of a large file, in the background
    #[arg(long)]
    no_patch: bool,
    /// Accept uploads (assetsync push, client.upload in a page) from clients that present the
    /// --token-file secret: each is written atomically, and refused if the file changed since
    /// the version it was made from
    #[arg(long, requires = "token_file")]
    allow_write: bool,
}

#[derive(clap::Args)]
struct PullArgs {
    /// Server endpoint, e.g. ws://127.0.0.1:8080/sync
    #[arg(long)]
    server: String,
    /// The chunk cache directory (created if missing)
    #[arg(long)]
    cache: PathBuf,
    /// Each ASSET is written to OUT/ASSET
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object per event (file pulled, folder synced, file removed)
    #[arg(long)]
    json: bool,
    /// File holding the server's shared secret (see serve --token-file)
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Keep running: pull each asset again whenever the server announces a change (and delete
    /// it from OUT when it is removed), reconnecting with backoff when the server goes away
    #[arg(long)]
    follow: bool,
    /// Keep what --out holds that the server does not: files removed on the server, and
    /// folders and links not in its folder (by default a pulled folder ends identical to the
    /// server's)
    #[arg(long)]
    no_delete: bool,
    /// Asset paths relative to the server root, e.g. js/app.js, or folders ending in '/', e.g.
    /// dist/ (every file below it; files the server no longer has are deleted from OUT)
    #[arg(required = true)]
    assets: Vec<String>,
}

#[derive(clap::Args)]
struct PushArgs {
    /// Server endpoint, e.g. ws://127.0.0.1:8080/sync
    #[arg(long)]
    server: String,
    /// Each ASSET is read from FROM/ASSET
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The chunk cache pull uses: each upload is made from the version last pulled or pushed
    /// through it, and refused with a conflict if the server's file changed since. Without
    /// it, each upload is made from the server's version when the push starts
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// File holding the server's shared secret (see serve --token-file)
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Print one JSON object per file pushed
    #[arg(long)]
    json: bool,
    /// Upload over whatever version the server holds, even one the cache has not seen (and
    /// with --delete, delete whatever version it holds)
    #[arg(long)]
    force: bool,
    /// Pushing a folder, also delete the server's files that are not in the local folder
    #[arg(long)]
    delete: bool,
    /// Asset paths relative to the server root, e.g. js/app.js, or folders ending in '/', e.g.
    /// dist/ (every file below FROM/dist; '/' alone for all of FROM)
    #[arg(required = true)]
    assets: Vec<String>,
}

/// Standard output for `pull`'s lines: each written at once, or (`buffered`) in blocks, the
/// rest when dropped. A closed pipe does not stop the pull.
struct Lines {
    out: std::io::BufWriter<std::io::Stdout>,
    buffered: bool,
}

impl Lines {
    fn new(buffered: bool) -> Self {
        Lines { out: std::io::BufWriter::new(std::io::stdout()), buffered }
    }

    fn line(&mut self, line: std::fmt::Arguments) {
        let _ = writeln!(self.out, "{line}");
        if !self.buffered {
            let _ = self.out.flush();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("assetsync=info,warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let result = runtime.block_on(run(cli.command));
    // Work still running is a best-level encoding in the background, only ever a cache: a
    // server told to stop does not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Pull(args) => {
            let targets = args.assets.iter().map(|a| Scope::new(a)).collect::<Result<Vec<_>, _>>()?;
            let token = args.token_file.as_deref().map(read_token).transpose()?;
            let config = PullConfig {
                server: args.server,
                cache: args.cache,
                out: Some(args.out),
                token,
                relay: None,
                no_delete: args.no_delete,
            };
            let json = args.json;
            let mut progress = Progress::default();
            // A one-off pull into a pipe or a file writes its lines in blocks (a folder's
            // thousands of lines were a system call each); a terminal, or a `--follow` that
            // another program reads as it goes, gets each line at once.
            let buffered = !args.follow && !std::io::stdout().is_terminal();
            let mut out = Lines::new(buffered);
            let print = move |event: &PullEvent| {
                match event {
                    PullEvent::Progress { asset, received, total } if !json => {
                        return progress.update(asset, *received, *total);
                    }
                    PullEvent::Connected { stale: Some(why), .. } => {
                        return eprintln!("warning: the server may serve old versions: {why}");
                    }
                    PullEvent::Progress { .. }
                    | PullEvent::Connected { .. }
                    | PullEvent::Announced { .. } => {
                        return;
                    }
                    _ => {}
                }
                if json {
                    return out
                        .line(format_args!("{}", serde_json::to_string(event).expect("events serialise")));
                }
                progress.clear();
                match event {
                    PullEvent::Pulled(r) => out.line(format_args!(
                        "{}: {} bytes, {} of {} chunks reused, {} bytes received{}, {} sent, {} ms",
                        r.asset,
                        r.bytes,
                        r.chunks_reused,
                        r.chunks,
                        r.wire_bytes_in,
                        over_http(r.http_bytes_in),
                        r.wire_bytes_out,
                        r.elapsed_ms
                    )),
                    PullEvent::Folder(f) => out.line(format_args!(
                        "{}: {} files, {} fetched, {} removed, {} repaired, {} bytes received{}, {} sent, {} ms",
                        if f.folder.is_empty() { "(root)" } else { &f.folder },
                        f.files,
                        f.fetched.len(),
                        f.removed.len(),
                        f.repaired.len(),
                        f.wire_bytes_in,
                        over_http(f.http_bytes_in),
                        f.wire_bytes_out,
                        f.elapsed_ms
                    )),
                    PullEvent::Removed { asset } => out.line(format_args!("{asset}: removed")),
                    PullEvent::Failed { asset, error } => eprintln!("{asset}: {error}"),
                    PullEvent::Disconnected { error, retry_ms } => {
                        eprintln!("connection lost ({error}); retrying in {retry_ms} ms")
                    }
                    PullEvent::Progress { .. } | PullEvent::Connected { .. } | PullEvent::Announced { .. } => {
                        unreachable!("handled above")
                    }
                }
            };
            if args.follow {
                Ok(follow(&config, &targets, print).await?)
            } else {
                Ok(pull(&config, &targets, print).await?)
            }
        }
        Command::Push(args) => {
            let targets = assetsync::push::targets(&args.assets).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                !args.delete || targets.iter().any(|t| !matches!(t, Scope::Asset(_))),
                "--delete removes the server's files missing from a pushed folder: name a folder ending in '/'"
            );
            let token = args.token_file.as_deref().map(read_token).transpose()?;
            let config = PushConfig {
                server: args.server,
                from: args.from,
                cache: args.cache,
                token,
                force: args.force,
                delete: args.delete,
            };
            let json = args.json;
            push(&config, &targets, |r| match json {
                true => println!("{}", serde_json::to_string(r).expect("reports serialise")),
                false if r.unchanged => println!("{}: unchanged on the server, nothing sent", r.asset),
                false if r.removed => println!("{}: deleted on the server", r.asset),
                false => println!(
                    "{}: {} bytes, {} of {} chunks sent ({} bytes before compression), {} bytes sent in all, {} ms",
                    r.asset, r.bytes, r.chunks_sent, r.chunks, r.chunk_bytes_sent, r.wire_bytes_out, r.elapsed_ms
                ),
            })
            .await?;
            Ok(())
        }
        Command::Store(command) => store(command).await,
        Command::Status { server, token_file, json } => {
            let token = token_file.as_deref().map(read_token).transpose()?;
            let status = assetsync::status::fetch(&server, token.as_deref()).await?;
            if json {
                println!("{status}");
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Gc { cache, json } => {
            let report = tokio::task::spawn_blocking(move || Cache::open_existing(&cache)?.gc()).await??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "deleted {} chunks and {} manifests, freed {} bytes; kept {} chunks",
                    report.chunks_deleted, report.manifests_deleted, report.bytes_freed, report.chunks_kept
                );
            }
            Ok(())
        }
    }
}

/// A progress bar on stderr (bytes, rate, time left) for a transfer that takes more than about a
/// second, when stderr is a terminal; nothing otherwise.
#[derive(Default)]
struct Progress {
    asset: String,
    since: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn update(&mut self, asset: &str, received: u64, total: u64) {
        if asset != self.asset {
            self.clear();
            (self.asset, self.since) = (asset.to_owned(), Some(Instant::now()));
        }
        let slow = self.since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1));
        if self.bar.is_none() && slow && received < total && std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            let bar = ProgressBar::hidden().with_style(style).with_message(asset.to_owned());
            bar.set_length(total);
            // Rate and time left count from here, not from the bytes before the bar.
            bar.set_position(received);
            bar.reset_eta();
            bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(received);
        }
    }

    /// Removes the bar, before a line is printed.
    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.since = None;
        self.asset.clear();
    }
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    // `--store s3://...` or `file://...`: the object store is the only store.
    if let Some(url) = args.store.as_ref().and_then(|s| s.to_str()).filter(|s| s.contains("://")) {
        anyhow::ensure!(
            args.shared_store.is_none(),
            "--store {url} and --shared-store both name an object store: keep one (--store DIR keeps a local store beside --shared-store)"
        );
        args.shared_store = Some(url.to_owned());
        (args.store, args.no_store) = (None, true);
    }
    if let Some(url) = &args.bus {
        assetsync::bus::open(url)?; // a typo is reported before anything starts
    }
    if let Some(url) = &args.shared_store {
        assetsync::shared::Shared::open(url)?;
    }
    let offload = args.offload_url.map(|url| OffloadConfig { url, min_bytes: args.offload_min });
    if let Some(offload) = &offload {
        offload.validate()?;
    }
    // The page and the WASM client of the source tree, when this binary runs next to it.
    let www = args.www.or_else(|| Some(PathBuf::from(WWW_ROOT)).filter(|w| w.is_dir()));
    let modules = args.config.as_deref().map(Modules::load).transpose()?.map(Arc::new);
    let edge = match &args.upstream {
        Some(url) => {
            let token = args.upstream_token_file.as_deref().map(read_token).transpose()?;
            Some(edge::Edge::new(url, &args.upstream_scope, args.edge_dir.clone(), token)?)
        }
        None => None,
    };
    let (root, demo) = match (args.root, &args.config, &edge) {
        // An edge serves the folder it keeps in step with its upstream.
        (_, _, Some(edge)) => (edge.files.clone(), None),
        // The modules name their folders; the config file names the default store.
        (_, Some(config), None) => (config.clone(), None),
        (Some(root), None, None) if root.is_dir() => (root, None),
        (Some(root), None, None) => {
            anyhow::bail!("--root {} is not a folder: point it at the folder to serve", root.display())
        }
        (None, None, None) if Path::new(DEMO_ROOT).is_dir() => {
            let demo = Demo::prepare(Path::new(DEMO_ROOT), www.as_deref())
                .context("cannot prepare the demo folder")?;
            (demo.root(), Some(Arc::new(demo)))
        }
        (None, None, None) => anyhow::bail!(
            "no --root given, and the bundled demo ({DEMO_ROOT}) is not there: pass --root FOLDER"
        ),
    };
    let store = match (args.no_store, args.store, &demo) {
        (true, _, _) => None,
        (false, Some(dir), _) => Some(dir),
        (false, None, Some(demo)) => Some(demo.store()),
        (false, None, None) => Some(default_store(&root)?),
    };
    // The demo's page is served from its copy, with the rest of the build.
    let www = match &demo {
        Some(demo) => www.map(|_| demo.root()),
        None => www,
    };
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let write_token = match (&demo, args.allow_write) {
        (_, true) => token.clone(),
        // The demo's private copy takes the page's saves, with a secret made up for this run.
        (Some(demo), false) => Some(demo.write_token().to_owned()),
        (None, false) => None,
    };
    let config = ServeConfig {
        root,
        modules,
        upstream: edge.as_ref().map(|edge| edge.upstream.clone()),
        demo,
        www,
        params: ChunkParams::with_avg(args.avg_chunk)?,
        keep_versions: args.keep_versions,
        store: store.map(|dir| StoreConfig { dir, max_bytes: args.store_max_bytes }),
        history: args.history,
        max_asset_bytes: args.max_asset_bytes,
        max_folder_files: args.max_folder_files,
        limits: SessionLimits {
            max_message_bytes: args.max_message_bytes,
            max_have: args.max_have,
            idle_timeout: Duration::from_secs(args.idle_timeout),
            requests_per_minute: args.max_requests_per_minute,
            bytes_per_minute: args.max_bytes_per_minute,
            ..ServeConfig::default().limits
        },
        max_connections: args.max_connections,
        encode: (!args.no_compress).then_some(EncodeConfig {
            level: args.zstd_level,
            fast_level: args.zstd_fast_level,
            patches: !args.no_patch,
        }),
        watch: (!args.no_watch).then_some(Duration::from_millis(args.quiet_ms)),
        bus: args.bus,
        shared_store: args.shared_store,
        offload,
        trusted_proxies: args.trusted_proxy,
        allow_origins: args.allow_origin,
        token,
        write_token,
        ..ServeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let what = match (&config.demo, &config.modules) {
        _ if config.upstream.is_some() => {
            format!("an edge's copy of its upstream in {}", config.root.display())
        }
        (Some(_), _) => format!(
            "the demo (a private copy in {}: edit its files and open tabs update)",
            config.root.display()
        ),
        (None, Some(_)) => format!("the modules of {}", config.root.display()),
        (None, None) => config.root.display().to_string(),
    };
    eprintln!("assetsync: serving {what} at http://{addr}/ (sync endpoint ws://{addr}/sync)");
    if let Some(edge) = edge {
        edge.start(config.id.clone());
    }
    match (&config.store, &config.shared_store) {
        (Some(store), _) => eprintln!("assetsync: versions kept in {}", store.dir.display()),
        (None, Some(shared)) => eprintln!("assetsync: versions kept in {shared} only"),
        (None, None) => eprintln!("assetsync: versions kept in memory only (--no-store)"),
    }
    assetsync::run(listener, config, shutdown_signal()).await
}

async fn store(command: StoreCommand) -> anyhow::Result<()> {
    let (StoreCommand::Stats(args) | StoreCommand::Verify(args)) = &command;
    let dir = match (&args.store, &args.root) {
        (Some(dir), _) => dir.clone(),
        (None, Some(root)) => default_store(root)?,
        (None, None) => unreachable!("clap requires one"),
    };
    anyhow::ensure!(dir.join("store.redb").is_file(), "no version store in {}", dir.display());
    let json = args.json;
    tokio::task::spawn_blocking(move || {
        let store = match Store::open(&dir, u64::MAX, |_| {}) {
            Ok((store, _)) => store,
            Err(StoreError::InUse(_)) => {
                anyhow::bail!("the version store {} is in use by a running server: stop it first", dir.display())
            }
            Err(e) => return Err(e.into()),
        };
        match command {
            StoreCommand::Stats(_) => {
                let stats = store.stats()?;
                if json {
                    println!("{}", serde_json::to_string(&stats)?);
                    return Ok(());
                }
                println!("{}", stats.store.display());
                for (asset, versions) in &stats.assets {
                    println!("  {asset}: {versions} versions");
                }
                println!(
                    "{} versions of {} assets; {} chunks, {} bytes; {} answers, {} bytes; file {} bytes",
                    stats.versions,
                    stats.assets.len(),
                    stats.chunks,
                    stats.chunk_bytes,
                    stats.answers,
                    stats.answer_bytes,
                    stats.file_bytes
                );
            }
            StoreCommand::Verify(_) => {
                let report = store.verify()?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                    return Ok(());
                }
                println!(
                    "checked {} chunks, {} versions, {} answers; dropped {} damaged and {} unused chunks, {} incomplete versions, {} answers",
                    report.chunks,
                    report.versions,
                    report.answers,
                    report.damaged_chunks,
                    report.unused_chunks,
                    report.incomplete_versions,
                    report.dropped_answers
                );
            }
        }
        Ok(())
    })
    .await?
}

/// The default version store of `root`: `assetsync/stores/NAME-HASH` in the user's state folder,
/// NAME being the root's folder name and HASH from its full path.
fn default_store(root: &Path) -> anyhow::Result<PathBuf> {
    let state = state_home()?;
    let root = root.canonicalize().with_context(|| format!("cannot open --root {}", root.display()))?;
    let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("root");
    let hash = Hash::of(root.as_os_str().as_encoded_bytes()).to_hex();
    Ok(state.join("assetsync/stores").join(format!("{name}-{}", &hash[..12])))
}

/// `assetsync status` for people: one line per fact.
fn print_status(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!("server: {} (id {}, up {} s)", text(&s["server"]), text(&s["id"]), s["uptime_s"]);
    match &s["upstream"] {
        serde_json::Value::Null => println!("upstream: none (an origin)"),
        u => {
            println!("upstream: {} ({})", text(&u["url"]), text(&u["state"]));
            if let Some(error) = u["error"].as_str() {
                println!("  last error: {error}");
            }
            println!(
                "  lag: {} versions, {} s; {} files applied",
                u["lag_versions"], u["lag_seconds"], u["applied"]
            );
        }
    }
    let path: Vec<String> = s["path"].as_array().into_iter().flatten().map(text).collect();
    println!("path to the origin: {}", path.join(" -> "));
    println!("clients: {}, subscriptions: {}", s["clients"], s["subscriptions"]);
    println!("bytes in: {}, bytes out: {}", s["bytes_in"], s["bytes_out"]);
    println!("folder listings: {} walked, {} reused", s["folder_walks"], s["folder_listings_reused"]);
}

/// `$XDG_STATE_HOME`, or `~/.local/state`.
fn state_home() -> anyhow::Result<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .context("neither XDG_STATE_HOME nor HOME is set: pass --store DIR (or --no-store)")
}

/// The shared secret in `path`: its first line, trimmed, which must not be empty.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(token.to_owned())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The part of a pull's line about bytes fetched over HTTP (offloaded answers), if any.
fn over_http(bytes: u64) -> String {
    match bytes {
        0 => String::new(),
        n => format!(" (+{n} over HTTP)"),
    }
}
