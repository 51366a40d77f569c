//! The server's half of a sync: given the current manifest and what the client holds, decide
//! what to answer and which chunks to send.

use std::collections::HashSet;

use crate::{AssetPath, ChunkId, Have, Manifest, RecipeOp, ServerMessage, Update, VersionId, diff};

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

/// Whether a `sync_folder` answer carries an `update` for a listed file: the client did not name
/// its version. [`crate::folder_changes`] is the client's side of the same rule.
pub fn folder_sends(have: &Have, version: &VersionId) -> bool {
    !have.versions.contains(version)
}

/// What a `folder` listing means to a client that named `held` (its current manifests of the
/// folder's files) in `have.versions`.
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
pub fn folder_changes(held: &[Manifest], files: &[crate::FolderEntry]) -> FolderChanges {
    let versions: HashSet<VersionId> = held.iter().map(Manifest::version).collect();
    let listed: HashSet<&AssetPath> = files.iter().map(|f| &f.asset).collect();
    FolderChanges {
        fetch: files.iter().filter(|f| !versions.contains(&f.version)).map(|f| f.asset.clone()).collect(),
        removed: held.iter().map(|m| m.path.clone()).filter(|p| !listed.contains(p)).collect(),
    }
}
