// The demo's service worker: keeps every file the server serves (the page, its bundle, the
// WASM client) as builds in IndexedDB and answers the page's requests from them.
import { serveAssets } from "/pkg/sw.js";

serveAssets({ url: `${location.origin.replace(/^http/, "ws")}/sync`, db: "assetsync-demo" });
