// In-browser benchmark: `node tests/browser/bench.mjs` (after scripts/build-web.sh and a
// `cargo build --release -p assetsync`). Prints a Markdown table for BENCHMARKS.md.
//
// A 10 MB asset made of real published bundles; a ~1% change; everything measured in one run,
// in headless Chromium against the real server on loopback.

import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, launchBrowser, repo } from "./harness.mjs";

process.env.ASSETSYNC_BIN ||= join(repo, "target/release/assetsync");

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
const www = mkdtempSync(join(tmpdir(), "assetsync-bench-www-"));
cpSync(join(repo, "www/pkg"), join(www, "pkg"), { recursive: true });
writeFileSync(join(www, "index.html"), "<!doctype html><title>bench</title>");
const v1 = build(0);
const v2 = build(1);
writeFileSync(join(root, "big.js"), v1);
writeFileSync(join(www, "big.js"), v1);
writeFileSync(join(www, "big2.js"), v2);
// zstd frames for the decoder measurement, made by the C library the server uses: the whole
// file, and the new version with the old one as prefix.
const zstd = (args) => execFileSync("zstd", ["-q", "-19", "--no-check", "-c", ...args], { maxBuffer: 1 << 30 });
writeFileSync(join(www, "big.zst"), zstd([join(www, "big.js")]));
writeFileSync(join(www, "patch.zst"), zstd([`--patch-from=${join(www, "big.js")}`, join(www, "big2.js")]));

const server = await startServer({ root, www });
const browser = await launchBrowser();
const page = await (await browser.newContext()).newPage();
await page.goto(server.url + "/index.html");

const r = await page.evaluate(async ({ ws }) => {
  const m = await import("/pkg/assetsync.js");
  await m.default();
  const t = () => performance.now();
  const out = {};
  const client = await m.SyncClient.connect(ws, { db: "bench" });

  let t0 = t();
  const fetched = new Uint8Array(await (await fetch("/big.js", { cache: "no-store" })).arrayBuffer());
  out.fetchMs = t() - t0;
  out.size = fetched.length;

  t0 = t();
  const cold = await client.sync("big.js");
  out.coldMs = t() - t0;
  out.cold = cold.stats;
  cold.free();

  // Hashing throughput on the same 10 MB, best of 5.
  const best = async (f) => { let b = Infinity; for (let i = 0; i < 5; i++) { const s = t(); await f(); b = Math.min(b, t() - s); } return b; };
  out.sha2WasmMs = await best(() => m.sha256Hex(fetched));
  out.subtleMs = await best(() => crypto.subtle.digest("SHA-256", fetched));
  // The WASM zstd decoder, best of 5: a whole file, and an update against the old version.
  const get = async (f) => new Uint8Array(await (await fetch(f)).arrayBuffer());
  const [whole, patch, next] = await Promise.all([get("/big.zst"), get("/patch.zst"), get("/big2.js")]);
  out.decodeWholeMs = await best(() => m.zstdDecompress(whole, undefined, fetched.length));
  out.decodePatchMs = await best(() => m.zstdDecompress(patch, fetched, next.length));
  out.decodeOk = m.sha256Hex(m.zstdDecompress(patch, fetched, next.length)) === m.sha256Hex(next);
  out.patchBytes = patch.length;

  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
  // Unchanged asset, repeat sync on the same client (memory cache): median of 21, end to end.
  const times = [];
  for (let i = 0; i < 21; i++) {
    const s = t();
    const res = await client.sync("big.js");
    times.push(t() - s);
    out.same = res.stats;
    res.free();
  }
  out.sameMs = median(times);
  // Unchanged asset, first sync of a fresh client (as after a reload): IndexedDB read, rebuild
  // and whole-file verification. Median of 7.
  const fresh = [];
  const verify = [];
  const store = [];
  for (let i = 0; i < 7; i++) {
    const c = await m.SyncClient.connect(ws, { db: "bench" });
    const s = t();
    const res = await c.sync("big.js");
    fresh.push(t() - s);
    verify.push(res.stats.verifyMs);
    store.push(res.stats.storeMs);
    res.free();
    c.close();
    c.free();
  }
  out.freshMs = median(fresh);
  out.freshVerifyMs = median(verify);
  out.freshStoreMs = median(store);
  return out;
}, { ws: server.ws });

writeFileSync(join(root, "big.js"), v2);
const r2 = await page.evaluate(async ({ ws }) => {
  const m = await import("/pkg/assetsync.js");
  const client = await m.SyncClient.connect(ws, { db: "bench" });
  const s = performance.now();
  const res = await client.sync("big.js");
  const ms = performance.now() - s;
  const stats = res.stats;
  res.free();
  return { ms, stats };
}, { ws: server.ws });

await browser.close();
await server.stop();

const wasm = readFileSync(join(repo, "www/pkg/assetsync_bg.wasm"));
const mb = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(0);
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(`## Browser client (headless Chromium, ${(r.size / 1e6).toFixed(2)} MB asset, loopback, one run)\n`);
console.log("| measurement | result |");
console.log("|---|---:|");
console.log(`| fetch() of the whole file (no cache) | ${r.fetchMs.toFixed(1)} ms |`);
console.log(`| cold sync (empty IndexedDB), end to end | ${r.coldMs.toFixed(1)} ms (${(r.coldMs / r.fetchMs).toFixed(1)}x fetch) |`);
console.log(`| update sync, ~1% changed (${r2.stats.chunks - r2.stats.chunksReused} of ${r2.stats.chunks} chunks), end to end | ${r2.ms.toFixed(1)} ms, ${kb(r2.stats.wireBytesIn)} received (${(r2.ms / r.fetchMs).toFixed(2)}x fetch) |`);
console.log(`| unchanged asset, repeat sync (memory cache), median of 21, end to end | ${r.sameMs.toFixed(1)} ms, ${r.same.wireBytesIn} B in / ${r.same.wireBytesOut} B out |`);
console.log(`| unchanged asset, first sync of a new client (IndexedDB read + rebuild + verify), median of 7 | ${r.freshMs.toFixed(1)} ms |`);
console.log(`| ... of which reading reused chunks from IndexedDB | ${r.freshStoreMs.toFixed(1)} ms (${mb(r.size, r.freshStoreMs)} MB/s) |`);
console.log(`| ... of which rebuild + whole-file verify | ${r.freshVerifyMs.toFixed(1)} ms (${mb(r.size, r.freshVerifyMs)} MB/s) |`);
console.log(`| SHA-256 in WASM (sha2 crate), best of 5 | ${mb(r.size, r.sha2WasmMs)} MB/s |`);
console.log(`| SHA-256 with crypto.subtle.digest, best of 5 | ${mb(r.size, r.subtleMs)} MB/s |`);
if (!r.decodeOk) throw new Error("the WASM decoder did not rebuild the new version");
console.log(`| zstd decode in WASM (ruzstd), whole file from a level-19 frame, best of 5 | ${mb(r.size, r.decodeWholeMs)} MB/s |`);
console.log(`| zstd decode in WASM, update against the old version as prefix (${kb(r.patchBytes)} frame), best of 5 | ${r.decodePatchMs.toFixed(1)} ms |`);
console.log(`| .wasm size raw / gzip -9 | ${kb(wasm.length)} / ${kb(gzipSync(wasm, { level: 9 }).length)} |`);
