//! The IndexedDB store: chunks by id, manifests by version, and a pointer per asset.
//!
//! ```text
//! chunks     "<chunk id hex>"   -> Uint8Array      (content-addressed)
//! manifests  "<version hex>"    -> Uint8Array      (canonical manifest encoding)
//! refs       "<asset path>"     -> "<version hex>" (the committed version)
//! ```
//!
//! A commit writes the new chunks, the manifest and the pointer in **one** readwrite transaction
//! over all three stores, and makes sure in that same transaction that every chunk the manifest
//! lists is present. GC runs in one readwrite transaction over the same stores. IndexedDB runs
//! transactions with overlapping scopes one after the other, also across tabs, so a GC can never
//! interleave with a commit: a committed manifest always has all its chunks, and a chunk an
//! in-flight sync reused is either still there at its commit or written back by it.

use std::collections::{HashMap, HashSet};

use assetsync_protocol::{AssetPath, ChunkId, Hash, Manifest, Synced, VerifiedChunk, VersionId};
use idb::{Database, DatabaseEvent, Factory, ObjectStore, ObjectStoreParams, Transaction, TransactionMode};
use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::IdbTransaction;

const CHUNKS: &str = "chunks";
const MANIFESTS: &str = "manifests";
const REFS: &str = "refs";
const ALL: [&str; 3] = [CHUNKS, MANIFESTS, REFS];

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
        if text.contains("QuotaExceeded") || text.to_lowercase().contains("quota") {
            StoreError(format!("storage quota exceeded ({text})"))
        } else {
            StoreError(format!("IndexedDB error: {text}"))
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
        Some(e) if e.message().is_empty() => StoreError::new(e.name()),
        Some(e) => StoreError::new(format!("{}: {}", e.name(), e.message())),
        None => StoreError("the transaction was aborted".into()),
    })
}

type Result<T> = std::result::Result<T, StoreError>;

/// What [`Store::gc`] freed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub chunks_deleted: u32,
    pub bytes_freed: u64,
}

/// An open IndexedDB database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (creating on first use) the database `name`.
    pub async fn open(name: &str) -> Result<Store> {
        let factory = Factory::new()?;
        let mut request = factory.open(name, Some(1))?;
        request.on_upgrade_needed(|event| {
            let db = event.database().expect("upgrade event has a database");
            for store in ALL {
                if !db.store_names().iter().any(|s| s == store) {
                    db.create_object_store(store, ObjectStoreParams::new()).expect("create object store");
                }
            }
        });
        Ok(Store { db: request.await? })
    }

    /// Closes the connection once running transactions finish.
    pub fn close(&self) {
        self.db.close();
    }

    /// The committed manifest of `asset`, if present and intact.
    pub async fn current(&self, asset: &AssetPath) -> Result<Option<Manifest>> {
        let tx = self.db.transaction(&[MANIFESTS, REFS], TransactionMode::ReadOnly)?;
        let refs = tx.object_store(REFS)?;
        let Some(version) = refs.get(JsValue::from_str(asset.as_str()))?.await? else { return Ok(None) };
        let Some(version) = version.as_string().and_then(|v| Hash::from_hex(&v).ok()) else {
            return Ok(None);
        };
        let manifests = tx.object_store(MANIFESTS)?;
        let bytes = manifests.get(JsValue::from_str(&version.to_hex()))?.await?;
        Ok(bytes.and_then(|b| decode_manifest(&b, &version)))
    }

    /// Committed manifests of assets other than `asset`, at most `limit`.
    pub async fn others(&self, asset: &AssetPath, limit: usize) -> Result<Vec<Manifest>> {
        let tx = self.db.transaction(&[MANIFESTS, REFS], TransactionMode::ReadOnly)?;
        let refs = tx.object_store(REFS)?;
        let keys = refs.get_all_keys(None, None)?.await?;
        let values = refs.get_all(None, None)?.await?;
        let manifests = tx.object_store(MANIFESTS)?;
        let mut out = Vec::new();
        for (key, value) in keys.iter().zip(values.iter()) {
            if out.len() >= limit || key.as_string().as_deref() == Some(asset.as_str()) {
                continue;
            }
            let Some(version) = value.as_string().and_then(|v| Hash::from_hex(&v).ok()) else { continue };
            if let Some(bytes) = manifests.get(JsValue::from_str(&version.to_hex()))?.await?
                && let Some(m) = decode_manifest(&bytes, &version)
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Reads chunks as stored; missing ones are left out. They are not hashed one by one: the
    /// rebuilt file's SHA-256 covers them, and a damaged one is then named and [`Store::discard`]ed.
    pub async fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>> {
        let tx = self.db.transaction(&[CHUNKS], TransactionMode::ReadOnly)?;
        let store = tx.object_store(CHUNKS)?;
        // Issue every read before awaiting any, so the transaction has them all queued.
        let requests = ids
            .iter()
            .map(|id| store.get(JsValue::from_str(&id.to_hex())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, request) in ids.iter().zip(requests) {
            if let Some(value) = request.await? {
                out.push((*id, bytes_of(&value)));
            }
        }
        Ok(out)
    }

    /// Deletes chunks found damaged, so that the next sync fetches them again.
    pub async fn discard(&self, ids: &[ChunkId]) -> Result<()> {
        let tx = self.db.transaction(&[CHUNKS], TransactionMode::ReadWrite)?;
        let store = tx.object_store(CHUNKS)?;
        for id in ids {
            store.delete(JsValue::from_str(&id.to_hex()))?;
        }
        finish(tx).await?;
        Ok(())
    }

    /// The assets with a committed version.
    pub async fn assets(&self) -> Result<Vec<AssetPath>> {
        let tx = self.db.transaction(&[REFS], TransactionMode::ReadOnly)?;
        let keys = tx.object_store(REFS)?.get_all_keys(None, None)?.await?;
        Ok(keys.iter().filter_map(|k| AssetPath::new(&k.as_string()?).ok()).collect())
    }

    /// Drops `asset`'s pointer (it is gone from the server); its chunks become garbage for
    /// [`Store::gc`].
    pub async fn remove(&self, asset: &AssetPath) -> Result<()> {
        let tx = self.db.transaction(&[REFS], TransactionMode::ReadWrite)?;
        tx.object_store(REFS)?.delete(JsValue::from_str(asset.as_str()))?;
        finish(tx).await?;
        Ok(())
    }

    /// Stores chunks of a transfer that broke before its version could be committed, so that
    /// the resumed request lists them as held instead of fetching them again. Each is named by
    /// the hash of its bytes; until a commit references them they are garbage for [`Store::gc`].
    pub async fn keep(&self, received: &[VerifiedChunk]) -> Result<()> {
        if received.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction(&[CHUNKS], TransactionMode::ReadWrite)?;
        put_chunks(&tx.object_store(CHUNKS)?, received)?;
        finish(tx).await?;
        Ok(())
    }

    /// Commits a verified sync in one transaction: new chunks, any reused chunk that has vanished
    /// meanwhile (written back from the verified file), the manifest, then the pointer.
    pub async fn commit(&self, synced: &Synced) -> Result<()> {
        self.commit_inner(synced, false).await
    }

    async fn commit_inner(&self, synced: &Synced, abort_before_pointer: bool) -> Result<()> {
        let tx = self.db.transaction(&ALL, TransactionMode::ReadWrite)?;
        let chunks = tx.object_store(CHUNKS)?;
        let received: HashSet<ChunkId> = synced.received.iter().map(|c| c.id()).collect();
        put_chunks(&chunks, &synced.received)?;
        let mut reused = Vec::new();
        let mut seen = HashSet::new();
        for (offset, c) in synced.manifest.offsets() {
            if !received.contains(&c.id) && seen.insert(c.id) {
                let key = JsValue::from_str(&c.id.to_hex());
                reused.push((key.clone(), offset, c.len as usize, chunks.get_key(key)?));
            }
        }
        for (key, offset, len, present) in reused {
            if present.await?.is_none() {
                let bytes = Uint8Array::from(&synced.data[offset..offset + len]);
                chunks.put(&bytes.into(), Some(&key))?;
            }
        }
        let version = JsValue::from_str(&synced.version.to_hex());
        let manifest = Uint8Array::from(synced.manifest.canonical_bytes().as_slice());
        tx.object_store(MANIFESTS)?.put(&manifest.into(), Some(&version))?;
        if abort_before_pointer {
            tx.abort()?.await?;
            return Err(StoreError("commit aborted".into()));
        }
        tx.object_store(REFS)?.put(&version, Some(&JsValue::from_str(synced.manifest.path.as_str())))?;
        finish(tx).await
    }

    /// The committed copy of `asset`, rebuilt from chunks and verified; `None` if there is none.
    /// A damaged copy is an error (and its damaged chunks are discarded), never wrong bytes.
    pub async fn read(&self, asset: &AssetPath) -> Result<Option<Vec<u8>>> {
        let Some(manifest) = self.current(asset).await? else { return Ok(None) };
        match self.file(&manifest).await? {
            Ok(data) => Ok(Some(data)),
            Err(_) => Err(StoreError(format!("cached copy of {asset} is damaged; the next sync repairs it"))),
        }
    }

    /// Rebuilds the file of a committed `manifest` and checks its SHA-256. On failure, the inner
    /// `Err` names the missing or damaged chunks, which are discarded.
    pub async fn file(&self, manifest: &Manifest) -> Result<std::result::Result<Vec<u8>, Vec<ChunkId>>> {
        let ids: Vec<ChunkId> =
            manifest.chunks.iter().map(|c| c.id).collect::<HashSet<_>>().into_iter().collect();
        let chunks: HashMap<ChunkId, Vec<u8>> = self.chunks(&ids).await?.into_iter().collect();
        let lens: HashMap<ChunkId, usize> = manifest.chunks.iter().map(|c| (c.id, c.len as usize)).collect();
        let bad: Vec<ChunkId> =
            ids.iter().filter(|id| chunks.get(id).map(Vec::len) != Some(lens[id])).copied().collect();
        if !bad.is_empty() {
            self.discard(&bad).await?;
            return Ok(Err(bad));
        }
        let mut data = Vec::with_capacity(manifest.len as usize);
        for c in &manifest.chunks {
            data.extend_from_slice(&chunks[&c.id]);
        }
        if crate::digest::sha256(&data).await == manifest.sha256 {
            return Ok(Ok(data));
        }
        let damaged = manifest.damaged_chunks(&data);
        self.discard(&damaged).await?;
        Ok(Err(damaged))
    }

    /// Deletes chunks and manifests no committed version references, in one transaction.
    pub async fn gc(&self) -> Result<GcReport> {
        let tx = self.db.transaction(&ALL, TransactionMode::ReadWrite)?;
        let refs = tx.object_store(REFS)?.get_all(None, None)?.await?;
        let manifests = tx.object_store(MANIFESTS)?;
        let mut live_manifests = HashSet::new();
        let mut live_chunks = HashSet::new();
        for value in refs {
            let Some(version) = value.as_string().and_then(|v| Hash::from_hex(&v).ok()) else { continue };
            let bytes = manifests.get(JsValue::from_str(&version.to_hex()))?.await?;
            let manifest = bytes.and_then(|b| decode_manifest(&b, &version)).ok_or_else(|| {
                StoreError(format!("committed manifest {version} is missing or damaged; not collecting"))
            })?;
            live_manifests.insert(version.to_hex());
            live_chunks.extend(manifest.chunks.iter().map(|c| c.id.to_hex()));
        }
        let mut report = GcReport::default();
        for key in manifests.get_all_keys(None, None)?.await? {
            if !key.as_string().is_some_and(|k| live_manifests.contains(&k)) {
                manifests.delete(key)?;
            }
        }
        let chunks = tx.object_store(CHUNKS)?;
        for key in chunks.get_all_keys(None, None)?.await? {
            if !key.as_string().is_some_and(|k| live_chunks.contains(&k)) {
                if let Some(value) = chunks.get(key.clone())?.await? {
                    report.bytes_freed += u64::from(value.unchecked_ref::<Uint8Array>().byte_length());
                }
                chunks.delete(key)?;
                report.chunks_deleted += 1;
            }
        }
        finish(tx).await?;
        Ok(report)
    }
}

fn put_chunks(store: &ObjectStore, chunks: &[VerifiedChunk]) -> Result<()> {
    for chunk in chunks {
        store.put(&Uint8Array::from(chunk.bytes()).into(), Some(&JsValue::from_str(&chunk.id().to_hex())))?;
    }
    Ok(())
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
