//! Whole-file SHA-256 in the browser: `crypto.subtle.digest` where the page is a secure context
//! (native code on another thread, several times faster than SHA-256 in WASM), the `sha2` crate
//! elsewhere, and for small inputs: each `crypto.subtle` call costs a trip through the event
//! loop (about a millisecond), more than hashing a few kilobytes in WASM, which made a folder of
//! thousands of small files spend most of its time waiting for digests.

use std::future::Future;

use assetsync_protocol::Hash;
use js_sys::{ArrayBuffer, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use web_sys::SubtleCrypto;

/// Inputs below this many bytes are hashed in WASM (about 0.4 ms at this size).
const SUBTLE_MIN: usize = 64 << 10;

/// SHA-256 of `data`.
pub async fn sha256(data: &[u8]) -> Hash {
    if data.len() < SUBTLE_MIN {
        return Hash::of(data);
    }
    let started = start(|s, sha256| s.digest_with_object_and_u8_array(sha256, data));
    match finish(started).await {
        Some(hash) => hash,
        None => Hash::of(data),
    }
}

/// SHA-256 of a JS buffer, without copying it into WASM memory where `crypto.subtle` works. The
/// digest starts at once, so the caller can do other work while it runs.
pub fn sha256_buffer(data: &ArrayBuffer) -> impl Future<Output = Hash> + use<> {
    let started = start(|s, sha256| s.digest_with_object_and_buffer_source(sha256, data.as_ref() as &Object));
    let data = data.clone();
    async move {
        match finish(started).await {
            Some(hash) => hash,
            None => Hash::of(&Uint8Array::new(&data).to_vec()),
        }
    }
}

thread_local! {
    /// `crypto.subtle` where the page is a secure context, and the algorithm asked of it: found
    /// once, not at each of a folder's thousands of digests.
    static SUBTLE: Option<(SubtleCrypto, Object)> = subtle_crypto();
}

fn subtle_crypto() -> Option<(SubtleCrypto, Object)> {
    let global = crate::global::Global::get().filter(crate::global::Global::is_secure_context)?;
    let sha256 = Object::new();
    Reflect::set(&sha256, &"name".into(), &"SHA-256".into()).ok()?;
    Some((global.crypto()?.subtle(), sha256))
}

fn start(digest: impl FnOnce(&SubtleCrypto, &Object) -> Result<Promise, JsValue>) -> Option<JsFuture> {
    SUBTLE.with(|found| {
        let (subtle, sha256) = found.as_ref()?;
        Some(JsFuture::from(digest(subtle, sha256).ok()?))
    })
}

async fn finish(started: Option<JsFuture>) -> Option<Hash> {
    let digest = Uint8Array::new(&started?.await.ok()?).to_vec();
    Some(Hash(digest.try_into().ok()?))
}

/// Whether `crypto.subtle` works here (a secure context): then received chunks are hashed by
/// [`ChunkHasher`] instead of in WASM.
pub fn subtle() -> bool {
    SUBTLE.with(Option::is_some)
}

/// Received chunks hashed by `crypto.subtle` on another thread while frames keep arriving,
/// instead of by SHA-256 in WASM on the main thread (see `Machine::take_unhashed`).
#[derive(Default)]
pub struct ChunkHasher {
    /// Each chunk with its hash, or the digest computing it.
    pending: Vec<(u32, Vec<u8>, Result<Hash, JsFuture>)>,
}

impl ChunkHasher {
    /// Starts hashing `chunks` (manifest position, bytes): a frame's worth under [`SUBTLE_MIN`]
    /// bytes at once, in WASM.
    pub fn start(&mut self, chunks: Vec<(u32, Vec<u8>)>) {
        let here = chunks.iter().map(|(_, bytes)| bytes.len()).sum::<usize>() < SUBTLE_MIN;
        for (index, bytes) in chunks {
            let digest = match here {
                true => Ok(Hash::of(&bytes)),
                false => Err(start(|s, sha256| s.digest_with_object_and_u8_array(sha256, &bytes))
                    .unwrap_or_else(|| JsFuture::from(Promise::reject(&JsValue::NULL)))),
            };
            self.pending.push((index, bytes, digest));
        }
    }

    /// Waits for the hashes started: (manifest position, bytes, SHA-256).
    pub async fn finish(&mut self) -> Vec<(u32, Vec<u8>, Hash)> {
        let mut out = Vec::with_capacity(self.pending.len());
        for (index, bytes, digest) in self.pending.drain(..) {
            let id = match digest {
                Ok(id) => Some(id),
                Err(digest) => finish(Some(digest)).await,
            };
            let id = id.unwrap_or_else(|| Hash::of(&bytes));
            out.push((index, bytes, id));
        }
        out
    }
}
