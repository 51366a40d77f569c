//! The pointer table: each asset's committed version and where its file lies, in [`SHARDS`]
//! records chosen by a hash of the asset's path.
//!
//! Chromium costs 60-140 µs per IndexedDB record written, whatever its size: 9,000 files' pointers
//! as a record each took half a second to commit, and reading them back a tenth of a second. As
//! shards, a folder of any size is at most [`SHARDS`] records to read or commit, and a single
//! asset's commit rewrites one.
//!
//! A shard is a varint count, then per entry (sorted by path): the path's length and bytes, the
//! version's 32 bytes, and its place: `0` (on its own), or `1` and the pack, the manifest's
//! offset and length, and the file's offset and length (in a pack).

use std::collections::{BTreeMap, HashMap, HashSet};

use assetsync_protocol::varint::{get, put};
use assetsync_protocol::{Hash, VersionId};
use idb::Transaction;
use js_sys::Uint8Array;
use wasm_bindgen::JsValue;

use super::{INDEX, Result, bytes_of, key};

/// How many records the pointer table is split into.
pub const SHARDS: u8 = 64;
/// Past this many shards to read, one `getAll` reads them all.
const READ_ALL_PAST: usize = 8;

/// Where a committed file lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// In `files` and `manifests`, keyed by its version.
    Own,
    /// In `packs` under `pack`: its manifest's canonical bytes at `manifest_at`, its file at `at`.
    Packed { pack: u64, manifest_at: u64, manifest_len: u64, at: u64, len: u64 },
}

impl Place {
    /// Where the file's bytes start and end in its pack.
    pub fn file_range(&self) -> Option<(usize, usize)> {
        match *self {
            Place::Own => None,
            Place::Packed { at, len, .. } => Some((at as usize, (at + len) as usize)),
        }
    }
}

/// An asset's committed version and its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub version: VersionId,
    pub place: Place,
}

pub(super) type Shard = BTreeMap<String, Entry>;

/// The shard that holds `asset`: its path's 32-bit FNV-1a hash (cheap, and the same in every
/// release: stores keep it), modulo [`SHARDS`].
fn shard_of(asset: &str) -> u8 {
    let hash = asset.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (hash % u32::from(SHARDS)) as u8
}

/// A shard's key in `index`: its number in two hex digits.
fn shard_key(shard: u8) -> JsValue {
    key(&format!("{shard:02x}"))
}

/// A pack's key in `packs`.
pub fn pack_key(pack: u64) -> JsValue {
    key(&format!("{pack:016x}"))
}

/// The shards read in one transaction, and which of them changed.
#[derive(Default)]
pub struct Index {
    shards: HashMap<u8, Shard>,
    /// Whether every shard was read (see [`Index::read_all`]).
    complete: bool,
    changed: HashSet<u8>,
}

impl Index {
    /// Reads the shards that hold `assets`.
    pub async fn read<'a>(tx: &Transaction, assets: impl IntoIterator<Item = &'a str>) -> Result<Index> {
        let keys: HashSet<u8> = assets.into_iter().map(shard_of).collect();
        if keys.len() > READ_ALL_PAST {
            return Index::read_all(tx).await;
        }
        let store = tx.object_store(INDEX)?;
        let requests = keys
            .into_iter()
            .map(|k| Ok((store.get(shard_key(k))?, k)))
            .collect::<std::result::Result<Vec<_>, idb::Error>>()?;
        let mut index = Index::default();
        for (request, k) in requests {
            let shard = request.await?.map(|v| decode(&bytes_of(&v))).unwrap_or_default();
            index.shards.insert(k, shard);
        }
        Ok(index)
    }

    /// Reads every shard.
    pub async fn read_all(tx: &Transaction) -> Result<Index> {
        let store = tx.object_store(INDEX)?;
        let (keys, values) = (store.get_all_keys(None, None)?, store.get_all(None, None)?);
        let (keys, values) = (keys.await?, values.await?);
        let shards = keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| Some((u8::from_str_radix(&k.as_string()?, 16).ok()?, decode(&bytes_of(&v)))))
            .collect();
        Ok(Index { shards, complete: true, changed: HashSet::new() })
    }

    /// Whether every shard was read.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn get(&self, asset: &str) -> Option<Entry> {
        self.shards.get(&shard_of(asset))?.get(asset).copied()
    }

    /// Points `asset` at `entry`; the entry it replaces, if any.
    pub fn set(&mut self, asset: &str, entry: Entry) -> Option<Entry> {
        let k = shard_of(asset);
        let previous = self.shards.entry(k).or_default().insert(asset.to_owned(), entry);
        self.changed.insert(k);
        previous
    }

    /// Drops `asset`; its entry, if any.
    pub fn remove(&mut self, asset: &str) -> Option<Entry> {
        let k = shard_of(asset);
        let previous = self.shards.get_mut(&k)?.remove(asset);
        if previous.is_some() {
            self.changed.insert(k);
        }
        previous
    }

    /// Every entry read.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.shards.values().flat_map(|s| s.iter().map(|(a, e)| (a.as_str(), e)))
    }

    /// The packs that entries read point into.
    pub fn packs(&self) -> HashSet<u64> {
        self.iter()
            .filter_map(|(_, e)| match e.place {
                Place::Packed { pack, .. } => Some(pack),
                Place::Own => None,
            })
            .collect()
    }

    /// Writes the changed shards in `tx` (deleting those left empty).
    pub fn write(&self, tx: &Transaction) -> Result<()> {
        let store = tx.object_store(INDEX)?;
        for k in &self.changed {
            match self.shards.get(k).filter(|s| !s.is_empty()) {
                Some(shard) => {
                    store.put(&Uint8Array::from(encode(shard).as_slice()).into(), Some(&shard_key(*k)))?;
                }
                None => {
                    store.delete(shard_key(*k))?;
                }
            }
        }
        Ok(())
    }
}

pub(super) fn encode(shard: &Shard) -> Vec<u8> {
    let mut out = Vec::with_capacity(shard.len() * 80);
    put(&mut out, shard.len() as u64);
    for (asset, entry) in shard {
        put(&mut out, asset.len() as u64);
        out.extend_from_slice(asset.as_bytes());
        out.extend_from_slice(&entry.version.0);
        match entry.place {
            Place::Own => out.push(0),
            Place::Packed { pack, manifest_at, manifest_len, at, len } => {
                out.push(1);
                for n in [pack, manifest_at, manifest_len, at, len] {
                    put(&mut out, n);
                }
            }
        }
    }
    out
}

/// A shard's entries. One that does not decode (damaged behind the store's back) counts as
/// empty: its assets are no longer cached, and their next sync fetches them.
pub(super) fn decode(bytes: &[u8]) -> Shard {
    try_decode(bytes).unwrap_or_default()
}

fn try_decode(mut rest: &[u8]) -> Option<Shard> {
    let mut shard = Shard::new();
    for _ in 0..get(&mut rest)? {
        let len = usize::try_from(get(&mut rest)?).ok()?;
        let (asset, tail) = rest.split_at_checked(len)?;
        let (version, tail) = tail.split_at_checked(32)?;
        let (&kind, tail) = tail.split_first()?;
        rest = tail;
        let place = match kind {
            0 => Place::Own,
            1 => Place::Packed {
                pack: get(&mut rest)?,
                manifest_at: get(&mut rest)?,
                manifest_len: get(&mut rest)?,
                at: get(&mut rest)?,
                len: get(&mut rest)?,
            },
            _ => return None,
        };
        let version = Hash(version.try_into().ok()?);
        shard.insert(String::from_utf8(asset.to_vec()).ok()?, Entry { version, place });
    }
    rest.is_empty().then_some(shard)
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::*;

    #[wasm_bindgen_test]
    fn a_shard_round_trips_and_a_cut_one_is_refused() {
        let mut shard = Shard::new();
        shard.insert("a.js".into(), Entry { version: Hash::of(b"a"), place: Place::Own });
        let place =
            Place::Packed { pack: u64::MAX, manifest_at: 7, manifest_len: 120, at: 1 << 40, len: 3000 };
        shard.insert("dist/ü.js".into(), Entry { version: Hash::of(b"b"), place });
        let bytes = encode(&shard);
        assert_eq!(try_decode(&bytes), Some(shard));
        for cut in 0..bytes.len() {
            assert_eq!(try_decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
