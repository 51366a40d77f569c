//! Content-defined chunking (FastCDC v2020) and SHA-256 chunk identities.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Hash};

/// The SHA-256 of a chunk's bytes.
pub type ChunkId = Hash;

/// FastCDC size parameters. They travel in every manifest so that a client never has to guess how
/// the server cut a file, and so that the server may change them without breaking old caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    /// Smallest chunk, except for the file's last one.
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// Largest chunk; also bounds the size of one binary chunk frame.
    pub max: u32,
}

impl ChunkParams {
    /// The largest `max` we accept: a chunk travels in one WebSocket frame.
    pub const MAX_CHUNK: u32 = 1 << 20;

    /// `min = avg / 4` and `max = avg * 4`, the usual FastCDC spread.
    pub fn with_avg(avg: u32) -> Result<Self, Error> {
        let params = ChunkParams { min: avg / 4, avg, max: avg.saturating_mul(4) };
        params.validate()?;
        Ok(params)
    }

    /// Checks the bounds that both FastCDC and our frame limits require, so that a bad value from
    /// the network or the command line is an error instead of a panic inside the chunker.
    pub fn validate(&self) -> Result<(), Error> {
        let ChunkParams { min, avg, max } = *self;
        let ok = (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX).contains(&min)
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg)
            && (fastcdc::v2020::MAXIMUM_MIN..=Self::MAX_CHUNK).contains(&max)
            && min <= avg
            && avg <= max;
        if ok { Ok(()) } else { Err(Error::BadParams(*self)) }
    }
}

impl Default for ChunkParams {
    /// 8 KiB average: measured best for real minified JS bundles (64 KiB wastes a lot).
    fn default() -> Self {
        ChunkParams { min: 2 * 1024, avg: 8 * 1024, max: 32 * 1024 }
    }
}

/// One entry of a manifest: which chunk, and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// SHA-256 of the chunk.
    pub id: ChunkId,
    /// Length in bytes (at most [`ChunkParams::MAX_CHUNK`]).
    pub len: u32,
}

/// Cuts `data` into content-defined chunks and hashes each one.
///
/// This is the server's hot path: it borrows `data`, hashes slices in place and allocates only the
/// result vector.
pub fn chunk_data(data: &[u8], params: ChunkParams) -> Result<Vec<ChunkRef>, Error> {
    let mut out = Vec::with_capacity(data.len() / params.avg as usize + 1);
    for chunk in cuts(data, params)? {
        out.push(ChunkRef { id: ChunkId::of(chunk), len: chunk.len() as u32 });
    }
    Ok(out)
}

/// The content-defined chunks of `data` (none when it is empty), not hashed.
///
/// The cuts `fastcdc::v2020::FastCDC::new` makes (normalisation level 1, no seed), through the
/// crate's `cut` on its static gear tables: `FastCDC::new` copies both tables (4 KiB) into two
/// new allocations for every file, and a folder answer cuts thousands of small ones.
pub(crate) fn cuts(data: &[u8], params: ChunkParams) -> Result<impl Iterator<Item = &[u8]>, Error> {
    use fastcdc::v2020::{MASKS, Normalization, cut, logarithm2};
    params.validate()?;
    let (bits, level) = (logarithm2(params.avg), Normalization::Level1.bits());
    let (mask_s, mask_l) = (MASKS[(bits + level) as usize], MASKS[(bits - level) as usize]);
    let (min, avg, max) = (params.min as usize, params.avg as usize, params.max as usize);
    let mut rest = data;
    Ok(std::iter::from_fn(move || {
        let (_, end) = cut(rest, min, avg, max, mask_s, mask_l, mask_s << 1, mask_l << 1);
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        (!chunk.is_empty()).then_some(chunk)
    }))
}

/// Chunk bytes whose SHA-256 has been checked against their id. Stores accept only this type,
/// so an unverified chunk can never be written to a cache.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedChunk {
    id: ChunkId,
    bytes: Vec<u8>,
}

impl VerifiedChunk {
    /// Hashes `bytes` and keeps them only if they match `expected`.
    pub fn verify(expected: ChunkId, bytes: Vec<u8>) -> Result<Self, Error> {
        let actual = ChunkId::of(&bytes);
        if actual == expected {
            Ok(VerifiedChunk { id: expected, bytes })
        } else {
            Err(Error::ChunkMismatch { expected, actual })
        }
    }

    /// Hashes `bytes` to find their id.
    pub fn hash(bytes: Vec<u8>) -> Self {
        VerifiedChunk { id: ChunkId::of(&bytes), bytes }
    }

    /// Takes `id` as the SHA-256 of `bytes`, computed by the driver. Only for received chunks,
    /// whose ids the version check in [`crate::Assembled::verify`] proves before anything is
    /// committed (see [`crate::ClientSync::defer_hashing`]).
    pub(crate) fn hashed_by_driver(id: ChunkId, bytes: Vec<u8>) -> Self {
        VerifiedChunk { id, bytes }
    }

    /// The chunk's id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The verified bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl fmt::Debug for VerifiedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifiedChunk({:?}, {} bytes)", self.id, self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_params_are_errors_not_panics() {
        for p in [
            ChunkParams { min: 0, avg: 8192, max: 32768 },
            ChunkParams { min: 4096, avg: 1024, max: 32768 },
            ChunkParams { min: 2048, avg: 8192, max: 64 << 20 },
        ] {
            assert!(chunk_data(b"abc", p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn chunks_cover_the_input_exactly() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let chunks = chunk_data(&data, ChunkParams::default()).unwrap();
        assert_eq!(chunks.iter().map(|c| c.len as usize).sum::<usize>(), data.len());
        assert!(chunks.len() > 10);
        assert!(chunk_data(&[], ChunkParams::default()).unwrap().is_empty());
    }

    #[test]
    fn verified_chunk_rejects_wrong_bytes() {
        let id = ChunkId::of(b"hello");
        assert!(VerifiedChunk::verify(id, b"hello".to_vec()).is_ok());
        assert!(VerifiedChunk::verify(id, b"hellO".to_vec()).is_err());
    }
}
