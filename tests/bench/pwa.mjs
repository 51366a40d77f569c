// PWA benchmark: an app served offline and online by assetsync's service worker, against the
// same app precached by a plain service worker with Cache Storage (what Workbox does), side by
// side in one run, in headless Chromium with persistent profiles.
//
//   scripts/build-web.sh && cargo build --release -p assetsync && node tests/bench/pwa.mjs
//
// The apps (APPS, default "demo,pdfjs"): the demo app (its bundle of real libraries, stylesheet
// and WASM client; the update is a rebuild), and a real multi-file build, pdfjs-dist's build/,
// web/ and wasm/ folders (fetched from the npm registry: FROM, default 6.4.299, then TO,
// default 6.5.438). A page loads the app's stylesheet and module with plain tags and compiles
// one of its .wasm files with compileStreaming. Each worker has its own server (same files, its
// own port: its own origin). Figures:
// - page load, offline and online-unchanged: time from navigation start to the app's module
//   script running (and to the .wasm compiled), the median of RUNS (default 7) loads in a fresh
//   tab each, alternating between the workers, after the first visit installed them;
// - the update: bytes on the wire. assetsync: the worker's update (WebSocket payloads both
//   ways). Cache Storage: what its new worker version downloads, as Workbox does, every file
//   whose revision changed, whole; measured as the bytes its install fetched (served
//   uncompressed here), and what gzip -6 would make of them (as a compressing CDN would send
//   them, computed with zlib on the same files).

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

/**
 * The apps: each `write(root, version)` puts one version of its files in `root`; the page loads
 * its stylesheet and module with plain tags, then compiles one of its `.wasm` files.
 */
const APPS = {
  pdfjs: {
    describe: () => `pdfjs-dist ${FROM} (build/, web/, wasm/)`,
    versions: [FROM, TO],
    css: "web/pdf_viewer.css",
    module: "build/pdf.min.mjs",
    wasm: "wasm/openjpeg.wasm",
    write(root, version) {
      const pkg = release(version);
      for (const folder of ["build", "web", "wasm"]) {
        rmSync(join(root, folder), { recursive: true, force: true });
        cpSync(join(pkg, folder), join(root, folder), { recursive: true });
      }
    },
  },
  // The demo's app: its bundle of real libraries (js/app.js, made as the demo server makes it)
  // and stylesheet, with the WASM client it ships. An update is a rebuild.
  demo: {
    describe: () => "the demo app (its 2.9 MB bundle, stylesheet and WASM client)",
    versions: [1, 2],
    css: "style.css",
    module: "js/app.js",
    wasm: "pkg/assetsync_bg.wasm",
    write(root, build) {
      cpSync(join(repo, "www/style.css"), join(root, "style.css"));
      mkdirSync(join(root, "js"), { recursive: true });
      const vendor = ["react.development.js", "react-dom.development.js", "lodash.js", "three.module.js"];
      const parts = [`/*! assetsync demo bundle, build ${build} */\n`];
      for (const name of vendor) parts.push(`\n// ---- vendor/${name}\n`, readFileSync(join(repo, "demo/js/vendor", name), "utf8"));
      const widgets = Array.from({ length: 40 }, (_, i) => `export function widget${i}(props) {\n  const label = "widget ${i} of build ${build}";\n  return { id: ${i * 7919 + build}, label, props, at: ${build * 1000 + i} };\n}\n`);
      parts.push(`\n// ---- app\nexport const BUILD = ${build};\nglobalThis.assetsyncDemo = { build: BUILD };\n`, ...widgets);
      writeFileSync(join(root, "js/app.js"), parts.join(""));
    },
  },
};

const page = (app) => `<!doctype html>
<meta charset="utf-8">
<title>PWA benchmark</title>
<link rel="stylesheet" href="${app.css}">
<script type="module" src="${app.module}"></script>
<script type="module">
  import "./${app.module}";
  window.firstScript = performance.now();
  await WebAssembly.compileStreaming(fetch("${app.wasm}"));
  window.appReady = performance.now();
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

/** Makes `root` the app at `version`: its files, the page, both workers. */
function writeApp(app, root, version) {
  app.write(root, version);
  writeFileSync(join(root, "index.html"), page(app));
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

async function variant(app, name) {
  const root = scratch(`assetsync-pwa-bench-${name}-`);
  const manifest = writeApp(app, root, app.versions[0]);
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
  const timing = await page.evaluate(() => ({ first: window.firstScript, ready: window.appReady }));
  await page.close();
  return timing;
}

/** One app measured: its page loads with each worker, then an update. */
async function measure(app) {
  const variants = [await variant(app, "assetsync"), await variant(app, "cache")];
  const results = {};
  for (const offline of [false, true]) {
    for (const v of variants) await v.context.setOffline(offline);
    const runs = Object.fromEntries(variants.map((v) => [v.name, []]));
    for (let i = 0; i < RUNS; i++) {
      for (const v of variants) runs[v.name].push(await load(v));
    }
    for (const v of variants) {
      const rs = runs[v.name];
      results[`${v.name} ${offline ? "offline" : "online"}`] = { first: median(rs.map((r) => r.first)), ready: median(rs.map((r) => r.ready)) };
    }
    for (const v of variants) await v.context.setOffline(false);
  }

  // The update: each variant's server gets the new version once its page is open (the
  // assetsync worker would otherwise find it in its check after the page load).
  const update = {};
  const [ours, theirs] = variants;
  const tab = await ours.context.newPage();
  await tab.goto(ours.url);
  await tab.evaluate(() => window.registered.then((handle) => handle.check()));
  const manifests = variants.map((v) => writeApp(app, v.root, app.versions[1]));
  update.assetsync = await tab.evaluate(async () => {
    const handle = await window.registered;
    const u = await handle.check();
    if (!u.changed) throw new Error("the worker found no new build");
    return { bytes: u.wireBytesIn + u.wireBytesOut, buildBytes: u.buildBytes };
  });
  await tab.close();
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
  const changed = manifests[1]
    .filter(([url, revision]) => before.get(url) !== revision)
    .map(([url]) => (url === "/" ? "index.html" : url.slice(1)));
  update.cacheGzip = changed.reduce((sum, f) => sum + gzipSync(readFileSync(join(theirs.root, f)), { level: 6 }).length, 0);
  for (const v of variants) {
    await v.context.close();
    await v.server.stop();
  }

  console.log(`\n${app.describe()}: ${ours.manifest.length} files with the page and the client, ${RUNS} loads each, medians`);
  console.log("| page load | assetsync worker | Cache Storage worker (Workbox-style) |");
  console.log("|---|---|---|");
  for (const mode of ["online", "offline"]) {
    const [a, c] = [results[`assetsync ${mode}`], results[`cache ${mode}`]];
    const label = mode === "online" ? "online, unchanged" : "offline";
    console.log(`| ${label}: first module script | ${a.first.toFixed(0)} ms | ${c.first.toFixed(0)} ms |`);
    console.log(`| ${label}: .wasm compiled | ${a.ready.toFixed(0)} ms | ${c.ready.toFixed(0)} ms |`);
  }
  console.log(`\nupdate ${app.versions[0]} -> ${app.versions[1]}: ${changed.length} files changed or added`);
  console.log("| update | bytes on the wire |");
  console.log("|---|---|");
  console.log(`| assetsync worker | ${kb(update.assetsync.bytes)} (build: ${kb(update.assetsync.buildBytes)}) |`);
  console.log(`| Cache Storage worker, whole changed files as served | ${kb(update.cache.bytes)} (${update.cache.files} files) |`);
  console.log(`| the same files gzip -6 (a compressing CDN) | ${kb(update.cacheGzip)} |`);
  console.log(JSON.stringify({ app: app.describe(), results, update }));
}

for (const name of (process.env.APPS || "demo,pdfjs").split(",")) await measure(APPS[name]);
