//! The server's half of a sync: given the current manifest and what the client holds, decide
//! what to answer and which chunks to send.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::{
    AssetPath, ChunkId, FolderEntry, Hash, Have, Manifest, RecipeOp, ServerMessage, Update, VersionId, diff,
};

/// What the server answers one `sync` with.
#[derive(Debug)]
pub struct Plan {
    /// The control message to send first.
    pub message: ServerMessage,
    /// Manifest positions whose bytes follow as binary chunk frames, in this order. Each distinct
    /// chunk is listed once, even when the file repeats it.
    pub send: Vec<u32>,
}

/// What the client holds, as far as the server can tell from its digest.
pub struct ClientView<'a> {
    /// The first version named in the digest that the server still knows: its position in
    /// `have.versions`, its id and its manifest. The delta base; when it is the current version,
    /// the client is up to date.
    pub base: Option<(u32, VersionId, &'a Manifest)>,
    /// Every chunk the client is known to hold (from all known versions and explicit ids).
    pub held: &'a HashSet<ChunkId>,
}

/// Plans the answer to request `id` for `current` (whose version id is `version`).
pub fn plan(id: u32, current: &Manifest, version: VersionId, client: ClientView<'_>) -> Plan {
    if let Some((_, base_version, _)) = client.base
        && base_version == version
    {
        return Plan { message: ServerMessage::UpToDate { id, version }, send: Vec::new() };
    }
    let mut scheduled = HashSet::new();
    let mut send = Vec::new();
    for (i, c) in current.chunks.iter().enumerate() {
        if !client.held.contains(&c.id) && scheduled.insert(c.id) {
            send.push(i as u32);
        }
    }
    // The first occurrence of each sent chunk becomes `Sent`: its id travels as its bytes.
    let mut recipe = diff(client.base.map(|(_, _, m)| m.chunks.as_slice()), &current.chunks);
    let mut position = 0u32;
    let mut next_sent = send.iter().peekable();
    for op in &mut recipe {
        match *op {
            RecipeOp::Copy(_, count) => position += count,
            RecipeOp::Chunk(_, len) | RecipeOp::Sent(len) => {
                if next_sent.peek() == Some(&&position) {
                    next_sent.next();
                    *op = RecipeOp::Sent(len);
                }
                position += 1;
            }
            RecipeOp::Cut(_) => unreachable!("`diff` makes no runs"),
        }
    }
    let base_params = client.base.map(|(_, _, m)| m.params);
    let update = Update {
        id,
        asset: None,
        version,
        base: client.base.map(|(index, _, _)| index),
        params: (base_params != Some(current.params)).then_some(current.params),
        recipe,
        dict: false,
        offload: None,
    };
    Plan { message: ServerMessage::Update(update), send }
}

/// Whether to answer `unknown_base` instead of an update (protocol 2 and later): the client named
/// versions this server does not know (`unknown`: its own version for a `sync`, any of them for
/// a `sync_folder`) and listed no chunks. Its chunk list then costs far less than resending the
/// chunks it holds; the client asks again listing them.
pub fn ask_for_chunks(protocol: u32, have: &Have, unknown: bool) -> bool {
    protocol >= 2 && !have.versions.is_empty() && unknown && have.chunks.is_empty()
}

/// Every chunk a client holds as far as the server can tell: those of the `known` versions it
/// named, and those of `wanted` (the manifests the answer may send) that `have.chunks` matches.
pub fn client_holds<'k, 'w>(
    have: &Have,
    known: impl IntoIterator<Item = &'k Manifest>,
    wanted: impl IntoIterator<Item = &'w Manifest>,
) -> HashSet<ChunkId> {
    let candidates = wanted.into_iter().flat_map(|m| m.chunks.iter().map(|c| &c.id));
    let mut held: HashSet<ChunkId> = have.chunks.matching(candidates).into_iter().collect();
    for m in known {
        held.extend(m.chunks.iter().map(|c| c.id));
    }
    held
}

/// The version of a folder listing (`entries` sorted by path, as `folder` lists them): the
/// SHA-256 of each entry's path, a NUL byte and the file's version, in order. A client names the
/// listing it holds by it (`since`); an unchanged folder is answered with it alone, a changed
/// one with the entries that differ.
pub fn folder_version(entries: &[FolderEntry]) -> VersionId {
    let mut hasher = Sha256::new();
    for entry in entries {
        hasher.update(entry.asset.as_str());
        hasher.update([0]);
        hasher.update(entry.version.0);
    }
    Hash(hasher.finalize().into())
}

/// A listing as a delta against `old` (both sorted by path): the entries of `new` that are not
/// in `old` as they are, and the paths of `old` that `new` no longer has.
pub fn listing_delta(old: &[FolderEntry], new: &[FolderEntry]) -> (Vec<FolderEntry>, Vec<AssetPath>) {
    let was: HashSet<&FolderEntry> = old.iter().collect();
    let paths: HashSet<&AssetPath> = new.iter().map(|e| &e.asset).collect();
    let changed = new.iter().filter(|e| !was.contains(e)).cloned().collect();
    let removed = old.iter().filter(|e| !paths.contains(&e.asset)).map(|e| e.asset.clone()).collect();
    (changed, removed)
}

/// Applies a [`listing_delta`] to `old`: the new listing. All three lists are sorted by path,
/// as the server sends them, so this is one merge (a listing out of order comes out wrong, and
/// the client's check against the listing's version catches it).
pub fn apply_listing_delta(
    old: &[FolderEntry],
    changed: &[FolderEntry],
    removed: &[AssetPath],
) -> Vec<FolderEntry> {
    let mut out = Vec::with_capacity(old.len() + changed.len());
    let (mut changed, mut removed) = (changed.iter().peekable(), removed.iter().peekable());
    for entry in old {
        while let Some(new) = changed.next_if(|n| n.asset < entry.asset) {
            out.push(new.clone());
        }
        while removed.next_if(|p| **p < entry.asset).is_some() {}
        if removed.next_if(|p| **p == entry.asset).is_some() {
            continue;
        }
        match changed.next_if(|n| n.asset == entry.asset) {
            Some(new) => out.push(new.clone()),
            None => out.push(entry.clone()),
        }
    }
    out.extend(changed.cloned());
    out
}

/// The listing part of a `sync_folder` answer, for a client whose listing is `since` (as the
/// server remembered the request's `since`; `None` when it named none): `up_to_date` with the
/// listing's version when nothing changed, else `folder`, as a delta against `since` or whole.
pub fn folder_listing(id: u32, since: Option<&[FolderEntry]>, entries: Vec<FolderEntry>) -> ServerMessage {
    let version = folder_version(&entries);
    match since {
        Some(old) if old == entries.as_slice() => ServerMessage::UpToDate { id, version },
        Some(old) => {
            let (files, removed) = listing_delta(old, &entries);
            ServerMessage::Folder {
                id,
                files,
                removed,
                delta: true,
                version: Some(version),
                packs: 0,
                more: false,
            }
        }
        None => ServerMessage::Folder {
            id,
            files: entries,
            removed: Vec::new(),
            delta: false,
            version: Some(version),
            packs: 0,
            more: false,
        },
    }
}

/// `listing` (a `folder` message) as pages of at most `page` entries, in order, each but the
/// last with `more` (see [`ServerMessage::Folder`]); any other message as it is.
pub fn listing_pages(listing: ServerMessage, page: usize) -> Vec<ServerMessage> {
    let ServerMessage::Folder { id, files, removed, delta, version, packs, .. } = listing else {
        return vec![listing];
    };
    let page = page.max(1);
    let (mut files, mut removed) = (files.into_iter(), removed.into_iter());
    let mut pages = Vec::with_capacity((files.len() + removed.len()).div_ceil(page).max(1));
    loop {
        let these: Vec<FolderEntry> = files.by_ref().take(page).collect();
        let gone: Vec<AssetPath> = removed.by_ref().take(page - these.len()).collect();
        let more = files.len() + removed.len() > 0;
        let (version, packs) = if more { (None, 0) } else { (version, packs) };
        pages.push(ServerMessage::Folder { id, files: these, removed: gone, delta, version, packs, more });
        if !more {
            return pages;
        }
    }
}

/// Which of a folder's `files` (their versions, in listing order) a `sync_folder` answer carries
/// an `update` for: those whose version the client did not name. [`crate::folder_changes`] is
/// the client's side of the same rule.
pub fn folder_sends<'a, T>(have: &Have, files: impl IntoIterator<Item = (T, &'a VersionId)>) -> Vec<T> {
    let named: HashSet<&VersionId> = have.versions.iter().collect();
    files.into_iter().filter(|(_, v)| !named.contains(v)).map(|(file, _)| file).collect()
}

/// What a `folder` listing means to a client that held the listing `held` (its committed
/// files of the folder).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FolderChanges {
    /// Listed files whose version the client does not hold: one `update` follows for each, in
    /// this (listing) order.
    pub fetch: Vec<AssetPath>,
    /// Files the client holds that are no longer listed: delete them.
    pub removed: Vec<AssetPath>,
}

/// Compares a `folder` listing with what the client holds (see [`FolderChanges`]). The server
/// applies the same rule ([`folder_sends`]) to decide which `update`s to send.
pub fn folder_changes(held: &[FolderEntry], files: &[FolderEntry]) -> FolderChanges {
    let versions: HashSet<VersionId> = held.iter().map(|e| e.version).collect();
    let listed: HashSet<&AssetPath> = files.iter().map(|f| &f.asset).collect();
    FolderChanges {
        fetch: files.iter().filter(|f| !versions.contains(&f.version)).map(|f| f.asset.clone()).collect(),
        removed: held.iter().map(|e| e.asset.clone()).filter(|p| !listed.contains(p)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, content: &str) -> FolderEntry {
        FolderEntry { asset: AssetPath::new(path).unwrap(), version: Hash::of(content.as_bytes()) }
    }

    #[test]
    fn a_listing_in_pages_adds_up_to_the_listing_with_its_version_and_packs_in_the_last_page() {
        let files: Vec<FolderEntry> = (0..2500).map(|i| entry(&format!("dist/f{i:04}.js"), "v1")).collect();
        let removed: Vec<AssetPath> =
            (0..700).map(|i| AssetPath::new(&format!("old/g{i}.js")).unwrap()).collect();
        let version = folder_version(&files);
        let listing = |files: Vec<FolderEntry>, removed: Vec<AssetPath>| ServerMessage::Folder {
            id: 7,
            files,
            removed,
            delta: true,
            version: Some(version),
            packs: 3,
            more: false,
        };
        let pages = listing_pages(listing(files.clone(), removed.clone()), 1024);
        assert_eq!(pages.len(), 4, "3,200 entries in pages of 1,024");
        let (mut all_files, mut all_removed) = (Vec::new(), Vec::new());
        for (n, page) in pages.into_iter().enumerate() {
            let ServerMessage::Folder { id: 7, files, removed, delta: true, version: v, packs, more } = page
            else {
                panic!("a page is a folder message of the same request")
            };
            assert!(files.len() + removed.len() <= 1024);
            let last = n == 3;
            assert_eq!((more, v, packs), if last { (false, Some(version), 3) } else { (true, None, 0) });
            all_files.extend(files);
            all_removed.extend(removed);
        }
        assert_eq!((all_files, all_removed), (files.clone(), removed));
        // Small enough, or no pages asked for: the message as it was.
        let whole = listing(files, Vec::new());
        assert_eq!(listing_pages(whole.clone(), usize::MAX), vec![whole.clone()]);
        let empty = listing(Vec::new(), Vec::new());
        assert_eq!(listing_pages(empty.clone(), 1024), vec![empty]);
        let up_to_date = ServerMessage::UpToDate { id: 7, version };
        assert_eq!(listing_pages(up_to_date.clone(), 1), vec![up_to_date]);
    }

    #[test]
    fn an_unchanged_listing_is_answered_by_its_version_and_a_changed_one_by_a_delta_that_adds_up() {
        let old: Vec<FolderEntry> = (0..1000).map(|i| entry(&format!("dist/f{i:04}.js"), "v1")).collect();
        let ServerMessage::UpToDate { version, .. } = folder_listing(1, Some(&old), old.clone()) else {
            panic!("an unchanged listing is up to date")
        };
        assert_eq!(version, folder_version(&old));

        // One file edited, one deleted, one added (sorting after the others).
        let mut new = old.clone();
        new[10] = entry("dist/f0010.js", "v2");
        new.remove(20);
        new.push(entry("dist/zz.js", "new"));
        let ServerMessage::Folder { files, removed, delta: true, version: Some(version), .. } =
            folder_listing(2, Some(&old), new.clone())
        else {
            panic!("a changed listing is a delta")
        };
        assert_eq!(files, [new[10].clone(), new.last().unwrap().clone()]);
        assert_eq!(removed, [old[20].asset.clone()]);
        let rebuilt = apply_listing_delta(&old, &files, &removed);
        assert_eq!(rebuilt, new);
        assert_eq!(folder_version(&rebuilt), version);
        assert_ne!(folder_version(&old), version);
        let wire = serde_json::to_string(&folder_listing(2, Some(&old), new.clone())).unwrap();
        assert!(wire.len() < 1000, "{} bytes for one edit among 1,000 files", wire.len());

        let ServerMessage::Folder { files, delta: false, .. } = folder_listing(3, None, new.clone()) else {
            panic!("without a listing named, the whole listing")
        };
        assert_eq!(files, new);
    }
}
