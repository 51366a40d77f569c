//! `get_manifest` and `upload`: a client sends a new version of an asset as a delta against the
//! server's (see [`assetsync_protocol::upload`]). It is rebuilt and verified by the client's own
//! machine, and written only if the file is still the version the upload was made from. With
//! `list_folder` and `delete`, a client pushes a folder and removes what it no longer has;
//! `get_shape` gives a pulling client of protocol 4 a folder's folders, links and modes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assetsync_protocol::upload::{receiver, write_ids, write_manifest};
use assetsync_protocol::{
    AssetPath, ChunkId, ClientSync, Error, ErrorCode, FolderEntry, MAX_CHUNKS, Scope, ServerMessage,
    UploadRequest, VerifiedChunk, VersionId,
};
use axum::extract::ws::{Message, WebSocket, close_code};
use bytes::Bytes;

use super::answer::{code_of, refuse};
use super::{Fatal, Peer, send_json, send_listing};
use crate::index::{IndexError, Indexed, WriteError};
use crate::modules::{Module, Refusal};
use crate::server::AppState;

/// Answers `get_manifest`: the asset's current manifest, the base of an upload from a client
/// that does not hold it, and with `resume`, the chunks kept from that upload cut short.
pub(super) async fn get_manifest(
    socket: &mut WebSocket,
    state: &AppState,
    id: u32,
    asset: &str,
    resume: Option<VersionId>,
) -> Result<(), Fatal> {
    let answer = match AssetPath::new(asset) {
        Err(e) => refuse(id, ErrorCode::BadPath, e.to_string()),
        Ok(asset) => {
            let received = resume.map(|v| state.uploads.held(&asset, v)).unwrap_or_default();
            let received = write_ids(&received);
            match state.index.current(&asset).await {
                Ok(current) => ServerMessage::Manifest {
                    id,
                    version: Some(current.version),
                    manifest: Some(write_manifest(&current.manifest)),
                    received,
                },
                Err(IndexError::Unknown(_)) => {
                    ServerMessage::Manifest { id, version: None, manifest: None, received }
                }
                Err(e) => refuse(id, code_of(&e), e.to_string()),
            }
        }
    };
    send_json(socket, &answer).await
}

/// Receives an `upload` and its frames, then writes it, or refuses it with nothing written.
/// The announced frames are read in every case, so the connection stays in step.
pub(super) async fn upload(
    socket: &mut WebSocket,
    state: &AppState,
    admitted: Result<Option<&Module>, Refusal>,
    request: UploadRequest,
) -> Result<(), Fatal> {
    let started = Instant::now();
    let id = request.id;
    // A frame carries at least one chunk.
    if request.frames as usize > MAX_CHUNKS {
        let why = format!("an upload of {} frames, over the {MAX_CHUNKS} a file may have", request.frames);
        return Err(Fatal::new(ErrorCode::TooLarge, close_code::POLICY, why));
    }
    let mut receiving = start(state, admitted, &request).await;
    let mut frame_bytes = 0;
    for _ in 0..request.frames {
        let frame = match next_frame(socket, state).await {
            Ok(frame) => frame,
            Err(fatal) => {
                // Cut short: what was received and verified is kept for the resumed upload.
                if let Ok((machine, _)) = &mut receiving {
                    let asset = machine.asset().clone();
                    state.uploads.keep(&asset, request.version, machine.take_received());
                }
                return Err(fatal);
            }
        };
        frame_bytes += frame.len();
        if let Ok((machine, _)) = &mut receiving
            && let Err(e) = machine.on_frame(&frame).and_then(|_| applied(machine))
        {
            receiving = Err(refuse(id, ErrorCode::BadMessage, nothing_written(&request.asset, &e)));
        }
    }
    let answer = match receiving {
        Ok((machine, current)) => finish(state, &request, machine, current).await,
        Err(refused) => refused,
    };
    let outcome = answer.kind();
    tracing::info!(
        asset = %request.asset,
        version = %&request.version.to_hex()[..12],
        frames = request.frames,
        frame_bytes,
        outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "upload"
    );
    send_json(socket, &answer).await
}

/// Applies a binary patch the frame held, if any (clients send none, but the machine reads
/// them).
fn applied(machine: &mut ClientSync) -> Result<(), assetsync_protocol::Error> {
    while machine.has_work() {
        machine.work()?;
    }
    Ok(())
}

/// The machine that reads the upload's frames, with the asset's current version; or the answer
/// that refuses it.
async fn start(
    state: &AppState,
    admitted: Result<Option<&Module>, Refusal>,
    request: &UploadRequest,
) -> Result<(ClientSync, Option<Arc<Indexed>>), ServerMessage> {
    let id = request.id;
    let module = admitted.map_err(|(code, why)| refuse(id, code, why))?;
    let asset = AssetPath::new(&request.asset).map_err(|e| refuse(id, ErrorCode::BadPath, e.to_string()))?;
    let current = match state.index.current(&asset).await {
        Ok(current) => Some(current),
        Err(IndexError::Unknown(_)) => None,
        Err(e) => return Err(refuse(id, code_of(&e), e.to_string())),
    };
    let version = current.as_ref().map(|c| c.version);
    if version != request.base {
        return Err(ServerMessage::Conflict { id, version });
    }
    let base = current.as_ref().map(|c| c.manifest.as_ref().clone());
    let (mut machine, _) = receiver(request, asset, base)
        .map_err(|e| refuse(id, ErrorCode::BadMessage, nothing_written(&request.asset, &e)))?;
    let len = machine.manifest().map_or(0, |m| m.len);
    let limit = state.index.max_asset_bytes();
    if len > limit {
        let why =
            format!("{:?} would be {len} bytes, over the server's limit of {limit} bytes", request.asset);
        return Err(refuse(id, ErrorCode::TooLarge, why));
    }
    if let Some(module) = module {
        let old = current.as_ref().map_or(0, |c| c.data.len() as u64);
        within_limits(module, old, len).await.map_err(|why| refuse(id, ErrorCode::TooLarge, why))?;
    }
    if machine.wanted_prefix().is_some()
        && let Some(current) = &current
    {
        machine.set_prefix(Ok(current.data.to_vec()), true);
    }
    Ok((machine, current))
}

/// Checks that replacing a file of `old` bytes with one of `new` bytes keeps `module` within its
/// largest file and its quota. Uploads to different files of a module are checked at once, so
/// two that each fit may together go over the quota by up to one file.
async fn within_limits(module: &Module, old: u64, new: u64) -> Result<(), String> {
    if let Some(max) = module.max_file_bytes.filter(|max| new > *max) {
        return Err(format!(
            "the file would be {new} bytes, over module {}'s limit of {max} bytes",
            module.name
        ));
    }
    let Some(quota) = module.quota_bytes else { return Ok(()) };
    let dir = module.path.clone();
    let used = tokio::task::spawn_blocking(move || crate::modules::usage(&dir))
        .await
        .expect("counting task panicked")
        .map_err(|e| format!("cannot count module {}'s bytes: {e}", module.name))?;
    let after = used.saturating_sub(old) + new;
    if after > quota {
        return Err(format!(
            "the upload would bring module {} to {after} bytes, over its quota of {quota} bytes",
            module.name
        ));
    }
    Ok(())
}

/// Rebuilds and verifies the uploaded file from the frames and the current version's chunks,
/// then writes it.
async fn finish(
    state: &AppState,
    request: &UploadRequest,
    machine: ClientSync,
    current: Option<Arc<Indexed>>,
) -> ServerMessage {
    let id = request.id;
    let asset = machine.asset().clone();
    let kept = state.uploads.take(&asset, request.version);
    let rebuilt = tokio::task::spawn_blocking(move || {
        let at: HashMap<ChunkId, usize> = match &current {
            Some(current) => current.manifest.chunks.iter().enumerate().map(|(i, c)| (c.id, i)).collect(),
            None => HashMap::new(),
        };
        let local = machine
            .local_chunks()
            .into_iter()
            .filter_map(|id| match (kept.get(&id), &current, at.get(&id)) {
                (Some(chunk), ..) => Some((id, chunk.bytes().to_vec())),
                (None, Some(current), Some(&i)) => Some((id, current.chunk(i).to_vec())),
                _ => None,
            })
            .collect();
        machine.finish(local)
    })
    .await
    .expect("rebuilding task panicked");
    let synced = match rebuilt {
        Ok(synced) => synced,
        Err(e) => return refuse(id, ErrorCode::BadMessage, nothing_written(&request.asset, &e)),
    };
    let written = state.index.write(&asset, request.base, synced.data).await;
    answer_write(id, written.map(|w| ServerMessage::Uploaded { id, version: w.version }))
}

/// The answer to a write or deletion: `done`'s, `conflict`, or the error.
fn answer_write(id: u32, done: Result<ServerMessage, WriteError>) -> ServerMessage {
    match done {
        Ok(answer) => answer,
        Err(WriteError::Conflict(version)) => ServerMessage::Conflict { id, version },
        Err(e @ WriteError::Refused { .. }) => refuse(id, ErrorCode::BadPath, e.to_string()),
        Err(WriteError::Index(e)) => refuse(id, code_of(&e), e.to_string()),
        Err(e @ WriteError::Io { .. }) => {
            tracing::warn!(error = %e, "not written");
            refuse(id, ErrorCode::Internal, e.to_string())
        }
    }
}

/// Answers `list_folder`: the folder's files and versions, none of their bytes (an empty list
/// for a folder that does not exist yet, which a push creates).
pub(super) async fn list_folder(
    socket: &mut WebSocket,
    state: &AppState,
    peer: &Peer,
    id: u32,
    folder: &str,
) -> Result<(), Fatal> {
    let scope = match Scope::new(folder) {
        Ok(scope) => scope,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    let files = match state.index.list(&scope).await {
        Ok(files) => files,
        // Not there yet: the push creates it.
        Err(IndexError::Unknown(_)) => Vec::new(),
        Err(e) => return send_json(socket, &refuse(id, code_of(&e), e.to_string())).await,
    };
    let files =
        files.iter().map(|f| FolderEntry { asset: f.manifest.path.clone(), version: f.version }).collect();
    let listing = ServerMessage::Folder {
        id,
        files,
        removed: Vec::new(),
        delta: false,
        version: None,
        packs: 0,
        more: false,
    };
    send_listing(socket, listing, peer).await
}

/// Answers `get_shape`: the folder's folders, links and executable files.
pub(super) async fn get_shape(
    socket: &mut WebSocket,
    state: &AppState,
    id: u32,
    folder: &str,
    have: Option<VersionId>,
) -> Result<(), Fatal> {
    let answer = match Scope::new(folder) {
        Err(e) => refuse(id, ErrorCode::BadPath, e.to_string()),
        Ok(scope) => match state.index.shape(&scope).await {
            Ok(shape) => {
                let same = have.is_some_and(|have| have == shape.digest());
                ServerMessage::Shape { id, shape: (!same).then(|| shape.as_ref().clone()) }
            }
            Err(e) => refuse(id, code_of(&e), e.to_string()),
        },
    };
    send_json(socket, &answer).await
}

/// Answers `delete`: the file is deleted if it is still version `base`.
pub(super) async fn delete(
    socket: &mut WebSocket,
    state: &AppState,
    id: u32,
    asset: &str,
    base: VersionId,
) -> Result<(), Fatal> {
    let answer = match AssetPath::new(asset) {
        Err(e) => refuse(id, ErrorCode::BadPath, e.to_string()),
        Ok(asset) => {
            let removed = state.index.remove(&asset, base).await;
            tracing::info!(%asset, removed = removed.is_ok(), "delete");
            answer_write(id, removed.map(|()| ServerMessage::Deleted { id }))
        }
    };
    send_json(socket, &answer).await
}

/// The line refusing an upload of `asset` whose data is bad.
fn nothing_written(asset: &str, e: &Error) -> String {
    let e = match e {
        Error::FileMismatch => {
            "the uploaded chunks rebuild to another file than the version announced".into()
        }
        Error::MissingLocal(_) => "the upload names chunks the server's version does not hold".into(),
        e => e.to_string(),
    };
    format!("upload of {asset:?}: {e}; nothing was written")
}

/// The next binary frame of an upload.
async fn next_frame(socket: &mut WebSocket, state: &AppState) -> Result<Bytes, Fatal> {
    let lost = |why: &dyn std::fmt::Display| {
        let why = format!("connection lost mid-upload ({why}); nothing was written");
        Fatal::new(ErrorCode::BadMessage, close_code::ERROR, why)
    };
    loop {
        let Ok(received) = tokio::time::timeout(state.limits.idle_timeout, socket.recv()).await else {
            let why = "idle timeout mid-upload; nothing was written";
            return Err(Fatal::new(ErrorCode::IdleTimeout, close_code::POLICY, why));
        };
        match received {
            Some(Ok(Message::Binary(frame))) => return Ok(frame),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                let why = "a text message among an upload's frames; nothing was written";
                return Err(Fatal::new(ErrorCode::BadMessage, close_code::PROTOCOL, why));
            }
            Some(Err(e)) => return Err(lost(&e)),
            Some(Ok(Message::Close(_))) | None => return Err(lost(&"closed")),
        }
    }
}

/// Chunks of uploads cut short, by asset and announced version, kept for their resumption for
/// [`KEPT_FOR`], within [`KEPT_BYTES`] in all (the oldest dropped first).
#[derive(Default)]
pub(crate) struct KeptUploads {
    uploads: Mutex<VecDeque<Kept>>,
}

struct Kept {
    asset: AssetPath,
    version: VersionId,
    since: Instant,
    chunks: HashMap<ChunkId, VerifiedChunk>,
}

/// How long the chunks of an upload cut short are kept.
const KEPT_FOR: Duration = Duration::from_secs(600);
/// Chunk bytes kept from uploads cut short, in all.
const KEPT_BYTES: usize = 256 << 20;

impl KeptUploads {
    /// Adds `chunks` to what is kept of the upload of `version` of `asset`.
    fn keep(&self, asset: &AssetPath, version: VersionId, chunks: Vec<VerifiedChunk>) {
        if chunks.is_empty() {
            return;
        }
        let mut uploads = self.uploads.lock().expect("poisoned");
        uploads.retain(|k| k.since.elapsed() < KEPT_FOR);
        let at = uploads.iter().position(|k| k.asset == *asset && k.version == version);
        let mut kept = match at {
            Some(at) => uploads.remove(at).expect("found above"),
            None => Kept { asset: asset.clone(), version, since: Instant::now(), chunks: HashMap::new() },
        };
        kept.since = Instant::now();
        kept.chunks.extend(chunks.into_iter().map(|c| (c.id(), c)));
        uploads.push_back(kept);
        let bytes = |k: &Kept| k.chunks.values().map(|c| c.bytes().len()).sum::<usize>();
        while uploads.iter().map(bytes).sum::<usize>() > KEPT_BYTES && uploads.len() > 1 {
            uploads.pop_front();
        }
    }

    /// The chunks kept of the upload of `version` of `asset`.
    fn held(&self, asset: &AssetPath, version: VersionId) -> Vec<ChunkId> {
        let uploads = self.uploads.lock().expect("poisoned");
        let kept = uploads
            .iter()
            .find(|k| k.asset == *asset && k.version == version && k.since.elapsed() < KEPT_FOR);
        kept.map(|k| k.chunks.keys().copied().collect()).unwrap_or_default()
    }

    /// Takes the chunks kept of the upload of `version` of `asset`: the upload is being received.
    fn take(&self, asset: &AssetPath, version: VersionId) -> HashMap<ChunkId, VerifiedChunk> {
        let mut uploads = self.uploads.lock().expect("poisoned");
        let at = uploads.iter().position(|k| k.asset == *asset && k.version == version);
        at.and_then(|at| uploads.remove(at)).map(|k| k.chunks).unwrap_or_default()
    }
}
