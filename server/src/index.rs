//! The server's asset index: asset path -> current manifest and bytes, plus recent versions.
//!
//! A file is chunked once per content. Each request stats the file (cheap) and re-indexes only
//! when its size, mtime or inode changed; re-indexing content that turns out identical keeps the
//! same version. Reading, chunking and hashing run on the blocking pool, never on the reactor.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::SystemTime;

use assetsync_protocol::shape::{Link, Shape};
use assetsync_protocol::{
    AssetPath, ChunkId, ChunkParams, FolderEntry, Hash, Have, Manifest, Scope, VersionId, chunk_data,
};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::encode::PREFIX_BYTES;
use crate::roots::Roots;
use crate::shared::Shared;
use crate::store::{AnswerKey, Store, StoreError, StoredListing};
use crate::watch::{Change, Hub};

/// Why an asset could not be served. Each maps to a wire [`assetsync_protocol::ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Nothing (or not a regular file) at that path.
    #[error("unknown asset {0:?}")]
    Unknown(AssetPath),
    /// The path resolves outside the root, through a symlink.
    #[error("asset {0:?} resolves outside the served root")]
    Escapes(AssetPath),
    /// The file is larger than the configured limit.
    #[error("asset {asset:?} is {len} bytes, over the server's limit of {limit} bytes")]
    TooLarge {
        /// The asset.
        asset: AssetPath,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A folder holds more files than one answer may list.
    #[error(
        "folder {folder:?} holds more than {limit} files: sync its subfolders, or raise serve --max-folder-files"
    )]
    TooManyFiles {
        /// The folder (`""` for the root).
        folder: String,
        /// The limit.
        limit: usize,
    },
    /// Reading the file failed.
    #[error("cannot read asset {asset:?}: {source}")]
    Io {
        /// The asset.
        asset: AssetPath,
        /// The cause.
        source: io::Error,
    },
}

/// Why an upload was not written (see [`AssetIndex::write`]). The file is as it was.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The asset is no longer the version the upload was made from.
    #[error("the file changed since the upload's base")]
    Conflict(Option<VersionId>),
    /// Something other than a regular file, or a symlink, is in the way.
    #[error("cannot write or delete {asset:?}: {why}")]
    Refused {
        /// The asset.
        asset: AssetPath,
        /// What is in the way.
        why: String,
    },
    /// Writing failed (a full disk, say).
    #[error("writing {asset:?} failed: {source}; the previous file is kept")]
    Io {
        /// The asset.
        asset: AssetPath,
        /// The cause.
        source: io::Error,
    },
    /// The file as it is could not be read.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Index settings.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// The served folders; canonicalised by [`AssetIndex::new`].
    pub roots: Roots,
    /// Chunking parameters for newly indexed files.
    pub params: ChunkParams,
    /// How many versions of each asset to remember (the current one included), so that clients
    /// naming an older version still get a delta, and a compression prefix. Without a store,
    /// each is held in memory with its bytes.
    pub keep_versions: usize,
    /// Where remembered versions are kept across restarts (`None`: in memory only).
    pub store: Option<StoreConfig>,
    /// Earlier releases still on disk: each file under them is remembered, at start-up, as a
    /// version of the asset at the same path.
    pub history: Vec<PathBuf>,
    /// Largest file served, in bytes (the current version of each asset is held in memory).
    pub max_asset_bytes: u64,
    /// Most files one folder listing may hold.
    pub max_folder_files: usize,
    /// The store shared with other instances (see [`crate::shared`]), if any.
    pub shared: Option<Arc<Shared>>,
}

/// The version store's settings (see [`crate::store`]).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The store folder.
    pub dir: PathBuf,
    /// Chunk bytes the stored versions may take in all; past it, the oldest versions are
    /// dropped (never an asset's current one).
    pub max_bytes: u64,
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp { len: meta.len(), modified: meta.modified().ok(), inode }
    }
}

/// The current version of one asset, shared by every session that serves it.
#[derive(Debug)]
pub struct Indexed {
    /// The manifest.
    pub manifest: Arc<Manifest>,
    /// Its version id.
    pub version: VersionId,
    /// The file's bytes; chunk frames are cut from this one copy.
    pub data: Bytes,
    /// Byte offset of each manifest entry.
    pub offsets: Vec<usize>,
    stamp: Stamp,
}

impl Indexed {
    /// The bytes of manifest entry `index`.
    pub fn chunk(&self, index: usize) -> &[u8] {
        let start = self.offsets[index];
        &self.data[start..start + self.manifest.chunks[index].len as usize]
    }
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Indexed>>,
}

/// One remembered version.
struct Known {
    manifest: Arc<Manifest>,
    /// Its order of arrival: higher is newer.
    seq: u64,
    /// The version's bytes, held until the store has them (for good without a store, or when
    /// writing it failed).
    pinned: Option<Bytes>,
    /// The indexed copy, while it is an asset's current version or is being served.
    live: Weak<Indexed>,
}

impl Known {
    /// The version's bytes, if they are in memory.
    fn held(&self) -> Option<Bytes> {
        self.pinned.clone().or_else(|| Some(self.live.upgrade()?.data.clone()))
    }
}

/// The delta base of an answer: a remembered version the client named.
pub struct Base {
    /// Where the client listed it in `have.versions`.
    pub position: u32,
    /// The version.
    pub version: VersionId,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
}

/// Every remembered version, and what deciding which to keep needs.
#[derive(Default)]
struct Versions {
    known: HashMap<VersionId, Known>,
    /// Each asset's versions, newest last (the current one included).
    histories: HashMap<AssetPath, VecDeque<VersionId>>,
    /// Every version by sequence number: the oldest are dropped first.
    by_seq: BTreeMap<u64, VersionId>,
    next_seq: u64,
    /// The chunks the versions name: how many name each, and its length.
    chunks: HashMap<ChunkId, (u32, u32)>,
    /// The lengths of `chunks` summed: what the store holds.
    chunk_bytes: u64,
}

/// A version dropped from [`Versions`], and the chunks that only it named.
type Dropped = (VersionId, Vec<ChunkId>);

impl Versions {
    /// Records `manifest`'s version as the newest of its asset, with `seq`; `live` is its
    /// indexed copy, and `data` its bytes to hold until the store has them.
    /// Returns false, and changes nothing but `live`, when it already was the newest.
    fn add(
        &mut self,
        manifest: Arc<Manifest>,
        seq: u64,
        live: Option<&Arc<Indexed>>,
        data: Option<Bytes>,
    ) -> bool {
        let version = manifest.version();
        let live = live.map_or_else(Weak::new, Arc::downgrade);
        let history = self.histories.entry(manifest.path.clone()).or_default();
        if history.back() == Some(&version)
            && let Some(known) = self.known.get_mut(&version)
        {
            // Indexed again (a restart, a touch): already the newest.
            known.live = live;
            return false;
        }
        self.next_seq = self.next_seq.max(seq + 1);
        history.retain(|v| *v != version);
        history.push_back(version);
        if let Some(known) = self.known.get_mut(&version) {
            self.by_seq.remove(&known.seq);
            known.seq = seq;
            known.live = live;
        } else {
            self.count_chunks(&manifest);
            self.known.insert(version, Known { manifest, seq, pinned: data, live });
        }
        self.by_seq.insert(seq, version);
        true
    }

    /// Records `manifest`'s version, found in the shared store, as the oldest of its asset
    /// (the first dropped); its bytes are in the shared store.
    fn add_oldest(&mut self, manifest: Arc<Manifest>) {
        let version = manifest.version();
        if self.known.contains_key(&version) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.histories.entry(manifest.path.clone()).or_default().push_front(version);
        self.count_chunks(&manifest);
        self.known.insert(version, Known { manifest, seq, pinned: None, live: Weak::new() });
        self.by_seq.insert(seq, version);
    }

    fn count_chunks(&mut self, manifest: &Manifest) {
        let mut seen = HashSet::new();
        for chunk in manifest.chunks.iter().filter(|c| seen.insert(c.id)) {
            let (refs, _) = self.chunks.entry(chunk.id).or_insert((0, chunk.len));
            if *refs == 0 {
                self.chunk_bytes += u64::from(chunk.len);
            }
            *refs += 1;
        }
    }

    /// Whether `version` is the newest of its asset and still indexed: the current version of
    /// a file that is there.
    fn is_current(&self, version: &VersionId) -> bool {
        self.known.get(version).is_some_and(|k| {
            k.live.strong_count() > 0
                && self.histories.get(&k.manifest.path).and_then(|h| h.back()) == Some(version)
        })
    }

    /// Drops versions to keep at most `keep` per asset (`only` that one's, if given; the oldest
    /// go), and until the chunks take at most `max_bytes` (the oldest go, never a current one).
    fn trim(&mut self, keep: usize, max_bytes: u64, only: Option<&AssetPath>) -> Vec<Dropped> {
        let mut excess: Vec<VersionId> = Vec::new();
        let histories: Box<dyn Iterator<Item = &VecDeque<VersionId>>> = match only {
            Some(asset) => Box::new(self.histories.get(asset).into_iter()),
            None => Box::new(self.histories.values()),
        };
        for history in histories {
            excess.extend(history.iter().take(history.len().saturating_sub(keep)));
        }
        let mut dropped: Vec<Dropped> = excess.into_iter().filter_map(|v| self.drop_version(&v)).collect();
        if self.chunk_bytes > max_bytes {
            let oldest: Vec<VersionId> = self.by_seq.values().copied().collect();
            for version in oldest {
                if self.chunk_bytes <= max_bytes {
                    break;
                }
                if !self.is_current(&version) {
                    dropped.extend(self.drop_version(&version));
                }
            }
        }
        dropped
    }

    fn drop_version(&mut self, version: &VersionId) -> Option<Dropped> {
        let known = self.known.remove(version)?;
        self.by_seq.remove(&known.seq);
        let path = &known.manifest.path;
        if let Some(history) = self.histories.get_mut(path) {
            history.retain(|v| v != version);
            if history.is_empty() {
                self.histories.remove(path);
            }
        }
        let mut gone = Vec::new();
        let mut seen = HashSet::new();
        for chunk in known.manifest.chunks.iter().filter(|c| seen.insert(c.id)) {
            if let Some((refs, len)) = self.chunks.get_mut(&chunk.id) {
                *refs -= 1;
                if *refs == 0 {
                    self.chunk_bytes -= u64::from(*len);
                    self.chunks.remove(&chunk.id);
                    gone.push(chunk.id);
                }
            }
        }
        Some((*version, gone))
    }
}

/// The index. Cheap to share: sessions hold an `Arc` of it.
pub struct AssetIndex {
    config: IndexConfig,
    hub: Arc<Hub>,
    /// When this index started: files written since are new to its subscribers.
    started: SystemTime,
    slots: Mutex<HashMap<AssetPath, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Every remembered version: the delta base and compression prefix for clients that name it.
    versions: Arc<RwLock<Versions>>,
    /// Where remembered versions' bytes are kept, if anywhere but memory.
    store: Option<Arc<Store>>,
    /// Recent folder listings by [`assetsync_protocol::folder_version`]: a client naming one
    /// gets an unchanged folder in one short answer, a changed one as a delta.
    listings: Mutex<Listings>,
    /// The shape each folder had at its last listing, and when: a `sync_folder` that asks for
    /// it (or protocol 4's `get_shape`, right after) needs no second walk.
    shapes: Mutex<HashMap<Scope, (std::time::Instant, Arc<Shape>)>>,
    /// Changes under the roots, as the watcher saw them, and each folder's last listing while
    /// none happened: answers an unchanged folder without walking it (see [`AssetIndex::list`]).
    stillness: Arc<Stillness>,
    walked: Mutex<HashMap<Scope, StillListing>>,
    /// Listings walked, and reused, since start (for `/status`).
    walks: AtomicU64,
    reused: AtomicU64,
}

/// What a watcher saw change under the roots (anything but reads: see `watch::start`).
#[derive(Default)]
pub struct Stillness {
    /// Changes seen, and when the last one was; `None` until a watcher reports here.
    seen: Mutex<Option<(u64, std::time::Instant)>>,
    fence: std::sync::OnceLock<Fence>,
}

/// A folder of its own that the watcher watches with the roots, through the same queue of
/// events: once the event of a file created there now has been seen, so has every event of a
/// change made before.
pub(crate) struct Fence {
    dir: tempfile::TempDir,
    next: AtomicU64,
    /// The highest fence seen.
    passed: tokio::sync::watch::Sender<u64>,
}

impl Fence {
    /// A fence in the system's temporary folder, named after this process; those of servers
    /// that were killed (their process is gone) are removed first.
    pub(crate) fn new() -> io::Result<Self> {
        remove_stale_fences(&std::env::temp_dir());
        let prefix = format!("{FENCE_PREFIX}{}-", std::process::id());
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir()?;
        Ok(Fence { dir, next: AtomicU64::new(0), passed: tokio::sync::watch::Sender::new(0) })
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

const FENCE_PREFIX: &str = "assetsync-fence-";

/// Removes the fence folders under `temp` of processes that no longer run (a server killed
/// leaves its own behind). Only where `/proc` tells which processes run, and only folders
/// holding nothing but fence files.
fn remove_stale_fences(temp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(temp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(FENCE_PREFIX)?.split('-').next()) else {
            continue;
        };
        let gone = pid.parse::<u32>().is_ok_and(|pid| !Path::new("/proc").join(pid.to_string()).exists());
        let Ok(files) = std::fs::read_dir(entry.path()) else { continue };
        let only_fences =
            files.flatten().all(|f| f.file_name().to_str().is_some_and(|n| n.parse::<u64>().is_ok()));
        if gone && only_fences {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The longest wait for a fence: past it, the watcher is taken to be behind.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

impl Stillness {
    /// Starts counting: called by the watcher once its watches, `fence`'s included, are in
    /// place.
    pub(crate) fn watching(&self, fence: Fence) {
        *self.seen.lock().expect("poisoned") = Some((0, std::time::Instant::now()));
        let _ = self.fence.set(fence);
    }

    /// Something under the roots changed, or the watcher may have missed something.
    pub(crate) fn changed(&self) {
        if let Some((n, at)) = self.seen.lock().expect("poisoned").as_mut() {
            (*n, *at) = (*n + 1, std::time::Instant::now());
        }
    }

    /// An event at `path`: if it is a fence's, it passed, and `true`.
    pub(crate) fn fence_passed(&self, path: &Path) -> bool {
        let Some(fence) = self.fence.get().filter(|f| path.parent() == Some(f.dir())) else { return false };
        if let Some(n) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) {
            fence.passed.send_if_modified(|passed| std::mem::replace(passed, n.max(*passed)) < n);
        }
        true
    }

    /// The count of changes, once every change made before this call has been seen, if none
    /// happened for [`SETTLE`] (so that the watcher has watched every new folder since); else
    /// `None`.
    async fn settled(&self) -> Option<u64> {
        let fence = self.fence.get()?;
        // Not still for long enough already: no listing can be reused nor kept, so no fence.
        self.still_for_settle()?;
        let n = fence.next.fetch_add(1, Ordering::Relaxed) + 1;
        let path = fence.dir().join(n.to_string());
        std::fs::write(&path, b"").ok()?;
        let mut passed = fence.passed.subscribe();
        let seen = tokio::time::timeout(FENCE_WAIT, passed.wait_for(|&p| p >= n)).await;
        let _ = std::fs::remove_file(&path);
        if !matches!(seen, Ok(Ok(_))) {
            tracing::debug!("the watcher is behind: walking the folder");
            return None;
        }
        self.still_for_settle()
    }

    /// The count of changes if none happened for [`SETTLE`], as far as the events seen so far
    /// tell.
    fn still_for_settle(&self) -> Option<u64> {
        self.seen.lock().expect("poisoned").filter(|(_, at)| at.elapsed() >= SETTLE).map(|(n, _)| n)
    }

    fn count(&self) -> Option<u64> {
        self.seen.lock().expect("poisoned").map(|(n, _)| n)
    }
}

/// A folder's listing, walked while nothing changed: reused until something does.
struct StillListing {
    changes: u64,
    at: std::time::Instant,
    files: Vec<Arc<Indexed>>,
    shape: Arc<Shape>,
}

/// How long the roots must have been still before a listing walked then is reused: the watcher
/// watches a new folder moments after it appears, and files created in it before that raise no
/// event of their own.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The oldest listing reused, for changes no watcher sees (a network filesystem's).
const WALK_REUSED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// One remembered folder listing.
struct Listed {
    version: VersionId,
    /// Its entries; `None` while they are only in the store (since it was opened).
    entries: Option<Arc<[FolderEntry]>>,
    len: usize,
}

/// The remembered folder listings, newest last, and the next one's sequence number in the store.
#[derive(Default)]
struct Listings {
    recent: VecDeque<Listed>,
    next_seq: u64,
}

/// Folder listings remembered (see [`AssetIndex::listing`]), and their entries in all (about
/// 100 bytes each).
const LISTINGS: usize = 64;
const LISTED_ENTRIES: usize = 1_000_000;

/// Versions looked up in the shared store at once.
const LEARNING: usize = 8;

impl AssetIndex {
    /// Opens an index over `config.roots`, which must be existing directories, and the version
    /// store if one is configured (remembering the versions it holds). Every new version of an
    /// asset, every asset found gone, and every file written while it runs is announced on
    /// `hub` (a file that predates it, read for the first time, is not: it did not change).
    pub fn new(mut config: IndexConfig, hub: Arc<Hub>) -> anyhow::Result<Self> {
        config.roots.canonicalize()?;
        config.keep_versions = config.keep_versions.max(1);
        let versions = Arc::new(RwLock::new(Versions::default()));
        let mut listings = Listings::default();
        let store = match &mut config.store {
            Some(store) => {
                std::fs::create_dir_all(&store.dir)
                    .and_then(|()| store.dir.canonicalize())
                    .map(|dir| store.dir = dir)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot create the version store {}: {e}", store.dir.display())
                    })?;
                if config.roots.contain(&store.dir) {
                    anyhow::bail!(
                        "the version store {} is inside a served folder: pass a --store outside it",
                        store.dir.display(),
                    );
                }
                let (store, listed) = open_store(store, &versions, config.keep_versions)?;
                for (seq, version, len) in listed {
                    listings.next_seq = seq + 1;
                    listings.recent.push_back(Listed { version, entries: None, len });
                }
                Some(Arc::new(store))
            }
            None => None,
        };
        let started = SystemTime::now();
        let (slots, listings) = (Default::default(), Mutex::new(listings));
        let (shapes, stillness, walked, walks, reused) = Default::default();
        let index = AssetIndex {
            config,
            hub,
            started,
            slots,
            versions,
            store,
            listings,
            shapes,
            stillness,
            walked,
            walks,
            reused,
        };
        for dir in &index.config.history {
            index.import(dir)?;
        }
        Ok(index)
    }

    /// Remembers every file under `dir` as a version of the asset at the same path. Blocking.
    fn import(&self, dir: &Path) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let dir = dir
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("cannot open --history {}: {e}", dir.display()))?;
        let files = walk_dir(&dir, "", "", usize::MAX)?.files;
        let (mut new, mut queued) = (0, 0);
        for (asset, stamp) in &files {
            if stamp.len > self.config.max_asset_bytes {
                continue;
            }
            let path = asset.components().fold(dir.clone(), |p, c| p.join(c));
            let data = match std::fs::read(&path) {
                Ok(data) => Bytes::from(data),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a history file");
                    continue;
                }
            };
            let (manifest, _) = build_manifest(asset.clone(), &data, self.config.params);
            if self.versions.read().expect("poisoned").known.contains_key(&manifest.version()) {
                continue;
            }
            queued += data.len();
            self.keep(Arc::new(manifest), None, data);
            new += 1;
            // Held in memory until written: write as we go.
            if let Some(store) = self.store.as_ref().filter(|_| queued >= 64 << 20) {
                store.flush();
                queued = 0;
            }
        }
        tracing::info!(
            history = %dir.display(),
            files = files.len(),
            new,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "history imported"
        );
        Ok(())
    }

    /// Writes what is queued for the store, if any, and closes it. Blocking.
    pub fn close(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }

    /// The largest file served (and accepted from an upload), in bytes.
    pub fn max_asset_bytes(&self) -> u64 {
        self.config.max_asset_bytes
    }

    /// The served folders, canonical.
    pub fn roots(&self) -> &Roots {
        &self.config.roots
    }

    /// Whether `asset` names a folder inside the root (for the error of a sync that named one).
    pub fn is_folder(&self, asset: &AssetPath) -> bool {
        self.resolve(asset).is_some_and(|real| real.is_dir())
    }

    /// Whether `asset` names a file inside the root, indexed or not.
    pub fn is_file(&self, asset: &AssetPath) -> bool {
        self.resolve(asset).is_some_and(|real| real.is_file())
    }

    /// Where `asset` leads, through symlinks, if it exists and stays inside the root.
    fn resolve(&self, asset: &AssetPath) -> Option<PathBuf> {
        let located = self.config.roots.locate(asset.as_str())?;
        located.path().canonicalize().ok().filter(|real| real.starts_with(located.dir))
    }

    /// The current version of `asset`, indexing it first if it is new or changed on disk.
    pub async fn current(&self, asset: &AssetPath) -> Result<Arc<Indexed>, IndexError> {
        self.current_of(std::slice::from_ref(asset)).await.pop().expect("one result per asset")
    }

    /// [`AssetIndex::current`] of each of `assets` (sorted, without repeats), read and indexed
    /// in one task on the blocking pool: a folder's thousands of files do not each cost a trip
    /// to another thread.
    pub(crate) async fn current_of(&self, assets: &[AssetPath]) -> Vec<Result<Arc<Indexed>, IndexError>> {
        // One indexer per asset: concurrent requests for a changed file wait for one re-index.
        // Locked in path order, as every caller that takes several does.
        let mut slots = Vec::with_capacity(assets.len());
        for asset in assets {
            let slot = self.slots.lock().expect("poisoned").entry(asset.clone()).or_default().clone();
            slots.push(slot.lock_owned().await);
        }
        // Taken out of the slots (locked meanwhile) and handed to `refresh`, so that a changed
        // file's old bytes can be let go before the new ones are read.
        let previous: Vec<Option<Arc<Indexed>>> = slots.iter_mut().map(|s| s.current.take()).collect();
        let before: Vec<Option<VersionId>> = previous.iter().map(|p| p.as_ref().map(|p| p.version)).collect();
        let (roots, owned, max) = (self.config.roots.clone(), assets.to_vec(), self.config.max_asset_bytes);
        let params = self.config.params;
        let results = tokio::task::spawn_blocking(move || {
            owned
                .iter()
                .zip(previous)
                .map(|(a, mut p)| {
                    let result = refresh(&roots, a, &mut p, params, max);
                    (p, result)
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("indexing task panicked");
        assets
            .iter()
            .zip(slots.iter_mut())
            .zip(before)
            .zip(results)
            .map(|(((a, slot), before), (previous, r))| {
                slot.current = previous;
                self.settle(a, slot, before, r)
            })
            .collect()
    }

    /// Writes `data` as the new file of `asset` if its current version (as on disk now) is still
    /// `base` (`None`: no such file), then indexes it and announces the change. Uploads of one
    /// asset are written one at a time, each checked against what the one before wrote, so one
    /// of two uploads from the same base is refused with [`WriteError::Conflict`].
    pub async fn write(
        &self,
        asset: &AssetPath,
        base: Option<VersionId>,
        data: Vec<u8>,
    ) -> Result<Arc<Indexed>, WriteError> {
        Ok(self.change(asset, base, move |path| crate::write::write_atomically(path, &data)).await??)
    }

    /// Deletes the file of `asset` if its current version (as on disk now) is still `base`, as
    /// [`AssetIndex::write`] writes, and announces the removal.
    pub async fn remove(&self, asset: &AssetPath, base: VersionId) -> Result<(), WriteError> {
        match self.change(asset, Some(base), crate::write::remove_durably).await? {
            Ok(_) | Err(IndexError::Unknown(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Does `op` to the file of `asset` (never through a symlink, nor to anything but a regular
    /// file) if its current version is still `base`, under the asset's lock; then re-indexes it.
    async fn change(
        &self,
        asset: &AssetPath,
        base: Option<VersionId>,
        op: impl FnOnce(&Path) -> io::Result<()> + Send + 'static,
    ) -> Result<Result<Arc<Indexed>, IndexError>, WriteError> {
        let refused = |why| WriteError::Refused { asset: asset.clone(), why };
        let located =
            self.config.roots.locate(asset.as_str()).ok_or_else(|| refused("no such module".into()))?;
        let path = crate::write::writable_path(located.dir, located.rest).map_err(refused)?;
        let slot = self.slots.lock().expect("poisoned").entry(asset.clone()).or_default().clone();
        let mut slot = slot.lock_owned().await;
        let current = match self.refresh_slot(asset, &mut slot).await {
            Ok(current) => Some(current.version),
            Err(IndexError::Unknown(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if current != base {
            return Err(WriteError::Conflict(current));
        }
        let done = tokio::task::spawn_blocking(move || op(&path)).await.expect("writing task panicked");
        self.stillness.changed();
        done.map_err(|source| WriteError::Io { asset: asset.clone(), source })?;
        Ok(self.refresh_slot(asset, &mut slot).await)
    }

    /// [`AssetIndex::current`] with the asset's slot already locked.
    async fn refresh_slot(&self, asset: &AssetPath, slot: &mut Slot) -> Result<Arc<Indexed>, IndexError> {
        let mut previous = slot.current.take();
        let before = previous.as_ref().map(|p| p.version);
        let (roots, owned, max, params) =
            (self.config.roots.clone(), asset.clone(), self.config.max_asset_bytes, self.config.params);
        let (previous, result) = tokio::task::spawn_blocking(move || {
            let result = refresh(&roots, &owned, &mut previous, params, max);
            (previous, result)
        })
        .await
        .expect("indexing task panicked");
        slot.current = previous;
        self.settle(asset, slot, before, result)
    }

    /// Records what [`refresh`] found for `asset`, whose version was `before`, announcing a
    /// change.
    fn settle(
        &self,
        asset: &AssetPath,
        slot: &mut Slot,
        before: Option<VersionId>,
        result: Result<Option<Indexed>, IndexError>,
    ) -> Result<Arc<Indexed>, IndexError> {
        match result {
            Ok(Some(fresh)) => {
                let fresh = Arc::new(fresh);
                self.keep(fresh.manifest.clone(), Some(&fresh), fresh.data.clone());
                slot.current = Some(fresh.clone());
                // A file indexed for the first time is news only if it was written while this
                // server ran: one that merely existed, read now for someone, did not change.
                let new = before.is_none() && fresh.stamp.modified.is_some_and(|m| m >= self.started);
                if before.is_some_and(|v| v != fresh.version) || new {
                    self.hub.announce(Change { asset: asset.clone(), version: Some(fresh.version) });
                }
                Ok(fresh)
            }
            Ok(None) => Ok(slot.current.clone().expect("unchanged implies indexed")),
            Err(e @ (IndexError::Unknown(_) | IndexError::Escapes(_))) => {
                // Gone: its versions stay remembered as delta bases, within `keep_versions`.
                if slot.current.take().is_some() || before.is_some() {
                    self.hub.announce(Change { asset: asset.clone(), version: None });
                }
                // Forget a name that never was a file, so the slot map does not grow with them.
                if !self.versions.read().expect("poisoned").histories.contains_key(asset) {
                    self.slots.lock().expect("poisoned").remove(asset);
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The assets indexed so far, including removed ones whose versions are still remembered.
    pub fn assets(&self) -> Vec<AssetPath> {
        self.slots.lock().expect("poisoned").keys().cloned().collect()
    }

    /// The current version of `asset` as last indexed, without looking at the file.
    pub async fn peek(&self, asset: &AssetPath) -> Option<VersionId> {
        let slot = self.slots.lock().expect("poisoned").get(asset).cloned()?;
        slot.lock().await.current.as_ref().map(|c| c.version)
    }

    /// Remembers `manifest`'s version, whose bytes are `data` (and indexed copy `live`), as the
    /// newest of its asset; drops what no longer fits.
    fn keep(&self, manifest: Arc<Manifest>, live: Option<&Arc<Indexed>>, data: Bytes) {
        let max_bytes = self.max_bytes();
        let (seq, dropped) = {
            let mut versions = self.versions.write().expect("poisoned");
            let seq = versions.next_seq;
            if !versions.add(manifest.clone(), seq, live, Some(data.clone())) {
                return;
            }
            (seq, versions.trim(self.config.keep_versions, max_bytes, Some(&manifest.path)))
        };
        if let Some(shared) = self.config.shared.clone() {
            let (manifest, data) = (manifest.clone(), data.clone());
            tokio::spawn(async move { shared.put_version(&manifest, data).await });
        }
        if let Some(store) = &self.store {
            store.put(seq, manifest, data);
        }
        self.forget(dropped);
    }

    /// The chunk bytes remembered versions may take (`--store-max-bytes`; no limit without a
    /// store).
    fn max_bytes(&self) -> u64 {
        self.config.store.as_ref().map_or(u64::MAX, |s| s.max_bytes)
    }

    /// Tells the store about versions dropped from memory.
    fn forget(&self, dropped: Vec<Dropped>) {
        if let Some(store) = &self.store {
            for (version, chunks) in dropped {
                store.forget(version, chunks);
            }
        }
    }

    /// Looks up in the shared store the versions of `known` (an asset, and the version of it
    /// a client holds) this index does not remember, at most `limit` of them, and remembers
    /// those found, so that the client gets deltas against them.
    pub async fn learn(&self, known: impl IntoIterator<Item = (AssetPath, VersionId)>, limit: usize) {
        let Some(shared) = &self.config.shared else { return };
        let unknown: Vec<(AssetPath, VersionId)> = {
            let versions = &self.versions.read().expect("poisoned").known;
            known.into_iter().filter(|(_, v)| !versions.contains_key(v)).take(limit).collect()
        };
        let found: Vec<Manifest> = futures_util::stream::iter(unknown)
            .map(
                |(asset, version)| async move { shared.manifest(&version).await.filter(|m| m.path == asset) },
            )
            .buffer_unordered(LEARNING)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if found.is_empty() {
            return;
        }
        tracing::debug!(versions = found.len(), "versions learned from the shared store");
        let max_bytes = self.max_bytes();
        let mut dropped = Vec::new();
        {
            let mut versions = self.versions.write().expect("poisoned");
            for manifest in found {
                let asset = manifest.path.clone();
                versions.add_oldest(Arc::new(manifest));
                dropped.extend(versions.trim(self.config.keep_versions, max_bytes, Some(&asset)));
            }
        }
        self.forget(dropped);
    }

    /// The best-level answer kept under `key`: in the version store, or else in the shared
    /// store (then kept in the version store too).
    pub async fn answer(&self, key: &AnswerKey) -> Option<Vec<u8>> {
        if let Some(store) = self.store.clone() {
            let key = *key;
            match tokio::task::spawn_blocking(move || store.answer(&key))
                .await
                .expect("store reading task panicked")
            {
                Ok(Some(answer)) => return Some(answer),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "dropping a stored answer"),
            }
        }
        let answer = self.config.shared.as_ref()?.answer(key).await?;
        tracing::debug!(bytes = answer.len(), "answer read from the shared store");
        if let Some(store) = &self.store {
            store.put_answer(*key, answer.clone());
        }
        Some(answer)
    }

    /// Whether this instance should compute the best-level answer under `key` (see
    /// [`Shared::claim_answer`]); always, without a shared store.
    pub async fn claim_answer(&self, key: &AnswerKey) -> bool {
        match &self.config.shared {
            Some(shared) => shared.claim_answer(key).await,
            None => true,
        }
    }

    /// The best-level answer under `key` that another instance claimed, once it is in the
    /// shared store (see [`Shared::await_answer`]).
    pub async fn await_answer(&self, key: &AnswerKey) -> Option<Vec<u8>> {
        self.config.shared.as_ref()?.await_answer(key).await
    }

    /// Keeps a best-level answer in the version store and the shared store, where there are.
    pub fn put_answer(&self, key: AnswerKey, answer: Vec<u8>) {
        if let Some(shared) = self.config.shared.clone() {
            let answer = answer.clone();
            tokio::spawn(async move { shared.put_answer(key, &answer).await });
        }
        if let Some(store) = &self.store {
            store.put_answer(key, answer);
        }
    }

    /// Resolves a client digest against the manifests it asks about: the versions in
    /// `have.versions` the server remembers, with their positions there, and every chunk the
    /// client is known to hold (from known versions, and the chunks of `wanted` that
    /// `have.chunks` matches).
    pub fn resolve_have<'a>(
        &self,
        have: &Have,
        wanted: impl IntoIterator<Item = &'a Manifest>,
    ) -> (Vec<Base>, HashSet<ChunkId>) {
        let known: Vec<Base> = {
            let versions = self.versions.read().expect("poisoned");
            (0..)
                .zip(&have.versions)
                .filter_map(|(position, version)| {
                    let manifest = versions.known.get(version)?.manifest.clone();
                    Some(Base { position, version: *version, manifest })
                })
                .collect()
        };
        let held = assetsync_protocol::client_holds(have, known.iter().map(|b| b.manifest.as_ref()), wanted);
        (known, held)
    }

    /// Every asset with remembered versions, and its newest one, sorted by path.
    pub fn remembered(&self) -> Vec<(AssetPath, VersionId)> {
        let versions = self.versions.read().expect("poisoned");
        let mut out: Vec<_> =
            versions.histories.iter().filter_map(|(asset, h)| Some((asset.clone(), *h.back()?))).collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Up to `n` remembered versions of `asset` other than `current`, newest first.
    pub fn recent(&self, asset: &AssetPath, current: &VersionId, n: usize) -> Vec<Base> {
        let versions = self.versions.read().expect("poisoned");
        let Some(history) = versions.histories.get(asset) else { return Vec::new() };
        history
            .iter()
            .rev()
            .filter(|v| *v != current)
            .take(n)
            .filter_map(|v| {
                Some(Base { position: 0, version: *v, manifest: versions.known.get(v)?.manifest.clone() })
            })
            .collect()
    }

    /// The end of remembered `version` (see [`PREFIX_BYTES`]), for a compression prefix: from
    /// memory when it is there, otherwise read from the store. A version whose stored bytes are
    /// missing or damaged is forgotten (its clients then get an answer without prefix, or
    /// `unknown_base`).
    pub async fn prefix(&self, version: &VersionId) -> Option<Bytes> {
        let manifest = {
            let versions = self.versions.read().expect("poisoned");
            let known = versions.known.get(version)?;
            if let Some(held) = known.held() {
                return Some(held.slice(held.len().saturating_sub(PREFIX_BYTES)..));
            }
            known.manifest.clone()
        };
        let mut problem = None;
        if let Some(store) = self.store.clone() {
            let tail = manifest.clone();
            let read = tokio::task::spawn_blocking(move || store.read_tail(&tail, PREFIX_BYTES as u64));
            problem = Some(match read.await.expect("store reading task panicked") {
                Ok(Some(data)) => return Some(Bytes::from(data)),
                Ok(None) => "missing from the store".to_owned(),
                Err(e) => e.to_string(),
            });
        }
        if let Some(shared) = &self.config.shared {
            if let Some(data) = shared.tail(&manifest, PREFIX_BYTES as u64).await {
                return Some(Bytes::from(data));
            }
            problem = Some("missing from the version store and the shared store".to_owned());
        }
        tracing::warn!(version = %version.to_hex(), problem = problem?, "forgetting a remembered version");
        let dropped = self.versions.write().expect("poisoned").drop_version(version);
        self.forget(dropped.into_iter().collect());
        None
    }

    /// The listing whose version is `version`, if it is one of the last few listed (read back
    /// from the store after a restart; one found damaged there is forgotten), or else in the
    /// shared store.
    pub async fn listing(&self, version: &VersionId) -> Option<Arc<[FolderEntry]>> {
        let remembered = {
            let listings = self.listings.lock().expect("poisoned");
            let listed = listings.recent.iter().find(|l| l.version == *version);
            if let Some(entries) = listed.and_then(|l| l.entries.as_ref()) {
                return Some(entries.clone());
            }
            listed.is_some()
        };
        if !remembered {
            // Another instance may have sent it.
            let entries = self.config.shared.as_ref()?.listing(version).await?;
            self.remember_listing(*version, &entries);
            return Some(entries.into());
        }
        let (store, wanted) = (self.store.clone()?, *version);
        let read = tokio::task::spawn_blocking(move || store.listing(&wanted));
        let read = read.await.expect("store reading task panicked");
        let mut listings = self.listings.lock().expect("poisoned");
        let at = listings.recent.iter().position(|l| l.version == *version);
        let problem = match (read, at) {
            (Ok(Some(entries)), Some(at)) => {
                let entries: Arc<[FolderEntry]> = entries.into();
                listings.recent[at].entries = Some(entries.clone());
                return Some(entries);
            }
            (Ok(Some(entries)), None) => return Some(entries.into()),
            (Ok(None), _) => "missing from the store".to_owned(),
            (Err(e), _) => e.to_string(),
        };
        tracing::warn!(listing = %version.to_hex(), problem, "forgetting a remembered folder listing");
        if let Some(at) = at {
            listings.recent.remove(at);
        }
        None
    }

    /// Remembers a listing sent to a client, under its version, as the most recent one (one
    /// remembered already is moved, not copied again), here and in the store.
    pub fn remember_listing(&self, version: VersionId, entries: &[FolderEntry]) {
        let mut listings = self.listings.lock().expect("poisoned");
        let known = listings.recent.iter().position(|l| l.version == version);
        let newest = known.is_some_and(|at| at + 1 == listings.recent.len());
        let mut listed = match known.and_then(|at| listings.recent.remove(at)) {
            Some(listed) => listed,
            None => Listed { version, entries: None, len: entries.len() },
        };
        let new = known.is_none();
        if listed.entries.is_none() {
            listed.entries = Some(entries.into());
        }
        if let Some(shared) = self.config.shared.clone().filter(|_| new) {
            let entries = listed.entries.clone().expect("set above");
            tokio::spawn(async move { shared.put_listing(version, &entries).await });
        }
        if let Some(store) = self.store.as_ref().filter(|_| !newest) {
            store.put_listing(version, listings.next_seq, listed.entries.clone().filter(|_| new));
            listings.next_seq += 1;
        }
        listings.recent.push_back(listed);
        let total = |l: &Listings| l.recent.iter().map(|l| l.len).sum::<usize>();
        while listings.recent.len() > LISTINGS
            || (listings.recent.len() > 1 && total(&listings) > LISTED_ENTRIES)
        {
            let gone = listings.recent.pop_front().expect("more than one");
            if let Some(store) = &self.store {
                store.forget_listing(gone.version);
            }
        }
    }

    /// The current version of `asset` if it was indexed with `stamp`.
    async fn indexed_as(&self, asset: &AssetPath, stamp: Stamp) -> Option<Arc<Indexed>> {
        let slot = self.slots.lock().expect("poisoned").get(asset).cloned()?;
        let current = slot.lock().await.current.clone();
        current.filter(|c| c.stamp == stamp)
    }

    /// The files under `folder` (a folder, a module or everything), indexed, sorted by path.
    /// Symlinks are followed only where they resolve inside their root; temporary files (see
    /// [`is_temporary`]) are left out.
    ///
    /// With a watcher, a listing walked after the roots had been still for [`SETTLE`] is
    /// reused as long as the watcher sees nothing change (at most [`WALK_REUSED_FOR`]): an
    /// unchanged folder is answered without a `stat` per file.
    pub async fn list(&self, folder: &Scope) -> Result<Vec<Arc<Indexed>>, IndexError> {
        let scope = as_folder(folder);
        let settled = self.stillness.settled().await;
        {
            let mut walked = self.walked.lock().expect("poisoned");
            // Listings walked before a change hold files' old versions: dropped.
            let now = self.stillness.count();
            walked.retain(|_, w| Some(w.changes) == now && w.at.elapsed() < WALK_REUSED_FOR);
            if let Some(w) = walked.get(&scope).filter(|w| Some(w.changes) == settled) {
                self.keep_shape(&scope, w.shape.clone());
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(w.files.clone());
            }
        }
        let started = std::time::Instant::now();
        self.walks.fetch_add(1, Ordering::Relaxed);
        let (roots, limit, folder) = (self.config.roots.clone(), self.config.max_folder_files, scope.clone());
        let walked = tokio::task::spawn_blocking(move || walk(&roots, &folder, limit))
            .await
            .expect("listing task panicked")?;
        let shape = Arc::new(walked.shape);
        self.keep_shape(&scope, shape.clone());
        let found = walked.files;
        // Unchanged since it was indexed, as far as its stamp tells: not looked at again.
        let mut files = Vec::with_capacity(found.len());
        let mut stale = Vec::new();
        for (asset, stamp) in found {
            match self.indexed_as(&asset, stamp).await {
                Some(file) => files.push(file),
                None => stale.push(asset),
            }
        }
        for batch in stale.chunks(INDEX_BATCH) {
            for result in self.current_of(batch).await {
                match result {
                    Ok(file) => files.push(file),
                    // Deleted since the walk saw it.
                    Err(IndexError::Unknown(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        files.sort_unstable_by(|a, b| a.manifest.path.cmp(&b.manifest.path));
        if let Some(changes) = settled.filter(|&n| self.stillness.count() == Some(n)) {
            let walk = StillListing { changes, at: started, files: files.clone(), shape };
            self.walked.lock().expect("poisoned").insert(scope, walk);
        }
        Ok(files)
    }

    /// Folder listings walked on disk since start.
    pub fn listings_walked(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    /// Folder listings answered from an earlier walk (nothing had changed) since start.
    pub fn listings_reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// What the watcher reports changes to.
    pub(crate) fn stillness(&self) -> Arc<Stillness> {
        self.stillness.clone()
    }
}

impl AssetIndex {
    /// The shape of `folder` (see [`Shape`]): as its last listing found it, if that was moments
    /// ago (a client asks right after its `sync_folder`, and gets the shape of the very walk
    /// that listed its files), else walked now.
    pub async fn shape(&self, folder: &Scope) -> Result<Arc<Shape>, IndexError> {
        let folder = &as_folder(folder);
        let recent = self.shapes.lock().expect("poisoned").get(folder).cloned();
        if let Some((at, shape)) = recent.filter(|(at, _)| at.elapsed() < SHAPE_FRESH) {
            tracing::trace!(age_ms = at.elapsed().as_millis() as u64, "shape from the last listing");
            return Ok(shape);
        }
        let (roots, scope, limit) = (self.config.roots.clone(), folder.clone(), self.config.max_folder_files);
        let walked = tokio::task::spawn_blocking(move || walk(&roots, &scope, limit))
            .await
            .expect("listing task panicked")?;
        Ok(Arc::new(walked.shape))
    }

    /// Keeps the shape a listing of `folder` found, for [`AssetIndex::shape`].
    fn keep_shape(&self, folder: &Scope, shape: Arc<Shape>) {
        let mut shapes = self.shapes.lock().expect("poisoned");
        shapes.retain(|_, (at, _)| at.elapsed() < SHAPE_FRESH);
        shapes.insert(as_folder(folder), (std::time::Instant::now(), shape));
    }
}

/// `folder` named as a folder (`dist` and `dist/` are the same folder to a listing).
fn as_folder(folder: &Scope) -> Scope {
    match folder {
        Scope::Asset(f) => Scope::Folder(f.clone()),
        other => other.clone(),
    }
}

/// How long a folder's shape, found by a listing, answers a `sync_folder` (or `get_shape`) that
/// asks for it without another walk.
const SHAPE_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

/// Opens the store and remembers what it holds in `versions`, dropping what `keep` or the size
/// limit no longer allow. Versions the store reports written stop being held in memory.
fn open_store(
    config: &StoreConfig,
    versions: &Arc<RwLock<Versions>>,
    keep: usize,
) -> Result<(Store, Vec<StoredListing>), StoreError> {
    let started = std::time::Instant::now();
    let written = Arc::downgrade(versions);
    // Answers are a cache: a quarter of the chunks' budget.
    let (store, contents) = Store::open(&config.dir, config.max_bytes / 4, move |done| {
        let Some(versions) = written.upgrade() else { return };
        let mut versions = versions.write().expect("poisoned");
        for version in done {
            if let Some(known) = versions.known.get_mut(version) {
                known.pinned = None;
            }
        }
    })?;
    let mut versions = versions.write().expect("poisoned");
    for stored in contents.versions {
        versions.add(Arc::new(stored.manifest), stored.seq, None, None);
    }
    for (version, chunks) in versions.trim(keep, config.max_bytes, None) {
        store.forget(version, chunks);
    }
    tracing::info!(
        store = %config.dir.display(),
        versions = versions.known.len(),
        bytes = versions.chunk_bytes,
        listings = contents.listings.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "version store opened"
    );
    Ok((store, contents.listings))
}

/// Resolves `asset` under `roots` and re-indexes it if it changed since `previous`.
/// Returns `None` when `previous` is still current. Before a changed file is read, `previous`
/// is let go (its manifest kept), so that a large file's old and new bytes are not both held
/// here: the old version's are in the store, or with whoever is still serving them.
fn refresh(
    roots: &Roots,
    asset: &AssetPath,
    previous: &mut Option<Arc<Indexed>>,
    params: ChunkParams,
    max: u64,
) -> Result<Option<Indexed>, IndexError> {
    let path = confine(roots, asset)?;
    let io_err = |source| IndexError::Io { asset: asset.clone(), source };
    let mut old: Option<(VersionId, Arc<Manifest>)> = None;
    // A file being rewritten while we read it is read again, so that no torn mix is indexed.
    for _ in 0..5 {
        let before = Stamp::of(&std::fs::metadata(&path).map_err(io_err)?);
        if previous.as_ref().is_some_and(|p| p.stamp == before) {
            return Ok(None);
        }
        if before.len > max {
            return Err(IndexError::TooLarge { asset: asset.clone(), len: before.len, limit: max });
        }
        if let Some(p) = previous.take() {
            old = Some((p.version, p.manifest.clone()));
        }
        let data = std::fs::read(&path).map_err(io_err)?;
        let after = Stamp::of(&std::fs::metadata(&path).map_err(io_err)?);
        if before != after || data.len() as u64 != after.len {
            continue;
        }
        let (manifest, offsets) = build_manifest(asset.clone(), &data, params);
        let version = manifest.version();
        // Same content under a new stamp (touch, or a rewrite with identical bytes): keep sharing
        // the already indexed manifest instead of allocating another.
        let manifest = match old {
            Some((v, ref shared)) if v == version => shared.clone(),
            _ => Arc::new(manifest),
        };
        return Ok(Some(Indexed { manifest, version, data: Bytes::from(data), offsets, stamp: after }));
    }
    Err(io_err(io::Error::other("the file kept changing while it was being read")))
}

/// Files indexed by one task on the blocking pool while listing a folder.
pub(crate) const INDEX_BATCH: usize = 256;

/// Editors' and build tools' temporary files (`x~`, `x.tmp`, `.x.swp`, `.#x`, ...), which are not
/// listed in folders nor announced to folder subscriptions.
pub fn is_temporary(asset: &AssetPath) -> bool {
    let name = asset.as_str().rsplit('/').next().unwrap_or_default();
    name.ends_with('~')
        || name.starts_with(".#")
        // The native client's, while it writes a pulled file (an edge's follower, say).
        || (name.starts_with('.') && name.contains(".assetsync-"))
        || [".tmp", ".swp", ".swx", ".part", ".crdownload"].iter().any(|ext| name.ends_with(ext))
}

/// The files under `folder`, sorted by path, each with the stamp of what it holds, and the
/// folder's shape: see [`walk_dir`]. Everything, with modules, is every module.
fn walk(roots: &Roots, folder: &Scope, limit: usize) -> Result<Walked, IndexError> {
    let folder = match folder {
        Scope::All => {
            let mut all = Walked::default();
            for (prefix, dir) in roots.dirs() {
                let walked = walk_dir(dir, "", &prefix, limit - all.files.len()).map_err(|e| match e {
                    IndexError::TooManyFiles { .. } => {
                        IndexError::TooManyFiles { folder: String::new(), limit }
                    }
                    e => e,
                })?;
                all.files.extend(walked.files);
                all.shape.dirs.extend(walked.shape.dirs);
                all.shape.links.extend(walked.shape.links);
                all.shape.exec.extend(walked.shape.exec);
            }
            all.sort();
            return Ok(all);
        }
        Scope::Folder(f) | Scope::Asset(f) => f,
    };
    let located = roots.locate(folder.as_str()).ok_or_else(|| IndexError::Unknown(folder.clone()))?;
    walk_dir(located.dir, located.rest, located.prefix, limit)
}

/// What [`walk_dir`] found.
#[derive(Default)]
struct Walked {
    files: Vec<(AssetPath, Stamp)>,
    shape: Shape,
}

impl Walked {
    fn sort(&mut self) {
        self.files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.shape.dirs.sort_unstable();
        self.shape.links.sort_unstable_by(|a, b| a.asset.cmp(&b.asset));
        self.shape.exec.sort_unstable();
    }
}

/// The files under `rest` in `root` (all of them for `""`), named `prefix` and their path in
/// `root`, sorted, and the folder's shape (see [`Shape`]: the folders entered, the symlinks
/// that stay inside the folder, the executable files). Directory entries are taken as the
/// system lists them; only symlinks are resolved, and followed only where they lead inside
/// `root`, each directory once. Subfolders are walked on several threads: the time goes into
/// one `statx` per file, and a build folder has thousands.
fn walk_dir(root: &Path, rest: &str, prefix: &str, limit: usize) -> Result<Walked, IndexError> {
    let name = format!("{prefix}{rest}");
    let name = name.trim_end_matches('/');
    let (start, real) = if rest.is_empty() {
        (root.to_path_buf(), root.to_path_buf())
    } else {
        let start = rest.split('/').fold(root.to_path_buf(), |p, c| p.join(c));
        let real = start.canonicalize().ok().filter(|r| r.starts_with(root) && r.is_dir());
        let unknown = || IndexError::Unknown(AssetPath::new(name).expect("a folder's name is an asset path"));
        (start, real.ok_or_else(unknown)?)
    };
    let walk = Walk {
        root,
        prefix: prefix.trim_end_matches('/'),
        folder: name,
        real_folder: &real.clone(),
        limit,
        found: AtomicUsize::new(0),
        visited: Mutex::new(HashSet::from([real.clone()])),
        linked: Mutex::default(),
        shape: Mutex::default(),
    };
    let too_many = || IndexError::TooManyFiles { folder: name.to_owned(), limit };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(WALK_THREADS));
    // Breadth first until there is a folder for each thread to start from, then each thread
    // takes the next one left and walks it depth first.
    let mut out = Vec::new();
    let mut dirs = VecDeque::from([(start, real)]);
    while let Some((dir, real_dir)) = dirs.pop_front() {
        walk.scan(&dir, &real_dir, &mut out, &mut dirs).ok_or_else(too_many)?;
        if dirs.len() >= threads * 4 {
            break;
        }
    }
    let dirs = Mutex::new(dirs);
    let parts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    let mut stack = VecDeque::new();
                    loop {
                        let next = stack.pop_back().or_else(|| dirs.lock().expect("poisoned").pop_front());
                        let Some((dir, real_dir)) = next else { return Some(out) };
                        walk.scan(&dir, &real_dir, &mut out, &mut stack)?;
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("walking thread panicked")).collect::<Vec<_>>()
    });
    for part in parts {
        out.extend(part.ok_or_else(too_many)?);
    }
    // Folders reached through symlinks, once every real one is walked: a folder's files are
    // named by its real path when the walk reaches it, and by a link's only when that is the
    // one way there (a link to a folder outside the one listed).
    loop {
        let linked = std::mem::take(&mut *walk.linked.lock().expect("poisoned"));
        if linked.is_empty() {
            break;
        }
        let mut stack: VecDeque<_> = linked
            .into_iter()
            .filter(|(_, real)| walk.visited.lock().expect("poisoned").insert(real.clone()))
            .collect();
        while let Some((dir, real_dir)) = stack.pop_back() {
            walk.scan(&dir, &real_dir, &mut out, &mut stack).ok_or_else(too_many)?;
        }
    }
    let mut walked = Walked { files: out, shape: walk.shape.into_inner().expect("poisoned") };
    walked.sort();
    Ok(walked)
}

/// The most threads a folder listing walks on.
const WALK_THREADS: usize = 4;

/// What the threads of one [`walk`] share.
struct Walk<'a> {
    root: &'a Path,
    /// The module's name, which the files' names start with (`""`: none).
    prefix: &'a str,
    limit: usize,
    /// Files found so far, by all threads.
    found: AtomicUsize,
    /// Directories entered, where they really are.
    visited: Mutex<HashSet<PathBuf>>,
    /// Directories reached through a symlink, walked after the others.
    linked: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// The folder listed (its name, `""` for everything), and where it really is.
    folder: &'a str,
    real_folder: &'a Path,
    /// Its shape so far.
    shape: Mutex<Shape>,
}

impl Walk<'_> {
    /// The asset name of `path`, under the root.
    fn name(&self, path: &Path) -> Option<AssetPath> {
        let rest = path.strip_prefix(self.root).ok()?.to_str()?;
        match self.prefix {
            "" => AssetPath::new(rest),
            prefix => AssetPath::new(&format!("{prefix}/{rest}")),
        }
        .ok()
    }

    /// Adds the files of `dir` (which really is `real_dir`) to `out` and its subfolders to
    /// `dirs`; `None` past the limit.
    fn scan(
        &self,
        dir: &Path,
        real_dir: &Path,
        out: &mut Vec<(AssetPath, Stamp)>,
        dirs: &mut VecDeque<(PathBuf, PathBuf)>,
    ) -> Option<()> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Some(()) };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            let (real, meta) = if kind.is_symlink() {
                let Ok(target) = path.canonicalize() else { continue };
                let Ok(meta) = std::fs::metadata(&target) else { continue };
                if !target.starts_with(self.root) {
                    continue;
                }
                if target.starts_with(self.real_folder)
                    && let Some(asset) = self.name(&path)
                    && let Some(text) =
                        std::fs::read_link(&path).ok().and_then(|t| t.to_str().map(str::to_owned))
                    && Link::stays_inside(&asset, &text, self.folder)
                {
                    self.shape.lock().expect("poisoned").links.push(Link { asset, target: text });
                }
                (target, meta)
            } else {
                let Ok(meta) = entry.metadata() else { continue };
                (real_dir.join(entry.file_name()), meta)
            };
            if meta.is_dir() && kind.is_symlink() {
                self.linked.lock().expect("poisoned").push((path, real));
            } else if meta.is_dir() {
                if self.visited.lock().expect("poisoned").insert(real.clone()) {
                    if let Some(asset) = self.name(&path) {
                        self.shape.lock().expect("poisoned").dirs.push(asset);
                    }
                    dirs.push_back((path, real));
                }
            } else if meta.is_file() {
                let Some(asset) = self.name(&path) else { continue };
                if !is_temporary(&asset) {
                    if self.found.fetch_add(1, Ordering::Relaxed) >= self.limit {
                        return None;
                    }
                    if is_executable(&meta) {
                        self.shape.lock().expect("poisoned").exec.push(asset.clone());
                    }
                    out.push((asset, Stamp::of(&meta)));
                }
            }
        }
        Some(())
    }
}

/// Where `asset` is, refusing anything that resolves outside its root, symlinks included.
fn confine(roots: &Roots, asset: &AssetPath) -> Result<PathBuf, IndexError> {
    let located = roots.locate(asset.as_str()).ok_or_else(|| IndexError::Unknown(asset.clone()))?;
    let root = located.dir;
    let real = match located.path().canonicalize() {
        Ok(real) => real,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Err(IndexError::Unknown(asset.clone()));
        }
        Err(source) => return Err(IndexError::Io { asset: asset.clone(), source }),
    };
    if !real.starts_with(root) {
        return Err(IndexError::Escapes(asset.clone()));
    }
    if !real.is_file() {
        return Err(IndexError::Unknown(asset.clone()));
    }
    Ok(real)
}

/// Cuts and hashes `data`. For large files the whole-file SHA-256 runs on a second thread while
/// this one chunks, so indexing costs about one pass of wall time.
fn build_manifest(path: AssetPath, data: &[u8], params: ChunkParams) -> (Manifest, Vec<usize>) {
    let (sha256, chunks) = if data.len() >= 1 << 20 {
        std::thread::scope(|s| {
            let whole = s.spawn(|| Hash::of(data));
            let chunks = chunk_data(data, params);
            (whole.join().expect("hashing thread panicked"), chunks)
        })
    } else {
        (Hash::of(data), chunk_data(data, params))
    };
    let chunks = chunks.expect("parameters validated at start-up");
    let manifest = Manifest::from_parts(path, data.len(), sha256, params, chunks);
    let offsets = manifest.offsets().map(|(o, _)| o).collect();
    (manifest, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_of_processes_gone_are_removed_and_others_kept() {
        if !Path::new("/proc/self").exists() {
            return eprintln!("skipped: no /proc here");
        }
        let temp = tempfile::tempdir().unwrap();
        // No process has this id (above any pid_max).
        let gone = temp.path().join(format!("{FENCE_PREFIX}{}-a1", u32::MAX));
        let alive = temp.path().join(format!("{FENCE_PREFIX}{}-b2", std::process::id()));
        let not_ours = temp.path().join(format!("{FENCE_PREFIX}{}-c3", u32::MAX));
        for dir in [&gone, &alive, &not_ours] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(gone.join("7"), b"").unwrap();
        std::fs::write(not_ours.join("notes.txt"), b"kept").unwrap();
        remove_stale_fences(temp.path());
        assert!(!gone.exists(), "a killed server's fence stayed");
        assert!(alive.exists() && not_ours.exists(), "a live or foreign folder was removed");
    }
}
