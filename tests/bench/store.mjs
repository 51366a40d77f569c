// The version store's costs and what it saves in memory.
//
//   cargo build --release -p assetsync && node tests/bench/store.mjs
//
// 1. Memory: one large asset (SIZE_MB, default 300 MB, random bytes) edited 8 times, 1 KiB at a
//    time, each edit pulled by the native client; the server's peak RSS (VmHWM) and each
//    update's bytes, with the version store (the default) and with --no-store (every
//    remembered version held in memory), side by side.
// 2. Opening: a store holding FILES (default 10,000) versions, made by serving a folder of that
//    many small files once; the time the server then takes to open it, from its log.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { scratch, startServer, repo } from "../browser/harness.mjs";

const bin = process.env.ASSETSYNC_BIN || join(repo, "target/release/assetsync");
process.env.ASSETSYNC_BIN = bin;
const SIZE = Number(process.env.SIZE_MB || 300) << 20;
const FILES = Number(process.env.FILES || 10_000);
const n = (x) => x.toLocaleString("en-US");

function pull(server, client, asset) {
  const json = execFileSync(bin, ["pull", "--server", server.ws, "--cache", join(client, "cache"), "--out", join(client, "out"), "--json", asset], { maxBuffer: 1 << 26 });
  const lines = json.toString().trim().split("\n").map((l) => JSON.parse(l));
  return lines.at(-1);
}

const peakRss = (pid) => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024;

async function memory(args) {
  const root = scratch("assetsync-store-bench-");
  const server = await startServer({ root, extraArgs: args });
  const client = scratch("assetsync-store-client-");
  const data = randomBytes(SIZE);
  server.write("big.bin", data);
  const cold = pull(server, client, "big.bin");
  const updates = [];
  for (let edit = 1; edit <= 8; edit++) {
    randomBytes(1024).copy(data, Math.floor((SIZE - 1024) * (edit / 9)));
    server.write("big.bin", data);
    // The watcher re-indexes the file once it has been quiet; the pull then finds it current.
    await new Promise((ok) => setTimeout(ok, 300));
    updates.push(pull(server, client, "big.bin"));
  }
  const out = readFileSync(join(client, "out", "big.bin"));
  if (!out.equals(data)) throw new Error("the pulled file differs from the server's");
  const rss = peakRss(server.pid);
  await server.stop();
  return { cold, updates, rss };
}

console.log(`## ${n(SIZE >> 20)} MB asset, 8 edits of 1 KiB\n`);
console.log("| server | peak RSS | cold pull | updates: bytes in + out each (max), time (max) |");
console.log("|---|---:|---:|---:|");
for (const [label, args] of [["--no-store (versions in memory)", ["--no-store"]], ["version store (default)", ["--store", scratch("assetsync-store-")]]]) {
  const { cold, updates, rss } = await memory(args);
  const bytes = Math.max(...updates.map((u) => u.wire_bytes_in + u.wire_bytes_out));
  const ms = Math.max(...updates.map((u) => u.elapsed_ms));
  console.log(`| ${label} | ${n(Math.round(rss / (1 << 20)))} MiB | ${n(cold.elapsed_ms)} ms | ${n(bytes)} B, ${n(ms)} ms |`);
}

// Opening a store of FILES versions.
const root = scratch("assetsync-store-open-");
mkdirSync(join(root, "dist"));
for (let i = 0; i < FILES; i++) {
  writeFileSync(join(root, "dist", `chunk-${i}.js`), `export const chunk${i} = ${JSON.stringify(randomBytes(600).toString("base64"))};\n`);
}
const store = scratch("assetsync-store-");
const first = await startServer({ root, extraArgs: ["--store", store, "--no-watch"] });
pull(first, scratch("assetsync-store-client-"), "dist/");
await first.stop();
const again = await startServer({ root, extraArgs: ["--store", store, "--no-watch"] });
const opened = await again.waitForLog("version store opened");
await again.stop();
const versions = /versions=(\d+)/.exec(opened)[1];
const ms = /elapsed_ms=(\d+)/.exec(opened)[1];
const stats = JSON.parse(execFileSync(bin, ["store", "stats", "--json", "--store", store]));
console.log(`\nOpening a store of ${n(Number(versions))} versions (${n(stats.file_bytes)} bytes on disk): ${ms} ms.`);
