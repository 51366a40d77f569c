//! The end of an answer: rebuilding the file from received and local chunks, and checking it.

use std::collections::{HashMap, HashSet};

use super::{ClientSync, Prefix, State};
use crate::{ChunkId, Error, Hash, Manifest, VerifiedChunk, VersionId};

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

impl ClientSync {
    /// Distinct chunk ids the driver must load from its own store to rebuild the file: neither
    /// received nor in a file [`ClientSync::set_prefix`] was given to reuse.
    pub fn local_chunks(&self) -> Vec<ChunkId> {
        let State::Receiving { manifest, received, .. } = &self.state else { return Vec::new() };
        let in_prefix = self.prefix_ranges();
        let mut seen = HashSet::new();
        manifest
            .chunks
            .iter()
            .map(|c| c.id)
            .filter(|id| !received.contains_key(id) && !in_prefix.contains_key(id) && seen.insert(*id))
            .collect()
    }

    /// Where each chunk of the compression prefix lies in its file. That file is the client's
    /// own old version, already read and verified, so the chunks the new version reuses from it
    /// need not be read from the store a second time.
    fn prefix_ranges(&self) -> HashMap<ChunkId, std::ops::Range<usize>> {
        let State::Receiving { dict: Some((v, Prefix::Ready { reuse: true, .. })), .. } = &self.state else {
            return HashMap::new();
        };
        let Some(base) = self.base_manifest(*v) else { return HashMap::new() };
        base.offsets().map(|(at, c)| (c.id, at..at + c.len as usize)).collect()
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
        let in_prefix = self.prefix_ranges();
        let State::Receiving { manifest, version, sent, positions, received, unhashed, dict, .. } =
            self.state
        else {
            return Err(Error::Protocol("finish before the manifest arrived".into()));
        };
        if positions.len() != sent.len() {
            return Err(Error::Protocol("finish before all chunk frames arrived".into()));
        }
        if !unhashed.is_empty() {
            return Err(Error::Protocol("finish before the driver hashed every received chunk".into()));
        }
        let prefix = match dict {
            Some((_, Prefix::Ready { file, reuse: true })) => file,
            _ => Vec::new(),
        };
        let local: HashMap<ChunkId, Vec<u8>> = local.into_iter().collect();
        let bytes_of = |id: &ChunkId| -> Option<&[u8]> {
            match received.get(id) {
                Some(chunk) => Some(chunk.bytes()),
                None => local.get(id).map(Vec::as_slice).or_else(|| prefix.get(in_prefix.get(id)?.clone())),
            }
        };
        let missing: HashSet<ChunkId> = manifest
            .chunks
            .iter()
            .filter(|c| bytes_of(&c.id).map(<[u8]>::len) != Some(c.len as usize))
            .map(|c| c.id)
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingLocal(missing.into_iter().collect()));
        }
        let mut data = Vec::with_capacity(manifest.len as usize);
        for c in &manifest.chunks {
            data.extend_from_slice(bytes_of(&c.id).expect("checked above"));
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

    /// Accepts the file if the manifest, completed with `digest` (the SHA-256 of
    /// [`Assembled::data`]), hashes to the announced version id: then every chunk id, received or
    /// local, and the file are exactly the server's.
    ///
    /// Otherwise it hashes each chunk's slice to find which local chunks were damaged and fails
    /// with [`Error::MissingLocal`] naming them, or with [`Error::FileMismatch`] if none was.
    pub fn verify(self, digest: Hash) -> Result<Synced, Error> {
        let mut s = self.synced;
        s.manifest.sha256 = digest;
        if s.manifest.version() == s.version {
            return Ok(s);
        }
        let received: HashSet<ChunkId> = s.received.iter().map(|c| c.id()).collect();
        let mut damaged = s.manifest.damaged_chunks(&s.data);
        damaged.retain(|id| !received.contains(id));
        if damaged.is_empty() { Err(Error::FileMismatch) } else { Err(Error::MissingLocal(damaged)) }
    }
}
