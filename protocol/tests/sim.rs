//! Deterministic simulation of the client engine ([`assetsync_protocol::engine`]) against the
//! server's own planning rules, over a link and a store that fail on purpose.
//!
//! Each seed builds a schedule: a folder of files (some small enough to travel in packs, when
//! the seed's server packs), a client that syncs single assets and the folder several times, a
//! server that publishes new versions, removes files, forgets the versions it served and may
//! send patches that do not apply, a link that cuts the connection, flips bits and duplicates
//! frames, and a store that loses chunks. Every schedule checks:
//! - each commit is byte-identical to a version the server served;
//! - each sync ends (done or failed) within a bounded number of actions, and a sync that met no
//!   fault at all succeeds;
//! - a sync whose only faults were cuts receives each missing chunk at most once (resume keeps
//!   what arrived);
//! - after a successful sync the committed file can be read back whole from the store.
//!
//! `SIM_SEEDS=N` runs N schedules (default 10,000); `SIM_SEED=S` replays one, printing its trace.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use assetsync_protocol::engine::{Action, AssetSync, ClientError, FolderSync, Input, Machine};
use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkId, ChunkParams, ClientMessage, ClientView, ErrorCode, FolderEntry, Hash,
    Manifest, Offloaded, Scope, ServerMessage, VersionId, ask_for_chunks, client_holds, cut_runs,
    folder_listing, folder_sends, folder_version, listing_pages, offload, pack, patch, plan,
};
use ruzstd::encoding::CompressionLevel;

mod common;
use common::Rng;

/// Small chunks, so that small files have many.
const PARAMS: ChunkParams = ChunkParams { min: 64, avg: 256, max: 1024 };
/// Actions one sync may take before the schedule fails as non-terminating.
const MAX_ACTIONS: usize = 20_000;

/// The server: its current files, the versions it still knows, and every version it ever served.
#[derive(Default)]
struct Server {
    files: BTreeMap<AssetPath, (Manifest, Vec<u8>)>,
    known: HashMap<VersionId, Manifest>,
    served: HashMap<VersionId, Vec<u8>>,
    /// Folder listings sent, by version (forgotten in a restart).
    listings: RefCell<HashMap<VersionId, Vec<FolderEntry>>>,
    /// Whether folder answers put small new files in packs (protocol 4), at most this many to
    /// a pack; 0 for a protocol-3 server.
    pack_files: usize,
    /// Folder listings come in pages of this many entries (0: whole).
    listing_page: usize,
    /// Whether answers with chunks are offloaded to HTTP objects (see
    /// [`assetsync_protocol::offload`]), unless the request asks for them directly.
    offload: bool,
    /// The offloaded bodies, by URL.
    objects: RefCell<HashMap<String, Vec<u8>>>,
    /// Whether answers against a base the client holds are binary patches (see
    /// [`assetsync_protocol::patch`]).
    patches: bool,
    /// Whether a patch's recipe gives runs of sent chunks as one length, for the client to cut
    /// (see [`assetsync_protocol::RecipeOp::Cut`]).
    cut: bool,
    /// Whether its patches do not apply (a bug, or a damaged stored answer): cut short, or
    /// rebuilding a file one byte off. Not a fault: the client must still end with the file, by
    /// asking for the chunks instead (`no_patch`).
    broken_patches: bool,
}

/// A patch rebuilding `new` from `old`: their common start and end from `old`, the middle as
/// new bytes (every kind of control: differences, new bytes, a seek).
fn naive_patch(old: &[u8], new: &[u8]) -> Vec<u8> {
    let start = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let most = old.len().min(new.len()) - start;
    let end = old.iter().rev().zip(new.iter().rev()).take(most).take_while(|(a, b)| a == b).count();
    let mut streams = patch::Streams::default();
    streams.push(&vec![0; start], &new[start..new.len() - end], (old.len() - end - start) as i64);
    streams.push(&vec![0; end], &[], 0);
    streams.encode(|raw| ruzstd::encoding::compress_to_vec(raw, CompressionLevel::Uncompressed))
}

enum Msg {
    Text(String),
    Frame(Vec<u8>),
}

impl Server {
    fn publish(&mut self, asset: &AssetPath, data: Vec<u8>) {
        let manifest = Manifest::build(asset.clone(), &data, PARAMS).unwrap();
        self.known.insert(manifest.version(), manifest.clone());
        self.served.insert(manifest.version(), data.clone());
        self.files.insert(asset.clone(), (manifest, data));
    }

    /// A restart: only the current versions are known.
    fn forget(&mut self) {
        self.known = self.files.values().map(|(m, _)| (m.version(), m.clone())).collect();
        self.listings.borrow_mut().clear();
    }

    fn answer(&self, request: &ClientMessage) -> Vec<Msg> {
        let text = |m: &ServerMessage| Msg::Text(serde_json::to_string(m).unwrap());
        match request {
            ClientMessage::Sync { id, asset, have, direct, no_patch } => {
                let asset = AssetPath::new(asset).unwrap();
                let Some((current, data)) = self.files.get(&asset) else {
                    let message = format!("unknown asset {asset:?}");
                    return vec![text(&ServerMessage::Error {
                        id: Some(*id),
                        code: ErrorCode::UnknownAsset,
                        message,
                    })];
                };
                let known: Vec<(u32, &Manifest)> =
                    (0..).zip(&have.versions).filter_map(|(i, v)| Some((i, self.known.get(v)?))).collect();
                let base = known.first().copied();
                if ask_for_chunks(2, have, base.is_none_or(|(i, _)| i != 0)) {
                    return vec![text(&ServerMessage::UnknownBase { id: *id })];
                }
                let held = client_holds(have, known.iter().map(|(_, m)| *m), [current]);
                let mut out = Vec::new();
                let (offload, patches) = (self.offload && !direct, self.patches && !no_patch);
                self.file_answer(*id, None, current, data, base, &held, offload, patches, &mut out);
                out
            }
            ClientMessage::SyncFolder { id, folder, since, have, .. } => {
                let scope = Scope::new(folder).unwrap();
                let files: Vec<&(Manifest, Vec<u8>)> =
                    self.files.iter().filter(|(a, _)| scope.covers(a)).map(|(_, f)| f).collect();
                let since = match since.map(|v| self.listings.borrow().get(&v).cloned()) {
                    Some(None) => return vec![text(&ServerMessage::UnknownBase { id: *id })],
                    Some(Some(listing)) => Some(listing),
                    None => None,
                };
                let mut have = have.clone();
                if let Some(listing) = &since {
                    have.versions = listing.iter().map(|e| e.version).collect();
                }
                let have = &have;
                let known: Vec<(u32, &Manifest)> =
                    (0..).zip(&have.versions).filter_map(|(i, v)| Some((i, self.known.get(v)?))).collect();
                if ask_for_chunks(3, have, known.len() < have.versions.len()) {
                    return vec![text(&ServerMessage::UnknownBase { id: *id })];
                }
                let mut held =
                    client_holds(have, known.iter().map(|(_, m)| *m), files.iter().map(|(m, _)| m));
                let entries: Vec<FolderEntry> = files
                    .iter()
                    .map(|(m, _)| FolderEntry { asset: m.path.clone(), version: m.version() })
                    .collect();
                self.listings.borrow_mut().insert(folder_version(&entries), entries.clone());
                let mut listing = folder_listing(*id, since.as_deref(), entries);
                let versions: Vec<VersionId> = files.iter().map(|(m, _)| m.version()).collect();
                let base_of = |m: &Manifest| known.iter().find(|(_, k)| k.path == m.path).copied();
                let (mut packed, mut updates) = (Vec::new(), Vec::new());
                for (position, (m, data)) in folder_sends(have, files.into_iter().enumerate().zip(&versions))
                {
                    let new = self.pack_files > 0
                        && base_of(m).is_none()
                        && pack::packable(m, true)
                        && m.chunks.iter().all(|c| !held.contains(&c.id));
                    if new {
                        held.extend(m.chunks.iter().map(|c| c.id));
                    }
                    match new {
                        true => packed.push((position as u32, data.as_slice())),
                        false => updates.push((m, data)),
                    }
                }
                let packs: Vec<&[(u32, &[u8])]> = packed.chunks(self.pack_files.max(1)).collect();
                if let ServerMessage::Folder { packs: count, .. } = &mut listing {
                    *count = packs.len() as u32;
                }
                let page = if self.listing_page == 0 { usize::MAX } else { self.listing_page };
                let mut out: Vec<Msg> = listing_pages(listing, page).iter().map(text).collect();
                for files in packs {
                    // Raw zstd blocks: valid whatever prefix the client holds.
                    let raw = pack::encode(PARAMS, files);
                    let compressed =
                        ruzstd::encoding::compress_to_vec(&raw[..], CompressionLevel::Uncompressed);
                    out.push(Msg::Frame(ChunkFrame::Pack { id: *id, compressed: &compressed }.encode()));
                }
                for (m, data) in updates {
                    let sent = self.file_answer(
                        *id,
                        Some(m.path.clone()),
                        m,
                        data,
                        base_of(m),
                        &held,
                        self.offload,
                        self.patches,
                        &mut out,
                    );
                    held.extend(sent);
                }
                out
            }
            other => panic!("unexpected request {other:?}"),
        }
    }

    /// Appends the answer for one file; returns the chunks sent.
    #[allow(clippy::too_many_arguments)]
    fn file_answer(
        &self,
        id: u32,
        asset: Option<AssetPath>,
        current: &Manifest,
        data: &[u8],
        base: Option<(u32, &Manifest)>,
        held: &HashSet<ChunkId>,
        offload: bool,
        patches: bool,
        out: &mut Vec<Msg>,
    ) -> Vec<ChunkId> {
        let view = ClientView { base: base.map(|(i, m)| (i, m.version(), m)), held };
        let mut answer = plan(id, current, current.version(), view);
        let offsets: Vec<(usize, u32)> = current.offsets().map(|(at, c)| (at, c.len)).collect();
        // The client's old file, when this server sends patches against it.
        let old =
            base.filter(|_| patches && !answer.send.is_empty()).map(|(_, m)| &self.served[&m.version()]);
        let frames = |id: u32| -> Vec<Vec<u8>> {
            if let Some(old) = old {
                let payload = match self.broken_patches {
                    false => naive_patch(old, data),
                    true if data.len().is_multiple_of(2) => {
                        let mut cut = naive_patch(old, data);
                        cut.truncate(cut.len() / 2);
                        cut
                    }
                    true => {
                        let mut wrong = data.to_vec();
                        wrong[0] ^= 1;
                        naive_patch(old, &wrong)
                    }
                };
                return vec![ChunkFrame::Patch { id, maps: None, payload: &payload, tail: None }.encode()];
            }
            let chunk = |&index: &u32| {
                let (at, len) = offsets[index as usize];
                ChunkFrame::Chunk { id, index, bytes: &data[at..at + len as usize] }.encode()
            };
            answer.send.iter().map(chunk).collect()
        };
        let offload = offload && !answer.send.is_empty();
        let body = offload.then(|| offload::body(frames(0)));
        let frames = if offload { Vec::new() } else { frames(id) };
        if let ServerMessage::Update(update) = &mut answer.message {
            update.asset = asset;
            update.dict = old.is_some();
            if old.is_some() && self.cut {
                cut_runs(&mut update.recipe);
            }
            if let Some(body) = body {
                let url = format!("/o/{}", offload::name(&body));
                update.offload = Some(Offloaded { url: url.clone(), bytes: body.len() as u64 });
                self.objects.borrow_mut().insert(url, body);
            }
        }
        out.push(Msg::Text(serde_json::to_string(&answer.message).unwrap()));
        out.extend(frames.into_iter().map(Msg::Frame));
        answer.send.iter().map(|&i| current.chunks[i as usize].id).collect()
    }
}

/// The client's store: chunk records and committed pointers, like the native cache, and a
/// folder's files and removals staged for its publish.
#[derive(Default)]
struct Store {
    chunks: HashMap<ChunkId, Vec<u8>>,
    refs: BTreeMap<AssetPath, Manifest>,
    staged: Vec<(AssetPath, Option<Manifest>)>,
}

impl Store {
    fn file(&self, m: &Manifest) -> Result<Vec<u8>, Vec<ChunkId>> {
        let mut data = Vec::new();
        let mut bad = Vec::new();
        for c in &m.chunks {
            match self.chunks.get(&c.id) {
                Some(bytes) if bytes.len() == c.len as usize => data.extend_from_slice(bytes),
                _ => bad.push(c.id),
            }
        }
        if bad.is_empty() && Hash::of(&data) == m.sha256 {
            return Ok(data);
        }
        if bad.is_empty() {
            bad = m.damaged_chunks(&data);
        }
        Err(bad)
    }
}

/// What one sync met, to decide which invariants apply.
#[derive(Default, Debug)]
struct Met {
    cuts: u32,
    other_faults: u32,
    /// Chunk bytes in frames delivered to the client.
    frame_bytes: u64,
    /// Assets committed, or found unchanged and intact.
    synced: Vec<AssetPath>,
    /// Publishes asked for, and whether anything was staged after one.
    publishes: u32,
    staged_late: bool,
    /// Bytes of each offloaded body delivered.
    downloaded: HashMap<String, u64>,
}

/// One simulated world.
struct World {
    rng: Rng,
    server: Server,
    store: Store,
    next_id: u32,
    trace: Vec<String>,
    verbose: bool,
    /// Whether the store lost a chunk so far: a sync finds that out only after the answer,
    /// whose new chunks then cross again.
    store_lost: bool,
}

impl World {
    /// Keeps a trace line; prints it at once when replaying one seed.
    fn log(&mut self, line: String) {
        if self.verbose {
            println!("{line}");
        }
        self.trace.push(line);
    }

    /// Runs one sync to its end, with faults; returns its error, if any, and what it met.
    fn run(&mut self, machine: &mut dyn Machine, faults: bool) -> (Result<(), ClientError>, Met) {
        let mut met = Met::default();
        let mut link: VecDeque<Msg> = VecDeque::new();
        let mut cut = false;
        let mut unhashed: Vec<(u32, Vec<u8>)> = Vec::new();
        // The response being read: its pieces, its end, or its failure.
        let mut body: VecDeque<Result<Vec<u8>, (String, bool)>> = VecDeque::new();
        let mut reading = String::new();
        for _ in 0..MAX_ACTIONS {
            // Give some hashes back early, as a driver hashing in the background does.
            if !unhashed.is_empty() && self.rng.chance(300) {
                let (index, bytes) = unhashed.remove(self.rng.below(unhashed.len()));
                let id = Hash::of(&bytes);
                machine.handle(Input::Hashed { index, bytes, id });
                continue;
            }
            let action = machine.poll();
            let read = matches!(action, Action::Download { .. } | Action::ReadDownload);
            self.log(format!("{action:?}").chars().take(160).collect());
            match action {
                Action::Prefetch(_) | Action::Progress { .. } | Action::Warn(_) | Action::Release(_) => {}
                Action::Changed { .. } | Action::FileDone(_) => {}
                Action::Send(request) => {
                    if faults && self.rng.chance(60) {
                        met.other_faults += 1;
                        self.change_server();
                    }
                    if cut {
                        machine.handle(Input::Lost("the link is down".into()));
                        continue;
                    }
                    link = self.server.answer(&request).into();
                    if faults {
                        self.disturb(&mut link, &mut cut, &mut met);
                    }
                    machine.handle(Input::Sent { wire: 1 });
                }
                Action::Receive => match link.pop_front() {
                    Some(Msg::Text(text)) => {
                        let message = serde_json::from_str(&text).expect("the server's messages parse");
                        machine.handle(Input::Message { message, wire: text.len() as u64 })
                    }
                    Some(Msg::Frame(frame)) => {
                        met.frame_bytes += match ChunkFrame::decode(&frame) {
                            // A pack counts its files' bytes, not its header.
                            Ok(ChunkFrame::Pack { compressed, .. }) => packed_bytes(compressed),
                            // A patch rebuilds the whole file, held chunks and all: not counted.
                            Ok(ChunkFrame::Patch { .. }) => 0,
                            _ => frame.len().saturating_sub(9) as u64,
                        };
                        machine.handle(Input::Frame { frame: &frame, wire: frame.len() as u64 });
                        unhashed.extend(machine.take_unhashed());
                    }
                    None if cut => machine.handle(Input::Lost("cut".into())),
                    None => panic!("the machine waits for a message the server never sends"),
                },
                Action::LoadFile(m) => {
                    let file = self.store.file(m);
                    machine.handle(Input::File(file));
                }
                Action::CheckFile(m) => {
                    let intact = self.store.file(m).map(drop);
                    if intact.is_ok() {
                        met.synced.push(m.path.clone());
                    }
                    machine.handle(Input::Checked(intact));
                }
                Action::Work => {
                    machine.handle(Input::Work);
                    unhashed.extend(machine.take_unhashed());
                }
                Action::FinishHashing => {
                    unhashed.extend(machine.take_unhashed());
                    for (index, bytes) in std::mem::take(&mut unhashed) {
                        let id = Hash::of(&bytes);
                        machine.handle(Input::Hashed { index, bytes, id });
                    }
                }
                Action::LoadManifests(versions) => {
                    // The store keeps manifests with its pointers: those of committed versions.
                    let found = self
                        .store
                        .refs
                        .values()
                        .filter(|m| versions.contains(&m.version()))
                        .cloned()
                        .collect();
                    machine.handle(Input::Manifests(found));
                }
                Action::LoadChunks { ids, .. } => {
                    let found =
                        ids.iter().filter_map(|id| Some((*id, self.store.chunks.get(id)?.clone()))).collect();
                    machine.handle(Input::Chunks(found));
                }
                Action::Verify(data) => {
                    let digest = Hash::of(data);
                    machine.handle(Input::Digest(digest));
                }
                Action::Keep(chunks) => {
                    for c in chunks {
                        assert_eq!(Hash::of(c.bytes()), c.id(), "a kept chunk is named by its bytes");
                        self.store.chunks.insert(c.id(), c.bytes().to_vec());
                    }
                    machine.handle(Input::Stored);
                }
                Action::Commit(synced) | Action::Stage(synced) => {
                    let served = self.server.served.get(&synced.version);
                    assert_eq!(served, Some(&synced.data), "a commit is a version the server served");
                    assert_eq!(synced.manifest.version(), synced.version);
                    if self.store_fails(faults, &mut met) {
                        machine.handle(Input::Stop("disk full".into()));
                        continue;
                    }
                    for c in &synced.received {
                        self.store.chunks.insert(c.id(), c.bytes().to_vec());
                    }
                    let (asset, manifest) = (synced.manifest.path.clone(), synced.manifest.clone());
                    if matches!(action, Action::Commit(_)) {
                        self.store.refs.insert(asset.clone(), manifest);
                        met.synced.push(asset);
                    } else {
                        met.staged_late |= met.publishes > 0;
                        self.store.staged.push((asset, Some(manifest)));
                    }
                    machine.handle(Input::Stored);
                }
                Action::Remove(asset) => {
                    assert!(!self.server.files.contains_key(asset), "removes only what the server dropped");
                    met.staged_late |= met.publishes > 0;
                    self.store.staged.push((asset.clone(), None));
                    machine.handle(Input::Stored);
                }
                Action::Publish => {
                    met.publishes += 1;
                    let staged = std::mem::take(&mut self.store.staged);
                    // A publish that fails leaves the previous versions current.
                    if self.store_fails(faults, &mut met) {
                        machine.handle(Input::Stop("disk full".into()));
                        continue;
                    }
                    for (asset, manifest) in staged {
                        match manifest {
                            Some(m) => {
                                self.store.refs.insert(asset.clone(), m);
                                met.synced.push(asset);
                            }
                            None => drop(self.store.refs.remove(&asset)),
                        }
                    }
                    machine.handle(Input::Stored);
                }
                Action::Discard(ids) => ids.iter().for_each(|id| drop(self.store.chunks.remove(id))),
                Action::Download { url, from, after_ms } => {
                    assert!(after_ms <= 5_000, "backoff is capped");
                    let object = self.server.objects.borrow()[url].clone();
                    body = self.respond(&object[from as usize..], faults, &mut met);
                    reading = url.to_owned();
                }
                Action::ReadDownload => {}
                Action::Reconnect { after_ms } => {
                    assert!(after_ms <= 5_000, "backoff is capped");
                    link.clear();
                    cut = faults && self.rng.chance(100);
                    match cut {
                        true => machine.handle(Input::Lost("refused".into())),
                        false => machine.handle(Input::Reconnected),
                    }
                }
                Action::Done => return (Ok(()), met),
                Action::Failed(error) => return (Err(error), met),
                Action::SendFrames(_) => unreachable!("sync machines send no frames"),
            }
            if read {
                match body.pop_front().expect("the machine reads past the body's end") {
                    Ok(piece) => {
                        *met.downloaded.entry(reading.clone()).or_default() += piece.len() as u64;
                        machine.handle(Input::Downloaded(&piece));
                        unhashed.extend(machine.take_unhashed());
                    }
                    Err((why, transient)) => machine.handle(Input::DownloadFailed { why, transient }),
                }
            }
        }
        panic!("no end after {MAX_ACTIONS} actions");
    }

    /// The response to a download of `body`, in pieces, with faults: a refusal, a cut (a broken
    /// connection, or a body that ends early), a flipped bit.
    fn respond(
        &mut self,
        body: &[u8],
        faults: bool,
        met: &mut Met,
    ) -> VecDeque<Result<Vec<u8>, (String, bool)>> {
        if faults && self.rng.chance(40) {
            met.other_faults += 1;
            return [Err(("HTTP 404".to_owned(), false))].into();
        }
        let mut body = body.to_vec();
        let mut end = Ok(Vec::new());
        if faults && !body.is_empty() && self.rng.chance(200) {
            body.truncate(self.rng.below(body.len()));
            met.cuts += 1;
            if self.rng.chance(500) {
                end = Err(("connection reset".to_owned(), true));
            }
        }
        if faults && !body.is_empty() && self.rng.chance(30) {
            let bit = self.rng.below(body.len() * 8);
            body[bit / 8] ^= 1 << (bit % 8);
            met.other_faults += 1;
        }
        let mut pieces = VecDeque::new();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(rest.len().min(1 + self.rng.below(700)));
            pieces.push_back(Ok(piece.to_vec()));
            rest = after;
        }
        pieces.push_back(end);
        pieces
    }

    /// Whether the store fails to write (a full disk, a quota).
    fn store_fails(&mut self, faults: bool, met: &mut Met) -> bool {
        let fails = faults && self.rng.chance(20);
        met.other_faults += u32::from(fails);
        fails
    }

    /// Faults on one answer: a cut, a flipped bit, a duplicated frame.
    fn disturb(&mut self, link: &mut VecDeque<Msg>, cut: &mut bool, met: &mut Met) {
        if !link.is_empty() && self.rng.chance(250) {
            link.truncate(self.rng.below(link.len()));
            *cut = true;
            met.cuts += 1;
        }
        let frames: Vec<usize> = (0..link.len()).filter(|&i| matches!(link[i], Msg::Frame(_))).collect();
        if !frames.is_empty() && self.rng.chance(60) {
            let at = frames[self.rng.below(frames.len())];
            if let Msg::Frame(f) = &mut link[at] {
                let bit = self.rng.below(f.len() * 8);
                f[bit / 8] ^= 1 << (bit % 8);
            }
            met.other_faults += 1;
        }
        if !frames.is_empty() && self.rng.chance(30) {
            let at = frames[self.rng.below(frames.len())];
            if let Msg::Frame(f) = &link[at] {
                let copy = Msg::Frame(f.clone());
                link.insert(at + 1, copy);
            }
            met.other_faults += 1;
        }
    }

    /// Between requests: a new version, a forgetful restart, or a store that lost a chunk.
    fn change_server(&mut self) {
        match self.rng.below(3) {
            0 => {
                let assets: Vec<AssetPath> = self.server.files.keys().cloned().collect();
                let asset = &assets[self.rng.below(assets.len())];
                let data = self.rng.edit(&self.server.files[asset].1.clone());
                self.server.publish(asset, data);
            }
            1 => self.server.forget(),
            _ => {
                // Sorted: a seed must replay exactly.
                let mut ids: Vec<ChunkId> = self.store.chunks.keys().copied().collect();
                ids.sort_unstable();
                if !ids.is_empty() {
                    let id = ids[self.rng.below(ids.len())];
                    self.store.chunks.remove(&id);
                    self.store_lost = true;
                }
            }
        }
    }

    /// Chunk bytes of `manifests` the client cannot name as held (in no committed version, or
    /// lost from the store), each distinct chunk once.
    fn missing(&self, manifests: &[&Manifest]) -> u64 {
        let named: HashSet<ChunkId> =
            self.store.refs.values().flat_map(|m| m.chunks.iter().map(|c| c.id)).collect();
        let mut seen = HashSet::new();
        manifests
            .iter()
            .flat_map(|m| &m.chunks)
            .filter(|c| {
                !(named.contains(&c.id) && self.store.chunks.contains_key(&c.id)) && seen.insert(c.id)
            })
            .map(|c| u64::from(c.len))
            .sum()
    }
}

/// The bytes of the files in a pack's zstd frame (0 if it does not decode).
fn packed_bytes(compressed: &[u8]) -> u64 {
    let raw = assetsync_protocol::compress::decompress(compressed, None, pack::MAX_RAW).unwrap_or_default();
    pack::decode(&raw).map_or(0, |(_, files)| files.iter().map(|(_, r)| r.len() as u64).sum())
}

fn schedule(seed: u64, verbose: bool) -> Vec<String> {
    let mut w = World {
        rng: Rng(seed),
        server: Server::default(),
        store: Store::default(),
        next_id: 1,
        trace: Vec::new(),
        verbose,
        store_lost: false,
    };
    let folder = Scope::new("dist/").unwrap();
    let assets: Vec<AssetPath> =
        (0..1 + w.rng.below(3)).map(|i| AssetPath::new(&format!("dist/f{i}.js")).unwrap()).collect();
    w.server.pack_files = w.rng.below(4);
    w.server.listing_page = w.rng.below(3);
    w.server.offload = w.rng.chance(400);
    w.server.patches = w.rng.chance(400);
    w.server.cut = w.server.patches && w.rng.chance(500);
    w.server.broken_patches = w.server.patches && w.rng.chance(250);
    // And small files of one chunk (or empty), which a protocol-4 server packs.
    let tiny = (0..w.rng.below(4)).map(|i| AssetPath::new(&format!("dist/t{i}.js")).unwrap());
    let assets: Vec<AssetPath> = assets.into_iter().chain(tiny).collect();
    for asset in &assets {
        let len = match asset.as_str().starts_with("dist/t") {
            true => w.rng.below(64),
            false => 200 + w.rng.below(12_000),
        };
        let data = w.rng.bytes(len);
        w.server.publish(asset, data);
    }
    for _ in 0..2 + w.rng.below(3) {
        let faults = w.rng.chance(700);
        let target = match w.rng.chance(400) {
            true => None,
            false => Some(assets[w.rng.below(assets.len())].clone()),
        };
        let wanted: Vec<Manifest> = w
            .server
            .files
            .values()
            .map(|(m, _)| m.clone())
            .filter(|m| target.as_ref().is_none_or(|a| *a == m.path))
            .collect();
        let missing = w.missing(&wanted.iter().collect::<Vec<_>>());
        let mut machine: Box<dyn Machine> = match &target {
            None => {
                let held: Vec<FolderEntry> = w
                    .store
                    .refs
                    .values()
                    .map(|m| FolderEntry { asset: m.path.clone(), version: m.version() })
                    .collect();
                Box::new(FolderSync::new(folder.clone(), held, w.next_id))
            }
            Some(asset) => {
                let base = w.store.refs.get(asset).cloned();
                let others = w.store.refs.values().filter(|m| m.path != *asset).cloned().collect();
                Box::new(AssetSync::new(asset.clone(), base, others, w.next_id))
            }
        };
        if w.rng.chance(500) {
            machine.set_driver_hashes();
        }
        let (result, met) = w.run(machine.as_mut(), faults);
        if result.is_ok() {
            w.next_id = machine.next_id();
        }
        // A folder's files become current together, once, however its sync ended.
        if target.is_none() {
            assert_eq!(met.publishes, 1, "a folder sync publishes once");
            assert!(!met.staged_late && w.store.staged.is_empty(), "nothing is staged after the publish");
        } else {
            assert_eq!(met.publishes, 0, "a single asset commits on its own");
        }
        w.log(format!("=> {result:?} {met:?}, {missing} bytes missing"));
        match &result {
            Err(e) if met.cuts + met.other_faults == 0 => panic!("a sync without faults failed: {e}"),
            // What a failed sync committed (a folder's files verified before the failure) holds.
            Err(_) => {
                for asset in met.synced.iter().filter(|_| !w.store_lost) {
                    let m = &w.store.refs[asset];
                    assert!(w.store.file(m).is_ok(), "{asset} committed but cannot be read back");
                }
            }
            Ok(()) if met.other_faults == 0 => {
                // Each offloaded body crossed at most once, whatever the cuts.
                let objects = w.server.objects.borrow();
                for (url, bytes) in &met.downloaded {
                    assert!(*bytes <= objects[url].len() as u64, "{bytes} bytes of {url} downloaded");
                }
                drop(objects);
                // Each missing chunk crossed at most once, whatever the cuts.
                assert!(
                    w.store_lost || met.frame_bytes <= missing,
                    "{} chunk bytes for {missing} missing",
                    met.frame_bytes
                );
                for asset in &met.synced {
                    let m = &w.store.refs[asset];
                    assert!(w.store.file(m).is_ok(), "{asset} committed but cannot be read back");
                }
            }
            Ok(()) => {}
        }
        // Between syncs: the server moves on.
        if w.rng.chance(500) {
            let asset = &assets[w.rng.below(assets.len())];
            let data = w.rng.edit(&w.server.files[asset].1.clone());
            w.server.publish(asset, data);
        }
    }
    w.trace
}

#[test]
fn seeded_schedules_keep_every_invariant() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        schedule(seed, true);
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    for seed in 0..seeds {
        let result = std::panic::catch_unwind(|| schedule(seed, false));
        if result.is_err() {
            panic!(
                "schedule {seed} failed; replay it with SIM_SEED={seed} cargo test -p assetsync-protocol --test sim -- --nocapture"
            );
        }
    }
    println!("{seeds} seeded schedules passed");
}
