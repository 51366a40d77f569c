//! The native client's errors: what went wrong, and whether reconnecting can get past it.

use assetsync_protocol::engine::ClientError;

/// Why a pull failed. Each message is one line that names the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server URL cannot be used; nothing was tried.
    #[error("{0}")]
    BadUrl(String),
    /// The server could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The connection broke outside a sync (during the handshake, or while waiting for changes).
    #[error("{0}")]
    Lost(String),
    /// The server refused the connection (a missing or wrong token, another protocol version).
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// A sync or subscription of `target` failed, as the engine says.
    #[error("{target}: {error}")]
    Sync {
        /// The asset or folder.
        target: String,
        /// What failed (part of the message, so not also a `source`).
        error: ClientError,
    },
    /// The cache or `--out` could not be read or written; the previous version is kept.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A local file to push could not be read; nothing was pushed.
    #[error("{0}")]
    Local(String),
    /// Several targets failed; the others were pulled.
    #[error("{} targets failed: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<Error>),
}

impl Error {
    /// Whether a new connection may get past this: a lost or unreachable server, not a refusal,
    /// a bad URL or a cache that cannot be written.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Unreachable(_) | Error::Lost(_) => true,
            Error::Sync { error, .. } => {
                matches!(error, ClientError::Lost(_) | ClientError::GaveUpReconnecting { .. })
            }
            Error::BadUrl(_) | Error::Refused(_) | Error::Cache(_) | Error::Local(_) | Error::Several(_) => {
                false
            }
        }
    }

    /// The error of a sync of `target` that the engine reports.
    pub(crate) fn sync(target: impl ToString, error: ClientError) -> Self {
        Error::Sync { target: target.to_string(), error }
    }
}

/// A cache or output file operation that failed: what was being done, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct CacheError {
    /// What was being done, naming the file.
    pub what: String,
    /// Why it failed (part of the message, so not also a `source`).
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

/// Names what a fallible cache operation was doing.
pub(crate) trait Doing<T> {
    /// On error, a [`CacheError`] saying `what` was being done.
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, CacheError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Doing<T> for Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, CacheError> {
        self.map_err(|e| CacheError { what: what(), cause: e.into() })
    }
}
