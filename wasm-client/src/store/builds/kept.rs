//! Keeping builds, and what a service worker serves from them (see [`super`]).

use std::collections::{BTreeMap, HashSet};

use assetsync_protocol::plan::folder_version;
use assetsync_protocol::varint::{get, put};
use assetsync_protocol::{AssetPath, FolderEntry, Hash, Manifest, Scope, VersionId};
use idb::TransactionMode;
use js_sys::Uint8Array;
use web_sys::Blob;

use crate::store::index::{self, Entry, Index};
use crate::store::records::{bytes_of, key, listen, request_file};
use crate::store::{BUILDS, FILES, INDEX, MANIFESTS, PACKS, Result, SERVING, Store, finish};

/// A kept build: each file's version and where it lies, by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub id: VersionId,
    pub files: BTreeMap<String, Entry>,
}

/// Which build a service worker serves: the newest complete one, and the one each page it
/// controls was loaded on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Serving {
    /// The build new pages get.
    pub ready: Option<VersionId>,
    /// (page's client id, its build, when it was assigned in ms since the epoch).
    pub pages: Vec<(String, VersionId, f64)>,
}

/// How long a page's build is kept after it was assigned, even while the browser does not list
/// the page among the worker's clients (a navigation's page is listed once it has loaded).
const PAGE_GRACE_MS: f64 = 60_000.0;

impl Serving {
    /// The build of the page `page` (a client id), assigning it the ready one if it has none:
    /// a page loaded before this worker served it, or whose assignment was lost. `None` until
    /// a build is ready. Whether it was assigned now (the record must then be written).
    pub fn page(&mut self, page: &str, now: f64) -> (Option<VersionId>, bool) {
        if let Some((_, build, _)) = self.pages.iter().find(|p| p.0 == page) {
            return (Some(*build), false);
        }
        self.load(page, now)
    }

    /// A page being loaded (a navigation) gets the ready build, whatever the client id had.
    pub fn load(&mut self, page: &str, now: f64) -> (Option<VersionId>, bool) {
        let Some(ready) = self.ready else { return (None, false) };
        self.pages.retain(|p| p.0 != page);
        self.pages.push((page.to_owned(), ready, now));
        (Some(ready), true)
    }

    /// Makes `build` the ready one; with `take_over`, open pages are moved onto it too (their
    /// next requests get its files). Whether anything changed.
    pub fn make_ready(&mut self, build: VersionId, take_over: bool) -> bool {
        let was = self.ready.replace(build);
        if take_over {
            for page in &mut self.pages {
                page.1 = build;
            }
        }
        was != Some(build)
    }

    /// Forgets the pages not in `open` (client ids) that were assigned more than a grace period
    /// before `now`. Whether any was forgotten.
    pub fn prune(&mut self, open: &HashSet<String>, now: f64) -> bool {
        let before = self.pages.len();
        self.pages.retain(|(page, _, at)| open.contains(page) || now - at < PAGE_GRACE_MS);
        self.pages.len() != before
    }

    /// The builds in use.
    pub fn builds(&self) -> HashSet<VersionId> {
        self.ready.iter().copied().chain(self.pages.iter().map(|p| p.1)).collect()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.ready {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
            None => out.push(0),
        }
        put(&mut out, self.pages.len() as u64);
        for (page, build, at) in &self.pages {
            put(&mut out, page.len() as u64);
            out.extend_from_slice(page.as_bytes());
            out.extend_from_slice(&build.0);
            put(&mut out, *at as u64);
        }
        out
    }

    /// A record that does not decode (damaged behind the store's back) reads as nothing kept:
    /// the next update makes a build ready again.
    fn decode(mut rest: &[u8]) -> Option<Serving> {
        let (&has_ready, tail) = rest.split_first()?;
        rest = tail;
        let ready = match has_ready {
            0 => None,
            _ => {
                let (id, tail) = rest.split_first_chunk::<32>()?;
                rest = tail;
                Some(Hash(*id))
            }
        };
        let mut pages = Vec::new();
        for _ in 0..get(&mut rest)? {
            let len = usize::try_from(get(&mut rest)?).ok()?;
            let (page, tail) = rest.split_at_checked(len)?;
            let (build, tail) = tail.split_first_chunk::<32>()?;
            rest = tail;
            let at = get(&mut rest)? as f64;
            pages.push((String::from_utf8(page.to_vec()).ok()?, Hash(*build), at));
        }
        rest.is_empty().then_some(Serving { ready, pages })
    }
}

fn build_key(folder: &Scope, id: &VersionId) -> wasm_bindgen::JsValue {
    key(&format!("{folder}\0{}", id.to_hex()))
}

impl Store {
    /// Keeps the files committed inside `folder` as a build (once per listing), in one
    /// transaction with reading them: a build is always a state some commit left. `None` if
    /// that state is not the folder version `expected` (a commit of another sync came in
    /// between): nothing is kept.
    pub async fn keep_build(&self, folder: &Scope, expected: &VersionId) -> Result<Option<Build>> {
        let tx = self.db.transaction(&[INDEX, BUILDS], TransactionMode::ReadWrite)?;
        let index = Index::read_all(&tx).await?;
        let files: BTreeMap<String, Entry> = index
            .iter()
            .filter(|(asset, _)| AssetPath::new(asset).is_ok_and(|a| folder.covers(&a)))
            .map(|(asset, e)| (asset.to_owned(), *e))
            .collect();
        let listing: Vec<FolderEntry> = files
            .iter()
            .filter_map(|(asset, e)| {
                Some(FolderEntry { asset: AssetPath::new(asset).ok()?, version: e.version })
            })
            .collect();
        let id = folder_version(&listing);
        if id != *expected {
            return Ok(None);
        }
        let builds = tx.object_store(BUILDS)?;
        let k = build_key(folder, &id);
        if builds.get_key(k.clone())?.await?.is_none() {
            builds.put(&Uint8Array::from(index::encode(&files).as_slice()), Some(&k))?;
        }
        finish(tx).await?;
        Ok(Some(Build { id, files }))
    }

    /// The kept build `id` of `folder`, if there is one.
    pub async fn build(&self, folder: &Scope, id: &VersionId) -> Result<Option<Build>> {
        let tx = self.db.transaction(&[BUILDS], TransactionMode::ReadOnly)?;
        let value = tx.object_store(BUILDS)?.get(build_key(folder, id))?.await?;
        Ok(value.map(|v| Build { id: *id, files: index::decode(&bytes_of(&v)) }))
    }

    /// Drops the builds of `folder` other than `keep`; how many. Their files are left to
    /// [`Store::gc`].
    pub async fn drop_builds(&self, folder: &Scope, keep: &HashSet<VersionId>) -> Result<u32> {
        let tx = self.db.transaction(&[BUILDS], TransactionMode::ReadWrite)?;
        let builds = tx.object_store(BUILDS)?;
        let prefix = format!("{folder}\0");
        let mut dropped = 0;
        for k in builds.get_all_keys(None, None)?.await? {
            let Some(id) = k.as_string().and_then(|k| Some(k.strip_prefix(&prefix)?.to_owned())) else {
                continue;
            };
            if !Hash::from_hex(&id).is_ok_and(|id| keep.contains(&id)) {
                builds.delete(k)?;
                dropped += 1;
            }
        }
        finish(tx).await?;
        Ok(dropped)
    }

    /// The manifest and file (nothing read yet) of a build's `entry`; `None` if either is gone
    /// or the manifest is damaged.
    pub async fn build_file(&self, entry: &Entry) -> Result<Option<(Manifest, Blob)>> {
        let tx = self.db.transaction(&[FILES, MANIFESTS, PACKS], TransactionMode::ReadOnly)?;
        let file = request_file(&tx, entry)?;
        let Some(manifest) = self.manifests_of(&tx, vec![*entry]).await?.pop() else { return Ok(None) };
        Ok(file.blob().await?.map(|blob| (manifest, blob)))
    }

    /// Points the builds that hold `asset` at its committed version at where that version now
    /// lies: after a damaged copy was fetched again, they serve the repaired one.
    pub async fn repair_builds(&self, asset: &AssetPath) -> Result<()> {
        let tx = self.db.transaction(&[INDEX, BUILDS], TransactionMode::ReadWrite)?;
        let index = Index::read(&tx, [asset.as_str()]).await?;
        let Some(now) = index.get(asset.as_str()) else { return Ok(()) };
        let builds = tx.object_store(BUILDS)?;
        let (keys, values) = (listen(builds.get_all_keys(None, None)?), listen(builds.get_all(None, None)?));
        for (k, value) in keys.await?.into_iter().zip(values.await?) {
            let mut files = index::decode(&bytes_of(&value));
            match files.get_mut(asset.as_str()) {
                Some(e) if e.version == now.version && *e != now => *e = now,
                _ => continue,
            }
            builds.put(&Uint8Array::from(index::encode(&files).as_slice()), Some(&k))?;
        }
        finish(tx).await
    }

    /// What the service worker of `folder` serves (nothing kept yet: the default).
    pub async fn serving(&self, folder: &Scope) -> Result<Serving> {
        let tx = self.db.transaction(&[SERVING], TransactionMode::ReadOnly)?;
        let value = tx.object_store(SERVING)?.get(key(&folder.to_string()))?.await?;
        Ok(value.and_then(|v| Serving::decode(&bytes_of(&v))).unwrap_or_default())
    }

    pub async fn set_serving(&self, folder: &Scope, serving: &Serving) -> Result<()> {
        let tx = self.db.transaction(&[SERVING], TransactionMode::ReadWrite)?;
        let value = Uint8Array::from(serving.encode().as_slice());
        tx.object_store(SERVING)?.put(&value, Some(&key(&folder.to_string())))?;
        finish(tx).await
    }
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::*;

    #[wasm_bindgen_test]
    fn a_page_keeps_the_build_it_was_loaded_on_until_it_reloads_or_takes_over() {
        let (b1, b2) = (Hash::of(b"b1"), Hash::of(b"b2"));
        let mut serving = Serving::default();
        assert_eq!(serving.page("a", 0.0), (None, false), "nothing is served before a build is ready");
        assert!(serving.make_ready(b1, false));
        assert_eq!(serving.load("a", 1.0), (Some(b1), true));
        assert_eq!(
            serving.page("b", 2.0),
            (Some(b1), true),
            "a page the worker did not load gets the ready build"
        );
        assert!(serving.make_ready(b2, false));
        assert_eq!(serving.page("a", 3.0), (Some(b1), false), "an open page stays on its build");
        assert_eq!(serving.load("a", 4.0), (Some(b2), true), "a reload gets the new one");
        assert_eq!(serving.page("b", 5.0), (Some(b1), false));
        assert_eq!(serving.builds(), HashSet::from([b1, b2]));
        // Page "b" closes: its build is dropped after the grace period.
        let open = HashSet::from(["a".to_owned()]);
        assert!(!serving.prune(&open, 10.0));
        assert!(serving.prune(&open, 10.0 + PAGE_GRACE_MS));
        assert_eq!(serving.builds(), HashSet::from([b2]));
        // Taking over moves open pages onto the new build.
        let b3 = Hash::of(b"b3");
        assert!(serving.make_ready(b3, true));
        assert_eq!(serving.page("a", 6.0), (Some(b3), false));
        assert!(!serving.make_ready(b3, true));
    }

    #[wasm_bindgen_test]
    fn a_serving_record_round_trips_and_a_cut_one_is_refused() {
        let serving = Serving {
            ready: Some(Hash::of(b"b2")),
            pages: vec![("page-1".into(), Hash::of(b"b1"), 1.7e12), ("ü".into(), Hash::of(b"b2"), 0.0)],
        };
        let bytes = serving.encode();
        assert_eq!(Serving::decode(&bytes), Some(serving));
        for cut in 0..bytes.len() {
            assert_eq!(Serving::decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
