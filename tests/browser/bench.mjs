// In-browser benchmark: `node tests/browser/bench.mjs` (after scripts/build-web.sh and a
// `cargo build --release -p assetsync`). Prints a Markdown table for BENCHMARKS.md.
//
// A 10 MB asset made of real published bundles, and a ~1% change of it. Headless Chromium with
// a persistent profile (as a user's browser has: IndexedDB and the HTTP cache on disk), against
// the release server on loopback. Every figure is end to end in a fresh page: from before
// `SyncClient.connect` to the asset's bytes in hand, the median of RUNS runs, taken side by side
// with the baselines (a plain `fetch()` over the network, and the same `fetch()` answered by the
// HTTP cache). The client comes from www/pkg, or from PKG=<dir> to measure another build.

import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { chromium } from "playwright-core";
import { startServer, browserArgs, repo } from "./harness.mjs";

process.env.ASSETSYNC_BIN ||= join(repo, "target/release/assetsync");
const pkg = process.env.PKG || join(repo, "www/pkg");
const RUNS = Number(process.env.RUNS || 7);

const vendor = ["react.development.js", "react-dom.development.js", "lodash.js", "three.module.js"]
  .map((f) => readFileSync(join(repo, "demo/js/vendor", f)));
function build(edit) {
  const parts = [];
  for (let copy = 0; parts.reduce((n, p) => n + p.length, 0) < 10_000_000; copy++) {
    for (const v of vendor) {
      let text = v.toString("latin1");
      // ~1% change: one renamed function per module copy, spread through the file, as a rebuild
      // that touches a dozen modules.
      if (edit) text = text.replace(/function (\w)/, (m, c) => `function ${c}_${edit}`);
      parts.push(Buffer.from(`\n/* module ${copy} */\n`), Buffer.from(text, "latin1"));
    }
  }
  return Buffer.concat(parts).subarray(0, 10_000_000);
}

const root = mkdtempSync(join(tmpdir(), "assetsync-bench-"));
const tmp = mkdtempSync(join(tmpdir(), "assetsync-bench-files-"));
const v1 = build(0);
const v2 = build(1);
writeFileSync(join(root, "big.js"), v1);
// zstd frames for the decoder measurement, made by the C library the server uses: the whole
// file, and the new version with the old one as prefix.
writeFileSync(join(tmp, "v1"), v1);
writeFileSync(join(tmp, "v2"), v2);
const zstd = (args) => execFileSync("zstd", ["-q", "-19", "--no-check", "-c", ...args], { maxBuffer: 1 << 30 });
const files = {
  "/index.html": ["<!doctype html><title>bench</title>", "no-cache"],
  "/big.js": [v1, "max-age=3600"],
  "/big2.js": [v2, "no-store"],
  "/big.zst": [zstd([join(tmp, "v1")]), "no-store"],
  "/patch.zst": [zstd([`--patch-from=${join(tmp, "v1")}`, join(tmp, "v2")]), "no-store"],
};
const types = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };
// The page and the baselines' file come from a plain HTTP server, which sets the caching.
const web = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  let body = files[path];
  if (!body && path.startsWith("/pkg/")) body = [readFileSync(join(pkg, normalize(path.slice(5)))), "no-cache"];
  if (!body) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": types[extname(path)] || "application/octet-stream", "cache-control": body[1] });
  res.end(body[0]);
});
await new Promise((ok) => web.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${web.address().port}`;

const server = await startServer({ root });
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "assetsync-profile-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: browserArgs,
});

/** Runs `body(ws)` in a fresh page with the client module loaded; returns its result and the
 *  longest main-thread task seen while it ran. */
async function inFreshPage(body, arg) {
  const page = await context.newPage();
  await page.goto(origin + "/index.html");
  await page.evaluate(async () => {
    window.m = await import("/pkg/assetsync.js");
    await window.m.default();
    window.longest = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.longest = Math.max(window.longest, e.duration);
    }).observe({ type: "longtask" });
  });
  const result = await page.evaluate(body, arg);
  await page.waitForTimeout(50); // let the observer report the last task
  result.longestTaskMs = await page.evaluate(() => window.longest);
  await page.close();
  return result;
}

const syncOnce = async ({ ws, db }) => {
  const t0 = performance.now();
  const client = await window.m.SyncClient.connect(ws, { db });
  const r = await client.sync("big.js");
  const bytes = r.bytes();
  const ms = performance.now() - t0;
  const stats = r.stats;
  r.free();
  client.close();
  return { ms, stats, size: bytes.length };
};
const fetchOnce = async (cache) => {
  const t0 = performance.now();
  const bytes = new Uint8Array(await (await fetch("/big.js", { cache })).arrayBuffer());
  const ms = performance.now() - t0;
  const [entry] = performance.getEntriesByName(new URL("/big.js", location.href).href);
  return { ms, size: bytes.length, fromCache: entry.transferSize === 0 };
};

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const rows = { fetch: [], cached: [], cold: [], same: [], update: [] };
await inFreshPage(fetchOnce, "default"); // primes the HTTP cache
let current = v1;
for (let i = 0; i < RUNS; i++) {
  rows.fetch.push(await inFreshPage(fetchOnce, "no-store"));
  rows.cached.push(await inFreshPage(fetchOnce, "default"));
  rows.cold.push(await inFreshPage(syncOnce, { ws: server.ws, db: `cold-${i}` }));
  // Unchanged, first sync of a new page (as after a reload).
  rows.same.push(await inFreshPage(syncOnce, { ws: server.ws, db: "cold-0" }));
  // The server's file changes (~1%), and a new page updates.
  current = current === v1 ? v2 : v1;
  writeFileSync(join(root, "big.js.tmp"), current);
  execFileSync("mv", [join(root, "big.js.tmp"), join(root, "big.js")]);
  await new Promise((ok) => setTimeout(ok, 300)); // the server's watcher indexes it
  rows.update.push(await inFreshPage(syncOnce, { ws: server.ws, db: "cold-0" }));
}
if (!rows.cached.every((r) => r.fromCache)) throw new Error("the HTTP-cache baseline did not come from the cache");
if (rows.fetch.some((r) => r.fromCache)) throw new Error("the fetch() baseline came from the cache");
if (rows.update.some((r) => r.stats.chunksReused === r.stats.chunks)) throw new Error("an update run found nothing changed");
if (rows.same.some((r) => r.stats.chunksReused !== r.stats.chunks)) throw new Error("an unchanged run fetched chunks");

const micro = await inFreshPage(async () => {
  const t = () => performance.now();
  const get = async (f) => new Uint8Array(await (await fetch(f)).arrayBuffer());
  const [old, whole, patch, next] = await Promise.all(["/big.js", "/big.zst", "/patch.zst", "/big2.js"].map(get));
  const best = async (f) => { let b = Infinity; for (let i = 0; i < 5; i++) { const s = t(); await f(); b = Math.min(b, t() - s); } return b; };
  return {
    size: old.length,
    sha2WasmMs: await best(() => m.sha256Hex(old)),
    subtleMs: await best(() => crypto.subtle.digest("SHA-256", old)),
    decodeWholeMs: await best(() => m.zstdDecompress(whole, undefined, old.length)),
    decodePatchMs: await best(() => m.zstdDecompress(patch, old, next.length)),
    decodeOk: m.sha256Hex(m.zstdDecompress(patch, old, next.length)) === m.sha256Hex(next),
    patchBytes: patch.length,
  };
});

await context.close();
await server.stop();
web.close();

const wasm = readFileSync(join(pkg, "assetsync_bg.wasm"));
const mb = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(0);
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
const ms = (xs) => `${median(xs.map((r) => r.ms)).toFixed(1)} ms`;
const ratio = (xs, base) => `${(median(xs.map((r) => r.ms)) / median(base.map((r) => r.ms))).toFixed(2)}x`;
const task = (xs) => `${Math.max(...xs.map((r) => r.longestTaskMs)).toFixed(0)} ms`;
const u = rows.update.at(-1).stats;
console.log(`## Browser client (${pkg}; headless Chromium, persistent profile, ${(v1.length / 1e6).toFixed(1)} MB asset, loopback, median of ${RUNS} fresh pages)\n`);
console.log("| case | time | vs fetch() | vs HTTP cache | longest main-thread task |");
console.log("|---|---:|---:|---:|---:|");
console.log(`| plain fetch() over the network | ${ms(rows.fetch)} | 1.00x | | ${task(rows.fetch)} |`);
console.log(`| fetch() from the HTTP cache (max-age) | ${ms(rows.cached)} | ${ratio(rows.cached, rows.fetch)} | 1.00x | ${task(rows.cached)} |`);
console.log(`| cold sync, empty store | ${ms(rows.cold)} | ${ratio(rows.cold, rows.fetch)} | | ${task(rows.cold)} |`);
console.log(`| unchanged asset, new page | ${ms(rows.same)} | ${ratio(rows.same, rows.fetch)} | ${ratio(rows.same, rows.cached)} | ${task(rows.same)} |`);
console.log(`| update, ~1% changed (${u.chunks - u.chunksReused} of ${u.chunks} chunks, ${kb(u.wireBytesIn)} in) | ${ms(rows.update)} | ${ratio(rows.update, rows.fetch)} | | ${task(rows.update)} |`);
console.log("");
console.log("| measurement | result |");
console.log("|---|---:|");
console.log(`| SHA-256 in WASM (sha2 crate), best of 5 | ${mb(micro.size, micro.sha2WasmMs)} MB/s |`);
console.log(`| SHA-256 with crypto.subtle.digest, best of 5 | ${mb(micro.size, micro.subtleMs)} MB/s |`);
if (!micro.decodeOk) throw new Error("the WASM decoder did not rebuild the new version");
console.log(`| zstd decode in WASM (ruzstd), whole file from a level-19 frame, best of 5 | ${mb(micro.size, micro.decodeWholeMs)} MB/s |`);
console.log(`| zstd decode in WASM, update against the old version as prefix (${kb(micro.patchBytes)} frame), best of 5 | ${micro.decodePatchMs.toFixed(1)} ms |`);
console.log(`| .wasm size raw / gzip -9 | ${kb(wasm.length)} / ${kb(gzipSync(wasm, { level: 9 }).length)} |`);
