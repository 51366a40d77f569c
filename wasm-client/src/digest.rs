//! Whole-file SHA-256 in the browser: `crypto.subtle.digest` where the page is a secure context
//! (native code, several times faster than SHA-256 in WASM), the `sha2` crate elsewhere.

use assetsync_protocol::Hash;
use js_sys::Uint8Array;
use wasm_bindgen_futures::JsFuture;

/// SHA-256 of `data`.
pub async fn sha256(data: &[u8]) -> Hash {
    if let Some(hash) = subtle(data).await {
        return hash;
    }
    Hash::of(data)
}

async fn subtle(data: &[u8]) -> Option<Hash> {
    let window = web_sys::window().filter(web_sys::Window::is_secure_context)?;
    let promise = window.crypto().ok()?.subtle().digest_with_str_and_u8_array("SHA-256", data).ok()?;
    let digest = Uint8Array::new(&JsFuture::from(promise).await.ok()?).to_vec();
    Some(Hash(digest.try_into().ok()?))
}
