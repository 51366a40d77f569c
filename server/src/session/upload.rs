//! `get_manifest` and `upload`: a client sends a new version of an asset as a delta against the
//! server's (see [`assetsync_protocol::upload`]). It is rebuilt and verified by the client's own
//! machine, and written only if the file is still the version the upload was made from.

use std::collections::HashMap;
use std::time::Instant;

use assetsync_protocol::upload::{receiver, write_manifest};
use assetsync_protocol::{
    AssetPath, ChunkId, ClientSync, Error, ErrorCode, MAX_CHUNKS, ServerMessage, UploadRequest,
};
use axum::extract::ws::{Message, WebSocket, close_code};
use bytes::Bytes;

use super::answer::{code_of, refuse};
use super::{Fatal, send_json};
use crate::index::{IndexError, Indexed, WriteError};
use crate::server::AppState;

/// Answers `get_manifest`: the asset's current manifest, the base of an upload from a client
/// that does not hold it.
pub(super) async fn get_manifest(
    socket: &mut WebSocket,
    state: &AppState,
    id: u32,
    asset: &str,
) -> Result<(), Fatal> {
    let answer = match AssetPath::new(asset) {
        Err(e) => refuse(id, ErrorCode::BadPath, e.to_string()),
        Ok(asset) => match state.index.current(&asset).await {
            Ok(current) => ServerMessage::Manifest {
                id,
                version: current.version,
                manifest: write_manifest(&current.manifest),
            },
            Err(e) => refuse(id, code_of(&e), e.to_string()),
        },
    };
    send_json(socket, &answer).await
}

/// Receives an `upload` and its frames, then writes it, or refuses it with nothing written.
/// The announced frames are read in every case, so the connection stays in step.
pub(super) async fn upload(
    socket: &mut WebSocket,
    state: &AppState,
    request: UploadRequest,
) -> Result<(), Fatal> {
    let started = Instant::now();
    let id = request.id;
    // A frame carries at least one chunk.
    if request.frames as usize > MAX_CHUNKS {
        let why = format!("an upload of {} frames, over the {MAX_CHUNKS} a file may have", request.frames);
        return Err(Fatal::new(ErrorCode::TooLarge, close_code::POLICY, why));
    }
    let mut receiving = start(state, &request).await;
    let mut frame_bytes = 0;
    for _ in 0..request.frames {
        let frame = next_frame(socket, state).await?;
        frame_bytes += frame.len();
        if let Ok((machine, _)) = &mut receiving
            && let Err(e) = machine.on_frame(&frame)
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

/// The machine that reads the upload's frames, with the asset's current version; or the answer
/// that refuses it.
async fn start(
    state: &AppState,
    request: &UploadRequest,
) -> Result<(ClientSync, Option<std::sync::Arc<Indexed>>), ServerMessage> {
    let id = request.id;
    if !state.writable {
        let why = "this server does not accept uploads: start it with serve --allow-write --token-file FILE";
        return Err(refuse(id, ErrorCode::ReadOnly, why.into()));
    }
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
    if machine.wanted_prefix().is_some()
        && let Some(current) = &current
    {
        machine.set_prefix(Ok(current.data.to_vec()), true);
    }
    Ok((machine, current))
}

/// Rebuilds and verifies the uploaded file from the frames and the current version's chunks,
/// then writes it.
async fn finish(
    state: &AppState,
    request: &UploadRequest,
    machine: ClientSync,
    current: Option<std::sync::Arc<Indexed>>,
) -> ServerMessage {
    let id = request.id;
    let rebuilt = tokio::task::spawn_blocking(move || {
        let local = match &current {
            Some(current) => {
                let wanted = machine.local_chunks();
                let at: HashMap<ChunkId, usize> =
                    current.manifest.chunks.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
                wanted
                    .into_iter()
                    .filter_map(|id| Some((id, current.chunk(*at.get(&id)?).to_vec())))
                    .collect()
            }
            None => Vec::new(),
        };
        machine.finish(local)
    })
    .await
    .expect("rebuilding task panicked");
    let synced = match rebuilt {
        Ok(synced) => synced,
        Err(e) => return refuse(id, ErrorCode::BadMessage, nothing_written(&request.asset, &e)),
    };
    let asset = synced.manifest.path.clone();
    match state.index.write(&asset, request.base, synced.data).await {
        Ok(written) => ServerMessage::Uploaded { id, version: written.version },
        Err(WriteError::Conflict(version)) => ServerMessage::Conflict { id, version },
        Err(e @ WriteError::Refused { .. }) => refuse(id, ErrorCode::BadPath, e.to_string()),
        Err(WriteError::Index(e)) => refuse(id, code_of(&e), e.to_string()),
        Err(e @ WriteError::Io { .. }) => {
            tracing::warn!(%asset, error = %e, "upload not written");
            refuse(id, ErrorCode::Internal, e.to_string())
        }
    }
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
