// In-browser benchmark: `node tests/browser/bench.mjs` (after scripts/build-web.sh and a
// `cargo build --release -p assetsync`). Prints a Markdown table for BENCHMARKS.md.
//
// A 10 MB asset made of real published bundles, and a ~1% change of it. Headless Chromium with
// a persistent profile (as a user's browser has: IndexedDB and the HTTP cache on disk), against
// the release server on loopback. Every figure is end to end in a fresh page: from before
// `SyncClient.connect` to the asset's bytes in hand, the median of RUNS runs, taken side by side
// with the baselines (a plain `fetch()` over the network, and the same `fetch()` answered by the
// HTTP cache). The client comes from www/pkg; PKG=<dir>[,<dir>...] measures other builds, side
// by side in the same run (each case alternates between them), e.g. the previous release's:
// `PKG=www/pkg,tests/browser/fixtures/pkg-v1`.

import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { extname, join, normalize, resolve } from "node:path";
import { chromium } from "playwright-core";
import { scratch, startServer, browserArgs, repo, npmFile } from "./harness.mjs";

process.env.ASSETSYNC_BIN ||= join(repo, "target/release/assetsync");
const pkgs = (process.env.PKG || join(repo, "www/pkg")).split(",").map((p) => resolve(repo, p));
const RUNS = Number(process.env.RUNS || 7);
// More Chromium flags, e.g. BROWSER_ARGS=--js-flags=--no-wasm-lazy-compilation to see what V8's
// compiling each WebAssembly function on its first call costs.
const args = [...browserArgs, ...(process.env.BROWSER_ARGS || "").split(" ").filter(Boolean)];

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

const root = scratch("assetsync-bench-");
const tmp = scratch("assetsync-bench-files-");
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
  const m = /^\/pkg(\d+)\/(.*)$/.exec(path);
  if (!body && m && pkgs[m[1]]) body = [readFileSync(join(pkgs[m[1]], normalize(m[2]))), "no-cache"];
  if (!body) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": types[extname(path)] || "application/octet-stream", "cache-control": body[1] });
  res.end(body[0]);
});
await new Promise((ok) => web.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${web.address().port}`;

const server = await startServer({ root });
const context = await chromium.launchPersistentContext(scratch("assetsync-profile-"), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args,
});

/** Runs `body(ws)` in a fresh page with the client module loaded; returns its result and the
 *  longest main-thread task seen while it ran. */
async function inFreshPage(body, arg, pkg = 0) {
  const page = await context.newPage();
  await page.goto(origin + "/index.html");
  await page.evaluate(async (pkg) => {
    window.m = await import(`/pkg${pkg}/assetsync.js`);
    await window.m.default();
    window.longest = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.longest = Math.max(window.longest, e.duration);
    }).observe({ type: "longtask" });
  }, pkg);
  const result = await page.evaluate(body, arg);
  await page.waitForTimeout(50); // let the observer report the last task
  result.longestTaskMs = await page.evaluate(() => window.longest);
  await page.close();
  return result;
}

const syncOnce = async ({ ws, db, asset = "big.js" }) => {
  const t0 = performance.now();
  const client = await window.m.SyncClient.connect(ws, { db });
  const r = await client.sync(asset);
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

/** Waits until the server process has used no CPU for 500 ms: background compression done. */
async function serverIdle() {
  const cpu = () => readFileSync(`/proc/${server.pid}/stat`, "utf8").split(") ")[1].split(" ").slice(11, 13).map(Number).reduce((a, b) => a + b);
  for (let last = -1, now = cpu(); now !== last; last = now, now = cpu()) await new Promise((ok) => setTimeout(ok, 500));
}
/** Replaces the server's file `name`, as a build tool does, and waits until it is indexed. */
async function publish(bytes, name = "big.js") {
  writeFileSync(join(root, `${name}.tmp`), bytes);
  renameSync(join(root, `${name}.tmp`), join(root, name));
  await new Promise((ok) => setTimeout(ok, 300)); // the watcher's quiet time, then indexing
  await serverIdle();
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const rows = { fetch: [], cached: [] };
for (const key of ["cold", "same", "update"]) rows[key] = pkgs.map(() => []);
await inFreshPage(fetchOnce, "default"); // primes the HTTP cache
// Primes the server as a deployed one is after its first clients: every answer measured below is
// in its cache, at the best level, so the figures are the client's (see BENCHMARKS.md for the
// first client's). Each build's "main" store then holds the current version.
for (const [p] of pkgs.entries()) await inFreshPage(syncOnce, { ws: server.ws, db: `main-${p}` }, p);
for (const bytes of [v2, v1]) {
  await publish(bytes);
  for (const [p] of pkgs.entries()) await inFreshPage(syncOnce, { ws: server.ws, db: `main-${p}` }, p);
}
await serverIdle();
let current = v1;
for (let i = 0; i < RUNS; i++) {
  rows.fetch.push(await inFreshPage(fetchOnce, "no-store"));
  rows.cached.push(await inFreshPage(fetchOnce, "default"));
  for (const [p] of pkgs.entries()) {
    rows.cold[p].push(await inFreshPage(syncOnce, { ws: server.ws, db: `cold-${p}-${i}` }, p));
    // Unchanged, first sync of a new page (as after a reload).
    rows.same[p].push(await inFreshPage(syncOnce, { ws: server.ws, db: `main-${p}` }, p));
  }
  // The server's file changes (~1%), and a new page updates.
  current = current === v1 ? v2 : v1;
  await publish(current);
  for (const [p] of pkgs.entries()) {
    rows.update[p].push(await inFreshPage(syncOnce, { ws: server.ws, db: `main-${p}` }, p));
  }
}
if (!rows.cached.every((r) => r.fromCache)) throw new Error("the HTTP-cache baseline did not come from the cache");
if (rows.fetch.some((r) => r.fromCache)) throw new Error("the fetch() baseline came from the cache");
if (rows.update.flat().some((r) => r.stats.chunksReused === r.stats.chunks)) throw new Error("an update run found nothing changed");
for (const [p, xs] of rows.same.entries()) for (const r of xs) if (r.stats.chunksReused !== r.stats.chunks) throw new Error(`an unchanged run of ${pkgs[p]} fetched chunks: ${JSON.stringify(r.stats)}`);

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

// A WebAssembly rebuild (esbuild.wasm 0.27.2 -> 0.27.3, real npm releases): the page that
// holds the old one updates by the binary patch the server computed in the background.
const wasmPair = ["0.27.2", "0.27.3"].map((v) => npmFile("esbuild-wasm", v, "esbuild.wasm"));
const wasmRuns = pkgs.map(() => []);
for (let i = 0; i < RUNS; i++) {
  for (const [p] of pkgs.entries()) {
    const db = `wasm-${p}-${i}`;
    await publish(wasmPair[0], "app.wasm");
    await inFreshPage(syncOnce, { ws: server.ws, db, asset: "app.wasm" }, p);
    await publish(wasmPair[1], "app.wasm");
    wasmRuns[p].push(await inFreshPage(syncOnce, { ws: server.ws, db, asset: "app.wasm" }, p));
  }
}
if (wasmRuns.flat().some((r) => r.size !== wasmPair[1].length)) throw new Error("the WebAssembly update went wrong");

await context.close();

// Memory: a MEMORY_MB asset (default 100; 0 skips) synced cold and then updated (~1%) in one
// page of a fresh browser; the tab's cost is its renderer process's peak resident memory
// (VmHWM) over what it held before the first sync.
const memoryMb = Number(process.env.MEMORY_MB ?? 100);
const memory = [];
if (memoryMb > 0) {
  const big = (edit) => Buffer.concat(Array.from({ length: memoryMb / 10 }, () => build(edit)));
  await publish(big(0));
  for (const [p] of pkgs.entries()) {
    const before = new Set(readdirSync("/proc"));
    const browser = await chromium.launchPersistentContext(scratch("assetsync-profile-"), {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args,
    });
    const page = await browser.newPage();
    await page.goto(origin + "/index.html");
    await page.evaluate(async (p) => {
      window.m = await import(`/pkg${p}/assetsync.js`);
      window.exports = await window.m.default();
    }, p);
    // The renderer processes started for this browser (the page's, and any spare one: counted
    // too, so the figure errs high).
    const renderers = readdirSync("/proc").filter((pid) => /^\d+$/.test(pid) && !before.has(pid)).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("--type=renderer");
      } catch {
        return false;
      }
    });
    const status = (field) => renderers
      .map((pid) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024)
      .reduce((a, b) => a + b, 0);
    const rssBefore = status("VmRSS");
    const sync = () => page.evaluate(async (ws) => {
      const client = await window.m.SyncClient.connect(ws, { db: "memory" });
      const r = await client.sync("big.js");
      const out = { bytes: r.bytes().length, wire: r.stats.wireBytesIn };
      r.free();
      client.close();
      // The client's WASM memory: it never shrinks, so this is its high-water mark so far.
      out.wasm = window.exports.memory.buffer.byteLength;
      return out;
    }, server.ws);
    const cold = await sync();
    const coldPeak = status("VmHWM");
    await publish(big(1));
    const update = await sync();
    await publish(big(0));
    memory.push({ size: cold.bytes, before: rssBefore, coldPeak, updatePeak: status("VmHWM"), cold, update, renderers: renderers.length });
    await browser.close();
  }
}
await server.stop();
web.close();

const mb = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(0);
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
const ms = (xs) => `${median(xs.map((r) => r.ms)).toFixed(1)} ms`;
const ratio = (xs, base) => `${(median(xs.map((r) => r.ms)) / median(base.map((r) => r.ms))).toFixed(2)}x`;
const task = (xs) => `${Math.max(...xs.map((r) => r.longestTaskMs)).toFixed(0)} ms`;
const u = rows.update[0].at(-1).stats;
for (const [p, pkg] of pkgs.entries()) {
  const wasm = readFileSync(join(pkg, "assetsync_bg.wasm"));
  console.log(`## ${pkg}\n\nHeadless Chromium, persistent profile, ${(v1.length / 1e6).toFixed(1)} MB asset, loopback, median of ${RUNS} fresh pages; .wasm ${kb(wasm.length)} raw / ${kb(gzipSync(wasm, { level: 9 }).length)} gzip -9.\n`);
  console.log("| case | time | vs fetch() | vs HTTP cache | longest main-thread task |");
  console.log("|---|---:|---:|---:|---:|");
  console.log(`| plain fetch() over the network | ${ms(rows.fetch)} | 1.00x | | ${task(rows.fetch)} |`);
  console.log(`| fetch() from the HTTP cache (max-age) | ${ms(rows.cached)} | ${ratio(rows.cached, rows.fetch)} | 1.00x | ${task(rows.cached)} |`);
  console.log(`| cold sync, empty store | ${ms(rows.cold[p])} | ${ratio(rows.cold[p], rows.fetch)} | | ${task(rows.cold[p])} |`);
  console.log(`| unchanged asset, new page | ${ms(rows.same[p])} | ${ratio(rows.same[p], rows.fetch)} | ${ratio(rows.same[p], rows.cached)} | ${task(rows.same[p])} |`);
  console.log(`| update, ~1% changed (${u.chunks - u.chunksReused} of ${u.chunks} chunks, ${kb(u.wireBytesIn)} in) | ${ms(rows.update[p])} | ${ratio(rows.update[p], rows.fetch)} | | ${task(rows.update[p])} |`);
  const w = wasmRuns[p].at(-1).stats;
  console.log(`| update of esbuild.wasm 0.27.2 -> 0.27.3 (${(w.bytes / 1e6).toFixed(1)} MB) by binary patch (${kb(w.wireBytesIn)} in) | ${ms(wasmRuns[p])} | | | ${task(wasmRuns[p])} |`);
  // Only a build that reports it (older ones have no patchMs).
  const patchMs = median(wasmRuns[p].map((r) => r.stats.patchMs ?? NaN));
  if (patchMs > 0) console.log(`| of which rebuilding the file from the patch, in slices between yields | ${patchMs.toFixed(1)} ms, ${mb(w.bytes, patchMs)} MB/s of output | | | |`);
  console.log("");
}
if (memory.length) {
  console.log(`| memory, ${memoryMb} MB asset (renderer processes) | before the first sync | peak over it, cold sync | peak over it, after the update too | the client's WASM memory after the cold sync / the update |`);
  console.log("|---|---:|---:|---:|---:|");
  const mib = (n) => `${(n / 1048576).toFixed(0)} MiB`;
  for (const [p, m] of memory.entries()) {
    const over = (peak) => `${mib(peak - m.before)} (${((peak - m.before) / m.size).toFixed(1)}x)`;
    const wasm = (n) => `${mib(n)} (${(n / m.size).toFixed(1)}x)`;
    console.log(`| ${pkgs[p]} (${m.renderers}) | ${mib(m.before)} | ${over(m.coldPeak)} | ${over(m.updatePeak)} | ${wasm(m.cold.wasm)} / ${wasm(m.update.wasm)} |`);
  }
  console.log("");
}
console.log("| measurement (first build) | result |");
console.log("|---|---:|");
console.log(`| SHA-256 in WASM (sha2 crate), best of 5 | ${mb(micro.size, micro.sha2WasmMs)} MB/s |`);
console.log(`| SHA-256 with crypto.subtle.digest, best of 5 | ${mb(micro.size, micro.subtleMs)} MB/s |`);
if (!micro.decodeOk) throw new Error("the WASM decoder did not rebuild the new version");
console.log(`| zstd decode in WASM (C zstd), whole file from a level-19 frame, best of 5 | ${mb(micro.size, micro.decodeWholeMs)} MB/s |`);
console.log(`| zstd decode in WASM, update against the old version as prefix (${kb(micro.patchBytes)} frame), best of 5 | ${micro.decodePatchMs.toFixed(1)} ms |`);
