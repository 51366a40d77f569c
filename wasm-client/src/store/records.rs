//! How values lie in the object stores, and the `Blob` reads and writes of files.

use std::rc::Rc;

use assetsync_protocol::{Hash, Manifest, Synced, VerifiedChunk, VersionId};
use idb::request::futures::GetStoreRequestFuture;
use idb::{ObjectStore, Transaction};
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::Blob;

use super::index::{Entry, Place, pack_key};
use super::{FILES, MANIFESTS, MAX_GAP, PACKS, Result, StoreError};

/// A change to commit: a verified file, or the removal of an asset the server no longer lists.
pub enum Staged {
    /// A verified version of an asset.
    File {
        /// The asset.
        asset: String,
        /// Its version.
        version: VersionId,
        file: Body,
        /// The manifest's canonical bytes.
        manifest: Vec<u8>,
    },
    /// An asset to delete.
    Removal(String),
}

/// A staged file's bytes: a large one already in a `Blob`, out of WASM memory; a small one kept
/// here until they are written (with the others, as one pack) in one copy, shared with the
/// file's result (see [`Staged::bytes`]); or where they were written ahead of the commit (see
/// [`super::Store::write_ahead`]).
pub enum Body {
    Blob(JsValue, usize),
    Bytes(Rc<Vec<u8>>),
    Written(Place),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Blob(_, len) => *len,
            Body::Bytes(bytes) => bytes.len(),
            Body::Written(_) => 0,
        }
    }
}

impl Staged {
    /// The commit of `synced`.
    pub fn file(synced: &Synced) -> Result<Self> {
        let file = match synced.data.len() < SMALL_FILE {
            true => Body::Bytes(Rc::new(synced.data.clone())),
            false => Body::Blob(blob(&synced.data)?, synced.data.len()),
        };
        Ok(Staged::File {
            asset: synced.manifest.path.as_str().to_owned(),
            version: synced.version,
            file,
            manifest: synced.manifest.canonical_bytes(),
        })
    }

    /// Bytes held until they are written.
    pub fn len(&self) -> usize {
        match self {
            Staged::File { file, manifest, .. } => file.len() + manifest.len(),
            Staged::Removal(_) => 0,
        }
    }

    /// Its bytes, if it is the file of `version` and they are held here.
    pub fn bytes(&self, of: VersionId) -> Option<Rc<Vec<u8>>> {
        match self {
            Staged::File { version, file: Body::Bytes(bytes), .. } if *version == of => {
                Some(Rc::clone(bytes))
            }
            _ => None,
        }
    }

    /// `len` bytes of its file from `at`, if it is still held here (not written ahead).
    pub async fn read(&self, at: usize, len: usize) -> Result<Option<Vec<u8>>> {
        let Staged::File { file, .. } = self else { return Ok(None) };
        Ok(match file {
            Body::Bytes(bytes) => bytes.get(at..at + len).map(<[u8]>::to_vec),
            Body::Blob(blob, _) => {
                let part = slice(blob.unchecked_ref(), at, at + len).await.map_err(StoreError::js)?;
                Some(Uint8Array::new(&part).to_vec())
            }
            Body::Written(_) => None,
        })
    }

    /// Its version and place, if its file was written ahead of the commit.
    pub(super) fn written(&self) -> Option<Entry> {
        match self {
            Staged::File { version, file: Body::Written(place), .. } => {
                Some(Entry { version: *version, place: *place })
            }
            _ => None,
        }
    }

    /// The asset changed.
    pub(super) fn asset(&self) -> &str {
        match self {
            Staged::File { asset, .. } | Staged::Removal(asset) => asset,
        }
    }
}

/// Writes the files of `changes` in `tx` not written yet: small ones, when there are several, as
/// one pack (their manifests back to back, then their files, so that a folder's manifests are
/// one short read), the others as a file and a manifest record each. Their places, in order
/// (`None` for a removal).
pub(super) fn write_files(tx: &Transaction, changes: &[Staged]) -> Result<Vec<Option<Place>>> {
    let small = |c: &Staged| matches!(c, Staged::File { file: Body::Bytes(_), .. });
    let pack_them = changes.iter().filter(|c| small(c)).nth(1).is_some();
    let sizes = changes.iter().filter(|c| pack_them && small(c)).map(|c| match c {
        Staged::File { file, manifest, .. } => (manifest.len(), file.len()),
        Staged::Removal(_) => (0, 0),
    });
    let (manifests_len, files_len) = sizes.fold((0, 0), |(m, f), (dm, df)| (m + dm, f + df));
    // The pack's manifests, then its files (left where they are until the Blob copies them).
    let mut pack = Vec::with_capacity(if pack_them { manifests_len } else { 0 });
    let (mut files, mut at) = (Vec::new(), manifests_len);
    let mut names = Vec::new();
    let mut places = Vec::with_capacity(changes.len());
    // The places of the files packed here (not of those written ahead into earlier packs).
    let mut packed = Vec::new();
    for change in changes {
        let Staged::File { version, file, manifest, .. } = change else {
            places.push(None);
            continue;
        };
        match file {
            Body::Written(place) => places.push(Some(*place)),
            Body::Bytes(bytes) if pack_them => {
                let manifest_at = pack.len() as u64;
                pack.extend_from_slice(manifest);
                files.push(bytes.as_slice());
                names.extend_from_slice(&version.0);
                let (manifest_len, len) = (manifest.len() as u64, bytes.len() as u64);
                // The pack's id is filled in below, once every file in it is known.
                packed.push(places.len());
                places.push(Some(Place::Packed { pack: 0, manifest_at, manifest_len, at: at as u64, len }));
                at += bytes.len();
            }
            _ => {
                let id = key(&version.to_hex());
                let value = match file {
                    Body::Blob(blob, _) => blob.clone(),
                    Body::Bytes(bytes) => Uint8Array::from(bytes.as_slice()).into(),
                    Body::Written(_) => unreachable!("matched above"),
                };
                tx.object_store(FILES)?.put(&value, Some(&id))?;
                tx.object_store(MANIFESTS)?.put(&Uint8Array::from(manifest.as_slice()), Some(&id))?;
                places.push(Some(Place::Own));
            }
        }
    }
    if !pack_them {
        return Ok(places);
    }
    debug_assert_eq!(at, manifests_len + files_len);
    // Named by what it holds: the same files committed again make the same pack.
    let id = u64::from_be_bytes(Hash::of(&names).0[..8].try_into().expect("8 bytes"));
    let parts: Vec<&[u8]> = std::iter::once(pack.as_slice()).chain(files).collect();
    tx.object_store(PACKS)?.put(&blob_of(&parts)?, Some(&pack_key(id)))?;
    for i in packed {
        if let Some(Place::Packed { pack, .. }) = &mut places[i] {
            *pack = id;
        }
    }
    Ok(places)
}

/// A file asked of a transaction: see [`request_file`].
pub(super) struct FileRequest {
    request: GetStoreRequestFuture,
    /// Where the file lies in its pack; `None` for a file of its own.
    range: Option<(usize, usize)>,
}

impl FileRequest {
    /// The file's `Blob` (a slice of its pack for a packed one), with nothing read yet.
    pub async fn blob(self) -> Result<Option<Blob>> {
        let blob = self.request.await?.and_then(as_blob);
        Ok(match self.range {
            None => blob,
            Some((start, end)) => blob
                .map(|b| b.slice_with_f64_and_f64(start as f64, end as f64).expect("slice of a stored Blob")),
        })
    }
}

/// Asks `tx` for the file of `entry`, without waiting.
pub(super) fn request_file(tx: &Transaction, entry: &Entry) -> Result<FileRequest> {
    let (store, id) = record_of(entry);
    let request = listen(tx.object_store(store)?.get(id)?);
    Ok(FileRequest { request, range: entry.place.file_range() })
}

/// The object store and key of the record that holds the file of `entry`: its own, or its pack.
pub(super) fn record_of(entry: &Entry) -> (&'static str, JsValue) {
    match entry.place {
        Place::Own => (FILES, key(&entry.version.to_hex())),
        Place::Packed { pack, .. } => (PACKS, pack_key(pack)),
    }
}

/// A request's future, listening from now on. The idb crate listens for a request's result only
/// once it is first awaited, and a result that arrives before is lost: a request awaited after
/// other waits (a `Blob` read) must be turned into its future when it is made.
pub(super) fn listen<R: std::future::IntoFuture>(request: R) -> R::IntoFuture {
    request.into_future()
}

/// Deletes the file and the manifest of `version` in `tx`.
pub(super) fn delete_version(tx: &Transaction, version: &VersionId) -> Result<()> {
    tx.object_store(FILES)?.delete(key(&version.to_hex()))?;
    tx.object_store(MANIFESTS)?.delete(key(&version.to_hex()))?;
    Ok(())
}

/// Where something lies in a file: (offset, len, what it is).
pub(super) type Range<T> = (usize, usize, T);

/// Adjacent ranges of one file, read with one slice: (start, end, the ranges inside).
pub(super) type Run<T> = (usize, usize, Vec<Range<T>>);

/// Groups the `ranges` of one file into runs.
pub(super) fn runs<T>(mut ranges: Vec<Range<T>>) -> Vec<Run<T>> {
    ranges.sort_unstable_by_key(|r| r.0);
    let mut out: Vec<Run<T>> = Vec::new();
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

/// A `Blob` holding a copy of `data`, copied once (see [`blob_of`]).
pub(super) fn blob(data: &[u8]) -> Result<JsValue> {
    blob_of(&[data])
}

/// A `Blob` of `parts` back to back, copied once: straight out of WASM memory, through views
/// that live only until the constructor has copied them (nothing can allocate in WASM memory in
/// between: the views and their array are JS objects).
pub(super) fn blob_of(parts: &[&[u8]]) -> Result<JsValue> {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let buffer = memory.buffer();
    let views = Array::new();
    for part in parts {
        views.push(&Uint8Array::new_with_byte_offset_and_length(
            &buffer,
            part.as_ptr() as u32,
            part.len() as u32,
        ));
    }
    Ok(Blob::new_with_u8_array_sequence(&views).map_err(StoreError::js)?.into())
}

/// Files under this many bytes are staged in WASM memory and stored in a pack (several of them)
/// or as a `Uint8Array` (one alone) rather than as a `Blob` of their own: each `Blob` costs the
/// browser a round trip to its blob registry (about half a millisecond), and each value handed
/// to JS a copy, which for a folder of thousands of small files took longer than everything else.
const SMALL_FILE: usize = 64 << 10;

/// A stored file as a `Blob`, however it was stored (a `Blob`, or a small one's bytes).
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

pub(super) fn decode_manifest(bytes: &[u8], version: &VersionId) -> Option<Manifest> {
    (Hash::of(bytes) == *version).then(|| Manifest::decode_canonical(bytes).ok()).flatten()
}
