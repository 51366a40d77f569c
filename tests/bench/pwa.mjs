// PWA benchmark: a real app's build folder served offline and online by assetsync's service
// worker, against the same app precached by a plain service worker with Cache Storage (what
// Workbox does), side by side in one run, in headless Chromium with persistent profiles.
//
//   scripts/build-web.sh && cargo build --release -p assetsync && node tests/bench/pwa.mjs
//
// The app: pdfjs-dist's build/, web/ and wasm/ folders (fetched from the npm registry:
// FROM, default 6.4.299, then TO, default 6.5.438), under a page that loads the library's
// stylesheet and module with plain tags and compiles one of its .wasm files with
// compileStreaming. Each variant has its own server (same files, its own port: its own origin).
// Figures:
// - page load, offline and online-unchanged: time from navigation start to the app's first
//   module script running (and to the .wasm compiled), the median of RUNS (default 7) loads in
//   a fresh tab each, after the first visit has installed the worker;
// - an update from FROM to TO: bytes on the wire. assetsync: the worker's update (WebSocket
//   payloads both ways). Cache Storage: what its new worker version downloads, as Workbox
//   does, every file whose revision changed, whole; measured as the bytes its install fetched
//   (served uncompressed here), and what gzip -6 would make of them (as a compressing CDN would
//   send them, computed with zlib on the same files).

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";
import { scratch, startServer, repo, launchPersistent } from "../browser/harness.mjs";

const bin = process.env.ASSETSYNC_BIN || join(repo, "target/release/assetsync");
process.env.ASSETSYNC_BIN = bin;
const FROM = process.env.FROM || "6.4.299";
const TO = process.env.TO || "6.5.438";
const RUNS = Number(process.env.RUNS || 7);
if (!existsSync(bin)) {
  console.error(`error: ${bin} is missing; run: cargo build --release -p assetsync`);
  process.exit(1);
}
if (!existsSync(join(repo, "www/pkg/sw.js"))) {
  console.error("error: www/pkg is missing; run: scripts/build-web.sh");
  process.exit(1);
}

/** pdfjs-dist@version unpacked (fetched from the npm registry once, kept in target/). */
function release(version) {
  const dir = join(repo, "target/pwa-bench", version);
  if (!existsSync(join(dir, "package"))) {
    mkdirSync(dir, { recursive: true });
    const tarball = execFileSync("npm", ["pack", `pdfjs-dist@${version}`, "--silent"], { cwd: dir }).toString().trim();
    execFileSync("tar", ["-xzf", tarball], { cwd: dir });
  }
  return join(dir, "package");
}

const APP_FOLDERS = ["build", "web", "wasm"];

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>PWA benchmark</title>
<link rel="stylesheet" href="web/pdf_viewer.css">
<script type="module" src="build/pdf.min.mjs"></script>
<script type="module">
  import * as pdfjs from "./build/pdf.min.mjs";
  window.firstScript = performance.now();
  await WebAssembly.compileStreaming(fetch("wasm/openjpeg.wasm"));
  window.appReady = performance.now();
  window.version = pdfjs.version;
</script>
<script type="module">
  const cache = new URLSearchParams(location.search).has("cache");
  window.registered = cache
    ? navigator.serviceWorker.register("/cache-sw.js")
    : import("/pkg/page.js").then((m) => m.registerAssets("/sw.js"));
</script>
`;

/** A plain precaching worker, Workbox's way: the manifest (URL and revision) is in the script,
 *  so a new build is a new worker; it fetches what changed, whole, and counts the bytes. */
function cacheWorker(manifest) {
  return `const MANIFEST = ${JSON.stringify(manifest)};
self.addEventListener("install", (event) => {
  self.skipWaiting();
  event.waitUntil((async () => {
    const cache = await caches.open("precache");
    const revisions = await caches.open("precache-revisions");
    let bytes = 0, files = 0;
    for (const [url, revision] of MANIFEST) {
      const known = await revisions.match(url);
      if (known && (await known.text()) === revision) continue;
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error(url + ": HTTP " + response.status);
      bytes += (await response.clone().arrayBuffer()).byteLength;
      files += 1;
      await cache.put(url, response);
      await revisions.put(url, new Response(revision));
    }
    await (await caches.open("precache-stats")).put("/stats", new Response(JSON.stringify({ bytes, files })));
  })());
});
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (event) => {
  if (event.request.method !== "GET") return;
  event.respondWith(caches.match(event.request, { ignoreSearch: true, cacheName: "precache" }).then((hit) => hit || fetch(event.request)));
});
`;
}

function files(dir, base = dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path, base) : [relative(base, path)];
  });
}

/** Makes `root` the app at `version`: its folders replaced, the page, both workers. */
function writeApp(root, version) {
  const pkg = release(version);
  for (const folder of APP_FOLDERS) {
    rmSync(join(root, folder), { recursive: true, force: true });
    cpSync(join(pkg, folder), join(root, folder), { recursive: true });
  }
  writeFileSync(join(root, "index.html"), PAGE);
  cpSync(join(repo, "www/pkg"), join(root, "pkg"), { recursive: true });
  writeFileSync(join(root, "sw.js"), `import { serveAssets } from "/pkg/sw.js";\nserveAssets({ url: location.origin.replace(/^http/, "ws") + "/sync" });\n`);
  const manifest = files(root)
    .filter((f) => f !== "cache-sw.js" && f !== "sw.js")
    .map((f) => ["/" + (f === "index.html" ? "" : f), createHash("sha256").update(readFileSync(join(root, f))).digest("hex").slice(0, 16)]);
  writeFileSync(join(root, "cache-sw.js"), cacheWorker(manifest));
  return manifest;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;

async function variant(name) {
  const root = scratch(`assetsync-pwa-bench-${name}-`);
  const manifest = writeApp(root, FROM);
  const server = await startServer({ root, www: root });
  const context = await launchPersistent(scratch(`assetsync-pwa-profile-${name}-`));
  const url = server.url + (name === "cache" ? "/?cache" : "/");
  const page = await context.newPage();
  await page.goto(url);
  // The first visit: the worker installs and keeps the build.
  await page.evaluate(async (cache) => {
    const registration = await window.registered;
    if (cache) {
      await navigator.serviceWorker.ready;
    } else if (!registration.ready) {
      await new Promise((ok) => registration.addEventListener("update", ok, { once: true }));
    }
    if (!navigator.serviceWorker.controller) {
      await new Promise((ok) => navigator.serviceWorker.addEventListener("controllerchange", ok, { once: true }));
    }
  }, name === "cache");
  await page.close();
  return { name, root, server, context, url, manifest };
}

/** One page load in a fresh tab: ms to the first module script and to the .wasm compiled. */
async function load(v) {
  const page = await v.context.newPage();
  await page.goto(v.url);
  await page.waitForFunction(() => window.appReady !== undefined, null, { timeout: 30_000 });
  const timing = await page.evaluate(() => ({ first: window.firstScript, ready: window.appReady, version: window.version }));
  await page.close();
  return timing;
}

const variants = [await variant("assetsync"), await variant("cache")];
const results = {};
for (const offline of [false, true]) {
  for (const v of variants) await v.context.setOffline(offline);
  const runs = Object.fromEntries(variants.map((v) => [v.name, []]));
  for (let i = 0; i < RUNS; i++) {
    for (const v of variants) runs[v.name].push(await load(v));
  }
  for (const v of variants) {
    const rs = runs[v.name];
    if (rs.some((r) => r.version !== rs[0].version)) throw new Error(`${v.name}: loads ran different versions`);
    results[`${v.name} ${offline ? "offline" : "online"}`] = { first: median(rs.map((r) => r.first)), ready: median(rs.map((r) => r.ready)) };
  }
  for (const v of variants) await v.context.setOffline(false);
}

// The update: every variant's server gets the new release.
const update = {};
for (const v of variants) writeApp(v.root, TO);
{
  const [ours, theirs] = variants;
  const page = await ours.context.newPage();
  await page.goto(ours.url);
  update.assetsync = await page.evaluate(async () => {
    const app = await window.registered;
    const u = await app.check();
    return { bytes: u.wireBytesIn + u.wireBytesOut, files: u.fetched.length + u.removed.length, buildBytes: u.buildBytes };
  });
  await page.close();
  const other = await theirs.context.newPage();
  await other.goto(theirs.url);
  update.cache = await other.evaluate(async () => {
    const registration = await navigator.serviceWorker.getRegistration();
    await registration.update();
    const installing = registration.installing;
    if (installing) await new Promise((ok) => installing.addEventListener("statechange", () => installing.state === "activated" && ok()));
    return JSON.parse(await (await caches.match("/stats", { cacheName: "precache-stats" })).text());
  });
  await other.close();
  // What a compressing CDN would send for the files the cache worker fetched.
  const before = new Map(theirs.manifest);
  const changed = files(theirs.root)
    .filter((f) => f !== "cache-sw.js" && f !== "sw.js")
    .filter((f) => {
      const revision = createHash("sha256").update(readFileSync(join(theirs.root, f))).digest("hex").slice(0, 16);
      return before.get("/" + (f === "index.html" ? "" : f)) !== revision;
    });
  update.cacheGzip = changed.reduce((sum, f) => sum + gzipSync(readFileSync(join(theirs.root, f)), { level: 6 }).length, 0);
  update.changedFiles = changed.length;
}

for (const v of variants) {
  await v.context.close();
  await v.server.stop();
}

const fileCount = variants[0].manifest.length;
console.log(`\npdfjs-dist ${FROM} (${APP_FOLDERS.join("/, ")}/: ${fileCount} files with the page and client), ${RUNS} loads each, medians`);
console.log("| page load | assetsync worker | Cache Storage worker (Workbox-style) |");
console.log("|---|---|---|");
for (const mode of ["online", "offline"]) {
  const a = results[`assetsync ${mode}`];
  const c = results[`cache ${mode}`];
  console.log(`| ${mode === "online" ? "online, unchanged" : "offline"}: first module script | ${a.first.toFixed(0)} ms | ${c.first.toFixed(0)} ms |`);
  console.log(`| ${mode === "online" ? "online, unchanged" : "offline"}: .wasm compiled | ${a.ready.toFixed(0)} ms | ${c.ready.toFixed(0)} ms |`);
}
console.log(`\nupdate ${FROM} -> ${TO}: ${update.changedFiles} files changed or added`);
console.log(`| update | bytes on the wire |`);
console.log("|---|---|");
console.log(`| assetsync worker | ${kb(update.assetsync.bytes)} (build: ${kb(update.assetsync.buildBytes)}) |`);
console.log(`| Cache Storage worker, whole changed files as served | ${kb(update.cache.bytes)} (${update.cache.files} files) |`);
console.log(`| the same files gzip -6 (a compressing CDN) | ${kb(update.cacheGzip)} |`);
console.log(JSON.stringify({ results, update }));
