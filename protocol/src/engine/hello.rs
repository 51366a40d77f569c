//! The handshake both clients make on every new connection.

use crate::{ClientMessage, PROTOCOL_VERSION, ServerMessage, compress};

/// The `hello` of a client that calls itself `agent` (`name/version`), with the server's shared
/// secret if it needs one, and the ids of the servers it relays for (an edge's own, see
/// [`welcome`]).
pub fn hello(agent: &str, token: Option<String>, via: Vec<String>) -> ClientMessage {
    ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        agent: agent.to_owned(),
        encodings: [
            compress::ZSTD,
            crate::offload::ENCODING,
            crate::patch::ENCODING,
            crate::patch::CUT_ENCODING,
            crate::patch::WASM_ENCODING,
            crate::patch::TAIL_ENCODING,
            crate::PAGES_ENCODING,
        ]
        .map(str::to_owned)
        .into(),
        token,
        via,
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
    /// The server is downstream of the client's own (edges following each other in a circle):
    /// nothing new would ever arrive. Reconnecting does not help.
    #[error(
        "relay loop: this upstream already follows this server (path {0}): point --upstream at the origin or at an edge closer to it"
    )]
    Loop(String),
}

/// What a server said about itself in `welcome`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Welcomed {
    /// The ids of the servers from it to the origin.
    pub path: Vec<String>,
    /// Why it serves versions that may be old (an edge cut off from its upstream).
    pub stale: Option<String>,
}

/// Checks the server's answer to the `hello` of a client relaying for the servers `via`.
pub fn welcome(answer: ServerMessage, via: &[String]) -> Result<Welcomed, Welcome> {
    match answer {
        ServerMessage::Welcome { protocol: PROTOCOL_VERSION, path, stale, .. } => {
            if path.iter().any(|id| via.contains(id)) {
                return Err(Welcome::Loop(path.join(" -> ")));
            }
            Ok(Welcomed { path, stale })
        }
        ServerMessage::Error { message, .. } => Err(Welcome::Refused(message)),
        other => Err(Welcome::Unexpected(other.kind())),
    }
}
