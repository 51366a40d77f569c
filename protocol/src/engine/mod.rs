//! The whole client policy as sans-IO machines: what to ask, what to keep after a cut, what to
//! discard after a failed verification, when to retry, reconnect and commit.
//!
//! A machine ([`AssetSync`] for one asset, [`FolderSync`] for a folder, [`UploadSync`] for an
//! upload, [`Exchange`] for a folder listing or a deletion, with [`plan_folder_push`] deciding
//! what a folder push uploads and deletes) never touches a socket,
//! a store or a clock. A driver (the native client over tokio and files, the browser client over
//! a WebSocket and IndexedDB) runs one loop:
//!
//! ```text
//! loop {
//!     match machine.poll() {
//!         Action::Send(message) => send it, then Input::Sent (or Input::Lost)
//!         Action::Receive => read one message, then Input::Message / Input::Frame (or Input::Lost)
//!         Action::LoadChunks { .. } => read them from the store, then Input::Chunks
//!         ...
//!         Action::Done => return the machine's result,
//!         Action::Failed(error) => return error,
//!     }
//! }
//! ```
//!
//! Actions that need an answer say which [`Input`] it is; the others (progress, discard,
//! release, log lines) are done and the loop goes on. Time is passed in as waits
//! ([`Action::Reconnect`]), never read, so a machine replays exactly from the same inputs.
//!
//! Every connection starts with [`hello`] and [`welcome`]. Between syncs, a client that follows
//! changes runs [`Follow`] (its subscriptions and reconnection backoff), [`Pushes`] (pushed
//! changes, the latest per asset) and [`Push::decide`] (whether a push needs a sync, a removal,
//! or nothing).

mod answer;
mod asset;
mod folder;
mod follow;
mod hello;
mod push_folder;
mod upload;

use std::collections::VecDeque;
use std::mem;

pub use asset::{AssetSync, Fetched, Finished};
pub use folder::{FolderDone, FolderSync};
pub use follow::{Follow, MAX_FOLLOW_BACKOFF_MS, Push, Pushes, Subscription};
pub use hello::{Welcome, Welcomed, hello, welcome};
pub use push_folder::{Exchange, Exchanged, FolderPushPlan, plan_folder_push};
pub use upload::{UploadSync, Uploaded};

use crate::{
    AssetPath, ChunkId, ClientMessage, Error, ErrorCode, FolderEntry, Hash, Manifest, ServerMessage, Synced,
    VerifiedChunk, VersionId,
};

/// Connections one transfer may lose before it fails.
pub const MAX_RECONNECTS: u32 = 8;
/// First wait before reconnecting; doubled after each loss up to [`MAX_RESUME_BACKOFF_MS`] while
/// resuming a transfer.
pub const FIRST_BACKOFF_MS: u32 = 250;
/// Longest wait between reconnections while resuming one transfer.
pub const MAX_RESUME_BACKOFF_MS: u32 = 5_000;
/// Failed fetches in a row of an offloaded answer before it is asked for over the WebSocket.
pub const MAX_DOWNLOAD_TRIES: u32 = 4;
/// How many other cached assets' versions accompany a request (their chunks count as held).
pub const MAX_OTHER_VERSIONS: usize = 64;

/// Chunk bytes between two progress reports (see [`ProgressGate`]).
pub const PROGRESS_BYTES: u64 = 64 << 10;

/// Which [`Action::Progress`] a driver passes on to the user: a transfer's first and last, and
/// in between one each time [`PROGRESS_BYTES`] more have arrived. (On a slow link the server's
/// batches come in parts of [`crate::BATCH_PART`] bytes, each with its progress; on a fast one a
/// report per 64 KiB is still far apart in time.) A report is never held back for later: the
/// last one before a stall tells what arrived.
#[derive(Debug, Default)]
pub struct ProgressGate {
    /// The last report passed on: asset and bytes.
    last: Option<(AssetPath, u64)>,
}

impl ProgressGate {
    /// Whether to report `received` of `total` bytes of `asset`.
    pub fn due(&mut self, asset: &AssetPath, received: u64, total: u64) -> bool {
        let due = match &self.last {
            // The same transfer going on (a retry starts again from fewer bytes).
            Some((last, bytes)) if last == asset && received >= *bytes => {
                (received == total && *bytes != total) || received - bytes >= PROGRESS_BYTES
            }
            _ => true,
        };
        if due {
            self.last = Some((asset.clone(), received));
        }
        due
    }
}

/// What the driver does next (see the [module docs](self)).
#[derive(Debug)]
pub enum Action<'a> {
    /// Optional: start reading the committed file of this version in the background. The sync
    /// needs it whether the answer is `up_to_date` or a delta against it. No input.
    Prefetch(Manifest),
    /// Send this message, then [`Input::Sent`], or [`Input::Lost`] if the connection is gone.
    Send(ClientMessage),
    /// Send these binary frames, in order, then [`Input::Sent`] (or [`Input::Lost`]).
    SendFrames(&'a [Vec<u8>]),
    /// Read the next message, then [`Input::Message`] or [`Input::Frame`] (or [`Input::Lost`]).
    Receive,
    /// Read and verify the committed file of this version (the answer is compressed against it),
    /// then [`Input::File`].
    LoadFile(&'a Manifest),
    /// The asset is unchanged: read and verify its committed file (it is the result, so the
    /// driver keeps the bytes), then [`Input::Checked`].
    CheckFile(&'a Manifest),
    /// Wait for the hashes started on [`AssetSync::take_unhashed`] chunks, then give each back as
    /// [`Input::Hashed`].
    FinishHashing,
    /// Read the committed manifests of these versions from the store, then [`Input::Manifests`]
    /// with those found intact. A folder sync asks only when an answer needs them (an unchanged
    /// folder needs none).
    LoadManifests(Vec<VersionId>),
    /// Read these chunks from the store, as stored (the whole-file check covers them), then
    /// [`Input::Chunks`] with those found. `sources` are committed versions that list them, for a
    /// store that keeps whole files.
    LoadChunks {
        /// The chunks wanted.
        ids: Vec<ChunkId>,
        /// Committed versions the store may slice them from.
        sources: &'a [Manifest],
    },
    /// Rebuild the next slice of a file from a binary patch, then [`Input::Work`]. The
    /// slices of a large file take a few milliseconds each: a driver on a page's thread yields
    /// to it between them.
    Work,
    /// Compute the SHA-256 of the rebuilt file, then [`Input::Digest`].
    Verify(&'a [u8]),
    /// Store these chunks, which arrived before the connection was lost, so that the resumed
    /// request lists them as held; then [`Input::Stored`].
    Keep(&'a [VerifiedChunk]),
    /// Commit this verified version (and write it out), then [`Input::Stored`].
    Commit(&'a Synced),
    /// A folder's file: store this verified version (and write it out) for the folder's
    /// [`Action::Publish`], which makes it current; then [`Input::Stored`].
    Stage(&'a Synced),
    /// A folder's file the server no longer lists: delete it at the folder's
    /// [`Action::Publish`]. Then [`Input::Stored`].
    Remove(&'a AssetPath),
    /// Make what [`Action::Stage`] and [`Action::Remove`] staged current, all at once (one
    /// transaction, or one pointer switch), then [`Input::Stored`]. A folder sync asks once, at
    /// its end, however it ends: what was verified before a failure is kept.
    Publish,
    /// Delete these chunks from the store: they were found missing or damaged. No input.
    Discard(Vec<ChunkId>),
    /// These chunks kept after a cut are now part of committed versions: a store that keeps
    /// whole files may drop its separate copies. No input.
    Release(Vec<ChunkId>),
    /// Wait `after_ms`, then fetch `url`, an answer offloaded to HTTP (see [`crate::offload`];
    /// [`crate::offload::resolve`] makes it absolute), from byte `from`: with `Range:
    /// bytes=FROM-` when `from` is not 0, skipping the first `from` bytes of a response that
    /// ignores it (`200`). Then [`Input::Downloaded`] with the first piece of the body, or
    /// [`Input::DownloadFailed`].
    Download {
        /// The URL, as the server gave it.
        url: &'a str,
        /// The first byte wanted.
        from: u64,
        /// The wait before fetching (a backoff after a failure).
        after_ms: u32,
    },
    /// Read the next piece of the body being downloaded: [`Input::Downloaded`] (empty at its
    /// end), or [`Input::DownloadFailed`].
    ReadDownload,
    /// Wait this long, open a new connection, then [`Input::Reconnected`] (or [`Input::Lost`]).
    Reconnect {
        /// The wait before reconnecting.
        after_ms: u32,
    },
    /// Chunk bytes of the current answer so far, after each frame: to be passed on through a
    /// [`ProgressGate`]. No input.
    Progress {
        /// The asset being received.
        asset: AssetPath,
        /// Received.
        received: u64,
        /// Announced.
        total: u64,
    },
    /// The server announced a change (a subscription's push, read in the middle of an answer).
    /// No input.
    Changed {
        /// The asset.
        asset: AssetPath,
        /// Its new version, `None` when it was removed.
        version: Option<VersionId>,
    },
    /// Something worth a log line happened (a retry, a resumed connection). No input.
    Warn(String),
    /// One file of a folder is committed. No input.
    FileDone(Finished),
    /// Finished: take the result from the machine.
    Done,
    /// Failed; the previous version is kept.
    Failed(ClientError),
}

/// What the driver tells the machine after an [`Action`].
#[derive(Debug)]
pub enum Input<'a> {
    /// The message was sent; `wire` bytes crossed the connection.
    Sent {
        /// Bytes sent, as the driver counts them.
        wire: u64,
    },
    /// The connection is lost (or a reconnection failed).
    Lost(String),
    /// A control message arrived, parsed once by the driver (which routes pushes on their type;
    /// a text that does not parse is [`Input::Lost`]: mid-answer, the stream went bad).
    Message {
        /// The message.
        message: ServerMessage,
        /// Bytes read, as the driver counts them.
        wire: u64,
    },
    /// A binary frame arrived.
    Frame {
        /// The frame.
        frame: &'a [u8],
        /// Bytes read, as the driver counts them.
        wire: u64,
    },
    /// Answer to [`Action::LoadFile`]: the verified file, or the chunks that kept it from being
    /// read whole.
    File(Result<Vec<u8>, Vec<ChunkId>>),
    /// Answer to [`Action::CheckFile`].
    Checked(Result<(), Vec<ChunkId>>),
    /// A chunk from [`AssetSync::take_unhashed`] with its SHA-256.
    Hashed {
        /// Its manifest position.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
        /// The SHA-256 of `bytes`.
        id: ChunkId,
    },
    /// Answer to [`Action::LoadManifests`]: the manifests found, in any order.
    Manifests(Vec<Manifest>),
    /// Answer to [`Action::LoadChunks`]: the chunks found.
    Chunks(Vec<(ChunkId, Vec<u8>)>),
    /// Answer to [`Action::Work`].
    Work,
    /// Answer to [`Action::Verify`].
    Digest(Hash),
    /// A piece of the body of [`Action::Download`]; empty at its end.
    Downloaded(&'a [u8]),
    /// [`Action::Download`] or [`Action::ReadDownload`] failed: the response's status was not
    /// `200` or `206`, or the connection broke. `transient` when trying again may help (a lost
    /// connection, a 5xx, 408 or 429 status); not for other statuses.
    DownloadFailed {
        /// What failed, for the log line.
        why: String,
        /// Whether to try again.
        transient: bool,
    },
    /// [`Action::Keep`], [`Action::Commit`], [`Action::Stage`], [`Action::Remove`] or
    /// [`Action::Publish`] is done.
    Stored,
    /// The driver could not do what an action asked (its store failed; the text says how and
    /// what is kept), or stops the run (its client was closed). Valid after any action: the
    /// sync fails with [`ClientError::Stopped`], a folder's after publishing what it staged.
    Stop(String),
    /// [`Action::Reconnect`] is done: a new connection is open.
    Reconnected,
}

/// A sync machine, as drivers see it.
pub trait Machine {
    /// The next action.
    fn poll(&mut self) -> Action<'_>;
    /// Feeds what the last action produced.
    fn handle(&mut self, input: Input<'_>);
    /// For a driver that hashes received chunks itself (faster elsewhere, such as the browser's
    /// `crypto.subtle`): after each [`Input::Frame`], take the received chunks and give each back
    /// as [`Input::Hashed`]. The machine waits for all of them before it uses any. (None, for a
    /// machine that receives no chunks.)
    fn take_unhashed(&mut self) -> Vec<(u32, Vec<u8>)> {
        Vec::new()
    }
    /// Opts in to [`Machine::take_unhashed`], before the first poll.
    fn set_driver_hashes(&mut self) {}
    /// The first request id the machine has not used: where the next request on the same
    /// connection starts.
    fn next_id(&self) -> u32;
}

/// Why a sync failed. Each message names the cause; the previous version is kept.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection was lost more often than one transfer may lose it.
    #[error("connection lost {times} times, giving up: {last}")]
    GaveUpReconnecting {
        /// Connections lost.
        times: u32,
        /// The last loss.
        last: String,
    },
    /// The connection was lost, and this sync leaves reconnecting to its caller.
    #[error("{0}")]
    Lost(String),
    /// The server refused the request; the connection is still usable.
    #[error("server refused: {message} ({code})")]
    Refused {
        /// The server's code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// A subscription just asked for names nothing on the server (see
    /// [`Follow::answer`]); the text says what to subscribe to instead.
    #[error("nothing by that name on the server: check it, or subscribe to {0} to hear when it is created")]
    Missing(String),
    /// An upload or deletion was refused because the server's file is no longer the version
    /// it was made from; nothing was written.
    #[error(
        "conflict: the server's file changed since the version this push was made from (it is {}); nothing was written: pull it, merge your change and push again, or push --force to overwrite it",
        .current.map_or_else(|| "gone now".to_owned(), |v| format!("now {}", &v.to_hex()[..12]))
    )]
    Conflict {
        /// The server's version now (`None`: no such file).
        current: Option<VersionId>,
    },
    /// The driver stopped the run ([`Input::Stop`]): its store failed, or it was closed.
    #[error("{0}")]
    Stopped(String),
    /// Every request's data failed verification (or the server kept answering about versions
    /// it forgot).
    #[error("giving up after {requests} requests: {last}")]
    GaveUp {
        /// Requests made.
        requests: u32,
        /// The last attempt's error.
        last: Error,
    },
}

/// Figures of one sync, as measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// `sync` requests made (a resumed one is not counted again).
    pub requests: u32,
    /// Whether an attempt failed verification and was retried.
    pub retried: bool,
    /// Connections lost and resumed.
    pub reconnects: u32,
    /// Bytes read, as the driver counts them.
    pub wire_in: u64,
    /// Bytes sent, as the driver counts them.
    pub wire_out: u64,
    /// Bytes of offloaded answers fetched over HTTP (see [`crate::offload`]).
    pub downloaded: u64,
}

/// The wait before each reconnection of one transfer: [`FIRST_BACKOFF_MS`], doubling up to
/// [`MAX_RESUME_BACKOFF_MS`], and at most [`MAX_RECONNECTS`] losses. The machines use it, and a
/// driver whose very first handshake broke (before any machine runs) uses it too.
#[derive(Debug, Default)]
pub struct Losses {
    count: u32,
}

impl Losses {
    /// Counts a loss: the wait before reconnecting, or the error when there were too many.
    pub fn next(&mut self, why: &str) -> Result<u32, ClientError> {
        self.count += 1;
        if self.count > MAX_RECONNECTS {
            return Err(ClientError::GaveUpReconnecting { times: self.count, last: why.to_owned() });
        }
        Ok(backoff_ms(self.count))
    }

    /// After `who`'s connection was lost: the wait before reconnecting (with a log line queued),
    /// or why to stop (the caller reconnects itself, or there were too many losses).
    fn reconnect(
        &mut self,
        resume: bool,
        who: &str,
        why: String,
        queue: &mut Queue,
    ) -> Result<u32, ClientError> {
        if !resume {
            return Err(ClientError::Lost(why));
        }
        let after_ms = self.next(&why)?;
        queue.push_back(Action::Warn(format!("{who}: {why}; reconnecting")));
        Ok(after_ms)
    }
}

/// The wait before the `n`th try again (from 1) of one transfer: [`FIRST_BACKOFF_MS`],
/// doubling up to [`MAX_RESUME_BACKOFF_MS`].
fn backoff_ms(n: u32) -> u32 {
    (FIRST_BACKOFF_MS << n.saturating_sub(1).min(5)).min(MAX_RESUME_BACKOFF_MS)
}

/// Actions that need no input, waiting to be returned by `poll`.
type Queue = VecDeque<Action<'static>>;

/// The pages of a folder listing received so far (see [`ServerMessage::Folder`]'s `more`).
#[derive(Debug, Default)]
struct Pages {
    files: Vec<FolderEntry>,
    removed: Vec<AssetPath>,
}

impl Pages {
    /// A page with more to follow.
    fn add(&mut self, files: Vec<FolderEntry>, removed: Vec<AssetPath>) {
        self.files.extend(files);
        self.removed.extend(removed);
    }

    /// The whole listing, with its last page: its files and removals.
    fn finish(
        &mut self,
        files: Vec<FolderEntry>,
        removed: Vec<AssetPath>,
    ) -> (Vec<FolderEntry>, Vec<AssetPath>) {
        self.add(files, removed);
        (mem::take(&mut self.files), mem::take(&mut self.removed))
    }
}

/// The next free request id after `id`.
fn bump(id: &mut u32) -> u32 {
    let this = *id;
    *id = id.wrapping_add(1).max(1);
    this
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_passed_on_every_64_kib_and_at_both_ends() {
        let (a, b) = (AssetPath::new("a.js").unwrap(), AssetPath::new("b.js").unwrap());
        let mut gate = ProgressGate::default();
        let total = 1 << 20;
        assert!(gate.due(&a, 0, total), "a transfer's start");
        assert!(!gate.due(&a, PROGRESS_BYTES - 1, total), "not 64 KiB yet");
        assert!(gate.due(&a, PROGRESS_BYTES, total));
        assert!(!gate.due(&a, 2 * PROGRESS_BYTES - 1, total));
        assert!(gate.due(&a, total, total), "the end");
        assert!(!gate.due(&a, total, total), "the end once");
        assert!(gate.due(&a, 0, total), "a retry starts again");
        assert!(gate.due(&b, 10, total), "another asset");
    }
}
