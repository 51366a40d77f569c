//! The service worker side: a folder synced in the background and kept as builds, whose files
//! answer the pages' ordinary requests (`<script>`, `<link>`, `fetch()`, `.wasm`).
//!
//! Each page is served the build that was ready when it loaded, until it loads again ("new
//! build on next load"), or moved to each new build as soon as it is ready (`update: "now"`):
//! never files of two builds. Which page has which build is kept in the store, so a worker the
//! browser stopped and started again serves the same. A build is a state a folder sync
//! committed whole, so one that has not finished syncing is never served. `sw.js` in the npm
//! package wires this to the service worker's events.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use assetsync_protocol::{AssetPath, Scope, VersionId};
use futures_util::lock::Mutex;
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{Blob, Headers, Request, RequestMode, Response, ResponseInit};

use crate::folder::FolderOutcome;
use crate::store::{Build, Entry, Serving, Store};
use crate::{Client, js_error};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options for `AssetWorker.open`. */
export interface WorkerOptions {
  /** The folder to keep ("dist/", or "" for everything the server has). */
  folder: string;
  /** The absolute URL the folder's files are requested under: `${base}app.js` is the file
   *  `app.js` of the folder. */
  base: string;
  /** IndexedDB database name (default "assetsync"). */
  db?: string;
  /** The server's shared secret, for a server started with `--token-file`. */
  token?: string;
  /** "next-load" (default): a page keeps the build it loaded on until it reloads. "now": open
   *  pages are served each new build as soon as it is ready. */
  update?: "next-load" | "now";
  /** The file (in the folder) that answers navigations to paths the build lacks: a
   *  single-page app's routes, such as "index.html". Default: none (they go to the network). */
  navigateFallback?: string;
}
/** What `AssetWorker.update` did. */
export interface BuildUpdate {
  /** The ready build's id (hex): the folder version it was synced at. */
  build: string;
  /** The build ready before, if it differs (null on the first sync or when nothing changed). */
  previous: string | null;
  /** Whether a new build became ready. */
  changed: boolean;
  /** Files in the build, and their bytes. */
  files: number;
  buildBytes: number;
  /** The files new or changed since the previous build, and the files it no longer has. */
  fetched: string[];
  removed: string[];
  /** Message payload bytes since the previous update (a live worker's pushed changes
   *  included). */
  wireBytesIn: number;
  wireBytesOut: number;
  /** Body bytes of answers fetched over HTTP (the server's `--offload-url`). */
  httpBytesIn: number;
  elapsedMs: number;
}
/** What `AssetWorker.prune` freed. */
export interface PruneReport {
  /** Builds no open page uses any more, dropped. */
  buildsDropped: number;
  /** Then freed by a GC of the store. */
  bytesFreed: number;
}
"#;

/// How many times an update syncs a folder that keeps changing before it gives up.
const KEEP_TRIES: u32 = 3;

/// A folder served from kept builds, for a service worker.
#[wasm_bindgen]
pub struct AssetWorker {
    client: Rc<Client>,
    folder: Scope,
    base: String,
    take_over: bool,
    serving: RefCell<Serving>,
    /// Builds read from the store, by id.
    builds: RefCell<HashMap<VersionId, Rc<Build>>>,
    /// The bytes of their files, by id.
    sizes: RefCell<HashMap<VersionId, u64>>,
    /// Versions whose stored file was checked against its SHA-256 by this worker.
    verified: RefCell<HashSet<VersionId>>,
    /// Assets found damaged and being fetched again (once at a time).
    repairing: Rc<RefCell<HashSet<AssetPath>>>,
    /// The file that answers a navigation to a path the build lacks (a single-page app's
    /// routes), if any.
    fallback: Option<AssetPath>,
    /// Held by an update, and by a prune (whose GC must not run beside a sync).
    busy: Mutex<()>,
    /// The client's wire byte counts (in, out) at the end of the last update.
    wire_mark: Cell<(u64, u64, u64)>,
}

#[wasm_bindgen]
impl AssetWorker {
    /// Opens the store for `url`'s folder (no connection yet: the first `update` makes it, and
    /// kept builds are served offline).
    pub async fn open(
        url: String,
        #[wasm_bindgen(unchecked_param_type = "WorkerOptions")] options: Object,
    ) -> Result<AssetWorker, JsError> {
        let option = |name: &str| Reflect::get(&options, &name.into()).ok().and_then(|v| v.as_string());
        let folder = Scope::new(&option("folder").unwrap_or_default()).map_err(js_error)?;
        if let Scope::Asset(_) = folder {
            return Err(js_error(format!(
                "folder {:?} is not a folder: end it with '/'",
                folder.to_string()
            )));
        }
        let base = option("base")
            .ok_or_else(|| js_error("options.base is required: the URL the folder is served under"))?;
        let take_over = match option("update").as_deref() {
            None | Some("next-load") => false,
            Some("now") => true,
            Some(other) => {
                return Err(js_error(format!("options.update is {other:?}: use \"next-load\" or \"now\"")));
            }
        };
        let fallback = match option("navigateFallback") {
            Some(path) => Some(
                AssetPath::new(&format!("{folder}{path}"))
                    .map_err(|e| js_error(format!("options.navigateFallback {path:?}: {e}")))?,
            ),
            None => None,
        };
        let client = Client::open(url, Some(options), false).await?.0;
        let serving = client.store.serving(&folder).await?;
        Ok(AssetWorker {
            client: Rc::new(client),
            folder,
            base,
            take_over,
            serving: RefCell::new(serving),
            builds: RefCell::default(),
            sizes: RefCell::default(),
            verified: RefCell::default(),
            repairing: Rc::default(),
            fallback,
            busy: Mutex::new(()),
            wire_mark: Cell::new((0, 0, 0)),
        })
    }

    /// The ready build's id (hex), if a build has been synced.
    #[wasm_bindgen(getter)]
    pub fn ready(&self) -> Option<String> {
        self.serving.borrow().ready.map(|b| b.to_hex())
    }

    /// The build the page `client` (a client id) is served, if any.
    #[wasm_bindgen(js_name = buildOf)]
    pub fn build_of(&self, client: &str) -> Option<String> {
        let serving = self.serving.borrow();
        serving.pages.iter().find(|p| p.0 == client).map(|p| p.1.to_hex())
    }

    /// Syncs the folder (one small round trip when nothing changed) and, if it changed, keeps
    /// the result as a new build and makes it ready. On failure (offline, storage full) the
    /// ready build stays and goes on being served.
    #[wasm_bindgen(unchecked_return_type = "BuildUpdate")]
    pub async fn update(&self) -> Result<JsValue, JsError> {
        self.client.usable()?;
        let _busy = self.busy.lock().await;
        let mut outcome = self.client.sync_folder(&self.folder).await?;
        // The same folder version is the same build: an unchanged folder's is the ready one,
        // kept already, and the index need not be read again.
        let ready = self.serving.borrow().ready.filter(|id| *id == outcome.version);
        let build = match ready {
            Some(id) => self.build_by_id(id).await?,
            None => None,
        };
        let build = match build {
            Some(build) => build,
            None => Rc::new(self.keep_synced(&mut outcome).await?),
        };
        let mut serving = self.serving.borrow().clone();
        let previous = serving.ready.filter(|b| *b != build.id);
        let changed = serving.make_ready(build.id, self.take_over);
        if changed {
            self.client.store.set_serving(&self.folder, &serving).await?;
            *self.serving.borrow_mut() = serving;
        }
        let build_bytes = self.build_bytes(&build).await?;
        let out = outcome.to_js(&self.folder);
        let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).expect("set on a plain object");
        // What changed since the previous build, pushed changes included (a live worker's
        // client commits them before this sync).
        let before = match previous {
            Some(id) => self.build_by_id(id).await?,
            None => None,
        };
        if let Some(before) = before {
            let (fetched, removed) = differences(&before, &build);
            set("fetched", fetched.into_iter().map(JsValue::from).collect::<js_sys::Array>().into());
            set("removed", removed.into_iter().map(JsValue::from).collect::<js_sys::Array>().into());
        }
        let wire = (self.client.received.get(), self.client.sent.get(), self.client.downloaded.get());
        let mark = self.wire_mark.replace(wire);
        set("wireBytesIn", ((wire.0 - mark.0) as f64).into());
        set("wireBytesOut", ((wire.1 - mark.1) as f64).into());
        set("httpBytesIn", ((wire.2 - mark.2) as f64).into());
        set("build", build.id.to_hex().into());
        set("previous", previous.map(|b| b.to_hex()).into());
        set("changed", changed.into());
        set("buildBytes", (build_bytes as f64).into());
        self.builds.borrow_mut().insert(build.id, build);
        Ok(out)
    }

    /// Answers `request` from the build of the page that made it (`client`), or of the page it
    /// loads (`resulting`, for a navigation): a `Response` with the file's `Content-Type`,
    /// `Content-Length` and an `ETag` of its version, `206` for a `Range`, `304` for a matching
    /// `If-None-Match`. `undefined` when the request is for the network: not a GET or HEAD,
    /// outside the folder, not in the build, no build ready yet, or a stored copy that fails
    /// its check (it is fetched again meanwhile).
    pub async fn respond(
        &self,
        request: Request,
        client: String,
        resulting: String,
    ) -> Result<Option<Response>, JsError> {
        let head = match request.method().as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => return Ok(None),
        };
        let Some(asset) = self.asset_of(&request.url()) else { return Ok(None) };
        let navigation = request.mode() == RequestMode::Navigate;
        let page = if navigation && !resulting.is_empty() { resulting } else { client };
        let Some(build) = self.build_for(&page, navigation).await? else { return Ok(None) };
        let found = build.files.get(asset.as_str()).copied().map(|e| (asset.clone(), e));
        let fallback = || {
            let path = self.fallback.as_ref().filter(|_| navigation)?;
            Some((path.clone(), *build.files.get(path.as_str())?))
        };
        let Some((asset, entry)) = found.or_else(fallback) else { return Ok(None) };
        let Some(blob) = self.checked_file(&asset, &entry).await? else { return Ok(None) };
        let headers = request.headers();
        let etag = format!("\"{}\"", entry.version.to_hex());
        let len = blob.size() as u64;
        let out = Headers::new().map_err(|e| js_error(crate::socket::describe(&e)))?;
        let set = |k: &str, v: &str| out.set(k, v).expect("a valid header");
        set("Content-Type", content_type(asset.as_str()));
        set("ETag", &etag);
        set("Accept-Ranges", "bytes");
        let init = ResponseInit::new();
        let mut body = Some(blob);
        if headers
            .get("If-None-Match")
            .ok()
            .flatten()
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag))
        {
            init.set_status(304);
            body = None;
        } else {
            match headers.get("Range").ok().flatten().map(|r| byte_range(&r, len)) {
                None | Some(Err(Unsatisfiable::Ignored)) => set("Content-Length", &len.to_string()),
                Some(Ok((start, end))) => {
                    init.set_status(206);
                    set("Content-Range", &format!("bytes {start}-{}/{len}", end - 1));
                    set("Content-Length", &(end - start).to_string());
                    body = body.map(|b| {
                        b.slice_with_f64_and_f64(start as f64, end as f64).expect("slice of a Blob")
                    });
                }
                Some(Err(Unsatisfiable::Range)) => {
                    init.set_status(416);
                    set("Content-Range", &format!("bytes */{len}"));
                    body = None;
                }
            }
        }
        if head {
            body = None;
        }
        init.set_headers(&out);
        Ok(Some(
            Response::new_with_opt_blob_and_init(body.as_ref(), &init)
                .map_err(|e| js_error(crate::socket::describe(&e)))?,
        ))
    }

    /// Forgets the pages that are gone (`open`: the client ids the browser lists), drops the
    /// builds no page uses and that are not ready, and collects their files.
    #[wasm_bindgen(unchecked_return_type = "PruneReport")]
    pub async fn prune(&self, open: Vec<String>) -> Result<JsValue, JsError> {
        let _busy = self.busy.lock().await;
        let mut serving = self.serving.borrow().clone();
        if serving.prune(&open.into_iter().collect(), js_sys::Date::now()) {
            self.client.store.set_serving(&self.folder, &serving).await?;
            *self.serving.borrow_mut() = serving.clone();
        }
        let keep = serving.builds();
        self.builds.borrow_mut().retain(|id, _| keep.contains(id));
        self.sizes.borrow_mut().retain(|id, _| keep.contains(id));
        let dropped = self.client.store.drop_builds(&self.folder, &keep).await?;
        let freed = match dropped {
            0 => 0,
            _ => self.client.store.gc().await?.bytes_freed,
        };
        let out = Object::new();
        Reflect::set(&out, &"buildsDropped".into(), &dropped.into()).expect("plain object");
        Reflect::set(&out, &"bytesFreed".into(), &(freed as f64).into()).expect("plain object");
        Ok(out.into())
    }

    /// Follows the folder (for dev servers): the server pushes each change, the client syncs
    /// and commits it, then calls `on_change(update)`; the next `update` keeps the result as a
    /// build. Resolves once the server confirmed the subscription; if the connection drops,
    /// the client reconnects and catches up by itself.
    pub async fn follow(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(u: AssetUpdate) => void")] on_change: Function,
    ) -> Result<(), JsError> {
        self.client.usable()?;
        self.client.subscribe(self.folder.to_string(), on_change).await
    }

    /// Closes the connection and the store.
    pub fn close(&self) {
        self.client.close();
    }
}

impl AssetWorker {
    /// The asset a URL under `base` names: its path inside the folder, without the query
    /// (cache-busting parameters name the same file) or fragment, percent-decoded; a path
    /// ending in `/` names its `index.html`.
    fn asset_of(&self, url: &str) -> Option<AssetPath> {
        let rest = url.strip_prefix(&self.base)?;
        let path = rest.split(['?', '#']).next().unwrap_or_default();
        let path = js_sys::decode_uri_component(path).ok()?.as_string()?;
        let index = if path.is_empty() || path.ends_with('/') { "index.html" } else { "" };
        let asset = AssetPath::new(&format!("{}{path}{index}", self.folder)).ok()?;
        self.folder.covers(&asset).then_some(asset)
    }

    /// The build `page` is served: on a navigation the ready one, else the one it loaded on.
    async fn build_for(&self, page: &str, navigation: bool) -> Result<Option<Rc<Build>>, JsError> {
        let now = js_sys::Date::now();
        let (id, assigned) = {
            let mut serving = self.serving.borrow_mut();
            if navigation { serving.load(page, now) } else { serving.page(page, now) }
        };
        if assigned {
            let serving = self.serving.borrow().clone();
            self.client.store.set_serving(&self.folder, &serving).await?;
        }
        match id {
            Some(id) => self.build_by_id(id).await,
            None => Ok(None),
        }
    }

    /// Keeps what the folder sync `outcome` committed as a build. A pushed change committed
    /// between the sync and keeping its result would make a build of two states: then the
    /// folder is synced again (`outcome` is then the last sync's).
    async fn keep_synced(&self, outcome: &mut FolderOutcome) -> Result<Build, JsError> {
        for tries in 1..=KEEP_TRIES {
            if let Some(build) = self.client.store.keep_build(&self.folder, &outcome.version).await? {
                return Ok(build);
            }
            if tries < KEEP_TRIES {
                *outcome = self.client.sync_folder(&self.folder).await?;
            }
        }
        Err(js_error("the folder kept changing while it was being synced; try again"))
    }

    /// The bytes of a build's files, from their manifests the first time.
    async fn build_bytes(&self, build: &Build) -> Result<u64, JsError> {
        if let Some(bytes) = self.sizes.borrow().get(&build.id) {
            return Ok(*bytes);
        }
        let versions: Vec<VersionId> = build.files.values().map(|e| e.version).collect();
        let bytes = self.client.store.manifests(&versions).await?.iter().map(|m| m.len).sum();
        self.sizes.borrow_mut().insert(build.id, bytes);
        Ok(bytes)
    }

    /// The kept build `id`, read from the store the first time.
    async fn build_by_id(&self, id: VersionId) -> Result<Option<Rc<Build>>, JsError> {
        if let Some(build) = self.builds.borrow().get(&id) {
            return Ok(Some(Rc::clone(build)));
        }
        let Some(build) = self.client.store.build(&self.folder, &id).await? else { return Ok(None) };
        let build = Rc::new(build);
        self.builds.borrow_mut().insert(id, Rc::clone(&build));
        Ok(Some(build))
    }

    /// The stored file of `entry`, checked against its manifest's SHA-256 the first time this
    /// worker serves it. A missing or damaged one is `None`, and is fetched again in the
    /// background (then the builds that hold it point at the repaired copy).
    async fn checked_file(&self, asset: &AssetPath, entry: &Entry) -> Result<Option<Blob>, JsError> {
        let stored = self.client.store.build_file(entry).await?;
        if let Some((manifest, blob)) = stored
            && (self.verified.borrow().contains(&entry.version)
                || Store::check(&manifest, Some(blob.clone())).await?.is_ok())
        {
            self.verified.borrow_mut().insert(entry.version);
            return Ok(Some(blob));
        }
        self.verified.borrow_mut().remove(&entry.version);
        if self.repairing.borrow_mut().insert(asset.clone()) {
            let (client, asset, repairing) =
                (Rc::clone(&self.client), asset.clone(), Rc::clone(&self.repairing));
            // What the client remembers of the file would make the sync find it unchanged
            // without reading the damaged copy.
            client.remembered.borrow_mut().remove(&asset);
            wasm_bindgen_futures::spawn_local(async move {
                if client.sync(asset.as_str().to_owned(), None).await.is_ok() {
                    let _ = client.store.repair_builds(&asset).await;
                }
                repairing.borrow_mut().remove(&asset);
            });
        }
        Ok(None)
    }
}

/// The files of `after` that are new or changed since `before`, and those it no longer has.
fn differences(before: &Build, after: &Build) -> (Vec<String>, Vec<String>) {
    let changed =
        after.files.iter().filter(|(path, e)| before.files.get(*path).map(|b| b.version) != Some(e.version));
    let gone = before.files.keys().filter(|path| !after.files.contains_key(*path));
    (changed.map(|(path, _)| path.clone()).collect(), gone.cloned().collect())
}

/// Why a `Range` header is not answered with `206`.
enum Unsatisfiable {
    /// Not a single byte range this answers (several ranges, another unit): the whole file.
    Ignored,
    /// A range past the end: `416`.
    Range,
}

/// The byte range `[start, end)` a `Range: bytes=...` header asks of a file of `len` bytes.
fn byte_range(header: &str, len: u64) -> Result<(u64, u64), Unsatisfiable> {
    let spec = header.trim().strip_prefix("bytes=").ok_or(Unsatisfiable::Ignored)?;
    if spec.contains(',') {
        return Err(Unsatisfiable::Ignored);
    }
    let (first, last) = spec.split_once('-').ok_or(Unsatisfiable::Ignored)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| Unsatisfiable::Ignored);
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // The last n bytes.
        (true, false) => (len.saturating_sub(number(last)?), len),
        (false, true) => (number(first)?, len),
        (false, false) => (number(first)?, number(last)?.saturating_add(1).min(len)),
        (true, true) => return Err(Unsatisfiable::Ignored),
    };
    if start >= len || start >= end {
        return Err(if start >= len { Unsatisfiable::Range } else { Unsatisfiable::Ignored });
    }
    Ok((start, end))
}

/// The `Content-Type` of a web asset, by its extension. The types a build folder holds,
/// rather than a full table (`mime_guess`'s would add about 10 KB to the `.wasm` every page
/// loads); others are `application/octet-stream`.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::*;

    #[wasm_bindgen_test]
    fn a_range_header_is_read_as_http_says() {
        let ok = |h: &str| byte_range(h, 1000).ok();
        assert_eq!(ok("bytes=0-99"), Some((0, 100)));
        assert_eq!(ok("bytes=500-"), Some((500, 1000)));
        assert_eq!(ok("bytes=-100"), Some((900, 1000)));
        assert_eq!(ok("bytes=-5000"), Some((0, 1000)), "a suffix longer than the file is all of it");
        assert_eq!(ok("bytes=900-5000"), Some((900, 1000)), "an end past the file is its end");
        assert!(matches!(byte_range("bytes=1000-", 1000), Err(Unsatisfiable::Range)));
        for ignored in ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=-", "bytes=a-b"] {
            assert!(matches!(byte_range(ignored, 1000), Err(Unsatisfiable::Ignored)), "{ignored}");
        }
    }

    #[wasm_bindgen_test]
    fn web_assets_get_the_types_browsers_require() {
        assert_eq!(content_type("pkg/app_bg.WASM"), "application/wasm");
        assert_eq!(content_type("js/app.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
