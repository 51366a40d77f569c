//! Answers fetched over plain HTTP: a large answer's chunk frames as one immutable object, which
//! any CDN or caching proxy can serve, while the WebSocket carries only the `update` (its plan).
//!
//! A client that can fetch them lists [`ENCODING`] in `hello`; a server that offloads repeats it in
//! `welcome`. The server then puts the frames of an answer over its threshold in an object
//! ([`body`]) named by the SHA-256 of its bytes, and says where in the `update`'s `offload`
//! ([`crate::message::Offloaded`]). The same answer for the same client state is the same
//! object, so every client in that state fetches the same URL.
//!
//! The body is each frame, with request id 0, after its length as a `u32` LE; the client puts its
//! own request id in each frame ([`Frames`]) and handles them as if they had come over the
//! WebSocket: each chunk is checked against its hash, the file against its version.

use crate::Hash;

/// The capability named in `hello` and `welcome`.
pub const ENCODING: &str = "offload";

/// The body of an offloaded answer: `frames` (whose request id is 0), each after its length.
pub fn body(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

/// The name of a body: the hex SHA-256 of its bytes (also its `ETag`).
pub fn name(body: &[u8]) -> String {
    Hash::of(body).to_hex()
}

/// Whether `name` can name a body (64 lowercase hex digits), before any file is looked up.
pub fn is_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether an offloaded answer's fetch that got HTTP `status` (neither `200` nor `206`) is
/// worth trying again: a server error, a timeout or a rate limit. Any other status (a 404, a
/// 403) will not change, and the answer is asked for over the WebSocket at once.
pub fn transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Where to fetch `url` (from an `update`'s `offload`) for a client connected to `sync_url`: an
/// absolute `http(s)` URL as it is; a path (`/offload/…`) on the sync server's own host, over
/// `https` for `wss` and `http` for `ws`.
pub fn resolve(sync_url: &str, url: &str) -> String {
    if !url.starts_with('/') {
        return url.to_owned();
    }
    let (scheme, rest) = match sync_url.split_once("://") {
        Some(("wss" | "https", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("http", sync_url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{authority}{url}")
}

/// Cuts a body arriving in pieces into its frames.
#[derive(Debug, Default)]
pub struct Frames {
    /// Bytes of the frame being received, its length first.
    partial: Vec<u8>,
}

impl Frames {
    /// Bytes held of a frame not yet whole.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Adds `piece` and calls `each` with every frame it completes, its request id set to `id`.
    /// Stops at the first error `each` returns, or when a length is over `max`.
    pub fn push<E>(
        &mut self,
        mut piece: &[u8],
        id: u32,
        max: usize,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
        too_long: impl Fn() -> E,
    ) -> Result<(), E> {
        while !piece.is_empty() {
            let need = match self.partial.get(..4) {
                Some(len) => 4 + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize,
                None => 4,
            };
            let take = (need - self.partial.len()).min(piece.len());
            self.partial.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if self.partial.len() == 4 && need == 4 {
                let len = u32::from_le_bytes(self.partial[..4].try_into().expect("4 bytes")) as usize;
                if len > max || len < 5 {
                    return Err(too_long());
                }
                continue;
            }
            if self.partial.len() == need {
                let frame = &mut self.partial[4..];
                frame[1..5].copy_from_slice(&id.to_le_bytes());
                each(frame)?;
                self.partial.clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChunkFrame;

    #[test]
    fn a_body_cut_anywhere_gives_back_its_frames_with_the_clients_id() {
        let frames = vec![
            ChunkFrame::Chunk { id: 0, index: 3, bytes: b"abc" }.encode(),
            ChunkFrame::Pack { id: 0, compressed: &[7; 300] }.encode(),
        ];
        let body = body(frames.clone());
        for cut in 0..body.len() {
            let mut got = Vec::new();
            let mut split = Frames::default();
            for piece in [&body[..cut], &body[cut..]] {
                let keep = |f: &[u8]| {
                    got.push(f.to_vec());
                    Ok::<_, ()>(())
                };
                split.push(piece, 9, 1 << 20, keep, || ()).unwrap();
            }
            assert_eq!(split.pending(), 0);
            let ids: Vec<u32> = got.iter().map(|f| ChunkFrame::decode(f).unwrap().id()).collect();
            assert_eq!(ids, [9, 9], "cut at {cut}");
            assert_eq!(got[1][5..], frames[1][5..]);
        }
        let fails = |bytes: &[u8]| Frames::default().push(bytes, 9, 10, |_| Ok(()), || ()).is_err();
        assert!(fails(&body), "a frame over the limit");
        assert!(fails(&[0, 0, 0, 0]), "an empty frame");
    }

    #[test]
    fn a_path_is_fetched_from_the_sync_servers_host() {
        assert_eq!(resolve("ws://127.0.0.1:8080/sync", "/offload/ab"), "http://127.0.0.1:8080/offload/ab");
        assert_eq!(resolve("wss://example.com/a/sync?x", "/o/ab"), "https://example.com/o/ab");
        assert_eq!(resolve("ws://h/sync", "https://cdn.example/ab"), "https://cdn.example/ab");
        assert!(is_name(&name(b"x")));
        assert!(transient(503) && transient(429) && !transient(404) && !transient(403));
        assert!(!is_name("../etc/passwd") && !is_name(&"A".repeat(64)));
    }
}
