//! The native client's on-disk cache, the same model the browser keeps in IndexedDB.
//!
//! ```text
//! DIR/lock                       held (flock) by a pull or gc for its whole run
//! DIR/chunks/ab/<id hex>         chunk bytes, named by their SHA-256
//! DIR/manifests/<version hex>    canonical manifest encoding, named by its SHA-256
//! DIR/refs.json                  {"asset": "<version hex>"}: the committed versions
//! ```
//!
//! Every file is written to a temporary name and renamed into place. `refs.json` is written
//! last, so it is the commit point: a crash before it leaves the previous version current, and
//! anything written before it is at worst garbage for [`Cache::gc`]. Everything read back is
//! verified against its hash; a bad entry is deleted and reported as missing.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{CacheError, Doing};
use assetsync_protocol::{AssetPath, ChunkId, FolderEntry, Hash, Manifest, Scope, VerifiedChunk, VersionId};

/// An open, locked cache directory.
pub struct Cache {
    dir: PathBuf,
    refs: BTreeMap<String, VersionId>,
    /// Whether `refs` moved since `refs.json` was last written (see [`Cache::publish`]).
    unpublished: bool,
    _lock: File,
}

/// What [`Cache::gc`] freed.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Chunk files deleted.
    pub chunks_deleted: usize,
    /// Manifest files deleted.
    pub manifests_deleted: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Chunks kept because a committed manifest references them.
    pub chunks_kept: usize,
}

impl Cache {
    /// Opens (creating if needed) the cache at `dir` and takes its lock, waiting for another
    /// process that holds it.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        for sub in ["chunks", "manifests", "tmp"] {
            fs::create_dir_all(dir.join(sub)).doing(|| format!("cannot create cache {}", dir.display()))?;
        }
        let lock = File::create(dir.join("lock")).doing(|| "cannot create the cache lock file".into())?;
        if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            tracing::warn!(cache = %dir.display(), "the cache is in use by another assetsync process; waiting for it");
            lock.lock().doing(|| "cannot lock the cache".into())?;
        }
        Self::opened(dir, lock)
    }

    /// Opens the existing cache at `dir` for maintenance: fails, creating nothing, when `dir`
    /// is not a cache, and at once when another process (a `pull --follow`) holds it.
    pub fn open_existing(dir: &Path) -> Result<Self, CacheError> {
        if !(dir.join("chunks").is_dir() && dir.join("manifests").is_dir()) {
            return Err("it has no chunks/ and manifests/").doing(|| {
                format!(
                    "{} is not an assetsync cache: check --cache (it is the folder pull used)",
                    dir.display()
                )
            });
        }
        let lock = File::create(dir.join("lock")).doing(|| "cannot create the cache lock file".into())?;
        match lock.try_lock() {
            Ok(()) => Self::opened(dir, lock),
            Err(std::fs::TryLockError::WouldBlock) => Err("another assetsync process holds it").doing(|| {
                format!(
                    "the cache {} is in use (a pull --follow?): stop it, or run this later",
                    dir.display()
                )
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(e).doing(|| "cannot lock the cache".into()),
        }
    }

    /// The cache at `dir`, whose `lock` this process holds.
    fn opened(dir: &Path, lock: File) -> Result<Self, CacheError> {
        let refs = match fs::read(dir.join("refs.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).doing(|| "cache refs.json is corrupt".into())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).doing(|| "cannot read cache refs.json".into()),
        };
        Ok(Cache { dir: dir.to_path_buf(), refs, unpublished: false, _lock: lock })
    }

    /// The assets with a committed version.
    pub fn assets(&self) -> impl Iterator<Item = AssetPath> + '_ {
        self.refs.keys().filter_map(|a| AssetPath::new(a).ok())
    }

    /// The committed manifest of `asset`, if it is present and intact.
    pub fn current(&self, asset: &AssetPath) -> Option<Manifest> {
        self.manifest(self.refs.get(asset.as_str())?)
    }

    /// Committed manifests of other assets (at most `limit`), whose chunks the server may count
    /// as held.
    pub fn others(&self, asset: &AssetPath, limit: usize) -> Vec<Manifest> {
        self.refs
            .iter()
            .filter(|(name, _)| name.as_str() != asset.as_str())
            .filter_map(|(_, v)| self.manifest(v))
            .take(limit)
            .collect()
    }

    fn manifest(&self, version: &VersionId) -> Option<Manifest> {
        read_manifest(&self.dir.join("manifests"), version).map(|(m, _)| m)
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Reads a chunk as stored. It is not hashed here: the rebuilt file's SHA-256 covers it, and
    /// a damaged chunk is then named by the protocol and passed to [`Cache::discard`].
    pub fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        fs::read(self.chunk_path(id)).ok()
    }

    /// Rebuilds the committed file of `manifest` and checks its SHA-256. On failure, returns the
    /// missing or damaged chunks, which are discarded.
    pub fn file(&self, manifest: &Manifest) -> Result<Vec<u8>, Vec<ChunkId>> {
        let mut data = Vec::with_capacity(manifest.len as usize);
        let mut bad = Vec::new();
        for c in &manifest.chunks {
            match self.chunk(&c.id) {
                Some(bytes) if bytes.len() == c.len as usize => data.extend_from_slice(&bytes),
                _ => bad.push(c.id),
            }
        }
        if bad.is_empty() && Hash::of(&data) == manifest.sha256 {
            return Ok(data);
        }
        if bad.is_empty() {
            bad = manifest.damaged_chunks(&data);
        }
        bad.sort_unstable();
        bad.dedup();
        self.discard(&bad);
        Err(bad)
    }

    /// Deletes chunks found damaged, so that the next sync fetches them again.
    pub fn discard(&self, ids: &[ChunkId]) {
        for id in ids {
            let path = self.chunk_path(id);
            if fs::remove_file(&path).is_ok() {
                tracing::warn!(path = %path.display(), "discarded damaged cached chunk");
            }
        }
    }

    /// Stores chunks and the manifest, writes `out` (if given) atomically, then moves the
    /// asset's pointer, durably: the commit point.
    pub fn commit(
        &mut self,
        manifest: &Manifest,
        version: VersionId,
        chunks: &[VerifiedChunk],
        out: Option<(&Path, &[u8])>,
    ) -> Result<(), CacheError> {
        self.stage(manifest, version, chunks, out, true)?;
        self.publish()
    }

    /// [`Cache::commit`] for one file of many (a folder): nothing is flushed to disk, and the
    /// pointer moves in memory until [`Cache::publish`] writes them all at once. A crash before
    /// that leaves the previous versions current; one after it may leave a manifest or output
    /// file unwritten, which reads back as missing or damaged (everything is verified) and is
    /// fetched or written again, as rsync leaves flushing to the system.
    pub fn stage(
        &mut self,
        manifest: &Manifest,
        version: VersionId,
        chunks: &[VerifiedChunk],
        out: Option<(&Path, &[u8])>,
        durable: bool,
    ) -> Result<(), CacheError> {
        self.store_chunks(chunks)?;
        let manifest_path = self.dir.join("manifests").join(version.to_hex());
        self.write_atomic(&manifest_path, &manifest.canonical_bytes(), durable)
            .doing(|| "cannot store manifest".into())?;
        if let Some((path, data)) = out {
            self.write_out(manifest, path, data, durable)?;
        }
        self.refs.insert(manifest.path.as_str().to_owned(), version);
        self.unpublished = true;
        Ok(())
    }

    /// Writes `data`, the verified file of `manifest` (stored), to `path` atomically, flushed to
    /// disk when `durable`. The copy carries the stored manifest's modification time as its own,
    /// so that [`OutCheck::stale`] knows an untouched copy by its metadata alone.
    pub fn write_out(
        &self,
        manifest: &Manifest,
        path: &Path,
        data: &[u8],
        durable: bool,
    ) -> Result<(), CacheError> {
        let stamp = self.manifest_time(&manifest.version());
        write_file(path, data, durable, stamp).doing(|| format!("cannot write {}", path.display()))
    }

    /// What checking copies under `--out` needs of the cache, to do it on another thread.
    pub fn out_check(&self) -> OutCheck {
        OutCheck { manifests: self.dir.join("manifests") }
    }

    /// When the manifest of `version` was stored.
    fn manifest_time(&self, version: &VersionId) -> Option<SystemTime> {
        fs::metadata(self.dir.join("manifests").join(version.to_hex())).and_then(|m| m.modified()).ok()
    }

    /// The committed versions of the assets `folder` covers, sorted by path (from the pointers
    /// alone: no manifest is read).
    pub fn entries_in(&self, folder: &Scope) -> Vec<FolderEntry> {
        self.assets()
            .filter(|a| folder.covers(a))
            .filter_map(|asset| Some(FolderEntry { version: *self.refs.get(asset.as_str())?, asset }))
            .collect()
    }

    /// The committed manifests of `versions` that are present and intact, read on up to four
    /// threads (a folder's thousands of small files each cost an open and a read).
    pub fn manifests(&self, versions: &[VersionId]) -> Vec<Manifest> {
        parallel(versions, |v| self.manifest(v))
    }

    /// Writes the pointers moved by [`Cache::stage`] and [`Cache::remove`] to `refs.json`,
    /// durably, in one step. On failure they stay unpublished, to be written by the next call.
    pub fn publish(&mut self) -> Result<(), CacheError> {
        if !self.unpublished {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&self.refs).expect("refs serialise");
        self.write_atomic(&self.dir.join("refs.json"), &json, true)
            .doing(|| "cannot update cache refs.json".into())?;
        self.unpublished = false;
        Ok(())
    }

    /// Stores verified chunks without committing anything: those of an interrupted transfer,
    /// so the next attempt need not fetch them again (until a GC, which deletes chunks no
    /// committed version uses).
    pub fn store_chunks(&self, chunks: &[VerifiedChunk]) -> Result<(), CacheError> {
        for chunk in chunks {
            let path = self.chunk_path(&chunk.id());
            if !path.exists() {
                let dir = path.parent().expect("has parent");
                fs::create_dir_all(dir).doing(|| format!("cannot create {}", dir.display()))?;
                // Not fsynced: a chunk lost in a crash fails verification on read and is fetched
                // again, so durability here would only cost time.
                self.write_atomic(&path, chunk.bytes(), false).doing(|| "cannot store chunk".into())?;
            }
        }
        Ok(())
    }

    /// Removes `asset` (gone from the server): deletes `out` if given, then drops the asset's
    /// pointer, until [`Cache::publish`] in memory only. Its chunks become garbage for
    /// [`Cache::gc`].
    pub fn remove(&mut self, asset: &AssetPath, out: Option<&Path>) -> Result<(), CacheError> {
        if let Some(path) = out {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).doing(|| format!("cannot delete {}", path.display()));
                }
                _ => {}
            }
        }
        if self.refs.remove(asset.as_str()).is_some() {
            self.unpublished = true;
        }
        Ok(())
    }

    fn write_atomic(&self, path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
        let tmp = self.dir.join("tmp").join(format!("{}.{}", std::process::id(), unique()));
        let result = write_and_rename(&tmp, path, data, durable, None);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes every chunk and manifest that no committed version references.
    pub fn gc(&mut self) -> Result<GcReport, CacheError> {
        let mut live_chunks = HashSet::new();
        let mut live_manifests = HashSet::new();
        for version in self.refs.values() {
            let Some(manifest) = self.manifest(version) else {
                return Err("the cache is damaged")
                    .doing(|| format!("committed manifest {version} is missing; refusing to collect"));
            };
            live_manifests.insert(version.to_hex());
            live_chunks.extend(manifest.chunks.iter().map(|c| c.id.to_hex()));
        }
        self.sweep(&live_manifests, &live_chunks)
            .doing(|| format!("cannot collect garbage in {}", self.dir.display()))
    }

    /// Deletes the manifests and chunks not in `live_*`, and leftovers of interrupted writes.
    fn sweep(&self, live_manifests: &HashSet<String>, live_chunks: &HashSet<String>) -> io::Result<GcReport> {
        let mut report = GcReport::default();
        for entry in fs::read_dir(self.dir.join("manifests"))? {
            let entry = entry?;
            if !live_manifests.contains(entry.file_name().to_string_lossy().as_ref()) {
                report.bytes_freed += entry.metadata()?.len();
                fs::remove_file(entry.path())?;
                report.manifests_deleted += 1;
            }
        }
        for shard in fs::read_dir(self.dir.join("chunks"))? {
            for entry in fs::read_dir(shard?.path())? {
                let entry = entry?;
                if live_chunks.contains(entry.file_name().to_string_lossy().as_ref()) {
                    report.chunks_kept += 1;
                } else {
                    report.bytes_freed += entry.metadata()?.len();
                    fs::remove_file(entry.path())?;
                    report.chunks_deleted += 1;
                }
            }
        }
        // Leftovers of interrupted writes (we hold the lock, so none is in progress).
        for entry in fs::read_dir(self.dir.join("tmp"))? {
            let entry = entry?;
            report.bytes_freed += entry.metadata()?.len();
            fs::remove_file(entry.path())?;
        }
        Ok(report)
    }
}

/// Checks copies under `--out` against the cache's manifests (see [`Cache::out_check`]).
#[derive(Clone, Debug)]
pub struct OutCheck {
    manifests: PathBuf,
}

impl OutCheck {
    /// The files of `held` whose copy under `out` is missing or differs from the committed
    /// version: not the same size and the modification time [`Cache::write_out`] gave it
    /// (rsync's quick check), nor the same SHA-256. Read on up to four threads.
    pub fn stale(&self, held: &[FolderEntry], out: &Path) -> Vec<AssetPath> {
        parallel(held, |entry| {
            let (manifest, stored) = read_manifest(&self.manifests, &entry.version)?;
            let path = out.join(entry.asset.as_str());
            let intact = fs::metadata(&path).is_ok_and(|meta| {
                let untouched = meta.modified().ok().zip(stored).is_some_and(|(a, b)| a == b);
                meta.len() == manifest.len
                    && (untouched || fs::read(&path).is_ok_and(|data| Hash::of(&data) == manifest.sha256))
            });
            (!intact).then(|| entry.asset.clone())
        })
    }
}

/// The manifest of `version` in the folder `dir`, checked against the version (a damaged one is
/// deleted), and when it was stored.
fn read_manifest(dir: &Path, version: &VersionId) -> Option<(Manifest, Option<SystemTime>)> {
    let path = dir.join(version.to_hex());
    let mut file = File::open(&path).ok()?;
    let stored = file.metadata().and_then(|m| m.modified()).ok();
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    match Manifest::decode_canonical(&bytes) {
        Ok(m) if Hash::of(&bytes) == *version => Some((m, stored)),
        _ => {
            tracing::warn!(path = %path.display(), "discarding corrupt cached manifest");
            let _ = fs::remove_file(&path);
            None
        }
    }
}

/// `f` of each of `items` that gives something, on up to four threads when there are many.
fn parallel<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> Option<U> + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if items.len() < 1024 || threads < 2 {
        return items.iter().filter_map(&f).collect();
    }
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().filter_map(f).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|p| p.join().expect("cache reading thread panicked")).collect()
    })
}

/// Writes `data` to `path` through a temporary file in the same directory, so that readers see
/// either the old file or the complete new one; flushed to disk when `durable`, and with the
/// modification time `stamp` if given.
fn write_file(path: &Path, data: &[u8], durable: bool, stamp: Option<SystemTime>) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.assetsync-{}.{}", std::process::id(), unique()));
    let result = write_and_rename(&tmp, path, data, durable, stamp);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_and_rename(
    tmp: &Path,
    path: &Path,
    data: &[u8],
    durable: bool,
    stamp: Option<SystemTime>,
) -> io::Result<()> {
    let mut file = File::create(tmp)?;
    file.write_all(data)?;
    if let Some(stamp) = stamp {
        file.set_modified(stamp)?;
    }
    if durable {
        file.sync_data()?;
    }
    fs::rename(tmp, path)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
