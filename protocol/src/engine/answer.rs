//! One answer, from its first message to a verified result: the part of the policy that a single
//! asset's sync and each file of a folder's answer share.

use std::mem;
use std::sync::Arc;

use super::{Action, Input, MAX_DOWNLOAD_TRIES, Queue, backoff_ms};
use crate::offload::Frames;
use crate::{
    Assembled, AssetPath, ChunkId, ClientSync, Error, ErrorCode, Event, Manifest, ServerMessage, Synced,
    VerifiedChunk,
};

/// The largest frame an offloaded body may hold: a batch's part, or a chunk (at most 1 MiB),
/// with its header and index list.
const MAX_BODY_FRAME: usize = 4 << 20;

/// How an answer ended.
#[derive(Debug)]
pub(super) enum End {
    /// Verified: commit it.
    Verified(Synced),
    /// The asset's committed version is current, and its file was found intact.
    Unchanged(Manifest),
    /// Bad data, missing local chunks, or a server that forgot the named versions. `held` is what
    /// a retry lists as held (`None`: a retry cannot help).
    Retry { error: Error, held: Option<Vec<ChunkId>> },
    /// The server refused the request; the connection is still in step.
    Refused { code: ErrorCode, message: String },
    /// The connection was lost or its stream went bad; `kept` arrived intact before that.
    Lost { why: String, kept: Vec<VerifiedChunk> },
}

/// What waits for the driver's hashes.
#[derive(Debug)]
enum Then {
    Event(Result<Event, Error>),
    Lost(String),
}

#[derive(Debug)]
enum Step {
    Receiving(ClientSync),
    /// A binary patch is being applied (see [`ClientSync::work`]).
    Working(ClientSync),
    /// The answer is compressed against a committed file; the event of the message that said so.
    Prefix(ClientSync, Result<Event, Error>),
    Hashing(ClientSync, Then),
    Unchanged(ClientSync),
    Loading(ClientSync),
    Verifying(Assembled, Vec<ChunkId>, usize),
    Over,
}

/// An answer's frames being fetched over HTTP (see [`crate::offload`]).
#[derive(Debug)]
struct Download {
    url: String,
    /// The body's announced length.
    total: u64,
    /// Bytes of the body received so far, kept across cuts.
    received: u64,
    frames: Frames,
    /// Whether a response is being read (else the next action starts one).
    open: bool,
    /// Failed fetches since the last byte arrived.
    failures: u32,
}

impl Download {
    fn poll(&self) -> Action<'_> {
        if self.open {
            return Action::ReadDownload;
        }
        let after_ms = match self.failures {
            0 => 0,
            n => backoff_ms(n),
        };
        Action::Download { url: &self.url, from: self.received, after_ms }
    }
}

/// The machine of one answer.
#[derive(Debug)]
pub(super) struct Answer {
    asset: AssetPath,
    step: Step,
    /// The asset's committed version, to recognise an unchanged answer.
    base: Option<Manifest>,
    /// Committed versions that reused chunks may be read from.
    sources: Arc<Vec<Manifest>>,
    /// Received chunks for the driver to hash, not yet taken.
    fresh: Vec<(u32, Vec<u8>)>,
    /// Received chunks whose hashes the driver has yet to give back.
    outstanding: usize,
    /// Set when the answer's frames are fetched over HTTP.
    download: Option<Download>,
    /// Whether the answer is a binary patch: a rebuilt file that fails verification is then
    /// the patch's fault.
    patched: bool,
    /// Bytes read for this answer.
    pub wire_in: u64,
    /// Bytes of it fetched over HTTP.
    pub downloaded: u64,
}

impl Answer {
    pub fn new(
        mut machine: ClientSync,
        base: Option<Manifest>,
        sources: Arc<Vec<Manifest>>,
        driver_hashes: bool,
    ) -> Self {
        if driver_hashes {
            machine.defer_hashing();
        }
        let asset = machine.asset().clone();
        Answer {
            asset,
            step: Step::Receiving(machine),
            base,
            sources,
            fresh: Vec::new(),
            outstanding: 0,
            download: None,
            patched: false,
            wire_in: 0,
            downloaded: 0,
        }
    }

    /// The asset answered.
    pub fn asset(&self) -> &AssetPath {
        &self.asset
    }

    /// Whether the answer's frames were to come over HTTP: if it fails, ask for it again over
    /// the WebSocket.
    pub fn offloaded(&self) -> bool {
        self.download.is_some()
    }

    pub fn poll(&self) -> Action<'_> {
        match &self.step {
            Step::Receiving(_) => match &self.download {
                Some(download) => download.poll(),
                None => Action::Receive,
            },
            Step::Working(_) => Action::Work,
            Step::Prefix(m, _) => Action::LoadFile(m.wanted_prefix().expect("a prefix is wanted")),
            Step::Hashing(..) => Action::FinishHashing,
            Step::Unchanged(m) => Action::CheckFile(m.manifest().expect("the manifest is known")),
            Step::Loading(m) => Action::LoadChunks { ids: m.local_chunks(), sources: &self.sources },
            Step::Verifying(a, ..) => Action::Verify(a.data()),
            Step::Over => unreachable!("an ended answer is not polled"),
        }
    }

    pub fn take_unhashed(&mut self) -> Vec<(u32, Vec<u8>)> {
        mem::take(&mut self.fresh)
    }

    /// Feeds one input; `Some` once the answer ended.
    pub fn handle(&mut self, input: Input<'_>, queue: &mut Queue) -> Option<End> {
        match (mem::replace(&mut self.step, Step::Over), input) {
            (Step::Receiving(mut m), Input::Message { message, wire }) => {
                self.wire_in += wire;
                let message = match message {
                    ServerMessage::Changed { asset, version } => {
                        queue.push_back(Action::Changed { asset, version });
                        self.step = Step::Receiving(m);
                        return None;
                    }
                    ServerMessage::Update(mut update) if self.download.is_none() => {
                        if let Some(offload) = update.offload.take() {
                            self.download = Some(Download {
                                url: offload.url,
                                total: offload.bytes,
                                received: 0,
                                frames: Frames::default(),
                                open: false,
                                failures: 0,
                            });
                        }
                        ServerMessage::Update(update)
                    }
                    message => message,
                };
                let event = m.on_message(message);
                self.fed(m, event, queue)
            }
            (Step::Receiving(m), Input::Downloaded(piece)) => self.downloaded(m, piece, queue),
            (Step::Receiving(m), Input::DownloadFailed { why, transient }) => {
                self.download_failed(m, why, transient, queue)
            }
            (Step::Receiving(mut m), Input::Frame { frame, wire }) => {
                self.wire_in += wire;
                let event = m.on_frame(frame);
                self.take_fresh(&mut m);
                self.fed(m, event, queue)
            }
            (Step::Working(mut m), Input::Work) => {
                let event = m.work();
                self.take_fresh(&mut m);
                self.on_event(m, event, queue)
            }
            (Step::Receiving(m), Input::Lost(why)) => self.lost(m, why),
            (Step::Prefix(mut m, event), Input::File(file)) => {
                // Commits keep whole verified files, so reused chunks may come from this one.
                m.set_prefix(file, true);
                self.on_event(m, event, queue)
            }
            (Step::Receiving(mut m), Input::Hashed { index, bytes, id }) => {
                m.hashed(index, bytes, id);
                self.outstanding -= 1;
                self.step = Step::Receiving(m);
                None
            }
            (Step::Hashing(mut m, then), Input::Hashed { index, bytes, id }) => {
                m.hashed(index, bytes, id);
                self.outstanding -= 1;
                match then {
                    _ if self.outstanding > 0 => {
                        self.step = Step::Hashing(m, then);
                        None
                    }
                    Then::Event(event) => self.on_event(m, event, queue),
                    Then::Lost(why) => self.lost(m, why),
                }
            }
            (Step::Unchanged(m), Input::Checked(intact)) => match intact {
                Ok(()) => Some(End::Unchanged(m.manifest().expect("known").clone())),
                Err(damaged) => retry(Error::MissingLocal(damaged), m.held_chunks(), m.chunk_prefix()),
            },
            (Step::Loading(m), Input::Chunks(local)) => {
                // A patch's file reuses chunks from the base version's verified file: those are
                // held, should the patch fail.
                let held: Vec<ChunkId> = match self.patched {
                    true => m.held_chunks(),
                    false => local.iter().map(|(id, _)| *id).collect(),
                };
                let prefix = m.chunk_prefix();
                match m.assemble(local) {
                    Ok(assembled) => {
                        self.step = Step::Verifying(assembled, held, prefix);
                        None
                    }
                    Err(error) => retry(error, held, prefix),
                }
            }
            (Step::Verifying(assembled, held, prefix), Input::Digest(digest)) => {
                match assembled.verify(digest) {
                    Ok(synced) => Some(End::Verified(synced)),
                    Err(Error::FileMismatch) if self.patched => {
                        let error = Error::BadPatch("the file it rebuilt failed verification".into());
                        retry(error, held, prefix)
                    }
                    Err(error) => retry(error, held, prefix),
                }
            }
            (step, input) => {
                debug_assert!(false, "input {input:?} does not answer {step:?}");
                self.step = step;
                None
            }
        }
    }

    /// Takes the chunks `m` received for the driver to hash.
    fn take_fresh(&mut self, m: &mut ClientSync) {
        Self::count_fresh(&mut self.outstanding, &mut self.fresh, m);
    }

    fn count_fresh(outstanding: &mut usize, fresh: &mut Vec<(u32, Vec<u8>)>, m: &mut ClientSync) {
        let taken = m.take_unhashed();
        *outstanding += taken.len();
        fresh.extend(taken);
    }

    /// Goes on receiving, or applying the patch that arrived.
    fn go_on(&mut self, m: ClientSync) {
        self.patched |= m.has_work();
        self.step = if m.has_work() { Step::Working(m) } else { Step::Receiving(m) };
    }

    /// After a message or frame: a wanted compression prefix comes first.
    fn fed(&mut self, m: ClientSync, event: Result<Event, Error>, queue: &mut Queue) -> Option<End> {
        if m.wanted_prefix().is_some() {
            self.step = Step::Prefix(m, event);
            return None;
        }
        self.on_event(m, event, queue)
    }

    fn on_event(&mut self, m: ClientSync, event: Result<Event, Error>, queue: &mut Queue) -> Option<End> {
        if let Ok(Event::Progress { received, total }) = event {
            queue.push_back(Action::Progress { asset: self.asset.clone(), received, total });
            self.go_on(m);
            return None;
        }
        // Nothing of this answer is used before every received chunk is hashed.
        if self.outstanding > 0 {
            self.step = Step::Hashing(m, Then::Event(event));
            return None;
        }
        match event {
            Ok(Event::Progress { .. }) => unreachable!("handled above"),
            Ok(Event::Complete) => {
                let total = m.announced_bytes();
                queue.push_back(Action::Progress { asset: self.asset.clone(), received: total, total });
                let unchanged = total == 0 && self.base.is_some() && m.manifest() == self.base.as_ref();
                self.step = if unchanged { Step::Unchanged(m) } else { Step::Loading(m) };
                None
            }
            Err(
                error @ (Error::FileMismatch
                | Error::MissingLocal(_)
                | Error::UnknownBase
                | Error::Offload(_)
                | Error::BadPatch(_)),
            ) => retry(error, m.held_chunks(), m.chunk_prefix()),
            Err(Error::Server { code, message }) => Some(End::Refused { code, message }),
            // Lost, or the stream went bad (mid-answer, it cannot be read on).
            Err(error) => self.lost(m, error.to_string()),
        }
    }

    /// A piece of the offloaded body: its whole frames are handled as if they had come over the
    /// WebSocket; its end, before the announced length, is a cut to resume.
    fn downloaded(&mut self, mut m: ClientSync, piece: &[u8], queue: &mut Queue) -> Option<End> {
        let download = self.download.as_mut().expect("downloading");
        download.open = true;
        let left = download.total - download.received;
        let bad = |why: &str| Err(Error::Offload(why.to_owned()));
        if piece.is_empty() {
            if left > 0 {
                return self.download_failed(m, format!("the body ended {left} bytes short"), true, queue);
            }
            // Whole, yet the answer is not complete.
            return self.on_event(m, bad("the body lacks frames"), queue);
        }
        if piece.len() as u64 > left {
            return self.on_event(m, bad("the body is longer than announced"), queue);
        }
        download.received += piece.len() as u64;
        download.failures = 0;
        self.downloaded += piece.len() as u64;
        let mut events = Vec::new();
        let split = download.frames.push(
            piece,
            m.id(),
            MAX_BODY_FRAME,
            |frame| {
                let event = m.on_frame(frame);
                Self::count_fresh(&mut self.outstanding, &mut self.fresh, &mut m);
                match event {
                    Ok(Event::Progress { received, total }) => {
                        events.push(Action::Progress { asset: self.asset.clone(), received, total });
                        Ok(())
                    }
                    other => Err(other),
                }
            },
            || bad("a frame's length is out of range"),
        );
        queue.extend(events);
        match split {
            Ok(()) => {
                self.go_on(m);
                None
            }
            // Data that fails verification arrived over HTTP, so it is asked for again over the
            // WebSocket, like a body that does not parse.
            Err(Err(error @ (Error::BadFrame(_) | Error::Decompress(_) | Error::ChunkMismatch { .. }))) => {
                self.on_event(m, Err(Error::Offload(error.to_string())), queue)
            }
            Err(event) => self.on_event(m, event, queue),
        }
    }

    /// A cut is fetched again from where it stopped, after a backoff, a few times in a row at
    /// most; anything else, and then, asks for the answer over the WebSocket.
    fn download_failed(
        &mut self,
        m: ClientSync,
        why: String,
        transient: bool,
        queue: &mut Queue,
    ) -> Option<End> {
        let download = self.download.as_mut().expect("downloading");
        download.open = false;
        download.failures += 1;
        if !transient || download.failures >= MAX_DOWNLOAD_TRIES {
            return self.on_event(m, Err(Error::Offload(why)), queue);
        }
        let line = format!("{}: {why}; fetching again from byte {}", self.asset, download.received);
        queue.push_back(Action::Warn(line));
        self.step = Step::Receiving(m);
        None
    }

    fn lost(&mut self, mut m: ClientSync, why: String) -> Option<End> {
        if self.outstanding > 0 {
            self.step = Step::Hashing(m, Then::Lost(why));
            return None;
        }
        // Each chunk is named by the hash of its bytes, so it can be kept and listed as held.
        Some(End::Lost { why, kept: m.take_received() })
    }
}

fn retry(error: Error, held: Vec<ChunkId>, prefix: usize) -> Option<End> {
    Some(End::Retry { held: error.retry_holding(held, prefix), error })
}
