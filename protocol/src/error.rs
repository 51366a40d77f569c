//! Errors of the pure core.

use crate::{ChunkId, ChunkParams, ErrorCode};

/// Everything that can go wrong in the pure core. Messages are lowercase and say what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hash was not 64 hex digits.
    #[error("not a SHA-256 hex digest: {0:?}")]
    BadHash(String),
    /// An asset name was refused.
    #[error("invalid asset path {path:?}: {why}")]
    BadPath {
        /// The offending name (truncated, escaped).
        path: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// Chunking parameters out of range.
    #[error(
        "invalid chunk parameters {0:?} (need 64 <= min <= avg <= max <= 1 MiB, avg >= 256, max >= 1024)"
    )]
    BadParams(ChunkParams),
    /// A manifest or delta is inconsistent.
    #[error("invalid manifest: {0}")]
    BadManifest(&'static str),
    /// A binary frame could not be parsed or was not expected.
    #[error("invalid chunk frame: {0}")]
    BadFrame(&'static str),
    /// A compressed chunk batch could not be decoded.
    #[error("invalid compressed chunk batch: {0}")]
    Decompress(String),
    /// Chunk bytes do not hash to their id.
    #[error("chunk {expected} failed verification (got {actual})")]
    ChunkMismatch {
        /// The id the manifest promised.
        expected: ChunkId,
        /// The hash of the bytes received.
        actual: ChunkId,
    },
    /// The rebuilt file and manifest do not hash to the announced version.
    #[error("rebuilt file failed verification: it does not match the announced version")]
    FileMismatch,
    /// The local store lacks chunks the server assumed the client has, or holds damaged ones.
    #[error("{} chunk(s) missing or damaged in the local cache", .0.len())]
    MissingLocal(Vec<ChunkId>),
    /// The server knows none of the versions the client named; ask again with a chunk set.
    #[error("the server no longer knows the cached version")]
    UnknownBase,
    /// The server answered with an error.
    #[error("server refused: {message} ({code})")]
    Server {
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server is closing the connection (shutdown, idle timeout, a protocol violation).
    #[error("connection lost: the server closed it ({0})")]
    ConnectionClosed(String),
    /// An answer offloaded to HTTP could not be fetched whole (see [`crate::offload`]); it is
    /// asked for again over the WebSocket.
    #[error("fetching the answer over HTTP failed: {0}")]
    Offload(String),
    /// A binary patch (see [`crate::patch`]) could not be applied, or rebuilt a file that failed
    /// verification: the answer is asked for again without a patch.
    #[error("the binary patch could not be applied: {0}")]
    BadPatch(String),
    /// The server broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl Error {
    /// The retry policy both clients share. After an attempt failed with this error, returns the
    /// chunk ids to name in the retry's `have.chunks`:
    /// - [`Error::UnknownBase`], [`Error::Offload`] and [`Error::BadPatch`]: all `held`;
    /// - [`Error::MissingLocal`]: `held` minus every id whose first `prefix` bytes (the attempt's
    ///   [`crate::ChunkSet::prefix`]) equal those of a missing or damaged one, so that neither a
    ///   damaged chunk nor a truncated-id collision can repeat;
    /// - bad received data or a bad rebuilt file: none at all, a clean start.
    ///
    /// `None` means a retry cannot help.
    pub fn retry_holding(&self, mut held: Vec<ChunkId>, prefix: usize) -> Option<Vec<ChunkId>> {
        match self {
            Error::UnknownBase | Error::Offload(_) | Error::BadPatch(_) => Some(held),
            Error::MissingLocal(bad) => {
                let cut: std::collections::HashSet<&[u8]> = bad.iter().map(|id| &id.0[..prefix]).collect();
                held.retain(|id| !cut.contains(&id.0[..prefix]));
                Some(held)
            }
            Error::ChunkMismatch { .. } | Error::FileMismatch => Some(Vec::new()),
            _ => None,
        }
    }
}
