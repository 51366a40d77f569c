//! The browser driver: runs an engine machine ([`assetsync_protocol::engine`]), moving bytes
//! between it, the WebSocket and IndexedDB. Every decision (what to ask, keep, retry, commit)
//! is the machine's; this loop only does what an [`Action`] says.

use std::collections::HashMap;
use std::mem;
use std::rc::Rc;

use assetsync_protocol::engine::{
    Action, ClientError, Fetched, Finished, Input, Machine, ProgressGate, SyncReport, Uploaded,
};
use assetsync_protocol::{ChunkId, Manifest, Synced, VersionId, offload};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::JsValue;

use crate::digest::{self, ChunkHasher};
use crate::download::{Download, Failure};
use crate::socket::{Incoming, Socket};
use crate::store::Staged;
use crate::{Bytes, Client, SyncResult, next, now_ms, report_progress, subscribe, task};

/// What a run produced besides the machine's own result.
#[derive(Default)]
pub(crate) struct Driven {
    /// The file of an asset found unchanged, as remembered or read back and verified.
    pub unchanged: Option<Bytes>,
    /// The files a folder sync committed, in order.
    pub files: Vec<SyncResult>,
    pub timings: Timings,
}

/// Where a sync's time went, reported in its stats.
#[derive(Default)]
pub(crate) struct Timings {
    /// Reading from IndexedDB and committing.
    pub store_ms: f64,
    /// Rebuilding the file and checking its SHA-256.
    pub verify_ms: f64,
    /// Rebuilding the file from a binary patch.
    pub patch_ms: f64,
}

/// Why a run stopped. `in_step`: the server refused the request, so the connection is still
/// in step for the next one; after anything else part of an answer may be in flight, and the
/// connection is dropped.
pub(crate) struct Stopped {
    pub message: String,
    pub in_step: bool,
}

/// One run's state beside the machine.
struct Run<'a> {
    driven: Driven,
    /// The committed file of the asset's current version, for a prefetch.
    base_file: Option<web_sys::Blob>,
    on_progress: Option<&'a Function>,
    progress: ProgressGate,
    /// A folder's files and removals, staged for its publish, made in one transaction (their
    /// files written ahead every [`WRITE_AHEAD_BYTES`]).
    staged: Vec<Staged>,
    /// Bytes of staged files not written yet.
    staged_bytes: usize,
    /// What names this run's files written ahead (see `Store::write_ahead`), and whether any
    /// were.
    run_id: u64,
    written_ahead: bool,
    /// Where the chunks of the staged files not written yet lie (the file's index in `staged`,
    /// the chunk's offset and length in it), for later files of the folder that reuse them
    /// (those written ahead are read back from the store).
    staged_chunks: HashMap<ChunkId, (usize, usize, usize)>,
    /// Why the connection was last lost.
    last_loss: String,
    /// The offloaded answer being fetched over HTTP.
    download: Download,
}

/// Bytes of a folder's verified files held in memory; past them, they are written to the store
/// ahead of the folder's commit, which happens once, at the end. (Writing ahead in smaller parts
/// made a 29 MB folder of 9,000 files twice as slow: a transaction and a `Blob` per part, and
/// chunks reused across files read back from IndexedDB instead of memory.)
const WRITE_AHEAD_BYTES: usize = 32 << 20;

impl Client {
    /// Runs `machine` to its end over `socket` (reconnected in place when the machine says so).
    /// `base_file` is the committed file of the asset's current version, for a prefetch.
    pub(crate) async fn drive(
        self: &Rc<Self>,
        machine: &mut impl Machine,
        socket: &mut Option<Socket>,
        base_file: Option<web_sys::Blob>,
        on_progress: Option<&Function>,
    ) -> Result<Driven, Stopped> {
        let progress = ProgressGate::default();
        let mut run = Run {
            driven: Driven::default(),
            base_file,
            on_progress,
            progress,
            staged: Vec::new(),
            staged_bytes: 0,
            run_id: (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64,
            written_ahead: false,
            staged_chunks: HashMap::new(),
            last_loss: String::new(),
            download: Download::default(),
        };
        self.steps(machine, socket, &mut run).await
    }

    async fn steps(
        self: &Rc<Self>,
        machine: &mut impl Machine,
        socket: &mut Option<Socket>,
        run: &mut Run<'_>,
    ) -> Result<Driven, Stopped> {
        let mut hasher = ChunkHasher::default();
        let mut file_started = now_ms();
        loop {
            let input = match machine.poll() {
                Action::Send(message) => match socket.as_ref().map(|s| self.send(s, &message)) {
                    Some(Ok(wire)) => Input::Sent { wire },
                    Some(Err(why)) => Input::Lost(why),
                    None => Input::Lost("not connected".into()),
                },
                Action::SendFrames(frames) => match socket.as_ref() {
                    Some(s) => match self.send_frames(s, frames, run.on_progress).await {
                        Ok(wire) => Input::Sent { wire },
                        Err(why) => Input::Lost(why),
                    },
                    None => Input::Lost("not connected".into()),
                },
                Action::Receive => {
                    match socket.as_mut().map(next) {
                        Some(next) => match next.await {
                            Ok(Incoming::Message(message, len)) => {
                                machine.handle(Input::Message { message, wire: len as u64 })
                            }
                            Ok(Incoming::Binary(frame)) => {
                                machine.handle(Input::Frame { frame: &frame, wire: frame.len() as u64 });
                                // Hashed by crypto.subtle on another thread while frames keep coming.
                                hasher.start(machine.take_unhashed());
                            }
                            Ok(_) => unreachable!("next() returns messages and frames only"),
                            Err(why) => {
                                run.last_loss.clone_from(&why);
                                machine.handle(Input::Lost(why));
                            }
                        },
                        None => machine.handle(Input::Lost("not connected".into())),
                    }
                    task::yield_if_busy().await;
                    continue;
                }
                Action::Download { url, from, after_ms } => {
                    let url = offload::resolve(&self.url, url);
                    subscribe::sleep(after_ms as i32).await;
                    let piece = run.download.start(&url, from).await;
                    self.downloaded(machine, piece, &mut hasher);
                    continue;
                }
                Action::ReadDownload => {
                    let piece = run.download.next().await;
                    self.downloaded(machine, piece, &mut hasher);
                    task::yield_if_busy().await;
                    continue;
                }
                Action::Work => {
                    task::yield_if_busy().await;
                    let t0 = now_ms();
                    machine.handle(Input::Work);
                    run.driven.timings.patch_ms += now_ms() - t0;
                    hasher.start(machine.take_unhashed());
                    continue;
                }
                Action::FinishHashing => {
                    hasher.start(machine.take_unhashed());
                    for (index, bytes, id) in hasher.finish().await {
                        machine.handle(Input::Hashed { index, bytes, id });
                    }
                    continue;
                }
                Action::Reconnect { after_ms } => {
                    *socket = None;
                    if self.closed.get() {
                        machine.handle(Input::Stop(run.last_loss.clone()));
                        continue;
                    }
                    subscribe::sleep(after_ms as i32).await;
                    match self.handshake().await {
                        Ok(s) => {
                            *socket = Some(s);
                            Input::Reconnected
                        }
                        Err(e) => Input::Lost(message_of(e.into())),
                    }
                }
                Action::FileDone(done) => {
                    // The copy staged for the folder's commit, rather than a second one.
                    let staged = run.staged.last().and_then(|s| s.bytes(done.version()));
                    let held = staged.map(Bytes::Wasm);
                    let file = self.result(done, held, None, &Timings::default(), file_started);
                    run.driven.files.push(file);
                    file_started = now_ms();
                    continue;
                }
                Action::Done => return Ok(mem::take(&mut run.driven)),
                Action::Failed(error) => {
                    let in_step = matches!(error, ClientError::Refused { .. });
                    return Err(Stopped { message: error.to_string(), in_step });
                }
                action => match self.act(action, run).await {
                    Some(input) => input,
                    None => continue,
                },
            };
            machine.handle(input);
        }
    }

    /// Sends an upload's frames, then waits until the browser has sent them, calling
    /// `on_progress({sentBytes, totalBytes})` every 50 ms meanwhile (a browser WebSocket queues
    /// whatever it is given); their size, or why the connection is lost.
    async fn send_frames(
        &self,
        socket: &Socket,
        frames: &[Vec<u8>],
        on_progress: Option<&Function>,
    ) -> Result<u64, String> {
        let before = socket.buffered();
        let mut total = 0;
        for frame in frames {
            socket.send_binary(frame).map_err(|e| e.0)?;
            total += frame.len() as u64;
        }
        self.sent.set(self.sent.get() + total);
        loop {
            let left = socket.buffered().saturating_sub(before).min(total);
            report_progress(on_progress, "sentBytes", total - left, total);
            if left == 0 || !socket.is_open() {
                return Ok(total);
            }
            subscribe::sleep(50).await;
        }
    }

    /// Gives a piece of an offloaded answer (or why there is none) to `machine`, and the chunks
    /// it completed to `hasher`.
    fn downloaded(
        &self,
        machine: &mut impl Machine,
        piece: Result<Vec<u8>, Failure>,
        hasher: &mut ChunkHasher,
    ) {
        match piece {
            Ok(piece) => {
                self.downloaded.set(self.downloaded.get() + piece.len() as u64);
                machine.handle(Input::Downloaded(&piece));
                hasher.start(machine.take_unhashed());
            }
            Err((why, transient)) => machine.handle(Input::DownloadFailed { why, transient }),
        }
    }

    /// Does what `action` says to the store (or the page); the input it needs, if any. A store
    /// that fails stops the run ([`Input::Stop`]): the machine publishes what it staged.
    async fn act(self: &Rc<Self>, action: Action<'_>, run: &mut Run<'_>) -> Option<Input<'static>> {
        let t0 = now_ms();
        let stored: Result<Input<'static>, String> = match action {
            Action::LoadFile(m) => self
                .file(m)
                .await
                .map(|file| Input::File(file.map(|f| f.to_vec())))
                .map_err(|e| e.to_string()),
            Action::CheckFile(m) => self
                .file(m)
                .await
                .map(|file| Input::Checked(file.map(|bytes| run.driven.unchanged = Some(bytes))))
                .map_err(|e| e.to_string()),
            Action::LoadManifests(versions) => {
                self.store.manifests(&versions).await.map(Input::Manifests).map_err(|e| e.to_string())
            }
            Action::LoadChunks { ids, sources } => self.chunks(ids, sources, run).await.map(Input::Chunks),
            Action::Keep(chunks) => self
                .store
                .keep(chunks)
                .await
                .map(|()| Input::Stored)
                .map_err(|e| format!("{}, and storing the chunks received failed: {e}", run.last_loss)),
            Action::Commit(synced) => {
                task::yield_if_busy().await;
                let committed = self.store.commit(synced).await;
                committed.map(|()| Input::Stored).map_err(|e| format!("{e}; the previous version is kept"))
            }
            Action::Stage(synced) => {
                task::yield_if_busy().await;
                let path = &synced.manifest.path;
                let staged = self.stage(synced, run).await;
                staged
                    .map(|()| Input::Stored)
                    .map_err(|e| format!("{path}: {e}; the previous version is kept"))
            }
            Action::Remove(asset) => {
                self.remembered.borrow_mut().remove(asset);
                run.staged.push(Staged::Removal(asset.as_str().to_owned()));
                Ok(Input::Stored)
            }
            Action::Publish => {
                let staged = mem::take(&mut run.staged);
                let published = match staged.is_empty() {
                    true => Ok(()),
                    false => self.store.commit_all(&staged, Some(run.run_id)).await,
                };
                // The caller names the folder.
                published.map(|()| Input::Stored).map_err(|e| format!("{e}; the previous versions are kept"))
            }
            other => return self.act_here(other, run, t0).await,
        };
        Some(match stored {
            Ok(input) => {
                run.driven.timings.store_ms += now_ms() - t0;
                input
            }
            Err(why) => Input::Stop(why),
        })
    }

    /// [`Client::act`] for what is not the store's: hashing, and the page's.
    async fn act_here(
        self: &Rc<Self>,
        action: Action<'_>,
        run: &mut Run<'_>,
        t0: f64,
    ) -> Option<Input<'static>> {
        Some(match action {
            Action::Verify(data) => {
                task::yield_if_busy().await;
                let digest = digest::sha256(data).await;
                run.driven.timings.verify_ms += now_ms() - t0;
                Input::Digest(digest)
            }
            // Kept chunk records are dropped once damaged, or once in committed files.
            Action::Discard(ids) | Action::Release(ids) => {
                if let Err(e) = self.store.discard(&ids).await {
                    web_sys::console::warn_1(&format!("assetsync: cannot discard cached chunks: {e}").into());
                }
                return None;
            }
            Action::Prefetch(base) => {
                self.prefetch(&base, run.base_file.take());
                return None;
            }
            Action::Progress { asset, received, total } => {
                if run.progress.due(&asset, received, total) {
                    report_progress(run.on_progress, "receivedBytes", received, total);
                }
                return None;
            }
            Action::Changed { asset, version } => {
                self.deliver_later(asset, version);
                return None;
            }
            Action::Warn(line) => {
                web_sys::console::warn_1(&format!("assetsync: {line}").into());
                return None;
            }
            _ => unreachable!("the connection's actions are drive()'s"),
        })
    }

    /// The chunks `ids` as held: those of files staged but not written yet from memory, the
    /// others from the store.
    async fn chunks(
        &self,
        ids: Vec<ChunkId>,
        sources: &[Manifest],
        run: &Run<'_>,
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, String> {
        let (held, stored): (Vec<ChunkId>, Vec<ChunkId>) =
            ids.into_iter().partition(|id| run.staged_chunks.contains_key(id));
        let mut chunks = Vec::with_capacity(held.len() + stored.len());
        for id in held {
            let (file, at, len) = run.staged_chunks[&id];
            if let Some(bytes) = run.staged[file].read(at, len).await.map_err(|e| e.to_string())? {
                chunks.push((id, bytes));
            }
        }
        let sources: Vec<&Manifest> = sources.iter().collect();
        let staged = if run.written_ahead { &run.staged[..] } else { &[] };
        chunks.extend(self.store.chunks(&stored, &sources, staged).await.map_err(|e| e.to_string())?);
        Ok(chunks)
    }

    /// Stages a folder's file for its publish, writing the files staged so far ahead once they
    /// hold [`WRITE_AHEAD_BYTES`].
    async fn stage(&self, synced: &Synced, run: &mut Run<'_>) -> Result<(), String> {
        let file = Staged::file(synced).map_err(|e| e.to_string())?;
        run.staged_bytes += file.len();
        let held = synced.manifest.offsets();
        let at = run.staged.len();
        run.staged_chunks.extend(held.map(|(offset, c)| (c.id, (at, offset, c.len as usize))));
        run.staged.push(file);
        if run.staged_bytes < WRITE_AHEAD_BYTES {
            return Ok(());
        }
        (run.staged_bytes, run.staged_chunks) = (0, HashMap::new());
        run.written_ahead = true;
        self.store.write_ahead(&mut run.staged, run.run_id).await.map_err(|e| e.to_string())
    }

    /// The JS result of a finished sync: its bytes (`held` where the driver holds them already:
    /// the committed file when it found it current, a folder's file as staged) and its stats.
    /// `wire` (in, out) overrides the machine's own counts: a single sync's figures also cover
    /// its reconnections.
    pub(crate) fn result(
        &self,
        done: Finished,
        held: Option<Bytes>,
        wire: Option<(u64, u64)>,
        timings: &Timings,
        started: f64,
    ) -> SyncResult {
        let manifest = done.manifest();
        let (asset, version) = (manifest.path.clone(), done.version());
        let (len, chunks, reused) = (manifest.len, manifest.chunks.len(), done.chunks_reused());
        let report = done.report;
        let (wire_in, wire_out) = wire.unwrap_or((report.wire_in, report.wire_out));
        let data = match (done.fetched, held) {
            (_, Some(held)) => held,
            (Fetched::Synced(synced), None) => Bytes::Wasm(Rc::new(synced.data)),
            (Fetched::Unchanged(_), None) => unreachable!("an unchanged asset's file was checked"),
        };
        if self.memory_cache {
            self.remembered.borrow_mut().insert(asset.clone(), (version, data.clone()));
        }
        let stats = Stats {
            version,
            bytes: len,
            chunks,
            chunks_reused: reused,
            wire: (wire_in, wire_out),
            elapsed_ms: now_ms() - started,
            report,
            store_ms: timings.store_ms,
            verify_ms: timings.verify_ms,
            patch_ms: timings.patch_ms,
            chunks_sent: None,
        };
        SyncResult { asset, version, data, stats }
    }
}

/// A sync's figures (see `SyncStats` in the TypeScript definitions), made a JS object only when
/// asked for: a folder sync has thousands.
pub(crate) struct Stats {
    version: VersionId,
    bytes: u64,
    chunks: usize,
    chunks_reused: usize,
    /// Bytes read and sent.
    wire: (u64, u64),
    elapsed_ms: f64,
    report: SyncReport,
    store_ms: f64,
    verify_ms: f64,
    patch_ms: f64,
    /// An upload's distinct chunks sent.
    chunks_sent: Option<usize>,
}

impl Stats {
    /// The figures of an upload: the same as a sync's, and the chunks it sent.
    pub(crate) fn of_upload(done: &Uploaded, wire: (u64, u64), elapsed_ms: f64, store_ms: f64) -> Self {
        let chunks = done.manifest.chunks.len();
        Stats {
            version: done.version,
            bytes: done.manifest.len,
            chunks,
            chunks_reused: chunks - done.chunks_sent,
            wire,
            elapsed_ms,
            report: done.report.clone(),
            store_ms,
            verify_ms: 0.0,
            patch_ms: 0.0,
            chunks_sent: Some(done.chunks_sent),
        }
    }

    pub(crate) fn to_js(&self) -> JsValue {
        let stats = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&stats, &k.into(), &v).expect("set on a plain object");
        set("version", self.version.to_hex().into());
        set("bytes", (self.bytes as f64).into());
        set("chunks", (self.chunks as f64).into());
        set("chunksReused", (self.chunks_reused as f64).into());
        set("wireBytesIn", (self.wire.0 as f64).into());
        set("wireBytesOut", (self.wire.1 as f64).into());
        set("httpBytesIn", (self.report.downloaded as f64).into());
        set("elapsedMs", self.elapsed_ms.into());
        set("requests", self.report.requests.into());
        set("retried", self.report.retried.into());
        set("reconnects", self.report.reconnects.into());
        set("storeMs", self.store_ms.into());
        set("verifyMs", self.verify_ms.into());
        set("patchMs", self.patch_ms.into());
        if let Some(sent) = self.chunks_sent {
            set("chunksSent", (sent as f64).into());
        }
        stats.into()
    }
}

/// The message of a JS error value.
fn message_of(value: JsValue) -> String {
    Reflect::get(&value, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| "unknown error".into())
}
