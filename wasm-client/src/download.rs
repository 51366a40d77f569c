//! Offloaded answers over HTTP (see [`assetsync_protocol::offload`]): `fetch()` with a `Range`
//! header where the engine resumes, the body read in pieces from its stream.

use assetsync_protocol::offload;
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, RequestCache, RequestInit, Response};

use crate::global::Global;
use crate::socket::describe;

/// A failed fetch: why, and whether trying again may help.
pub(crate) type Failure = (String, bool);

/// The response being read.
#[derive(Default)]
pub(crate) struct Download {
    reader: Option<ReadableStreamDefaultReader>,
    /// Bytes still to drop: the response ignored the `Range` asked for.
    skip: u64,
}

impl Download {
    /// Starts fetching `url` from byte `from`; the first piece of its body.
    pub async fn start(&mut self, url: &str, from: u64) -> Result<Vec<u8>, Failure> {
        self.reader = None;
        let global = Global::get().ok_or(("no window or worker to fetch from".to_owned(), false))?;
        let init = RequestInit::new();
        // The chunks are kept in IndexedDB: the HTTP cache would hold them twice.
        init.set_cache(RequestCache::NoStore);
        if from > 0 {
            let headers = web_sys::Headers::new().map_err(|e| (describe(&e), false))?;
            headers.set("Range", &format!("bytes={from}-")).map_err(|e| (describe(&e), false))?;
            init.set_headers(&headers);
        }
        let response = JsFuture::from(global.fetch(url, &init))
            .await
            .map_err(|e| (format!("fetching {url} failed: {}", describe(&e)), true))?;
        let response: Response = response.unchecked_into();
        self.skip = match response.status() {
            200 => from,
            206 => {
                // Unreadable from another origin unless exposed (the server's CORS does).
                let range = response.headers().get("Content-Range").ok().flatten();
                if let Some(range) = range.filter(|r| !r.starts_with(&format!("bytes {from}-"))) {
                    return Err((
                        format!("{url} answered bytes {range} to a request from byte {from}"),
                        false,
                    ));
                }
                0
            }
            status => {
                return Err((format!("{url} answered HTTP {status}"), offload::transient(status)));
            }
        };
        let body = response.body().ok_or((format!("{url} answered without a body"), false))?;
        self.reader = Some(body.get_reader().unchecked_into());
        self.next().await
    }

    /// The next piece of the body; empty at its end.
    pub async fn next(&mut self) -> Result<Vec<u8>, Failure> {
        let Some(reader) = &self.reader else { return Ok(Vec::new()) };
        loop {
            let read = JsFuture::from(reader.read())
                .await
                .map_err(|e| (format!("the download broke: {}", describe(&e)), true))?;
            let field = |name: &str| Reflect::get(&read, &JsValue::from_str(name)).unwrap_or_default();
            if field("done").is_truthy() {
                self.reader = None;
                return Ok(Vec::new());
            }
            let piece = Uint8Array::new(&field("value"));
            let skipped = self.skip.min(piece.length() as u64);
            self.skip -= skipped;
            if skipped < piece.length() as u64 {
                return Ok(piece.subarray(skipped as u32, piece.length()).to_vec());
            }
        }
    }
}
