//! Binary patches (bsdiff's method): the new file as approximate matches against the client's
//! old version plus bytes of its own, for compiled assets (WebAssembly above all) where a
//! rebuild shifts code and changes the addresses embedded in it everywhere, so that LZ matches
//! (`zstd --patch-from`) break every few bytes while bsdiff's byte-wise differences stay
//! mostly zeros.
//!
//! A patch is a list of controls, each `(add, copy, seek)`: the next `add` bytes of the new
//! file are the old file's bytes at the current old position plus the next `add` bytes of the
//! *difference* stream (byte-wise, wrapping), then `copy` bytes come as they are from the
//! *extra* stream, then the old position moves by `seek`. The old position starts at 0.
//!
//! On the wire (the payload of a `Patch` frame, see [`crate::ChunkFrame`]): the three streams'
//! raw lengths and the first two's compressed lengths as LEB128 varints, then each stream as a
//! zstd frame. Controls are three varints each, `seek` zigzag-encoded. The server computes the
//! matches (with the `bidiff` crate) and encodes the streams; [`apply`] is the client's side,
//! and checks every length and position against the announced sizes before using it.

use crate::{Error, varint};

/// The capability a client names in `hello` (and the server in `welcome`) when it applies
/// patches.
pub const ENCODING: &str = "patch";

/// Compressed controls longer than this many bytes per output byte cannot be a real patch.
const MAX_CONTROL_BYTES_PER_BYTE: usize = 32;

/// The three streams of a patch, as the server builds them.
#[derive(Debug, Default)]
pub struct Streams {
    controls: Vec<u8>,
    diff: Vec<u8>,
    extra: Vec<u8>,
}

impl Streams {
    /// Appends one control: `add` (difference bytes), `copy` (new bytes), then the seek.
    pub fn push(&mut self, add: &[u8], copy: &[u8], seek: i64) {
        varint::put(&mut self.controls, add.len() as u64);
        varint::put(&mut self.controls, copy.len() as u64);
        varint::put(&mut self.controls, ((seek << 1) ^ (seek >> 63)) as u64);
        self.diff.extend_from_slice(add);
        self.extra.extend_from_slice(copy);
    }

    /// The payload of a `Patch` frame, each stream compressed by `compress` (a zstd frame).
    pub fn encode(&self, mut compress: impl FnMut(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let streams = [&self.controls, &self.diff, &self.extra].map(|s| compress(s));
        let mut out = Vec::new();
        for raw in [&self.controls, &self.diff, &self.extra] {
            varint::put(&mut out, raw.len() as u64);
        }
        varint::put(&mut out, streams[0].len() as u64);
        varint::put(&mut out, streams[1].len() as u64);
        for stream in &streams {
            out.extend_from_slice(stream);
        }
        out
    }
}

/// Rebuilds the `new_len`-byte new file from `old` and a patch `payload`. Every length, position
/// and size is checked first: a bad patch is an error, never a wrong or oversized output.
pub fn apply(old: &[u8], payload: &[u8], new_len: u64) -> Result<Vec<u8>, Error> {
    let bad = Error::BadFrame;
    let new_len = usize::try_from(new_len).map_err(|_| bad("a patch for a file too large"))?;
    let mut rest = payload;
    let mut header = [0usize; 5];
    for field in &mut header {
        let n = varint::get(&mut rest).ok_or(bad("a patch header cut short"))?;
        *field = usize::try_from(n).map_err(|_| bad("a patch header out of range"))?;
    }
    let [controls_len, diff_len, extra_len, zcontrols, zdiff] = header;
    if diff_len.checked_add(extra_len) != Some(new_len)
        || controls_len > MAX_CONTROL_BYTES_PER_BYTE.saturating_mul(new_len + 1)
    {
        return Err(bad("a patch whose streams do not add up to the file"));
    }
    let (zc, rest) = rest.split_at_checked(zcontrols).ok_or(bad("a patch cut short"))?;
    let (zd, ze) = rest.split_at_checked(zdiff).ok_or(bad("a patch cut short"))?;
    let stream = |z: &[u8], len: usize| -> Result<Vec<u8>, Error> {
        let raw = crate::compress::decompress(z, None, len)?;
        match raw.len() == len {
            true => Ok(raw),
            false => Err(bad("a patch stream shorter than announced")),
        }
    };
    let (controls, diff, extra) = (stream(zc, controls_len)?, stream(zd, diff_len)?, stream(ze, extra_len)?);
    let mut out = Vec::with_capacity(new_len);
    let (mut controls, mut diff, mut extra) = (&controls[..], &diff[..], &extra[..]);
    let mut at = 0usize;
    while !controls.is_empty() {
        let mut next = || varint::get(&mut controls).ok_or(bad("a patch control cut short"));
        let (add, copy, seek) = (next()?, next()?, next()?);
        let seek = ((seek >> 1) as i64) ^ -((seek & 1) as i64);
        let add = usize::try_from(add).map_err(|_| bad("a patch control out of range"))?;
        let copy = usize::try_from(copy).map_err(|_| bad("a patch control out of range"))?;
        let from = old.get(at..).and_then(|o| o.get(..add)).ok_or(bad("a patch reads past the old file"))?;
        let (d, rest) = diff.split_at_checked(add).ok_or(bad("a patch's differences run out"))?;
        out.extend(from.iter().zip(d).map(|(o, d)| o.wrapping_add(*d)));
        diff = rest;
        let (e, rest) = extra.split_at_checked(copy).ok_or(bad("a patch's new bytes run out"))?;
        out.extend_from_slice(e);
        extra = rest;
        at = (at + add)
            .checked_add_signed(seek as isize)
            .filter(|&at| at <= old.len())
            .ok_or(bad("a patch seeks outside the old file"))?;
    }
    if out.len() != new_len || !diff.is_empty() || !extra.is_empty() {
        return Err(bad("a patch that does not rebuild the announced length"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain zstd frame of `raw` (raw blocks: valid for any decoder).
    fn frame(raw: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Uncompressed)
    }

    #[test]
    fn a_patch_rebuilds_the_new_file_and_a_damaged_one_is_refused() {
        let old = b"the quick brown fox jumps over the lazy dog".to_vec();
        let new = b"the quick brown cat jumps over the lazy dog!!".to_vec();
        let mut streams = Streams::default();
        // "the quick brown " from old, then "cat" as new bytes, then skip "fox", then the rest
        // from old, then "!!".
        streams.push(&[0; 16], b"cat", 3);
        streams.push(&[0; 24], b"!!", 0);
        let payload = streams.encode(frame);
        assert_eq!(apply(&old, &payload, new.len() as u64).unwrap(), new);
        assert!(apply(&old, &payload, new.len() as u64 + 1).is_err(), "another length");
        assert!(apply(&old[..20], &payload, new.len() as u64).is_err(), "a shorter old file");
        for cut in 0..payload.len() {
            assert!(apply(&old, &payload[..cut], new.len() as u64).is_err(), "cut at {cut}");
        }
        let mut seek_back = Streams::default();
        seek_back.push(&[0; 4], b"", -10);
        assert!(apply(&old, &seek_back.encode(frame), 4).is_err(), "a seek before the start");
    }
}
