//! `serve --upstream`: an edge. The native client's `follow` keeps a folder of the edge's own
//! in step with its upstream (each file written only once whole and verified, by an atomic
//! rename), and the edge serves that folder as an origin serves its root: its watcher indexes
//! each new file once and pushes it to the edge's own clients, its version store keeps the
//! versions it saw, so that its clients get deltas too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use assetsync::pull::{PullConfig, PullEvent, follow};
use assetsync::upstream::Upstream;
use assetsync_protocol::{Hash, Scope};

/// How long an edge waits before following again after an error reconnecting cannot fix (a
/// refused token, a relay loop): long enough not to flood the upstream's logs, short enough to
/// recover soon after the configuration is fixed upstream.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// An edge's follower, before it starts.
pub struct Edge {
    /// The folder it keeps in step, which the edge serves.
    pub files: PathBuf,
    /// What the edge's server shows of its upstream.
    pub upstream: Arc<Upstream>,
    follow: PullConfig,
    scope: Scope,
}

impl Edge {
    /// An edge of `upstream` mirroring `scope` (`serve --upstream-scope`: a folder, `""` or `/`
    /// for everything) with the upstream's `token`, keeping its files in `dir` or its default.
    pub fn new(
        upstream: &str,
        scope: &str,
        dir: Option<PathBuf>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let parsed = match scope {
            "/" => Scope::All,
            scope => Scope::new(scope).map_err(|e| anyhow::anyhow!("--upstream-scope {scope:?}: {e}"))?,
        };
        anyhow::ensure!(
            !matches!(parsed, Scope::Asset(_)),
            "--upstream-scope {scope:?} names a file: an edge mirrors a folder, so end it with '/'"
        );
        let (files, cache) = dirs(dir, upstream, &parsed)?;
        let follow = PullConfig {
            server: upstream.to_owned(),
            cache,
            out: Some(files.clone()),
            token,
            relay: None,
            no_delete: false,
        };
        Ok(Edge { files, upstream: Arc::new(Upstream::new(upstream)), follow, scope: parsed })
    }

    /// Starts following, as the server whose id is `id`.
    pub fn start(mut self, id: String) {
        let what = if self.scope == Scope::All { "all of it".to_owned() } else { self.scope.to_string() };
        eprintln!("assetsync: following {} ({what})", self.follow.server);
        self.follow.relay = Some(id);
        tokio::spawn(follow_upstream(self.follow, self.scope, self.upstream));
    }
}

/// Where an edge of `upstream` (following `scope`) keeps its files and its cache: `dir`, or a
/// folder of its own under the state directory (see `state_home`).
fn dirs(dir: Option<PathBuf>, upstream: &str, scope: &Scope) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = match dir {
        Some(dir) => dir,
        None => {
            let key = format!("{upstream} {scope}");
            let name: String = upstream
                .split("://")
                .nth(1)
                .unwrap_or(upstream)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let hash = Hash::of(key.as_bytes()).to_hex();
            crate::state_home()?.join("assetsync/edges").join(format!("{name}-{}", &hash[..12]))
        }
    };
    let files = dir.join("files");
    std::fs::create_dir_all(&files)
        .with_context(|| format!("cannot create the edge folder {}", files.display()))?;
    Ok((files, dir.join("cache")))
}

/// Follows the upstream for ever, keeping `config.out` in step and reporting to `upstream`.
async fn follow_upstream(config: PullConfig, scope: Scope, upstream: Arc<Upstream>) {
    loop {
        let report = |event: &PullEvent| match event {
            PullEvent::Connected { path, .. } => upstream.connected(path.clone()),
            PullEvent::Disconnected { error, .. } => upstream.disconnected(error),
            PullEvent::Announced { .. } => upstream.announced(),
            PullEvent::Pulled(r) => {
                tracing::info!(asset = %r.asset, bytes = r.bytes, wire_bytes_in = r.wire_bytes_in, "pulled from upstream");
                upstream.applied();
            }
            PullEvent::Removed { asset } => {
                tracing::info!(%asset, "removed upstream");
                upstream.applied();
            }
            PullEvent::Failed { asset, error } => {
                tracing::warn!(%asset, %error, "cannot pull from upstream; keeping the last verified version");
                upstream.applied();
            }
            PullEvent::Folder(f) => {
                tracing::info!(folder = %f.folder, files = f.files, fetched = f.fetched.len(), removed = f.removed.len(), "folder synced from upstream")
            }
            PullEvent::Progress { .. } => {}
        };
        // Returns only on what reconnecting cannot fix.
        let error = match follow(&config, std::slice::from_ref(&scope), report).await {
            Ok(()) => continue,
            Err(e) => e,
        };
        upstream.disconnected(&error.to_string());
        tracing::error!(
            upstream = %config.server,
            %error,
            retry_s = RETRY_AFTER_FAILURE.as_secs(),
            "cannot follow the upstream; serving the last verified versions"
        );
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
    }
}
