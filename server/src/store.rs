//! The version store: the versions the server has served, on disk, so that a restart or a deploy
//! still answers returning clients at patch level, and so that old versions' bytes need not stay
//! in memory.
//!
//! One [redb] database (`store.redb` in the store folder) holds each version's manifest (with a
//! sequence number: higher is newer), the bytes of every chunk those manifests name (stored once
//! however many versions share it), the best-level answers computed (within a budget, the oldest
//! dropped first) and the last folder listings sent. redb's transactions are atomic and crash-safe (a
//! `kill -9` at any moment leaves the last committed state), and it refuses a second process
//! writing the same file, which is how two servers pointed at one store are told apart.
//!
//! What to keep and what to drop is the index's decision ([`crate::index`]); the store does what
//! it is told. Writes are queued to one thread, which commits everything queued so far in one
//! transaction: a build folder's thousands of new versions cost one `fsync`, not one each, and
//! no request waits for the disk. A version's bytes are read back (for a compression prefix) on
//! the caller's thread, and checked against the manifest's SHA-256 before they are used.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use assetsync_protocol::{AssetPath, ChunkId, FolderEntry, Hash, Manifest, VersionId, folder_version};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Version id -> sequence number (8 bytes, little-endian) and the manifest's canonical bytes.
const VERSIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("versions");
/// Chunk id -> chunk bytes.
const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
/// [`AnswerKey`] -> when it was kept (microseconds since the Unix epoch, a little-endian `u64`),
/// the SHA-256 of the rest, then an encoded answer ([`crate::encode::Encoded`]).
const ANSWERS: TableDefinition<&[u8; 96], &[u8]> = TableDefinition::new("answers");
/// Folder listing version -> its entries ([`encode_listing`]).
const LISTINGS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("listings");
/// Folder listing version -> sequence number and entry count (two little-endian `u64`s), so that
/// opening the store need not read the listings themselves.
const LISTED: TableDefinition<&[u8; 32], [u64; 2]> = TableDefinition::new("listed");
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
    /// Stored bytes do not match what names them (a version's manifest, an answer's checksum,
    /// a listing's version).
    #[error("{0} is damaged in the store")]
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

/// What identifies a stored answer: the new version, the base version (zeros for none), and the
/// SHA-256 of the manifest positions sent (little-endian `u32`s).
pub type AnswerKey = [u8; 96];

/// The key of the answer that sends `send` of version `new` to a client holding `base`.
pub fn answer_key(base: Option<VersionId>, new: VersionId, send: &[u32]) -> AnswerKey {
    let mut key = [0; 96];
    key[..32].copy_from_slice(&new.0);
    key[32..64].copy_from_slice(&base.map_or([0; 32], |b| b.0));
    let sent: Vec<u8> = send.iter().flat_map(|i| i.to_le_bytes()).collect();
    key[64..].copy_from_slice(&Hash::of(&sent).0);
    key
}

/// A version found in the store when it was opened.
pub struct Stored {
    /// Its order of arrival: higher is newer.
    pub seq: u64,
    /// Its manifest (its version id checked).
    pub manifest: Manifest,
}

/// A stored folder listing: its sequence number, version and entry count.
pub type StoredListing = (u64, VersionId, usize);

/// What a store held when it was opened, oldest first.
#[derive(Default)]
pub struct Contents {
    /// The versions.
    pub versions: Vec<Stored>,
    /// The folder listings' sequence numbers, versions and entry counts (their entries are read
    /// when needed).
    pub listings: Vec<StoredListing>,
}

/// What a store holds (`assetsync store stats`).
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    /// The store folder.
    pub store: PathBuf,
    /// Versions kept.
    pub versions: usize,
    /// Chunks kept, each once however many versions name it, and their bytes.
    pub chunks: usize,
    /// See `chunks`.
    pub chunk_bytes: u64,
    /// Encoded answers kept, and their bytes.
    pub answers: usize,
    /// See `answers`.
    pub answer_bytes: u64,
    /// The database file's size (space freed by dropped entries is reused, not returned).
    pub file_bytes: u64,
    /// Versions kept per asset, by path.
    pub assets: std::collections::BTreeMap<String, usize>,
}

/// What `assetsync store verify` checked and dropped.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verified {
    /// Chunks re-hashed.
    pub chunks: usize,
    /// Chunks whose bytes do not hash to their id, dropped.
    pub damaged_chunks: usize,
    /// Chunks no version names, dropped.
    pub unused_chunks: usize,
    /// Versions checked.
    pub versions: usize,
    /// Versions missing a chunk (or with a damaged one), dropped.
    pub incomplete_versions: usize,
    /// Answers checked.
    pub answers: usize,
    /// Answers failing their checksum, or to or from a version no longer kept, dropped.
    pub dropped_answers: usize,
}

/// What the writer thread is told.
enum Op {
    /// Keep a version and whatever chunks of it the store lacks (`data` is the whole file).
    Put { seq: u64, manifest: Arc<Manifest>, data: Bytes },
    /// Drop a version and the chunks that no kept version names any more.
    Forget { version: VersionId, chunks: Vec<ChunkId> },
    /// Keep an encoded answer.
    Answer { key: AnswerKey, encoded: Vec<u8> },
    /// Drop a damaged answer.
    DropAnswer(AnswerKey),
    /// Keep a folder listing (its entries, when new) as the newest.
    Listing { version: VersionId, seq: u64, entries: Option<Arc<[FolderEntry]>> },
    /// Drop a folder listing.
    ForgetListing(VersionId),
    /// Say when everything queued before is committed (or failed).
    Flush(mpsc::Sender<()>),
}

/// An open store. See the module documentation.
pub struct Store {
    /// Taken by [`Store::close`], so that the file is released even while stray tasks still hold
    /// the store.
    db: Mutex<Option<Arc<Database>>>,
    dir: PathBuf,
    queue: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and returns what it holds, oldest first. Entries
    /// that do not decode, or whose manifest does not hash to their version id, are dropped.
    /// `stored` is told each batch of versions once it is on disk; a failed write is logged, and
    /// those versions are never reported.
    /// Encoded answers are kept within `max_answer_bytes`, the oldest dropped first.
    pub fn open(
        dir: &Path,
        max_answer_bytes: u64,
        stored: impl Fn(&[VersionId]) + Send + 'static,
    ) -> Result<(Store, Contents), StoreError> {
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
                .spawn(move || write_loop(&db, &dir, max_answer_bytes, &ops, &stored))
                .map_err(|e| db_err(e.into()))?
        };
        let store = Store {
            db: Mutex::new(Some(db)),
            dir: dir.to_path_buf(),
            queue: Mutex::new(Some(queue)),
            writer: Mutex::new(Some(writer)),
        };
        for version in damaged {
            tracing::warn!(store = %dir.display(), version = %version.to_hex(), "dropping an undecodable version");
            store.forget(version, Vec::new());
        }
        Ok((store, found.contents))
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

    /// Queues an encoded answer to keep under `key` (until its base or new version is
    /// forgotten).
    pub fn put_answer(&self, key: AnswerKey, encoded: Vec<u8>) {
        self.send(Op::Answer { key, encoded });
    }

    /// The answer kept under `key`, if any (one that does not match its checksum is dropped).
    /// Blocking.
    pub fn answer(&self, key: &AnswerKey) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self.reading(ANSWERS, |answers| Ok(answers.get(key)?.map(|v| v.value().to_vec())))?;
        let Some(value) = found else { return Ok(None) };
        match answer_payload(&value) {
            Some(encoded) => Ok(Some(encoded.to_vec())),
            None => {
                self.send(Op::DropAnswer(*key));
                Err(StoreError::Damaged(format!("answer {}", hex::encode(&key[..8]))))
            }
        }
    }

    /// Queues keeping the folder listing `version` as the newest: with its `entries` when the
    /// store does not have them yet.
    pub fn put_listing(&self, version: VersionId, seq: u64, entries: Option<Arc<[FolderEntry]>>) {
        self.send(Op::Listing { version, seq, entries });
    }

    /// Queues the removal of the folder listing `version`.
    pub fn forget_listing(&self, version: VersionId) {
        self.send(Op::ForgetListing(version));
    }

    /// The entries of the folder listing `version`, if the store has them whole (checked
    /// against the version). Blocking.
    pub fn listing(&self, version: &VersionId) -> Result<Option<Vec<FolderEntry>>, StoreError> {
        let found =
            self.reading(LISTINGS, |listings| Ok(listings.get(&version.0)?.map(|v| v.value().to_vec())))?;
        let Some(bytes) = found else { return Ok(None) };
        match decode_listing(&bytes).filter(|entries| folder_version(entries) == *version) {
            Some(entries) => Ok(Some(entries)),
            None => {
                self.forget_listing(*version);
                Err(StoreError::Damaged(format!("listing {}", version.to_hex())))
            }
        }
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

    /// The end of `manifest`'s version, at least its last `tail` bytes (all of a shorter one),
    /// rebuilt from stored chunks, each checked against its id. `Ok(None)` if the store lacks
    /// one of them (never stored, or not yet written). Blocking.
    pub fn read_tail(&self, manifest: &Manifest, tail: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (first, len) = tail_chunks(manifest, tail);
        let mut damaged = false;
        let found = self.reading(CHUNKS, |chunks| {
            let mut data = Vec::with_capacity(len as usize);
            for chunk in &manifest.chunks[first..] {
                let Some(bytes) = chunks.get(&chunk.id.0)? else { return Ok(None) };
                damaged = Hash::of(bytes.value()) != chunk.id;
                if damaged {
                    return Ok(None);
                }
                data.extend_from_slice(bytes.value());
            }
            Ok(Some(data))
        })?;
        if damaged {
            return Err(StoreError::Damaged(format!("version {}", manifest.version().to_hex())));
        }
        Ok(found)
    }

    /// Counts what the store holds. Blocking.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let mut stats = Stats { store: self.dir.clone(), ..Stats::default() };
        stats.file_bytes = std::fs::metadata(self.dir.join("store.redb")).map_or(0, |m| m.len());
        self.reading(VERSIONS, |versions| {
            for entry in versions.iter()? {
                let (key, value) = entry?;
                let manifest = read_version(&Hash(*key.value()), value.value());
                let path = manifest.map_or_else(|| "(undecodable)".to_owned(), |(_, m)| m.path.to_string());
                *stats.assets.entry(path).or_default() += 1;
                stats.versions += 1;
            }
            Ok(Some(()))
        })?;
        (stats.chunks, stats.chunk_bytes) = self.sizes(CHUNKS)?;
        (stats.answers, stats.answer_bytes) = self.sizes(ANSWERS)?;
        Ok(stats)
    }

    /// How many entries `table` holds, and their values' bytes.
    fn sizes<K: redb::Key + 'static>(
        &self,
        table: TableDefinition<K, &'static [u8]>,
    ) -> Result<(usize, u64), StoreError> {
        let sizes = self.reading(table, |entries| {
            let mut sizes = (0, 0);
            for entry in entries.iter()? {
                sizes.0 += 1;
                sizes.1 += entry?.1.value().len() as u64;
            }
            Ok(Some(sizes))
        })?;
        Ok(sizes.unwrap_or_default())
    }

    /// Re-hashes every chunk and checks every version and answer, dropping what is damaged,
    /// incomplete or unused, in one transaction. Blocking.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let db_err = |source: redb::Error| StoreError::Db { path: self.dir.clone(), source };
        let Some(db) = self.db.lock().expect("poisoned").clone() else { return Ok(Verified::default()) };
        verify(&db).map_err(db_err)
    }

    /// `read` of `table` in a read transaction; `None` if the store is closed or the table was
    /// never written.
    fn reading<K: redb::Key + 'static, T>(
        &self,
        table: TableDefinition<K, &'static [u8]>,
        read: impl FnOnce(redb::ReadOnlyTable<K, &'static [u8]>) -> Result<Option<T>, redb::Error>,
    ) -> Result<Option<T>, StoreError> {
        let Some(db) = self.db.lock().expect("poisoned").clone() else { return Ok(None) };
        let found = db.begin_read().map_err(redb::Error::from).and_then(|tx| match tx.open_table(table) {
            Ok(open) => read(open),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        });
        found.map_err(|source| StoreError::Db { path: self.dir.clone(), source })
    }

    /// Commits what is queued, stops the writer and releases the file (once reads in flight
    /// end). Later operations do nothing. Blocking.
    pub fn close(&self) {
        self.queue.lock().expect("poisoned").take();
        if let Some(writer) = self.writer.lock().expect("poisoned").take() {
            let _ = writer.join();
        }
        self.db.lock().expect("poisoned").take();
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
    contents: Contents,
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
        match read_version(&version, value.value()) {
            Some((seq, manifest)) => found.contents.versions.push(Stored { seq, manifest }),
            None => damaged.push(version),
        }
    }
    found.contents.versions.sort_unstable_by_key(|s| s.seq);
    let mut listings = Vec::new();
    match tx.open_table(LISTED) {
        Ok(listed) => {
            for entry in listed.iter()? {
                let (key, [seq, count]) = entry.map(|(k, v)| (*k.value(), v.value()))?;
                listings.push((seq, Hash(key), count as usize));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    listings.sort_unstable_by_key(|l| l.0);
    found.contents.listings = listings;
    Ok((found, damaged))
}

fn verify(db: &Database) -> Result<Verified, redb::Error> {
    let mut report = Verified::default();
    let tx = db.begin_write()?;
    {
        let mut chunks = tx.open_table(CHUNKS)?;
        let mut versions = tx.open_table(VERSIONS)?;
        let mut answers = tx.open_table(ANSWERS)?;
        chunks.retain(|id, bytes| {
            report.chunks += 1;
            let intact = Hash::of(bytes).0 == *id;
            report.damaged_chunks += usize::from(!intact);
            intact
        })?;
        let mut used = HashSet::new();
        let mut incomplete = Vec::new();
        for entry in versions.iter()? {
            let (key, value) = entry?;
            report.versions += 1;
            let complete = match read_version(&Hash(*key.value()), value.value()) {
                Some((_, m)) => m
                    .chunks
                    .iter()
                    .all(|c| chunks.get(&c.id.0).is_ok_and(|found| found.is_some()))
                    .then_some(m),
                None => None,
            };
            match complete {
                Some(m) => used.extend(m.chunks.iter().map(|c| c.id.0)),
                None => incomplete.push(*key.value()),
            }
        }
        for version in &incomplete {
            versions.remove(version)?;
        }
        report.incomplete_versions = incomplete.len();
        chunks.retain(|id, _| {
            let needed = used.contains(id);
            report.unused_chunks += usize::from(!needed);
            needed
        })?;
        let kept: HashSet<[u8; 32]> =
            versions.iter()?.map(|e| e.map(|(k, _)| *k.value())).collect::<Result<_, _>>()?;
        answers.retain(|key, value| {
            report.answers += 1;
            let (new, base): ([u8; 32], [u8; 32]) =
                (key[..32].try_into().expect("32 bytes"), key[32..64].try_into().expect("32 bytes"));
            let ok = answer_payload(value).is_some()
                && kept.contains(&new)
                && (base == [0; 32] || kept.contains(&base));
            report.dropped_answers += usize::from(!ok);
            ok
        })?;
    }
    tx.commit()?;
    Ok(report)
}

/// A `VERSIONS` value: its sequence number and manifest, if it decodes to the manifest of
/// `version`.
fn read_version(version: &VersionId, value: &[u8]) -> Option<(u64, Manifest)> {
    let (seq, bytes) = value.split_first_chunk::<8>()?;
    let manifest = Manifest::decode_canonical(bytes).ok().filter(|m| m.version() == *version)?;
    Some((u64::from_le_bytes(*seq), manifest))
}

/// The chunks at the end of `manifest`'s version that hold at least its last `tail` bytes (all
/// of a shorter one): the first one's position, and their bytes.
pub(crate) fn tail_chunks(manifest: &Manifest, tail: u64) -> (usize, u64) {
    let (mut first, mut len) = (manifest.chunks.len(), 0);
    while first > 0 && len < tail {
        first -= 1;
        len += u64::from(manifest.chunks[first].len);
    }
    (first, len)
}

/// `bytes` behind their SHA-256, as answers are kept (here and in the shared store).
pub(crate) fn checksummed(bytes: &[u8]) -> Vec<u8> {
    [&Hash::of(bytes).0, bytes].concat()
}

/// The bytes of [`checksummed`] `value`, if they match their checksum.
pub(crate) fn verified(value: &[u8]) -> Option<&[u8]> {
    let (sum, bytes) = value.split_first_chunk::<32>()?;
    (Hash::of(bytes).0 == *sum).then_some(bytes)
}

/// An `ANSWERS` value for the encoded answer `encoded`, kept now.
fn answer_record(encoded: &[u8]) -> Vec<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
    [&now.to_le_bytes()[..], &checksummed(encoded)].concat()
}

/// When an `ANSWERS` value was kept.
fn answer_time(value: &[u8]) -> u64 {
    value.first_chunk::<8>().map_or(0, |at| u64::from_le_bytes(*at))
}

/// The encoded answer in an `ANSWERS` value, if it matches its checksum.
fn answer_payload(value: &[u8]) -> Option<&[u8]> {
    verified(value.get(8..)?)
}

/// A folder listing's entries: each path's length (`u16`, little-endian), the path, the version.
pub(crate) fn encode_listing(entries: &[FolderEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 80);
    for entry in entries {
        out.extend_from_slice(&(entry.asset.as_str().len() as u16).to_le_bytes());
        out.extend_from_slice(entry.asset.as_str().as_bytes());
        out.extend_from_slice(&entry.version.0);
    }
    out
}

/// Reads [`encode_listing`]; `None` if it does not parse whole.
pub(crate) fn decode_listing(mut bytes: &[u8]) -> Option<Vec<FolderEntry>> {
    let mut entries = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<2>() {
        let (path, rest) = rest.split_at_checked(u16::from_le_bytes(*len) as usize)?;
        let (version, rest) = rest.split_first_chunk::<32>()?;
        let asset = AssetPath::new(std::str::from_utf8(path).ok()?).ok()?;
        entries.push(FolderEntry { asset, version: Hash(*version) });
        bytes = rest;
    }
    bytes.is_empty().then_some(entries)
}

/// Commits queued operations in batches until the queue closes.
fn write_loop(
    db: &Database,
    dir: &Path,
    max_answer_bytes: u64,
    ops: &mpsc::Receiver<Op>,
    stored: &dyn Fn(&[VersionId]),
) {
    let mut failing = false;
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        let mut bytes = 0;
        while bytes < BATCH_BYTES {
            let Ok(op) = ops.try_recv() else { break };
            bytes += match &op {
                Op::Put { data, .. } => data.len(),
                Op::Answer { encoded, .. } => encoded.len(),
                _ => 0,
            };
            batch.push(op);
        }
        match commit(db, &batch, max_answer_bytes) {
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

fn commit(db: &Database, batch: &[Op], max_answer_bytes: u64) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        tx.open_table(META)?.insert("format", FORMAT)?;
        let mut versions = tx.open_table(VERSIONS)?;
        let mut chunks = tx.open_table(CHUNKS)?;
        let mut answers = tx.open_table(ANSWERS)?;
        let (mut listings, mut listed) = (tx.open_table(LISTINGS)?, tx.open_table(LISTED)?);
        let mut forgotten = HashSet::new();
        let mut added_answers = false;
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
                    let value = [&seq.to_le_bytes()[..], &manifest.canonical_bytes()].concat();
                    versions.insert(&version.0, value.as_slice())?;
                }
                Op::Forget { version, chunks: gone } => {
                    versions.remove(&version.0)?;
                    for chunk in gone {
                        chunks.remove(&chunk.0)?;
                    }
                    forgotten.insert(version.0);
                }
                Op::Answer { key, encoded } => {
                    answers.insert(key, answer_record(encoded).as_slice())?;
                    added_answers = true;
                }
                Op::DropAnswer(key) => {
                    answers.remove(key)?;
                }
                Op::Listing { version, seq, entries } => {
                    let count = match entries {
                        Some(entries) => {
                            listings.insert(&version.0, encode_listing(entries).as_slice())?;
                            entries.len() as u64
                        }
                        None => match listed.get(&version.0)? {
                            Some(known) => known.value()[1],
                            // Dropped meanwhile (found damaged): nothing to order.
                            None => continue,
                        },
                    };
                    listed.insert(&version.0, [*seq, count])?;
                }
                Op::ForgetListing(version) => {
                    listings.remove(&version.0)?;
                    listed.remove(&version.0)?;
                }
                Op::Flush(_) => {}
            }
        }
        // Answers to or from a forgotten version.
        if !forgotten.is_empty() {
            answers.retain(|key, _| {
                let (new, base) = (&key[..32], &key[32..64]);
                !forgotten.iter().any(|v| v[..] == *new || v[..] == *base)
            })?;
        }
        // Within their budget, the oldest dropped first.
        if added_answers {
            let mut kept: Vec<(u64, AnswerKey, u64)> = Vec::new();
            for entry in answers.iter()? {
                let (key, value) = entry?;
                let value = value.value();
                let at = answer_time(value);
                kept.push((at, *key.value(), value.len() as u64));
            }
            kept.sort_unstable();
            let mut total: u64 = kept.iter().map(|k| k.2).sum();
            for (_, key, len) in kept {
                if total <= max_answer_bytes {
                    break;
                }
                answers.remove(&key)?;
                total -= len;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
