//! The native driver: runs the protocol crate's engine machines, moving bytes between them, the
//! socket and the cache. Every decision (what to ask, keep, retry, commit) is the machine's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assetsync_protocol::engine::{
    Action, AssetSync, ClientError, Fetched, Finished, FolderSync, Input, MAX_OTHER_VERSIONS, Machine,
    ProgressGate,
};
use assetsync_protocol::shape::Shape;
use assetsync_protocol::{AssetPath, FolderEntry, Hash, Manifest, Scope, offload};

use crate::cache::{Cache, OutCheck, Outputs};
use crate::connection::{Connection, Received};
use crate::download::{Downloads, Failure};
use crate::pull::{FolderReport, PullConfig, PullEvent, PullReport};
use crate::{CacheError, Error};

impl Connection {
    /// Pulls one asset, or every file of a folder, reporting each as it lands.
    pub(crate) async fn pull_target(
        &mut self,
        cache: &mut Cache,
        target: &Scope,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> Result<(), Error> {
        match target {
            Scope::Asset(asset) => self.pull_asset(cache, asset, config, report).await,
            folder => self.pull_folder(cache, folder, config, report).await,
        }
    }

    /// Pulls one asset. Its figures come from the socket counters: they also cover the handshakes
    /// of reconnections and the partial messages a cut threw away.
    async fn pull_asset(
        &mut self,
        cache: &mut Cache,
        asset: &AssetPath,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> Result<(), Error> {
        let (started, wire0) = (Instant::now(), self.wire());
        let base = cache.current(asset);
        let others = cache.others(asset, MAX_OTHER_VERSIONS);
        let mut machine = AssetSync::new(asset.clone(), base, others, self.next_id);
        if self.follows {
            machine = machine.without_resume();
        }
        let target = Scope::Asset(asset.clone());
        let unchanged = self.drive(&mut machine, cache, config, report).await.map_err(|e| e.of(&target))?;
        self.next_id = machine.next_id();
        let done = machine.finish();
        if let (Fetched::Unchanged(_), Some(data)) = (&done.fetched, unchanged) {
            // The cached copy is current: `--out` gets it again, as a single pull repairs.
            write_out(cache, config, done.manifest(), &data)?;
        }
        let wire = (self.wire().0 - wire0.0, self.wire().1 - wire0.1);
        report(&PullEvent::Pulled(PullReport::new(&done, started, Some(wire))));
        Ok(())
    }

    /// Pulls a folder; then files under `--out` that were edited or deleted since they were
    /// written are written again (as rsync would), each by a sync that verifies the cached copy.
    async fn pull_folder(
        &mut self,
        cache: &mut Cache,
        folder: &Scope,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> Result<(), Error> {
        let (started, wire0, requests0) = (Instant::now(), self.wire(), self.requests);
        let held = cache.entries_in(folder);
        // The copies under --out are checked on another thread while the folder syncs.
        let checking = check_outputs(cache.out_check(), config.out.clone(), held.clone(), folder.clone());
        let mut machine = FolderSync::new(folder.clone(), held, self.next_id);
        if self.follows {
            machine = machine.without_resume();
        }
        // A copy under --out mirrors the server's shape, asked in the same request unless it
        // is the one the cache kept.
        let known_shape = config.out.is_some().then(|| cache.shape(folder).unwrap_or_default());
        if let Some(known) = &known_shape {
            machine = machine.with_shape(known.digest());
        }
        let driven = self.drive(&mut machine, cache, config, report).await;
        let Before { outputs, copy } = checking.await.expect("output checking task panicked");
        driven.map_err(|e| e.of(folder))?;
        self.next_id = machine.next_id();
        let done = machine.finish();
        // Those the sync wrote or removed are as they should be now.
        let synced: HashSet<&AssetPath> = done.fetched.iter().chain(&done.removed).collect();
        let stale: Vec<AssetPath> = outputs.stale.into_iter().filter(|a| !synced.contains(a)).collect();
        for asset in &stale {
            self.pull_asset(cache, asset, config, report).await?;
        }
        if let (Some(out), Some(copy), Some(known)) = (&config.out, copy, known_shape) {
            let shape = match done.shape {
                Some(shape) => {
                    cache.keep_shape(folder, &shape)?;
                    shape
                }
                None => known,
            };
            mirror_shape(cache, folder, out, copy?, shape, config).await?;
        }
        report(&PullEvent::Folder(FolderReport {
            folder: folder.to_string(),
            files: done.files,
            fetched: names(&done.fetched),
            removed: names(&done.removed),
            repaired: names(&stale),
            wire_bytes_in: self.wire().0 - wire0.0,
            wire_bytes_out: self.wire().1 - wire0.1,
            http_bytes_in: done.report.downloaded,
            requests: self.requests - requests0,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }));
        Ok(())
    }

    /// Runs `machine` to its end, moving bytes between it, the socket and the cache. Returns the
    /// file of an unchanged asset, as read back from the cache.
    async fn drive(
        &mut self,
        machine: &mut impl Machine,
        cache: &mut Cache,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> Result<Option<Vec<u8>>, Stop> {
        let now = Instant::now();
        let progress = ProgressGate::default();
        let mut local = Local {
            cache,
            config,
            unchanged: None,
            file_started: now,
            progress,
            failed: CacheFault::default(),
        };
        let ended = self.run(machine, |action| local.act(action, report)).await;
        local.failed.behind(ended)?;
        Ok(local.unchanged.take())
    }

    /// Runs `machine` to its end: the connection's actions here, the others (the store's, the
    /// user's) by `act`, which returns the input they need, if any.
    pub(crate) async fn run<M: Machine>(
        &mut self,
        machine: &mut M,
        mut act: impl FnMut(Action<'_>) -> Option<Input<'static>>,
    ) -> Result<(), ClientError> {
        loop {
            let input = match machine.poll() {
                Action::Send(message) => match self.send(&message).await {
                    Ok(()) => Input::Sent { wire: self.written_delta() },
                    Err(e) => Input::Lost(e.to_string()),
                },
                Action::SendFrames(frames) => match self.send_frames(frames).await {
                    Ok(()) => Input::Sent { wire: self.written_delta() },
                    Err(e) => Input::Lost(e.to_string()),
                },
                Action::Receive => {
                    match self.recv().await {
                        Ok(Received::Message(message, wire)) => {
                            machine.handle(Input::Message { message, wire })
                        }
                        Ok(Received::Frame(frame, wire)) => {
                            machine.handle(Input::Frame { frame: &frame, wire })
                        }
                        Err(e) => machine.handle(Input::Lost(e.to_string())),
                    }
                    continue;
                }
                Action::Download { url, from, after_ms } => {
                    tokio::time::sleep(Duration::from_millis(after_ms.into())).await;
                    let url = offload::resolve(&self.url, url);
                    let piece = self.downloads.get_or_insert_with(Downloads::new).start(&url, from).await;
                    downloaded(machine, piece);
                    continue;
                }
                Action::ReadDownload => {
                    let piece = self.downloads.get_or_insert_with(Downloads::new).next().await;
                    downloaded(machine, piece);
                    continue;
                }
                Action::Reconnect { after_ms } => {
                    tokio::time::sleep(Duration::from_millis(after_ms.into())).await;
                    match self.reconnect().await {
                        Ok(()) => Input::Reconnected,
                        Err(e) => Input::Lost(e.to_string()),
                    }
                }
                Action::Changed { asset, version } => {
                    self.push_change(asset, version);
                    continue;
                }
                Action::Done => return Ok(()),
                Action::Failed(error) => return Err(error),
                action => match act(action) {
                    Some(input) => input,
                    None => continue,
                },
            };
            machine.handle(input);
        }
    }
}

/// For a run that only asks and receives: nothing else is asked of the driver.
pub(crate) fn unasked(action: Action<'_>) -> Option<Input<'static>> {
    match action {
        Action::Warn(line) => {
            tracing::warn!("{line}");
            None
        }
        other => unreachable!("a listing, shape or deletion does not ask for {other:?}"),
    }
}

/// Gives a piece of an offloaded answer (or why there is none) to `machine`.
fn downloaded(machine: &mut impl Machine, piece: Result<Vec<u8>, Failure>) {
    match piece {
        Ok(piece) => machine.handle(Input::Downloaded(&piece)),
        Err(Failure { why, transient }) => machine.handle(Input::DownloadFailed { why, transient }),
    }
}

/// The cache's side of a run.
struct Local<'a> {
    cache: &'a mut Cache,
    config: &'a PullConfig,
    /// The file of an asset found unchanged, as read back.
    unchanged: Option<Vec<u8>>,
    file_started: Instant,
    progress: ProgressGate,
    failed: CacheFault,
}

impl Local<'_> {
    /// Does what `action` says to the cache and `--out`; the input it needs, if any.
    fn act(&mut self, action: Action<'_>, report: &mut impl FnMut(&PullEvent)) -> Option<Input<'static>> {
        let cache = &mut *self.cache;
        Some(match action {
            Action::LoadFile(m) => Input::File(cache.file(m)),
            Action::CheckFile(m) => Input::Checked(cache.file(m).map(|data| self.unchanged = Some(data))),
            Action::LoadManifests(versions) => Input::Manifests(cache.manifests(&versions)),
            Action::LoadChunks { ids, .. } => Input::Chunks(cache.chunks(ids)),
            Action::Verify(data) => Input::Digest(Hash::of(data)),
            Action::Work => Input::Work,
            Action::Keep(chunks) => self.failed.stored(cache.store_chunks(chunks)),
            Action::Commit(synced) | Action::Stage(synced) => {
                let out = self.config.copy_of(&synced.manifest.path);
                let file = out.as_deref().map(|p| (p, &synced.data[..]));
                let (manifest, version, chunks) = (&synced.manifest, synced.version, &synced.received[..]);
                self.failed.stored(match action {
                    Action::Commit(_) => cache.commit(manifest, version, chunks, file),
                    _ => cache.stage(manifest, version, chunks, file, false),
                })
            }
            Action::Remove(asset) => {
                let removed = cache.remove(asset, self.config.removed_copy(asset).as_deref());
                if removed.is_ok() {
                    report(&PullEvent::Removed { asset: asset.to_string() });
                }
                self.failed.stored(removed)
            }
            Action::Publish => self.failed.stored(cache.publish()),
            Action::Discard(ids) => {
                cache.discard(&ids);
                return None;
            }
            Action::Warn(line) => {
                tracing::warn!("{line}");
                return None;
            }
            Action::FileDone(done) => {
                report(&PullEvent::Pulled(PullReport::new(&done, self.file_started, None)));
                self.file_started = Instant::now();
                return None;
            }
            Action::Progress { asset, received, total } => {
                if self.progress.due(&asset, received, total) {
                    report(&PullEvent::Progress { asset: asset.to_string(), received, total });
                }
                return None;
            }
            // This driver leaves hashing to the machine, and the chunk cache keeps the chunks
            // kept after a cut as part of the commit.
            Action::FinishHashing | Action::Prefetch(_) | Action::Release(_) => return None,
            Action::Send(_)
            | Action::SendFrames(_)
            | Action::Receive
            | Action::Reconnect { .. }
            | Action::Changed { .. }
            | Action::Download { .. }
            | Action::ReadDownload => {
                unreachable!("the connection's actions are the driver's")
            }
            Action::Done | Action::Failed(_) => unreachable!("handled by the driver"),
        })
    }
}

/// The cache error behind the [`Input::Stop`] a driver gave its machine, returned as itself (its
/// message and exit status) when the machine fails on it.
#[derive(Debug, Default)]
pub(crate) struct CacheFault(Option<CacheError>);

impl CacheFault {
    /// [`Input::Stored`], or the error as [`Input::Stop`].
    pub(crate) fn stored(&mut self, done: Result<(), CacheError>) -> Input<'static> {
        match done {
            Ok(()) => Input::Stored,
            Err(e) => {
                let line = e.to_string();
                self.0.get_or_insert(e);
                Input::Stop(line)
            }
        }
    }

    /// How a run ended: a failure on a cache error is that error.
    pub(crate) fn behind(&mut self, ended: Result<(), ClientError>) -> Result<(), Stop> {
        match (ended, self.0.take()) {
            (Err(ClientError::Stopped(_)), Some(e)) => Err(Stop::Cache(e)),
            (ended, _) => ended.map_err(Stop::Sync),
        }
    }
}

/// Why a run stopped: the engine's verdict, or a cache that could not be written.
#[derive(Debug)]
pub(crate) enum Stop {
    Sync(ClientError),
    Cache(CacheError),
}

impl Stop {
    /// The error of a run for `target`.
    pub(crate) fn of(self, target: &Scope) -> Error {
        match self {
            Stop::Sync(error) => Error::sync(target, error),
            Stop::Cache(e) => Error::Cache(e),
        }
    }
}

/// What a folder's copy under `--out` was before its sync.
struct Before {
    outputs: Outputs,
    /// Its folders, links and files (none without `--out`).
    copy: Option<Result<crate::shape::Copy, Error>>,
}

/// Checks the copies of `held` under `out` (see [`OutCheck::check`]) and reads the copy of
/// `folder` (see [`crate::shape::read`]) on the blocking pool, while the folder syncs.
fn check_outputs(
    check: OutCheck,
    out: Option<PathBuf>,
    held: Vec<FolderEntry>,
    folder: Scope,
) -> tokio::task::JoinHandle<Before> {
    tokio::spawn(async move {
        let Some(dir) = out else { return Before { outputs: Outputs::default(), copy: None } };
        // The copy's shape is read beside the check of its files.
        let shape_dir = dir.clone();
        let copy = tokio::task::spawn_blocking(move || crate::shape::read(&shape_dir, folder.path()));
        let outputs = tokio::task::spawn_blocking(move || check.check(&held, &dir));
        let outputs = outputs.await.expect("output checking task panicked");
        let copy = copy.await.expect("shape reading task panicked").map(|mut copy| {
            copy.shape.exec = outputs.executable.clone();
            copy
        });
        Before { outputs, copy: Some(copy) }
    })
}

/// Gives the copy of `folder` under `out`, which was `copy` before its sync, the server's
/// `shape` (folders, links and modes).
async fn mirror_shape(
    cache: &Cache,
    folder: &Scope,
    out: &Path,
    copy: crate::shape::Copy,
    shape: Shape,
    config: &PullConfig,
) -> Result<(), Error> {
    let files: Vec<AssetPath> = cache.entries_in(folder).into_iter().map(|e| e.asset).collect();
    let (out, delete) = (out.to_path_buf(), !config.no_delete);
    tokio::task::spawn_blocking(move || crate::shape::apply(&out, &copy, &shape, &files, delete))
        .await
        .expect("shaping task panicked")
}

fn names(assets: &[AssetPath]) -> Vec<String> {
    assets.iter().map(ToString::to_string).collect()
}

/// Writes `data`, the verified file of `manifest`, to `config.out` if set.
fn write_out(cache: &Cache, config: &PullConfig, manifest: &Manifest, data: &[u8]) -> Result<(), CacheError> {
    let Some(path) = config.copy_of(&manifest.path) else { return Ok(()) };
    cache.write_out(manifest, &path, data, true)
}

impl PullReport {
    /// The report of `done`, with the socket bytes `wire` (read, written) if measured, else the
    /// machine's count of the bytes of the messages it was given.
    fn new(done: &Finished, started: Instant, wire: Option<(u64, u64)>) -> Self {
        let manifest = done.manifest();
        let (wire_bytes_in, wire_bytes_out) = wire.unwrap_or((done.report.wire_in, done.report.wire_out));
        PullReport {
            asset: manifest.path.to_string(),
            version: done.version().to_hex(),
            bytes: manifest.len,
            chunks: manifest.chunks.len(),
            chunks_reused: done.chunks_reused(),
            wire_bytes_in,
            wire_bytes_out,
            http_bytes_in: done.report.downloaded,
            elapsed_ms: started.elapsed().as_millis() as u64,
            requests: done.report.requests,
            retried: done.report.retried,
        }
    }
}
