//! Binary chunk frames: chunk bytes, never JSON.

use crate::Error;

const KIND_CHUNK: u8 = 1;
const KIND_BATCH: u8 = 2;

/// A binary frame from the server: chunk bytes, never JSON.
///
/// - `Chunk`: `[1u8][request id: u32 LE][manifest index: u32 LE][chunk bytes]`.
/// - `Batch`: `[2u8][request id: u32 LE][count: u32 LE][count manifest indices: u32 LE][zstd frame]`;
///   the zstd frame decodes to the listed chunks' bytes back to back, compressed with the base
///   version's file as prefix when the `update` says `dict`.
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
}

impl<'a> ChunkFrame<'a> {
    /// Serialises the frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ChunkFrame::Chunk { id, index, bytes } => {
                let mut out = Vec::with_capacity(9 + bytes.len());
                out.push(KIND_CHUNK);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(bytes);
                out
            }
            ChunkFrame::Batch { id, indices, compressed } => {
                let mut out = Vec::with_capacity(9 + 4 * indices.len() + compressed.len());
                out.push(KIND_BATCH);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
                for index in indices {
                    out.extend_from_slice(&index.to_le_bytes());
                }
                out.extend_from_slice(compressed);
                out
            }
        }
    }

    /// Parses a frame, borrowing its payload.
    pub fn decode(frame: &'a [u8]) -> Result<Self, Error> {
        let word = |at: usize| -> Result<u32, Error> {
            let bytes = frame.get(at..at + 4).ok_or(Error::BadFrame("truncated frame header"))?;
            Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
        };
        match frame.first() {
            Some(&KIND_CHUNK) => Ok(ChunkFrame::Chunk { id: word(1)?, index: word(5)?, bytes: &frame[9..] }),
            Some(&KIND_BATCH) => {
                let (id, count) = (word(1)?, word(5)? as usize);
                let end = count
                    .checked_mul(4)
                    .and_then(|n| n.checked_add(9))
                    .filter(|&end| end <= frame.len())
                    .ok_or(Error::BadFrame("batch frame shorter than its index list"))?;
                let indices = (0..count).map(|i| word(9 + 4 * i)).collect::<Result<_, _>>()?;
                Ok(ChunkFrame::Batch { id, indices, compressed: &frame[end..] })
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
    }
}
