//! The IndexedDB store: committed files, their manifests, and a pointer table.
//!
//! ```text
//! files      "<version hex>"    -> Blob | Uint8Array   (a file stored on its own)
//! manifests  "<version hex>"    -> Uint8Array          (its canonical manifest)
//! packs      "<pack id hex>"    -> Blob                (small files committed together: their
//!                                                       manifests, then their bytes)
//! index      "<shard hex>"      -> Uint8Array          (per asset: its committed version and
//!                                                       where its file lies; see [`index`])
//! chunks     "<chunk id hex>"   -> Uint8Array          (chunks of a transfer that broke, for resume)
//! pending    "<run id hex>"     -> Uint8Array          (packs and files a folder sync wrote ahead
//!                                                       of its commit; see [`Store::write_ahead`])
//! builds, serving                                      (folders kept as they were, for a service
//!                                                       worker; see [`builds`])
//! refs                                                 (schema 2's pointer table, emptied on upgrade)
//! ```
//!
//! A file is one `Blob`, which Chromium keeps as a file of its own: reading a 10 MB version back
//! is one read, not one record per chunk, and a chunk the next version reuses is a
//! `Blob.slice` of it. A commit of many small files (a folder's) writes them as one pack and a
//! few pointer shards: Chromium costs about 0.1 ms per record written, which for 9,000 files as
//! three records each was three seconds. Version ids hash the asset's path, so a version belongs
//! to one asset.
//!
//! A commit writes the new files, their manifests and the pointers, and deletes what the assets'
//! previous versions alone used (a file of its own, a pack no pointer reaches any more), in
//! **one** readwrite transaction: a committed version never lacks its data, and old versions do
//! not pile up. GC runs in one readwrite transaction over the same stores. IndexedDB runs
//! transactions with overlapping scopes one after the other, also across tabs, so a GC never
//! interleaves with a commit. A store written by an older schema is upgraded in place when it is
//! first opened ([`migrate`]).

mod builds;
mod index;
mod migrate;
mod records;

#[cfg(feature = "worker")]
pub use builds::{Build, Serving};
pub use index::Entry;
pub use records::Staged;
use records::{
    Range, as_blob, blob, bytes_of, decode_manifest, key, listen, put_chunks, read_blob, request_file, runs,
    slice, version_of,
};

use std::collections::{HashMap, HashSet};

use assetsync_protocol::{
    AssetPath, ChunkId, FolderEntry, Manifest, Scope, Synced, VerifiedChunk, VersionId,
};
use idb::{Database, Factory, ObjectStoreParams, Transaction, TransactionMode};
use index::{Index, Place, pack_key};
use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Blob, IdbTransaction};

const FILES: &str = "files";
const CHUNKS: &str = "chunks";
const MANIFESTS: &str = "manifests";
const PACKS: &str = "packs";
const INDEX: &str = "index";
const PENDING: &str = "pending";
const REFS: &str = "refs";
const BUILDS: &str = "builds";
const SERVING: &str = "serving";
const ALL: [&str; 9] = [FILES, CHUNKS, MANIFESTS, PACKS, INDEX, PENDING, REFS, BUILDS, SERVING];
/// What a committed file is read from.
const STORED: [&str; 4] = [FILES, MANIFESTS, PACKS, INDEX];
/// What a commit writes (and the builds whose files it must not delete).
const COMMITTED: [&str; 6] = [FILES, MANIFESTS, PACKS, INDEX, PENDING, BUILDS];
/// The schema version: 1 kept every chunk as a record of its own, 2 kept files whole with a
/// pointer record per asset, 3 packs small files and shards the pointers, 4 writes a folder's
/// files ahead of the commit that points at them, 5 keeps builds for a service worker.
const SCHEMA: u32 = 5;
/// How long files written ahead of a commit are kept from GC: a folder sync that has not
/// committed by then was abandoned (its tab closed).
const PENDING_MS: f64 = 3_600_000.0;
/// How long opening the store waits for pages that hold it open and block its upgrade.
const BLOCKED_MS: i32 = 3_000;
/// Reused chunks this close together in one file are read with one `Blob.slice`.
const MAX_GAP: usize = 64 * 1024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The origin's storage is full: the browser's `QuotaExceededError`.
    #[error("storage quota exceeded ({0})")]
    Quota(String),
    /// Any other IndexedDB failure, with the browser's words.
    #[error("IndexedDB error: {0}")]
    Db(String),
    /// The store cannot serve this as it is (a damaged copy, an upgrade blocked by another page).
    #[error("{0}")]
    Unusable(String),
}

impl From<idb::Error> for StoreError {
    fn from(e: idb::Error) -> Self {
        match &e {
            idb::Error::DomException(d) => StoreError::dom(&d.name(), &d.message()),
            idb::Error::AddFailed(v) | idb::Error::TransactionCommitError(v) => StoreError::js(v.clone()),
            // A request nobody awaited failed and its error event reached the transaction's
            // listener (Firefox reports a full quota so): the request carries the reason.
            idb::Error::UnexpectedJsType(_, request) => {
                match js_sys::Reflect::get(request, &"error".into()) {
                    Ok(error) if error.is_object() => StoreError::js(error),
                    _ => StoreError::Db(e.to_string()),
                }
            }
            _ => StoreError::Db(e.to_string()),
        }
    }
}

impl StoreError {
    /// A browser exception, told apart by its name (`message` may be empty).
    fn dom(name: &str, message: &str) -> Self {
        let text = if message.is_empty() { name.to_owned() } else { format!("{name}: {message}") };
        match name {
            "QuotaExceededError" => StoreError::Quota(text),
            _ => StoreError::Db(text),
        }
    }

    fn js(e: JsValue) -> Self {
        let field = |name: &str| js_sys::Reflect::get(&e, &name.into()).ok().and_then(|v| v.as_string());
        match field("name") {
            Some(name) => StoreError::dom(&name, &field("message").unwrap_or_default()),
            None => StoreError::Db(crate::socket::describe(&e)),
        }
    }
}

/// Commits `tx`. An aborted transaction is an error with the browser's reason, such as
/// `QuotaExceededError` when the origin's storage is full.
async fn finish(tx: Transaction) -> Result<()> {
    let handle = IdbTransaction::from(tx);
    if Transaction::from(handle.clone()).commit()?.await?.is_committed() {
        return Ok(());
    }
    Err(match handle.error() {
        Some(e) => StoreError::dom(&e.name(), &e.message()),
        None => StoreError::Db("the transaction was aborted".into()),
    })
}

/// The cause of `e`, met in `tx`: a request that failed because its transaction aborted (Firefox
/// reports a full quota so, on the next request awaited) has the transaction's error as cause.
fn cause(tx: &Transaction, e: StoreError) -> StoreError {
    match (&e, tx.error()) {
        (StoreError::Db(text), Some(why)) if text.starts_with("AbortError") => {
            StoreError::dom(&why.name(), &why.message())
        }
        _ => e,
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// A committed file as read back: its bytes, or the chunks found missing or damaged in it.
pub type FileRead = std::result::Result<Uint8Array, Vec<ChunkId>>;

/// What [`Store::gc`] freed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunk records of interrupted transfers.
    pub chunks_deleted: u32,
    /// Files (and their manifests) of versions no asset points to.
    pub versions_deleted: u32,
    /// Packs none of whose files an asset points to.
    pub packs_deleted: u32,
    pub bytes_freed: u64,
}

/// An open IndexedDB database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (creating on first use, upgrading a version-1 store) the database `name`.
    pub async fn open(name: &str) -> Result<Store> {
        let mut request = Factory::new()?.open(name, Some(SCHEMA))?;
        request.on_upgrade_needed(|event| {
            let db = idb::DatabaseEvent::database(&event).expect("upgrade event has a database");
            for store in ALL {
                if !db.store_names().iter().any(|s| s == store) {
                    db.create_object_store(store, ObjectStoreParams::new()).expect("create object store");
                }
            }
            // A store of schema 1 holds its files as chunk records: marked here, in the upgrade
            // itself, for `migrate::run` to rebuild them (on this open or, if interrupted, the
            // next). Its pointers, like schema 2's, are then moved to the index.
            if event.old_version().is_ok_and(|old| old == 1) {
                let upgrade = idb::Event::target(&event).ok().and_then(|r| idb::Request::transaction(&r));
                let refs = upgrade.and_then(|tx| tx.object_store(REFS).ok());
                if let Some(refs) = refs {
                    refs.put(&JsValue::TRUE, Some(&key(migrate::MARK)))
                        .expect("mark the store for its upgrade");
                }
            }
        });
        // Pages of the previous release keep the store open through an upgrade: wait a little for
        // them to go, then say what holds it.
        let (blocked, was_blocked) = futures_channel::oneshot::channel();
        request.on_blocked(move |_| {
            let _ = blocked.send(());
        });
        let opening = Box::pin(std::future::IntoFuture::into_future(request));
        let gave_up = std::pin::pin!(async {
            match was_blocked.await {
                Ok(()) => crate::subscribe::sleep(BLOCKED_MS).await,
                Err(_) => std::future::pending().await,
            }
        });
        let opened = match futures_util::future::select(opening, gave_up).await {
            futures_util::future::Either::Left((opened, _)) => opened?,
            futures_util::future::Either::Right(((), opening)) => {
                // Should the upgrade happen later, that connection is not wanted.
                wasm_bindgen_futures::spawn_local(async move {
                    if let Ok(db) = opening.await {
                        db.close();
                    }
                });
                return Err(StoreError::Unusable(format!(
                    "cannot open the store {name:?}: a page running an older assetsync holds it open; \
                     reload or close that page"
                )));
            }
        };
        let handle = web_sys::IdbDatabase::from(opened);
        let mut db = Database::from(handle.clone());
        // Let a later schema's upgrade in another tab proceed: this connection steps aside.
        db.on_version_change(move |_| handle.close());
        let store = Store { db };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// Closes the connection once running transactions finish.
    pub fn close(&self) {
        self.db.close();
    }

    /// The committed manifest of `asset`, if present and intact.
    pub async fn current(&self, asset: &AssetPath) -> Result<Option<Manifest>> {
        Ok(self.current_file(asset).await?.map(|(manifest, _)| manifest))
    }

    /// The committed manifest of `asset` and a handle on its file (nothing read yet), in one
    /// transaction; see [`Store::check`].
    pub async fn current_file(&self, asset: &AssetPath) -> Result<Option<(Manifest, Option<Blob>)>> {
        let tx = self.db.transaction(&STORED, TransactionMode::ReadOnly)?;
        let index = Index::read(&tx, [asset.as_str()]).await?;
        let Some(entry) = index.get(asset.as_str()) else { return Ok(None) };
        let file = request_file(&tx, &entry)?;
        let Some(manifest) = self.manifests_of(&tx, vec![entry]).await?.pop() else { return Ok(None) };
        Ok(Some((manifest, file.blob().await?)))
    }

    /// Committed manifests of assets other than `asset`, at most `limit`.
    pub async fn others(&self, asset: &AssetPath, limit: usize) -> Result<Vec<Manifest>> {
        let tx = self.db.transaction(&STORED, TransactionMode::ReadOnly)?;
        let index = Index::read_all(&tx).await?;
        let entries =
            index.iter().filter(|(a, _)| *a != asset.as_str()).map(|(_, e)| *e).take(limit).collect();
        self.manifests_of(&tx, entries).await
    }

    /// The manifests of `entries` that are present and intact, read in `tx` (a pack's in one
    /// read per run of them).
    async fn manifests_of(&self, tx: &Transaction, entries: Vec<Entry>) -> Result<Vec<Manifest>> {
        let (manifests, packs) = (tx.object_store(MANIFESTS)?, tx.object_store(PACKS)?);
        let mut own = Vec::new();
        let mut packed: HashMap<u64, Vec<Range<VersionId>>> = HashMap::new();
        for e in entries {
            match e.place {
                Place::Own => own.push((listen(manifests.get(key(&e.version.to_hex()))?), e.version)),
                Place::Packed { pack, manifest_at, manifest_len, .. } => {
                    let range = (manifest_at as usize, manifest_len as usize, e.version);
                    packed.entry(pack).or_default().push(range);
                }
            }
        }
        let blobs = packed
            .into_iter()
            .map(|(pack, ranges)| Ok((listen(packs.get(pack_key(pack))?), ranges)))
            .collect::<std::result::Result<Vec<_>, idb::Error>>()?;
        let mut out = Vec::new();
        for (request, version) in own {
            out.extend(request.await?.and_then(|b| decode_manifest(&bytes_of(&b), &version)));
        }
        let mut reads = Vec::new();
        for (request, ranges) in blobs {
            if let Some(blob) = request.await?.and_then(as_blob) {
                reads.extend(runs(ranges).into_iter().map(|run| (slice(&blob, run.0, run.1), run)));
            }
        }
        // Read outside the transaction: a Blob stays readable on its own.
        for (read, (start, _, ranges)) in reads {
            let bytes = Uint8Array::new(&read.await.map_err(StoreError::js)?).to_vec();
            for (at, len, version) in ranges {
                out.extend(
                    bytes.get(at - start..at - start + len).and_then(|b| decode_manifest(b, &version)),
                );
            }
        }
        Ok(out)
    }

    /// The committed file of `manifest`, checked against its length and SHA-256. `Err` inside
    /// names the chunks found missing or damaged (all of them if the file is gone).
    pub async fn file(&self, manifest: &Manifest) -> Result<FileRead> {
        let tx = self.db.transaction(&STORED, TransactionMode::ReadOnly)?;
        let index = Index::read(&tx, [manifest.path.as_str()]).await?;
        let entry = index.get(manifest.path.as_str()).filter(|e| e.version == manifest.version());
        let file = match entry {
            Some(entry) => request_file(&tx, &entry)?.blob().await?,
            None => None,
        };
        Store::check(manifest, file).await
    }

    /// Reads the committed `file` of `manifest` and checks it against its length and SHA-256.
    pub async fn check(manifest: &Manifest, file: Option<Blob>) -> Result<FileRead> {
        let all = || manifest.chunks.iter().map(|c| c.id).collect::<HashSet<_>>().into_iter().collect();
        let Some(blob) = file else { return Ok(Err(all())) };
        if blob.size() != manifest.len as f64 {
            return Ok(Err(all()));
        }
        let buffer = read_blob(&blob).await?;
        let data = Uint8Array::new(&buffer);
        if crate::digest::sha256_buffer(&buffer).await == manifest.sha256 {
            return Ok(Ok(data));
        }
        Ok(Err(manifest.damaged_chunks(&data.to_vec())))
    }

    /// Reads chunks: slices of the committed files of `sources` where they list them (adjacent
    /// ones in one read), else records kept from interrupted transfers. Missing ones are left out.
    /// They are not hashed one by one: the rebuilt file's SHA-256 covers them, and a damaged one
    /// is then named.
    /// `staged` are a folder sync's files not committed yet: those written ahead are read where
    /// they were written.
    pub async fn chunks(
        &self,
        ids: &[ChunkId],
        sources: &[&Manifest],
        staged: &[Staged],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: HashSet<ChunkId> = ids.iter().copied().collect();
        // Per source file, the wanted chunks it holds: (offset, len, id).
        let mut located = HashSet::new();
        let mut per_source: Vec<(&Manifest, Vec<Range<ChunkId>>)> = Vec::new();
        // First source first (the committed files come before a folder's files staged in this
        // run, whose chunks the driver has in hand), and no further than needed: a folder has
        // thousands of sources.
        for m in sources {
            if located.len() == wanted.len() {
                break;
            }
            let mut ranges = Vec::new();
            for (at, c) in m.offsets() {
                if wanted.contains(&c.id) && located.insert(c.id) {
                    ranges.push((at, c.len as usize, c.id));
                }
            }
            if !ranges.is_empty() {
                per_source.push((m, ranges));
            }
        }
        let tx = self.db.transaction(&[FILES, PACKS, INDEX, CHUNKS], TransactionMode::ReadOnly)?;
        let index = Index::read(&tx, per_source.iter().map(|(m, _)| m.path.as_str())).await?;
        // Issue every read before awaiting any, so the transaction has them all queued.
        let mut files = Vec::new();
        let written: HashMap<VersionId, Entry> =
            staged.iter().filter_map(Staged::written).map(|e| (e.version, e)).collect();
        for (m, ranges) in per_source {
            let version = m.version();
            let committed = index.get(m.path.as_str()).filter(|e| e.version == version);
            let entry = committed.or_else(|| written.get(&version).copied());
            if let Some(entry) = entry {
                files.push((request_file(&tx, &entry)?, ranges));
            }
        }
        let loose: Vec<ChunkId> = ids.iter().filter(|id| !located.contains(id)).copied().collect();
        let chunks = tx.object_store(CHUNKS)?;
        let records = loose
            .iter()
            .map(|id| Ok(listen(chunks.get(key(&id.to_hex()))?)))
            .collect::<std::result::Result<Vec<_>, idb::Error>>()?;
        let mut out = Vec::with_capacity(ids.len());
        let mut reads = Vec::new();
        for (file, ranges) in files {
            if let Some(blob) = file.blob().await? {
                reads.extend(runs(ranges).into_iter().map(|run| (slice(&blob, run.0, run.1), run)));
            }
        }
        for (id, record) in loose.iter().zip(records) {
            if let Some(value) = record.await? {
                out.push((*id, bytes_of(&value)));
            }
        }
        // The slices are read outside the transaction: a Blob stays readable on its own.
        for (read, (start, _, ranges)) in reads {
            let bytes = Uint8Array::new(&read.await.map_err(StoreError::js)?).to_vec();
            for (at, len, id) in ranges {
                if let Some(chunk) = bytes.get(at - start..at - start + len) {
                    out.push((id, chunk.to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Deletes kept chunk records: found damaged, or no longer needed once their transfer
    /// committed.
    pub async fn discard(&self, ids: &[ChunkId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction(&[CHUNKS], TransactionMode::ReadWrite)?;
        let store = tx.object_store(CHUNKS)?;
        for id in ids {
            store.delete(key(&id.to_hex()))?;
        }
        finish(tx).await
    }

    /// Deletes `asset` (it is gone from the server): its pointer, file and manifest, in one
    /// transaction.
    pub async fn remove(&self, asset: &AssetPath) -> Result<()> {
        self.commit_all(&[Staged::Removal(asset.as_str().to_owned())], None).await
    }

    /// Stores chunks of a transfer that broke before its version could be committed, so that
    /// the resumed request lists them as held instead of fetching them again. Each is named by
    /// the hash of its bytes; the sync that commits drops them, and [`Store::gc`] collects any
    /// left behind.
    pub async fn keep(&self, received: &[VerifiedChunk]) -> Result<()> {
        if received.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction(&[CHUNKS], TransactionMode::ReadWrite)?;
        put_chunks(&tx.object_store(CHUNKS)?, received)?;
        finish(tx).await
    }

    /// Commits a verified sync in one transaction: the file, the manifest, the pointer, and the
    /// deletion of the asset's previous version.
    pub async fn commit(&self, synced: &Synced) -> Result<()> {
        self.commit_all(&[Staged::file(synced)?], None).await
    }

    /// Commits `changes` (a folder's files and removals) in one transaction: a reader sees all
    /// of them or none. Small files committed together go into one pack. `run` names the files
    /// written ahead by [`Store::write_ahead`] for this commit.
    pub async fn commit_all(&self, changes: &[Staged], run: Option<u64>) -> Result<()> {
        let tx = self.db.transaction(&COMMITTED, TransactionMode::ReadWrite)?;
        write(&tx, changes).await.map_err(|e| cause(&tx, e))?;
        if let Some(run) = run {
            tx.object_store(PENDING)?.delete(pending_key(run))?;
        }
        finish(tx).await
    }

    /// Writes the files of `changes` not written yet (see [`write_files`]) ahead of the commit
    /// that will point at them, so that a folder of any size commits in one pointer switch
    /// while its files are written as they arrive: they take no memory here meanwhile, and
    /// nothing reads them until that commit. Noted under `run` (with the time) in one
    /// transaction, so that [`Store::gc`] leaves them alone for [`PENDING_MS`].
    pub async fn write_ahead(&self, changes: &mut [Staged], run: u64) -> Result<()> {
        let tx = self.db.transaction(&[FILES, MANIFESTS, PACKS, PENDING], TransactionMode::ReadWrite)?;
        let pending = tx.object_store(PENDING)?;
        let mut note = pending.get(pending_key(run))?.await?.map(|v| bytes_of(&v)).unwrap_or_default();
        if note.is_empty() {
            assetsync_protocol::varint::put(&mut note, js_sys::Date::now() as u64);
        }
        let places = records::write_files(&tx, changes)?;
        let mut packs = HashSet::new();
        for (change, place) in changes.iter_mut().zip(places) {
            if change.written().is_some() {
                continue;
            }
            let (Staged::File { version, file, .. }, Some(place)) = (change, place) else { continue };
            // Each file of its own, and each new pack once.
            match place {
                Place::Packed { pack, .. } if packs.insert(pack) => {
                    note.push(0);
                    note.extend_from_slice(&pack.to_le_bytes());
                }
                Place::Packed { .. } => {}
                Place::Own => {
                    note.push(1);
                    note.extend_from_slice(&version.0);
                }
            }
            *file = records::Body::Written(place);
        }
        pending.put(&Uint8Array::from(note.as_slice()), Some(&pending_key(run)))?;
        finish(tx).await
    }

    /// The committed versions of the assets inside `scope`, sorted by path (from the pointer
    /// table alone: no manifest is read).
    pub async fn entries_in(&self, scope: &Scope) -> Result<Vec<FolderEntry>> {
        let tx = self.db.transaction(&[INDEX], TransactionMode::ReadOnly)?;
        let index = Index::read_all(&tx).await?;
        let mut out: Vec<FolderEntry> = index
            .iter()
            .filter_map(|(asset, e)| {
                let asset = AssetPath::new(asset).ok().filter(|a| scope.covers(a))?;
                Some(FolderEntry { asset, version: e.version })
            })
            .collect();
        out.sort_unstable_by(|a, b| a.asset.cmp(&b.asset));
        Ok(out)
    }

    /// The committed manifests of `versions` that are present and intact.
    pub async fn manifests(&self, versions: &[VersionId]) -> Result<Vec<Manifest>> {
        let wanted: HashSet<&VersionId> = versions.iter().collect();
        let tx = self.db.transaction(&STORED, TransactionMode::ReadOnly)?;
        let index = Index::read_all(&tx).await?;
        let entries = index.iter().map(|(_, e)| *e).filter(|e| wanted.contains(&e.version)).collect();
        self.manifests_of(&tx, entries).await
    }

    /// The committed copy of `asset`, checked against its SHA-256; `None` if there is none.
    /// A damaged copy is an error, never wrong bytes.
    pub async fn read(&self, asset: &AssetPath) -> Result<Option<Uint8Array>> {
        let Some(manifest) = self.current(asset).await? else { return Ok(None) };
        match self.file(&manifest).await? {
            Ok(data) => Ok(Some(data)),
            Err(_) => Err(StoreError::Unusable(format!(
                "cached copy of {asset} is damaged; the next sync repairs it"
            ))),
        }
    }

    /// Deletes, in one transaction, the files, manifests and packs no pointer or kept build
    /// reaches and the chunk records kept from interrupted transfers.
    pub async fn gc(&self) -> Result<GcReport> {
        let tx = self.db.transaction(&ALL, TransactionMode::ReadWrite)?;
        let index = Index::read_all(&tx).await?;
        let mut own: HashSet<String> =
            index.iter().filter(|(_, e)| e.place == Place::Own).map(|(_, e)| e.version.to_hex()).collect();
        let (held, held_packs) = builds::held(&tx).await?;
        own.extend(held.iter().map(VersionId::to_hex));
        let mut reached: HashSet<String> = (index.packs().into_iter().chain(held_packs))
            .map(|p| pack_key(p).as_string().unwrap_or_default())
            .collect();
        // What folder syncs in progress wrote ahead of their commit; an old note is of one that
        // was abandoned.
        let pending = tx.object_store(PENDING)?;
        let (runs, notes) = (pending.get_all_keys(None, None)?.await?, pending.get_all(None, None)?.await?);
        for (run, note) in runs.into_iter().zip(notes) {
            match read_note(&bytes_of(&note)) {
                Some((at, packs, versions)) if js_sys::Date::now() - at < PENDING_MS => {
                    reached.extend(packs.into_iter().map(|p| pack_key(p).as_string().unwrap_or_default()));
                    own.extend(versions.iter().map(VersionId::to_hex));
                }
                _ => {
                    pending.delete(run)?;
                }
            }
        }
        let mut report = GcReport::default();
        let manifests = tx.object_store(MANIFESTS)?;
        for k in manifests.get_all_keys(None, None)?.await? {
            if !k.as_string().is_some_and(|k| own.contains(&k)) {
                manifests.delete(k)?;
            }
        }
        for (name, live, count) in
            [(FILES, &own, &mut report.versions_deleted), (PACKS, &reached, &mut report.packs_deleted)]
        {
            let store = tx.object_store(name)?;
            for k in store.get_all_keys(None, None)?.await? {
                if !k.as_string().is_some_and(|k| live.contains(&k)) {
                    if let Some(blob) = store.get(k.clone())?.await?.and_then(as_blob) {
                        report.bytes_freed += blob.size() as u64;
                    }
                    store.delete(k)?;
                    *count += 1;
                }
            }
        }
        let chunks = tx.object_store(CHUNKS)?;
        for value in chunks.get_all(None, None)?.await? {
            report.bytes_freed += u64::from(value.unchecked_ref::<Uint8Array>().byte_length());
            report.chunks_deleted += 1;
        }
        chunks.clear()?;
        finish(tx).await?;
        Ok(report)
    }
}

/// The key of `run`'s note of what it wrote ahead.
fn pending_key(run: u64) -> JsValue {
    key(&format!("{run:016x}"))
}

/// Reads a note of [`Store::write_ahead`]: when it was begun (ms since the epoch), and the packs
/// and files of their own it lists.
fn read_note(mut bytes: &[u8]) -> Option<(f64, Vec<u64>, Vec<VersionId>)> {
    let at = assetsync_protocol::varint::get(&mut bytes)? as f64;
    let (mut packs, mut versions) = (Vec::new(), Vec::new());
    while let Some((&kind, rest)) = bytes.split_first() {
        match kind {
            0 => {
                let (pack, rest) = rest.split_first_chunk::<8>()?;
                packs.push(u64::from_le_bytes(*pack));
                bytes = rest;
            }
            1 => {
                let (version, rest) = rest.split_first_chunk::<32>()?;
                versions.push(assetsync_protocol::Hash(*version));
                bytes = rest;
            }
            _ => return None,
        }
    }
    Some((at, packs, versions))
}

/// Writes `changes` in `tx` (readwrite over [`STORED`]): the files, the pointers, and the
/// deletion of what only the versions they replace used. Files written ahead must still be
/// there (a GC keeps them for [`PENDING_MS`]): a commit never points at missing data.
async fn write(tx: &Transaction, changes: &[Staged]) -> Result<()> {
    let mut index = Index::read(tx, changes.iter().map(Staged::asset)).await?;
    // A pack is deleted once no pointer reaches it, which only the whole table tells.
    let packed = |e: Option<Entry>| e.is_some_and(|e| matches!(e.place, Place::Packed { .. }));
    if !index.is_complete() && changes.iter().any(|c| packed(index.get(c.asset()))) {
        index = Index::read_all(tx).await?;
    }
    check_written(tx, changes).await?;
    let places = records::write_files(tx, changes)?;
    let (mut replaced, mut unreached) = (HashSet::new(), HashSet::new());
    for (change, place) in changes.iter().zip(places) {
        let previous = match (change, place) {
            (Staged::File { version, .. }, Some(place)) => {
                index.set(change.asset(), Entry { version: *version, place })
            }
            _ => index.remove(change.asset()),
        };
        match previous.map(|e| (e, e.place)) {
            Some((e, Place::Own)) if index.get(change.asset()) != Some(e) => {
                replaced.insert(e.version);
            }
            Some((_, Place::Packed { pack, .. })) => {
                unreached.insert(pack);
            }
            _ => {}
        }
    }
    index.write(tx)?;
    if replaced.is_empty() && unreached.is_empty() {
        return Ok(());
    }
    // What the previous versions alone used, unless a kept build still serves it.
    let (held, mut reached) = builds::held(tx).await?;
    reached.extend(index.packs());
    for version in replaced.difference(&held) {
        records::delete_version(tx, version)?;
    }
    let packs = tx.object_store(PACKS)?;
    for pack in unreached.difference(&reached) {
        packs.delete(pack_key(*pack))?;
    }
    Ok(())
}

/// Fails unless every file of `changes` written ahead is still in `tx`'s stores.
async fn check_written(tx: &Transaction, changes: &[Staged]) -> Result<()> {
    let mut asked = HashSet::new();
    let mut requests = Vec::new();
    for entry in changes.iter().filter_map(Staged::written) {
        let (store, id) = records::record_of(&entry);
        if asked.insert(id.as_string()) {
            requests.push(listen(tx.object_store(store)?.get_key(id)?));
        }
    }
    for request in requests {
        if request.await?.is_none() {
            return Err(StoreError::Unusable(
                "files written ahead of this commit are gone (a GC after an hour, or the site's data was \
                 cleared); sync again"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
