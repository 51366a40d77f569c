//! The handshake both clients make on every new connection.

use crate::{ClientMessage, PROTOCOL_VERSION, ServerMessage, compress};

/// The `hello` of a client that calls itself `agent` (`name/version`), with the server's shared
/// secret if it needs one.
pub fn hello(agent: &str, token: Option<String>) -> ClientMessage {
    ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        agent: agent.to_owned(),
        encodings: [compress::ZSTD, crate::offload::ENCODING, crate::patch::ENCODING]
            .map(str::to_owned)
            .into(),
        token,
    }
}

/// What the server's answer to `hello` means.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Welcome {
    /// The server refused the connection (a missing or wrong token, another protocol version):
    /// its message says why. Reconnecting does not help.
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// The server answered something else: the connection is not usable.
    #[error("unexpected `{0}` answer to hello")]
    Unexpected(&'static str),
}

/// Checks the server's answer to `hello`.
pub fn welcome(answer: ServerMessage) -> Result<(), Welcome> {
    match answer {
        ServerMessage::Welcome { protocol: PROTOCOL_VERSION, .. } => Ok(()),
        ServerMessage::Error { message, .. } => Err(Welcome::Refused(message)),
        other => Err(Welcome::Unexpected(other.kind())),
    }
}
