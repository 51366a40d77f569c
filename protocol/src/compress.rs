//! Decoding of context-compressed chunk batches: zstd frames whose window starts with a file the
//! client already holds (`zstd --patch-from` semantics), so that text shared with the client's
//! old version costs a few bytes per match instead of being sent again.
//!
//! Both clients decode with the C library (feature `c-zstd`, built for wasm32 with clang): it
//! references the prefix where it lies, where the pure-Rust `ruzstd` ([`decompress_portable`],
//! this crate's default, which needs no C toolchain) copies it twice per frame, which in the
//! browser held three copies of a 100 MB old version at once, and it decodes faster. The
//! server, and a native client uploading, encode with the C library ([`compress`]); tests in
//! the server check that both decoders read its frames.

use ruzstd::decoding::{BlockDecodingStrategy, Dictionary, FrameDecoder};

use crate::Error;

/// The encoding name negotiated in `hello`/`welcome`.
pub const ZSTD: &str = "zstd";

/// Decodes one zstd frame. `prefix`, if given, is the raw content the encoder referenced as a
/// prefix. Output longer than `max_len` is refused before it is produced in full, so a hostile
/// frame cannot make the client allocate without bound.
pub fn decompress(frame: &[u8], prefix: Option<&[u8]>, max_len: usize) -> Result<Vec<u8>, Error> {
    #[cfg(feature = "c-zstd")]
    return native::decompress(frame, prefix, max_len);
    #[cfg(not(feature = "c-zstd"))]
    decompress_portable(frame, prefix, max_len)
}

/// [`decompress`] with `ruzstd`, the decoder without `c-zstd`.
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

/// The largest window of a frame meant to be read as a [`Stream`] (4 MiB): a decoder holds a
/// window's worth of decoded bytes back until the frame ends, so a larger one would have the
/// first read decode most of the stream at once.
pub const STREAM_WINDOW_LOG: u32 = 22;

/// The content of one zstd frame (no prefix), decoded as it is read: for streams too large to
/// decode in one step.
pub struct Stream {
    #[cfg(not(feature = "c-zstd"))]
    inner: portable::Stream,
    #[cfg(feature = "c-zstd")]
    inner: zstd::stream::read::Decoder<'static, std::io::BufReader<std::io::Cursor<Vec<u8>>>>,
}

impl Stream {
    /// Starts decoding `frame`.
    pub fn new(frame: Vec<u8>) -> Result<Self, Error> {
        #[cfg(not(feature = "c-zstd"))]
        let inner = portable::Stream::new(frame)?;
        #[cfg(feature = "c-zstd")]
        let inner = {
            let bad = |e: std::io::Error| Error::Decompress(e.to_string());
            let mut decoder = zstd::stream::read::Decoder::new(std::io::Cursor::new(frame)).map_err(bad)?;
            // A frame asking for a larger window is refused, not given the memory.
            decoder.window_log_max(STREAM_WINDOW_LOG).map_err(bad)?;
            decoder.single_frame()
        };
        Ok(Stream { inner })
    }

    /// Fills `out` with the next bytes; `Ok(false)` if the content ends first.
    pub fn read(&mut self, out: &mut [u8]) -> Result<bool, Error> {
        #[cfg(not(feature = "c-zstd"))]
        return self.inner.read(out);
        #[cfg(feature = "c-zstd")]
        match std::io::Read::read_exact(&mut self.inner, out) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(Error::Decompress(e.to_string())),
        }
    }

    /// Whether the content was read to its end.
    pub fn ended(&mut self) -> Result<bool, Error> {
        self.read(&mut [0]).map(|more| !more)
    }
}

#[cfg(not(feature = "c-zstd"))]
mod portable {
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

    use crate::Error;

    /// [`super::Stream`] with `ruzstd`: blocks are decoded as reads need them.
    pub struct Stream {
        frame: Vec<u8>,
        /// How much of `frame` the decoder has read.
        used: usize,
        decoder: FrameDecoder,
        /// Decoded bytes not read yet, from `taken`.
        decoded: Vec<u8>,
        taken: usize,
    }

    impl Stream {
        pub fn new(frame: Vec<u8>) -> Result<Self, Error> {
            let mut decoder = FrameDecoder::new();
            let mut source = &frame[..];
            decoder.init(&mut source).map_err(|e| Error::Decompress(e.to_string()))?;
            let used = frame.len() - source.len();
            Ok(Stream { frame, used, decoder, decoded: Vec::new(), taken: 0 })
        }

        pub fn read(&mut self, mut out: &mut [u8]) -> Result<bool, Error> {
            while !out.is_empty() {
                if self.taken == self.decoded.len() {
                    let finished = self.decoder.is_finished();
                    match self.decoder.collect() {
                        Some(bytes) if !bytes.is_empty() => (self.decoded, self.taken) = (bytes, 0),
                        _ if finished => return Ok(false),
                        _ => {
                            let mut source = &self.frame[self.used..];
                            self.decoder
                                .decode_blocks(&mut source, BlockDecodingStrategy::UptoBytes(256 << 10))
                                .map_err(|e| Error::Decompress(e.to_string()))?;
                            self.used = self.frame.len() - source.len();
                        }
                    }
                    continue;
                }
                let n = out.len().min(self.decoded.len() - self.taken);
                out[..n].copy_from_slice(&self.decoded[self.taken..self.taken + n]);
                self.taken += n;
                out = &mut out[n..];
            }
            Ok(true)
        }
    }
}

#[cfg(feature = "c-zstd")]
pub use native::{compress, compress_stream, compress_with};

#[cfg(feature = "c-zstd")]
mod native {
    use zstd::zstd_safe::{
        CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, compress_bound, get_error_name,
        get_frame_content_size,
    };

    use crate::Error;

    /// The largest window of a frame (64 MiB): past it, a prefix's start is out of reach, and
    /// a decoder refuses frames that ask for more.
    const MAX_WINDOW_LOG: u32 = 26;

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
        compress_windowed(cctx, raw, prefix, level, MAX_WINDOW_LOG)
    }

    /// One zstd frame of `raw` at `level` to be read as a [`super::Stream`]: its window is at
    /// most [`super::STREAM_WINDOW_LOG`], which bounds what a decoder holds back.
    pub fn compress_stream(raw: &[u8], level: i32) -> Option<Vec<u8>> {
        compress_windowed(&mut CCtx::try_create()?, raw, None, level, super::STREAM_WINDOW_LOG)
    }

    fn compress_windowed<'a>(
        cctx: &mut CCtx<'a>,
        raw: &[u8],
        prefix: Option<&'a [u8]>,
        level: i32,
        max_window_log: u32,
    ) -> Option<Vec<u8>> {
        let window =
            (prefix.map_or(0, <[u8]>::len) + raw.len()).max(1 << 10).next_power_of_two().trailing_zeros();
        let window = window.clamp(10, max_window_log);
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

    /// [`super::decompress`] with the C library: in one step when the frame announces its
    /// length (as every frame this crate writes does), else streaming into a buffer never grown
    /// past `max_len + 1` bytes.
    pub fn decompress(frame: &[u8], prefix: Option<&[u8]>, max_len: usize) -> Result<Vec<u8>, Error> {
        let bad = |code: usize| Error::Decompress(get_error_name(code).to_owned());
        let too_long = || Error::BadFrame("compressed batch decodes to more than it announced");
        let mut dctx = DCtx::try_create().ok_or_else(|| Error::Decompress("out of memory".into()))?;
        // No window larger than the encoder ever uses (see `compress_with`): a hostile frame
        // cannot make the decoder allocate more.
        dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG)).map_err(bad)?;
        if let Some(prefix) = prefix {
            dctx.ref_prefix(prefix).map_err(bad)?;
        }
        let announced = get_frame_content_size(frame).ok().flatten();
        if let Some(announced) = announced {
            let len = usize::try_from(announced).ok().filter(|&len| len <= max_len).ok_or_else(too_long)?;
            // In one step, into a buffer of exactly the announced size: the decoder then keeps
            // no window of its own (a streaming decoder allocates the frame's whole window,
            // up to 64 MiB, and a page pays for zeroing it), and a frame that holds more than
            // it announced fails.
            // Reserved, not allocated outright: a hostile announcement as large as `max_len`
            // (the file's length, which the server also gives) is an error, never an abort.
            let mut out = Vec::new();
            out.try_reserve_exact(len).map_err(|_| Error::Decompress("out of memory".into()))?;
            dctx.decompress(&mut out, frame).map_err(bad)?;
            return Ok(out);
        }
        let mut out = Vec::with_capacity((64 << 10).min(max_len + 1));
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
