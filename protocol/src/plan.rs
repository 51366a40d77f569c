//! The server's half of a sync: given the current manifest and what the client holds, decide
//! what to answer and which chunks to send.

use std::collections::HashSet;

use crate::{ChunkId, Manifest, ServerMessage, Update, VersionId, diff};

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
    /// The first version named in the digest that the server still knows, with its manifest:
    /// the delta base. When it equals the current version, the client is up to date.
    pub base: Option<(VersionId, &'a Manifest)>,
    /// Every chunk the client is known to hold (from all known versions and explicit ids).
    pub held: &'a HashSet<ChunkId>,
}

/// Plans the answer to request `id` for `current` (whose version id is `version`).
pub fn plan(id: u32, current: &Manifest, version: VersionId, client: ClientView<'_>) -> Plan {
    if let Some((base_version, _)) = client.base
        && base_version == version
    {
        return Plan { message: ServerMessage::UpToDate { id, version }, send: Vec::new() };
    }
    let mut scheduled = HashSet::new();
    let mut send = Vec::new();
    let mut send_bytes = 0u64;
    for (i, c) in current.chunks.iter().enumerate() {
        if !client.held.contains(&c.id) && scheduled.insert(c.id) {
            send.push(i as u32);
            send_bytes += u64::from(c.len);
        }
    }
    let base = client.base.map(|(v, m)| (v, m.chunks.as_slice()));
    let update = Update {
        id,
        version,
        base: base.map(|(v, _)| v),
        len: current.len,
        sha256: current.sha256,
        params: current.params,
        recipe: diff(base.map(|(_, c)| c), &current.chunks),
        send: send.len() as u32,
        send_bytes,
        dict: None,
    };
    Plan { message: ServerMessage::Update(update), send }
}
