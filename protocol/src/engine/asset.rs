//! The sync of one asset: requests, retries after bad data or a forgotten base, resume after a
//! lost connection, and the commit.

use std::mem;
use std::sync::Arc;

use super::answer::{Answer, End};
use super::{Action, ClientError, Input, Losses, Machine, Queue, SyncReport, bump};
use crate::{
    AssetPath, ChunkId, ChunkSet, ClientMessage, ClientSync, Error, MAX_REQUESTS, Manifest, Synced,
    VerifiedChunk, VersionId,
};

/// What a sync produced.
#[derive(Debug)]
pub enum Fetched {
    /// A new verified version, committed.
    Synced(Synced),
    /// The committed version is current; the driver holds the file it checked.
    Unchanged(Manifest),
}

/// A finished sync: what it produced and its figures.
#[derive(Debug)]
pub struct Finished {
    /// The result.
    pub fetched: Fetched,
    /// Its figures.
    pub report: SyncReport,
}

impl Finished {
    /// The manifest of the version now committed.
    pub fn manifest(&self) -> &Manifest {
        match &self.fetched {
            Fetched::Synced(s) => &s.manifest,
            Fetched::Unchanged(m) => m,
        }
    }

    /// The version now committed (known without hashing the manifest again).
    pub fn version(&self) -> VersionId {
        match &self.fetched {
            Fetched::Synced(s) => s.version,
            Fetched::Unchanged(m) => m.version(),
        }
    }

    /// Manifest entries that did not cross the wire.
    pub fn chunks_reused(&self) -> usize {
        match &self.fetched {
            Fetched::Synced(s) => s.chunks_reused,
            Fetched::Unchanged(m) => m.chunks.len(),
        }
    }
}

/// What a request tells the server the client holds (see [`ClientSync::new`]).
#[derive(Clone, Debug)]
struct Holding {
    base: Option<Manifest>,
    others: Vec<Manifest>,
    chunks: Vec<ChunkId>,
}

#[derive(Debug)]
enum State {
    /// A request is to be sent.
    Ready,
    /// The request was handed to the driver.
    Sending(Answer),
    Answer(Answer),
    /// The connection was lost after these chunks arrived: keep them first.
    Keeping(Vec<VerifiedChunk>, String),
    Reconnecting(u32),
    Committing(Synced),
    Finished(Fetched),
    Failed(ClientError),
    Over,
}

/// The sync of one asset, from the first request to a committed version (see the
/// [module docs](super)).
#[derive(Debug)]
pub struct AssetSync {
    asset: AssetPath,
    next_id: u32,
    holding: Holding,
    /// The committed versions the first request names: where reused chunks may be read.
    sources: Arc<Vec<Manifest>>,
    /// Chunks kept from cut transfers, listed as held from then on.
    kept: Vec<ChunkId>,
    resume: bool,
    /// Whether requests ask for the chunks over the WebSocket (an offloaded answer failed).
    direct: bool,
    /// Whether requests ask for the chunks instead of a binary patch (a patch failed to apply).
    no_patch: bool,
    driver_hashes: bool,
    losses: Losses,
    report: SyncReport,
    queue: Queue,
    state: State,
}

impl AssetSync {
    /// A sync of `asset`, whose committed version is `base` (if any); `others` are committed
    /// versions of other assets, whose chunks the server may count as held. Request ids start at
    /// `next_id` (see [`AssetSync::next_id`]).
    pub fn new(asset: AssetPath, base: Option<Manifest>, others: Vec<Manifest>, next_id: u32) -> Self {
        let mut queue = Queue::new();
        if let Some(base) = &base {
            queue.push_back(Action::Prefetch(base.clone()));
        }
        let sources = Arc::new(base.iter().chain(&others).cloned().collect());
        AssetSync {
            asset,
            next_id: next_id.max(1),
            holding: Holding { base, others, chunks: Vec::new() },
            sources,
            kept: Vec::new(),
            resume: true,
            direct: false,
            no_patch: false,
            driver_hashes: false,
            losses: Losses::default(),
            report: SyncReport::default(),
            queue,
            state: State::Ready,
        }
    }

    /// Starts as a retry after bad data: naming no version, only the chunks `held` (intact as far
    /// as the caller knows, and found in the committed versions `sources`).
    pub fn retrying(mut self, held: Vec<ChunkId>, sources: Arc<Vec<Manifest>>) -> Self {
        self.queue.clear();
        self.holding = Holding { base: None, others: Vec::new(), chunks: held };
        self.sources = sources;
        self.report.retried = true;
        self
    }

    /// Asks for the chunks over the WebSocket, not over HTTP (see [`crate::offload`]): a retry
    /// of a file whose offloaded answer failed.
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    /// Leaves a lost connection to the caller instead of reconnecting (a subscribed session
    /// resyncs everything after reconnecting).
    pub fn without_resume(mut self) -> Self {
        self.resume = false;
        self
    }

    /// Whether [`Machine::poll`] returns [`Action::Done`] or [`Action::Failed`] next.
    pub fn at_end(&self) -> bool {
        self.queue.is_empty() && matches!(self.state, State::Finished(_) | State::Failed(_))
    }

    /// The result, after [`Action::Done`].
    pub fn finish(self) -> Finished {
        match self.state {
            State::Finished(fetched) => Finished { fetched, report: self.report },
            _ => panic!("finish() before Action::Done"),
        }
    }

    fn ended(&mut self, end: End) {
        self.state = match end {
            End::Verified(synced) => State::Committing(synced),
            End::Unchanged(manifest) => State::Finished(Fetched::Unchanged(manifest)),
            End::Refused { code, message } => State::Failed(ClientError::Refused { code, message }),
            End::Lost { why, kept } if kept.is_empty() => return self.lost(why),
            End::Lost { why, kept } => State::Keeping(kept, why),
            End::Retry { error, held: None } => State::Failed(give_up(self.report.requests, error)),
            End::Retry { error, .. } if self.report.requests >= MAX_REQUESTS => {
                State::Failed(give_up(self.report.requests, error))
            }
            End::Retry { error: Error::Offload(why), .. } => {
                // The same request, answered over the WebSocket.
                self.queue
                    .push_back(Action::Warn(format!("{}: {why}; asking over the WebSocket", self.asset)));
                State::Ready
            }
            End::Retry { error: Error::BadPatch(why), .. } => {
                // The same request, answered with chunks: the base version's file is intact.
                self.no_patch = true;
                self.report.retried = true;
                let line = format!(
                    "{}: the binary patch could not be applied ({why}); asking for the chunks",
                    self.asset
                );
                self.queue.push_back(Action::Warn(line));
                State::Ready
            }
            End::Retry { error, held: Some(held) } => {
                if let Error::MissingLocal(damaged) = &error {
                    self.queue.push_back(Action::Discard(damaged.clone()));
                }
                let others = match error {
                    // The server forgot the cached version: the same request with its chunks listed.
                    Error::UnknownBase => mem::take(&mut self.holding.others),
                    // Bad data: a clean start with only the chunks found intact.
                    error => {
                        self.report.retried = true;
                        self.queue.push_back(Action::Warn(format!("{}: {error}; retrying", self.asset)));
                        Vec::new()
                    }
                };
                self.holding = Holding { base: None, others, chunks: held };
                State::Ready
            }
        };
    }

    /// The connection was lost (after any chunks that arrived were kept) during a request,
    /// which is then resumed: the same request again, plus the kept chunks.
    fn lost(&mut self, why: String) {
        self.report.requests -= 1;
        self.reconnect(why);
    }

    fn reconnect(&mut self, why: String) {
        self.state = match self.losses.reconnect(self.resume, self.asset.as_str(), why, &mut self.queue) {
            Ok(after_ms) => State::Reconnecting(after_ms),
            Err(error) => State::Failed(error),
        };
        self.report.reconnects = self.losses.count;
    }
}

fn give_up(requests: u32, last: Error) -> ClientError {
    ClientError::GaveUp { requests, last }
}

impl Machine for AssetSync {
    fn poll(&mut self) -> Action<'_> {
        if let Some(action) = self.queue.pop_front() {
            return action;
        }
        match mem::replace(&mut self.state, State::Over) {
            State::Ready => {
                let id = bump(&mut self.next_id);
                let Holding { base, others, chunks } = self.holding.clone();
                let (machine, mut request) =
                    ClientSync::new(id, self.asset.clone(), base.clone(), others, ChunkSet::new(chunks));
                if let ClientMessage::Sync { direct, no_patch, .. } = &mut request {
                    (*direct, *no_patch) = (self.direct, self.no_patch);
                }
                let answer = Answer::new(machine, base, self.sources.clone(), self.driver_hashes);
                self.report.requests += 1;
                self.state = State::Sending(answer);
                return Action::Send(request);
            }
            State::Failed(error) => return Action::Failed(error),
            State::Over => panic!("poll() after Action::Failed"),
            state => self.state = state,
        }
        match &self.state {
            // `Input::Sent` is optional: the answer is read next either way.
            State::Sending(answer) | State::Answer(answer) => answer.poll(),
            State::Keeping(kept, _) => Action::Keep(kept),
            State::Reconnecting(after_ms) => Action::Reconnect { after_ms: *after_ms },
            State::Committing(synced) => Action::Commit(synced),
            State::Finished(_) => Action::Done,
            State::Ready | State::Failed(_) | State::Over => unreachable!("handled above"),
        }
    }

    fn handle(&mut self, input: Input<'_>) {
        match (mem::replace(&mut self.state, State::Over), input) {
            (_, Input::Stop(why)) => self.state = State::Failed(ClientError::Stopped(why)),
            (State::Sending(answer), Input::Sent { wire }) => {
                self.report.wire_out += wire;
                self.state = State::Answer(answer);
            }
            (State::Sending(mut answer) | State::Answer(mut answer), input) => {
                let before = (answer.wire_in, answer.downloaded);
                let end = answer.handle(input, &mut self.queue);
                self.report.wire_in += answer.wire_in - before.0;
                self.report.downloaded += answer.downloaded - before.1;
                match end {
                    Some(end) => {
                        // Whatever went wrong with an offloaded answer, the next comes directly.
                        self.direct |=
                            answer.offloaded() && !matches!(end, End::Verified(_) | End::Unchanged(_));
                        self.ended(end)
                    }
                    None => self.state = State::Answer(answer),
                }
            }
            (State::Keeping(kept, why), Input::Stored) => {
                let ids: Vec<ChunkId> = kept.iter().map(VerifiedChunk::id).collect();
                self.holding.chunks.extend_from_slice(&ids);
                self.kept.extend(ids);
                self.lost(why);
            }
            (State::Reconnecting(_), Input::Reconnected) => self.state = State::Ready,
            (State::Reconnecting(_), Input::Lost(why)) => {
                self.reconnect(format!("reconnecting failed: {why}"))
            }
            (State::Committing(synced), Input::Stored) => {
                if !self.kept.is_empty() {
                    self.queue.push_back(Action::Release(self.kept.clone()));
                }
                self.state = State::Finished(Fetched::Synced(synced));
            }
            (state, input) => {
                debug_assert!(false, "input {input:?} does not answer {state:?}");
                self.state = state;
            }
        }
    }

    fn set_driver_hashes(&mut self) {
        self.driver_hashes = true;
    }

    fn next_id(&self) -> u32 {
        self.next_id
    }

    fn take_unhashed(&mut self) -> Vec<(u32, Vec<u8>)> {
        match &mut self.state {
            State::Answer(answer) => answer.take_unhashed(),
            _ => Vec::new(),
        }
    }
}
