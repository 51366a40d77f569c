//! The client's half of a sync, as a sans-IO state machine.
//!
//! A driver (the native CLI, or the WASM client over IndexedDB) does the I/O:
//!
//! 1. [`ClientSync::new`] gives the `sync` message to send.
//! 2. Every text message goes to [`ClientSync::on_message`], every binary frame to
//!    [`ClientSync::on_frame`], until one returns [`Event::Complete`]. If the answer was
//!    compressed against a file the client holds, [`ClientSync::wanted_prefix`] says which, and
//!    the driver passes its bytes to [`ClientSync::set_prefix`] first.
//! 3. The driver loads [`ClientSync::local_chunks`] from its store and calls
//!    [`ClientSync::finish`] (or [`ClientSync::assemble`], then [`Assembled::verify`]), which
//!    rebuilds the file and checks its SHA-256. Only a [`Synced`] result may be committed.
//!
//! On [`Error::UnknownBase`] the driver asks again without its own version, listing
//! [`ClientSync::held_chunks`] in `have.chunks` (other assets' versions may stay). On [`Error::MissingLocal`] it deletes the named chunks from its store and
//! retries with the chunks it still holds; on [`Error::FileMismatch`] it retries with an empty
//! `have` (see [`Error::retry_holding`]); on [`Error::BadPatch`] it asks again with `no_patch`.
//! A few attempts are enough: each retry holds fewer chunks than the one before.

mod rebuild;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub use rebuild::{Assembled, Synced};

use crate::patch::Patching;
use crate::{
    Applied, AssetPath, ChunkFrame, ChunkId, ChunkRef, ChunkSet, ClientMessage, Error, Have, MAX_CHUNKS,
    Manifest, ServerMessage, UNKNOWN_ID, Update, VerifiedChunk, VersionId, apply,
};

/// Requests per sync before a driver gives up: one round trip more covers a server that forgot
/// the cached version, and each retry after bad data holds fewer chunks than the one before.
pub const MAX_REQUESTS: u32 = 4;

/// Most chunk ids [`ClientSync::held_chunks`] returns (a 256 MiB file at the default 8 KiB).
pub const MAX_HELD: usize = 32_768;

/// Bytes of a patched file rebuilt per [`ClientSync::work`] call: about a millisecond of work
/// in a browser.
pub const PATCH_SLICE: usize = 256 << 10;

/// What the driver should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Keep feeding messages; `received` of `total` chunk bytes have arrived so far.
    Progress {
        /// Chunk bytes received.
        received: u64,
        /// Chunk bytes announced.
        total: u64,
    },
    /// Everything has arrived: load the local chunks and call [`ClientSync::finish`].
    Complete,
}

/// The compression prefix of an answer.
#[derive(Debug)]
enum Prefix {
    /// Not provided yet.
    Wanted,
    /// The file, verified by the driver; `reuse` when it was just rebuilt from the driver's
    /// store, so that the chunks it holds are known intact there.
    Ready { file: Vec<u8>, reuse: bool },
    /// The driver could not rebuild it; compressed frames are skipped.
    Unavailable,
}

/// A binary patch being applied, the file it applies to, and the next chunk to cut from the
/// file it rebuilds: its manifest position and offset.
#[derive(Debug)]
struct Patch {
    patching: Patching,
    base: Base,
    next: usize,
    at: usize,
}

/// What a patch applies to: the base version's file, or, for a patch taken against the base
/// version's WebAssembly module as maps remap it, that module remapped (a slice at a time too).
#[derive(Debug)]
enum Base {
    File,
    Remapping(crate::wasm::Remapping),
    Remapped(Vec<u8>),
}

/// A batch arriving in parts (`BatchStart`, then `BatchMore` frames).
#[derive(Debug)]
struct Partial {
    /// The manifest positions of its chunks, checked.
    indices: Vec<u32>,
    /// Their bytes.
    raw: u64,
    /// The length of its zstd frame.
    len: usize,
    /// The part of the zstd frame received so far.
    data: Vec<u8>,
}

impl Partial {
    /// Progress so far, the chunks of this batch counted in proportion to its part received.
    fn progress(&self, received: u64, total: u64) -> Event {
        let part = (self.raw as f64 * self.data.len() as f64 / self.len as f64) as u64;
        Event::Progress { received: received + part, total }
    }
}

/// The event after a frame: done (or the deferred error) once every announced chunk arrived.
fn progress(
    arrived: usize,
    expected: usize,
    received: u64,
    total: u64,
    bad: &mut Option<Error>,
) -> Result<Event, Error> {
    if arrived == expected {
        bad.take().map_or(Ok(Event::Complete), Err)
    } else {
        Ok(Event::Progress { received, total })
    }
}

// One per sync in flight, never stored in bulk: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum State {
    Waiting,
    Receiving {
        /// The new manifest; `Sent` entries hold [`UNKNOWN_ID`] until their bytes arrive.
        manifest: Manifest,
        version: VersionId,
        /// Positions whose bytes the server sends.
        sent: HashSet<u32>,
        /// Positions of the recipe's runs not cut yet, in order (see [`ClientSync::work`]).
        runs: Vec<u32>,
        total: u64,
        received_bytes: u64,
        /// Positions received so far.
        positions: HashSet<u32>,
        received: HashMap<VersionId, VerifiedChunk>,
        /// Received chunks the driver has yet to hash (see [`ClientSync::defer_hashing`]).
        unhashed: Vec<(u32, Vec<u8>)>,
        /// The version batch frames were compressed against, and its file once provided.
        dict: Option<(VersionId, Prefix)>,
        /// The batch being received in parts, if any.
        partial: Option<Partial>,
        /// The first chunk that failed verification. Later frames are still read (they are on
        /// the wire already), and the error is reported when the answer is complete.
        bad: Option<Error>,
        /// A binary patch being applied (see [`ClientSync::work`]).
        patching: Option<Box<Patch>>,
    },
}

/// One sync of one asset, from request to verified result.
#[derive(Debug)]
pub struct ClientSync {
    id: u32,
    asset: AssetPath,
    /// The manifests named in `have.versions`, in that order (shared by a folder's files).
    named: Arc<[(VersionId, Manifest)]>,
    /// Whether `named[0]` is this asset's own current version.
    has_base: bool,
    /// The prefix length of the request's `have.chunks`.
    prefix: usize,
    /// Whether the driver computes received chunks' ids (see [`ClientSync::defer_hashing`]).
    driver_hashes: bool,
    state: State,
}

impl ClientSync {
    /// Starts a sync of `asset` for request `id`.
    ///
    /// `base` is the client's current manifest of this asset, if any; `others` are manifests of
    /// other assets it holds, whose chunks the server may also count as held (and which may serve
    /// as delta base). `have_chunks` lists further chunks held, for a server that does not know
    /// the client's versions. Returns the machine and the message to send.
    pub fn new(
        id: u32,
        asset: AssetPath,
        base: Option<Manifest>,
        others: Vec<Manifest>,
        have_chunks: ChunkSet,
    ) -> (Self, ClientMessage) {
        let has_base = base.is_some();
        let named: Arc<[(VersionId, Manifest)]> =
            base.into_iter().chain(others).map(|m| (m.version(), m)).collect();
        let versions = named.iter().map(|(v, _)| *v).collect();
        let prefix = have_chunks.prefix();
        let message = ClientMessage::Sync {
            id,
            asset: asset.as_str().to_owned(),
            have: Have { versions, chunks: have_chunks },
            direct: false,
            no_patch: false,
        };
        let machine =
            ClientSync { id, asset, named, has_base, prefix, driver_hashes: false, state: State::Waiting };
        (machine, message)
    }

    /// A machine for one file of a `sync_folder` answer (request `id`), whose `have.versions`
    /// were the versions of `named`, in that order.
    pub fn for_folder_file(
        id: u32,
        asset: AssetPath,
        named: Arc<[(VersionId, Manifest)]>,
        prefix: usize,
    ) -> Self {
        ClientSync { id, asset, named, has_base: false, prefix, driver_hashes: false, state: State::Waiting }
    }

    /// The request id this answer is for.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The asset this answer is for.
    pub fn asset(&self) -> &AssetPath {
        &self.asset
    }

    /// The prefix length of the request's chunk set, for [`Error::retry_holding`].
    pub fn chunk_prefix(&self) -> usize {
        self.prefix
    }

    /// What a retry lists in `have.chunks` (minus any found damaged) when this answer could not
    /// be used: the distinct chunk ids of this asset's cached version, or, without one, of the
    /// manifests the request named; at most [`MAX_HELD`], well inside the server's default
    /// digest limit.
    pub fn held_chunks(&self) -> Vec<ChunkId> {
        let named = if self.has_base { &self.named[..1] } else { &self.named[..] };
        held_chunk_ids(named.iter().map(|(_, m)| m))
    }

    /// Feeds one control message.
    pub fn on_message(&mut self, message: ServerMessage) -> Result<Event, Error> {
        if !matches!(self.state, State::Waiting) {
            return Err(Error::Protocol("control message while chunk frames were expected".into()));
        }
        match message {
            ServerMessage::UpToDate { id, version } if id == self.id => {
                let base = self.named.first().filter(|(v, _)| self.has_base && *v == version);
                let Some((_, base)) = base else {
                    return Err(Error::Protocol("up_to_date names a version the client did not".into()));
                };
                self.start(base.clone(), version, HashSet::new(), Vec::new(), None)
            }
            ServerMessage::Update(update) if update.id == self.id => self.on_update(update),
            ServerMessage::UnknownBase { id } if id == self.id => Err(Error::UnknownBase),
            ServerMessage::Error { id: Some(id), code, message } if id == self.id => {
                Err(Error::Server { code, message })
            }
            ServerMessage::Error { id: None, message, .. } => Err(Error::ConnectionClosed(message)),
            other => Err(Error::Protocol(format!("unexpected `{}` message", other.kind()))),
        }
    }

    fn on_update(&mut self, u: Update) -> Result<Event, Error> {
        if u.asset.as_ref().is_some_and(|a| *a != self.asset) {
            return Err(Error::Protocol(format!(
                "update for {:?} where {:?} was expected",
                u.asset, self.asset
            )));
        }
        let base = match u.base {
            None => None,
            Some(i) => Some(
                self.named
                    .get(i as usize)
                    .ok_or(Error::Protocol("delta against a version not named".into()))?,
            ),
        };
        let params = u
            .params
            .or(base.map(|(_, m)| m.params))
            .ok_or(Error::Protocol("update without chunk parameters".into()))?;
        let Applied { chunks, sent, runs } = apply(base.map(|(_, m)| m.chunks.as_slice()), &u.recipe)?;
        let len = chunks.iter().map(|c| u64::from(c.len)).sum();
        // The SHA-256 is filled in from the rebuilt file, then the whole manifest is checked
        // against `u.version`.
        let manifest = Manifest { path: self.asset.clone(), len, sha256: UNKNOWN_ID, params, chunks };
        // A run is one entry, longer than a chunk may be, until `work` cuts it.
        match runs.is_empty() {
            true => manifest.validate()?,
            false => manifest.params.validate()?,
        }
        let dict = match (u.dict, base) {
            (false, _) => None,
            (true, Some((v, _))) => Some(*v),
            (true, None) => return Err(Error::Protocol("compressed against a prefix without a base".into())),
        };
        self.start(manifest, u.version, sent.into_iter().collect(), runs, dict)
    }

    fn base_manifest(&self, v: VersionId) -> Option<&Manifest> {
        self.named.iter().find(|(named, _)| *named == v).map(|(_, m)| m)
    }

    fn start(
        &mut self,
        manifest: Manifest,
        version: VersionId,
        sent: HashSet<u32>,
        runs: Vec<u32>,
        dict: Option<VersionId>,
    ) -> Result<Event, Error> {
        let total = sent.iter().map(|&i| u64::from(manifest.chunks[i as usize].len)).sum();
        let expected = sent.len();
        self.state = State::Receiving {
            manifest,
            version,
            sent,
            runs,
            total,
            received_bytes: 0,
            positions: HashSet::new(),
            received: HashMap::new(),
            unhashed: Vec::new(),
            dict: dict.map(|v| (v, Prefix::Wanted)),
            partial: None,
            bad: None,
            patching: None,
        };
        Ok(if expected == 0 { Event::Complete } else { Event::Progress { received: 0, total } })
    }

    /// The manifest of the version whose file the driver must pass to
    /// [`ClientSync::set_prefix`] before feeding frames: the server compressed this answer
    /// against it. It is one the client named, so it is in the client's store.
    pub fn wanted_prefix(&self) -> Option<&Manifest> {
        match &self.state {
            State::Receiving { dict: Some((v, Prefix::Wanted)), .. } => self.base_manifest(*v),
            _ => None,
        }
    }

    /// Provides the file of [`ClientSync::wanted_prefix`] as the store rebuilt and verified it,
    /// or the ids of the chunks that kept it from being rebuilt. In that case the compressed
    /// frames are read but not decoded, and the answer ends in [`Error::MissingLocal`] naming
    /// those chunks, so that the retry does without them.
    ///
    /// With `reuse`, the chunks the new version reuses from this file are taken from it instead
    /// of being read from the store. A driver that commits chunks by reference to what its store
    /// holds passes it only for a file it just rebuilt from that store (a copy kept in memory
    /// says nothing about the store, whose chunks are then read, and so checked by the
    /// whole-file hash); one that commits each version's file whole can always pass it.
    pub fn set_prefix(&mut self, file: Result<Vec<u8>, Vec<ChunkId>>, reuse: bool) {
        if let State::Receiving { dict: Some((_, prefix)), bad, .. } = &mut self.state {
            *prefix = match file {
                Ok(file) => Prefix::Ready { file, reuse },
                Err(damaged) => {
                    bad.get_or_insert(Error::MissingLocal(damaged));
                    Prefix::Unavailable
                }
            };
        }
    }

    /// Feeds one binary frame. Each chunk's id is computed from its bytes; the version check in
    /// [`Assembled::verify`] then proves them right. A chunk of the wrong length is reported as
    /// [`Error::FileMismatch`] once the whole answer is read.
    pub fn on_frame(&mut self, frame: &[u8]) -> Result<Event, Error> {
        let id = self.id;
        let State::Receiving {
            manifest,
            sent,
            runs,
            total,
            received_bytes,
            positions,
            dict,
            partial,
            bad,
            patching,
            ..
        } = &mut self.state
        else {
            return Err(Error::BadFrame("chunk frame before the manifest"));
        };
        let mut check_index = |index: u32| -> Result<u32, Error> {
            if !sent.contains(&index) {
                return Err(Error::BadFrame("chunk frame for a chunk the recipe does not send"));
            }
            if !positions.insert(index) {
                return Err(Error::BadFrame("chunk sent twice"));
            }
            Ok(index)
        };
        let len_of = |index: u32| manifest.chunks[index as usize].len as usize;
        let frame = ChunkFrame::decode(frame)?;
        if frame.id() != id {
            return Err(Error::BadFrame("chunk frame for another request"));
        }
        if !runs.is_empty() && !matches!(frame, ChunkFrame::Patch { .. }) {
            return Err(Error::BadFrame("chunk frames for a run of chunks that only a patch sends"));
        }
        if partial.is_some() != matches!(frame, ChunkFrame::BatchMore { .. }) {
            return Err(Error::BadFrame("a batch in parts interrupted, or a part without its start"));
        }
        // A plain chunk, or a whole zstd frame with the chunks it holds.
        let (indices, compressed): (Vec<u32>, Cow<[u8]>) = match frame {
            ChunkFrame::Chunk { index, bytes, .. } => {
                let chunk = (check_index(index)?, bytes.to_vec());
                return self.take_chunks(vec![chunk]);
            }
            ChunkFrame::Batch { indices, compressed, .. } => {
                (indices.into_iter().map(&mut check_index).collect::<Result<_, _>>()?, compressed.into())
            }
            ChunkFrame::BatchStart { indices, len, compressed, .. } => {
                let indices: Vec<u32> =
                    indices.into_iter().map(&mut check_index).collect::<Result<_, _>>()?;
                let raw: usize = indices.iter().map(|&i| len_of(i)).sum();
                // Over zstd's own bound for `raw` bytes (rounded up), or not in parts at all.
                if len as usize > raw + raw / 128 + 1024 || compressed.len() >= len as usize {
                    return Err(Error::BadFrame("batch start announces a length its chunks cannot have"));
                }
                let batch =
                    Partial { indices, raw: raw as u64, len: len as usize, data: compressed.to_vec() };
                let event = batch.progress(*received_bytes, *total);
                *partial = Some(batch);
                return Ok(event);
            }
            ChunkFrame::BatchMore { compressed, .. } => {
                let batch = partial.as_mut().expect("checked above");
                batch.data.extend_from_slice(compressed);
                if batch.data.len() > batch.len {
                    return Err(Error::BadFrame("batch part beyond the length its start announced"));
                }
                if batch.data.len() < batch.len {
                    return Ok(batch.progress(*received_bytes, *total));
                }
                let batch = partial.take().expect("checked above");
                (batch.indices, batch.data.into())
            }
            ChunkFrame::Pack { .. } => return Err(Error::BadFrame("a pack frame in a file's answer")),
            ChunkFrame::Patch { maps, payload, tail, .. } => {
                if !positions.is_empty() {
                    return Err(Error::BadFrame("a patch after other chunk frames"));
                }
                positions.extend(sent.iter().copied());
                let file = match dict {
                    Some((_, Prefix::Ready { file, .. })) => file,
                    Some((_, Prefix::Wanted)) => {
                        return Err(Error::Protocol("a patch before set_prefix".into()));
                    }
                    None => return Err(Error::BadFrame("a patch without a base version")),
                    Some((_, Prefix::Unavailable)) => {
                        // Not applied: the answer ends in the error set_prefix recorded.
                        *received_bytes = *total;
                        return progress(positions.len(), sent.len(), *received_bytes, *total, bad);
                    }
                };
                let bad = |why: &str| Error::BadPatch(why.to_owned());
                let base = match maps {
                    None => Base::File,
                    Some(maps) => {
                        let maps = crate::wasm::Maps::decode(maps).ok_or(bad("invalid WebAssembly maps"))?;
                        let remapping = crate::wasm::Remapping::new(file, maps);
                        Base::Remapping(
                            remapping.ok_or(bad("WebAssembly maps for a base that is not a module"))?,
                        )
                    }
                };
                // Applied a slice at a time by `work`.
                let applying = Patching::new(payload, tail, manifest.len)?;
                *patching = Some(Box::new(Patch { patching: applying, base, next: 0, at: 0 }));
                return Ok(Event::Progress { received: *received_bytes, total: *total });
            }
        };
        let len: usize = indices.iter().map(|&i| len_of(i)).sum();
        let prefix = match dict {
            None => None,
            Some((_, Prefix::Ready { file, .. })) => Some(file.as_slice()),
            Some((_, Prefix::Wanted)) => {
                return Err(Error::Protocol("compressed frame before set_prefix".into()));
            }
            Some((_, Prefix::Unavailable)) => {
                // Counted, not decoded: the answer ends in the error set_prefix recorded.
                *received_bytes += len as u64;
                return progress(positions.len(), sent.len(), *received_bytes, *total, bad);
            }
        };
        let data = crate::compress::decompress(&compressed, prefix, len)?;
        if data.len() != len {
            return Err(Error::BadFrame("compressed batch decodes to less than it announced"));
        }
        let mut at = 0;
        let chunks = indices
            .into_iter()
            .map(|i| {
                at += len_of(i);
                (i, data[at - len_of(i)..at].to_vec())
            })
            .collect();
        self.take_chunks(chunks)
    }

    /// Keeps the chunks of one frame (hashing them, or leaving that to the driver); the event
    /// after it.
    fn take_chunks(&mut self, chunks: Vec<(u32, Vec<u8>)>) -> Result<Event, Error> {
        let driver_hashes = self.driver_hashes;
        let State::Receiving {
            manifest,
            sent,
            total,
            received_bytes,
            positions,
            received,
            unhashed,
            bad,
            ..
        } = &mut self.state
        else {
            unreachable!("frames are taken while receiving")
        };
        for (index, bytes) in chunks {
            *received_bytes += bytes.len() as u64;
            if bytes.len() != manifest.chunks[index as usize].len as usize {
                // Bad data: read the rest of the answer, then start again from a clean state.
                bad.get_or_insert(Error::FileMismatch);
                continue;
            }
            // The id comes from the bytes; the version check in `Assembled::verify` covers it.
            if driver_hashes {
                unhashed.push((index, bytes));
                continue;
            }
            let chunk = VerifiedChunk::hash(bytes);
            manifest.chunks[index as usize].id = chunk.id();
            received.insert(chunk.id(), chunk);
        }
        progress(positions.len(), sent.len(), *received_bytes, *total, bad)
    }

    /// Whether a binary patch is being applied: call [`ClientSync::work`] until it is not.
    pub fn has_work(&self) -> bool {
        matches!(&self.state, State::Receiving { patching: Some(_), .. })
    }

    /// Rebuilds the next slice (about [`PATCH_SLICE`] bytes) of the file a binary patch
    /// describes, and takes the chunks the recipe sends that it completes, as if they had arrived
    /// in frames; a run of them ([`crate::RecipeOp::Cut`]) is cut into chunks once it is complete.
    /// A driver may yield to its event loop between calls.
    pub fn work(&mut self) -> Result<Event, Error> {
        let State::Receiving {
            manifest,
            sent,
            runs,
            positions,
            dict: Some((_, Prefix::Ready { file, .. })),
            patching: slot @ Some(_),
            received_bytes,
            total,
            ..
        } = &mut self.state
        else {
            return Err(Error::Protocol("no patch to apply".into()));
        };
        let patch = slot.as_mut().expect("matched");
        // The base is remapped first, when the patch was taken against it remapped.
        if let Base::Remapping(remapping) = &mut patch.base {
            match remapping.step(file, PATCH_SLICE) {
                Some(false) => {}
                Some(true) => patch.base = Base::Remapped(remapping.take_output()),
                None => {
                    *slot = None;
                    return Err(Error::BadPatch(
                        "the base version is a WebAssembly module this client cannot walk".into(),
                    ));
                }
            }
            return Ok(Event::Progress { received: *received_bytes, total: *total });
        }
        let base = match &patch.base {
            Base::Remapped(module) => module,
            _ => file,
        };
        let finished = match patch.patching.step(base, PATCH_SLICE) {
            Ok(finished) => finished,
            Err(error) => {
                *slot = None;
                return Err(error);
            }
        };
        let rebuilt = patch.patching.output();
        let mut chunks = Vec::new();
        while let Some(chunk) = manifest.chunks.get(patch.next) {
            let end = patch.at + chunk.len as usize;
            if end > rebuilt.len() {
                break;
            }
            if runs.first() == Some(&(patch.next as u32)) {
                // A run the rebuilt bytes cannot be cut into is the patch's fault.
                cut_run(manifest, [sent, positions], runs, &rebuilt[patch.at..end])
                    .map_err(|e| Error::BadPatch(e.to_string()))?;
                continue;
            }
            if sent.contains(&(patch.next as u32)) {
                chunks.push((patch.next as u32, rebuilt[patch.at..end].to_vec()));
            }
            (patch.next, patch.at) = (patch.next + 1, end);
        }
        if finished {
            *slot = None;
            // Runs are cut now, and sent lengths were not checked against the parameters.
            manifest.validate().map_err(|e| Error::BadPatch(e.to_string()))?;
        }
        let event = self.take_chunks(chunks)?;
        match (finished, &self.state) {
            (false, State::Receiving { received_bytes, total, .. }) => {
                Ok(Event::Progress { received: *received_bytes, total: *total })
            }
            _ => Ok(event),
        }
    }

    /// Leaves the hashing of received chunks to the driver, for one that hashes faster elsewhere
    /// (the browser's `crypto.subtle`, on another thread while frames keep arriving). After each
    /// frame the driver takes [`ClientSync::take_unhashed`] and gives each chunk back with its
    /// SHA-256 to [`ClientSync::hashed`], all of them before [`ClientSync::local_chunks`],
    /// [`ClientSync::assemble`] or [`ClientSync::take_received`]. An id the driver gets wrong
    /// cannot be committed: the version check covers every received chunk's id.
    pub fn defer_hashing(&mut self) {
        self.driver_hashes = true;
    }

    /// Received chunks waiting for the driver to hash them: (manifest index, bytes).
    pub fn take_unhashed(&mut self) -> Vec<(u32, Vec<u8>)> {
        match &mut self.state {
            State::Receiving { unhashed, .. } => std::mem::take(unhashed),
            State::Waiting => Vec::new(),
        }
    }

    /// Gives back a chunk from [`ClientSync::take_unhashed`] with `id`, the SHA-256 of `bytes`.
    pub fn hashed(&mut self, index: u32, bytes: Vec<u8>, id: ChunkId) {
        if let State::Receiving { manifest, received, .. } = &mut self.state
            && let Some(entry) = manifest.chunks.get_mut(index as usize)
        {
            entry.id = id;
            received.insert(id, VerifiedChunk::hashed_by_driver(id, bytes));
        }
    }

    /// Takes the chunks received so far, for a driver whose connection broke mid-answer: each is
    /// named by the hash of its bytes, so it can be stored and listed as held in the next
    /// request, which then does not fetch it again.
    pub fn take_received(&mut self) -> Vec<VerifiedChunk> {
        match &mut self.state {
            State::Receiving { received, .. } => received.drain().map(|(_, c)| c).collect(),
            State::Waiting => Vec::new(),
        }
    }

    /// Chunk bytes the server announced for this answer.
    pub fn announced_bytes(&self) -> u64 {
        match &self.state {
            State::Receiving { total, .. } => *total,
            State::Waiting => 0,
        }
    }

    /// The manifest being synced, once known.
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.state {
            State::Receiving { manifest, .. } => Some(manifest),
            State::Waiting => None,
        }
    }
}

/// Replaces the first of `runs` in `manifest` with the chunks FastCDC cuts `bytes` (the run's
/// rebuilt bytes) into, as the server cut them, and moves the positions after it in `sets` and
/// `runs` along. The cut is exact: FastCDC starts afresh at each chunk, and the run ends where a
/// chunk of the server's does.
fn cut_run(
    manifest: &mut Manifest,
    sets: [&mut HashSet<u32>; 2],
    runs: &mut Vec<u32>,
    bytes: &[u8],
) -> Result<(), Error> {
    let at = runs.remove(0);
    let pieces: Vec<ChunkRef> = crate::chunk::cuts(bytes, manifest.params)?
        .map(|c| ChunkRef { id: UNKNOWN_ID, len: c.len() as u32 })
        .collect();
    let added = pieces.len().saturating_sub(1);
    if manifest.chunks.len() + added > MAX_CHUNKS {
        return Err(Error::BadManifest("too many chunks"));
    }
    manifest.chunks.splice(at as usize..=at as usize, pieces);
    let added = added as u32;
    for set in sets {
        *set = set.iter().map(|&i| if i > at { i + added } else { i }).chain(at + 1..=at + added).collect();
    }
    runs.iter_mut().for_each(|r| *r += added);
    Ok(())
}

/// The distinct chunk ids of `manifests`, at most [`MAX_HELD`]: what a retry after
/// `unknown_base` lists in `have.chunks`.
pub fn held_chunk_ids<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Vec<ChunkId> {
    let ids: HashSet<ChunkId> = manifests.into_iter().flat_map(|m| m.chunks.iter().map(|c| c.id)).collect();
    ids.into_iter().take(MAX_HELD).collect()
}
