//! One answer, from its first message to a verified result: the part of the policy that a single
//! asset's sync and each file of a folder's answer share.

use std::mem;
use std::sync::Arc;

use super::{Action, Input, Queue};
use crate::{
    Assembled, AssetPath, ChunkId, ClientSync, Error, ErrorCode, Event, Manifest, ServerMessage, Synced,
    VerifiedChunk,
};

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
    /// The answer is compressed against a committed file; the event of the message that said so.
    Prefix(ClientSync, Result<Event, Error>),
    Hashing(ClientSync, Then),
    Unchanged(ClientSync),
    Loading(ClientSync),
    Verifying(Assembled, Vec<ChunkId>, usize),
    Over,
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
    /// Bytes read for this answer.
    pub wire_in: u64,
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
            wire_in: 0,
        }
    }

    /// The asset answered.
    pub fn asset(&self) -> &AssetPath {
        &self.asset
    }

    pub fn poll(&self) -> Action<'_> {
        match &self.step {
            Step::Receiving(_) => Action::Receive,
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
                if let ServerMessage::Changed { asset, version } = message {
                    queue.push_back(Action::Changed { asset, version });
                    self.step = Step::Receiving(m);
                    return None;
                }
                let event = m.on_message(message);
                self.fed(m, event, queue)
            }
            (Step::Receiving(mut m), Input::Frame { frame, wire }) => {
                self.wire_in += wire;
                let event = m.on_frame(frame);
                let fresh = m.take_unhashed();
                self.outstanding += fresh.len();
                self.fresh.extend(fresh);
                self.fed(m, event, queue)
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
                let held: Vec<ChunkId> = local.iter().map(|(id, _)| *id).collect();
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
            self.step = Step::Receiving(m);
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
            Err(error @ (Error::FileMismatch | Error::MissingLocal(_) | Error::UnknownBase)) => {
                retry(error, m.held_chunks(), m.chunk_prefix())
            }
            Err(Error::Server { code, message }) => Some(End::Refused { code, message }),
            // Lost, or the stream went bad (mid-answer, it cannot be read on).
            Err(error) => self.lost(m, error.to_string()),
        }
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
