//! Packs (protocol 4): the small new files of a folder answer, many to one zstd frame, so that
//! they compress against each other (a build folder's modules share much of their text) and
//! cost no message of their own.
//!
//! A pack decodes to `[count][params min][avg][max]`, then per file `[position gap][length]`,
//! then the files' bytes back to back, every number a LEB128 varint. A file's position is its
//! index in the answer's listing (once a delta is applied); the gap is its distance from the
//! previous file's position, minus one (the first counts from -1). A packed file is cut into
//! chunks by FastCDC with `params`, as the server cut it (protocol 4 packed only files of one
//! chunk, or none when empty), so its manifest follows from its bytes: the client derives it
//! ([`manifest`]) and checks its version against the listing's, as it checks every file. Each
//! pack is compressed with the bytes of the packs before it in the same answer as prefix (their
//! last [`WINDOW`] bytes, see [`Window`]).

use std::ops::Range;

use crate::varint::{get, put};
use crate::{AssetPath, ChunkParams, ChunkRef, Error, Hash, Manifest};

/// The largest file packed; larger ones travel as `update`s.
pub const MAX_FILE: usize = 64 << 10;
/// A pack is closed once its files hold this many bytes.
pub const TARGET_BYTES: usize = 2 << 20;
/// The most files in one pack.
pub const MAX_FILES: usize = 4096;
/// The most bytes a pack may decode to: a client refuses more.
pub const MAX_RAW: usize = TARGET_BYTES + MAX_FILE + 16 + MAX_FILES * 10;
/// How much of the earlier packs' bytes each pack is compressed against.
pub const WINDOW: usize = 4 << 20;

/// Whether the file of `manifest` can travel in a pack to a client: small, and cut as
/// [`manifest`] cuts its bytes again; of one chunk (or empty) unless the client takes packed
/// files of several chunks (`several`: protocol 5).
pub fn packable(manifest: &Manifest, several: bool) -> bool {
    manifest.len as usize <= MAX_FILE
        && match manifest.chunks.as_slice() {
            [] => manifest.len == 0,
            [chunk] => chunk.id == manifest.sha256 && u64::from(chunk.len) == manifest.len,
            _ => several,
        }
}

/// The manifest of a packed file: its chunks as FastCDC cuts `data` with `params`.
pub fn manifest(path: AssetPath, data: &[u8], params: ChunkParams) -> Result<Manifest, Error> {
    manifest_hashed(path, data, Hash::of(data), params)
}

/// [`manifest`] of `data`, whose SHA-256 is `sha256`, hashed elsewhere: a file of one chunk
/// needs no other hash; the chunks of a longer one are hashed here.
pub fn manifest_hashed(
    path: AssetPath,
    data: &[u8],
    sha256: Hash,
    params: ChunkParams,
) -> Result<Manifest, Error> {
    let cuts: Vec<&[u8]> = crate::chunk::cuts(data, params)?.collect();
    let chunks = match cuts.as_slice() {
        [_] => vec![ChunkRef { id: sha256, len: data.len() as u32 }],
        cuts => cuts.iter().map(|c| ChunkRef { id: Hash::of(c), len: c.len() as u32 }).collect(),
    };
    Ok(Manifest::from_parts(path, data.len(), sha256, params, chunks))
}

/// The raw bytes of a pack of `files` (their listing positions, ascending, and bytes).
pub fn encode(params: ChunkParams, files: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + files.len() * 6 + files.iter().map(|f| f.1.len()).sum::<usize>());
    for n in [files.len() as u64, params.min.into(), params.avg.into(), params.max.into()] {
        put(&mut out, n);
    }
    let mut previous = -1i64;
    for (position, data) in files {
        put(&mut out, (i64::from(*position) - previous - 1) as u64);
        put(&mut out, data.len() as u64);
        previous = (*position).into();
    }
    for (_, data) in files {
        out.extend_from_slice(data);
    }
    out
}

/// A packed file as [`decode`] finds it: its listing position, and where its bytes are.
pub type Entry = (u32, Range<usize>);

/// Reads [`encode`]: the files' chunk parameters, and each file's listing position and range in
/// `raw`. Positions come out ascending; checking them against the listing is the caller's.
pub fn decode(raw: &[u8]) -> Result<(ChunkParams, Vec<Entry>), Error> {
    let bad = || Error::BadFrame("malformed pack");
    let mut rest = raw;
    let mut take = || get(&mut rest).ok_or_else(bad);
    let count = take()?;
    let params = ChunkParams {
        min: u32::try_from(take()?).map_err(|_| bad())?,
        avg: u32::try_from(take()?).map_err(|_| bad())?,
        max: u32::try_from(take()?).map_err(|_| bad())?,
    };
    if count > MAX_FILES as u64 {
        return Err(bad());
    }
    let (mut files, mut position, mut total) = (Vec::with_capacity(count as usize), -1i64, 0usize);
    for _ in 0..count {
        position = position.checked_add(take()?.try_into().map_err(|_| bad())?).ok_or_else(bad)? + 1;
        let len = usize::try_from(take()?).map_err(|_| bad())?;
        if len > MAX_FILE || position > i64::from(u32::MAX) {
            return Err(bad());
        }
        files.push((position as u32, total..total + len));
        total += len;
    }
    let start = raw.len() - rest.len();
    if raw.len() - start != total {
        return Err(bad());
    }
    Ok((params, files.into_iter().map(|(p, r)| (p, r.start + start..r.end + start)).collect()))
}

/// The packs of one answer so far, of which the last [`WINDOW`] bytes are the next pack's
/// prefix. Older bytes are dropped once they are as many as the window, so that each byte is
/// moved at most once.
#[derive(Debug, Default)]
pub struct Window(Vec<u8>);

impl Window {
    /// Adds a pack's raw bytes.
    pub fn push(&mut self, raw: &[u8]) {
        if self.0.len() + raw.len() > 2 * WINDOW {
            let keep = WINDOW.saturating_sub(raw.len()).min(self.0.len());
            self.0.drain(..self.0.len() - keep);
        }
        self.0.extend_from_slice(raw);
    }

    /// The prefix for the next pack, if any.
    pub fn prefix(&self) -> Option<&[u8]> {
        let start = self.0.len().saturating_sub(WINDOW);
        (!self.0.is_empty()).then_some(&self.0[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_round_trips_and_its_files_rebuild_their_manifests() {
        let params = ChunkParams::default();
        // Random bytes of 60 KiB are several chunks.
        let mut several = vec![0u8; 60 << 10];
        let mut x = 1u32;
        several
            .iter_mut()
            .for_each(|b| (x, *b) = (x.wrapping_mul(1_103_515_245).wrapping_add(12_345), (x >> 16) as u8));
        let files: Vec<(u32, Vec<u8>)> = vec![
            (0, b"first".to_vec()),
            (1, Vec::new()),
            (7, vec![7; 300]),
            (8, several),
            (70_000, b"last".to_vec()),
        ];
        let borrowed: Vec<(u32, &[u8])> = files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let raw = encode(params, &borrowed);
        let (got, ranges) = decode(&raw).unwrap();
        assert_eq!(got, params);
        for ((position, data), (got_position, range)) in files.iter().zip(&ranges) {
            assert_eq!((position, data.as_slice()), (got_position, &raw[range.clone()]));
            let path = AssetPath::new(&format!("f{position}")).unwrap();
            let derived = manifest(path.clone(), data, params).unwrap();
            assert_eq!(derived, Manifest::build(path, data, params).unwrap());
            assert!(packable(&derived, true));
            assert_eq!(packable(&derived, false), derived.chunks.len() <= 1, "{position}");
        }
        for cut in 0..raw.len() {
            assert!(decode(&raw[..cut]).is_err(), "a pack cut at {cut} decoded");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn the_window_keeps_the_last_bytes() {
        let mut window = Window::default();
        assert!(window.prefix().is_none());
        let mut all = Vec::new();
        for i in 0..40u8 {
            let pack = vec![i; 300_000 + usize::from(i) * 1000];
            window.push(&pack);
            all.extend_from_slice(&pack);
            let prefix = window.prefix().unwrap();
            assert_eq!(prefix, &all[all.len().saturating_sub(WINDOW)..]);
            assert!(window.0.len() <= 2 * WINDOW);
        }
    }
}
