//! Binary chunk frames: chunk bytes, never JSON.

use crate::Error;

const KIND_CHUNK: u8 = 1;
const KIND_BATCH: u8 = 2;
const KIND_BATCH_START: u8 = 3;
const KIND_BATCH_MORE: u8 = 4;
const KIND_PACK: u8 = 5;
const KIND_PATCH: u8 = 6;
const KIND_WASM_PATCH: u8 = 7;
const KIND_TAILED_PATCH: u8 = 8;

/// The most zstd bytes a server puts in one frame of a batch sent in parts (protocol 3): a
/// client sees a WebSocket message, and can report progress, at least this often.
pub const BATCH_PART: usize = 64 << 10;

/// A binary frame from the server: chunk bytes, never JSON.
///
/// - `Chunk`: `[1u8][request id: u32 LE][manifest index: u32 LE][chunk bytes]`.
/// - `Batch`: `[2u8][request id: u32 LE][count: u32 LE][count manifest indices: u32 LE][zstd frame]`;
///   the zstd frame decodes to the listed chunks' bytes back to back, compressed with the base
///   version's file as prefix when the `update` says `dict`.
/// - `BatchStart` (protocol 3): `[3u8][request id][count][indices][zstd frame length: u32 LE]`
///   `[its first bytes]`, a batch whose zstd frame is split into parts of at most
///   [`BATCH_PART`] bytes; `BatchMore`: `[4u8][request id][the next bytes]`, until the announced
///   length is reached. No other frame comes in between.
/// - `Pack` (protocol 4): `[5u8][request id][zstd frame]`, small new files of a folder answer,
///   many to a frame (see [`crate::pack`]).
/// - `Patch` (clients that list [`crate::patch::ENCODING`]): `[6u8][request id][patch]`, the
///   whole new file as a binary patch against the base version (see [`crate::patch`]): every
///   chunk the recipe sends is cut from the file it rebuilds. It is the answer's only frame.
///   With maps (clients that list [`crate::patch::WASM_ENCODING`] too): `[7u8][request id]`
///   `[maps length: u32 LE][maps][patch]`, a patch against the base version's WebAssembly module
///   as the maps remap it (see [`crate::wasm`]). With a tail too (clients that list
///   [`crate::patch::TAIL_ENCODING`] as well): `[8u8][request id][maps length][maps]`
///   `[patch length: u32 LE][patch][tail]`, the patch rebuilding the start of the file and the
///   tail, a zstd frame against the same remapped module, the rest (see [`crate::patch`]).
///
/// The client hashes every chunk and compares it with its manifest entry before using it.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkFrame<'a> {
    /// One chunk, uncompressed.
    Chunk {
        /// The request this chunk answers.
        id: u32,
        /// Position of the chunk in the new manifest.
        index: u32,
        /// The chunk's bytes.
        bytes: &'a [u8],
    },
    /// Several chunks in one zstd frame.
    Batch {
        /// The request these chunks answer.
        id: u32,
        /// Their positions in the new manifest, in the order they were concatenated.
        indices: Vec<u32>,
        /// The zstd frame.
        compressed: &'a [u8],
    },
    /// The first part of a batch sent in parts.
    BatchStart {
        /// The request these chunks answer.
        id: u32,
        /// Their positions in the new manifest, in the order they were concatenated.
        indices: Vec<u32>,
        /// The length of the whole zstd frame.
        len: u32,
        /// Its first bytes.
        compressed: &'a [u8],
    },
    /// The next part of the batch being received.
    BatchMore {
        /// The request these chunks answer.
        id: u32,
        /// The next bytes of the zstd frame.
        compressed: &'a [u8],
    },
    /// Small files of a folder answer, packed (see [`crate::pack`]).
    Pack {
        /// The request these files answer.
        id: u32,
        /// The zstd frame.
        compressed: &'a [u8],
    },
    /// The new file as a binary patch against the base version (see [`crate::patch`]).
    Patch {
        /// The request it answers.
        id: u32,
        /// The [`crate::wasm::Maps`] that remap the base version before the patch applies, if
        /// it was taken against the remapped module.
        maps: Option<&'a [u8]>,
        /// The patch.
        payload: &'a [u8],
        /// The zstd frame of the rest of the file, when the patch rebuilds only its start (a
        /// frame with a tail always has maps).
        tail: Option<&'a [u8]>,
    },
}

impl<'a> ChunkFrame<'a> {
    /// The frames of one batch: a single `Batch`, or, when `parts` (the peer speaks protocol 3)
    /// and its zstd frame is over [`BATCH_PART`] bytes, a `BatchStart` and `BatchMore` frames.
    pub fn batch(id: u32, indices: Vec<u32>, compressed: &[u8], parts: bool) -> Vec<Vec<u8>> {
        if !parts || compressed.len() <= BATCH_PART {
            return vec![ChunkFrame::Batch { id, indices, compressed }.encode()];
        }
        let mut pieces = compressed.chunks(BATCH_PART);
        let first = pieces.next().expect("over BATCH_PART bytes");
        let len = u32::try_from(compressed.len()).expect("a batch is far below 4 GiB");
        let start = ChunkFrame::BatchStart { id, indices, len, compressed: first }.encode();
        std::iter::once(start)
            .chain(pieces.map(|piece| ChunkFrame::BatchMore { id, compressed: piece }.encode()))
            .collect()
    }

    /// The request the frame answers.
    pub fn id(&self) -> u32 {
        match self {
            ChunkFrame::Chunk { id, .. }
            | ChunkFrame::Batch { id, .. }
            | ChunkFrame::BatchStart { id, .. }
            | ChunkFrame::BatchMore { id, .. }
            | ChunkFrame::Pack { id, .. }
            | ChunkFrame::Patch { id, .. } => *id,
        }
    }

    /// Serialises the frame.
    pub fn encode(&self) -> Vec<u8> {
        let header = |kind: u8, id: &u32, extra: usize| {
            let mut out = Vec::with_capacity(5 + extra);
            out.push(kind);
            out.extend_from_slice(&id.to_le_bytes());
            out
        };
        let with_indices = |kind: u8, id: &u32, indices: &[u32], extra: usize| {
            let mut out = header(kind, id, 4 + 4 * indices.len() + extra);
            out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
            for index in indices {
                out.extend_from_slice(&index.to_le_bytes());
            }
            out
        };
        let mut out = match self {
            ChunkFrame::Chunk { id, index, bytes } => {
                let mut out = header(KIND_CHUNK, id, 4 + bytes.len());
                out.extend_from_slice(&index.to_le_bytes());
                out
            }
            ChunkFrame::Batch { id, indices, compressed } => {
                with_indices(KIND_BATCH, id, indices, compressed.len())
            }
            ChunkFrame::BatchStart { id, indices, len, compressed } => {
                let mut out = with_indices(KIND_BATCH_START, id, indices, 4 + compressed.len());
                out.extend_from_slice(&len.to_le_bytes());
                out
            }
            ChunkFrame::BatchMore { id, compressed } => header(KIND_BATCH_MORE, id, compressed.len()),
            ChunkFrame::Pack { id, compressed } => header(KIND_PACK, id, compressed.len()),
            ChunkFrame::Patch { id, maps: None, payload, .. } => header(KIND_PATCH, id, payload.len()),
            ChunkFrame::Patch { id, maps: Some(maps), payload, tail } => {
                let kind = if tail.is_some() { KIND_TAILED_PATCH } else { KIND_WASM_PATCH };
                let tail_len = tail.map_or(0, |t| 4 + t.len());
                let mut out = header(kind, id, 4 + maps.len() + payload.len() + tail_len);
                out.extend_from_slice(&(maps.len() as u32).to_le_bytes());
                out.extend_from_slice(maps);
                if tail.is_some() {
                    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                }
                out
            }
        };
        out.extend_from_slice(match self {
            ChunkFrame::Chunk { bytes, .. } => bytes,
            ChunkFrame::Batch { compressed, .. }
            | ChunkFrame::BatchStart { compressed, .. }
            | ChunkFrame::BatchMore { compressed, .. }
            | ChunkFrame::Pack { compressed, .. } => compressed,
            ChunkFrame::Patch { payload, .. } => payload,
        });
        if let ChunkFrame::Patch { maps: Some(_), tail: Some(tail), .. } = self {
            out.extend_from_slice(tail);
        }
        out
    }

    /// Parses a frame, borrowing its payload.
    pub fn decode(frame: &'a [u8]) -> Result<Self, Error> {
        let word = |at: usize| -> Result<u32, Error> {
            let bytes = frame.get(at..at + 4).ok_or(Error::BadFrame("truncated frame header"))?;
            Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
        };
        let indices = || -> Result<(Vec<u32>, usize), Error> {
            let count = word(5)? as usize;
            let end = count
                .checked_mul(4)
                .and_then(|n| n.checked_add(9))
                .filter(|&end| end <= frame.len())
                .ok_or(Error::BadFrame("batch frame shorter than its index list"))?;
            Ok(((0..count).map(|i| word(9 + 4 * i)).collect::<Result<_, _>>()?, end))
        };
        match frame.first() {
            Some(&KIND_CHUNK) => Ok(ChunkFrame::Chunk { id: word(1)?, index: word(5)?, bytes: &frame[9..] }),
            Some(&KIND_BATCH) => {
                let (indices, end) = indices()?;
                Ok(ChunkFrame::Batch { id: word(1)?, indices, compressed: &frame[end..] })
            }
            Some(&KIND_BATCH_START) => {
                let (indices, end) = indices()?;
                let len = word(end)?;
                Ok(ChunkFrame::BatchStart { id: word(1)?, indices, len, compressed: &frame[end + 4..] })
            }
            Some(&KIND_BATCH_MORE) => Ok(ChunkFrame::BatchMore { id: word(1)?, compressed: &frame[5..] }),
            Some(&KIND_PACK) => Ok(ChunkFrame::Pack { id: word(1)?, compressed: &frame[5..] }),
            Some(&KIND_PATCH) => {
                Ok(ChunkFrame::Patch { id: word(1)?, maps: None, payload: &frame[5..], tail: None })
            }
            Some(&kind @ (KIND_WASM_PATCH | KIND_TAILED_PATCH)) => {
                // A length at `at`, and where the part it measures ends.
                let part = |at: usize| -> Result<(usize, usize), Error> {
                    let start = at + 4;
                    let end = (word(at)? as usize).checked_add(start).filter(|&end| end <= frame.len());
                    Ok((start, end.ok_or(Error::BadFrame("patch frame shorter than its parts"))?))
                };
                let (id, (start, end)) = (word(1)?, part(5)?);
                let maps = Some(&frame[start..end]);
                if kind == KIND_WASM_PATCH {
                    return Ok(ChunkFrame::Patch { id, maps, payload: &frame[end..], tail: None });
                }
                let (at, patch_end) = part(end)?;
                let (payload, tail) = (&frame[at..patch_end], Some(&frame[patch_end..]));
                Ok(ChunkFrame::Patch { id, maps, payload, tail })
            }
            _ => Err(Error::BadFrame("unknown frame kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_frames_round_trip_and_reject_garbage() {
        let f = ChunkFrame::Chunk { id: 3, index: 70000, bytes: b"payload" };
        let bytes = f.encode();
        assert_eq!(ChunkFrame::decode(&bytes).unwrap(), f);
        assert!(ChunkFrame::decode(&bytes[..8]).is_err());
        assert!(ChunkFrame::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let b = ChunkFrame::Batch { id: 4, indices: vec![1, 5, 9], compressed: b"zstd" };
        let bytes = b.encode();
        assert_eq!(ChunkFrame::decode(&bytes).unwrap(), b);
        assert!(ChunkFrame::decode(&bytes[..16]).is_err());
        let mut huge = bytes.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ChunkFrame::decode(&huge).is_err());
        assert!(ChunkFrame::decode(&[]).is_err());
        let tails = [None, Some(&b"tail"[..]), Some(&b""[..])];
        for (maps, tail) in
            [None, Some(&b"maps"[..]), Some(&b""[..])].into_iter().flat_map(|m| tails.map(|t| (m, t)))
        {
            let p =
                ChunkFrame::Patch { id: 5, maps, payload: b"patch", tail: tail.filter(|_| maps.is_some()) };
            let bytes = p.encode();
            assert_eq!(ChunkFrame::decode(&bytes).unwrap(), p);
        }
        let mut long_maps =
            ChunkFrame::Patch { id: 5, maps: Some(b"maps"), payload: b"", tail: None }.encode();
        long_maps[5..9].copy_from_slice(&5u32.to_le_bytes());
        assert!(ChunkFrame::decode(&long_maps).is_err(), "maps longer than the frame");
        let tailed = ChunkFrame::Patch { id: 5, maps: Some(b"maps"), payload: b"patch", tail: Some(b"tail") };
        let mut long_patch = tailed.encode();
        long_patch[13..17].copy_from_slice(&10u32.to_le_bytes());
        assert!(ChunkFrame::decode(&long_patch).is_err(), "a patch longer than the frame");
    }

    #[test]
    fn a_large_batch_for_protocol_3_goes_in_parts_that_join_up() {
        let compressed: Vec<u8> = (0..2 * BATCH_PART + 10).map(|i| i as u8).collect();
        assert_eq!(ChunkFrame::batch(7, vec![1, 2], &compressed, false).len(), 1);
        assert_eq!(ChunkFrame::batch(7, vec![1, 2], &compressed[..BATCH_PART], true).len(), 1);
        let frames = ChunkFrame::batch(7, vec![1, 2], &compressed, true);
        assert_eq!(frames.len(), 3);
        let mut joined = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let part = ChunkFrame::decode(frame).unwrap();
            assert_eq!(part.id(), 7);
            match part {
                ChunkFrame::BatchStart { indices, len, compressed: piece, .. } if i == 0 => {
                    assert_eq!((indices, len as usize), (vec![1, 2], compressed.len()));
                    joined.extend_from_slice(piece);
                }
                ChunkFrame::BatchMore { compressed: piece, .. } if i > 0 => joined.extend_from_slice(piece),
                other => panic!("frame {i}: {other:?}"),
            }
            assert!(frame.len() <= BATCH_PART + 64);
        }
        assert_eq!(joined, compressed);
        assert!(ChunkFrame::decode(&frames[0][..frames[0].len() - BATCH_PART - 1]).is_err());
    }
}
