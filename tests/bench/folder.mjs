// Folder benchmark: a build folder of many small real-looking JS files, synced by an rsync daemon,
// by `assetsync pull dist/` and by the browser client's `syncFolder("dist/")` (headless Chromium,
// persistent profile), side by side in one run, on loopback.
//
//   scripts/build-web.sh && cargo build --release -p assetsync && node tests/bench/folder.mjs
//
// FILES (default 9000) files of 2-5 KB, each a slice of the real bundles in demo/js/vendor/
// under a header of its own (no two files alike), in target/folder-bench/ (made once
// per FILES). Cases: cold (empty destination), unchanged, unchanged once the server's folder
// has been still for a second, one file changed. Each figure is the wall time of the command,
// and the bytes it moved as the tool counts them (rsync's "sent" plus
// "received"; assetsync's wire bytes in plus out, WebSocket framing included; the browser's
// message payloads), the median of RUNS (default 3). The browser's time runs from before
// `SyncClient.connect` to the folder committed, in a fresh page each time; its baseline is a
// plain fetch() of the folder's bytes as one file, no-store, in the same browser. Needs the rsync
// command (Debian: apt-get install rsync). DESTS: where the destinations go (default
// target/folder-bench; /dev/shm takes the disk's state out of the comparison).

import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { scratch, startServer, repo, launchPersistent } from "../browser/harness.mjs";

const bin = process.env.ASSETSYNC_BIN || join(repo, "target/release/assetsync");
process.env.ASSETSYNC_BIN = bin;
const FILES = Number(process.env.FILES || 9000);
const RUNS = Number(process.env.RUNS || 3);

if (spawnSync("rsync", ["--version"]).error) {
  console.error("error: the rsync command is missing (Debian: apt-get install -y rsync)");
  process.exit(1);
}
if (!existsSync(bin)) {
  console.error(`error: ${bin} is missing; run: cargo build --release -p assetsync`);
  process.exit(1);
}

const work = join(repo, "target/folder-bench");
const root = join(work, `root-${FILES}`);
const dist = join(root, "dist");

/** The folder: FILES slices of the vendor bundles, each under a header of its own. */
function generate() {
  if (existsSync(dist) && readdirSync(dist).length > 0) return;
  const vendor = join(repo, "demo/js/vendor");
  const text = Buffer.concat(readdirSync(vendor).sort().map((f) => readFileSync(join(vendor, f))));
  let seed = 1;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
  for (let i = 0; i < FILES; i++) {
    const dir = join(dist, `m${String(i % 100).padStart(2, "0")}`);
    mkdirSync(dir, { recursive: true });
    const len = 2000 + (next() % 3000);
    const at = next() % (text.length - len);
    const header = `// module ${i}: generated for the folder benchmark\nexport const id${i} = ${i};\n`;
    writeFileSync(join(dir, `chunk-${i}.js`), Buffer.concat([Buffer.from(header), text.subarray(at, at + len)]));
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function run(cmd, args) {
  return new Promise((ok, fail) => {
    const started = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("exit", (code) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      if (code !== 0) fail(new Error(`${cmd} ${args.join(" ")} exited with ${code}:\n${err}`));
      else ok({ out, ms });
    });
  });
}

/** An rsync daemon on 127.0.0.1 serving `root` as module `site`. */
async function rsyncDaemon() {
  const conf = join(work, "rsyncd.conf");
  const port = 20000 + (process.pid % 20000);
  writeFileSync(conf, `use chroot = no\n[site]\npath = ${root}\nread only = yes\n`);
  const child = spawn("rsync", ["--daemon", "--no-detach", `--config=${conf}`, `--port=${port}`, "--address=127.0.0.1"], {
    stdio: "ignore",
  });
  for (let i = 0; i < 50; i++) {
    if (spawnSync("rsync", [`rsync://127.0.0.1:${port}/`]).status === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url: `rsync://127.0.0.1:${port}/site/dist/`, stop: () => child.kill() };
}

async function rsyncOnce(url, dest, z) {
  const { out, ms } = await run("rsync", ["-a", "--delete", ...(z ? ["-z"] : []), "--stats", url, dest]);
  const sent = Number(/Total bytes sent: ([\d,]+)/.exec(out)[1].replaceAll(",", ""));
  const received = Number(/Total bytes received: ([\d,]+)/.exec(out)[1].replaceAll(",", ""));
  return { ms, bytes: sent + received };
}

async function assetsyncOnce(ws, cache, out) {
  const { out: lines, ms } = await run(bin, ["pull", "--json", "--server", ws, "--cache", cache, "--out", out, "dist/"]);
  const folder = lines.split("\n").filter(Boolean).map((l) => JSON.parse(l)).find((e) => e.event === "folder");
  return { ms, bytes: folder.wire_bytes_in + folder.wire_bytes_out };
}

/** The browser client in a persistent profile under `dest`; each sync in a fresh page. */
async function browserClient(dest) {
  const context = await launchPersistent(dest);
  const once = async () => {
    const page = await context.newPage();
    await page.goto(server.url + "/style.css");
    const result = await page.evaluate(async (ws) => {
      const m = await import("/pkg/assetsync.js");
      const exports = await m.default();
      const started = performance.now();
      const client = await m.SyncClient.connect(ws, { db: "bench" });
      const done = await client.syncFolder("dist/");
      const ms = performance.now() - started;
      client.close();
      // The client's WASM memory (it never shrinks: its high-water mark in this page).
      return { ms, bytes: done.wireBytesIn + done.wireBytesOut, wasm: exports.memory.buffer.byteLength };
    }, server.ws);
    await page.close();
    return result;
  };
  const fetchAll = async () => {
    const page = await context.newPage();
    await page.goto(server.url + "/style.css");
    const result = await page.evaluate(async () => {
      const started = performance.now();
      const bytes = await (await fetch("/folder.bin", { cache: "no-store" })).arrayBuffer();
      return { ms: performance.now() - started, bytes: bytes.byteLength };
    });
    await page.close();
    return result;
  };
  return { once, fetchAll, close: () => context.close() };
}

/** A file to change between the unchanged and the changed case, and back. */
const victim = join(dist, "m07", "chunk-7.js");
const original = () => readFileSync(victim);

generate();
const daemon = await rsyncDaemon();
// The browser's baseline: the folder's bytes as one file, fetched with a plain fetch().
const www = scratch("assetsync-folder-www-");
cpSync(join(repo, "www"), www, { recursive: true });
const everyFile = [];
(function walk(dir) {
  for (const name of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    if (name.isDirectory()) walk(join(dir, name.name));
    else everyFile.push(readFileSync(join(dir, name.name)));
  }
})(dist);
writeFileSync(join(www, "folder.bin"), Buffer.concat(everyFile));
const server = await startServer({ root, www });
let browser = null;
const tools = [
  ["rsync daemon", (dest) => rsyncOnce(daemon.url, dest, false)],
  ["rsync daemon -z", (dest) => rsyncOnce(daemon.url, dest, true)],
  ["assetsync pull dist/", (dest) => assetsyncOnce(server.ws, join(dest, ".cache"), join(dest, "out"))],
  [
    "browser fetch() of the same bytes as one file",
    async (dest) => {
      browser ??= await browserClient(dest);
      return browser.fetchAll();
    },
  ],
  [
    "browser syncFolder",
    async (dest) => {
      browser ??= await browserClient(dest);
      return browser.once();
    },
  ],
];
const before = original();
const results = new Map(tools.map(([name]) => [name, { cold: [], unchanged: [], still: [], changed: [] }]));
// Destinations are deleted only at the end: ext4 is slow to create files next to thousands it
// has just deleted (it skips recently freed inodes), which would slow whichever tool ran next.
// DESTS puts them elsewhere, such as a tmpfs (/dev/shm), to leave the disk's state out.
const dests = join(process.env.DESTS || work, `dests-${process.pid}`);
for (let r = 0; r < RUNS; r++) {
  for (const [name, once] of tools) {
    const dest = join(dests, `${r}-${name.replace(/\W+/g, "-")}`);
    mkdirSync(dest, { recursive: true });
    const res = results.get(name);
    res.cold.push(await once(dest));
    res.unchanged.push(await once(dest));
    // Checked again once the server's folder has been still for a second (its watcher then lets
    // it reuse a listing): one check walks it once more, the next is measured.
    await new Promise((ok) => setTimeout(ok, 1100));
    await once(dest);
    res.still.push(await once(dest));
    writeFileSync(victim, Buffer.concat([before, Buffer.from(`\n// changed in run ${r}\n`)]));
    res.changed.push(await once(dest));
    writeFileSync(victim, before);
    await browser?.close();
    browser = null;
  }
}
await server.stop();
daemon.stop();
rmSync(dests, { recursive: true, force: true });

console.log(`${FILES} files, median of ${RUNS} runs\n`);
console.log("| case | " + tools.map(([n]) => n).join(" | ") + " |");
console.log("|---|" + tools.map(() => "---:").join("|") + "|");
const label = { cold: "cold", unchanged: "unchanged", still: "unchanged, folder still for 1 s", changed: "one file changed" };
for (const c of ["cold", "unchanged", "still", "changed"]) {
  const cells = tools.map(([name]) => {
    const xs = results.get(name)[c];
    return `${median(xs.map((x) => x.ms)).toFixed(0)} ms, ${median(xs.map((x) => x.bytes)).toLocaleString("en")} B`;
  });
  console.log(`| ${label[c]} | ${cells.join(" | ")} |`);
}
const wasm = median(results.get("browser syncFolder").cold.map((x) => x.wasm));
console.log(`\nThe browser client's WASM memory after the cold sync: ${(wasm / 1048576).toFixed(0)} MiB.`);
