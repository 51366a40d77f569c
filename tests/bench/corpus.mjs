// Wire-efficiency benchmark on real asset version pairs from the npm registry.
//
//   cargo build --release -p assetsync && node tests/bench/corpus.mjs
//
// Fetches each pair with `npm pack` into target/corpus/ (not committed; reused on later runs),
// then, for each pair, runs the real server and the native client over loopback: the client
// syncs the old version into an empty cache, the server's file is replaced by the new version,
// and the client syncs again. Prints one Markdown table comparing the bytes of that update with
// gzip, brotli, zstd, `zstd --patch-from` and rsync, all from the same run. The same update is
// then measured three more ways:
// - after a restart without a version store (`--no-store`: a second server process on the same
//   folder, which never saw the old versions: `unknown_base`, then the client's chunk-id set);
// - after a restart with the store (the server stopped and started again on its store);
// - after a deploy to a fresh machine: a server on a new release folder holding the new version,
//   an empty store and `--history` naming a folder with the old one. Its first client is served
//   once the server logs that it computed the answers ahead; the wait is reported.
// Binary patches: the bsdiff column is the `bsdiff` command's patch (bzip2 streams); the
// server's own patch, when it sent one, is in assetsync's bytes, and its time and the server's
// peak memory after the pair are reported beside them.
// Needs the zstd, rsync and bsdiff commands (Debian: apt-get install zstd rsync bsdiff). Extra `assetsync serve`
// flags can be given in ASSETSYNC_SERVE_ARGS, e.g. ASSETSYNC_SERVE_ARGS="--zstd-level 9".

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, copyFileSync, cpSync } from "node:fs";
import { join } from "node:path";
import { gzipSync, brotliCompressSync, constants as zc } from "node:zlib";
import { scratch, startServer, repo, npmFile } from "../browser/harness.mjs";
import { PAIRS } from "./corpus-pairs.mjs";

const bin = process.env.ASSETSYNC_BIN || join(repo, "target/release/assetsync");
process.env.ASSETSYNC_BIN = bin;


for (const tool of ["zstd", "rsync", "bsdiff"]) {
  if (spawnSync(tool, tool === "bsdiff" ? [] : ["--version"]).error) {
    console.error(`error: the ${tool} command is missing (Debian: apt-get install -y zstd rsync bsdiff)`);
    process.exit(1);
  }
}
if (!existsSync(bin)) {
  console.error(`error: ${bin} is missing; run: cargo build --release -p assetsync`);
  process.exit(1);
}

const corpus = join(repo, "target/corpus");
mkdirSync(corpus, { recursive: true });

const size = (cmd, args, input) => execFileSync(cmd, args, { input, maxBuffer: 1 << 30 }).length;

function bsdiffBytes(oldPath, newPath) {
  const dir = scratch("bsdiff-");
  execFileSync("bsdiff", [oldPath, newPath, join(dir, "patch")]);
  const bytes = readFileSync(join(dir, "patch")).length;
  rmSync(dir, { recursive: true });
  return bytes;
}

/** The peak resident memory of a process so far, in MiB. */
function peakMiB(pid) {
  return Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) / 1024;
}

function rsyncBytes(oldPath, newPath) {
  const dir = scratch("rsync-");
  mkdirSync(join(dir, "src"));
  mkdirSync(join(dir, "dst"));
  copyFileSync(newPath, join(dir, "src/f"));
  copyFileSync(oldPath, join(dir, "dst/f"));
  const stats = execFileSync("rsync", ["--no-whole-file", "-I", "--stats", join(dir, "src/f"), join(dir, "dst/f")]).toString();
  rmSync(dir, { recursive: true });
  const num = (label) => Number(new RegExp(`${label}: ([\\d,]+)`).exec(stats)[1].replaceAll(",", ""));
  return num("Total bytes sent") + num("Total bytes received");
}

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Waits until the server has used no CPU for half a second. */
async function settle(pid) {
  for (let last = -1, now = cpuSeconds(pid); now !== last; last = now, now = cpuSeconds(pid)) {
    await new Promise((ok) => setTimeout(ok, 500));
  }
}

function pull(server, cache, out, asset) {
  const json = execFileSync(bin, ["pull", "--server", server.ws, "--cache", cache, "--out", out, "--json", asset]);
  return JSON.parse(json.toString());
}

const extraArgs = (process.env.ASSETSYNC_SERVE_ARGS || "").split(" ").filter(Boolean);
const storeArgs = [...extraArgs, "--store", scratch("assetsync-corpus-store-")];
let server = await startServer({ root: scratch("assetsync-corpus-"), extraArgs: storeArgs });
// Indexes each file only when asked, after it was replaced: it never knows the old versions.
// It does not watch the root: a watcher would index the old version of a file it served for an
// earlier pair when the next pair writes it (two pairs share three.module.min.js).
const restarted = await startServer({ root: server.root, extraArgs: [...extraArgs, "--no-watch", "--no-store"] });
const rows = [];
let totalOurs = 0;
let totalPatch = 0;
const n = (x) => x.toLocaleString("en-US");
for (const [label, pkg, from, to, file] of PAIRS) {
  const oldBytes = npmFile(pkg, from, file);
  const newBytes = npmFile(pkg, to, file);
  const oldPath = join(corpus, `${pkg.replace("/", "_")}@${from}`, file);
  const newPath = join(corpus, `${pkg.replace("/", "_")}@${to}`, file);
  const asset = `${pkg}/${file.split("/").pop()}`;
  const client = scratch("assetsync-client-");
  server.write(asset, oldBytes);
  pull(server, join(client, "cache"), join(client, "out"), asset);
  for (const copy of ["cache3", "cache4", "cache5", "cache6"]) {
    cpSync(join(client, "cache"), join(client, copy), { recursive: true });
  }
  server.write(asset, newBytes);
  const cpu0 = cpuSeconds(server.pid);
  const first = pull(server, join(client, "cache"), join(client, "out"), asset);
  // Large updates are answered at the fast level first; later clients get the best-level
  // encoding once the background has it.
  await settle(server.pid);
  const cpu = cpuSeconds(server.pid) - cpu0;
  const peak = peakMiB(server.pid);
  // The server's own patch for this pair, if it computed one: its size, whether it was sent, its time.
  const patchLine = server.log().split("\n").filter((l) => l.includes("binary patch computed") && l.includes(`asset=${asset} old=${oldBytes.length} new=${newBytes.length} `)).at(-1);
  const field = (k) => {
    const m = new RegExp(` ${k}=(\\w+)`).exec(patchLine);
    if (!m) throw new Error(`${label}: no ${k} in the server's line: ${patchLine}`);
    return m[1];
  };
  const r = pull(server, join(client, "cache4"), join(client, "out4"), asset);
  for (const out of ["out", "out4"]) {
    if (!readFileSync(join(client, out, asset)).equals(newBytes)) throw new Error(`${label}: output differs`);
  }
  // A second, fresh cache: the cold sync of the new version.
  const cold = pull(server, join(client, "cache2"), join(client, "out2"), asset);
  const after = pull(restarted, join(client, "cache3"), join(client, "out3"), asset);
  if (after.requests !== 2 || !readFileSync(join(client, "out3", asset)).equals(newBytes)) {
    throw new Error(`${label}: sync after restart went wrong: ${JSON.stringify(after)}`);
  }
  // The same server stopped and started again on its store.
  await server.stop();
  server = await startServer({ root: server.root, extraArgs: storeArgs });
  const stored = pull(server, join(client, "cache5"), join(client, "out5"), asset);
  // A deploy to a fresh machine: the new release as root, the old one as --history.
  const releases = scratch("assetsync-releases-");
  for (const [release, bytes] of [["old", oldBytes], ["new", newBytes]]) {
    mkdirSync(join(releases, release, pkg), { recursive: true });
    writeFileSync(join(releases, release, asset), bytes);
  }
  const started = Date.now();
  const deploy = await startServer({
    root: join(releases, "new"),
    extraArgs: [...extraArgs, "--store", join(releases, "store"), "--history", join(releases, "old")],
  });
  await deploy.waitForLog("answers computed ahead");
  const deployWait = Date.now() - started;
  const deployed = pull(deploy, join(client, "cache6"), join(client, "out6"), asset);
  await deploy.stop();
  for (const [out, report] of [["out5", stored], ["out6", deployed]]) {
    if (report.requests !== 1 || !readFileSync(join(client, out, asset)).equals(newBytes)) {
      throw new Error(`${label}: sync with a store went wrong: ${JSON.stringify(report)}`);
    }
  }
  rmSync(releases, { recursive: true });
  rmSync(client, { recursive: true });

  const patch = size("zstd", ["-19", "--long=30", "-c", `--patch-from=${oldPath}`, newPath]);
  const bsdiff = bsdiffBytes(oldPath, newPath);
  const ours = r.wire_bytes_in + r.wire_bytes_out;
  totalOurs += ours;
  totalPatch += patch;
  rows.push({
    label,
    size: newBytes.length,
    gzip: gzipSync(newBytes, { level: 9 }).length,
    brotli: brotliCompressSync(newBytes, {
      params: { [zc.BROTLI_PARAM_QUALITY]: 11, [zc.BROTLI_PARAM_LGWIN]: 24, [zc.BROTLI_PARAM_SIZE_HINT]: newBytes.length },
    }).length,
    zstd: size("zstd", ["-19", "-c", newPath]),
    patch,
    bsdiff,
    ours,
    // With maps (a WebAssembly module remapped before the patch): patch + maps, and its tail.
    ourPatch: patchLine
      ? `${n(Number(field("patch")))}${Number(field("maps")) ? ` + ${n(Number(field("maps")))} maps` : ""}${Number(field("tail")) ? ` + ${n(Number(field("tail")))} tail` : ""}${field("used") === "true" ? " (sent)" : ""}, ${n(Number(field("ms")))} ms`
      : "-",
    peak,
    rsync: rsyncBytes(oldPath, newPath),
    first: first.wire_bytes_in + first.wire_bytes_out,
    firstMs: first.elapsed_ms,
    in: r.wire_bytes_in,
    out: r.wire_bytes_out,
    ratio: ours / patch,
    cpuMs: cpu * 1000,
    cold: cold.wire_bytes_in + cold.wire_bytes_out,
    restartIn: after.wire_bytes_in,
    restartOut: after.wire_bytes_out,
    stored: stored.wire_bytes_in + stored.wire_bytes_out,
    deployed: deployed.wire_bytes_in + deployed.wire_bytes_out,
    deployWait,
  });
}
await server.stop();
await restarted.stop();

console.log("| pair | new size | gzip -9 | brotli 11 | zstd -19 | patch-from -19 | rsync | first client: bytes, time | assetsync in + out | vs patch-from | server CPU | cold sync / zstd -19 | after restart (no store) in + out | vs patch-from | after restart, with store | vs no restart | after a deploy: first client, server start to ready |");
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const r of rows) {
  console.log(
    `| ${r.label} | ${n(r.size)} | ${n(r.gzip)} | ${n(r.brotli)} | ${n(r.zstd)} | ${n(r.patch)} | ${n(r.rsync)} | ${n(r.first)}, ${n(r.firstMs)} ms | ` +
      `${n(r.in)} + ${n(r.out)} | ${r.ratio.toFixed(2)}x | ${r.cpuMs.toFixed(0)} ms | ${(r.cold / r.zstd).toFixed(2)}x | ` +
      `${n(r.restartIn)} + ${n(r.restartOut)} | ${((r.restartIn + r.restartOut) / r.patch).toFixed(2)}x | ` +
      `${n(r.stored)} | ${(r.stored / (r.in + r.out)).toFixed(2)}x | ${n(r.deployed)}, ${n(r.deployWait)} ms |`,
  );
}
const worst = rows.reduce((a, b) => (a.ratio > b.ratio ? a : b));
console.log("\nBinary patches (later clients):\n");
console.log("| pair | zstd --patch-from -19 | bsdiff | the smaller | assetsync (later client) | vs zstd | vs the smaller | server patch: bytes, time | server peak RSS after the pair |");
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const r of rows) {
  const smaller = Math.min(r.patch, r.bsdiff);
  console.log(
    `| ${r.label} | ${n(r.patch)} | ${n(r.bsdiff)} | ${n(smaller)} | ${n(r.ours)} | ${(r.ours / r.patch).toFixed(2)}x | ${(r.ours / smaller).toFixed(2)}x | ${r.ourPatch} | ${r.peak.toFixed(0)} MiB |`,
  );
}
const totalBsdiff = rows.reduce((sum, r) => sum + Math.min(r.patch, r.bsdiff), 0);
console.log(`\nTotal: assetsync ${n(totalOurs)}, zstd --patch-from ${n(totalPatch)} (${(totalOurs / totalPatch).toFixed(2)}x), the smaller of bsdiff and patch-from per pair ${n(totalBsdiff)} (${(totalOurs / totalBsdiff).toFixed(2)}x).`);
console.log(`\nTotal over the corpus: assetsync ${n(totalOurs)} bytes, patch-from ${n(totalPatch)} bytes: ${(totalOurs / totalPatch).toFixed(2)}x. Worst pair: ${worst.label}, ${worst.ratio.toFixed(2)}x.`);
const restartTotal = rows.reduce((sum, r) => sum + r.restartIn + r.restartOut, 0);
console.log(`After a server restart: ${n(restartTotal)} bytes, ${(restartTotal / totalPatch).toFixed(2)}x patch-from.`);
const storedTotal = rows.reduce((sum, r) => sum + r.stored, 0);
const deployedTotal = rows.reduce((sum, r) => sum + r.deployed, 0);
console.log(`After a restart with the store: ${n(storedTotal)} bytes, ${(storedTotal / totalOurs).toFixed(2)}x the same updates without a restart.`);
console.log(`First clients after a deploy with --history: ${n(deployedTotal)} bytes, ${(deployedTotal / totalOurs).toFixed(2)}x.`);
const stats = JSON.parse(execFileSync(bin, ["store", "stats", "--json", "--store", storeArgs.at(-1)]));
console.log(`The store after the run: ${stats.versions} versions, ${n(stats.chunk_bytes)} bytes of chunks, ${stats.answers} answers of ${n(stats.answer_bytes)} bytes, file ${n(stats.file_bytes)} bytes (${n(Math.round(stats.file_bytes / stats.versions))} per version).`);
