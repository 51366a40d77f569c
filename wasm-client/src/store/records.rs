//! How values lie in the object stores, and the `Blob` reads and writes of files.

use assetsync_protocol::{ChunkId, Hash, Manifest, Synced, VerifiedChunk, VersionId};
use idb::{ObjectStore, Transaction};
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::Blob;

use super::{FILES, MANIFESTS, MAX_GAP, REFS, Result, StoreError};

/// A change to commit: a verified file (its bytes already in a `Blob`, out of WASM memory), or
/// the removal of an asset the server no longer lists.
pub enum Staged {
    /// A verified version of an asset.
    File {
        /// The asset.
        asset: String,
        /// Its version.
        version: VersionId,
        /// The file (see [`file_value`]), and its length.
        file: JsValue,
        len: usize,
        /// The manifest's canonical bytes.
        manifest: Uint8Array,
    },
    /// An asset to delete.
    Removal(String),
}

impl Staged {
    /// The commit of `synced`.
    pub fn file(synced: &Synced) -> Result<Self> {
        Ok(Staged::File {
            asset: synced.manifest.path.as_str().to_owned(),
            version: synced.version,
            file: file_value(&synced.data)?,
            len: synced.data.len(),
            manifest: Uint8Array::from(synced.manifest.canonical_bytes().as_slice()),
        })
    }

    /// Bytes held until the commit.
    pub fn len(&self) -> usize {
        match self {
            Staged::File { len, manifest, .. } => len + manifest.length() as usize,
            Staged::Removal(_) => 0,
        }
    }

    /// The asset changed.
    pub(super) fn asset(&self) -> &str {
        match self {
            Staged::File { asset, .. } | Staged::Removal(asset) => asset,
        }
    }

    /// Applies the change in `tx`, where the asset's committed version is `previous`: the file,
    /// its manifest and its pointer, and the deletion of the previous version (or of the asset).
    pub(super) fn apply(&self, tx: &Transaction, previous: Option<VersionId>) -> Result<()> {
        let asset = self.asset();
        let refs = tx.object_store(REFS)?;
        match self {
            Staged::File { version, file, manifest, .. } => {
                let id = key(&version.to_hex());
                tx.object_store(FILES)?.put(file, Some(&id))?;
                tx.object_store(MANIFESTS)?.put(manifest, Some(&id))?;
                refs.put(&id, Some(&key(asset)))?;
                if let Some(previous) = previous.filter(|p| p != version) {
                    delete_version(tx, &previous)?;
                }
            }
            Staged::Removal(_) => {
                if let Some(previous) = previous {
                    delete_version(tx, &previous)?;
                }
                refs.delete(key(asset))?;
            }
        }
        Ok(())
    }
}

/// Deletes the file and the manifest of `version` in `tx`.
pub(super) fn delete_version(tx: &Transaction, version: &VersionId) -> Result<()> {
    tx.object_store(FILES)?.delete(key(&version.to_hex()))?;
    tx.object_store(MANIFESTS)?.delete(key(&version.to_hex()))?;
    Ok(())
}

/// Where a chunk lies in a file: (offset, len, id).
pub(super) type Range = (usize, usize, ChunkId);

/// Adjacent ranges of one file, read with one slice: (start, end, the ranges inside).
pub(super) type Run = (usize, usize, Vec<Range>);

/// Groups the `ranges` of one file into runs.
pub(super) fn runs(mut ranges: Vec<Range>) -> Vec<Run> {
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

pub(super) fn slice(blob: &Blob, start: usize, end: usize) -> JsFuture {
    let part = blob.slice_with_f64_and_f64(start as f64, end as f64).expect("slice of a stored Blob");
    JsFuture::from(part.array_buffer())
}

pub(super) async fn read_blob(blob: &Blob) -> Result<ArrayBuffer> {
    Ok(JsFuture::from(blob.array_buffer()).await.map_err(StoreError::js)?.unchecked_into())
}

/// A `Blob` holding a copy of `data`, copied once: straight out of WASM memory, through a view
/// that lives only until the constructor has copied it (nothing can allocate in between).
pub(super) fn blob(data: &[u8]) -> Result<JsValue> {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let view = Uint8Array::new_with_byte_offset_and_length(
        &memory.buffer(),
        data.as_ptr() as u32,
        data.len() as u32,
    );
    Ok(Blob::new_with_u8_array_sequence(&Array::of1(&view)).map_err(StoreError::js)?.into())
}

/// Files under this many bytes are stored as a `Uint8Array` rather than a `Blob`: each `Blob`
/// costs the browser a round trip to its blob registry (about half a millisecond), which for a
/// folder of thousands of small files took longer than everything else.
const SMALL_FILE: usize = 64 << 10;

/// How a committed file is stored: a `Blob` (which Chromium keeps as a file of its own), or
/// for a small one, its bytes.
pub(super) fn file_value(data: &[u8]) -> Result<JsValue> {
    match data.len() < SMALL_FILE {
        true => Ok(Uint8Array::from(data).into()),
        false => blob(data),
    }
}

/// A stored file as a `Blob`, however it was stored (see [`file_value`]).
pub(super) fn as_blob(value: JsValue) -> Option<Blob> {
    match value.dyn_into::<Blob>() {
        Ok(blob) => Some(blob),
        Err(value) => {
            let bytes = value.dyn_into::<Uint8Array>().ok()?;
            Blob::new_with_u8_array_sequence(&Array::of1(&bytes)).ok()
        }
    }
}

pub(super) fn put_chunks(store: &ObjectStore, chunks: &[VerifiedChunk]) -> Result<()> {
    for chunk in chunks {
        store.put(&Uint8Array::from(chunk.bytes()).into(), Some(&key(&chunk.id().to_hex())))?;
    }
    Ok(())
}

pub(super) fn key(text: &str) -> JsValue {
    JsValue::from_str(text)
}

pub(super) fn version_of(value: Option<JsValue>) -> Option<VersionId> {
    value?.as_string().and_then(|v| Hash::from_hex(&v).ok())
}

pub(super) fn bytes_of(value: &JsValue) -> Vec<u8> {
    value.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec).unwrap_or_default()
}

pub(super) fn decode_manifest(value: &JsValue, version: &VersionId) -> Option<Manifest> {
    let bytes = bytes_of(value);
    (Hash::of(&bytes) == *version).then(|| Manifest::decode_canonical(&bytes).ok()).flatten()
}
