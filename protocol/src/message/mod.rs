//! The wire contract: JSON control messages (text frames) and binary chunk frames.
//!
//! A connection starts with `hello` from the client; the client may send its first `sync` right
//! behind it without waiting for `welcome`. Each `sync` is answered by exactly one of
//! `up_to_date`, `update` (followed by `update.send` binary chunk frames) or `error`. Requests on
//! one connection are answered in order. The other way, an `upload` is followed by the binary
//! chunk frames it announces (the only binary frames a client sends) and answered by `uploaded`,
//! `conflict` or `error`.

use serde::{Deserialize, Serialize};

mod frame;

use crate::{AssetPath, ChunkParams, Have, RecipeOp, VersionId};

pub use frame::{BATCH_PART, ChunkFrame};

/// Bumped on any incompatible change to the messages or frames.
pub const PROTOCOL_VERSION: u32 = 5;

/// Offered in `hello` by a client that takes a folder listing in pages (see
/// [`ServerMessage::Folder`]'s `more`); a server that sends them repeats it in `welcome`.
pub const PAGES_ENCODING: &str = "pages";

/// The most entries (files and removals) in one page of a folder listing: about 150 KB of
/// JSON, where a whole listing of 100,000 files is 10-20 MB, one message that both ends hold
/// at once (and more than the native client's 16 MiB message limit, for long paths).
pub const LISTING_PAGE: usize = 1024;

/// The oldest version a server still speaks. Protocol 1 had no `unknown_base` and listed
/// `have.chunks` as full hex ids; protocol 2 had no batches in parts (`BatchStart`); protocol 3
/// had no packs (`Pack`); protocol 4 asked for a folder's shape in a `get_shape` of its own,
/// after `sync_folder`, and took packed files of one chunk only. Servers answer such clients as
/// they expect.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// Messages from client to server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on every connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Free-form client name and version, for the server's logs.
        #[serde(default)]
        agent: String,
        /// Chunk encodings the client can decode besides plain chunks (`"zstd"`), and
        /// [`crate::offload::ENCODING`] when it can fetch answers over HTTP.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        encodings: Vec<String>,
        /// The shared secret of a server started with `--token-file`. It travels in this first
        /// message, never in the URL (URLs end up in logs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The ids of the servers this client relays for: an edge's own id, when it follows its
        /// upstream. A server that finds itself, or one of its own upstreams, here refuses the
        /// connection with `loop`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        via: Vec<String>,
    },
    /// Asks for the current version of one asset.
    Sync {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// Asset path relative to the server root. Kept as a plain string here so that a bad
        /// path is answered with an error that carries the request id.
        asset: String,
        /// What the client already holds.
        #[serde(default)]
        have: Have,
        /// Send the chunks over this connection even when the answer would be offloaded (see
        /// [`crate::offload`]): fetching it over HTTP failed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        direct: bool,
        /// Send the chunks, never a binary patch (see [`crate::patch`]): the patch this answer
        /// would bring could not be applied.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_patch: bool,
    },
    /// Asks for the current state of a whole folder: answered by `folder` (the listing), then
    /// one `update` (with its chunk frames) per listed file whose version is not in
    /// `have.versions`, in listing order; or by `unknown_base` or `error`.
    SyncFolder {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// The folder, ending in `/`, or `""` for the whole root (a [`crate::Scope`]).
        folder: String,
        /// The [`crate::folder_version`] of the listing the client holds (protocol 3). A server
        /// that remembers it reads the versions held from it, so `have` may leave them out; one
        /// that does not answers `unknown_base`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<VersionId>,
        /// The versions of the folder's files the client holds (and their chunks).
        #[serde(default)]
        have: Have,
        /// Also asks for the folder's [`crate::shape::Shape`] (protocol 5), unless its
        /// [`crate::shape::Shape::digest`] is this one (the shape the client last received, or
        /// the empty shape's): sent in a `shape` message with the request's id, just before
        /// the listing, so that it costs no round trip of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shape: Option<VersionId>,
    },
    /// Asks to be sent `changed` whenever an asset in `path` changes on the server: an asset,
    /// a folder ending in `/`, or `""` for every asset. Answered by `subscribed` (or `error`).
    Subscribe {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// The [`crate::Scope`], as a string so that a bad one is answered with its request id.
        path: String,
    },
    /// Asks for the current manifest of one asset, to upload a new version over it (see
    /// [`crate::upload`]), and with `resume`, for the chunks of that version the server kept
    /// from an upload cut short. Answered by `manifest` (or `error`).
    GetManifest {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// The asset, as in `sync`.
        asset: String,
        /// The version of an upload being resumed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<VersionId>,
    },
    /// A new version of an asset, followed by `frames` binary chunk frames (see
    /// [`crate::upload`]). Answered by `uploaded`, `conflict` or `error`; nothing is written
    /// unless the file rebuilds to `version` and the server's file is still `base`.
    Upload(UploadRequest),
    /// Asks for a folder's listing alone, to push a folder over it: answered by `folder`
    /// with every file and no `update`s (or `error`).
    ListFolder {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// The folder, as in `sync_folder`.
        folder: String,
    },
    /// Deletes an asset's file if it is still version `base` (a push with `--delete` of a file
    /// gone locally). Answered by `deleted`, `conflict` (with the version there now, or none:
    /// it is gone already) or `error`.
    Delete {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// The asset, as in `sync`.
        asset: String,
        /// The version the client saw, which is deleted only if it is still current.
        base: VersionId,
    },
    /// Asks for a folder's [`crate::shape::Shape`]: its folders, its symlinks that stay inside
    /// it and its executable files. Answered by `shape` (or `error`). Protocol 4's clients ask
    /// this after `sync_folder`; later ones ask in `sync_folder` itself.
    GetShape {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// The folder, as in `sync_folder`.
        folder: String,
        /// The [`crate::shape::Shape::digest`] of the client's copy: if the server's is the
        /// same, its answer carries no shape.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        have: Option<VersionId>,
    },
}

/// The body of an `upload`: the new version as a delta against `base`, the server's version it
/// was made from, exactly as an `update` is sent the other way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// Chosen by the client; echoed in the answer.
    pub id: u32,
    /// The asset to write, as in `sync`.
    pub asset: String,
    /// The server's version the upload was made from; `None` when the asset must not exist yet.
    /// If the server's file is another version by the time the upload is written, it is
    /// refused with `conflict` and nothing is written (no lost updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<VersionId>,
    /// Version id of the new manifest: the file the server rebuilds must hash to it.
    pub version: VersionId,
    /// How the new version was cut (the base's parameters, so that its chunks match).
    pub params: ChunkParams,
    /// The chunk list as a delta against `base`, whose `Sent` entries are the chunks whose bytes
    /// follow.
    pub recipe: Vec<RecipeOp>,
    /// Whether batch frames were compressed with the base version's file as prefix.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dict: bool,
    /// How many binary frames follow this message.
    pub frames: u32,
}

/// Messages from server to client.
///
/// Read through [`WireServerMessage`], one flat struct, rather than serde's internally tagged
/// enums, which buffer the whole message first (a large part of the browser client's code).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "WireServerMessage")]
pub enum ServerMessage {
    /// Answer to `hello`.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Server name and version.
        server: String,
        /// What the server will accept, so a client can stay inside it.
        limits: Limits,
        /// The client's encodings that the server will use.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        encodings: Vec<String>,
        /// The ids of the servers from this one to the origin: this one's first, then its
        /// upstream's, and so on (an edge's; an origin names itself alone).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        path: Vec<String>,
        /// Set by an edge whose upstream is unreachable: why, and since when. It serves the
        /// last versions it verified meanwhile.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stale: Option<String>,
    },
    /// The client's first `have.versions` entry is already current.
    UpToDate {
        /// The request id.
        id: u32,
        /// The current version.
        version: VersionId,
    },
    /// A new version, followed by binary chunk frames with the chunks its recipe marks as sent.
    Update(Update),
    /// The server does not know the first version in `have.versions`, the client's own (it
    /// restarted, or forgot it): the client should ask again, listing the chunks of that version
    /// in `have.chunks`.
    UnknownBase {
        /// The request id.
        id: u32,
    },
    /// The files of a folder, sorted by path; the answer's `update`s follow. (An unchanged
    /// folder is answered with `up_to_date` and its listing's version instead.) Answering
    /// `list_folder`, the listing alone.
    Folder {
        /// The request id.
        id: u32,
        /// Every file, with its current version; with `delta`, only those added or changed
        /// since the listing the request named.
        files: Vec<FolderEntry>,
        /// With `delta`: the paths gone since that listing.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<AssetPath>,
        /// Whether `files` and `removed` are a delta against the request's `since`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
        /// The [`crate::folder_version`] of the whole listing (protocol 3), for the client to
        /// check what it rebuilt from a delta.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<VersionId>,
        /// How many `Pack` frames (protocol 4, see [`crate::pack`]) follow this listing, before
        /// the answer's `update`s: small new files, many to a compressed frame.
        #[serde(default, skip_serializing_if = "is_zero")]
        packs: u32,
        /// More of this listing follows, in further `folder` messages with the same id (to a
        /// client that offered [`PAGES_ENCODING`], a listing of more than [`LISTING_PAGE`]
        /// entries; see [`crate::listing_pages`]). Their `files` and `removed`, in order, make
        /// the listing; `delta` is the same in each; `version` and `packs` are in the last.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// The subscription `id` is in place: changes from now on are announced.
    Subscribed {
        /// The request id.
        id: u32,
        /// Nothing on the server is inside the subscription now (a mistyped name, or a file
        /// not created yet): it stands all the same, and what is created there is announced.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        missing: bool,
    },
    /// Pushed to subscribers, between answers, when an asset changed on the server and has
    /// been indexed: the client syncs it as usual.
    Changed {
        /// The asset.
        asset: AssetPath,
        /// Its new version, or `None` when the file was removed.
        version: Option<VersionId>,
    },
    /// Answer to `get_manifest`: the asset's current manifest (neither field when there is no
    /// such file), and the chunks kept from the upload being resumed.
    Manifest {
        /// The request id.
        id: u32,
        /// Its version id, which the manifest must hash to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<VersionId>,
        /// [`crate::Manifest::canonical_bytes`], in base64.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<String>,
        /// Chunks of the upload named in `resume` that the server received, verified and kept:
        /// their full ids back to back, in base64 (see [`crate::upload::read_ids`]). A resumed
        /// upload names them instead of sending them again.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        received: String,
    },
    /// The upload `id` is written: the asset's new current version.
    Uploaded {
        /// The request id.
        id: u32,
        /// The version now current, as the server indexed the written file.
        version: VersionId,
    },
    /// Answer to `get_shape`; or, just before the listing, the shape a `sync_folder` asked for.
    Shape {
        /// The request id.
        id: u32,
        /// The folder's shape; absent when it is the one the client named.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shape: Option<crate::shape::Shape>,
    },
    /// The file `delete` named is deleted.
    Deleted {
        /// The request id.
        id: u32,
    },
    /// The upload or deletion `id` was refused, and nothing written: the asset is no longer the
    /// version it was made from.
    Conflict {
        /// The request id.
        id: u32,
        /// The asset's current version (`None`: there is no such file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<VersionId>,
    },
    /// A request failed (`id` set) or the connection is being closed (`id` absent).
    Error {
        /// The failed request, if the error belongs to one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        /// Machine-readable cause.
        code: ErrorCode,
        /// Human-readable cause.
        message: String,
    },
}

/// Every field any [`ServerMessage`] has, as it arrives; which ones must be present depends on
/// `type`. Fields of other types are ignored, as unknown fields are.
#[derive(Deserialize)]
struct WireServerMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<u32>,
    protocol: Option<u32>,
    server: Option<String>,
    limits: Option<Limits>,
    #[serde(default)]
    encodings: Vec<String>,
    version: Option<VersionId>,
    asset: Option<AssetPath>,
    base: Option<u32>,
    params: Option<ChunkParams>,
    recipe: Option<Vec<RecipeOp>>,
    #[serde(default)]
    dict: bool,
    offload: Option<Offloaded>,
    files: Option<Vec<FolderEntry>>,
    #[serde(default)]
    removed: Vec<AssetPath>,
    #[serde(default)]
    delta: bool,
    #[serde(default)]
    packs: u32,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    missing: bool,
    code: Option<ErrorCode>,
    message: Option<String>,
    manifest: Option<String>,
    #[serde(default)]
    received: String,
    #[serde(default)]
    path: Vec<String>,
    stale: Option<String>,
    shape: Option<crate::shape::Shape>,
}

impl TryFrom<WireServerMessage> for ServerMessage {
    type Error = String;

    fn try_from(w: WireServerMessage) -> Result<Self, String> {
        fn need<T>(value: Option<T>, field: &str) -> Result<T, String> {
            value.ok_or_else(|| format!("missing field `{field}`"))
        }
        Ok(match w.kind.as_str() {
            "welcome" => ServerMessage::Welcome {
                protocol: need(w.protocol, "protocol")?,
                server: need(w.server, "server")?,
                limits: need(w.limits, "limits")?,
                encodings: w.encodings,
                path: w.path,
                stale: w.stale,
            },
            "up_to_date" => {
                ServerMessage::UpToDate { id: need(w.id, "id")?, version: need(w.version, "version")? }
            }
            "update" => ServerMessage::Update(Update {
                id: need(w.id, "id")?,
                asset: w.asset,
                version: need(w.version, "version")?,
                base: w.base,
                params: w.params,
                recipe: need(w.recipe, "recipe")?,
                dict: w.dict,
                offload: w.offload,
            }),
            "unknown_base" => ServerMessage::UnknownBase { id: need(w.id, "id")? },
            "folder" => ServerMessage::Folder {
                id: need(w.id, "id")?,
                files: need(w.files, "files")?,
                removed: w.removed,
                delta: w.delta,
                version: w.version,
                packs: w.packs,
                more: w.more,
            },
            "manifest" => ServerMessage::Manifest {
                id: need(w.id, "id")?,
                version: w.version,
                manifest: w.manifest,
                received: w.received,
            },
            "uploaded" => {
                ServerMessage::Uploaded { id: need(w.id, "id")?, version: need(w.version, "version")? }
            }
            "conflict" => ServerMessage::Conflict { id: need(w.id, "id")?, version: w.version },
            "deleted" => ServerMessage::Deleted { id: need(w.id, "id")? },
            "shape" => ServerMessage::Shape { id: need(w.id, "id")?, shape: w.shape },
            "subscribed" => ServerMessage::Subscribed { id: need(w.id, "id")?, missing: w.missing },
            "changed" => ServerMessage::Changed { asset: need(w.asset, "asset")?, version: w.version },
            "error" => ServerMessage::Error {
                id: w.id,
                code: need(w.code, "code")?,
                message: need(w.message, "message")?,
            },
            other => return Err(format!("unknown message type `{other}`")),
        })
    }
}

impl ServerMessage {
    /// The message's `type`, as on the wire: for errors about an unexpected message.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::UpToDate { .. } => "up_to_date",
            ServerMessage::Update(_) => "update",
            ServerMessage::UnknownBase { .. } => "unknown_base",
            ServerMessage::Folder { .. } => "folder",
            ServerMessage::Subscribed { .. } => "subscribed",
            ServerMessage::Changed { .. } => "changed",
            ServerMessage::Manifest { .. } => "manifest",
            ServerMessage::Uploaded { .. } => "uploaded",
            ServerMessage::Conflict { .. } => "conflict",
            ServerMessage::Deleted { .. } => "deleted",
            ServerMessage::Shape { .. } => "shape",
            ServerMessage::Error { .. } => "error",
        }
    }
}

/// The body of an `update` answer.
///
/// It carries no chunk ids for the chunks that follow, nor the file's length and SHA-256: the
/// client derives them from the bytes it receives and rebuilds, and accepts the result only if
/// the manifest it rebuilt hashes to `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The request id.
    pub id: u32,
    /// The file, in answers to `sync_folder` (which hold one `update` per changed file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<AssetPath>,
    /// Version id of the new manifest.
    pub version: VersionId,
    /// Position in the request's `have.versions` of the version `recipe` is a delta against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u32>,
    /// Chunking parameters, when they differ from the base's (always, without a base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ChunkParams>,
    /// The chunk list as a delta against `base`. Its `Sent` entries are the chunks whose bytes
    /// follow, in binary frames (one per chunk, or several per batch).
    pub recipe: Vec<RecipeOp>,
    /// Whether batch frames were compressed with the base version's file as prefix.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dict: bool,
    /// Where the chunk frames are, when they do not follow on the WebSocket (see
    /// [`crate::offload`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<Offloaded>,
}

/// An answer's chunk frames, offloaded to a plain HTTP object (see [`crate::offload`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offloaded {
    /// Where to fetch them: an absolute URL, or a path on the sync server's host (see
    /// [`crate::offload::resolve`]). It ends in the object's name, the SHA-256 of its bytes.
    pub url: String,
    /// The object's length.
    pub bytes: u64,
}

/// One file of a `folder` listing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FolderEntry {
    /// The file's asset path.
    pub asset: AssetPath,
    /// Its current version.
    pub version: VersionId,
}

/// Server limits announced in `welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest text message the server accepts, in bytes.
    pub max_message_bytes: u32,
    /// Most `have` entries (versions plus chunks) in one `sync`.
    pub max_have: u32,
    /// Requests per minute, in bursts of as many, before the server slows the connection
    /// down (0: no limit). Absent from older servers.
    #[serde(default)]
    pub requests_per_minute: u32,
    /// Bytes per minute, in bursts of as many, before the server slows its sending down
    /// (0: no limit). Absent from older servers.
    #[serde(default)]
    pub bytes_per_minute: u64,
}

/// Why a request or connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client speaks another protocol version.
    ProtocolVersion,
    /// The message was not valid JSON of a known shape, or came out of order.
    BadMessage,
    /// A message or digest is over the server's limits.
    TooLarge,
    /// The asset name is malformed or escapes the root.
    BadPath,
    /// No such asset under the root.
    UnknownAsset,
    /// The server failed to read or index the asset.
    Internal,
    /// The server does not offer what was asked (for example `subscribe` without watching).
    Unsupported,
    /// The server requires a token and `hello` had none, or a wrong one.
    Unauthorized,
    /// The server is shutting down; reconnect later.
    ShuttingDown,
    /// The connection sent nothing (and answered no ping) for the server's idle timeout.
    IdleTimeout,
    /// A subscribed connection fell too far behind the pushed changes; reconnect and sync again.
    Lagged,
    /// The server does not accept uploads (it was started without `--allow-write`), or the
    /// module named is read-only.
    ReadOnly,
    /// The signed-in user (or an anonymous client) may not read, or may not write, the module
    /// named.
    Forbidden,
    /// The module named has as many connections as it allows; try again later.
    Busy,
    /// Edges follow each other in a circle: this server is upstream of the client's own.
    Loop,
    /// This edge's path to the origin changed (it reached its upstream, or another server
    /// answers there now): a relaying client reconnects for the new `welcome`.
    Moved,
    /// A code this client does not know (from a newer server).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ProtocolVersion => "protocol_version",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::UnknownAsset => "unknown_asset",
            ErrorCode::Internal => "internal",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Lagged => "lagged",
            ErrorCode::Moved => "moved",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::Loop => "loop",
            ErrorCode::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;

fn is_zero(n: &u32) -> bool {
    *n == 0
}
