//! The native client's `push`: uploads local files as new versions of the server's assets,
//! sending only the chunks the server lacks (see [`assetsync_protocol::upload`]); a folder's
//! files each, and with `--delete`, removes the server's files that are gone locally.

use std::path::{Path, PathBuf};
use std::time::Instant;

use assetsync_protocol::engine::{
    Action, Exchange, Exchanged, Input, Machine, UploadSync, Uploaded, plan_folder_push,
};
use assetsync_protocol::{AssetPath, ChunkParams, Manifest, Scope, VersionId, compress, upload};
use serde::Serialize;

use crate::Error;
use crate::cache::Cache;
use crate::connection::Connection;
use crate::drive::{CacheFault, Stop, unasked};

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
    /// Pushing a folder, delete the server's files that are not in the local folder.
    pub delete: bool,
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
    /// Whether the server's file was deleted (`--delete`: it is not in the local folder);
    /// `version` is the one deleted.
    pub removed: bool,
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

/// Pushes each target in turn over one connection, calling `report` after each file: a file,
/// or a folder's files (listing the server's folder first: files it holds exactly are not
/// sent, each other upload must find the server's file as listed, and with `delete` the
/// server's files missing locally are deleted). A file the server refuses (a conflict, say)
/// fails alone: the others are still pushed, and the error names every one that failed.
pub async fn push(
    config: &PushConfig,
    targets: &[Scope],
    mut report: impl FnMut(&PushReport),
) -> Result<Vec<PushReport>, Error> {
    let mut cache = match &config.cache {
        Some(dir) => Some(crate::pull::open_cache(dir).await?),
        None => None,
    };
    let mut conn = Connection::open_resilient(&config.server, config.token.as_deref()).await?;
    let (mut reports, mut failed) = (Vec::new(), Vec::new());
    'targets: for target in targets {
        let steps = match target {
            Scope::Asset(asset) => Ok(vec![Step::Upload(asset.clone(), None)]),
            folder => conn.plan_folder(folder, config).await,
        };
        let steps = match steps {
            Ok(steps) => steps,
            Err(e) => match failed_alone(e, &mut failed) {
                true => continue,
                false => break,
            },
        };
        for step in steps {
            let done = match step {
                Step::Upload(asset, expected) => {
                    conn.push_asset(cache.as_mut(), &asset, config, expected).await
                }
                Step::Unchanged(report) => Ok(report),
                Step::Delete(asset, version) => {
                    conn.delete_asset(cache.as_mut(), asset, version, config).await
                }
            };
            match done {
                Ok(r) => {
                    report(&r);
                    reports.push(r);
                }
                Err(e) => {
                    if !failed_alone(e, &mut failed) {
                        break 'targets;
                    }
                }
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

/// Records `e`; whether it failed its file alone (the server refused it, or it could not be
/// read), so that the push goes on with the next, rather than the connection or the cache.
fn failed_alone(e: Error, failed: &mut Vec<Error>) -> bool {
    let alone = matches!(e, Error::Sync { .. } | Error::Local(_)) && !e.retryable();
    failed.push(e);
    alone
}

/// One file's part of a push.
enum Step {
    /// Upload it; pushing a folder, the server's version it was listed with (`Some(None)`: none).
    Upload(AssetPath, Option<Option<VersionId>>),
    /// The server holds it exactly.
    Unchanged(PushReport),
    /// Delete the server's file, listed as this version.
    Delete(AssetPath, VersionId),
}

impl Connection {
    /// The steps of pushing `folder`: its local files against the server's listing.
    async fn plan_folder(&mut self, folder: &Scope, config: &PushConfig) -> Result<Vec<Step>, Error> {
        let name = match folder {
            Scope::Folder(f) => f.as_str(),
            _ => "",
        };
        let dir = config.from.join(name);
        let owned = name.to_owned();
        let local = tokio::task::spawn_blocking(move || local_files(&dir, &owned))
            .await
            .expect("reading task panicked")
            .map_err(Error::Local)?;
        let mut machine = Exchange::list(name, self.next_id);
        self.run(&mut machine, unasked).await.map_err(|e| Error::sync(folder, e))?;
        self.next_id = machine.next_id();
        let (Exchanged::Listing(listing), _) = machine.finish() else { unreachable!("a listing was asked") };
        let versions = local.iter().map(|f| (f.manifest.path.clone(), f.manifest.version())).collect();
        let plan = plan_folder_push(versions, &listing, config.delete);
        let mut steps = Vec::new();
        for asset in plan.unchanged {
            let file = local.iter().find(|f| f.manifest.path == asset).expect("planned from the local files");
            steps.push(Step::Unchanged(PushReport {
                asset: asset.to_string(),
                version: file.manifest.version().to_hex(),
                bytes: file.manifest.len,
                chunks: file.manifest.chunks.len(),
                unchanged: true,
                removed: false,
                chunks_sent: 0,
                chunk_bytes_sent: 0,
                wire_bytes_in: 0,
                wire_bytes_out: 0,
                elapsed_ms: file.elapsed_ms,
            }));
        }
        steps.extend(plan.upload.into_iter().map(|(asset, there)| Step::Upload(asset, Some(there))));
        steps.extend(plan.delete.into_iter().map(|(asset, version)| Step::Delete(asset, version)));
        Ok(steps)
    }

    /// Deletes the server's `asset` if it is still `version`, and forgets it in the cache.
    async fn delete_asset(
        &mut self,
        cache: Option<&mut Cache>,
        asset: AssetPath,
        version: VersionId,
        config: &PushConfig,
    ) -> Result<PushReport, Error> {
        let started = Instant::now();
        let target = Scope::Asset(asset.clone());
        let mut machine = Exchange::delete(asset.clone(), version, self.next_id);
        if config.force {
            machine = machine.force();
        }
        self.run(&mut machine, unasked).await.map_err(|e| Error::sync(&target, e))?;
        self.next_id = machine.next_id();
        let (_, figures) = machine.finish();
        if let Some(cache) = cache {
            cache.remove(&asset, None)?;
            cache.publish()?;
        }
        Ok(PushReport {
            asset: asset.to_string(),
            version: version.to_hex(),
            bytes: 0,
            chunks: 0,
            unchanged: false,
            removed: true,
            chunks_sent: 0,
            chunk_bytes_sent: 0,
            wire_bytes_in: figures.wire_in,
            wire_bytes_out: figures.wire_out,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Uploads `asset`; pushing a folder, `expected` is the server's version it was listed
    /// with, which the upload must still find there.
    async fn push_asset(
        &mut self,
        mut cache: Option<&mut Cache>,
        asset: &AssetPath,
        config: &PushConfig,
        expected: Option<Option<VersionId>>,
    ) -> Result<PushReport, Error> {
        let (started, wire0) = (Instant::now(), self.wire());
        let target = Scope::Asset(asset.clone());
        let path = config.from.join(asset.as_str());
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::Local(format!("cannot read {}: {e}; nothing was pushed", path.display())))?;
        let base = match (&cache, config.force, expected) {
            (Some(cache), false, _) => Some(cache.current(asset)),
            // Listed as absent: it must still be.
            (None, false, Some(None)) => Some(None),
            _ => None,
        };
        let mut machine = UploadSync::new(asset.clone(), data, base, self.next_id).compressed(compressor);
        if let (false, Some(Some(version))) = (config.force, expected) {
            machine = machine.expecting(version);
        }
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
            removed: false,
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
        let mut failed = CacheFault::default();
        let ended = self
            .run(machine, |action| {
                Some(match action {
                    Action::LoadFile(base) => Input::File(match cache.as_deref() {
                        Some(cache) => cache.file(base),
                        None => Err(Vec::new()),
                    }),
                    Action::Commit(synced) => failed.stored(match cache.as_deref_mut() {
                        Some(cache) => cache.commit(&synced.manifest, synced.version, &synced.received, None),
                        None => Ok(()),
                    }),
                    Action::Warn(line) => {
                        tracing::warn!("{line}");
                        return None;
                    }
                    other => unreachable!("an upload does not ask for {other:?}"),
                })
            })
            .await;
        failed.behind(ended)
    }
}

/// A local file of a pushed folder.
struct LocalFile {
    /// Cut as the server cuts by default.
    manifest: Manifest,
    /// The time reading and cutting it took.
    elapsed_ms: u64,
}

/// The regular files under `dir` (none if it does not exist), named `folder/` and their path in
/// it. Symlinks and other special files are not pushed; temporary files are. Blocking.
fn local_files(dir: &Path, folder: &str) -> Result<Vec<LocalFile>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == dir => return Ok(out),
            Err(e) => return Err(format!("cannot list {}: {e}; nothing was pushed", d.display())),
        };
        for entry in entries {
            let started = Instant::now();
            let entry = entry.map_err(|e| format!("cannot list {}: {e}; nothing was pushed", d.display()))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let rest = path.strip_prefix(dir).ok().and_then(Path::to_str).unwrap_or_default();
            let name = match folder {
                "" => rest.to_owned(),
                folder => format!("{folder}/{rest}"),
            };
            let asset = AssetPath::new(&name).map_err(|e| {
                format!("cannot push {}: {e}; rename it, or push the other files by name", path.display())
            })?;
            let data = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}; nothing was pushed", path.display()))?;
            let manifest =
                Manifest::build(asset, &data, ChunkParams::default()).map_err(|e| e.to_string())?;
            out.push(LocalFile { manifest, elapsed_ms: started.elapsed().as_millis() as u64 });
        }
    }
    out.sort_by(|a, b| a.manifest.path.cmp(&b.manifest.path));
    Ok(out)
}

/// Reads `DIR/ASSET` names for `push`: a file's path, or a folder's ending in `/` (`/` alone:
/// all of `DIR`).
pub fn targets(names: &[String]) -> Result<Vec<Scope>, String> {
    names
        .iter()
        .map(|name| match name.as_str() {
            "/" => Ok(Scope::All),
            name => Scope::new(name).map_err(|e| e.to_string()),
        })
        .collect()
}
