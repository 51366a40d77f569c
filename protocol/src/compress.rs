//! Decoding of context-compressed chunk batches: zstd frames whose window starts with a file the
//! client already holds (`zstd --patch-from` semantics), so that text shared with the client's
//! old version costs a few bytes per match instead of being sent again.
//!
//! The browser's decoder is the pure-Rust `ruzstd` ([`decompress_portable`]); native clients
//! decode with the C library, several times faster (feature `native-zstd`). The server, and a
//! native client uploading, encode with the C library ([`compress`], feature `native-zstd`);
//! tests in the server check that both decoders read its frames.

use ruzstd::decoding::{BlockDecodingStrategy, Dictionary, FrameDecoder};

use crate::Error;

/// The encoding name negotiated in `hello`/`welcome`.
pub const ZSTD: &str = "zstd";

/// Decodes one zstd frame. `prefix`, if given, is the raw content the encoder referenced as a
/// prefix. Output longer than `max_len` is refused before it is produced in full, so a hostile
/// frame cannot make the client allocate without bound.
pub fn decompress(frame: &[u8], prefix: Option<&[u8]>, max_len: usize) -> Result<Vec<u8>, Error> {
    #[cfg(feature = "native-zstd")]
    return native::decompress(frame, prefix, max_len);
    #[cfg(not(feature = "native-zstd"))]
    decompress_portable(frame, prefix, max_len)
}

/// [`decompress`] with `ruzstd`, as the browser decodes.
pub fn decompress_portable(frame: &[u8], prefix: Option<&[u8]>, max_len: usize) -> Result<Vec<u8>, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Decompress(e.to_string());
    let mut decoder = FrameDecoder::new();
    let mut source = frame;
    if let Some(prefix) = prefix {
        // A raw-content dictionary: no entropy tables, the prefix as history, the default
        // repeat offsets. `force_dict` must come after `init`, which resets the state.
        let dict = Dictionary {
            id: 1,
            fse: Default::default(),
            huf: Default::default(),
            dict_content: prefix.to_vec(),
            offset_hist: [1, 4, 8],
        };
        decoder.add_dict(dict).map_err(|e| bad(&e))?;
        decoder.init(&mut source).map_err(|e| bad(&e))?;
        decoder.force_dict(1).map_err(|e| bad(&e))?;
    } else {
        decoder.init(&mut source).map_err(|e| bad(&e))?;
    }
    let mut out = Vec::new();
    loop {
        let finished = decoder.is_finished();
        if let Some(bytes) = decoder.collect() {
            if out.len() + bytes.len() > max_len {
                return Err(Error::BadFrame("compressed batch decodes to more than it announced"));
            }
            out.extend_from_slice(&bytes);
        }
        if finished {
            return Ok(out);
        }
        decoder.decode_blocks(&mut source, BlockDecodingStrategy::UptoBytes(1 << 20)).map_err(|e| bad(&e))?;
    }
}

#[cfg(feature = "native-zstd")]
pub use native::{compress, compress_with};

#[cfg(feature = "native-zstd")]
mod native {
    use zstd::zstd_safe::{
        CCtx, CParameter, DCtx, InBuffer, OutBuffer, compress_bound, get_error_name, get_frame_content_size,
    };

    use crate::Error;

    /// One zstd frame of `raw` at `level`, with `prefix` referenced as if it preceded it (what
    /// [`super::decompress`] reads back with the same prefix). `None` if zstd fails (it should
    /// not; the caller then sends plain chunks).
    pub fn compress(raw: &[u8], prefix: Option<&[u8]>, level: i32) -> Option<Vec<u8>> {
        compress_with(&mut CCtx::try_create()?, raw, prefix, level)
    }

    /// [`compress`] with a context of the caller's (reset by the caller between uses).
    pub fn compress_with<'a>(
        cctx: &mut CCtx<'a>,
        raw: &[u8],
        prefix: Option<&'a [u8]>,
        level: i32,
    ) -> Option<Vec<u8>> {
        let window =
            (prefix.map_or(0, <[u8]>::len) + raw.len()).max(1 << 10).next_power_of_two().trailing_zeros();
        // Browsers decode with ruzstd, which accepts windows up to 100 MB: at most 2^26 here.
        let window = window.clamp(10, 26);
        for param in [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(window),
            // Long matches only pay against a prefix: a batch alone fits in the window.
            CParameter::EnableLongDistanceMatching(prefix.is_some()),
            CParameter::ChecksumFlag(false),
        ] {
            cctx.set_parameter(param).ok()?;
        }
        if let Some(prefix) = prefix {
            cctx.ref_prefix(prefix).ok()?;
        }
        let mut out = Vec::with_capacity(compress_bound(raw.len()));
        cctx.compress2(&mut out, raw).ok()?;
        Some(out)
    }

    /// [`super::decompress`] with the C library, streaming into a buffer never grown past
    /// `max_len + 1` bytes.
    pub fn decompress(frame: &[u8], prefix: Option<&[u8]>, max_len: usize) -> Result<Vec<u8>, Error> {
        let bad = |code: usize| Error::Decompress(get_error_name(code).to_owned());
        let too_long = || Error::BadFrame("compressed batch decodes to more than it announced");
        let mut dctx = DCtx::try_create().ok_or_else(|| Error::Decompress("out of memory".into()))?;
        if let Some(prefix) = prefix {
            dctx.ref_prefix(prefix).map_err(bad)?;
        }
        let announced = get_frame_content_size(frame).ok().flatten().unwrap_or(0);
        let mut out = Vec::with_capacity(usize::try_from(announced).unwrap_or(max_len).min(max_len + 1));
        let mut input = InBuffer::around(frame);
        loop {
            if out.len() == out.capacity() {
                if out.len() > max_len {
                    return Err(too_long());
                }
                out.reserve(out.len().max(64 << 10).min(max_len + 1 - out.len()));
            }
            let at = out.len();
            let left =
                dctx.decompress_stream(&mut OutBuffer::around_pos(&mut out, at), &mut input).map_err(bad)?;
            if out.len() > max_len {
                return Err(too_long());
            }
            if left == 0 {
                return Ok(out);
            }
            // Room to write, and nothing left to read: the frame was cut short.
            if input.pos() == frame.len() && out.len() < out.capacity() {
                return Err(Error::Decompress("the frame ends early".into()));
            }
        }
    }
}
