//! The version store: the versions the server has served, on disk, so that a restart or a deploy
//! still answers returning clients at patch level, and so that old versions' bytes need not stay
//! in memory.
//!
//! One [redb] database (`store.redb` in the store folder) holds each version's manifest (with a
//! sequence number: higher is newer) and the bytes of every chunk those manifests name, stored
//! once however many versions share it. redb's transactions are atomic and crash-safe (a
//! `kill -9` at any moment leaves the last committed state), and it refuses a second process
//! writing the same file, which is how two servers pointed at one store are told apart.
//!
//! What to keep and what to drop is the index's decision ([`crate::index`]); the store does what
//! it is told. Writes are queued to one thread, which commits everything queued so far in one
//! transaction: a build folder's thousands of new versions cost one `fsync`, not one each, and
//! no request waits for the disk. A version's bytes are read back (for a compression prefix) on
//! the caller's thread, and checked against the manifest's SHA-256 before they are used.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use assetsync_protocol::{ChunkId, Hash, Manifest, VersionId};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Version id -> sequence number (8 bytes, little-endian) and the manifest's canonical bytes.
const VERSIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("versions");
/// Chunk id -> chunk bytes.
const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
/// `"format"` -> [`FORMAT`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;
/// redb's page cache. The data it caches is also read by the kernel's, so a small one keeps the
/// server's memory bounded by what it serves, not by the store's size.
const CACHE_BYTES: usize = 32 << 20;
/// Queued bytes committed in one transaction at most.
const BATCH_BYTES: usize = 64 << 20;

/// Why the store cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has it open.
    #[error("the version store {0} is in use by another assetsync server: give each server its own --store")]
    InUse(PathBuf),
    /// A newer assetsync wrote it.
    #[error(
        "the version store {0} was written by a newer assetsync (format {1}): upgrade, or pass another --store"
    )]
    Format(PathBuf, u64),
    /// Stored bytes do not match their manifest.
    #[error("version {0} is damaged in the store")]
    Damaged(String),
    /// redb or the file system failed.
    #[error("version store {path}: {source}")]
    Db {
        /// The store folder.
        path: PathBuf,
        /// The cause.
        source: redb::Error,
    },
}

/// A version found in the store when it was opened.
pub struct Stored {
    /// Its order of arrival: higher is newer.
    pub seq: u64,
    /// Its manifest (its version id checked).
    pub manifest: Manifest,
}

/// What the writer thread is told.
enum Op {
    /// Keep a version and whatever chunks of it the store lacks (`data` is the whole file).
    Put { seq: u64, manifest: Arc<Manifest>, data: Bytes },
    /// Drop a version and the chunks that no kept version names any more.
    Forget { version: VersionId, chunks: Vec<ChunkId> },
    /// Say when everything queued before is committed (or failed).
    Flush(mpsc::Sender<()>),
}

/// An open store. See the module documentation.
pub struct Store {
    db: Arc<Database>,
    dir: PathBuf,
    queue: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and returns what it holds, oldest first. Entries
    /// that do not decode, or whose manifest does not hash to their version id, are dropped.
    /// `stored` is told each batch of versions once it is on disk; a failed write is logged, and
    /// those versions are never reported.
    pub fn open(
        dir: &Path,
        stored: impl Fn(&[VersionId]) + Send + 'static,
    ) -> Result<(Store, Vec<Stored>), StoreError> {
        let db_err = |source: redb::Error| StoreError::Db { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| db_err(e.into()))?;
        let db =
            Database::builder().set_cache_size(CACHE_BYTES).create(dir.join("store.redb")).map_err(|e| {
                match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(dir.to_path_buf()),
                    e => db_err(e.into()),
                }
            })?;
        let (found, damaged) = load(&db).map_err(db_err)?;
        if let Some(format) = found.format.filter(|&f| f > FORMAT) {
            return Err(StoreError::Format(dir.to_path_buf(), format));
        }
        let db = Arc::new(db);
        let (queue, ops) = mpsc::channel();
        let writer = {
            let (db, dir) = (db.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name("assetsync-store".into())
                .spawn(move || write_loop(&db, &dir, &ops, &stored))
                .map_err(|e| db_err(e.into()))?
        };
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            queue: Mutex::new(Some(queue)),
            writer: Mutex::new(Some(writer)),
        };
        for version in damaged {
            tracing::warn!(store = %dir.display(), version = %version.to_hex(), "dropping an undecodable version");
            store.forget(version, Vec::new());
        }
        Ok((store, found.versions))
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `manifest`'s version, `data` being its bytes, with sequence number `seq`. A version
    /// already stored only takes the new number.
    pub fn put(&self, seq: u64, manifest: Arc<Manifest>, data: Bytes) {
        self.send(Op::Put { seq, manifest, data });
    }

    /// Queues the removal of `version`, and of `chunks`: those only it named.
    pub fn forget(&self, version: VersionId, chunks: Vec<ChunkId>) {
        self.send(Op::Forget { version, chunks });
    }

    /// Waits until everything queued so far is committed (or failed). Blocking.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        self.send(Op::Flush(done));
        let _ = wait.recv();
    }

    fn send(&self, op: Op) {
        if let Some(queue) = self.queue.lock().expect("poisoned").as_ref() {
            // The writer only stops once the queue is closed.
            let _ = queue.send(op);
        }
    }

    /// The bytes of `manifest`'s version, rebuilt from stored chunks and checked. `Ok(None)` if
    /// the store lacks one of them (never stored, or not yet written). Blocking.
    pub fn read(&self, manifest: &Manifest) -> Result<Option<Vec<u8>>, StoreError> {
        let db_err = |source: redb::Error| StoreError::Db { path: self.dir.clone(), source };
        let tx = self.db.begin_read().map_err(|e| db_err(e.into()))?;
        let chunks = match tx.open_table(CHUNKS) {
            Ok(chunks) => chunks,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e.into())),
        };
        let mut data = Vec::with_capacity(manifest.len as usize);
        for chunk in &manifest.chunks {
            match chunks.get(&chunk.id.0).map_err(|e| db_err(e.into()))? {
                Some(bytes) => data.extend_from_slice(bytes.value()),
                None => return Ok(None),
            }
        }
        if Hash::of(&data) != manifest.sha256 {
            return Err(StoreError::Damaged(manifest.version().to_hex()));
        }
        Ok(Some(data))
    }

    /// Commits what is queued and stops the writer. Blocking.
    pub fn close(&self) {
        self.queue.lock().expect("poisoned").take();
        if let Some(writer) = self.writer.lock().expect("poisoned").take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

#[derive(Default)]
struct Found {
    format: Option<u64>,
    versions: Vec<Stored>,
}

/// Reads every stored manifest. Returns them oldest first, and the ids of entries to drop.
fn load(db: &Database) -> Result<(Found, Vec<VersionId>), redb::Error> {
    let tx = db.begin_read()?;
    let mut found = Found::default();
    match tx.open_table(META) {
        Ok(meta) => found.format = meta.get("format")?.map(|f| f.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
        Err(e) => return Err(e.into()),
    }
    let mut damaged = Vec::new();
    for entry in tx.open_table(VERSIONS)?.iter()? {
        let (key, value) = entry?;
        let version = Hash(*key.value());
        let value = value.value();
        let decoded = value
            .split_first_chunk::<8>()
            .and_then(|(seq, bytes)| {
                Some((u64::from_le_bytes(*seq), Manifest::decode_canonical(bytes).ok()?))
            })
            .filter(|(_, m)| m.version() == version);
        match decoded {
            Some((seq, manifest)) => found.versions.push(Stored { seq, manifest }),
            None => damaged.push(version),
        }
    }
    found.versions.sort_unstable_by_key(|s| s.seq);
    Ok((found, damaged))
}

/// Commits queued operations in batches until the queue closes.
fn write_loop(db: &Database, dir: &Path, ops: &mpsc::Receiver<Op>, stored: &dyn Fn(&[VersionId])) {
    let mut failing = false;
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        let mut bytes = 0;
        while bytes < BATCH_BYTES {
            let Ok(op) = ops.try_recv() else { break };
            if let Op::Put { data, .. } = &op {
                bytes += data.len();
            }
            batch.push(op);
        }
        match commit(db, &batch) {
            Ok(()) => {
                if failing {
                    tracing::info!(store = %dir.display(), "the version store is written again");
                    failing = false;
                }
                let versions: Vec<VersionId> = batch
                    .iter()
                    .filter_map(|op| match op {
                        Op::Put { manifest, .. } => Some(manifest.version()),
                        _ => None,
                    })
                    .collect();
                stored(&versions);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        store = %dir.display(),
                        error = %e,
                        "cannot write the version store: new versions stay in memory (and are lost on restart) until it can be written"
                    );
                }
                failing = true;
            }
        }
        for op in batch {
            if let Op::Flush(done) = op {
                let _ = done.send(());
            }
        }
    }
}

fn commit(db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        tx.open_table(META)?.insert("format", FORMAT)?;
        let mut versions = tx.open_table(VERSIONS)?;
        let mut chunks = tx.open_table(CHUNKS)?;
        for op in batch {
            match op {
                Op::Put { seq, manifest, data } => {
                    let version = manifest.version();
                    if versions.get(&version.0)?.is_none() {
                        let mut at = 0;
                        for chunk in &manifest.chunks {
                            let end = at + chunk.len as usize;
                            if chunks.get(&chunk.id.0)?.is_none() {
                                chunks.insert(&chunk.id.0, &data[at..end])?;
                            }
                            at = end;
                        }
                    }
                    let mut value = seq.to_le_bytes().to_vec();
                    value.extend_from_slice(&manifest.canonical_bytes());
                    versions.insert(&version.0, value.as_slice())?;
                }
                Op::Forget { version, chunks: gone } => {
                    versions.remove(&version.0)?;
                    for chunk in gone {
                        chunks.remove(&chunk.0)?;
                    }
                }
                Op::Flush(_) => {}
            }
        }
    }
    tx.commit()?;
    Ok(())
}
