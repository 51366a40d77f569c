//! Decoding of context-compressed chunk batches: zstd frames whose window starts with a file the
//! client already holds (`zstd --patch-from` semantics), so that text shared with the client's
//! old version costs a few bytes per match instead of being sent again.
//!
//! The decoder is the pure-Rust `ruzstd`, so both clients (native and wasm32) share it. The server
//! encodes with the C library (`ref_prefix`); tests there check that this decoder reads its frames.

use ruzstd::decoding::{BlockDecodingStrategy, Dictionary, FrameDecoder};

use crate::Error;

/// The encoding name negotiated in `hello`/`welcome`.
pub const ZSTD: &str = "zstd";

/// Decodes one zstd frame. `prefix`, if given, is the raw content the encoder referenced as a
/// prefix. Output longer than `max_len` is refused before it is produced in full, so a hostile
/// frame cannot make the client allocate without bound.
pub fn decompress(frame: &[u8], prefix: Option<&[u8]>, max_len: usize) -> Result<Vec<u8>, Error> {
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
