//! The in-place upgrades of older stores. Nothing is fetched again.
//!
//! - Schema 1 kept every chunk as a record of its own: each committed version is rebuilt from its
//!   chunk records, verified, and written as one file; then the chunk records go.
//! - Schemas 1 and 2 kept a pointer record per asset in `refs`: they move to the sharded index
//!   in one transaction, their files staying where they are (each a file of its own).
//!
//! Safe across tabs: files are keyed by version, so two tabs upgrading at once write the same
//! bytes, a version whose chunks another tab has already cleared is found written by it, and
//! the pointers move in one transaction that leaves `refs` empty.

use std::collections::{HashMap, HashSet};

use assetsync_protocol::{AssetPath, ChunkId, VersionId};
use idb::TransactionMode;

use super::index::{Entry, Index, Place};
use super::{
    CHUNKS, FILES, INDEX, MANIFESTS, REFS, Result, Store, blob, bytes_of, decode_manifest, finish, key,
    version_of,
};

/// The pointer-table key that marks a store whose upgrade is not finished (set by the version
/// upgrade from schema 1; never an asset path, which has no control characters).
pub(super) const MARK: &str = "\u{0}upgrading from schema 1";

/// Upgrades what needs it; costs one count of the old pointer table on a store that is up to
/// date.
pub(super) async fn run(store: &Store) -> Result<()> {
    let tx = store.db.transaction(&[REFS], TransactionMode::ReadOnly)?;
    let refs = tx.object_store(REFS)?;
    if refs.count(None)?.await? == 0 {
        return Ok(());
    }
    if refs.get(key(MARK))?.await?.is_some() {
        whole_files(store).await?;
    }
    to_index(store).await
}

/// Rebuilds a schema-1 store's versions as whole files.
async fn whole_files(store: &Store) -> Result<()> {
    let pending = without_file(store).await?;
    let mut dropped = 0;
    for (asset, version) in &pending {
        let file = rebuild(store, version).await?;
        let tx = store.db.transaction(&[FILES, REFS], TransactionMode::ReadWrite)?;
        let (files, refs) = (tx.object_store(FILES)?, tx.object_store(REFS)?);
        let name = key(&version.to_hex());
        if files.get_key(name.clone())?.await?.is_none() {
            match file {
                Some(data) => {
                    files.put(&blob(&data)?, Some(&name))?;
                }
                // Damaged or incomplete: the asset is no longer cached, and its next sync is a
                // cold one. A pointer that moved on meanwhile is left alone.
                None if version_of(refs.get(key(asset.as_str()))?.await?) == Some(*version) => {
                    refs.delete(key(asset.as_str()))?;
                    dropped += 1;
                }
                None => {}
            }
        }
        finish(tx).await?;
    }
    let tx = store.db.transaction(&[CHUNKS, REFS], TransactionMode::ReadWrite)?;
    tx.object_store(CHUNKS)?.clear()?;
    tx.object_store(REFS)?.delete(key(MARK))?;
    finish(tx).await?;
    let note = format!(
        "assetsync: upgraded the store to whole files: {} versions kept, {dropped} damaged ones dropped",
        pending.len() - dropped
    );
    web_sys::console::info_1(&note.into());
    Ok(())
}

/// The committed versions that have no file yet, with their assets.
async fn without_file(store: &Store) -> Result<Vec<(AssetPath, VersionId)>> {
    let tx = store.db.transaction(&[FILES, REFS], TransactionMode::ReadOnly)?;
    let refs = tx.object_store(REFS)?;
    let assets = refs.get_all_keys(None, None)?.await?;
    let versions = refs.get_all(None, None)?.await?;
    let files: HashSet<String> = tx
        .object_store(FILES)?
        .get_all_keys(None, None)?
        .await?
        .iter()
        .filter_map(|k| k.as_string())
        .collect();
    Ok(assets
        .iter()
        .zip(versions)
        .filter_map(|(asset, version)| {
            let version = version_of(Some(version))?;
            let asset = AssetPath::new(&asset.as_string()?).ok()?;
            (!files.contains(&version.to_hex())).then_some((asset, version))
        })
        .collect())
}

/// `version`'s file rebuilt from its chunk records and verified; `None` if a chunk or the
/// manifest is missing or damaged.
async fn rebuild(store: &Store, version: &VersionId) -> Result<Option<Vec<u8>>> {
    let tx = store.db.transaction(&[MANIFESTS], TransactionMode::ReadOnly)?;
    let bytes = tx.object_store(MANIFESTS)?.get(key(&version.to_hex()))?.await?;
    let Some(manifest) = bytes.and_then(|b| decode_manifest(&bytes_of(&b), version)) else { return Ok(None) };
    let ids: Vec<ChunkId> =
        manifest.chunks.iter().map(|c| c.id).collect::<HashSet<_>>().into_iter().collect();
    let chunks: HashMap<ChunkId, Vec<u8>> = store.chunks(&ids, &[], &[]).await?.into_iter().collect();
    let mut data = Vec::with_capacity(manifest.len as usize);
    for c in &manifest.chunks {
        match chunks.get(&c.id) {
            Some(bytes) if bytes.len() == c.len as usize => data.extend_from_slice(bytes),
            _ => return Ok(None),
        }
    }
    Ok((crate::digest::sha256(&data).await == manifest.sha256).then_some(data))
}

/// Moves the pointers of `refs` to the index (where an asset has none yet: one there was written
/// since, by this schema) and empties `refs`, in one transaction.
async fn to_index(store: &Store) -> Result<()> {
    let tx = store.db.transaction(&[REFS, INDEX], TransactionMode::ReadWrite)?;
    let refs = tx.object_store(REFS)?;
    let (assets, versions) = (refs.get_all_keys(None, None)?.await?, refs.get_all(None, None)?.await?);
    let mut index = Index::read_all(&tx).await?;
    let mut moved = 0;
    for (asset, version) in assets.iter().zip(versions) {
        let (Some(asset), Some(version)) = (asset.as_string(), version_of(Some(version))) else { continue };
        if index.get(&asset).is_none() {
            index.set(&asset, Entry { version, place: Place::Own });
            moved += 1;
        }
    }
    index.write(&tx)?;
    refs.clear()?;
    finish(tx).await?;
    web_sys::console::info_1(
        &format!("assetsync: upgraded the store's pointer table ({moved} assets)").into(),
    );
    Ok(())
}
