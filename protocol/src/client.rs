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
//! On [`Error::MissingLocal`] the driver deletes the named chunks from its store and retries with
//! the chunks it still holds listed in `have.chunks`; on [`Error::ChunkMismatch`] or
//! [`Error::FileMismatch`] it retries once with an empty `have`.

use std::collections::{HashMap, HashSet};

use crate::{
    AssetPath, ChunkFrame, ChunkId, ClientMessage, Error, Hash, Have, Manifest, ServerMessage, Update,
    VerifiedChunk, VersionId, apply,
};

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
enum Prefix {
    /// Not provided yet.
    Wanted,
    /// The file, rebuilt and verified by the driver.
    Ready(Vec<u8>),
    /// The driver could not rebuild it; compressed frames are skipped.
    Unavailable,
}

/// The event after a frame: done (or the deferred error) once every announced chunk arrived.
fn progress(
    arrived: usize,
    expected: u32,
    received: u64,
    total: u64,
    bad: &mut Option<Error>,
) -> Result<Event, Error> {
    if arrived as u32 == expected {
        bad.take().map_or(Ok(Event::Complete), Err)
    } else {
        Ok(Event::Progress { received, total })
    }
}

/// A verified new version, ready to commit.
#[derive(Debug)]
pub struct Synced {
    /// The manifest of the new version.
    pub manifest: Manifest,
    /// Its version id.
    pub version: VersionId,
    /// The rebuilt file; its SHA-256 matches the manifest.
    pub data: Vec<u8>,
    /// Chunks that came over the wire and are not yet in the store.
    pub received: Vec<VerifiedChunk>,
    /// Manifest entries that did not have to be transferred.
    pub chunks_reused: usize,
}

// One per sync in flight, never stored in bulk: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum State {
    Waiting,
    Receiving {
        manifest: Manifest,
        version: VersionId,
        expected: u32,
        total: u64,
        received_bytes: u64,
        positions: HashSet<u32>,
        received: HashMap<VersionId, VerifiedChunk>,
        /// The version batch frames were compressed against, and its file once provided.
        dict: Option<(VersionId, Prefix)>,
        /// The first chunk that failed verification. Later frames are still read (they are on
        /// the wire already), and the error is reported when the answer is complete.
        bad: Option<Error>,
    },
}

/// One sync of one asset, from request to verified result.
pub struct ClientSync {
    id: u32,
    asset: AssetPath,
    base: Option<(VersionId, Manifest)>,
    extra: Vec<Manifest>,
    state: State,
}

impl ClientSync {
    /// Starts a sync of `asset` for request `id`.
    ///
    /// `base` is the client's current manifest of this asset, if any; `others` are manifests of
    /// other assets it holds, whose chunks the server may also count as held (and which may serve
    /// as delta base). `have_chunks` lists further chunk ids held, for a client without versions
    /// the server knows. Returns the machine and the message to send.
    pub fn new(
        id: u32,
        asset: AssetPath,
        base: Option<Manifest>,
        others: Vec<Manifest>,
        have_chunks: Vec<ChunkId>,
    ) -> (Self, ClientMessage) {
        let base = base.map(|m| (m.version(), m));
        let mut versions: Vec<VersionId> = base.iter().map(|(v, _)| *v).collect();
        versions.extend(others.iter().map(Manifest::version));
        let message = ClientMessage::Sync {
            id,
            asset: asset.as_str().to_owned(),
            have: Have { versions, chunks: have_chunks },
        };
        let machine = ClientSync { id, asset, base, extra: others, state: State::Waiting };
        (machine, message)
    }

    /// Distinct ids of every chunk of the manifests this request named as held: what a retry
    /// lists in `have.chunks` (minus any found damaged) when the first answer could not be used.
    pub fn held_chunks(&self) -> Vec<ChunkId> {
        let manifests = self.base.iter().map(|(_, m)| m).chain(&self.extra);
        let ids: HashSet<ChunkId> = manifests.flat_map(|m| m.chunks.iter().map(|c| c.id)).collect();
        ids.into_iter().collect()
    }

    /// Feeds one control message.
    pub fn on_message(&mut self, message: ServerMessage) -> Result<Event, Error> {
        if !matches!(self.state, State::Waiting) {
            return Err(Error::Protocol("control message while chunk frames were expected".into()));
        }
        match message {
            ServerMessage::UpToDate { id, version } if id == self.id => {
                let Some((base_version, base)) = &self.base else {
                    return Err(Error::Protocol("up_to_date although no version was named".into()));
                };
                if *base_version != version {
                    return Err(Error::Protocol("up_to_date names a version the client lacks".into()));
                }
                self.start(base.clone(), version, 0, 0, None)
            }
            ServerMessage::Update(update) if update.id == self.id => self.on_update(update),
            ServerMessage::Error { id: Some(id), code, message } if id == self.id => {
                Err(Error::Server { code, message })
            }
            ServerMessage::Error { id: None, message, .. } => Err(Error::ConnectionClosed(message)),
            other => Err(Error::Protocol(format!("unexpected message {other:?}"))),
        }
    }

    fn on_update(&mut self, u: Update) -> Result<Event, Error> {
        let base = match u.base {
            None => None,
            Some(v) => Some(
                self.base_manifest(v)
                    .ok_or_else(|| Error::Protocol(format!("delta against unknown version {v}")))?,
            ),
        };
        let chunks = apply(base.map(|m| m.chunks.as_slice()), &u.recipe)?;
        let manifest = Manifest::from_parts(self.asset.clone(), 0, u.sha256, u.params, chunks);
        let manifest = Manifest { len: u.len, ..manifest };
        manifest.validate()?;
        if manifest.version() != u.version {
            return Err(Error::Protocol("the delta does not rebuild the announced version".into()));
        }
        if u.send as usize > manifest.chunks.len() {
            return Err(Error::Protocol("more chunk frames announced than the manifest has".into()));
        }
        let dict = match u.dict {
            Some(v) if self.base_manifest(v).is_none() => {
                return Err(Error::Protocol(format!("compressed against unknown version {v}")));
            }
            dict => dict,
        };
        self.start(manifest, u.version, u.send, u.send_bytes, dict)
    }

    fn base_manifest(&self, v: VersionId) -> Option<&Manifest> {
        let base = self.base.as_ref().filter(|(bv, _)| *bv == v).map(|(_, m)| m);
        base.or_else(|| self.extra.iter().find(|m| m.version() == v))
    }

    fn start(
        &mut self,
        manifest: Manifest,
        version: VersionId,
        expected: u32,
        total: u64,
        dict: Option<VersionId>,
    ) -> Result<Event, Error> {
        self.state = State::Receiving {
            manifest,
            version,
            expected,
            total,
            received_bytes: 0,
            positions: HashSet::new(),
            received: HashMap::new(),
            dict: dict.map(|v| (v, Prefix::Wanted)),
            bad: None,
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
    pub fn set_prefix(&mut self, file: Result<Vec<u8>, Vec<ChunkId>>) {
        if let State::Receiving { dict: Some((_, prefix)), bad, .. } = &mut self.state {
            *prefix = match file {
                Ok(file) => Prefix::Ready(file),
                Err(damaged) => {
                    bad.get_or_insert(Error::MissingLocal(damaged));
                    Prefix::Unavailable
                }
            };
        }
    }

    /// Feeds one binary frame. Every chunk in it is verified against the manifest entry it claims
    /// to be; a bad one is reported as [`Error::ChunkMismatch`] once the whole answer is read.
    pub fn on_frame(&mut self, frame: &[u8]) -> Result<Event, Error> {
        let id = self.id;
        let State::Receiving {
            manifest,
            expected,
            total,
            received_bytes,
            positions,
            received,
            dict,
            bad,
            ..
        } = &mut self.state
        else {
            return Err(Error::BadFrame("chunk frame before the manifest"));
        };
        let mut check_index = |index: u32| -> Result<crate::ChunkRef, Error> {
            let entry = *manifest
                .chunks
                .get(index as usize)
                .ok_or(Error::BadFrame("chunk index outside the manifest"))?;
            if positions.len() as u32 >= *expected {
                return Err(Error::BadFrame("more chunks than announced"));
            }
            if !positions.insert(index) {
                return Err(Error::BadFrame("chunk sent twice"));
            }
            Ok(entry)
        };
        let chunks: Vec<(crate::ChunkRef, Vec<u8>)> = match ChunkFrame::decode(frame)? {
            ChunkFrame::Chunk { id: frame_id, .. } | ChunkFrame::Batch { id: frame_id, .. }
                if frame_id != id =>
            {
                return Err(Error::BadFrame("chunk frame for another request"));
            }
            ChunkFrame::Chunk { index, bytes, .. } => vec![(check_index(index)?, bytes.to_vec())],
            ChunkFrame::Batch { indices, compressed, .. } => {
                let entries = indices.into_iter().map(&mut check_index).collect::<Result<Vec<_>, _>>()?;
                let prefix = match dict {
                    None => None,
                    Some((_, Prefix::Ready(prefix))) => Some(prefix.as_slice()),
                    Some((_, Prefix::Wanted)) => {
                        return Err(Error::Protocol("compressed frame before set_prefix".into()));
                    }
                    Some((_, Prefix::Unavailable)) => {
                        // Counted, not decoded: the answer ends in the error set_prefix recorded.
                        *received_bytes += entries.iter().map(|e| u64::from(e.len)).sum::<u64>();
                        return progress(positions.len(), *expected, *received_bytes, *total, bad);
                    }
                };
                let len: usize = entries.iter().map(|e| e.len as usize).sum();
                let data = crate::compress::decompress(compressed, prefix, len)?;
                if data.len() != len {
                    return Err(Error::BadFrame("compressed batch decodes to less than it announced"));
                }
                let mut at = 0;
                entries
                    .into_iter()
                    .map(|e| {
                        at += e.len as usize;
                        (e, data[at - e.len as usize..at].to_vec())
                    })
                    .collect()
            }
        };
        for (entry, bytes) in chunks {
            *received_bytes += bytes.len() as u64;
            match VerifiedChunk::verify(entry.id, bytes) {
                Ok(chunk) => {
                    received.insert(chunk.id(), chunk);
                }
                Err(e) => {
                    bad.get_or_insert(e);
                }
            }
        }
        progress(positions.len(), *expected, *received_bytes, *total, bad)
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

    /// Distinct chunk ids the driver must load from its own store to rebuild the file.
    pub fn local_chunks(&self) -> Vec<ChunkId> {
        let State::Receiving { manifest, received, .. } = &self.state else { return Vec::new() };
        let mut seen = HashSet::new();
        manifest
            .chunks
            .iter()
            .map(|c| c.id)
            .filter(|id| !received.contains_key(id) && seen.insert(*id))
            .collect()
    }

    /// Rebuilds the file from received and `local` chunks (as read from the store, unverified)
    /// and checks it with [`Hash::of`]. See [`ClientSync::assemble`] to check it another way.
    pub fn finish(self, local: Vec<(ChunkId, Vec<u8>)>) -> Result<Synced, Error> {
        let assembled = self.assemble(local)?;
        let digest = Hash::of(assembled.data());
        assembled.verify(digest)
    }

    /// Rebuilds the file from received and `local` chunks. Local chunks need no hashing of their
    /// own: the whole-file check in [`Assembled::verify`] covers them, and pins down any damaged
    /// one only when it fails.
    ///
    /// Fails with [`Error::MissingLocal`] when `local` lacks chunks or has one of the wrong size.
    pub fn assemble(self, local: Vec<(ChunkId, Vec<u8>)>) -> Result<Assembled, Error> {
        let State::Receiving { manifest, version, expected, positions, received, .. } = self.state else {
            return Err(Error::Protocol("finish before the manifest arrived".into()));
        };
        if positions.len() as u32 != expected {
            return Err(Error::Protocol("finish before all chunk frames arrived".into()));
        }
        let local: HashMap<ChunkId, Vec<u8>> = local.into_iter().collect();
        let mut missing = HashSet::new();
        for c in &manifest.chunks {
            let len = received.get(&c.id).map(|r| r.bytes().len()).or_else(|| local.get(&c.id).map(Vec::len));
            if len != Some(c.len as usize) {
                missing.insert(c.id);
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingLocal(missing.into_iter().collect()));
        }
        let mut data = Vec::with_capacity(manifest.len as usize);
        for c in &manifest.chunks {
            match received.get(&c.id) {
                Some(chunk) => data.extend_from_slice(chunk.bytes()),
                None => data.extend_from_slice(&local[&c.id]),
            }
        }
        let chunks_reused = manifest.chunks.len() - positions.len();
        let received = received.into_values().collect();
        Ok(Assembled { synced: Synced { manifest, version, data, received, chunks_reused } })
    }
}

/// A rebuilt file whose whole-file SHA-256 has not been checked yet.
#[derive(Debug)]
pub struct Assembled {
    synced: Synced,
}

impl Assembled {
    /// The rebuilt bytes, to hash (the browser can use `crypto.subtle.digest`).
    pub fn data(&self) -> &[u8] {
        &self.synced.data
    }

    /// Accepts the file if `digest`, the SHA-256 of [`Assembled::data`], matches the manifest.
    ///
    /// Otherwise it hashes each chunk's slice to find which local chunks were damaged and fails
    /// with [`Error::MissingLocal`] naming them, or with [`Error::FileMismatch`] if none was.
    pub fn verify(self, digest: Hash) -> Result<Synced, Error> {
        let s = self.synced;
        if digest == s.manifest.sha256 {
            return Ok(s);
        }
        let received: HashSet<ChunkId> = s.received.iter().map(|c| c.id()).collect();
        let mut damaged = s.manifest.damaged_chunks(&s.data);
        damaged.retain(|id| !received.contains(id));
        if damaged.is_empty() { Err(Error::FileMismatch) } else { Err(Error::MissingLocal(damaged)) }
    }
}
