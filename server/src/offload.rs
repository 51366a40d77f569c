//! CDN offload (`--offload-url URL --offload-min BYTES`): an answer whose chunk frames are over
//! the threshold is put in an immutable object named by its SHA-256 (see
//! [`assetsync_protocol::offload`]), and a client that can fetch it over HTTP is told `URL/<name>`
//! instead of being sent the frames. The WebSocket then carries only the plan.
//!
//! Objects are files in the `offload/` folder of the version store (or a temporary folder
//! without one), at most [`Offload::new`]'s `max_bytes` of them, the oldest deleted first; and,
//! with a shared store, in its `offload/` too, so that every instance can serve every object.
//! This server serves them at `GET /offload/<name>`, the origin a CDN or caching proxy pulls
//! from: `Cache-Control: public, max-age=31536000, immutable`, `ETag` (its name), `Range`,
//! `If-None-Match`, and CORS for pages on other origins. An object this instance lacks is
//! fetched from the shared store and checked against its name first.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use assetsync_protocol::{Offloaded, offload};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tower_http::cors::{Any, CorsLayer};
use tower_http::services::ServeFile;

use crate::shared::Shared;

/// `--offload-url` and `--offload-min`.
#[derive(Clone, Debug)]
pub struct OffloadConfig {
    /// Where clients fetch objects: `URL/<name>`. An absolute `http(s)` URL (a CDN whose origin
    /// is this server's `/offload`, or the shared store's `offload/`), or a path on this server,
    /// such as `/offload`.
    pub url: String,
    /// Answers whose frames take fewer bytes go over the WebSocket.
    pub min_bytes: u64,
}

impl OffloadConfig {
    /// Checks the URL, so that a typo is an error at start-up, not a failed download later.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url = &self.url;
        let ok = url.starts_with('/') || url.starts_with("http://") || url.starts_with("https://");
        anyhow::ensure!(
            ok && !url.contains(['?', '#']),
            "--offload-url {url}: expected http(s)://HOST/PATH or a path on this server such as /offload"
        );
        Ok(())
    }
}

/// The offloaded objects this instance keeps, oldest first, and their bytes in all.
#[derive(Default)]
struct Kept {
    objects: VecDeque<(String, u64)>,
    bytes: u64,
}

/// Puts answers in objects and serves them.
pub struct Offload {
    url: String,
    min_bytes: u64,
    dir: PathBuf,
    /// The folder, when it is a temporary one.
    _temporary: Option<tempfile::TempDir>,
    max_bytes: u64,
    kept: Mutex<Kept>,
    shared: Option<Arc<Shared>>,
}

impl Offload {
    /// Keeps objects in `store_dir/offload`, or in a temporary folder without a version store.
    pub fn new(
        config: &OffloadConfig,
        store_dir: Option<&FsPath>,
        max_bytes: u64,
        shared: Option<Arc<Shared>>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let (dir, temporary) = match store_dir {
            Some(store) => (store.join("offload"), None),
            None => {
                let temporary = tempfile::Builder::new().prefix("assetsync-offload-").tempdir()?;
                (temporary.path().to_owned(), Some(temporary))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let kept = Mutex::new(scan(&dir)?);
        Ok(Offload {
            url: config.url.trim_end_matches('/').to_owned(),
            min_bytes: config.min_bytes,
            dir,
            _temporary: temporary,
            max_bytes,
            kept,
            shared,
        })
    }

    /// Whether an answer of `frame_bytes` goes in an object.
    pub fn wants(&self, frame_bytes: usize) -> bool {
        frame_bytes as u64 >= self.min_bytes
    }

    /// Keeps `body` as an object (here, and in the shared store); what to tell the client.
    /// `None` if it cannot be written: the answer then goes over the WebSocket.
    pub async fn put(&self, body: Vec<u8>) -> Option<Offloaded> {
        let name = offload::name(&body);
        let bytes = body.len() as u64;
        let body = Bytes::from(body);
        let path = self.dir.join(&name);
        if !path.exists() {
            let written = body.clone();
            let dir = self.dir.clone();
            let result = tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &written))
                .await
                .expect("offload write panicked");
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot keep an offloaded answer; sending it over the WebSocket");
                return None;
            }
            self.kept(&name, bytes);
        }
        if let Some(shared) = &self.shared {
            shared.put_offloaded(&name, body).await;
        }
        Some(Offloaded { url: format!("{}/{name}", self.url), bytes })
    }

    /// Counts a new object, deleting the oldest while there are too many bytes.
    fn kept(&self, name: &str, bytes: u64) {
        let mut kept = self.kept.lock().expect("poisoned");
        kept.objects.push_back((name.to_owned(), bytes));
        kept.bytes += bytes;
        while kept.bytes > self.max_bytes && kept.objects.len() > 1 {
            let (old, len) = kept.objects.pop_front().expect("more than one");
            kept.bytes -= len;
            let _ = std::fs::remove_file(self.dir.join(old));
        }
    }

    /// The file of the object `name`: kept here, or fetched from the shared store (checked
    /// against its name).
    async fn file(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        if path.exists() {
            return Some(path);
        }
        let body = self.shared.as_ref()?.offloaded(name).await?;
        let (dir, to, len) = (self.dir.clone(), path.clone(), body.len() as u64);
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &to, &body)).await;
        match written {
            Ok(Ok(())) => {
                self.kept(name, len);
                Some(path)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot keep an offloaded answer fetched from the shared store");
                None
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// The routes that serve the objects: `GET` and `HEAD /offload/<name>`.
pub fn routes(offload: Arc<Offload>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD])
        .allow_headers([header::RANGE, header::IF_NONE_MATCH])
        .expose_headers([header::CONTENT_RANGE, header::ETAG, header::CONTENT_LENGTH])
        .max_age(Duration::from_secs(86_400));
    Router::new().route("/offload/{name}", get(serve).layer(cors)).with_state(offload)
}

async fn serve(State(offload): State<Arc<Offload>>, Path(name): Path<String>, request: Request) -> Response {
    if !offload::is_name(&name) {
        return (StatusCode::NOT_FOUND, "not an offloaded answer's name\n").into_response();
    }
    let tag = format!("\"{name}\"");
    let etag = HeaderValue::from_str(&tag).expect("hex is a valid header");
    let immutable = |mut response: Response| {
        let headers = response.headers_mut();
        headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
        headers.insert(header::ETAG, etag.clone());
        response
    };
    let tag_of_name = tag.as_str();
    let matches = request.headers().get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|tag| tag.trim() == "*" || tag.trim() == tag_of_name))
    });
    if matches {
        return immutable(StatusCode::NOT_MODIFIED.into_response());
    }
    let Some(path) = offload.file(&name).await else {
        return (StatusCode::NOT_FOUND, "no such offloaded answer here (it was deleted: ask again)\n")
            .into_response();
    };
    match ServeFile::new(path).try_call(request).await {
        Ok(response) if response.status().is_success() => immutable(response.map(Body::new)),
        Ok(response) => response.map(Body::new),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the object: {e}\n")).into_response()
        }
    }
}

/// Writes `data` to `path` through a temporary file in `dir`, so no one reads half an object.
fn write_atomically(dir: &FsPath, path: &FsPath, data: &[u8]) -> std::io::Result<()> {
    let mut file = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    file.write_all(data)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The objects already in `dir` (from an earlier run), oldest first.
fn scan(dir: &FsPath) -> anyhow::Result<Kept> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if !offload::is_name(&name) || !meta.is_file() {
            // A temporary file a crash left behind.
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        found.push((meta.modified().ok(), name, meta.len()));
    }
    found.sort();
    let mut kept = Kept::default();
    for (_, name, len) in found {
        kept.objects.push_back((name, len));
        kept.bytes += len;
    }
    Ok(kept)
}
