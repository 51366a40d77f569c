// The service worker (the npm package's sw.js and page.js, as www/pkg unpacks them): the demo
// app served by a real server from a scratch folder, in headless Chromium. Run by
// scripts/test.sh (`node --test`).

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { scratch, startServer, useBrowser, inChromium, quotaContext, sha256, realBundle, repo } from "./harness.mjs";

const browser = useBrowser();

/** The demo app's bundle, as the demo server writes it: real vendor code, then the app. */
function bundle(build) {
  const app = `\nexport const BUILD = ${build};\nglobalThis.assetsyncDemo = { build: BUILD };\n`;
  return Buffer.concat([Buffer.from(`/*! build ${build} */\n`), realBundle(), Buffer.from(app)]);
}

/** A server whose root is the demo app (the page, its worker, the packed client) at build 1,
 *  served over HTTP too, as a PWA's first visit needs. */
async function appServer(extraArgs = []) {
  const root = scratch("assetsync-pwa-");
  cpSync(join(repo, "www"), root, { recursive: true });
  mkdirSync(join(root, "js"));
  writeFileSync(join(root, "js/app.js"), bundle(1));
  const server = await startServer({ root, www: root, extraArgs });
  /** Writes files ({ asset: bytes, or null to delete it }); the server sees them at the next
   *  request (it checks each file's size, mtime and inode). */
  server.change = (files) => {
    for (const [asset, bytes] of Object.entries(files)) {
      if (bytes) server.write(asset, bytes);
      else rmSync(join(root, asset));
    }
  };
  return server;
}

/** Opens the app and waits until its service worker holds a build (the first visit's sync). */
async function openApp(context, server) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(server.url + "/");
  await page.waitForSelector('#status[data-state="ok"]', { timeout: 60_000 });
  return page;
}

/** Reloads `page` and waits until it knows where it was served from. */
async function reload(page) {
  await page.reload();
  await page.waitForSelector("#served[data-source]", { timeout: 30_000 });
  return page.locator("#served").getAttribute("data-source");
}

/** What the page gets for each path: status, ETag (the worker's is the version, quoted) and
 *  the SHA-256 of the body. */
async function fetched(page, paths) {
  return page.evaluate(async (paths) => {
    const out = {};
    for (const path of paths) {
      const r = await fetch(path);
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await r.arrayBuffer()));
      out[path] = { status: r.status, etag: r.headers.get("etag"), type: r.headers.get("content-type"), sha: [...digest].map((b) => b.toString(16).padStart(2, "0")).join("") };
    }
    return out;
  }, paths);
}

const fromWorker = (etag) => /^"[0-9a-f]{64}"$/.test(etag ?? "");
const APP_FILES = ["/", "/demo.js", "/js/app.js", "/style.css", "/pkg/page.js", "/pkg/assetsync.js", "/pkg/assetsync_bg.wasm"];
const fileOf = (server, path) => readFileSync(join(server.root, path === "/" ? "index.html" : path.slice(1)));

test("offline, the page, its module scripts, stylesheet and .wasm all come from the service worker, byte for byte", async (t) => {
  const server = await appServer();
  const context = await browser.newContext();
  const page = await openApp(context, server);
  assert.equal(await page.locator("#served").getAttribute("data-source"), "network", "the first visit comes from the network");
  await context.setOffline(true);
  assert.equal(await reload(page), "worker");
  assert.equal(await page.locator("#build").textContent(), "Build 1", "the app's bundle ran");
  if (inChromium(t, "Firefox reports no workerStart for a navigation the worker answered")) {
    const navigation = await page.evaluate(() => performance.getEntriesByType("navigation")[0].workerStart > 0);
    assert.ok(navigation, "the page itself went through the worker");
  }
  const got = await fetched(page, APP_FILES);
  for (const path of APP_FILES) {
    assert.equal(got[path].status, 200, path);
    assert.ok(fromWorker(got[path].etag), `${path} came from the worker (ETag ${got[path].etag})`);
    assert.equal(got[path].sha, sha256(fileOf(server, path)), path);
  }
  assert.equal(got["/pkg/assetsync_bg.wasm"].type, "application/wasm");
  assert.match(got["/js/app.js"].type, /^text\/javascript/);
  // The .wasm streams (which needs its type), and the client it holds runs, all offline.
  const ran = await page.evaluate(async () => {
    await WebAssembly.compileStreaming(fetch("/pkg/assetsync_bg.wasm"));
    const m = await import("/pkg/assetsync.js");
    await m.default();
    return m.sha256Hex(new TextEncoder().encode("abc"));
  });
  assert.equal(ran, sha256(Buffer.from("abc")));
  await context.close();
  await server.stop();
});

test("a new build is announced, and after reload every file is from it, for what syncFolder pays", async () => {
  const server = await appServer();
  const context = await browser.newContext();
  const page = await openApp(context, server);
  assert.equal(await reload(page), "worker");
  // The same update through syncFolder, from the same starting point, in a page of its own.
  const reference = await context.newPage();
  await reference.goto(server.url + "/style.css");
  const syncFolder = (p) =>
    p.evaluate(async (ws) => {
      const m = await import("/pkg/assetsync.js");
      await m.default();
      const client = await m.SyncClient.connect(ws, { db: "reference" });
      const r = await client.syncFolder("");
      client.close();
      return r.wireBytesIn + r.wireBytesOut;
    }, server.ws);
  await syncFolder(reference);
  const oldApp = fileOf(server, "/js/app.js");
  // Several files change: the bundle, the stylesheet, a new lazy chunk; a file goes.
  server.change({
    "js/app.js": bundle(2),
    "style.css": Buffer.concat([fileOf(server, "/style.css"), Buffer.from("\n.extra { color: red; }\n")]),
    "js/chunk-2.js": Buffer.from("export const lazy = 2;\n"),
    "icon.svg": null,
  });
  const told = page.evaluate(() => new Promise((ok) => window.demo.app.addEventListener("update", (e) => ok(e.detail), { once: true })));
  await page.click("#check");
  const update = await told;
  await page.waitForSelector("#update:not([hidden])");
  assert.deepEqual([...update.fetched].sort(), ["js/app.js", "js/chunk-2.js", "style.css"]);
  assert.deepEqual(update.removed, ["icon.svg"]);
  // Until it reloads, the page is still served its own build.
  const before = await fetched(page, ["/js/app.js"]);
  assert.equal(before["/js/app.js"].sha, sha256(oldApp), "an open page keeps its build");
  assert.equal(await reload(page), "worker");
  assert.equal(await page.locator("#build").textContent(), "Build 2");
  const paths = [...APP_FILES, "/js/chunk-2.js"];
  const after = await fetched(page, paths);
  for (const path of paths) {
    assert.ok(fromWorker(after[path].etag), path);
    assert.equal(after[path].sha, sha256(fileOf(server, path)), `${path} is from the new build`);
  }
  assert.equal((await fetched(page, ["/icon.svg"]))["/icon.svg"].status, 404, "a removed file is not served");
  const viaWorker = update.wireBytesIn + update.wireBytesOut;
  const viaSyncFolder = await syncFolder(reference);
  console.log(`update: ${viaWorker} B through the worker, ${viaSyncFolder} B through syncFolder`);
  assert.ok(viaWorker <= 2 * viaSyncFolder, `the worker's update cost ${viaWorker} B, syncFolder ${viaSyncFolder} B`);
  await context.close();
  await server.stop();
});

test("two tabs on the old build stay on it while a third loads the new one", async () => {
  const server = await appServer();
  const context = await browser.newContext();
  const a = await openApp(context, server);
  assert.equal(await reload(a), "worker");
  const b = await context.newPage();
  await b.goto(server.url + "/");
  await b.waitForSelector('#served[data-source="worker"]');
  const old = sha256(fileOf(server, "/js/app.js"));
  server.change({ "js/app.js": bundle(2) });
  await a.evaluate(() => window.demo.app.check());
  const c = await context.newPage();
  await c.goto(server.url + "/");
  await c.waitForSelector('#served[data-source="worker"]');
  assert.equal(await c.locator("#build").textContent(), "Build 2");
  for (const tab of [a, b]) {
    assert.equal((await fetched(tab, ["/js/app.js"]))["/js/app.js"].sha, old, "an open tab keeps its build");
  }
  assert.equal(await reload(b), "worker");
  assert.equal(await b.locator("#build").textContent(), "Build 2");
  await context.close();
  await server.stop();
});

test("a Range request for the middle of a large asset returns exactly those bytes", async () => {
  const server = await appServer();
  const big = randomBytes(3 << 20);
  server.change({ "media/clip.bin": big });
  const context = await browser.newContext();
  const page = await openApp(context, server);
  assert.equal(await reload(page), "worker");
  const ranges = await page.evaluate(async () => {
    const get = async (range) => {
      const r = await fetch("/media/clip.bin", { headers: { Range: range } });
      return { status: r.status, range: r.headers.get("content-range"), length: r.headers.get("content-length"), body: [...new Uint8Array(await r.arrayBuffer())] };
    };
    return { middle: await get("bytes=1500000-1500099"), tail: await get("bytes=-10"), past: await get("bytes=99999999-") };
  });
  assert.equal(ranges.middle.status, 206);
  assert.equal(ranges.middle.range, `bytes 1500000-1500099/${big.length}`);
  assert.equal(ranges.middle.length, "100");
  assert.deepEqual(Buffer.from(ranges.middle.body), big.subarray(1500000, 1500100));
  assert.deepEqual(Buffer.from(ranges.tail.body), big.subarray(big.length - 10));
  assert.equal(ranges.past.status, 416);
  assert.equal(ranges.past.range, `bytes */${big.length}`);
  await context.close();
  await server.stop();
});

test("a damaged stored file is never served: the network answers, and the worker fetches it again", async () => {
  const server = await appServer();
  const context = await browser.newContext();
  const page = await openApp(context, server);
  // Damage the bundle's stored file behind the worker's back (a file of its own: it is large)
  // before the worker first serves it (the first visit's page had it from the network), and so
  // before it checks it.
  const damaged = await page.evaluate(async () => {
    const req = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
    const db = await req(indexedDB.open("assetsync-demo"));
    const files = db.transaction("files").objectStore("files");
    const [keys, blobs] = [await req(files.getAllKeys()), await req(files.getAll())];
    const bad = [];
    for (const blob of blobs) {
      const bytes = new Uint8Array(await new Response(blob).arrayBuffer());
      bytes[bytes.length >> 1] ^= 0xff;
      bad.push(new Blob([bytes]));
    }
    const tx = db.transaction("files", "readwrite");
    keys.forEach((key, i) => tx.objectStore("files").put(bad[i], key));
    await new Promise((ok) => (tx.oncomplete = ok));
    db.close();
    return keys.length;
  });
  assert.ok(damaged >= 1, "the bundle is stored as a file of its own");
  assert.equal(await reload(page), "worker");
  assert.equal(await page.locator("#build").textContent(), "Build 1", "the page still loads its bundle");
  const first = (await fetched(page, ["/js/app.js"]))["/js/app.js"];
  assert.equal(first.sha, sha256(fileOf(server, "/js/app.js")), "never the damaged bytes");
  // Repaired in the background: then served by the worker again.
  let repaired;
  for (let i = 0; i < 100 && !fromWorker(repaired?.etag); i++) {
    await page.waitForTimeout(100);
    repaired = (await fetched(page, ["/js/app.js"]))["/js/app.js"];
  }
  assert.ok(fromWorker(repaired.etag), "the repaired copy is served by the worker");
  assert.equal(repaired.sha, sha256(fileOf(server, "/js/app.js")));
  await context.close();
  await server.stop();
});

test("storage full while syncing a new build: the old build goes on being served, and the app is told why", async (t) => {
  const server = await appServer(["--no-compress"]);
  // Room for the first build (about 3 MB; Chromium wants up to twice a Blob's size free to
  // write it), not for a file as large as the whole quota more, whatever that margin.
  const { context, close } = await quotaContext(browser, server.url, 12 << 20);
  const page = await openApp(context, server);
  assert.equal(await reload(page), "worker");
  server.change({ "media/big.bin": randomBytes(12 << 20) });
  const { told, checked } = await page.evaluate(async () => {
    const told = new Promise((ok) => window.demo.app.addEventListener("error", (e) => ok(e.detail.message), { once: true }));
    const checked = await window.demo.app.check().then((u) => `resolved: ${JSON.stringify(u)}`, (e) => e.message);
    return { told: await Promise.race([told, new Promise((ok) => setTimeout(() => ok("not told"), 5000))]), checked };
  });
  assert.match(checked, /storage quota exceeded/);
  assert.equal(told, checked, "every page is told why");
  assert.equal(await reload(page), "worker");
  const big = (await fetched(page, ["/media/big.bin"]))["/media/big.bin"];
  assert.ok(!fromWorker(big.etag), "the new build is not served (the request went to the network)");
  assert.equal(await page.locator("#build").textContent(), "Build 1");
  await close();
  await server.stop();
});

test("a new version of the service worker keeps the stored builds: offline right after it takes over", async () => {
  const server = await appServer();
  const context = await browser.newContext();
  const page = await openApp(context, server);
  const first = await page.evaluate(() => navigator.serviceWorker.controller?.scriptURL ?? null);
  assert.ok(first);
  server.change({ "sw.js": Buffer.concat([fileOf(server, "/sw.js"), Buffer.from("\n// a new release\n")]) });
  await page.evaluate(async () => {
    const registration = await navigator.serviceWorker.getRegistration();
    await registration.update();
    await new Promise((ok) => (registration.installing || registration.waiting ? navigator.serviceWorker.addEventListener("controllerchange", ok, { once: true }) : ok()));
  });
  await context.setOffline(true);
  assert.equal(await reload(page), "worker");
  const got = await fetched(page, ["/js/app.js"]);
  assert.ok(fromWorker(got["/js/app.js"].etag));
  assert.equal(got["/js/app.js"].sha, sha256(fileOf(server, "/js/app.js")));
  await context.close();
  await server.stop();
});

test("the npm package, installed from its tarball, type-checks, syncs and serves in a page with no file from the source tree", async () => {
  const npm = join(repo, "target/npm");
  const tarball = readdirSync(npm).find((f) => /^assetsync-.*\.tgz$/.test(f));
  assert.ok(tarball, "scripts/build-web.sh packs target/npm/assetsync-VERSION.tgz");
  const site = scratch("assetsync-npm-site-");
  writeFileSync(join(site, "package.json"), JSON.stringify({ name: "scratch-app", private: true }));
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", join(npm, tarball)], { cwd: site, stdio: "pipe" });
  // Its types, as an app written in TypeScript uses them (strict; a wrong name fails).
  writeFileSync(join(site, "app.ts"), `import init, { SyncClient, type FolderResult } from "assetsync";
import { serveAssets } from "assetsync/sw";
import { registerAssets, type BuildUpdate } from "assetsync/page";
export async function page(): Promise<number> {
  await init();
  const client = await SyncClient.connect("ws://127.0.0.1/sync", { db: "x", memoryCache: false });
  const folder: FolderResult = await client.syncFolder("dist/");
  const app = await registerAssets("/sw.js");
  app.addEventListener("update", (e) => console.log((e as CustomEvent<BuildUpdate>).detail.buildBytes));
  const update: BuildUpdate = await app.updateReady;
  return folder.files + update.wireBytesIn + (await app.check()).files;
}
export function worker(): void {
  serveAssets({ url: "wss://example.com/sync", folder: "dist/", update: "now", live: true, checkOnLoad: false });
}
`);
  writeFileSync(join(site, "tsconfig.json"), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, module: "esnext", moduleResolution: "bundler", target: "es2022", lib: ["esnext", "dom"] },
    files: ["app.ts"],
  }));
  const tsc = join(repo, "tests/browser/node_modules/.bin/tsc");
  const typed = spawnSync(tsc, ["-p", "."], { cwd: site, encoding: "utf8" });
  assert.equal(typed.status, 0, `the package's types do not check:\n${typed.stdout}${typed.stderr}`);
  writeFileSync(join(site, "index.html"), `<!doctype html><meta charset="utf-8">
<script type="importmap">{ "imports": { "assetsync": "/node_modules/assetsync/assetsync.js", "assetsync/page": "/node_modules/assetsync/page.js" } }</script>
<script type="module">
  import init, { SyncClient } from "assetsync";
  import { registerAssets } from "assetsync/page";
  window.run = async (ws) => {
    await init();
    const client = await SyncClient.connect(ws, { db: "direct" });
    const r = await client.sync("app/hello.js");
    const synced = new TextDecoder().decode(r.bytes());
    const app = await registerAssets("/sw.js");
    if (!app.ready) await new Promise((ok) => app.addEventListener("update", ok, { once: true }));
    const sw = navigator.serviceWorker;
    if (!sw.controller) await new Promise((ok) => sw.addEventListener("controllerchange", ok, { once: true }));
    const served = await fetch("/app/hello.js");
    const outside = await fetch("/index.html");
    return { synced, served: await served.text(), etag: served.headers.get("etag"), outside: outside.headers.get("etag") };
  };
</script>`);
  writeFileSync(join(site, "sw.js"), `import { serveAssets } from "/node_modules/assetsync/sw.js";
serveAssets({ url: location.origin.replace(/^http/, "ws") + "/sync", folder: "app/", base: "/app/" });\n`);
  const server = await startServer({ www: site });
  server.write("app/hello.js", Buffer.from("export const hello = 'from the package';\n"));
  const context = await browser.newContext();
  const page = await context.newPage();
  const requested = new Set();
  page.on("request", (r) => requested.add(new URL(r.url()).pathname));
  await page.goto(server.url + "/");
  const got = await page.evaluate((ws) => window.run(ws), server.ws);
  assert.equal(got.synced, "export const hello = 'from the package';\n");
  assert.equal(got.served, got.synced, "the worker serves the folder it synced");
  assert.ok(fromWorker(got.etag), `served by the worker (ETag ${got.etag})`);
  assert.ok(!fromWorker(got.outside), "a request outside the worker's base goes to the network");
  assert.ok(![...requested].some((p) => p.startsWith("/pkg/")), "nothing came from the source tree's www/pkg");
  await context.close();
  await server.stop();
});

test("a live worker (for dev servers) is pushed each rebuild and, with update: \"now\", serves it to the open page at once; a route gets the fallback page", async () => {
  const server = await appServer();
  server.change({
    "sw.js": Buffer.from(`import { serveAssets } from "/pkg/sw.js";
serveAssets({ url: location.origin.replace(/^http/, "ws") + "/sync", db: "assetsync-demo", live: true, update: "now", navigateFallback: "index.html" });\n`),
  });
  const context = await browser.newContext();
  const page = await openApp(context, server);
  assert.equal(await reload(page), "worker");
  const told = page.evaluate(() => new Promise((ok) => window.demo.app.addEventListener("update", (e) => ok(e.detail), { once: true })));
  // Once the worker follows the folder, a rebuild is pushed.
  await page.waitForFunction(() => window.demo.app.refresh().then((s) => s.following), null, { timeout: 10_000 });
  server.change({ "js/app.js": bundle(2) });
  const update = await told;
  assert.deepEqual(update.fetched, ["js/app.js"], "pushed and synced without a check");
  const now = (await fetched(page, ["/js/app.js"]))["/js/app.js"];
  assert.ok(fromWorker(now.etag));
  assert.equal(now.sha, sha256(bundle(2)), "the open page is served the new build at once");
  // A single-page app's route: a navigation gets the fallback page, a plain fetch the network.
  assert.equal((await fetched(page, ["/settings/profile"]))["/settings/profile"].status, 404);
  await page.goto(server.url + "/settings/profile");
  await page.waitForSelector('#served[data-source="worker"]');
  assert.equal(await page.locator("#build").textContent(), "Build 2");
  await context.close();
  await server.stop();
});
