//! The in-place upgrade of a version-1 store, which kept every chunk as a record of its own: each
//! committed version is rebuilt from its chunk records, verified, and written as one file; then
//! the chunk records go. Nothing is fetched again.
//!
//! Safe across tabs: files are keyed by version, so two tabs upgrading at once write the same
//! bytes, and a version whose chunks another tab has already cleared is found written by it.

use std::collections::{HashMap, HashSet};

use assetsync_protocol::{AssetPath, ChunkId, VersionId};
use idb::TransactionMode;

use super::{CHUNKS, FILES, MANIFESTS, REFS, Result, Store, blob, decode_manifest, finish, key, version_of};

/// The pointer-table key that marks a store whose upgrade is not finished (set by the version
/// upgrade from schema 1; never an asset path, which has no control characters).
pub(super) const MARK: &str = "\u{0}upgrading from schema 1";

/// Upgrades what needs it; costs one read of the mark on a store that is up to date.
pub(super) async fn run(store: &Store) -> Result<()> {
    let tx = store.db.transaction(&[REFS], TransactionMode::ReadOnly)?;
    if tx.object_store(REFS)?.get(key(MARK))?.await?.is_none() {
        return Ok(());
    }
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
    let Some(manifest) = bytes.and_then(|b| decode_manifest(&b, version)) else { return Ok(None) };
    let ids: Vec<ChunkId> =
        manifest.chunks.iter().map(|c| c.id).collect::<HashSet<_>>().into_iter().collect();
    let chunks: HashMap<ChunkId, Vec<u8>> = store.chunks(&ids, &[]).await?.into_iter().collect();
    let mut data = Vec::with_capacity(manifest.len as usize);
    for c in &manifest.chunks {
        match chunks.get(&c.id) {
            Some(bytes) if bytes.len() == c.len as usize => data.extend_from_slice(bytes),
            _ => return Ok(None),
        }
    }
    Ok((crate::digest::sha256(&data).await == manifest.sha256).then_some(data))
}
