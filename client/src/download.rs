//! Offloaded answers over HTTP(S) (see [`assetsync_protocol::offload`]): one response at a time,
//! read in pieces, resumed with a `Range` request where the engine says.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

/// A failed fetch, as the engine's [`assetsync_protocol::engine::Input::DownloadFailed`] wants it.
pub(crate) struct Failure {
    pub why: String,
    pub transient: bool,
}

/// The HTTP client (connections kept alive across answers) and the response being read.
pub(crate) struct Downloads {
    client: reqwest::Client,
    response: Option<reqwest::Response>,
    /// Bytes still to drop from the response: it ignored the `Range` asked for.
    skip: u64,
}

impl Downloads {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A stalled body is a cut: the engine resumes it from the bytes received.
            .read_timeout(Duration::from_secs(30))
            .build()
            .expect("a TLS backend is built in");
        Downloads { client, response: None, skip: 0 }
    }

    /// Starts fetching `url` from byte `from`; the first piece of its body.
    pub async fn start(&mut self, url: &str, from: u64) -> Result<Vec<u8>, Failure> {
        self.response = None;
        let mut request = self.client.get(url);
        if from > 0 {
            request = request.header(RANGE, format!("bytes={from}-"));
        }
        let response = request.send().await.map_err(|e| transient(url, &e))?;
        let status = response.status();
        self.skip = match status {
            StatusCode::OK => from,
            StatusCode::PARTIAL_CONTENT => {
                let range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                match range.is_some_and(|r| r.starts_with(&format!("bytes {from}-"))) {
                    true => 0,
                    false => {
                        let why = format!("{url} answered bytes {range:?} to a request from byte {from}");
                        return Err(Failure { why, transient: false });
                    }
                }
            }
            status => {
                let transient = assetsync_protocol::offload::transient(status.as_u16());
                return Err(Failure { why: format!("{url} answered HTTP {status}"), transient });
            }
        };
        self.response = Some(response);
        self.next().await
    }

    /// The next piece of the body; empty at its end.
    pub async fn next(&mut self) -> Result<Vec<u8>, Failure> {
        let Some(response) = &mut self.response else { return Ok(Vec::new()) };
        loop {
            let url = response.url().to_string();
            let Some(piece) = response.chunk().await.map_err(|e| transient(&url, &e))? else {
                self.response = None;
                return Ok(Vec::new());
            };
            let skipped = self.skip.min(piece.len() as u64);
            self.skip -= skipped;
            if skipped < piece.len() as u64 {
                return Ok(piece[skipped as usize..].to_vec());
            }
        }
    }
}

fn transient(url: &str, e: &reqwest::Error) -> Failure {
    // The chain says why (refused, reset, timed out), not only that the request failed.
    let mut why = format!("fetching {url} failed: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        why = format!("{why}: {inner}");
        source = inner.source();
    }
    Failure { why, transient: true }
}
