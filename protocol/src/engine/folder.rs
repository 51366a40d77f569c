//! The sync of a folder: one request lists it and brings every new or changed file, each
//! verified and staged as it arrives; files the server no longer lists are removed; a file
//! whose data failed verification is synced again on its own afterwards. A lost connection is
//! resumed: the files staged so far are held by then, and the chunks that had arrived of the
//! file in flight are kept and listed. At the end, however the sync ends, one
//! [`Action::Publish`] makes the staged files and removals current together: a reader sees the
//! old set or the new one, and nothing verified is lost to a later failure.

use std::collections::{HashMap, VecDeque};
use std::mem;
use std::sync::Arc;

use super::answer::{Answer, End};
use super::{
    Action, AssetSync, ClientError, Fetched, Finished, Input, Losses, Machine, Pages, Queue, SyncReport, bump,
};
use crate::shape::Shape;
use crate::{
    AssetPath, ChunkFrame, ChunkId, ChunkParams, ChunkSet, ClientMessage, ClientSync, Error, FolderEntry,
    Hash, Have, Manifest, Scope, ServerMessage, Synced, VerifiedChunk, VersionId, apply_listing_delta,
    folder_changes, folder_version, held_chunk_ids, pack,
};

/// What a folder sync did.
#[derive(Debug)]
pub struct FolderDone {
    /// Files the server lists in the folder.
    pub files: usize,
    /// Files fetched, verified and committed, in that order.
    pub fetched: Vec<AssetPath>,
    /// Files removed because the server no longer lists them.
    pub removed: Vec<AssetPath>,
    /// The folder's version as this sync left it committed ([`folder_version`] of its files):
    /// what a store that lists the folder afterwards must find, unless something else changed
    /// it in between.
    pub version: VersionId,
    /// Figures of the whole folder.
    pub report: SyncReport,
    /// The folder's shape, if it was asked for ([`FolderSync::with_shape`]) and is not the one
    /// named there.
    pub shape: Option<Shape>,
}

// One per folder sync, never stored in bulk: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum State {
    Ready,
    /// Reading the held files' manifests, for the request (it lists their chunks) or for the
    /// answer's files (their delta bases and reusable chunks).
    Loading(Need),
    Listing(u32),
    /// Waiting for the answer's next pack.
    Pack,
    /// A pack's files, waiting for the driver's hashes.
    Unpacking(Unpacking),
    File(Answer, SyncReport),
    Keeping(Vec<VerifiedChunk>, String),
    Reconnecting(u32),
    Committing(Synced, SyncReport),
    Removing,
    Again(Box<AssetSync>),
    /// Publishing what was staged, at the end: then finished, or failed with this error.
    Publishing(Option<ClientError>),
    Finished,
    Failed(ClientError),
    Over,
}

/// A pack's files while the driver hashes them (see [`Machine::take_unhashed`]).
#[derive(Debug)]
struct Unpacking {
    params: ChunkParams,
    /// Each file's listing position, in the pack's order.
    positions: Vec<u32>,
    /// Files not yet taken by the driver: (their place in the pack, bytes).
    fresh: Vec<(u32, Vec<u8>)>,
    /// Each file's bytes and SHA-256, once given back.
    hashed: Vec<Option<(Vec<u8>, Hash)>>,
    outstanding: usize,
    /// The pack's bytes on the wire.
    wire: u64,
}

/// What the held files' manifests are loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Request,
    Answer,
}

/// The sync of a folder (see the [module docs](self)).
#[derive(Debug)]
pub struct FolderSync {
    folder: Scope,
    next_id: u32,
    /// The committed versions of the folder's files, sorted by path, kept current as files
    /// commit.
    held: Vec<FolderEntry>,
    /// Where in `sources` their manifests are, once loaded (see [`Action::LoadManifests`]), and
    /// those committed since.
    manifests: Option<HashMap<VersionId, usize>>,
    /// What the request in flight named, in that order (by path).
    named_entries: Arc<[FolderEntry]>,
    /// The same with their manifests, once loaded: shared by the machines of the answer's files.
    named: Arc<[(VersionId, Manifest)]>,
    /// Whether requests name `held`'s versions in full, not by the listing's version (the
    /// server forgot that listing).
    in_full: bool,
    /// Whether the request in flight named the listing's version.
    sent_since: bool,
    /// Whether requests list `held`'s chunks (the server forgot some of its versions).
    listed: bool,
    /// The digest of the shape the client knows, when requests ask for the folder's shape;
    /// and the shape the last answer brought, if another.
    shape_known: Option<VersionId>,
    shape: Option<Shape>,
    /// The answer's id, the prefix length of its chunk set, and its files still to come.
    answer: (u32, usize),
    /// The answer's listing, whose positions packs name; the packs still to come, the bytes of
    /// those received (their prefix), and the files of the last one still to commit.
    listing: Vec<FolderEntry>,
    /// The pages of the answer's listing received so far.
    pages: Pages,
    packs_left: u32,
    window: pack::Window,
    unpacked: VecDeque<(Synced, SyncReport)>,
    to_fetch: VecDeque<AssetPath>,
    to_remove: VecDeque<AssetPath>,
    /// Files whose data failed verification, synced again on their own, with the chunks still
    /// held intact.
    /// Whether each asks over the WebSocket (its offloaded answer failed).
    again: VecDeque<(AssetPath, Vec<ChunkId>, bool)>,
    /// Committed versions reused chunks may be read from (once the manifests are loaded).
    sources: Arc<Vec<Manifest>>,
    kept: Vec<ChunkId>,
    resume: bool,
    driver_hashes: bool,
    /// Whether [`Action::Publish`] was asked for (once, however the sync ends).
    published: bool,
    losses: Losses,
    files: usize,
    fetched: Vec<AssetPath>,
    removed: Vec<AssetPath>,
    report: SyncReport,
    queue: Queue,
    state: State,
}

impl FolderSync {
    /// A sync of `folder` (not a single asset), whose files' committed versions are `held`.
    /// Their manifests are asked for ([`Action::LoadManifests`]) only if the answer needs them.
    pub fn new(folder: Scope, held: Vec<FolderEntry>, next_id: u32) -> Self {
        FolderSync {
            folder,
            next_id: next_id.max(1),
            manifests: None,
            named_entries: Arc::new([]),
            named: Arc::new([]),
            in_full: false,
            sent_since: false,
            listed: false,
            shape_known: None,
            shape: None,
            answer: (0, 0),
            listing: Vec::new(),
            pages: Pages::default(),
            packs_left: 0,
            window: pack::Window::default(),
            unpacked: VecDeque::new(),
            to_fetch: VecDeque::new(),
            to_remove: VecDeque::new(),
            again: VecDeque::new(),
            sources: Arc::new(Vec::new()),
            held: {
                let mut held = held;
                held.sort_unstable_by(|a, b| a.asset.cmp(&b.asset));
                held
            },
            kept: Vec::new(),
            resume: true,
            driver_hashes: false,
            published: false,
            losses: Losses::default(),
            files: 0,
            fetched: Vec::new(),
            removed: Vec::new(),
            report: SyncReport::default(),
            queue: Queue::new(),
            state: State::Ready,
        }
    }

    /// See [`AssetSync::without_resume`].
    pub fn without_resume(mut self) -> Self {
        self.resume = false;
        self
    }

    /// Asks for the folder's shape in the same request as its listing, unless it is the one
    /// whose [`Shape::digest`] is `known` (a native copy mirrors it, as `rsync -a` does).
    pub fn with_shape(mut self, known: VersionId) -> Self {
        self.shape_known = Some(known);
        self
    }

    /// The result, after [`Action::Done`].
    pub fn finish(self) -> FolderDone {
        assert!(matches!(self.state, State::Finished), "finish() before Action::Done");
        let version = folder_version(&self.held);
        FolderDone {
            files: self.files,
            fetched: self.fetched,
            removed: self.removed,
            version,
            report: self.report,
            shape: self.shape,
        }
    }

    fn on_listing(&mut self, id: u32, message: ServerMessage) {
        self.state = match message {
            // Nothing changed since the listing the request named.
            ServerMessage::UpToDate { id: got, .. } if got == id && self.sent_since => {
                self.files = self.held.len();
                return self.next_file();
            }
            ServerMessage::Folder { id: got, files, removed, more: true, .. } if got == id => {
                self.pages.add(files, removed);
                State::Listing(id)
            }
            ServerMessage::Folder { id: got, files, removed, delta, version, packs, .. } if got == id => {
                let (files, removed) = self.pages.finish(files, removed);
                let named = self.named_entries.clone();
                let files = match delta {
                    true => apply_listing_delta(&named, &files, &removed),
                    false => files,
                };
                if version.is_some_and(|v| v != folder_version(&files)) {
                    self.in_full = true;
                    return self.lost("the folder listing does not add up to its version".into());
                }
                let changes = folder_changes(&named, &files);
                self.files = files.len();
                self.to_fetch = changes.fetch.into();
                self.to_remove = changes.removed.into();
                (self.listing, self.packs_left, self.window) = (files, packs, pack::Window::default());
                // The files to fetch are deltas against what the request named.
                if !self.to_fetch.is_empty() && self.manifests.is_none() {
                    State::Loading(Need::Answer)
                } else {
                    return self.answer_files();
                }
            }
            // The shape the request asked for comes first, with the request's id.
            ServerMessage::Shape { id: got, shape } if got == id && self.shape_known.is_some() => {
                self.shape = shape;
                State::Listing(id)
            }
            // The server forgot the listing: name its versions; or it forgot some of these
            // versions: list their chunks instead.
            ServerMessage::UnknownBase { id: got } if got == id && !self.listed => {
                match self.sent_since {
                    true => self.in_full = true,
                    false => self.listed = true,
                }
                State::Ready
            }
            ServerMessage::Error { id: Some(got), code, message } if got == id => {
                State::Failed(ClientError::Refused { code, message })
            }
            ServerMessage::Changed { asset, version } => {
                self.queue.push_back(Action::Changed { asset, version });
                State::Listing(id)
            }
            ServerMessage::Error { id: None, message, .. } => {
                return self.lost(Error::ConnectionClosed(message).to_string());
            }
            other => return self.lost(format!("unexpected `{}` answer to sync_folder", other.kind())),
        };
    }

    /// The answer's files, with what the request named (its manifests loaded if any file is
    /// to be fetched).
    fn answer_files(&mut self) {
        if let Some(manifests) = &self.manifests {
            self.named = self
                .named_entries
                .iter()
                .filter_map(|e| Some((e.version, self.sources[*manifests.get(&e.version)?].clone())))
                .collect();
        }
        self.next_file();
    }

    /// Takes the held files' manifests, as read from the store. A file whose manifest is
    /// missing or damaged is no longer held; if the request named it, the answer in flight was
    /// planned for holdings the client does not have, and is given up (by reconnecting).
    fn loaded(&mut self, need: Need, found: Vec<Manifest>) {
        let mut found: HashMap<VersionId, Manifest> = found.into_iter().map(|m| (m.version(), m)).collect();
        let missing = self.held.iter().filter(|e| !found.contains_key(&e.version)).count();
        let named_missing = self.named_entries.iter().any(|e| !found.contains_key(&e.version));
        self.held.retain(|e| found.contains_key(&e.version));
        self.sources = Arc::new(self.held.iter().filter_map(|e| found.remove(&e.version)).collect());
        self.manifests = Some(self.held.iter().enumerate().map(|(at, e)| (e.version, at)).collect());
        match need {
            Need::Request => self.state = State::Ready,
            Need::Answer if named_missing => {
                self.in_full = true;
                self.lost(format!("{missing} cached manifests are missing or damaged"));
            }
            Need::Answer => self.answer_files(),
        }
    }

    /// The next file of the answer (the packs' first), or what follows the answer.
    fn next_file(&mut self) {
        if let Some((synced, report)) = self.unpacked.pop_front() {
            self.state = State::Committing(synced, report);
            return;
        }
        if self.packs_left > 0 {
            self.state = State::Pack;
            return;
        }
        let (id, prefix) = self.answer;
        self.state = match self.to_fetch.pop_front() {
            Some(asset) => {
                let machine = ClientSync::for_folder_file(id, asset, self.named.clone(), prefix);
                let answer = Answer::new(machine, None, self.sources.clone(), self.driver_hashes);
                State::File(answer, SyncReport { requests: 1, ..SyncReport::default() })
            }
            None => {
                // Every chunk kept after a cut is in a committed file now.
                if !self.kept.is_empty() {
                    self.queue.push_back(Action::Release(mem::take(&mut self.kept)));
                }
                return self.after_answer();
            }
        };
    }

    /// Removals, then the files to sync again, then done.
    fn after_answer(&mut self) {
        self.state = if !self.to_remove.is_empty() {
            State::Removing
        } else if let Some((asset, held, direct)) = self.again.pop_front() {
            // As a single sync's retry would: naming only the chunks found intact.
            let sources = self.sources.clone();
            let mut sync = AssetSync::new(asset, None, Vec::new(), self.next_id).retrying(held, sources);
            if !self.resume {
                sync = sync.without_resume();
            }
            if direct {
                sync = sync.direct();
            }
            if self.driver_hashes {
                sync.set_driver_hashes();
            }
            State::Again(Box::new(sync))
        } else {
            State::Finished
        };
    }

    fn file_ended(&mut self, asset: AssetPath, end: End, report: SyncReport, offloaded: bool) {
        match end {
            End::Verified(synced) => self.state = State::Committing(synced, report),
            End::Lost { why, kept } if kept.is_empty() => self.lost(why),
            End::Lost { why, kept } => self.state = State::Keeping(kept, why),
            End::Refused { code, message } => {
                self.state = State::Failed(ClientError::Refused { code, message });
            }
            End::Retry { error, held } => {
                if let Error::MissingLocal(damaged) = &error {
                    self.queue.push_back(Action::Discard(damaged.clone()));
                }
                self.queue.push_back(Action::Warn(format!("{asset}: {error}; fetching it again")));
                // Once, even if an earlier answer (cut before its end) failed it too.
                self.again.retain(|(queued, ..)| *queued != asset);
                self.again.push_back((asset, held.unwrap_or_default(), offloaded));
                self.next_file();
            }
            End::Unchanged(_) => self.next_file(),
        }
    }

    /// Takes a pack: its files, each hashed (here, or by the driver) and checked against its
    /// listed version, are committed next.
    fn unpack(&mut self, frame: &[u8], wire: u64) -> Result<(), String> {
        let compressed = match ChunkFrame::decode(frame) {
            Ok(ChunkFrame::Pack { id, compressed }) if id == self.answer.0 => compressed,
            Ok(_) => return Err("a pack was due, another frame came".into()),
            Err(e) => return Err(e.to_string()),
        };
        let raw = crate::compress::decompress(compressed, self.window.prefix(), pack::MAX_RAW)
            .map_err(|e| format!("a damaged pack: {e}"))?;
        let (params, files) = pack::decode(&raw).map_err(|e| e.to_string())?;
        self.window.push(&raw);
        self.packs_left -= 1;
        let files: Vec<(u32, Vec<u8>)> =
            files.into_iter().map(|(position, range)| (position, raw[range].to_vec())).collect();
        // (A pack of no files has no hash to wait for.)
        if !self.driver_hashes || files.is_empty() {
            let hashed = files.into_iter().map(|(position, data)| {
                let sha256 = Hash::of(&data);
                (position, data, sha256)
            });
            return self.accept(params, hashed.collect(), wire);
        }
        let (positions, fresh): (Vec<u32>, Vec<(u32, Vec<u8>)>) =
            files.into_iter().enumerate().map(|(i, (position, data))| (position, (i as u32, data))).unzip();
        let hashed = (0..fresh.len()).map(|_| None).collect();
        let outstanding = fresh.len();
        self.state = State::Unpacking(Unpacking { params, positions, fresh, hashed, outstanding, wire });
        Ok(())
    }

    /// Takes a pack's files (listing position, bytes, SHA-256): each checked against its listed
    /// version, they are committed next.
    fn accept(
        &mut self,
        params: ChunkParams,
        files: Vec<(u32, Vec<u8>, Hash)>,
        wire: u64,
    ) -> Result<(), String> {
        let total = files.iter().map(|(_, data, _)| data.len() as u64).sum::<u64>().max(1);
        let mut packed = std::collections::HashSet::new();
        for (position, data, sha256) in files {
            let entry = self.listing.get(position as usize).ok_or("a pack names a file the listing lacks")?;
            let manifest = pack::manifest_hashed(entry.asset.clone(), &data, sha256, params)
                .map_err(|e| e.to_string())?;
            let version = manifest.version();
            if version != entry.version {
                return Err(format!("{}: packed bytes do not match the listed version", entry.asset));
            }
            // Each chunk's id is its hash (the one of a file of one chunk, by the driver).
            let received = manifest
                .offsets()
                .map(|(at, c)| VerifiedChunk::hashed_by_driver(c.id, data[at..at + c.len as usize].to_vec()))
                .collect();
            packed.insert(entry.asset.clone());
            // The pack's bytes on the wire, shared out by size.
            let report = SyncReport {
                requests: 1,
                wire_in: wire * data.len() as u64 / total,
                ..SyncReport::default()
            };
            let synced = Synced { manifest, version, data, received, chunks_reused: 0 };
            self.unpacked.push_back((synced, report));
        }
        self.to_fetch.retain(|asset| !packed.contains(asset));
        self.next_file();
        Ok(())
    }

    fn lost(&mut self, why: String) {
        let who = self.folder.to_string();
        self.state = match self.losses.reconnect(self.resume, &who, why, &mut self.queue) {
            Ok(after_ms) => State::Reconnecting(after_ms),
            Err(error) => State::Failed(error),
        };
        self.report.reconnects = self.losses.count;
    }

    fn committed(&mut self, synced: Synced, report: SyncReport) {
        let manifest = synced.manifest.clone();
        let entry = FolderEntry { asset: manifest.path.clone(), version: synced.version };
        match self.held.binary_search_by(|e| e.asset.cmp(&manifest.path)) {
            Ok(at) => self.held[at] = entry,
            Err(at) => self.held.insert(at, entry),
        }
        if let Some(manifests) = &mut self.manifests {
            manifests.insert(synced.version, self.sources.len());
        }
        Arc::make_mut(&mut self.sources).push(manifest);
        self.fetched.push(synced.manifest.path.clone());
        self.queue.push_back(Action::FileDone(Finished { fetched: Fetched::Synced(synced), report }));
    }
}

impl Machine for FolderSync {
    fn poll(&mut self) -> Action<'_> {
        if let Some(action) = self.queue.pop_front() {
            return action;
        }
        match mem::replace(&mut self.state, State::Over) {
            State::Ready if self.listed && self.manifests.is_none() => {
                self.state = State::Loading(Need::Request);
            }
            State::Ready => {
                let id = bump(&mut self.next_id);
                // Files committed meanwhile are held now, and so are the chunks kept after a cut.
                let mut chunks = if self.listed { held_chunk_ids(self.sources.iter()) } else { Vec::new() };
                chunks.extend(&self.kept);
                let chunks = ChunkSet::new(chunks);
                self.answer = (id, chunks.prefix());
                // In path order: the order of the versions a server reads from the listing.
                self.named_entries = self.held.clone().into();
                (self.packs_left, self.unpacked) = (0, VecDeque::new());
                let listing = self.named_entries.clone();
                let since = (!self.in_full && !listing.is_empty()).then(|| folder_version(&listing));
                self.sent_since = since.is_some();
                let versions = match since {
                    Some(_) => Vec::new(),
                    None => listing.iter().map(|e| e.version).collect(),
                };
                let have = Have { versions, chunks };
                self.report.requests += 1;
                self.state = State::Listing(id);
                // Each answer brings the shape anew if it is not the known one.
                self.shape = None;
                self.pages = Pages::default();
                let (folder, shape) = (self.folder.to_string(), self.shape_known);
                return Action::Send(ClientMessage::SyncFolder { id, folder, since, have, shape });
            }
            State::Again(mut sync) if sync.at_end() => {
                let failed = match sync.poll() {
                    Action::Failed(error) => Some(error),
                    _ => None,
                };
                self.next_id = sync.next_id();
                match failed {
                    Some(error) => self.state = State::Failed(error),
                    None => {
                        let mut done = sync.finish();
                        add(&mut self.report, &done.report);
                        // The folder's request counts for this file too.
                        (done.report.requests, done.report.retried) = (done.report.requests + 1, true);
                        if let Fetched::Synced(synced) = done.fetched {
                            self.committed(synced, done.report);
                        }
                        self.after_answer();
                    }
                }
                return self.poll();
            }
            // Whatever ended the sync, the files verified so far become current together.
            ended @ (State::Finished | State::Failed(_)) if !self.published => {
                let failed = match ended {
                    State::Failed(error) => Some(error),
                    _ => None,
                };
                self.published = true;
                self.state = State::Publishing(failed);
                return Action::Publish;
            }
            State::Failed(error) => return Action::Failed(error),
            State::Over => panic!("poll() after Action::Failed"),
            state => self.state = state,
        }
        match &mut self.state {
            State::Loading(_) => Action::LoadManifests(self.held.iter().map(|e| e.version).collect()),
            State::Listing(_) | State::Pack => Action::Receive,
            State::Unpacking(_) => Action::FinishHashing,
            State::File(answer, _) => answer.poll(),
            State::Keeping(kept, _) => Action::Keep(kept),
            State::Reconnecting(after_ms) => Action::Reconnect { after_ms: *after_ms },
            State::Committing(synced, _) => Action::Stage(synced),
            State::Removing => Action::Remove(self.to_remove.front().expect("Removing has one")),
            State::Again(sync) => match sync.poll() {
                Action::Commit(synced) => Action::Stage(synced),
                action => action,
            },
            State::Publishing(_) => Action::Publish,
            State::Finished => Action::Done,
            State::Ready | State::Failed(_) | State::Over => unreachable!("handled above"),
        }
    }

    fn handle(&mut self, input: Input<'_>) {
        match (mem::replace(&mut self.state, State::Over), input) {
            (State::Publishing(failed), Input::Stored) => {
                self.state = failed.map_or(State::Finished, State::Failed);
            }
            // A sync that failed already reports its own error.
            (State::Publishing(failed), Input::Stop(why)) => {
                self.state = State::Failed(failed.unwrap_or(ClientError::Stopped(why)));
            }
            (_, Input::Stop(why)) => self.state = State::Failed(ClientError::Stopped(why)),
            (State::Loading(need), Input::Manifests(found)) => self.loaded(need, found),
            (State::Listing(id), Input::Sent { wire }) => {
                self.report.wire_out += wire;
                self.state = State::Listing(id);
            }
            (State::Listing(id), Input::Message { message, wire }) => {
                self.report.wire_in += wire;
                self.on_listing(id, message);
            }
            (State::Listing(_), Input::Frame { wire, .. }) => {
                self.report.wire_in += wire;
                self.lost("unexpected binary frame in answer to sync_folder".into());
            }
            (State::Listing(_), Input::Lost(why)) => self.lost(why),
            (State::Pack, Input::Frame { frame, wire }) => {
                self.report.wire_in += wire;
                if let Err(why) = self.unpack(frame, wire) {
                    self.lost(why);
                }
            }
            (State::Unpacking(mut unpacking), Input::Hashed { index, bytes, id }) => {
                unpacking.hashed[index as usize] = Some((bytes, id));
                unpacking.outstanding -= 1;
                if unpacking.outstanding > 0 {
                    self.state = State::Unpacking(unpacking);
                    return;
                }
                let Unpacking { params, positions, hashed, wire, .. } = unpacking;
                let files = positions.into_iter().zip(hashed.into_iter().flatten());
                let files = files.map(|(position, (data, sha256))| (position, data, sha256)).collect();
                if let Err(why) = self.accept(params, files, wire) {
                    self.lost(why);
                }
            }
            (State::Pack, Input::Message { message: ServerMessage::Changed { asset, version }, wire }) => {
                self.report.wire_in += wire;
                self.queue.push_back(Action::Changed { asset, version });
                self.state = State::Pack;
            }
            (State::Pack, Input::Message { message, wire }) => {
                self.report.wire_in += wire;
                self.lost(format!("unexpected `{}` where a pack was due", message.kind()));
            }
            (State::Pack, Input::Lost(why)) => self.lost(why),
            (State::File(mut answer, mut report), input) => {
                let before = (answer.wire_in, answer.downloaded);
                let end = answer.handle(input, &mut self.queue);
                report.wire_in += answer.wire_in - before.0;
                report.downloaded += answer.downloaded - before.1;
                self.report.wire_in += answer.wire_in - before.0;
                self.report.downloaded += answer.downloaded - before.1;
                match end {
                    Some(end) => self.file_ended(answer.asset().clone(), end, report, answer.offloaded()),
                    None => self.state = State::File(answer, report),
                }
            }
            (State::Keeping(kept, why), Input::Stored) => {
                self.kept.extend(kept.iter().map(VerifiedChunk::id));
                self.lost(why);
            }
            (State::Reconnecting(_), Input::Reconnected) => self.state = State::Ready,
            (State::Reconnecting(_), Input::Lost(why)) => self.lost(format!("reconnecting failed: {why}")),
            (State::Committing(synced, report), Input::Stored) => {
                self.committed(synced, report);
                self.next_file();
            }
            (State::Removing, Input::Stored) => {
                let asset = self.to_remove.pop_front().expect("Removing has one");
                if let Ok(at) = self.held.binary_search_by(|e| e.asset.cmp(&asset)) {
                    self.held.remove(at);
                }
                self.removed.push(asset);
                self.after_answer();
            }
            (State::Again(mut sync), input) => {
                sync.handle(input);
                self.state = State::Again(sync);
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
            State::File(answer, _) => answer.take_unhashed(),
            State::Again(sync) => sync.take_unhashed(),
            State::Unpacking(unpacking) => mem::take(&mut unpacking.fresh),
            _ => Vec::new(),
        }
    }
}

fn add(total: &mut SyncReport, part: &SyncReport) {
    total.requests += part.requests;
    total.reconnects += part.reconnects;
    total.wire_in += part.wire_in;
    total.wire_out += part.wire_out;
    total.downloaded += part.downloaded;
}
