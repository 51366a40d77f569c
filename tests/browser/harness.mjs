// Shared helpers for the browser tests and benchmarks: a real `assetsync serve` process on
// 127.0.0.1 with an ephemeral port, and Debian's headless Chromium driven by playwright-core.

import { execFileSync, spawn } from "node:child_process";
import { createServer, connect } from "node:net";
import { createHash } from "node:crypto";
import { appendFileSync, chmodSync, existsSync, mkdtempSync, mkdirSync, writeFileSync, renameSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { before, after } from "node:test";
import { chromium } from "playwright-core";

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** The server binary: ASSETSYNC_BIN when set (read at each start, so that a benchmark can set
 * it after importing this module), else the debug build. */
const serverBin = () => process.env.ASSETSYNC_BIN || join(repo, "target/debug/assetsync");

export const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

const children = new Set();

const scratchDirs = [];
/** A new temporary folder, deleted when this process exits (a test may restart a server on it). */
export function scratch(prefix) {
  scratchDirs.push(mkdtempSync(join(tmpdir(), prefix)));
  return scratchDirs.at(-1);
}
process.on("exit", () => scratchDirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

let state = null;
/** This process's temporary state folder, where servers keep their default version stores. */
function stateHome() {
  state ??= scratch("assetsync-state-");
  return state;
}

/** Kills every server still running (those of failed tests), so that node can exit. */
export function killServers() {
  children.forEach((c) => c.kill("SIGKILL"));
  // SIGTERM: nginx's master stops its workers (SIGKILL would leave them running).
  services.forEach((c) => c.kill("SIGTERM"));
}

const services = new Set();

/** A free TCP port on 127.0.0.1 (free when this resolves). */
async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

/** Waits (up to 10 s) until something accepts connections on `port`. */
async function listening(port, what) {
  for (const until = Date.now() + 10_000; ; await new Promise((ok) => setTimeout(ok, 20))) {
    const up = await new Promise((ok) => {
      const socket = connect(port, "127.0.0.1", () => { socket.destroy(); ok(true); });
      socket.on("error", () => ok(false));
    });
    if (up) return;
    if (Date.now() > until) throw new Error(`${what} did not listen on 127.0.0.1:${port} within 10 s`);
  }
}

/** Runs a third-party server (`binary` with `args`) until the test process ends. */
function runService(binary, args) {
  const child = spawn(binary, args, { stdio: "ignore" });
  services.add(child);
  child.on("exit", () => services.delete(child));
  return child;
}

/**
 * Says that test `t` (with `whole`), or a part of it, cannot run here and why: in the test output
 * and in the list `scripts/test.sh` prints at the end.
 */
function skipped(t, why, { whole = true } = {}) {
  const line = `${engine}: "${t.name}": ${whole ? "skipped" : "part skipped"}: ${why}`;
  if (whole) t.skip(line);
  else t.diagnostic(line);
  if (process.env.ASSETSYNC_SKIPS) appendFileSync(process.env.ASSETSYNC_SKIPS, line + "\n");
}

/**
 * A real `redis-server` on a free port of 127.0.0.1 that keeps nothing on disk, as `{ url,
 * stop() }`; `null`, with test `t` marked skipped, where it is not installed.
 */
export async function startRedis(t) {
  if (!existsSync("/usr/bin/redis-server")) return skipped(t, "redis-server is not installed (scripts/test.sh installs it)"), null;
  const port = await freePort();
  const child = runService("/usr/bin/redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"]);
  await listening(port, "redis-server");
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill("SIGKILL") };
}

/**
 * A real nginx running the repository's deploy/nginx.conf with only its port and upstream
 * servers changed (`upstream`: nginx `server` lines without the word), as a server-like
 * `{ url, ws, stop() }`; `null`, with test `t` marked skipped, where nginx is not installed.
 */
export async function startNginx(t, upstream) {
  if (!existsSync("/usr/sbin/nginx")) return skipped(t, "nginx is not installed (scripts/test.sh installs it)"), null;
  const port = await freePort();
  const replace = (text, from, to) => {
    if (text.split(from).length !== 2) throw new Error(`deploy/nginx.conf no longer holds ${JSON.stringify(from)}`);
    return text.replace(from, to);
  };
  let config = readFileSync(join(repo, "deploy/nginx.conf"), "utf8");
  config = replace(config, "        listen 127.0.0.1:8080;", `        listen 127.0.0.1:${port};`);
  config = replace(
    config,
    "        server 127.0.0.1:8081 max_fails=1 fail_timeout=5s;\n        server 127.0.0.1:8082 max_fails=1 fail_timeout=5s;\n",
    upstream.map((s) => `        server ${s};\n`).join(""),
  );
  const prefix = scratch("assetsync-nginx-");
  for (const folder of ["logs", "tmp"]) mkdirSync(join(prefix, folder));
  chmodSync(prefix, 0o755); // run as root, nginx's workers drop to nobody
  writeFileSync(join(prefix, "nginx.conf"), config);
  const child = runService("/usr/sbin/nginx", ["-p", prefix, "-c", "nginx.conf", "-g", "daemon off;"]);
  await listening(port, "nginx");
  const url = `http://127.0.0.1:${port}`;
  return { url, ws: `ws://127.0.0.1:${port}/sync`, stop: () => child.kill("SIGTERM") };
}

/**
 * Starts `assetsync serve` on a fresh temporary root (or the demo, with `{ demo: true }`, or
 * as an edge of the sync endpoint `upstream`),
 * serving `www` (default: the repository's www/) at `/`, on `listen` (default: a free port on
 * 127.0.0.1), with `extraArgs` for `serve`.
 */
export async function startServer({ demo = false, root = null, upstream = null, www = join(repo, "www"), listen = "127.0.0.1:0", extraArgs = [] } = {}) {
  root = demo || upstream ? null : root || scratch("assetsync-e2e-");
  const args = ["serve", "--listen", listen, "--www", www, ...extraArgs];
  if (root) args.push("--root", root);
  // An edge of `upstream` (a sync endpoint), in a folder of its own.
  if (upstream) args.push("--upstream", upstream, "--edge-dir", scratch("assetsync-edge-"));
  // Version stores go under a temporary state folder, not the user's (see default_store).
  const env = { ...process.env, XDG_STATE_HOME: stateHome() };
  const child = spawn(serverBin(), args, { stdio: ["ignore", "ignore", "pipe"], env });
  // A failed test must not leave a server behind (see killServers).
  children.add(child);
  child.on("exit", () => children.delete(child));
  let log = "";
  const url = await new Promise((ok, fail) => {
    child.stderr.on("data", (d) => {
      log += d;
      const m = /at (http:\/\/127\.0\.0\.1:\d+)\//.exec(log);
      if (m) ok(m[1]);
    });
    child.on("exit", (code) => fail(new Error(`server exited with ${code}:\n${log}`)));
  });
  return {
    url,
    ws: url.replace("http", "ws") + "/sync",
    root,
    pid: child.pid,
    /** What the server logged so far. */
    log: () => log,
    /** Waits (up to `ms`) until the server logs a line containing `text`; resolves to it. */
    async waitForLog(text, ms = 120_000) {
      for (const until = Date.now() + ms; Date.now() < until; await new Promise((ok) => setTimeout(ok, 50))) {
        // Whole lines only: the last one may still be arriving.
        const line = log.split("\n").slice(0, -1).find((l) => l.includes(text));
        if (line) return line;
      }
      throw new Error(`the server did not log "${text}" within ${ms} ms:\n${log}`);
    },
    /** Writes an asset the way build tools do: temporary file, then rename. */
    write(asset, bytes) {
      const path = join(root, asset);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path + ".tmp", bytes);
      renameSync(path + ".tmp", path);
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((ok) => child.on("exit", ok));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/**
 * A TCP proxy on 127.0.0.1 in front of `server` that cuts connection i after the server has
 * sent `cuts[i]` bytes through it (later connections pass untouched): a network that drops
 * mid-transfer. With `stall`, it holds the rest back instead, leaving the connection open: a
 * transfer that hangs. With `pace`, it forwards that many bytes per second: a slow link. `ws` is
 * the WebSocket URL through it; `connections` counts connections.
 */
export async function cuttingProxy(server, cuts, { stall = false, pace = 0 } = {}) {
  const target = new URL(server.url);
  const remaining = [...cuts];
  const proxy = {
    connections: 0,
    sockets: new Set(),
    close: () => new Promise((ok) => {
      proxy.sockets.forEach((s) => s.destroy());
      listener.close(ok);
    }),
  };
  const listener = createServer((client) => {
    proxy.connections += 1;
    const limit = remaining.shift() ?? Infinity;
    let passed = 0;
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      proxy.sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (passed + d.length < limit) {
        passed += d.length;
        client.write(d);
        if (pace) {
          upstream.pause();
          setTimeout(() => upstream.resume(), (d.length / pace) * 1000);
        }
        return;
      }
      // The bytes up to the cut arrive; then the connection ends without a WebSocket close.
      if (stall) {
        client.write(d.subarray(0, limit - passed));
        passed = limit;
        upstream.pause();
        return;
      }
      client.end(d.subarray(0, limit - passed));
      upstream.destroy();
    });
  });
  await new Promise((ok) => listener.listen(0, "127.0.0.1", ok));
  proxy.ws = `ws://127.0.0.1:${listener.address().port}/sync`;
  return proxy;
}

/** The flags Chromium needs on these machines. */
export const browserArgs = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Launches headless Chromium with the flags these machines need, and `extraArgs`. */
export async function launchBrowser(extraArgs = []) {
  return chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: [...browserArgs, ...extraArgs] });
}

/** The browser engine the page-level tests run in: `BROWSER=firefox` for Firefox, else Chromium. */
export const engine = process.env.BROWSER === "firefox" ? "firefox" : "chromium";

/**
 * One headless browser for a test file's tests (see `engine`), launched before them and closed
 * after them (with any server a failed test left running). Its `newContext` gives Playwright's
 * context and page API in both engines: Firefox (Debian's firefox-esr) is driven by
 * puppeteer-core over WebDriver BiDi, through `FirefoxContext` below.
 */
export function useBrowser() {
  let launched;
  before(async () => {
    launched = engine === "firefox" ? await launchFirefox() : await launchBrowser();
  });
  after(async () => {
    await launched?.close();
    killServers();
  });
  return {
    name: engine,
    newContext: async (options = {}) =>
      engine === "firefox" ? new FirefoxContext(await launched.createBrowserContext(), options) : launched.newContext(options),
  };
}

/**
 * Whether a check that needs Chromium can run in this engine; if not, says so in the test
 * output and in the list `scripts/test.sh` prints at the end. With `whole`, the test is marked
 * skipped (the caller returns).
 */
export function inChromium(t, why, { whole = false } = {}) {
  if (engine === "chromium") return true;
  skipped(t, why, { whole });
  return false;
}

/**
 * A new context in which `origin` may store at most `bytes`. Chromium: the DevTools protocol's
 * per-origin quota override, set before anything opens a database there (Chromium 156 did not
 * apply a lower quota to a database already open). Firefox: a browser of its own, launched with
 * that global storage limit. `lift()` removes the limit where the engine can (Chromium) and
 * says whether it did; `close()` closes what was opened.
 */
export async function quotaContext(browser, origin, bytes) {
  if (engine === "firefox") {
    const limited = await launchFirefox({ "dom.quotaManager.temporaryStorage.fixedLimit": Math.ceil(bytes / 1024) });
    const context = new FirefoxContext(await limited.createBrowserContext());
    return { context, lift: async () => false, close: () => limited.close() };
  }
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(origin + "/style.css");
  const cdp = await context.newCDPSession(page);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: bytes });
  const lift = async () => {
    await cdp.send("Storage.overrideQuotaForOrigin", { origin });
    return true;
  };
  return { context, lift, close: () => context.close() };
}

async function launchFirefox(extraPrefsFirefox = {}) {
  const { default: puppeteer } = await import("puppeteer-core");
  return puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
    headless: true,
    protocol: "webDriverBiDi",
    extraPrefsFirefox,
  });
}

/** A puppeteer (WebDriver BiDi) browser context with the parts of Playwright's API the tests use. */
class FirefoxContext {
  constructor(context, { viewport } = {}) {
    this.context = context;
    this.viewport = viewport;
    this.pages = [];
    this.offline = false;
  }

  async newPage() {
    const page = await this.context.newPage();
    if (this.viewport) await page.setViewport(this.viewport);
    if (this.offline) await page.setOfflineMode(true);
    this.pages.push(page);
    return firefoxPage(page);
  }

  /** Like Playwright's, for every page of the context, present and future. */
  async setOffline(offline) {
    this.offline = offline;
    for (const page of this.pages) if (!page.isClosed()) await page.setOfflineMode(offline);
  }

  async newCDPSession() {
    throw new Error("the DevTools protocol is Chromium's: guard this test with inChromium()");
  }

  close() {
    return this.context.close();
  }
}

/** A puppeteer page with Playwright's signatures where they differ. */
function firefoxPage(page) {
  const overrides = {
    waitForFunction: (fn, arg, options = {}) => page.waitForFunction(fn, options, arg),
    waitForTimeout: (ms) => new Promise((ok) => setTimeout(ok, ms)),
    locator: (selector) => ({
      textContent: () => page.$eval(selector, (e) => e.textContent),
      getAttribute: (name) => page.$eval(selector, (e, name) => e.getAttribute(name), name),
      count: () => page.$$eval(selector, (all) => all.length),
    }),
  };
  return new Proxy(page, {
    get(target, key) {
      if (key in overrides) return overrides[key];
      const value = Reflect.get(target, key);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** Headless Chromium with a persistent profile in `dir` (IndexedDB and the HTTP cache on disk). */
export async function launchPersistent(dir) {
  return chromium.launchPersistentContext(dir, { executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: browserArgs });
}

/** Opens a page of `server` with the WASM client loaded as `window.assetsync`. */
export async function openClientPage(context, server) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(server.url + "/style.css");
  await page.evaluate(async () => {
    const m = await import("/pkg/assetsync.js");
    await m.default();
    window.assetsync = m;
    // Raw IndexedDB access, for tests that look at (or damage) the store behind the client.
    window.req = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
    window.idb = (name) => window.req(indexedDB.open(name));
    window.hex = async (bytes) =>
      [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
        .map((b) => b.toString(16).padStart(2, "0"))
        .join("");
  });
  return page;
}

/** A real published bundle shipped in the repository. */
export const realBundle = () => readFileSync(join(repo, "demo/js/vendor/three.module.js"));

/** The bytes of `file` in the npm package `pkg@version`, fetched once with `npm pack` into
 *  target/corpus/ (shared with the benchmarks and the Rust tests). */
export function npmFile(pkg, version, file) {
  const corpus = join(repo, "target/corpus");
  const out = join(corpus, `${pkg.replace("/", "_")}@${version}`, file);
  if (!existsSync(out)) {
    const dir = join(corpus, "tgz");
    mkdirSync(dir, { recursive: true });
    const json = execFileSync("npm", ["pack", `${pkg}@${version}`, "--json", "--pack-destination", dir], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    const tgz = join(dir, JSON.parse(json)[0].filename);
    const bytes = execFileSync("tar", ["-xzOf", tgz, `package/${file}`], { maxBuffer: 1 << 30 });
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, bytes);
  }
  return readFileSync(out);
}
