//! Answers to `sync` and `sync_folder`: planned by the protocol crate, compressed once for every
//! client in the same state, and paced out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkId, ClientView, ErrorCode, FolderEntry, Hash, Have, Scope, ServerMessage,
    VersionId, ask_for_chunks, cut_runs, folder_listing, folder_sends, folder_version, offload, pack, plan,
};
use axum::extract::ws::{Message, WebSocket, close_code};
use futures_util::SinkExt;

use super::throttle::Throttle;
use super::{Fatal, Peer, feed_json, gone, send_json, send_listing};
use crate::encode::{Batch, Encoded, QUICK_WORK};
use crate::index::{Base, IndexError, Indexed};
use crate::server::AppState;

/// Versions of the requested file a client names that are looked up in the shared store.
const LEARN_PER_FILE: usize = 4;
/// Changed files of a folder whose client version is looked up in the shared store.
const LEARN_PER_FOLDER: usize = 1024;

/// One `sync` request.
pub(super) struct Request<'a> {
    pub id: u32,
    pub asset: &'a str,
    pub have: Have,
    /// Never offloaded: fetching it over HTTP failed.
    pub direct: bool,
    /// Never a binary patch: the client could not apply the one it got.
    pub no_patch: bool,
}

/// Answers one `sync`. Request-level problems (bad path, unknown asset, digest over the limit)
/// are answered with an `error` and the session goes on.
pub(super) async fn sync(
    socket: &mut WebSocket,
    state: &AppState,
    peer: Peer,
    throttle: &mut Throttle,
    request: Request<'_>,
) -> Result<(), Fatal> {
    let Request { id, asset, have, direct, no_patch } = request;
    let started = Instant::now();
    if have.len() > state.limits.max_have {
        return send_json(socket, &too_many_entries(id, &have, state)).await;
    }
    let asset = match AssetPath::new(asset) {
        Ok(asset) => asset,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    let current = match state.index.current(&asset).await {
        Ok(current) => current,
        Err(e) => {
            tracing::info!(%asset, error = %e, "sync refused");
            let message = match &e {
                IndexError::Unknown(_) if state.index.is_folder(&asset) => {
                    format!("{asset:?} is a folder, not a file: sync it as a folder, \"{asset}/\"")
                }
                e => e.to_string(),
            };
            return send_json(socket, &refuse(id, code_of(&e), message)).await;
        }
    };
    let named = have.versions.iter().map(|v| (asset.clone(), *v));
    state.index.learn(named, LEARN_PER_FILE).await;
    let (known, held) = state.index.resolve_have(&have, [current.manifest.as_ref()]);
    // The delta base: the first version named that the server knows.
    let base = known.into_iter().next();
    // The client's own version (listed first) is one this server never saw or has forgotten?
    let own_version_unknown = base.as_ref().is_none_or(|b| b.position != 0);
    if ask_for_chunks(peer.protocol, &have, own_version_unknown) {
        return send_json(socket, &ServerMessage::UnknownBase { id }).await;
    }
    let peer = Peer { offload: peer.offload && !direct, patch: peer.patch && !no_patch, ..peer };
    let sent = answer(socket, state, peer, throttle, id, None, &current, base.as_ref(), &held).await?;
    tracing::info!(
        %asset,
        version = %&current.version.to_hex()[..12],
        base = base.is_some(),
        chunks = current.manifest.chunks.len(),
        sent_chunks = sent.chunks.len(),
        frame_bytes = sent.frame_bytes,
        offloaded = sent.offloaded,
        dict = sent.dict,
        patch = sent.patch,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sync"
    );
    Ok(())
}

/// One `sync_folder` request.
pub(super) struct FolderRequest<'a> {
    pub id: u32,
    pub folder: &'a str,
    pub since: Option<VersionId>,
    pub have: Have,
    /// The digest of the shape the client knows, if it asks for the folder's shape.
    pub shape: Option<VersionId>,
}

/// Answers `sync_folder`: the folder's shape if asked for and not the one the client knows, the
/// listing (or `up_to_date` when the listing the client named is current; a delta against it
/// when it changed), then one `update` per file whose version the client does not hold, each
/// chunk sent at most once across the whole answer.
pub(super) async fn sync_folder(
    socket: &mut WebSocket,
    state: &AppState,
    peer: Peer,
    throttle: &mut Throttle,
    request: FolderRequest<'_>,
) -> Result<(), Fatal> {
    let FolderRequest { id, folder, since, mut have, shape } = request;
    let started = Instant::now();
    if have.len() > state.limits.max_have {
        return send_json(socket, &too_many_entries(id, &have, state)).await;
    }
    let scope = match Scope::new(folder) {
        Ok(Scope::Asset(_)) => {
            let message = format!("{folder:?} is not a folder: end it with '/' (or use \"\" for the root)");
            return send_json(socket, &refuse(id, ErrorCode::BadPath, message)).await;
        }
        Ok(scope) => scope,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    let files = match state.index.list(&scope).await {
        Ok(files) => files,
        Err(e) => {
            tracing::info!(%scope, error = %e, "folder sync refused");
            return send_json(socket, &refuse(id, code_of(&e), e.to_string())).await;
        }
    };
    let entries: Vec<FolderEntry> =
        files.iter().map(|f| FolderEntry { asset: f.manifest.path.clone(), version: f.version }).collect();
    // What the client will hold once this answer is committed: the `since` of its next request.
    // Remembered first, so that a client naming the current listing is answered `up_to_date`
    // even by a server that had forgotten it (a restart).
    if peer.protocol >= 3 {
        state.index.remember_listing(folder_version(&entries), &entries);
    }
    // The listing the client holds, if it named one: the versions it holds, in path order.
    let since = match since {
        Some(since) => match state.index.listing(&since).await {
            Some(listing) => {
                have.versions = listing.iter().map(|e| e.version).collect();
                Some(listing)
            }
            None => return send_json(socket, &ServerMessage::UnknownBase { id }).await,
        },
        None => None,
    };
    // The client's versions of the files that changed, which another instance may have sent.
    if let Some(since) = &since {
        let current: HashMap<&AssetPath, &VersionId> =
            entries.iter().map(|e| (&e.asset, &e.version)).collect();
        let changed = since.iter().filter(|e| current.get(&e.asset).is_some_and(|v| **v != e.version));
        state.index.learn(changed.map(|e| (e.asset.clone(), e.version)), LEARN_PER_FOLDER).await;
    }
    let mut listing = folder_listing(id, since.as_deref(), entries);
    // Unchanged: nothing to send, so the client's holdings need not be worked out.
    let unchanged = matches!(listing, ServerMessage::UpToDate { .. });
    let (known, mut held) = match unchanged {
        true => Default::default(),
        false => state.index.resolve_have(&have, files.iter().map(|f| f.manifest.as_ref())),
    };
    if !unchanged && ask_for_chunks(peer.protocol, &have, known.len() < have.versions.len()) {
        return send_json(socket, &ServerMessage::UnknownBase { id }).await;
    }
    // The delta base and compression prefix of each file: the client's version of it.
    let bases: HashMap<&AssetPath, &Base> = known.iter().map(|b| (&b.manifest.path, b)).collect();
    let mut sends = folder_sends(&have, files.iter().enumerate().map(|(i, f)| ((i, f), &f.version)));
    // Small new files travel in packs, before the other files' `update`s.
    let packs = match peer.protocol >= 4 && peer.zstd {
        true => packs(&mut sends, &bases, &mut held, peer.protocol >= 5),
        false => Vec::new(),
    };
    if let ServerMessage::Folder { packs: count, .. } = &mut listing {
        *count = packs.len() as u32;
    }
    if let Some(known) = shape {
        // The shape the listing's walk found (or walked now, if that was too long ago).
        match state.index.shape(&scope).await {
            Ok(shape) if shape.digest() == known => {}
            Ok(shape) => {
                send_json(socket, &ServerMessage::Shape { id, shape: Some(shape.as_ref().clone()) }).await?
            }
            Err(e) => return send_json(socket, &refuse(id, code_of(&e), e.to_string())).await,
        }
    }
    send_listing(socket, listing, &peer).await?;
    let (mut updated, mut frame_bytes, mut offloaded, mut work) = (0, 0, 0, QUICK_WORK);
    let mut window = pack::Window::default();
    // Names each pack with everything before it in the answer (see `Encoder::pack`).
    let mut chain = Hash::of(scope.to_string().as_bytes());
    for files in &packs {
        let raw = pack::encode(files[0].1.manifest.params, &files.iter().map(pack_entry).collect::<Vec<_>>());
        let mut named = chain.0.to_vec();
        for (position, file) in files {
            named.extend_from_slice(&(*position as u32).to_le_bytes());
            named.extend_from_slice(&file.version.0);
        }
        chain = Hash::of(&named);
        let Some(compressed) = state.encoder.pack(chain, &raw, window.prefix()).await else {
            return Err(Fatal::new(ErrorCode::Internal, close_code::ERROR, "cannot compress a pack"));
        };
        window.push(&raw);
        let frame = ChunkFrame::Pack { id, compressed: &compressed }.encode();
        frame_bytes += frame.len();
        updated += files.len();
        throttle.bytes(frame.len(), socket).await?;
        socket.feed(Message::Binary(frame.into())).await.map_err(gone)?;
    }
    for (_, file) in sends {
        let base = bases.get(&file.manifest.path).copied();
        let folder = Some((file.manifest.path.clone(), &mut work));
        let sent = answer(socket, state, peer, throttle, id, folder, file, base, &held).await?;
        // Later files reference these chunks instead of carrying them again.
        held.extend(sent.chunks.iter().map(|&i| file.manifest.chunks[i as usize].id));
        updated += 1;
        frame_bytes += sent.frame_bytes;
        offloaded += sent.offloaded;
    }
    socket.flush().await.map_err(gone)?;
    tracing::info!(
        folder = %scope,
        files = files.len(),
        updated,
        packs = packs.len(),
        frame_bytes,
        offloaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "folder sync"
    );
    Ok(())
}

/// A packed file: its position in the listing, and its bytes.
type Packed<'a> = (usize, &'a Arc<Indexed>);

fn pack_entry<'a>(&(position, file): &Packed<'a>) -> (u32, &'a [u8]) {
    (position as u32, &file.data[..])
}

/// Takes the files of `sends` that go in packs out of it (those the client has no version of,
/// small, of one chunk unless the client takes `several` (protocol 5), and none of whose chunks
/// is already `held`), and groups them into packs of the same chunk parameters. Their chunks
/// are `held` from then on.
fn packs<'a>(
    sends: &mut Vec<Packed<'a>>,
    bases: &HashMap<&AssetPath, &Base>,
    held: &mut HashSet<ChunkId>,
    several: bool,
) -> Vec<Vec<Packed<'a>>> {
    let mut packs: Vec<Vec<Packed<'a>>> = Vec::new();
    let mut bytes = 0;
    sends.retain(|&(position, file)| {
        let manifest = &file.manifest;
        let new = !bases.contains_key(&manifest.path)
            && pack::packable(manifest, several)
            && manifest.chunks.iter().all(|c| !held.contains(&c.id));
        if !new {
            return true;
        }
        held.extend(manifest.chunks.iter().map(|c| c.id));
        let open = packs.last().is_some_and(|last| {
            bytes < pack::TARGET_BYTES
                && last.len() < pack::MAX_FILES
                && last[0].1.manifest.params == manifest.params
        });
        if !open {
            packs.push(Vec::new());
            bytes = 0;
        }
        packs.last_mut().expect("one is open").push((position, file));
        bytes += manifest.len as usize;
        false
    });
    packs
}

/// What [`answer`] sent.
struct Sent {
    /// Manifest positions whose bytes went out.
    chunks: Vec<u32>,
    /// Bytes of binary frames sent on the WebSocket.
    frame_bytes: usize,
    /// Bytes of the frames' object, when they were offloaded instead.
    offloaded: u64,
    /// Whether batches were compressed against the base version.
    dict: bool,
    /// Whether the answer was a binary patch.
    patch: bool,
}

/// Plans, encodes and sends the answer for `current` to a client holding `held` (`update` with
/// its chunk frames, or `up_to_date` when `base` is the current version itself). Frames over
/// the offload threshold go in an object instead, for a client that fetches them. In a folder
/// answer, `folder` is the file's path and what is left of the answer's best-level work (see
/// [`crate::encode::Encoder::encode`]).
#[allow(clippy::too_many_arguments)]
async fn answer(
    socket: &mut WebSocket,
    state: &AppState,
    peer: Peer,
    throttle: &mut Throttle,
    id: u32,
    folder: Option<(AssetPath, &mut usize)>,
    current: &Arc<Indexed>,
    base: Option<&Base>,
    held: &HashSet<ChunkId>,
) -> Result<Sent, Fatal> {
    let in_folder = folder.is_some();
    let view = ClientView { base: base.map(|b| (b.position, b.version, b.manifest.as_ref())), held };
    let mut answer = plan(id, &current.manifest, current.version, view);
    let mut offloaded = None;
    let mut patched = false;
    let encoded = match &mut answer.message {
        ServerMessage::Update(update) => {
            let (asset, work) = folder.unzip();
            update.asset = asset;
            if peer.zstd && !answer.send.is_empty() {
                let encoded = state.encoder.encode(&state.index, current, &answer.send, base, work).await;
                // A patch is made against the base version's whole file, which the client loads
                // as it does a compression prefix.
                patched = encoded.patch_for(peer.patch, peer.wasm, peer.tail).is_some();
                update.dict = encoded.prefixed || patched;
                if patched && peer.cut {
                    cut_runs(&mut update.recipe);
                }
                // The object is the same for every client that gets it: the patch for those
                // that take it, or an answer without a patch.
                let same = patched || encoded.patch.is_none();
                offloaded = match &state.offload {
                    Some(offload)
                        if same && peer.offload && offload.wants(encoded.frame_bytes(current, patched)) =>
                    {
                        let body = || offload::body(frames(0, current, &answer.send, Some(&encoded), peer));
                        encoded.offloaded.get_or_init(|| offload.put(body())).await.clone()
                    }
                    _ => None,
                };
                update.offload = offloaded.clone();
                Some(encoded)
            } else {
                None
            }
        }
        _ => None,
    };
    match in_folder {
        true => feed_json(socket, &answer.message).await?,
        false => send_json(socket, &answer.message).await?,
    }
    let dict = encoded.as_ref().is_some_and(|e| e.prefixed);
    if let Some(offloaded) = offloaded {
        let offloaded = offloaded.bytes;
        return Ok(Sent { chunks: answer.send, frame_bytes: 0, offloaded, dict, patch: patched });
    }
    let mut frame_bytes = 0usize;
    for frame in frames(id, current, &answer.send, encoded.as_deref(), peer) {
        frame_bytes += frame.len();
        throttle.bytes(frame.len(), socket).await?;
        // `feed` waits while tungstenite's bounded write buffer is full: a slow reader slows
        // this loop down instead of making the server buffer without limit.
        socket.feed(Message::Binary(frame.into())).await.map_err(gone)?;
    }
    // A folder's files go out as the write buffer fills, and it is flushed once at the end.
    if !in_folder {
        socket.flush().await.map_err(gone)?;
    }
    Ok(Sent { chunks: answer.send, frame_bytes, offloaded: 0, dict, patch: patched })
}

/// The chunk frames of request `id` sending the chunks at `send` of `current` to `peer`: plain,
/// or as `encoded` (its patch, for a client that applies patches; batches in parts for one that
/// reads them, so that it sees progress on a slow link).
fn frames<'a>(
    id: u32,
    current: &'a Indexed,
    send: &'a [u32],
    encoded: Option<&'a Encoded>,
    peer: Peer,
) -> Box<dyn Iterator<Item = Vec<u8>> + Send + 'a> {
    let plain =
        move |index: u32| ChunkFrame::Chunk { id, index, bytes: current.chunk(index as usize) }.encode();
    let in_parts = peer.protocol >= 3;
    if let Some((maps, payload, tail)) = encoded.and_then(|e| e.patch_for(peer.patch, peer.wasm, peer.tail)) {
        return Box::new(std::iter::once(ChunkFrame::Patch { id, maps, payload, tail }.encode()));
    }
    match encoded {
        None => Box::new(send.iter().map(move |&i| plain(i))),
        Some(encoded) => Box::new(encoded.batches.iter().flat_map(move |batch| match batch {
            Batch::Compressed { indices, frame } => ChunkFrame::batch(id, indices.clone(), frame, in_parts),
            Batch::Plain { indices } => indices.iter().map(|&i| plain(i)).collect(),
        })),
    }
}

pub(super) fn refuse(id: u32, code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error { id: Some(id), code, message }
}

pub(super) fn too_many_entries(id: u32, have: &Have, state: &AppState) -> ServerMessage {
    let message = format!("digest has {} entries, over the limit of {}", have.len(), state.limits.max_have);
    refuse(id, ErrorCode::TooLarge, message)
}

pub(super) fn code_of(e: &IndexError) -> ErrorCode {
    match e {
        IndexError::Unknown(_) => ErrorCode::UnknownAsset,
        IndexError::Escapes(_) => ErrorCode::BadPath,
        IndexError::TooLarge { .. } | IndexError::TooManyFiles { .. } => ErrorCode::TooLarge,
        IndexError::Io { .. } => ErrorCode::Internal,
    }
}
