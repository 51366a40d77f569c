//! The IndexedDB store: each committed version's file whole, its manifest, and a pointer per
//! asset.
//!
//! ```text
//! files      "<version hex>"    -> Blob            (the verified file, as committed)
//! manifests  "<version hex>"    -> Uint8Array      (canonical manifest encoding)
//! refs       "<asset path>"     -> "<version hex>" (the committed version)
//! chunks     "<chunk id hex>"   -> Uint8Array      (chunks of a transfer that broke, for resume)
//! ```
//!
//! A file is one `Blob`, which Chromium keeps as a file of its own: reading a 10 MB version back
//! is one read, not one record per chunk, and a chunk the next version reuses is a
//! `Blob.slice` of it. Version ids hash the asset's path, so a version belongs to one asset.
//!
//! A commit writes the new file, its manifest and the pointer, and deletes the asset's previous
//! version, in **one** readwrite transaction: a committed version never lacks its data, and old
//! versions do not pile up. GC runs in one readwrite transaction over the same stores. IndexedDB
//! runs transactions with overlapping scopes one after the other, also across tabs, so a GC never
//! interleaves with a commit. A store written by the chunk-per-record layout of version 1 is
//! upgraded in place when it is first opened ([`migrate`]).

mod migrate;

use std::collections::HashSet;

use assetsync_protocol::{AssetPath, ChunkId, Hash, Manifest, Synced, VerifiedChunk, VersionId};
use idb::{Database, Factory, ObjectStore, ObjectStoreParams, Transaction, TransactionMode};
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, IdbTransaction};

const FILES: &str = "files";
const CHUNKS: &str = "chunks";
const MANIFESTS: &str = "manifests";
const REFS: &str = "refs";
const ALL: [&str; 4] = [FILES, CHUNKS, MANIFESTS, REFS];
/// The schema version: 1 kept every chunk as a record of its own, 2 keeps files whole.
const SCHEMA: u32 = 2;
/// How long opening the store waits for pages that hold it open and block its upgrade.
const BLOCKED_MS: i32 = 3_000;
/// Reused chunks this close together in one file are read with one `Blob.slice`.
const MAX_GAP: usize = 64 * 1024;

/// Store errors, with what failed. Quota errors say so.
#[derive(Debug)]
pub struct StoreError(pub String);

impl From<idb::Error> for StoreError {
    fn from(e: idb::Error) -> Self {
        StoreError::new(e.to_string())
    }
}

impl StoreError {
    fn new(text: String) -> Self {
        if text.contains("QuotaExceeded") || text.contains("quota") {
            StoreError(format!("storage quota exceeded ({text})"))
        } else {
            StoreError(format!("IndexedDB error: {text}"))
        }
    }

    fn js(e: JsValue) -> Self {
        StoreError::new(crate::socket::describe(&e))
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
        Some(e) if e.message().is_empty() => StoreError::new(e.name()),
        Some(e) => StoreError::new(format!("{}: {}", e.name(), e.message())),
        None => StoreError("the transaction was aborted".into()),
    })
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
                return Err(StoreError(format!(
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
        let tx = self.db.transaction(&[FILES, MANIFESTS, REFS], TransactionMode::ReadOnly)?;
        let Some(version) = version_of(tx.object_store(REFS)?.get(key(asset.as_str()))?.await?) else {
            return Ok(None);
        };
        let manifest = tx.object_store(MANIFESTS)?.get(key(&version.to_hex()))?;
        let file = tx.object_store(FILES)?.get(key(&version.to_hex()))?;
        let Some(manifest) = manifest.await?.and_then(|b| decode_manifest(&b, &version)) else {
            return Ok(None);
        };
        Ok(Some((manifest, file.await?.and_then(|b| b.dyn_into().ok()))))
    }

    /// Committed manifests of assets other than `asset`, at most `limit`.
    pub async fn others(&self, asset: &AssetPath, limit: usize) -> Result<Vec<Manifest>> {
        let tx = self.db.transaction(&[MANIFESTS, REFS], TransactionMode::ReadOnly)?;
        let refs = tx.object_store(REFS)?;
        let keys = refs.get_all_keys(None, None)?.await?;
        let values = refs.get_all(None, None)?.await?;
        let manifests = tx.object_store(MANIFESTS)?;
        let mut out = Vec::new();
        for (k, value) in keys.iter().zip(values) {
            if out.len() >= limit || k.as_string().as_deref() == Some(asset.as_str()) {
                continue;
            }
            let Some(version) = version_of(Some(value)) else { continue };
            if let Some(bytes) = manifests.get(key(&version.to_hex()))?.await?
                && let Some(m) = decode_manifest(&bytes, &version)
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The committed file of `manifest`, checked against its length and SHA-256. `Err` inside
    /// names the chunks found missing or damaged (all of them if the file is gone).
    pub async fn file(&self, manifest: &Manifest) -> Result<FileRead> {
        let tx = self.db.transaction(&[FILES], TransactionMode::ReadOnly)?;
        let blob = tx.object_store(FILES)?.get(key(&manifest.version().to_hex()))?.await?;
        Store::check(manifest, blob.and_then(|b| b.dyn_into().ok())).await
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
    pub async fn chunks(&self, ids: &[ChunkId], sources: &[&Manifest]) -> Result<Vec<(ChunkId, Vec<u8>)>> {
        let wanted: HashSet<ChunkId> = ids.iter().copied().collect();
        // Per source file, the wanted chunks it holds: (offset, len, id), first source first.
        let mut located = HashSet::new();
        let mut per_source: Vec<(VersionId, Vec<Range>)> = Vec::new();
        for m in sources {
            let ranges: Vec<_> = m
                .offsets()
                .filter(|(_, c)| wanted.contains(&c.id) && located.insert(c.id))
                .map(|(at, c)| (at, c.len as usize, c.id))
                .collect();
            if !ranges.is_empty() {
                per_source.push((m.version(), ranges));
            }
        }
        let tx = self.db.transaction(&[FILES, CHUNKS], TransactionMode::ReadOnly)?;
        let (files, chunks) = (tx.object_store(FILES)?, tx.object_store(CHUNKS)?);
        // Issue every read before awaiting any, so the transaction has them all queued.
        let blobs = per_source
            .iter()
            .map(|(v, _)| files.get(key(&v.to_hex())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let loose: Vec<ChunkId> = ids.iter().filter(|id| !located.contains(id)).copied().collect();
        let records = loose
            .iter()
            .map(|id| chunks.get(key(&id.to_hex())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        let mut reads = Vec::new();
        for ((_, ranges), blob) in per_source.into_iter().zip(blobs) {
            if let Some(blob) = blob.await?.and_then(|b| b.dyn_into::<Blob>().ok()) {
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

    /// The assets with a committed version.
    pub async fn assets(&self) -> Result<Vec<AssetPath>> {
        let tx = self.db.transaction(&[REFS], TransactionMode::ReadOnly)?;
        let keys = tx.object_store(REFS)?.get_all_keys(None, None)?.await?;
        Ok(keys.iter().filter_map(|k| AssetPath::new(&k.as_string()?).ok()).collect())
    }

    /// Deletes `asset` (it is gone from the server): its pointer, file and manifest, in one
    /// transaction.
    pub async fn remove(&self, asset: &AssetPath) -> Result<()> {
        let tx = self.db.transaction(&[FILES, MANIFESTS, REFS], TransactionMode::ReadWrite)?;
        let refs = tx.object_store(REFS)?;
        if let Some(version) = version_of(refs.get(key(asset.as_str()))?.await?) {
            delete_version(&tx, &version)?;
        }
        refs.delete(key(asset.as_str()))?;
        finish(tx).await
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
        let tx = self.db.transaction(&[FILES, MANIFESTS, REFS], TransactionMode::ReadWrite)?;
        let previous = stage(&tx, synced).await?;
        let (version, asset) = (key(&synced.version.to_hex()), key(synced.manifest.path.as_str()));
        tx.object_store(REFS)?.put(&version, Some(&asset))?;
        if let Some(previous) = previous {
            delete_version(&tx, &previous)?;
        }
        finish(tx).await
    }

    /// The committed copy of `asset`, checked against its SHA-256; `None` if there is none.
    /// A damaged copy is an error, never wrong bytes.
    pub async fn read(&self, asset: &AssetPath) -> Result<Option<Uint8Array>> {
        let Some(manifest) = self.current(asset).await? else { return Ok(None) };
        match self.file(&manifest).await? {
            Ok(data) => Ok(Some(data)),
            Err(_) => Err(StoreError(format!("cached copy of {asset} is damaged; the next sync repairs it"))),
        }
    }

    /// Deletes, in one transaction, the files and manifests of versions no asset points to and
    /// the chunk records kept from interrupted transfers.
    pub async fn gc(&self) -> Result<GcReport> {
        let tx = self.db.transaction(&ALL, TransactionMode::ReadWrite)?;
        let live: HashSet<String> = tx
            .object_store(REFS)?
            .get_all(None, None)?
            .await?
            .into_iter()
            .filter_map(|v| version_of(Some(v)).map(|v| v.to_hex()))
            .collect();
        let mut report = GcReport::default();
        let manifests = tx.object_store(MANIFESTS)?;
        for k in manifests.get_all_keys(None, None)?.await? {
            if !k.as_string().is_some_and(|k| live.contains(&k)) {
                manifests.delete(k)?;
            }
        }
        let files = tx.object_store(FILES)?;
        for k in files.get_all_keys(None, None)?.await? {
            if !k.as_string().is_some_and(|k| live.contains(&k)) {
                if let Some(blob) = files.get(k.clone())?.await?.and_then(|b| b.dyn_into::<Blob>().ok()) {
                    report.bytes_freed += blob.size() as u64;
                }
                files.delete(k)?;
                report.versions_deleted += 1;
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

/// The first half of a commit in `tx`: writes the file and the manifest of `synced`, and returns
/// the asset's current version if it is another one (which the commit then replaces).
async fn stage(tx: &Transaction, synced: &Synced) -> Result<Option<VersionId>> {
    let file = blob(&synced.data)?;
    let asset = key(synced.manifest.path.as_str());
    let previous = version_of(tx.object_store(REFS)?.get(asset)?.await?).filter(|v| *v != synced.version);
    let version = key(&synced.version.to_hex());
    tx.object_store(FILES)?.put(&file, Some(&version))?;
    let manifest = Uint8Array::from(synced.manifest.canonical_bytes().as_slice());
    tx.object_store(MANIFESTS)?.put(&manifest.into(), Some(&version))?;
    Ok(previous)
}

/// Deletes the file and the manifest of `version` in `tx`.
fn delete_version(tx: &Transaction, version: &VersionId) -> Result<()> {
    tx.object_store(FILES)?.delete(key(&version.to_hex()))?;
    tx.object_store(MANIFESTS)?.delete(key(&version.to_hex()))?;
    Ok(())
}

/// Where a chunk lies in a file: (offset, len, id).
type Range = (usize, usize, ChunkId);

/// Adjacent ranges of one file, read with one slice: (start, end, the ranges inside).
type Run = (usize, usize, Vec<Range>);

/// Groups the `ranges` of one file into runs.
fn runs(mut ranges: Vec<Range>) -> Vec<Run> {
    ranges.sort_unstable_by_key(|r| r.0);
    let mut out: Vec<Run> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some((_, end, inside)) if r.0 <= *end + MAX_GAP => {
                *end = (*end).max(r.0 + r.1);
                inside.push(r);
            }
            _ => out.push((r.0, r.0 + r.1, vec![r])),
        }
    }
    out
}

fn slice(blob: &Blob, start: usize, end: usize) -> JsFuture {
    let part = blob.slice_with_f64_and_f64(start as f64, end as f64).expect("slice of a stored Blob");
    JsFuture::from(part.array_buffer())
}

async fn read_blob(blob: &Blob) -> Result<ArrayBuffer> {
    Ok(JsFuture::from(blob.array_buffer()).await.map_err(StoreError::js)?.unchecked_into())
}

/// A `Blob` holding a copy of `data`, copied once: straight out of WASM memory, through a view
/// that lives only until the constructor has copied it (nothing can allocate in between).
fn blob(data: &[u8]) -> Result<JsValue> {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let view = Uint8Array::new_with_byte_offset_and_length(
        &memory.buffer(),
        data.as_ptr() as u32,
        data.len() as u32,
    );
    Ok(Blob::new_with_u8_array_sequence(&Array::of1(&view)).map_err(StoreError::js)?.into())
}

fn put_chunks(store: &ObjectStore, chunks: &[VerifiedChunk]) -> Result<()> {
    for chunk in chunks {
        store.put(&Uint8Array::from(chunk.bytes()).into(), Some(&key(&chunk.id().to_hex())))?;
    }
    Ok(())
}

fn key(text: &str) -> JsValue {
    JsValue::from_str(text)
}

fn version_of(value: Option<JsValue>) -> Option<VersionId> {
    value?.as_string().and_then(|v| Hash::from_hex(&v).ok())
}

fn bytes_of(value: &JsValue) -> Vec<u8> {
    value.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec).unwrap_or_default()
}

fn decode_manifest(value: &JsValue, version: &VersionId) -> Option<Manifest> {
    let bytes = bytes_of(value);
    (Hash::of(&bytes) == *version).then(|| Manifest::decode_canonical(&bytes).ok()).flatten()
}

#[cfg(test)]
mod tests;
