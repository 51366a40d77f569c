//! The native client's `push`: uploads local files as new versions of the server's assets,
//! sending only the chunks the server lacks (see [`assetsync_protocol::upload`]).

use std::path::PathBuf;
use std::time::Instant;

use assetsync_protocol::engine::{Action, Input, Machine, UploadSync, Uploaded};
use assetsync_protocol::{AssetPath, Scope, compress, upload};
use serde::Serialize;

use crate::Error;
use crate::cache::Cache;
use crate::connection::Connection;
use crate::drive::Stop;

/// Where to push from and to.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// `ws://host:port/sync`.
    pub server: String,
    /// Each asset is read from `from/ASSET`.
    pub from: PathBuf,
    /// The chunk cache `pull` uses: the base of each upload is the version last pulled or
    /// pushed through it, and the pushed version is committed to it. `None`: the base is the
    /// server's version when the push starts.
    pub cache: Option<PathBuf>,
    /// The server's shared secret.
    pub token: Option<String>,
    /// Upload over the server's version even when it is not the cache's.
    pub force: bool,
}

/// What one asset's upload did, printed by `push --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// The asset path.
    pub asset: String,
    /// The server's version now.
    pub version: String,
    /// File size.
    pub bytes: u64,
    /// Manifest entries.
    pub chunks: usize,
    /// Whether the server already held exactly this file: nothing was uploaded.
    pub unchanged: bool,
    /// Distinct chunks whose bytes were sent.
    pub chunks_sent: usize,
    /// Their bytes, before compression.
    pub chunk_bytes_sent: u64,
    /// Bytes read from the socket for this asset (WebSocket framing included).
    pub wire_bytes_in: u64,
    /// Bytes written to the socket for this asset.
    pub wire_bytes_out: u64,
    /// Wall time, reading the file and committing to the cache included.
    pub elapsed_ms: u64,
}

/// Pushes each asset in turn over one connection, calling `report` after each. An asset the
/// server refuses (a conflict, say) fails alone: the others are still pushed, and the error
/// names every one that failed.
pub async fn push(
    config: &PushConfig,
    assets: &[AssetPath],
    mut report: impl FnMut(&PushReport),
) -> Result<Vec<PushReport>, Error> {
    let mut cache = match &config.cache {
        Some(dir) => Some(crate::pull::open_cache(dir).await?),
        None => None,
    };
    let mut conn = Connection::open_resilient(&config.server, config.token.as_deref()).await?;
    let (mut reports, mut failed) = (Vec::new(), Vec::new());
    for asset in assets {
        match conn.push_asset(cache.as_mut(), asset, config).await {
            Ok(r) => {
                report(&r);
                reports.push(r);
            }
            Err(e @ (Error::Sync { .. } | Error::Local(_))) if !e.retryable() => failed.push(e),
            Err(e) => {
                failed.push(e);
                break;
            }
        }
    }
    conn.close().await;
    match failed.len() {
        0 => Ok(reports),
        1 => Err(failed.remove(0)),
        _ => Err(Error::Several(failed)),
    }
}

/// Compresses an upload's batch: at zstd's best level for a small upload (one batch, with its
/// prefix within 2 MiB); past that at level 9 against a prefix, which indexes a large one some
/// 20 times faster than level 19 for a patch a third larger, and at level 3 without one
/// (BENCHMARKS.md, uploads).
fn compressor(raw: &[u8], prefix: Option<&[u8]>) -> Option<Vec<u8>> {
    let small = raw.len() < upload::UPLOAD_BATCH && raw.len() + prefix.map_or(0, <[u8]>::len) <= 2 << 20;
    let level = match (small, prefix) {
        (true, _) => 19,
        (false, Some(_)) => 9,
        (false, None) => 3,
    };
    compress::compress(raw, prefix, level)
}

impl Connection {
    async fn push_asset(
        &mut self,
        mut cache: Option<&mut Cache>,
        asset: &AssetPath,
        config: &PushConfig,
    ) -> Result<PushReport, Error> {
        let (started, wire0) = (Instant::now(), self.wire());
        let target = Scope::Asset(asset.clone());
        let path = config.from.join(asset.as_str());
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::Local(format!("cannot read {}: {e}; nothing was pushed", path.display())))?;
        let base = match (&cache, config.force) {
            (Some(cache), false) => Some(cache.current(asset)),
            _ => None,
        };
        let mut machine = UploadSync::new(asset.clone(), data, base, self.next_id).compressed(compressor);
        if config.force {
            machine = machine.force();
        }
        if cache.is_some() {
            machine = machine.committing();
        }
        let ended = self.run_upload(&mut machine, cache.as_deref_mut()).await;
        if let Some(cache) = cache {
            cache.publish()?;
        }
        ended.map_err(|e| e.of(&target))?;
        self.next_id = machine.next_id();
        let done: Uploaded = machine.finish();
        let wire = self.wire();
        Ok(PushReport {
            asset: asset.to_string(),
            version: done.version.to_hex(),
            bytes: done.manifest.len,
            chunks: done.manifest.chunks.len(),
            unchanged: done.unchanged,
            chunks_sent: done.chunks_sent,
            chunk_bytes_sent: done.chunk_bytes,
            wire_bytes_in: wire.0 - wire0.0,
            wire_bytes_out: wire.1 - wire0.1,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Runs an upload machine over this connection ([`Connection::run`]): the base's file from
    /// the cache, and the commit of the uploaded version to it.
    async fn run_upload(
        &mut self,
        machine: &mut UploadSync,
        mut cache: Option<&mut Cache>,
    ) -> Result<(), Stop> {
        self.run(machine, |action| {
            Ok(Some(match action {
                Action::LoadFile(base) => Input::File(match cache.as_deref() {
                    Some(cache) => cache.file(base),
                    None => Err(Vec::new()),
                }),
                Action::Commit(synced) => {
                    if let Some(cache) = cache.as_deref_mut() {
                        cache.commit(&synced.manifest, synced.version, &synced.received, None)?;
                    }
                    Input::Stored
                }
                Action::Warn(line) => {
                    tracing::warn!("{line}");
                    return Ok(None);
                }
                other => unreachable!("an upload does not ask for {other:?}"),
            }))
        })
        .await
    }
}

/// Reads `DIR/ASSET` names for `push`: each ASSET must be a file path (folders come later).
pub fn assets(names: &[String]) -> Result<Vec<AssetPath>, String> {
    names
        .iter()
        .map(|name| match Scope::new(name) {
            Ok(Scope::Asset(asset)) => Ok(asset),
            Ok(_) => Err(format!("{name:?} is a folder: push its files by name")),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}
