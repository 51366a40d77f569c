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
//! zstd frame, the last two with a window of at most [`crate::compress::STREAM_WINDOW_LOG`] so
//! that they decode as they are needed. Controls are three varints each, `seek` zigzag-encoded.
//! The server computes the matches (with the `bidiff` crate) and encodes the streams;
//! [`Patching`] is the client's side, a slice at a time, and checks every length and position
//! against the announced sizes before using it.
//!
//! A patch may rebuild only the start of the file, with a *tail*: the rest of the new file as
//! one zstd frame with the same old file as prefix (`zstd --patch-from`). A WebAssembly module's
//! data after its code changes in ways LZ matching encodes better (swc's 5 MB of data: 428 KB
//! as a tail, 592 KB as a patch), while its code is where the patch wins.

use crate::compress::Stream;
use crate::{Error, varint};

/// The capability a client names in `hello` (and the server in `welcome`) when it applies
/// patches.
pub const ENCODING: &str = "patch";

/// The capability a client names in `hello` (and the server in `welcome`) when it cuts the
/// chunks a patch sends out of the rebuilt file itself: the answer's recipe then gives each
/// run of them as one [`crate::RecipeOp::Cut`] instead of every chunk's length.
pub const CUT_ENCODING: &str = "cut";

/// The capability a client names in `hello` (and the server in `welcome`) when it takes a patch
/// with a tail (see the [module docs](self)).
pub const TAIL_ENCODING: &str = "tail";

/// The capability a client names in `hello` (and the server in `welcome`) when it remaps a
/// WebAssembly base version with the maps a patch frame brings before applying the patch (see
/// [`crate::wasm`]).
pub const WASM_ENCODING: &str = "wasm";

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
        varint::put_signed(&mut self.controls, seek);
        self.diff.extend_from_slice(add);
        self.extra.extend_from_slice(copy);
    }

    /// The streams of a patch rebuilding only the first `len` bytes of the new file: the
    /// controls up to there, the last one cut short.
    pub fn head(&self, len: usize) -> Streams {
        let mut head = Streams::default();
        let (mut controls, mut at, mut diff, mut extra) = (&self.controls[..], 0usize, 0usize, 0usize);
        while at < len && !controls.is_empty() {
            let mut next = || varint::get(&mut controls).expect("controls this type wrote");
            let (add, copy, seek) = (next() as usize, next() as usize, varint::unzigzag(next()));
            let add_here = add.min(len - at);
            let copy_here = copy.min(len - at - add_here);
            let seek = if add_here + copy_here == add + copy { seek } else { 0 };
            head.push(&self.diff[diff..diff + add_here], &self.extra[extra..extra + copy_here], seek);
            (at, diff, extra) = (at + add_here + copy_here, diff + add, extra + copy);
        }
        head
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

/// Adds `diff` to `out` byte by byte, wrapping, eight bytes at a time: the high bit of each byte
/// is set aside so that no carry crosses into the next byte, then put back. In WASM, which has no
/// vectorised byte loop without SIMD, this is 4 to 6 times faster than one byte at a time.
fn add_bytes(out: &mut [u8], diff: &[u8]) {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = out.chunks_exact_mut(8);
    let mut diffs = diff.chunks_exact(8);
    for (o, d) in (&mut words).zip(&mut diffs) {
        let a = u64::from_le_bytes(o.try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(d.try_into().expect("8 bytes"));
        o.copy_from_slice(&(((a & !HIGH) + (b & !HIGH)) ^ ((a ^ b) & HIGH)).to_le_bytes());
    }
    for (o, d) in words.into_remainder().iter_mut().zip(diffs.remainder()) {
        *o = o.wrapping_add(*d);
    }
}

/// Rebuilds the `new_len`-byte new file from `old` and a patch `payload` (with its `tail`, if
/// any) in one go (see [`Patching`] to do it a slice at a time).
pub fn apply(old: &[u8], payload: &[u8], tail: Option<&[u8]>, new_len: u64) -> Result<Vec<u8>, Error> {
    let mut patching = Patching::new(payload, tail, new_len)?;
    while !patching.step(old, usize::MAX)? {}
    Ok(patching.into_output())
}

/// A patch being applied a slice at a time, so that a browser can yield between slices: its
/// difference and extra streams are decoded as the output needs them, never held whole. Every
/// length, position and size is checked before it is used: a bad patch is an error, never a
/// wrong or oversized output.
pub struct Patching {
    /// The decoded controls (three varints each), and how far they have been read.
    controls: Vec<u8>,
    read: usize,
    diff: Stream,
    extra: Stream,
    /// What is left of the control being applied: difference bytes, extra bytes, then the seek.
    add: usize,
    copy: usize,
    seek: i64,
    /// The position in the old file.
    at: usize,
    out: Vec<u8>,
    /// The length the patch's controls rebuild.
    new_len: usize,
    /// The tail, if any, and the length it decodes to: the rest of the file.
    tail: Option<(Vec<u8>, usize)>,
    /// Difference bytes, decoded before they are added to the old file's.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Patching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Patching({} of {} bytes)", self.out.len(), self.new_len)
    }
}

impl Patching {
    /// Reads the patch's header and starts decoding its streams; the new file is `file_len`
    /// bytes, those the controls do not rebuild coming from `tail`.
    pub fn new(payload: &[u8], tail: Option<&[u8]>, file_len: u64) -> Result<Self, Error> {
        let file_len = usize::try_from(file_len).map_err(|_| bad("a patch for a file too large"))?;
        let mut rest = payload;
        let mut header = [0usize; 5];
        for field in &mut header {
            let n = varint::get(&mut rest).ok_or(bad("a patch header cut short"))?;
            *field = usize::try_from(n).map_err(|_| bad("a patch header out of range"))?;
        }
        let [controls_len, diff_len, extra_len, zcontrols, zdiff] = header;
        // The controls rebuild the whole file, or its start when a tail brings the rest.
        let new_len = diff_len
            .checked_add(extra_len)
            .filter(|&len| len == file_len || (tail.is_some() && len < file_len))
            .filter(|&len| controls_len <= MAX_CONTROL_BYTES_PER_BYTE.saturating_mul(len + 1));
        let Some(new_len) = new_len else {
            return Err(bad("a patch whose streams do not add up to the file"));
        };
        let (zc, rest) = rest.split_at_checked(zcontrols).ok_or(bad("a patch cut short"))?;
        let (zd, ze) = rest.split_at_checked(zdiff).ok_or(bad("a patch cut short"))?;
        let controls = crate::compress::decompress(zc, None, controls_len).map_err(undecodable)?;
        if controls.len() != controls_len {
            return Err(bad("a patch stream shorter than announced"));
        }
        // The file's length is the server's word: one beyond this machine's memory is an error
        // (the chunks are asked for instead), never an abort.
        let mut out = Vec::new();
        out.try_reserve_exact(file_len).map_err(|_| bad("a patch for a file larger than memory allows"))?;
        Ok(Patching {
            controls,
            read: 0,
            diff: Stream::new(zd.to_vec()).map_err(undecodable)?,
            extra: Stream::new(ze.to_vec()).map_err(undecodable)?,
            add: 0,
            copy: 0,
            seek: 0,
            at: 0,
            out,
            new_len,
            tail: tail.map(|tail| (tail.to_vec(), file_len - new_len)),
            scratch: Vec::new(),
        })
    }

    /// Rebuilds about `budget` more bytes of the new file (whole controls' seeks included);
    /// `true` once the whole file is rebuilt and the patch was read to its end.
    pub fn step(&mut self, old: &[u8], budget: usize) -> Result<bool, Error> {
        let mut left = budget.max(1);
        loop {
            if left == 0 && self.add + self.copy > 0 {
                return Ok(false);
            }
            if self.add > 0 {
                let n = self.add.min(left);
                let start = self.out.len();
                self.out.extend_from_slice(&old[self.at..self.at + n]);
                self.scratch.resize(n, 0);
                read_exact(&mut self.diff, &mut self.scratch, "a patch's differences run out")?;
                add_bytes(&mut self.out[start..], &self.scratch);
                (self.add, self.at, left) = (self.add - n, self.at + n, left - n);
            } else if self.copy > 0 {
                let n = self.copy.min(left);
                let start = self.out.len();
                self.out.resize(start + n, 0);
                read_exact(&mut self.extra, &mut self.out[start..], "a patch's new bytes run out")?;
                (self.copy, left) = (self.copy - n, left - n);
            } else {
                self.at = self
                    .at
                    .checked_add_signed(self.seek as isize)
                    .filter(|&at| at <= old.len())
                    .ok_or(bad("a patch seeks outside the old file"))?;
                self.seek = 0;
                if self.read == self.controls.len() {
                    return self.end(old).map(|()| true);
                }
                if left == 0 {
                    return Ok(false);
                }
                self.next_control(old)?;
            }
        }
    }

    /// Reads the next control, checked against the old file and the announced length.
    fn next_control(&mut self, old: &[u8]) -> Result<(), Error> {
        let mut controls = &self.controls[self.read..];
        let mut next = || varint::get(&mut controls).ok_or(bad("a patch control cut short"));
        let (add, copy, seek) = (next()?, next()?, next()?);
        self.read = self.controls.len() - controls.len();
        let add = usize::try_from(add).map_err(|_| bad("a patch control out of range"))?;
        let copy = usize::try_from(copy).map_err(|_| bad("a patch control out of range"))?;
        if old.len().checked_sub(self.at).is_none_or(|room| add > room) {
            return Err(bad("a patch reads past the old file"));
        }
        let room = self.new_len - self.out.len();
        if add > room || copy > room - add {
            return Err(bad("a patch that does not rebuild the announced length"));
        }
        (self.add, self.copy, self.seek) = (add, copy, varint::unzigzag(seek));
        Ok(())
    }

    /// Checks that the controls rebuilt their length and used both streams whole, then decodes
    /// the tail, if any, against `old`: in one step (the server keeps tails small).
    fn end(&mut self, old: &[u8]) -> Result<(), Error> {
        if self.out.len() != self.new_len
            || !self.diff.ended().map_err(undecodable)?
            || !self.extra.ended().map_err(undecodable)?
        {
            return Err(bad("a patch that does not rebuild the announced length"));
        }
        if let Some((tail, len)) = self.tail.take() {
            let rest = crate::compress::decompress(&tail, Some(old), len).map_err(undecodable)?;
            if rest.len() != len {
                return Err(bad("a patch's tail shorter than the file"));
            }
            self.out.extend_from_slice(&rest);
        }
        Ok(())
    }

    /// The part of the new file rebuilt so far.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The rebuilt file, once [`Patching::step`] returned `true`.
    pub fn into_output(self) -> Vec<u8> {
        self.out
    }
}

fn bad(why: &str) -> Error {
    Error::BadPatch(why.to_owned())
}

/// A stream of the patch that zstd cannot decode.
fn undecodable(error: Error) -> Error {
    Error::BadPatch(error.to_string())
}

/// Fills `buf` from a stream, or fails with `short` if it ends first.
fn read_exact(stream: &mut Stream, buf: &mut [u8], short: &'static str) -> Result<(), Error> {
    match stream.read(buf).map_err(undecodable)? {
        true => Ok(()),
        false => Err(bad(short)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_added_wrapping_eight_at_a_time_and_one_by_one() {
        let out: Vec<u8> = (0..1003u32).map(|i| (i * 37 + 11) as u8).collect();
        let diff: Vec<u8> = (0..1003u32).map(|i| (i * 101 + 200) as u8).collect();
        let mut added = out.clone();
        add_bytes(&mut added, &diff);
        let expected: Vec<u8> = out.iter().zip(&diff).map(|(o, d)| o.wrapping_add(*d)).collect();
        assert_eq!(added, expected);
    }

    /// A plain zstd frame of `raw` (raw blocks: valid for any decoder).
    fn frame(raw: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Uncompressed)
    }

    /// An old file, a new one, and the streams of a patch from one to the other: "the quick
    /// brown " from old, then "cat" as new bytes, then skip "fox", then the rest from old, then
    /// "!!".
    fn fox_to_cat() -> (Vec<u8>, Vec<u8>, Streams) {
        let old = b"the quick brown fox jumps over the lazy dog".to_vec();
        let new = b"the quick brown cat jumps over the lazy dog!!".to_vec();
        let mut streams = Streams::default();
        streams.push(&[0; 16], b"cat", 3);
        streams.push(&[0; 24], b"!!", 0);
        (old, new, streams)
    }

    #[test]
    fn a_patch_rebuilds_the_new_file_and_a_damaged_one_is_refused() {
        let (old, new, streams) = fox_to_cat();
        let payload = streams.encode(frame);
        assert_eq!(apply(&old, &payload, None, new.len() as u64).unwrap(), new);
        // A slice at a time: the same file, each step within its budget.
        let mut patching = Patching::new(&payload, None, new.len() as u64).unwrap();
        let mut steps = 0;
        while !patching.step(&old, 5).unwrap() {
            steps += 1;
            assert!(patching.output().len() <= 5 * steps, "step {steps} went past its budget");
        }
        assert_eq!(patching.into_output(), new);
        assert!(apply(&old, &payload, None, new.len() as u64 + 1).is_err(), "another length");
        assert!(apply(&old[..20], &payload, None, new.len() as u64).is_err(), "a shorter old file");
        for cut in 0..payload.len() {
            assert!(apply(&old, &payload[..cut], None, new.len() as u64).is_err(), "cut at {cut}");
        }
        let mut seek_back = Streams::default();
        seek_back.push(&[0; 4], b"", -10);
        assert!(apply(&old, &seek_back.encode(frame), None, 4).is_err(), "a seek before the start");
    }

    #[test]
    fn a_patch_cut_anywhere_rebuilds_the_file_with_the_rest_as_its_tail() {
        let (old, new, streams) = fox_to_cat();
        for len in 0..=new.len() {
            let head = streams.head(len).encode(frame);
            let tail = frame(&new[len..]);
            assert_eq!(apply(&old, &head, Some(&tail), new.len() as u64).unwrap(), new, "cut at {len}");
            if len < new.len() {
                assert!(apply(&old, &head, None, new.len() as u64).is_err(), "no tail, cut at {len}");
                let short = frame(&new[len + 1..]);
                assert!(apply(&old, &head, Some(&short), new.len() as u64).is_err(), "a short tail");
            }
        }
        let whole = streams.encode(frame);
        assert!(apply(&old, &whole, Some(&frame(b"more")), new.len() as u64).is_err(), "a tail past the end");
    }

    /// Found by the fuzz test: a short patch with a tail for a file the server says is 24 GiB
    /// aborted the process reserving room for it.
    #[test]
    fn a_patch_for_a_file_larger_than_memory_is_an_error_not_an_abort() {
        let (old, new, streams) = fox_to_cat();
        let head = streams.head(new.len() / 2).encode(frame);
        let tail = frame(&new[new.len() / 2..]);
        let error = apply(&old, &head, Some(&tail), 1 << 40).unwrap_err().to_string();
        assert!(error.contains("larger than memory allows"), "{error}");
    }
}
