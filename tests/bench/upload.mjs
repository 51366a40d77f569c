// Upload benchmark on real asset version pairs from the npm registry (the corpus benchmark's).
//
//   cargo build --release -p assetsync && node tests/bench/upload.mjs
//
// For each pair, the new version is pushed over the old one, on loopback, four ways:
// - `assetsync push --cache` from a client that pulled the old version (it knows the base: one
//   message stream, compressed against the old file);
// - `assetsync push` from a client that never saw it (rsync's flow: the server's manifest first,
//   then the chunks it lacks, compressed alone);
// - `rsync` to an rsync daemon on 127.0.0.1 (a writable module), delta transfer forced;
// - the size of `zstd -19 --patch-from=old new`, the patch a tool holding both files would send.
// Bytes are both directions at the socket (rsync: its --stats totals); times are wall times of
// the client commands. Fetched pairs are cached in target/corpus/. Needs zstd and rsync.

import { execFileSync, spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { scratch, startServer, repo, npmFile } from "../browser/harness.mjs";
import { PAIRS } from "./corpus-pairs.mjs";

const bin = process.env.ASSETSYNC_BIN || join(repo, "target/release/assetsync");
process.env.ASSETSYNC_BIN = bin;
for (const tool of ["zstd", "rsync"]) {
  if (spawnSync(tool, ["--version"]).error) {
    console.error(`error: the ${tool} command is missing (Debian: apt-get install -y zstd rsync)`);
    process.exit(1);
  }
}
if (!existsSync(bin)) {
  console.error(`error: ${bin} is missing; run: cargo build --release -p assetsync`);
  process.exit(1);
}

const n = (x) => x.toLocaleString("en-US");
const ms = (start) => Math.round(Number(process.hrtime.bigint() - start) / 1e6);

/** A free TCP port on 127.0.0.1. */
const freePort = () =>
  new Promise((ok) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });

/** An rsync daemon on 127.0.0.1 serving `dir` as the writable module `m`. */
async function rsyncDaemon(dir) {
  const port = await freePort();
  const conf = join(scratch("rsyncd-"), "rsyncd.conf");
  // As this user: a daemon started by root would otherwise write as nobody.
  const ids = `uid = ${process.getuid()}\ngid = ${process.getgid()}\n`;
  writeFileSync(conf, `use chroot = no\n${ids}[m]\npath = ${dir}\nread only = no\n`);
  // stdin must not be a socket (node's pipes are), or rsync thinks inetd started it.
  const args = ["--daemon", "--no-detach", "--address", "127.0.0.1", "--port", String(port), "--config", conf];
  const child = spawn("rsync", args, { stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    if (spawnSync("rsync", [`rsync://127.0.0.1:${port}/`]).status === 0) return { port, stop: () => child.kill() };
    await new Promise((ok) => setTimeout(ok, 50));
  }
  throw new Error("the rsync daemon did not start");
}

const token = join(scratch("assetsync-upload-token-"), "token");
writeFileSync(token, "bench-secret\n", { mode: 0o600 });
const serveArgs = ["--allow-write", "--token-file", token, "--no-store"];

function push(server, from, cache, asset) {
  const args = ["push", "--server", server.ws, "--token-file", token, "--from", from, "--json"];
  if (cache) args.push("--cache", cache);
  return JSON.parse(execFileSync(bin, [...args, asset]).toString());
}

console.log("| pair | new size | push, base known: in + out, time | push, no base (rsync's flow): in + out, time | rsync daemon: bytes, time | zstd -19 --patch-from | known base vs rsync | vs patch-from |");
console.log("|---|---:|---:|---:|---:|---:|---:|---:|");
let [ours, rsyncs, patches] = [0, 0, 0];
for (const [label, pkg, from, to, file] of PAIRS) {
  const [oldBytes, newBytes] = [npmFile(pkg, from, file), npmFile(pkg, to, file)];
  const asset = "f" + file.slice(file.lastIndexOf("."));
  const local = scratch("assetsync-upload-local-");
  const [oldPath, newPath] = [join(local, "old"), join(local, asset)];
  writeFileSync(oldPath, oldBytes);
  writeFileSync(newPath, newBytes);

  // A client that pulled the old version pushes the new one.
  const server = await startServer({ root: scratch("assetsync-upload-"), extraArgs: serveArgs });
  server.write(asset, oldBytes);
  const cache = scratch("assetsync-upload-cache-");
  execFileSync(bin, ["pull", "--server", server.ws, "--token-file", token, "--cache", cache, "--out", join(cache, "out"), asset]);
  const known = push(server, local, cache, asset);
  await server.stop();

  // One that never saw it.
  const fresh = await startServer({ root: scratch("assetsync-upload-"), extraArgs: serveArgs });
  fresh.write(asset, oldBytes);
  const blind = push(fresh, local, null, asset);
  await fresh.stop();

  // rsync to a daemon holding the old version.
  const dst = scratch("rsync-dst-");
  copyFileSync(oldPath, join(dst, asset));
  const daemon = await rsyncDaemon(dst);
  const t0 = process.hrtime.bigint();
  const stats = execFileSync("rsync", ["--no-whole-file", "-I", "--stats", newPath, `rsync://127.0.0.1:${daemon.port}/m/${asset}`]).toString();
  const rsyncMs = ms(t0);
  daemon.stop();
  const num = (label) => Number(new RegExp(`${label}: ([\\d,]+)`).exec(stats)[1].replaceAll(",", ""));
  const rsync = num("Total bytes sent") + num("Total bytes received");
  const patch = execFileSync("zstd", ["-19", "-c", "-q", "--long=31", `--patch-from=${oldPath}`, newPath], { maxBuffer: 1 << 30 }).length;

  const both = (r) => r.wire_bytes_in + r.wire_bytes_out;
  ours += both(known);
  rsyncs += rsync;
  patches += patch;
  console.log(
    `| ${label} | ${n(newBytes.length)} | ${n(known.wire_bytes_in)} + ${n(known.wire_bytes_out)}, ${n(known.elapsed_ms)} ms | ` +
      `${n(blind.wire_bytes_in)} + ${n(blind.wire_bytes_out)}, ${n(blind.elapsed_ms)} ms | ${n(rsync)}, ${n(rsyncMs)} ms | ` +
      `${n(patch)} | ${(both(known) / rsync).toFixed(2)}x | ${(both(known) / patch).toFixed(2)}x |`,
  );
}
console.log(`\nTotal: push with a known base ${n(ours)} bytes, rsync ${n(rsyncs)} (${(ours / rsyncs).toFixed(2)}x), ` +
  `zstd --patch-from ${n(patches)} (${(ours / patches).toFixed(2)}x).`);
