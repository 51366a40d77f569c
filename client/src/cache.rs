//! The native client's on-disk cache, the same model the browser keeps in IndexedDB.
//!
//! ```text
//! DIR/lock         held (flock) by a pull or gc for its whole run
//! DIR/cache.redb   one database (redb), four tables:
//!                    chunks     chunk id -> bytes
//!                    manifests  version -> when stored (u64 nanoseconds) ++ canonical manifest
//!                    refs       asset path -> version: the committed versions
//!                    shapes     folder -> the shape the server last sent for it (JSON)
//! ```
//!
//! Writes go to memory first and reach the database in one transaction at
//! [`Cache::publish`], which is the commit point: a crash before it leaves the previous versions
//! current, and a folder's files switch together. (Staged chunks and manifests reach the
//! database earlier, every 4 MiB, on a thread of their own and without moving a pointer, so
//! that a large folder needs bounded memory and its commit has little left to write.)
//! Everything read back is verified against its hash; a damaged chunk is deleted and reported
//! as missing.
//!
//! A cache written by earlier releases (one file per chunk and per manifest, `refs.json`) is
//! moved into the database on first open, committed versions only, and its files removed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};

use crate::error::{CacheError, Doing};
use assetsync_protocol::shape::Shape;
use assetsync_protocol::{AssetPath, ChunkId, FolderEntry, Hash, Manifest, Scope, VerifiedChunk, VersionId};

const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");
const REFS: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("refs");
/// The shape each pulled folder had on the server when last received (its JSON), by folder.
const SHAPES: TableDefinition<&str, &[u8]> = TableDefinition::new("shapes");

/// The database's file in the cache directory.
const DB_FILE: &str = "cache.redb";
/// Memory for the database's page cache.
const DB_CACHE_BYTES: usize = 32 << 20;
/// Staged bytes held in memory before they are handed to the write-ahead thread (see
/// [`WriteAhead`]).
const WRITE_AHEAD_BYTES: usize = 4 << 20;

/// An open, locked cache directory.
pub struct Cache {
    dir: PathBuf,
    db: Arc<Database>,
    /// The committed versions, as [`Cache::stage`] and [`Cache::remove`] moved them.
    refs: BTreeMap<String, VersionId>,
    /// Pointers moved since the last [`Cache::publish`].
    moved: BTreeSet<String>,
    /// Staged chunks and manifests not yet handed to the write-ahead thread.
    pending: Pending,
    /// Staged batches being written to the database ahead of the commit.
    ahead: Option<WriteAhead>,
    /// Copies of staged files under `--out`, being written on a thread of their own.
    out: Option<OutWriter>,
    _lock: File,
}

#[derive(Clone, Default)]
struct Pending {
    chunks: HashMap<ChunkId, Vec<u8>>,
    /// Manifest records (see [`record`]).
    manifests: HashMap<VersionId, Vec<u8>>,
    bytes: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.manifests.is_empty()
    }

    fn extend(&mut self, other: Pending) {
        self.chunks.extend(other.chunks);
        self.manifests.extend(other.manifests);
        self.bytes += other.bytes;
    }
}

/// What [`Cache::gc`] freed.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Chunks deleted.
    pub chunks_deleted: usize,
    /// Manifests deleted.
    pub manifests_deleted: usize,
    /// Bytes of chunks and manifests deleted.
    pub bytes_freed: u64,
    /// Chunks kept because a committed manifest references them.
    pub chunks_kept: usize,
}

impl Cache {
    /// Opens (creating if needed) the cache at `dir` and takes its lock, waiting for another
    /// process that holds it.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        fs::create_dir_all(dir).doing(|| format!("cannot create cache {}", dir.display()))?;
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
        let legacy = dir.join("chunks").is_dir() && dir.join("manifests").is_dir();
        if !(dir.join(DB_FILE).is_file() || legacy) {
            return Err(format!("it has no {DB_FILE}")).doing(|| {
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
        let path = dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(DB_CACHE_BYTES)
            .create(&path)
            .doing(|| format!("cannot open the cache database {} (if it is damaged, delete it: the next pull starts a new cache)", path.display()))?;
        upgrade_legacy(dir, &db)?;
        let refs = read_refs(&db).doing(|| format!("cannot read the cache database {}", path.display()))?;
        let pending = Pending::default();
        Ok(Cache {
            dir: dir.to_path_buf(),
            db: Arc::new(db),
            refs,
            moved: BTreeSet::new(),
            pending,
            ahead: None,
            out: None,
            _lock: lock,
        })
    }

    /// The assets with a committed version.
    pub fn assets(&self) -> impl Iterator<Item = AssetPath> + '_ {
        self.refs.keys().filter_map(|a| AssetPath::new(a).ok())
    }

    /// The committed manifest of `asset`, if it is present and intact.
    pub fn current(&self, asset: &AssetPath) -> Option<Manifest> {
        self.manifests(&[*self.refs.get(asset.as_str())?]).pop()
    }

    /// Committed manifests of other assets (at most `limit`), whose chunks the server may count
    /// as held.
    pub fn others(&self, asset: &AssetPath, limit: usize) -> Vec<Manifest> {
        let read = self.snapshot();
        self.refs
            .iter()
            .filter(|(name, _)| name.as_str() != asset.as_str())
            .filter_map(|(_, v)| self.stored(&read, v).map(|(m, _)| m))
            .take(limit)
            .collect()
    }

    /// The manifests of `versions` that are present and intact, in order.
    pub fn manifests(&self, versions: &[VersionId]) -> Vec<Manifest> {
        let read = self.snapshot();
        versions.iter().filter_map(|v| self.stored(&read, v).map(|(m, _)| m)).collect()
    }

    /// What a read sees of staged and stored data: see [`Snapshot`].
    fn snapshot(&self) -> Snapshot {
        let Some(ahead) = &self.ahead else {
            return Snapshot { tx: self.db.begin_read().ok(), unwritten: Vec::new() };
        };
        // Begun while the list cannot change: a batch that left it is in the transaction.
        let unwritten = ahead.unwritten.lock().expect("poisoned");
        Snapshot { tx: self.db.begin_read().ok(), unwritten: unwritten.clone() }
    }

    /// What is staged and not in the database as `read` sees it: pending, then unwritten.
    fn staged<'a>(&'a self, read: &'a Snapshot) -> impl Iterator<Item = &'a Pending> {
        std::iter::once(&self.pending).chain(read.unwritten.iter().map(|b| &**b))
    }

    /// The manifest of `version`, pending or as `read` sees it, if present and intact, and
    /// when it was stored.
    fn stored(&self, read: &Snapshot, version: &VersionId) -> Option<(Manifest, SystemTime)> {
        match self.staged(read).find_map(|p| p.manifests.get(version)) {
            Some(record) => read_record(version, record),
            None => manifest_in(read.tx.as_ref()?, version),
        }
    }

    /// Reads chunks as stored, leaving out those missing. They are not hashed here: the rebuilt
    /// file's SHA-256 covers them, and a damaged chunk is then named by the protocol and passed
    /// to [`Cache::discard`].
    pub fn chunks(&self, ids: impl IntoIterator<Item = ChunkId>) -> Vec<(ChunkId, Vec<u8>)> {
        let read = self.snapshot();
        let table = read.tx.as_ref().and_then(|tx| tx.open_table(CHUNKS).ok());
        let mut found = Vec::new();
        for id in ids {
            self.with_chunk(&read, table.as_ref(), &id, |bytes| found.push((id, bytes.to_vec())));
        }
        found
    }

    /// Calls `f` with the bytes of chunk `id`, if it is pending or as `read` sees it (`table`,
    /// its chunks).
    fn with_chunk(
        &self,
        read: &Snapshot,
        table: Option<&ReadOnlyTable<&[u8; 32], &[u8]>>,
        id: &ChunkId,
        f: impl FnOnce(&[u8]),
    ) {
        if let Some(bytes) = self.staged(read).find_map(|p| p.chunks.get(id)) {
            f(bytes);
        } else if let Some(stored) = table.and_then(|t| t.get(&id.0).ok().flatten()) {
            f(stored.value());
        }
    }

    /// Rebuilds the committed file of `manifest` and checks its SHA-256. On failure, returns the
    /// missing or damaged chunks, which are discarded.
    pub fn file(&self, manifest: &Manifest) -> Result<Vec<u8>, Vec<ChunkId>> {
        let mut data = Vec::with_capacity(manifest.len as usize);
        let mut bad = Vec::new();
        let read = self.snapshot();
        let table = read.tx.as_ref().and_then(|tx| tx.open_table(CHUNKS).ok());
        for c in &manifest.chunks {
            let mut intact = false;
            self.with_chunk(&read, table.as_ref(), &c.id, |bytes| {
                intact = bytes.len() == c.len as usize;
                if intact {
                    data.extend_from_slice(bytes);
                }
            });
            if !intact {
                bad.push(c.id);
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
        let removed = write(&self.db, Durability::Immediate, |tx| {
            let mut chunks = tx.open_table(CHUNKS)?;
            for id in ids {
                if chunks.remove(&id.0)?.is_some() {
                    tracing::warn!(chunk = %id, "discarded damaged cached chunk");
                }
            }
            Ok(())
        });
        if let Err(e) = removed {
            tracing::warn!(error = %e, "cannot discard damaged cached chunks");
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

    /// [`Cache::commit`] for one file of many (a folder): the chunks, manifest and pointer are
    /// held until [`Cache::publish`] commits them all in one transaction, and `out` is flushed
    /// to disk only when `durable`. A crash before the publish leaves the previous versions
    /// current; one after it may leave an output file unwritten, which reads back as missing or
    /// damaged and is written again, as rsync leaves flushing to the system.
    pub fn stage(
        &mut self,
        manifest: &Manifest,
        version: VersionId,
        chunks: &[VerifiedChunk],
        out: Option<(&Path, &[u8])>,
        durable: bool,
    ) -> Result<(), CacheError> {
        self.store_chunks(chunks)?;
        let stored = SystemTime::now();
        let record = record(stored, &manifest.canonical_bytes());
        self.pending.bytes += record.len();
        self.pending.manifests.insert(version, record);
        match out {
            // A folder's copies are written beside the sync, and waited for at the publish.
            Some((path, data)) if !durable => {
                self.out.get_or_insert_with(OutWriter::start).write(path, data, stored)?;
            }
            Some((path, data)) => {
                write_file(path, data, durable, Some(stored))
                    .doing(|| format!("cannot write {}", path.display()))?;
            }
            None => {}
        }
        self.refs.insert(manifest.path.as_str().to_owned(), version);
        self.moved.insert(manifest.path.as_str().to_owned());
        Ok(())
    }

    /// Writes `data`, the verified file of `manifest` (committed), to `path` atomically, flushed
    /// to disk when `durable`. The copy carries the time the manifest was stored as its
    /// modification time, so that [`OutCheck::stale`] knows an untouched copy by its metadata.
    pub fn write_out(
        &self,
        manifest: &Manifest,
        path: &Path,
        data: &[u8],
        durable: bool,
    ) -> Result<(), CacheError> {
        let stored = self.stored(&self.snapshot(), &manifest.version()).map(|(_, t)| t);
        write_file(path, data, durable, stored).doing(|| format!("cannot write {}", path.display()))
    }

    /// The shape `folder` had on the server when a pull last received it (see
    /// [`Cache::keep_shape`]); `None` if none was kept, or it cannot be read.
    pub fn shape(&self, folder: &Scope) -> Option<Shape> {
        let tx = self.db.begin_read().ok()?;
        let table = tx.open_table(SHAPES).ok()?;
        let json = table.get(folder.to_string().as_str()).ok()??;
        serde_json::from_slice(json.value()).ok()
    }

    /// Keeps the shape the server sent for `folder`: the next pull names it, and the server
    /// sends the shape again only if it changed.
    pub fn keep_shape(&mut self, folder: &Scope, shape: &Shape) -> Result<(), CacheError> {
        let json = serde_json::to_vec(shape).expect("shapes serialise");
        write(&self.db, Durability::Immediate, |tx| {
            tx.open_table(SHAPES)?.insert(folder.to_string().as_str(), json.as_slice())?;
            Ok(())
        })
        .doing(|| format!("cannot write to the cache {}", self.dir.display()))
    }

    /// What checking copies under `--out` needs of the cache, to do it on another thread.
    pub fn out_check(&self) -> OutCheck {
        OutCheck { db: self.db.clone() }
    }

    /// The committed versions of the assets `folder` covers, sorted by path (from the pointers
    /// alone: no manifest is read).
    pub fn entries_in(&self, folder: &Scope) -> Vec<FolderEntry> {
        self.assets()
            .filter(|a| folder.covers(a))
            .filter_map(|asset| Some(FolderEntry { version: *self.refs.get(asset.as_str())?, asset }))
            .collect()
    }

    /// Commits what [`Cache::stage`], [`Cache::store_chunks`] and [`Cache::remove`] did, durably,
    /// in one transaction. On failure it all stays pending, for the next call.
    /// A copy under `--out` that could not be written is reported after the commit, which it
    /// does not hold back: the next pull finds that copy stale and writes it again.
    pub fn publish(&mut self) -> Result<(), CacheError> {
        let copies = self.out.take().map_or(Ok(()), OutWriter::finish);
        self.commit_pending()?;
        copies
    }

    fn commit_pending(&mut self) -> Result<(), CacheError> {
        // What the write-ahead thread wrote is made durable by this commit; what it could not
        // write, this commit writes.
        if let Some(ahead) = self.ahead.take() {
            for batch in ahead.finish() {
                self.pending.extend(batch);
            }
        }
        if self.moved.is_empty() && self.pending.is_empty() {
            return Ok(());
        }
        let (pending, refs, moved) = (&self.pending, &self.refs, &self.moved);
        write(&self.db, Durability::Immediate, |tx| {
            write_pending(tx, pending)?;
            let mut table = tx.open_table(REFS)?;
            for asset in moved {
                match refs.get(asset) {
                    Some(version) => table.insert(asset.as_str(), &version.0)?,
                    None => table.remove(asset.as_str())?,
                };
            }
            Ok(())
        })
        .doing(|| format!("cannot commit to the cache {}", self.dir.display()))?;
        self.pending = Pending::default();
        self.moved.clear();
        Ok(())
    }

    /// Stores verified chunks without committing anything: those of an interrupted transfer,
    /// so the next attempt need not fetch them again (until a GC, which deletes chunks no
    /// committed version uses). Past [`WRITE_AHEAD_BYTES`] held in memory, what is pending is
    /// written to the database by the write-ahead thread (without moving a pointer).
    pub fn store_chunks(&mut self, chunks: &[VerifiedChunk]) -> Result<(), CacheError> {
        for chunk in chunks {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.pending.chunks.entry(chunk.id()) {
                self.pending.bytes += chunk.bytes().len();
                slot.insert(chunk.bytes().to_vec());
            }
        }
        if self.pending.bytes > WRITE_AHEAD_BYTES {
            let batch = std::mem::take(&mut self.pending);
            let db = &self.db;
            self.ahead
                .get_or_insert_with(|| WriteAhead::start(db.clone()))
                .hand(batch)
                .doing(|| format!("cannot store chunks in the cache {}", self.dir.display()))?;
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
            self.moved.insert(asset.as_str().to_owned());
        }
        Ok(())
    }

    /// Deletes every chunk and manifest that no committed version references, and gives the
    /// space back to the file system.
    pub fn gc(&mut self) -> Result<GcReport, CacheError> {
        self.publish()?;
        let read = self.snapshot();
        let (mut live_manifests, mut live_chunks) = (HashSet::new(), HashSet::new());
        for version in self.refs.values() {
            let Some((manifest, _)) = self.stored(&read, version) else {
                return Err("the cache is damaged")
                    .doing(|| format!("committed manifest {version} is missing; refusing to collect"));
            };
            live_manifests.insert(version.0);
            live_chunks.extend(manifest.chunks.iter().map(|c| c.id.0));
        }
        // Compacting, below, needs every read transaction closed.
        drop(read);
        let mut report = GcReport::default();
        write(&self.db, Durability::Immediate, |tx| {
            tx.open_table(MANIFESTS)?.retain(|version, record| {
                let live = live_manifests.contains(version);
                if !live {
                    report.manifests_deleted += 1;
                    report.bytes_freed += record.len() as u64;
                }
                live
            })?;
            tx.open_table(CHUNKS)?.retain(|id, bytes| {
                let live = live_chunks.contains(id);
                match live {
                    true => report.chunks_kept += 1,
                    false => {
                        report.chunks_deleted += 1;
                        report.bytes_freed += bytes.len() as u64;
                    }
                }
                live
            })?;
            Ok(())
        })
        .doing(|| format!("cannot collect garbage in {}", self.dir.display()))?;
        // Gives the freed pages back (the file does not shrink otherwise). Only this handle is
        // left: the checks of `--out` are done before a gc runs.
        if let Some(db) = Arc::get_mut(&mut self.db) {
            db.compact().doing(|| format!("cannot compact {}", self.dir.join(DB_FILE).display()))?;
        }
        Ok(report)
    }
}

/// Checks copies under `--out` against the cache's manifests (see [`Cache::out_check`]).
#[derive(Clone)]
pub struct OutCheck {
    db: Arc<Database>,
}

/// What [`OutCheck::check`] found of the copies under `--out`.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Missing, or not the committed version.
    pub stale: Vec<AssetPath>,
    /// Executable (a pulled folder's copies take the server's modes).
    pub executable: Vec<AssetPath>,
}

impl OutCheck {
    /// Which files of `held` have a copy under `out` that is missing or differs from the
    /// committed version (not the same size and the modification time [`Cache::write_out`]
    /// gave it, rsync's quick check, nor the same SHA-256), and which copies are executable.
    /// Read on up to four threads.
    pub fn check(&self, held: &[FolderEntry], out: &Path) -> Outputs {
        let found = parallel(held, |part| {
            let Some(table) = self.db.begin_read().ok().and_then(|tx| tx.open_table(MANIFESTS).ok()) else {
                return part.iter().map(|e| (e.asset.clone(), false, false)).collect();
            };
            let look = |entry: &FolderEntry| {
                let record = table.get(&entry.version.0).ok().flatten();
                let Some((manifest, stored)) = record.and_then(|r| read_record(&entry.version, r.value()))
                else {
                    return (false, false);
                };
                let path = out.join(entry.asset.as_str());
                let Ok(meta) = fs::metadata(&path) else { return (false, false) };
                let untouched = meta.modified().is_ok_and(|t| t == stored);
                let intact = meta.len() == manifest.len
                    && (untouched || fs::read(&path).is_ok_and(|data| Hash::of(&data) == manifest.sha256));
                (intact, executable(&meta))
            };
            part.iter()
                .map(|e| (e.asset.clone(), look(e)))
                .filter(|(_, (intact, exec))| !intact || *exec)
                .map(|(asset, (intact, exec))| (asset, !intact, exec))
                .collect()
        });
        let mut outputs = Outputs::default();
        for (asset, stale, exec) in found {
            if exec {
                outputs.executable.push(asset.clone());
            }
            if stale {
                outputs.stale.push(asset);
            }
        }
        outputs
    }
}

#[cfg(unix)]
fn executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_: &fs::Metadata) -> bool {
    false
}

/// A manifest as stored: when (nanoseconds since the epoch, little-endian), then its canonical
/// encoding.
fn record(stored: SystemTime, canonical: &[u8]) -> Vec<u8> {
    let nanos = stored.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    [&nanos.to_le_bytes()[..], canonical].concat()
}

/// Reads [`record`], checking the manifest against its version.
fn read_record(version: &VersionId, record: &[u8]) -> Option<(Manifest, SystemTime)> {
    let (nanos, canonical) = record.split_first_chunk::<8>()?;
    let manifest = Manifest::decode_canonical(canonical).ok().filter(|_| Hash::of(canonical) == *version);
    if manifest.is_none() {
        tracing::warn!(%version, "cached manifest is damaged; it will be fetched again");
    }
    Some((manifest?, UNIX_EPOCH + Duration::from_nanos(u64::from_le_bytes(*nanos))))
}

/// The manifest of `version` in the database, if present and intact, and when it was stored.
fn manifest_in(tx: &ReadTransaction, version: &VersionId) -> Option<(Manifest, SystemTime)> {
    let table = tx.open_table(MANIFESTS).ok()?;
    let record = table.get(&version.0).ok()??;
    read_record(version, record.value())
}

fn read_refs(db: &Database) -> Result<BTreeMap<String, VersionId>, redb::Error> {
    let tx = db.begin_read()?;
    let table = match tx.open_table(REFS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut refs = BTreeMap::new();
    for entry in table.iter()? {
        let (asset, version) = entry?;
        refs.insert(asset.value().to_owned(), Hash(*version.value()));
    }
    Ok(refs)
}

/// Runs `f` in one write transaction and commits it with `durability`.
fn write(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability)?;
    f(&tx)?;
    tx.commit()?;
    Ok(())
}

fn write_pending(tx: &redb::WriteTransaction, pending: &Pending) -> Result<(), redb::Error> {
    let mut chunks = tx.open_table(CHUNKS)?;
    for (id, bytes) in &pending.chunks {
        chunks.insert(&id.0, bytes.as_slice())?;
    }
    let mut manifests = tx.open_table(MANIFESTS)?;
    for (version, record) in &pending.manifests {
        manifests.insert(&version.0, record.as_slice())?;
    }
    Ok(())
}

/// Moves a cache written by earlier releases (`chunks/ab/<id>`, `manifests/<version>`,
/// `refs.json`, `tmp/`) into `db`: its committed versions, their manifests and the chunks found
/// (a missing or damaged one is fetched again by the next sync, as before). Then deletes the old
/// files, `refs.json` last: a crash halfway leaves it to be read again, and what the database
/// already holds stays. Nothing is deleted from a folder without `refs.json`, which may not be
/// a cache of ours at all.
fn upgrade_legacy(dir: &Path, db: &Database) -> Result<(), CacheError> {
    let refs_file = dir.join("refs.json");
    let bytes = match fs::read(&refs_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).doing(|| "cannot read cache refs.json".into()),
    };
    let refs: BTreeMap<String, VersionId> =
        serde_json::from_slice(&bytes).doing(|| "cache refs.json is corrupt".into())?;
    let (mut versions, mut chunks) = (0, 0);
    write(db, Durability::Immediate, |tx| {
        let (mut chunk_table, mut manifest_table) = (tx.open_table(CHUNKS)?, tx.open_table(MANIFESTS)?);
        let mut ref_table = tx.open_table(REFS)?;
        for (asset, version) in &refs {
            let path = dir.join("manifests").join(version.to_hex());
            let Ok(canonical) = fs::read(&path) else { continue };
            let Ok(manifest) = Manifest::decode_canonical(&canonical) else { continue };
            let stored = fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
            manifest_table.insert(&version.0, record(stored, &canonical).as_slice())?;
            ref_table.insert(asset.as_str(), &version.0)?;
            versions += 1;
            for c in &manifest.chunks {
                let hex = c.id.to_hex();
                if let Ok(bytes) = fs::read(dir.join("chunks").join(&hex[..2]).join(&hex)) {
                    chunk_table.insert(&c.id.0, bytes.as_slice())?;
                    chunks += 1;
                }
            }
        }
        Ok(())
    })
    .doing(|| format!("cannot move the cache {} to its new layout", dir.display()))?;
    for old in ["chunks", "manifests", "tmp"] {
        let path = dir.join(old);
        if path.is_dir() {
            fs::remove_dir_all(&path).doing(|| format!("cannot delete {}", path.display()))?;
        }
    }
    fs::remove_file(&refs_file).doing(|| format!("cannot delete {}", refs_file.display()))?;
    tracing::info!(cache = %dir.display(), versions, chunks, "cache moved to its new layout");
    Ok(())
}

/// `f` of `items`, split in parts on up to four threads when there are many.
fn parallel<T: Sync, U: Send>(items: &[T], f: impl Fn(&[T]) -> Vec<U> + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if items.len() < 1024 || threads < 2 {
        return f(items);
    }
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> =
            items.chunks(items.len().div_ceil(threads)).map(|part| s.spawn(move || f(part))).collect();
        parts.into_iter().flat_map(|p| p.join().expect("cache reading thread panicked")).collect()
    })
}

/// Writes `data` to `path` through a temporary file in the same directory, so that readers see
/// either the old file or the complete new one; flushed to disk when `durable`, and with the
/// modification time `stamp` if given.
fn write_file(path: &Path, data: &[u8], durable: bool, stamp: Option<SystemTime>) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.assetsync-{}.{}", std::process::id(), unique()));
    let result = match write_and_rename(&tmp, path, data, durable, stamp) {
        // The folder is made when missing, rather than checked for every file.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).and_then(|()| write_and_rename(&tmp, path, data, durable, stamp))
        }
        result => result,
    };
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Drop for Cache {
    /// Copies still queued are written, not left as temporary files; the write-ahead thread
    /// ends with the cache.
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            let _ = out.finish();
        }
        if let Some(ahead) = self.ahead.take() {
            ahead.finish();
        }
    }
}

/// What a read sees of the cache: the database as of one read transaction, and the batches the
/// write-ahead thread had not written when it began (together they hold every batch handed to
/// it; the cache's own pending batch is read besides).
struct Snapshot {
    tx: Option<ReadTransaction>,
    unwritten: Vec<Arc<Pending>>,
}

/// Writes staged chunks and manifests to the database ahead of the commit that makes them
/// durable and points at them, a batch at a time on a thread of its own, so that committing a
/// folder of thousands of files leaves little to write (the sync goes on meanwhile). A batch
/// stays readable from memory until its transaction has committed.
struct WriteAhead {
    /// Batches handed over and not yet written, oldest first; a batch whose write failed stays
    /// (the commit writes it again).
    unwritten: Arc<Mutex<Vec<Arc<Pending>>>>,
    jobs: std::sync::mpsc::SyncSender<Arc<Pending>>,
    /// The first write that failed, once one has.
    failed: Arc<Mutex<Option<redb::Error>>>,
    thread: std::thread::JoinHandle<()>,
}

impl WriteAhead {
    fn start(db: Arc<Database>) -> Self {
        // One batch waits while another is written: the sync is held back beyond that.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Arc<Pending>>(1);
        let unwritten: Arc<Mutex<Vec<Arc<Pending>>>> = Arc::default();
        let failed: Arc<Mutex<Option<redb::Error>>> = Arc::default();
        let (list, first) = (unwritten.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            for batch in queue {
                // Not durable: until the commit that makes it so, nothing points at it.
                match write(&db, Durability::None, |tx| write_pending(tx, &batch)) {
                    Ok(()) => list.lock().expect("poisoned").retain(|b| !Arc::ptr_eq(b, &batch)),
                    Err(e) => {
                        first.lock().expect("poisoned").get_or_insert(e);
                    }
                }
            }
        });
        WriteAhead { unwritten, jobs, failed, thread }
    }

    /// Hands `batch` over; an error if an earlier write failed (a full disk stops the sync
    /// rather than every batch after it failing).
    fn hand(&self, batch: Pending) -> Result<(), redb::Error> {
        let batch = Arc::new(batch);
        self.unwritten.lock().expect("poisoned").push(batch.clone());
        if let Some(e) = self.failed.lock().expect("poisoned").take() {
            return Err(e);
        }
        // The thread ends only once the queue is closed, in `finish`.
        let _ = self.jobs.send(batch);
        Ok(())
    }

    /// Waits for the batches handed over; returns those not written.
    fn finish(self) -> Vec<Pending> {
        drop(self.jobs);
        self.thread.join().expect("the cache's write-ahead thread panicked");
        let unwritten = std::mem::take(&mut *self.unwritten.lock().expect("poisoned"));
        unwritten.into_iter().map(|b| Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone())).collect()
    }
}

/// Writes copies under `--out` on a thread of its own, a few files ahead of it at most.
struct OutWriter {
    jobs: std::sync::mpsc::SyncSender<(PathBuf, Vec<u8>, SystemTime)>,
    /// The first copy that failed, once one has.
    failed: Arc<std::sync::Mutex<Option<CacheError>>>,
    thread: std::thread::JoinHandle<()>,
}

impl OutWriter {
    /// Files queued before [`OutWriter::write`] waits.
    const QUEUE: usize = 16;

    fn start() -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(PathBuf, Vec<u8>, SystemTime)>(Self::QUEUE);
        let failed = Arc::new(std::sync::Mutex::new(None));
        let first = failed.clone();
        let thread = std::thread::spawn(move || {
            for (path, data, stamp) in queue {
                if let Err(e) = write_file(&path, &data, false, Some(stamp)) {
                    let error =
                        CacheError { what: format!("cannot write {}", path.display()), cause: e.into() };
                    first.lock().expect("poisoned").get_or_insert(error);
                }
            }
        });
        OutWriter { jobs, failed, thread }
    }

    /// Queues a copy of `data` for `path`; an error if an earlier copy failed (a full disk stops
    /// the sync instead of failing for every file after it).
    fn write(&self, path: &Path, data: &[u8], stamp: SystemTime) -> Result<(), CacheError> {
        if let Some(e) = self.failed.lock().expect("poisoned").take() {
            return Err(e);
        }
        // The thread ends only once the queue is closed, here, in `finish`.
        let _ = self.jobs.send((path.to_owned(), data.to_vec(), stamp));
        Ok(())
    }

    /// Waits for the copies queued; the first that failed, if any.
    fn finish(self) -> Result<(), CacheError> {
        drop(self.jobs);
        self.thread.join().expect("the --out writer panicked");
        self.failed.lock().expect("poisoned").take().map_or(Ok(()), Err)
    }
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
    // A replaced file keeps its mode (an executable stays one).
    if let Ok(old) = fs::metadata(path) {
        file.set_permissions(old.permissions())?;
    }
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
