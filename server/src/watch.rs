//! Watching `--root`: each changed asset is re-indexed once, after its file has been quiet for a
//! moment, and every session subscribed to it is told.
//!
//! Build tools write in bursts, often to a temporary file that is then renamed. The debouncer
//! reports a path only once no event has touched it for the quiet time, so a burst of writes
//! becomes one re-index; the index's own read check (size, mtime and inode unchanged across the
//! read) keeps a file that is still being written from being indexed torn. Only files that are
//! already indexed or inside someone's subscription are indexed here: a watched root full of
//! files nobody asked for costs nothing but events.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use assetsync_protocol::{AssetPath, Scope, VersionId};
use notify_debouncer_mini::notify::event::{AccessKind, AccessMode};
use notify_debouncer_mini::notify::{self, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use notify_debouncer_mini::{Config, DebounceEventResult, DebouncedEventKind, Debouncer, new_debouncer_opt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::index::{AssetIndex, Fence, IndexError, is_temporary};
use crate::roots::Roots;

/// Most files a directory event is expanded to (a folder renamed into the root).
const MAX_FILES_PER_EVENT: usize = 100_000;

/// An asset that changed on disk and has been re-indexed.
#[derive(Debug)]
pub struct Change {
    /// The asset.
    pub asset: AssetPath,
    /// Its new version; `None` when the file is gone.
    pub version: Option<VersionId>,
}

/// Where changes fan out to the sessions. One change is one `Arc`, however many sessions
/// receive it.
pub struct Hub {
    changes: broadcast::Sender<Arc<Change>>,
    /// Every session's subscriptions, counted, so the watcher knows which files to index.
    scopes: Mutex<HashMap<Scope, usize>>,
    /// Files that changed on disk but that this instance neither serves nor was asked for, so
    /// did not index: news for other instances on the change bus, which may serve them.
    touched: broadcast::Sender<AssetPath>,
    /// Files the watcher looked at again after hearing of them (`/status`'s `watch_rechecks`).
    rechecks: AtomicU64,
}

impl Hub {
    /// A hub with no subscriptions, whose sessions may fall `backlog` changes behind before
    /// they are closed (and their clients resync).
    pub fn new(backlog: usize) -> Self {
        Hub {
            changes: broadcast::channel(backlog.max(1)).0,
            scopes: Mutex::default(),
            touched: broadcast::channel(backlog.max(1)).0,
            rechecks: AtomicU64::new(0),
        }
    }

    /// Files the watcher looked at again after hearing of them, since start.
    pub fn rechecks(&self) -> u64 {
        self.rechecks.load(Ordering::Relaxed)
    }

    /// Every change announced from now on.
    pub fn listen(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Every file the watcher sees change without indexing it, from now on.
    pub(crate) fn listen_touched(&self) -> broadcast::Receiver<AssetPath> {
        self.touched.subscribe()
    }

    /// Counts a session's subscription.
    pub fn add(&self, scope: &Scope) {
        *self.scopes.lock().expect("poisoned").entry(scope.clone()).or_default() += 1;
    }

    /// Forgets one count of `scope`.
    pub fn remove(&self, scope: &Scope) {
        let mut scopes = self.scopes.lock().expect("poisoned");
        if let Some(n) = scopes.get_mut(scope) {
            *n -= 1;
            if *n == 0 {
                scopes.remove(scope);
            }
        }
    }

    /// Subscriptions held by all sessions.
    pub fn subscriptions(&self) -> usize {
        self.scopes.lock().expect("poisoned").values().sum()
    }

    fn wanted(&self, asset: &AssetPath) -> bool {
        self.scopes.lock().expect("poisoned").keys().any(|s| s.covers(asset))
    }

    pub(crate) fn announce(&self, change: Change) {
        tracing::info!(asset = %change.asset, removed = change.version.is_none(), "changed");
        // No receiver is not an error: nobody is connected.
        let _ = self.changes.send(Arc::new(change));
    }
}

/// Starts watching `index`'s folders, re-indexing changed assets and announcing them on `hub`,
/// until `shutdown`. Fails at once if a folder cannot be watched (for example, inotify's watch
/// limit reached).
pub fn start(
    index: Arc<AssetIndex>,
    hub: Arc<Hub>,
    quiet: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut debouncer = new_debouncer_opt::<_, ChangesOnly>(
        Config::default().with_timeout(quiet),
        move |events: DebounceEventResult| {
            let _ = tx.send(events);
        },
    )?;
    // Undebounced, on the watcher's thread, as each event happens: whether anything at all
    // changed, for the index's reuse of folder listings. Reads are not changes (the index's own
    // listings open every folder, and indexing reads files).
    let stillness = index.stillness();
    let mut still = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(e) if e.paths.iter().any(|p| stillness.fence_passed(p)) => {}
        Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
        _ => stillness.changed(),
    })?;
    for (_, dir) in index.roots().dirs() {
        let cannot = |e: notify::Error| {
            anyhow::anyhow!("cannot watch {}: {e} (run with --no-watch to serve without)", dir.display())
        };
        debouncer.watcher().watch(dir, RecursiveMode::Recursive).map_err(cannot)?;
        still.watch(dir, RecursiveMode::Recursive).map_err(cannot)?;
    }
    // Without a fence, folders are walked on every check, as without a watcher.
    let fence = Fence::new().map_err(|e| e.to_string()).and_then(|fence| {
        still.watch(fence.dir(), RecursiveMode::NonRecursive).map_err(|e| e.to_string())?;
        Ok(fence)
    });
    match fence {
        Ok(fence) => index.stillness().watching(fence),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch a temporary folder: unchanged folders are walked on every check")
        }
    }
    tokio::spawn(run((debouncer, still), rx, index, hub, shutdown));
    Ok(())
}

/// The recommended watcher without the events of files being opened or read (notify watches
/// `IN_OPEN`), which the debouncer would report as changes like any other: the server's own
/// reads, indexing a file or listing a folder, are not changes. A folder's first answer opens
/// each of its files to index it, and every one of those opens came back as a file to check
/// again: 2,870 ms of the server's CPU for that answer for 9,000 files, 1,500 without them
/// (BENCHMARKS.md, "Folders").
struct ChangesOnly(RecommendedWatcher);

impl ChangesOnly {
    fn is_read(event: &notify::Result<notify::Event>) -> bool {
        let written = AccessKind::Close(AccessMode::Write);
        event.as_ref().is_ok_and(|e| matches!(e.kind, EventKind::Access(access) if access != written))
    }
}

impl Watcher for ChangesOnly {
    fn new<F: notify::EventHandler>(mut handler: F, config: notify::Config) -> notify::Result<Self> {
        let changes = move |event| {
            if !Self::is_read(&event) {
                handler.handle_event(event);
            }
        };
        RecommendedWatcher::new(changes, config).map(ChangesOnly)
    }

    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.0.watch(path, mode)
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        self.0.unwatch(path)
    }

    fn kind() -> notify::WatcherKind {
        RecommendedWatcher::kind()
    }
}

async fn run(
    // Owned here: dropping them stops the watchers' threads.
    _watchers: (Debouncer<ChangesOnly>, RecommendedWatcher),
    mut events: mpsc::UnboundedReceiver<DebounceEventResult>,
    index: Arc<AssetIndex>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    // Each directory's modification time when an event last named it (see `assets_at`).
    let mut dirs_seen = HashMap::new();
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            batch = events.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error");
                continue;
            }
        };
        // A path still being written to is reported again once it has gone quiet.
        let paths: Vec<PathBuf> =
            batch.into_iter().filter(|e| e.kind == DebouncedEventKind::Any).map(|e| e.path).collect();
        let roots = index.roots().clone();
        let indexed = index.clone();
        let mut dirs = std::mem::take(&mut dirs_seen);
        let (candidates, dirs) = tokio::task::spawn_blocking(move || {
            let mut out = BTreeSet::new();
            for path in paths {
                // Listed only for an event that is not a file's (most are).
                out.extend(assets_at(&roots, &path, &mut dirs, || indexed.assets()));
            }
            (out, dirs)
        })
        .await
        .expect("walking task panicked");
        dirs_seen = dirs;
        hub.rechecks.fetch_add(candidates.len() as u64, Ordering::Relaxed);
        for asset in candidates {
            if !recheck(&index, &hub, &asset).await && !is_temporary(&asset) {
                // No receiver (no change bus) is not an error.
                let _ = hub.touched.send(asset);
            }
        }
    }
}

/// Re-indexes `asset`, which may have changed on disk, if it is served or inside someone's
/// subscription; returns whether it was. The index announces a new version, a new file, or the
/// file's removal, itself.
pub(crate) async fn recheck(index: &AssetIndex, hub: &Hub, asset: &AssetPath) -> bool {
    let served = index.peek(asset).await.is_some();
    if !(served || (hub.wanted(asset) && !is_temporary(asset))) {
        return false;
    }
    match index.current(asset).await {
        Ok(_) | Err(IndexError::Unknown(_) | IndexError::Escapes(_)) => {}
        Err(e) => tracing::warn!(%asset, error = %e, "cannot re-index changed asset"),
    }
    true
}

/// The assets an event at `path` may concern: the file itself; for a directory (one renamed into
/// the root), every file below it and every `known` asset below it; for a path that is gone
/// (a file or a directory deleted), every `known` asset below it.
///
/// A directory whose modification time is the one `dirs` last saw for it had no entry added,
/// removed or renamed, and concerns nothing (an event about the directory itself, such as a
/// change of its attributes).
fn assets_at(
    roots: &Roots,
    path: &Path,
    dirs: &mut HashMap<PathBuf, SystemTime>,
    known: impl FnOnce() -> Vec<AssetPath>,
) -> Vec<AssetPath> {
    let Some(rel) = roots.name_of(path).filter(|r| !r.is_empty()) else {
        return Vec::new();
    };
    // Not following symlinks here: the index confines whatever it is asked for.
    let meta = std::fs::symlink_metadata(path);
    if meta.as_ref().is_ok_and(std::fs::Metadata::is_file) {
        return asset_of(roots, path).into_iter().collect();
    }
    let dir_modified = meta.as_ref().ok().filter(|m| m.is_dir()).and_then(|m| m.modified().ok());
    if let Some(modified) = dir_modified
        && dirs.insert(path.to_path_buf(), modified) == Some(modified)
    {
        return Vec::new();
    }
    let mut out: Vec<AssetPath> = known()
        .into_iter()
        .filter(|a| a.as_str().strip_prefix(&rel).is_some_and(|rest| rest.starts_with('/')))
        .collect();
    match meta {
        Ok(meta) if meta.is_dir() => {
            let mut stack = vec![path.to_path_buf()];
            let mut files = 0;
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let Ok(kind) = entry.file_type() else { continue };
                    if kind.is_dir() {
                        stack.push(entry.path());
                    } else if files < MAX_FILES_PER_EVENT {
                        files += 1;
                        out.extend(asset_of(roots, &entry.path()));
                    }
                }
            }
        }
        _ => out.extend(asset_of(roots, path)),
    }
    out
}

fn asset_of(roots: &Roots, path: &Path) -> Option<AssetPath> {
    AssetPath::new(&roots.name_of(path)?).ok()
}
