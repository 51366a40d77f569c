// assetsync's service worker module: serves a folder's kept builds to the pages of its scope,
// synced in the background by the WASM client built with its `worker` feature (see AssetWorker
// in assetsync-sw.d.ts for what is served and when). This file only wires the service worker's
// events to it.

import init, { AssetWorker } from "./assetsync-sw.js";

/** How long a live worker waits after a pushed change for more before it makes a build. */
const SETTLE_MS = 150;
/** The WASM client's binary, kept in Cache Storage so that the worker starts offline. */
const RUNTIME_CACHE = "assetsync-runtime";
const wasmUrl = new URL("./assetsync-sw_bg.wasm", import.meta.url).href;

/**
 * Serves `options.folder` of the server at `options.url` under `options.base` (default: the
 * worker's scope), and keeps it up to date. Call it once, at the top level of the service worker.
 */
export function serveAssets(options) {
  if (!options || typeof options.url !== "string") {
    throw new TypeError('serveAssets needs { url: "wss://host/sync" }: the assetsync server\'s sync URL');
  }
  const base = new URL(options.base ?? "./", self.registration.scope).href;
  const { db, token, update, navigateFallback } = options;
  const settings = { folder: options.folder ?? "", base, db, token, update, navigateFallback };
  const checkOnLoad = options.checkOnLoad ?? true;
  let opening = null;
  const worker = () =>
    (opening ??= start(options.url, settings).catch((e) => {
      opening = null;
      throw e;
    }));
  let checking = null;
  /** Syncs the folder (once at a time) and tells the pages when a new build is ready. */
  const check = () =>
    (checking ??= worker()
      .then((w) => w.update())
      .then(async (update) => {
        if (update.changed) await tell({ type: "assetsync:update", update });
        return update;
      })
      .catch(async (e) => {
        await tell({ type: "assetsync:update-failed", error: String(e?.message ?? e) });
        throw e;
      })
      .finally(() => (checking = null)));
  // Live push (for dev servers): the worker follows the folder while it runs, and pages that
  // are open ping it so that the browser keeps it running.
  let following = null;
  let followed = false;
  const follow = () =>
    options.live
      ? (following ??= worker()
          .then((w) => w.follow(() => scheduleCheck()))
          .then(() => (followed = true))
          .then(check)
          .catch((e) => {
            following = null;
            throw e;
          }))
      : Promise.resolve();
  let scheduled = null;
  /** Changes come in bursts (a rebuild writes several files): one check after they settle. */
  const scheduleCheck = () => {
    clearTimeout(scheduled);
    scheduled = setTimeout(() => quietly(check()), SETTLE_MS);
  };
  const prune = async () => {
    const open = await self.clients.matchAll({ includeUncontrolled: true, type: "all" });
    return (await worker()).prune(open.map((c) => c.id));
  };
  const quietly = (promise) => promise.catch((e) => console.warn("assetsync:", e?.message ?? e));

  self.addEventListener("install", (event) => {
    // A new version of this module takes over at once: the builds are kept in the store, and
    // which page has which build with them, so pages stay consistent across the switch.
    self.skipWaiting();
    event.waitUntil(
      refreshRuntime()
        .then(worker)
        .then((w) => (w.ready ? undefined : quietly(check()))),
    );
  });
  self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
  self.addEventListener("fetch", (event) => {
    const { request } = event;
    if ((request.method !== "GET" && request.method !== "HEAD") || !request.url.startsWith(base)) return;
    event.respondWith(answer(event));
  });
  self.addEventListener("message", (event) => {
    const { data, source } = event;
    const reply = (message) => (event.ports[0] ?? source)?.postMessage(message);
    if (data?.type === "assetsync:status") {
      event.waitUntil(
        worker()
          .then((w) => reply({ type: "assetsync:status", build: source ? w.buildOf(source.id) ?? null : null, ready: w.ready ?? null, live: !!options.live, following: followed }))
          .catch((e) => reply({ type: "assetsync:status", error: String(e?.message ?? e) })),
      );
    } else if (data?.type === "assetsync:ping") {
      event.waitUntil(quietly(follow()));
    } else if (data?.type === "assetsync:check") {
      event.waitUntil(
        check()
          .then((update) => reply({ type: "assetsync:checked", update }))
          .catch((e) => reply({ type: "assetsync:checked", error: String(e?.message ?? e) })),
      );
    }
  });

  async function answer(event) {
    try {
      const w = await worker();
      const response = await w.respond(event.request, event.clientId, event.resultingClientId ?? "");
      if (event.request.mode === "navigate") {
        event.waitUntil(quietly((checkOnLoad ? check() : Promise.resolve()).then(prune)));
        event.waitUntil(quietly(follow()));
      }
      if (response) return response;
    } catch (e) {
      console.warn("assetsync: answering from the network:", e?.message ?? e);
    }
    return fetch(event.request);
  }
}

async function start(url, settings) {
  await init({ module_or_path: runtime() });
  return AssetWorker.open(url, settings);
}

async function runtime() {
  const cache = await caches.open(RUNTIME_CACHE);
  const kept = await cache.match(wasmUrl);
  if (kept) return kept;
  await refreshRuntime();
  return (await cache.match(wasmUrl)) ?? fetch(wasmUrl);
}

/** Fetches this version's WASM binary into the runtime cache (on install: the module changed). */
async function refreshRuntime() {
  const response = await fetch(wasmUrl, { cache: "no-cache" });
  if (!response.ok) throw new Error(`cannot fetch ${wasmUrl}: HTTP ${response.status}`);
  await (await caches.open(RUNTIME_CACHE)).put(wasmUrl, response);
}

async function tell(message) {
  const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const page of pages) page.postMessage(message);
}
