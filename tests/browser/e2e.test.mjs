// Page-level end-to-end tests: the real server binary on 127.0.0.1, the WASM client in headless
// Chromium with real IndexedDB. Run by scripts/test.sh (`node --test`).

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { cpSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { scratch, startServer, startRedis, startNginx, useBrowser, inChromium, quotaContext, launchBrowser, openClientPage, cuttingProxy, sha256, realBundle, repo, npmFile } from "./harness.mjs";

const browser = useBrowser();

/** A realistic bundle: three.js plus an app module, edited the way a rebuild would. */
function bundle(build) {
  const app = Array.from({ length: 30 }, (_, i) => `export const w${i} = "widget ${i} of build ${build}";`).join("\n");
  return Buffer.concat([Buffer.from(`/*! build ${build} */\n`), realBundle(), Buffer.from(`\n${app}\n`)]);
}

/** SHA-256 of the page's stored copy of `asset` (read from IndexedDB, no network). */
async function storedHash(page, asset) {
  return page.evaluate(async (asset) => window.hex(await window.client.read(asset)), asset);
}

/** Asserts that the page's stored copy of each of `files` ({ asset: bytes }) has those bytes. */
async function assertStored(page, files) {
  for (const [asset, bytes] of Object.entries(files)) {
    assert.equal(await storedHash(page, asset), sha256(bytes), asset);
  }
}

async function syncIn(page, asset) {
  return page.evaluate(async (asset) => {
    const r = await window.client.sync(asset);
    return { hash: await window.hex(r.bytes()), stats: r.stats };
  }, asset);
}

test("cold sync, cheap update, errors, and offline reads", async () => {
  const server = await startServer();
  const v1 = bundle(1);
  server.write("js/app.js", v1);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "e2e" });
  }, server.ws);

  const cold = await syncIn(page, "js/app.js");
  assert.equal(cold.hash, sha256(v1), "cold sync must equal the server's file");
  assert.equal(cold.stats.chunksReused, 0);
  // Whole file, compressed (plain zstd: the client has no old version).
  assert.ok(cold.stats.wireBytesIn < v1.length && cold.stats.wireBytesIn > v1.length / 10, `${cold.stats.wireBytesIn}`);

  const v2 = bundle(2);
  server.write("js/app.js", v2);
  const warm = await syncIn(page, "js/app.js");
  assert.equal(warm.hash, sha256(v2), "update must equal the new file");
  assert.ok(warm.stats.wireBytesIn < v2.length / 20, `update cost ${warm.stats.wireBytesIn} of ${v2.length} bytes`);
  assert.ok(warm.stats.chunksReused > warm.stats.chunks - 5);

  const same = await syncIn(page, "js/app.js");
  assert.equal(same.stats.chunksReused, same.stats.chunks);
  assert.ok(same.stats.wireBytesIn < 300, `unchanged asset cost ${same.stats.wireBytesIn} bytes`);

  const unknown = await page.evaluate(() => window.client.sync("no/such.js").then(() => "resolved", (e) => `${e instanceof Error} ${e.message}`));
  assert.match(unknown, /^true .*unknown asset/);

  await server.stop();
  const lost = await page.evaluate(() => window.client.sync("js/app.js").then(() => "resolved", (e) => e.message));
  assert.match(lost, /connection lost|cannot connect/);
  const offline = await storedHash(page, "js/app.js");
  assert.equal(offline, sha256(v2), "offline read must return the last verified copy");
  await context.close();
});

test("a newcomer's mistakes in the page get a fast error that says what to do", async (t) => {
  const server = await startServer();
  server.write("lib/hello.js", Buffer.from("export const hello = 1;\n"));
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  const base = server.ws.replace(/\/sync$/, "");
  const attempt = (ws, call) =>
    page.evaluate(
      async ([ws, call]) => {
        const started = performance.now();
        const message = await (async () => {
          const c = await window.assetsync.SyncClient.connect(ws, { db: "newcomer" });
          if (call === "folder") return c.sync("lib/");
          if (call === "subscribe") return c.subscribe("lib/nope.js", () => {});
          if (call === "closed") {
            c.close();
            return c.sync("lib/hello.js");
          }
          return "connected";
        })().then(() => "resolved", (e) => e.message);
        return { message, ms: performance.now() - started };
      },
      [ws, call],
    );
  const cases = [
    [`${base}/`, "connect", /that path is not an assetsync endpoint \(HTTP 200\); it is ws:\/\/HOST:PORT\/sync/],
    [`${base}/sync/`, "connect", /no assetsync endpoint at that path \(HTTP 404\)/],
    ["ws://127.0.0.1:1/sync", "connect", /nothing answers there; is the server running\?/],
    [server.ws, "folder", /"lib\/" is a folder: sync it with syncFolder\("lib\/"\)/],
    [server.ws, "subscribe", /nothing by that name on the server: check it, or subscribe to its folder "lib\/"/],
    [server.ws, "closed", /this client is closed: make a new one with SyncClient.connect/],
  ];
  for (const [ws, call, expected] of cases) {
    const { message, ms } = await attempt(ws, call);
    assert.match(message, expected, `${ws} ${call}`);
    assert.ok(ms < 2000, `${ws} ${call} took ${ms} ms`);
  }
  // A page served under a name the server does not allow (its files come from the server
  // through the browser's routing, so nothing leaves the machine). With Local Network Access
  // off, as for a server on another machine, the server refuses the page; with it on, the
  // browser keeps the page from loopback. Both messages name the fix.
  const refusedOrigin = /refused this page's origin \(http:\/\/app.example[;)].*start it with --allow-origin http:\/\/app.example/;
  const fromAnotherSite = async (browser) => {
    const foreign = await browser.newContext();
    await foreign.route("http://app.example/**", async (route) => {
      const url = route.request().url().replace("http://app.example", server.url);
      await route.fulfill({ response: await route.fetch({ url }) });
    });
    const page = await foreign.newPage();
    await page.goto("http://app.example/style.css");
    const { message, ms } = await page.evaluate(async (ws) => {
      const m = await import("/pkg/assetsync.js");
      await m.default();
      const started = performance.now();
      const message = await m.SyncClient.connect(ws, { db: "newcomer" }).then(() => "connected", (e) => e.message);
      return { message, ms: performance.now() - started };
    }, server.ws);
    assert.match(message, refusedOrigin);
    assert.ok(ms < 2000, `a page of another site took ${ms} ms`);
    await foreign.close();
    return message;
  };
  if (inChromium(t, "a page of another site is made with Playwright's request routing and Chromium's Local Network Access switch")) {
    assert.match(await fromAnotherSite(browser), /or the browser kept this page of another site from a local address/);
    const withoutLocalNetworkAccess = await launchBrowser(["--disable-features=LocalNetworkAccessChecks"]);
    assert.match(await fromAnotherSite(withoutLocalNetworkAccess), /the server answers but refused the WebSocket/);
    await withoutLocalNetworkAccess.close();
    assert.match(server.log(), /origin "http:\/\/app.example" may not connect \(allow it with --allow-origin http:\/\/app.example\)/);
  }
  await server.stop();
  await context.close();
});

test("a fresh start without a server reads the cache with SyncClient.open", async () => {
  const server = await startServer();
  const v1 = bundle(7);
  server.write("a.js", v1);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    const c = await window.assetsync.SyncClient.connect(ws, { db: "offline-start" });
    await c.sync("a.js");
    c.close();
    c.free();
  }, server.ws);
  await server.stop();
  const result = await page.evaluate(async (ws) => {
    const c = await window.assetsync.SyncClient.open(ws, { db: "offline-start" });
    const bytes = await c.read("a.js");
    const missing = await c.read("never-synced.js");
    const sync = await c.sync("a.js").then(() => "resolved", (e) => e.message);
    return { hash: await window.hex(bytes), missing, sync };
  }, server.ws);
  assert.equal(result.hash, sha256(v1));
  assert.equal(result.missing, null);
  assert.match(result.sync, /cannot connect/);
  await context.close();
});

test("a damaged file in IndexedDB is detected and repaired by fetching only the damaged chunk", async () => {
  const server = await startServer();
  server.write("a.js", bundle(1));
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "damage" });
    await window.client.sync("a.js");
  }, server.ws);
  // Flip one byte in the middle of the stored file, behind the client's back.
  await page.evaluate(async () => {
    const db = await idb("damage");
    const [key] = await req(db.transaction("files").objectStore("files").getAllKeys());
    const file = await req(db.transaction("files").objectStore("files").get(key));
    const bytes = new Uint8Array(await file.arrayBuffer());
    bytes[bytes.length >> 1] ^= 0xff;
    await req(db.transaction("files", "readwrite").objectStore("files").put(new Blob([bytes]), key));
    db.close();
  });
  const damaged = await page.evaluate(() => window.client.read("a.js").then(() => "resolved", (e) => e.message));
  assert.match(damaged, /cached copy of a\.js is damaged; the next sync repairs it/);
  const v2 = bundle(2);
  server.write("a.js", v2);
  // A new client (as after a reload), which has only the store to build on.
  await page.evaluate(async (ws) => {
    window.client.close();
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "damage" });
  }, server.ws);
  const r = await syncIn(page, "a.js");
  assert.equal(r.hash, sha256(v2));
  assert.equal(r.stats.retried, true, "the damaged chunk must be noticed");
  assert.equal(r.stats.requests, 2);
  assert.ok(r.stats.wireBytesIn < v2.length / 10, `repair cost ${r.stats.wireBytesIn} bytes`);
  const stored = await storedHash(page, "a.js");
  assert.equal(stored, sha256(v2));
  await server.stop();
  await context.close();
});

test("the WASM zstd decoder rebuilds identical bytes; a restarted server remembers the client's version, one without a store is answered from a chunk set", async () => {
  const first = await startServer();
  const v1 = realBundle();
  // A minifier-style rename touches most chunks but little text.
  const v2 = Buffer.from(v1.toString("latin1").replaceAll("Vector3", "Vec3"), "latin1");
  first.write("three.js", v1);
  const context = await browser.newContext();
  const page = await openClientPage(context, first);
  const connect = (ws) => page.evaluate(async (ws) => {
    window.client?.close();
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "zstd" });
  }, ws);
  await connect(first.ws);
  await syncIn(page, "three.js");
  first.write("three.js", v2);
  const renamed = await syncIn(page, "three.js");
  assert.equal(renamed.hash, sha256(v2), "the decoded file must equal the server's");
  const fetched = renamed.stats.chunks - renamed.stats.chunksReused;
  assert.ok(fetched > renamed.stats.chunks / 4, `the rename should touch many chunks, touched ${fetched}`);
  assert.ok(renamed.stats.wireBytesIn < v2.length / 20, `compressed update cost ${renamed.stats.wireBytesIn} bytes`);

  // A new server process on the same folder remembers the client's version in its store.
  await first.stop();
  const second = await startServer({ root: first.root });
  const v3 = Buffer.concat([v2, Buffer.from("\nexport const patched = true;\n")]);
  second.write("three.js", v3);
  await connect(second.ws);
  const restarted = await syncIn(page, "three.js");
  assert.equal(restarted.hash, sha256(v3));
  assert.equal(restarted.stats.requests, 1, "the restarted server knew the client's version");
  assert.ok(restarted.stats.wireBytesIn < 2048, `update after a restart cost ${restarted.stats.wireBytesIn} bytes`);

  // One without a store knows none of them: the client's chunk set answers instead.
  await second.stop();
  const third = await startServer({ root: first.root, extraArgs: ["--no-store"] });
  const v4 = Buffer.concat([v3, Buffer.from("\nexport const patchedAgain = true;\n")]);
  third.write("three.js", v4);
  await connect(third.ws);
  const after = await syncIn(page, "three.js");
  assert.equal(after.hash, sha256(v4));
  assert.equal(after.stats.requests, 2, "unknown_base, then the chunk set");
  assert.ok(after.stats.wireBytesIn < 32 * 1024, `update without a store cost ${after.stats.wireBytesIn} bytes`);
  assert.ok(after.stats.wireBytesOut < 4096, `chunk set cost ${after.stats.wireBytesOut} bytes`);
  await third.stop();
  await context.close();
});

test("two subscribed pages receive a rebuilt asset by push, for kilobytes, and see it removed", async () => {
  const server = await startServer();
  server.write("js/app.js", bundle(1));
  const context = await browser.newContext();
  const pages = await Promise.all([openClientPage(context, server), openClientPage(context, server)]);
  for (const [i, page] of pages.entries()) {
    await page.evaluate(async ({ ws, db }) => {
      window.client = await window.assetsync.SyncClient.connect(ws, { db });
      await window.client.sync("js/app.js");
      window.updates = [];
      await window.client.subscribe("js/", (u) => window.updates.push(u));
    }, { ws: server.ws, db: `live-${i}` });
  }
  const all = (page) => page.evaluate(() => JSON.stringify(window.updates.map((u) => [u.asset, u.version, u.error?.message])));
  const last = (page) => page.evaluate(async () => {
    const u = window.updates.findLast((u) => u.asset === "js/app.js");
    const bytes = u.result ? u.result.bytes() : null;
    return { asset: u.asset, version: u.version, error: u.error?.message, wire: u.result?.stats.wireBytesIn, hash: bytes && (await window.hex(bytes)) };
  });
  // A rebuild: temporary file, then rename (the harness writes that way).
  const v2 = bundle(2);
  server.write("js/app.js", v2);
  for (const page of pages) {
    await page.waitForFunction(() => window.updates.length > 0, null, { timeout: 10_000 });
    const u = await last(page);
    assert.equal(u.error, undefined);
    assert.equal(u.asset, "js/app.js");
    assert.equal(u.hash, sha256(v2), "the pushed update must equal the new file");
    assert.ok(u.wire < 20 * 1024, `a pushed rebuild cost ${u.wire} bytes`);
  }
  unlinkSync(join(server.root, "js/app.js"));
  for (const page of pages) {
    await page.waitForFunction(() => window.updates.length > 1, null, { timeout: 10_000 });
    assert.equal((await last(page)).version, null, await all(page));
    assert.equal(await page.evaluate(() => window.client.read("js/app.js")), null, "a removed asset leaves the store");
  }
  // A file created in the folder arrives too.
  server.write("js/new.js", Buffer.from("export const fresh = true;\n"));
  for (const page of pages) {
    await page.waitForFunction(() => window.updates.some((u) => u.asset === "js/new.js"), null, { timeout: 10_000 });
    const text = await page.evaluate(async () => new TextDecoder().decode(await window.client.read("js/new.js")));
    assert.equal(text, "export const fresh = true;\n");
  }
  await server.stop();
  await context.close();
});

test("a page subscribed to an edge two hops from the origin gets an origin rebuild by push, as a delta", async () => {
  const origin = await startServer();
  origin.write("js/app.js", bundle(1));
  const a = await startServer({ upstream: origin.ws });
  const b = await startServer({ upstream: a.ws });
  await b.waitForLog("pulled from upstream", 30_000);
  const context = await browser.newContext();
  const page = await openClientPage(context, b);
  await page.evaluate(async ({ ws }) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "edge" });
    await window.client.sync("js/app.js");
    window.updates = [];
    await window.client.subscribe("js/", (u) => window.updates.push(u));
  }, { ws: b.ws });
  const v2 = bundle(2);
  const started = Date.now();
  origin.write("js/app.js", v2);
  await page.waitForFunction(() => window.updates.some((u) => u.result), null, { timeout: 10_000 });
  const elapsed = Date.now() - started;
  const u = await page.evaluate(async () => {
    const u = window.updates.find((u) => u.result);
    return { hash: await window.hex(u.result.bytes()), wire: u.result.stats.wireBytesIn };
  });
  assert.equal(u.hash, sha256(v2), "the page must hold the origin's new file");
  assert.ok(u.wire < 20 * 1024, `the rebuild cost the page ${u.wire} bytes`);
  assert.ok(elapsed < 3000, `the rebuild took ${elapsed} ms to reach the page through two edges`);
  await context.close();
  for (const server of [b, a, origin]) await server.stop();
});

test("a subscribed page reconnects by itself after a server restart and catches up", async () => {
  const first = await startServer();
  first.write("js/app.js", bundle(1));
  const context = await browser.newContext();
  const page = await openClientPage(context, first);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "resume" });
    await window.client.sync("js/app.js");
    window.updates = [];
    await window.client.subscribe("js/", (u) => window.updates.push(u));
  }, first.ws);
  await first.stop();
  // Changed while the server was down: one file rebuilt, one added.
  first.write("js/app.js", bundle(2));
  first.write("js/extra.js", Buffer.from("export const extra = 1;\n"));
  const second = await startServer({ root: first.root, listen: new URL(first.url).host });
  await page.waitForFunction(() => ["js/app.js", "js/extra.js"].every((a) => window.updates.some((u) => u.asset === a && u.result)), null, { timeout: 20_000 });
  const hash = await storedHash(page, "js/app.js");
  assert.equal(hash, sha256(bundle(2)));
  // Each change is told once: a page that runs a script per update runs it once.
  await new Promise((r) => setTimeout(r, 1500));
  const told = await page.evaluate(() => window.updates.map((u) => `${u.asset} ${u.version}`));
  assert.deepEqual(told.toSorted(), [...new Set(told)].toSorted(), `updates told twice: ${told}`);
  await second.stop();
  await context.close();
});

test("syncFolder fetches a folder in one request and mirrors deletions", async () => {
  const server = await startServer();
  // The copy of vendor.js reuses the chunks sent for the first, before either is in IndexedDB.
  const files = {
    "dist/app.js": bundle(1),
    "dist/vendor.js": realBundle(),
    "dist/copy/vendor.js": realBundle(),
    "dist/css/site.css": Buffer.from("body{}"),
  };
  for (const [name, bytes] of Object.entries(files)) server.write(name, bytes);
  server.write("elsewhere.js", Buffer.from("not in dist"));
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  const warnings = [];
  page.on("console", (m) => m.type() === "warning" && warnings.push(m.text()));
  const first = await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "folder" });
    return window.client.syncFolder("dist/");
  }, server.ws);
  assert.deepEqual([...first.fetched].sort(), Object.keys(files).sort());
  assert.equal(first.files, 4);
  assert.deepEqual(warnings, [], "a file was fetched again");
  assert.ok(first.wireBytesIn < 1.3 * gzipSync(realBundle()).length, `the first sync cost ${first.wireBytesIn} bytes`);
  await assertStored(page, files);
  // A rebuild: app.js edited, the stylesheet gone.
  server.write("dist/app.js", bundle(2));
  unlinkSync(join(server.root, "dist/css/site.css"));
  const second = await page.evaluate(() => window.client.syncFolder("dist/"));
  assert.deepEqual(second.fetched, ["dist/app.js"]);
  assert.deepEqual(second.removed, ["dist/css/site.css"]);
  assert.ok(second.wireBytesIn < 20 * 1024, `folder update cost ${second.wireBytesIn} bytes`);
  assert.equal(await page.evaluate(() => window.client.read("dist/css/site.css")), null);
  const hash = await storedHash(page, "dist/app.js");
  assert.equal(hash, sha256(bundle(2)));
  await server.stop();
  await context.close();
});

test("on a slow link, sync progress comes every 64 KiB of the wire and rises to the total", async () => {
  const server = await startServer();
  server.write("three.js", realBundle());
  const proxy = await cuttingProxy(server, [], { pace: 256 * 1024 });
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  const { seen, wire } = await page.evaluate(async (ws) => {
    const client = await window.assetsync.SyncClient.connect(ws, { db: "slow" });
    const seen = [];
    const result = await client.sync("three.js", (p) => seen.push([p.receivedBytes, p.totalBytes]));
    return { seen, wire: result.stats.wireBytesIn };
  }, proxy.ws);
  const total = realBundle().length;
  assert.ok(seen.every(([r], i) => i === 0 || r > seen[i - 1][0]), `progress must rise: ${seen}`);
  assert.deepEqual(seen.at(-1), [total, total]);
  assert.ok(seen.length >= Math.floor(wire / 65536), `${seen.length} reports for ${wire} bytes: ${seen}`);
  await proxy.close();
  await server.stop();
  await context.close();
});

test("a transfer cut mid-way resumes: the chunks that arrived are kept and not fetched again", async (t) => {
  // Uncompressed, so that every chunk travels in its own frame and the byte counts are exact.
  const server = await startServer({ extraArgs: ["--no-compress"] });
  const MiB = 1 << 20;
  const big = randomBytes(3 * MiB);
  server.write("big.bin", big);
  const folder = { "dist/a.bin": randomBytes(1.5 * MiB), "dist/b.bin": randomBytes(1.5 * MiB) };
  for (const [name, bytes] of Object.entries(folder)) server.write(name, bytes);
  // Connection 1 is cut 1.2 MB in, connection 2 (the resumed request) 1 MB in; connection 4,
  // the folder sync's, 2 MB in.
  const proxy = await cuttingProxy(server, [1_200_000, 1_000_000, Infinity, 2_000_000]);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  const single = await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "resume" });
    const r = await window.client.sync("big.bin");
    return { hash: await window.hex(r.bytes()), stats: r.stats };
  }, proxy.ws);
  assert.equal(single.hash, sha256(big));
  assert.equal(single.stats.reconnects, 2);
  // Everything that arrived before a cut was kept: about the file once, plus framing and the
  // partial frames the cuts destroyed (refetching would cost 2.2 MB more).
  assert.ok(single.stats.wireBytesIn < big.length + 128 * 1024, `cost ${single.stats.wireBytesIn} bytes`);
  assert.equal(proxy.connections, 3);
  t.diagnostic(`3 MiB file, cut twice: ${single.stats.wireBytesIn} bytes in, ${single.stats.elapsedMs.toFixed(0)} ms`);

  await page.evaluate(() => window.client.close());
  const total = folder["dist/a.bin"].length + folder["dist/b.bin"].length;
  const many = await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "resume-folder" });
    return window.client.syncFolder("dist/");
  }, proxy.ws);
  assert.deepEqual([...many.fetched].sort(), Object.keys(folder));
  assert.equal(many.reconnects, 1);
  assert.ok(many.wireBytesIn < total + 128 * 1024, `folder cost ${many.wireBytesIn} bytes`);
  t.diagnostic(`3 MiB folder, cut once: ${many.wireBytesIn} bytes in, ${many.elapsedMs.toFixed(0)} ms`);
  await assertStored(page, folder);
  await proxy.close();
  await server.stop();
  await context.close();
});

test("a full IndexedDB quota fails the sync clearly and keeps the previous version", async (t) => {
  const server = await startServer({ extraArgs: ["--no-compress"] });
  const MiB = 1 << 20;
  const v1 = randomBytes(1 * MiB);
  server.write("big.bin", v1);
  // Room for v1 but not for v2 (Chromium 156 wants twice a Blob's size free to write it).
  const { context, lift, close } = await quotaContext(browser, server.url, 4.2 * MiB);
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "quota" });
    await window.client.sync("big.bin");
  }, server.ws);
  const v2 = randomBytes(8 * MiB);
  server.write("big.bin", v2);
  const full = await page.evaluate(() => window.client.sync("big.bin").then(() => "resolved", (e) => e.message));
  t.diagnostic(`error: ${full}`);
  // Chromium gives the exception's name alone, Firefox a sentence after it.
  assert.match(full, /^big\.bin: storage quota exceeded \(QuotaExceededError(: [^)]+)?\); the previous version is kept$/);
  const kept = await storedHash(page, "big.bin");
  assert.equal(kept, sha256(v1), "the previous version must still be readable");
  // With room again (the limit lifted), the same call succeeds.
  if ((await lift()) || inChromium(t, "Firefox's storage limit is set when it starts, and cannot be lifted")) {
    const after = await syncIn(page, "big.bin");
    assert.equal(after.hash, sha256(v2));
  }
  await server.stop();
  await close();
});

test("two pages syncing the same asset at once both end correct, with a consistent store", async () => {
  const server = await startServer();
  server.write("js/app.js", bundle(1));
  const context = await browser.newContext();
  const pages = await Promise.all([openClientPage(context, server), openClientPage(context, server)]);
  for (const page of pages) {
    await page.evaluate(async (ws) => {
      window.client = await window.assetsync.SyncClient.connect(ws, { db: "shared" });
    }, server.ws);
  }
  for (const build of [1, 2, 3]) {
    const content = bundle(build);
    server.write("js/app.js", content);
    // Both tabs sync concurrently while one of them also collects garbage.
    const [a, b] = await Promise.all([
      syncIn(pages[0], "js/app.js"),
      pages[1].evaluate(async () => {
        const [r] = await Promise.all([window.client.sync("js/app.js"), window.client.gc()]);
        return { hash: await window.hex(r.bytes()), stats: r.stats };
      }),
    ]);
    assert.equal(a.hash, sha256(content), `tab 1, build ${build}`);
    assert.equal(b.hash, sha256(content), `tab 2, build ${build}`);
  }
  await pages[0].evaluate(() => window.client.gc());
  for (const page of pages) {
    const stored = await storedHash(page, "js/app.js");
    assert.equal(stored, sha256(bundle(3)), "the store must hold the last version intact");
  }
  const records = await pages[0].evaluate(async () => {
    const db = await idb("shared");
    const count = (s) => req(db.transaction(s).objectStore(s).count());
    const out = { files: await count("files"), manifests: await count("manifests"), chunks: await count("chunks") };
    db.close();
    return out;
  });
  assert.deepEqual(records, { files: 1, manifests: 1, chunks: 0 }, "old versions must not pile up");
  await server.stop();
  await context.close();
});

test("closing the tab in the middle of a sync leaves the previous version readable", async () => {
  const server = await startServer({ extraArgs: ["--no-compress"] });
  const MiB = 1 << 20;
  const v1 = randomBytes(2 * MiB);
  server.write("big.bin", v1);
  // The first connection passes; the second stalls 1 MB into its answer.
  const proxy = await cuttingProxy(server, [Infinity, 1_000_000], { stall: true });
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    const c = await window.assetsync.SyncClient.connect(ws, { db: "tab-close" });
    await c.sync("big.bin");
    c.close();
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "tab-close" });
  }, proxy.ws);
  const v2 = randomBytes(2 * MiB);
  server.write("big.bin", v2);
  await page.evaluate(() => {
    window.client.sync("big.bin", (p) => { window.received = p.receivedBytes; });
  });
  await page.waitForFunction(() => window.received > 0, null, { timeout: 10_000 });
  await page.close();
  // A new tab, offline: the store holds v1 whole.
  const next = await openClientPage(context, server);
  const stored = await next.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.open(ws, { db: "tab-close" });
    return window.hex(await window.client.read("big.bin"));
  }, server.ws);
  assert.equal(stored, sha256(v1), "the interrupted sync must not touch the committed version");
  const r = await syncIn(next, "big.bin");
  assert.equal(r.hash, sha256(v2));
  await proxy.close();
  await server.stop();
  await context.close();
});

/** A server whose pages can also load the previous release's client, at `/pkg-v1/` (its store
 *  is the version-1 layout: a record per chunk). */
async function serverWithPreviousRelease() {
  const www = scratch("assetsync-www-");
  cpSync(join(repo, "www"), www, { recursive: true });
  cpSync(join(repo, "tests/browser/fixtures/pkg-v1"), join(www, "pkg-v1"), { recursive: true });
  return startServer({ www });
}

test("a store written by the previous release is upgraded in place, and nothing is fetched again", async () => {
  const server = await serverWithPreviousRelease();
  const files = { "a.js": bundle(1), "dist/x.js": bundle(2), "dist/y.js": randomBytes(300_000) };
  for (const [asset, bytes] of Object.entries(files)) server.write(asset, bytes);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    const old = await import("/pkg-v1/assetsync.js");
    await old.default();
    const c = await old.SyncClient.connect(ws, { db: "upgrade" });
    await c.sync("a.js");
    await c.syncFolder("dist/");
    c.close();
  }, server.ws);
  const before = await page.evaluate(async () => {
    const db = await idb("upgrade");
    const out = { version: db.version, chunks: await req(db.transaction("chunks").objectStore("chunks").count()) };
    db.close();
    return out;
  });
  assert.equal(before.version, 1);
  assert.ok(before.chunks > 100, `the old layout keeps chunk records, found ${before.chunks}`);

  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.open(ws, { db: "upgrade" });
  }, server.ws);
  await assertStored(page, files);
  const after = await page.evaluate(async () => {
    const db = await idb("upgrade");
    const count = (s) => req(db.transaction(s).objectStore(s).count());
    const out = { version: db.version, chunks: await count("chunks"), files: await count("files") };
    db.close();
    return out;
  });
  assert.deepEqual(after, { version: 5, chunks: 0, files: 3 });
  // The upgraded versions serve as bases: an edit costs a delta, not the file.
  const edited = Buffer.concat([files["a.js"], Buffer.from("\nexport const edited = 1;\n")]);
  server.write("a.js", edited);
  const r = await syncIn(page, "a.js");
  assert.equal(r.hash, sha256(edited));
  assert.ok(r.stats.wireBytesIn < 2048, `update after the upgrade cost ${r.stats.wireBytesIn} bytes`);
  const same = await page.evaluate(() => window.client.syncFolder("dist/"));
  assert.deepEqual(same.fetched, []);
  await server.stop();
  await context.close();
});

test("a page of the previous release holding the store open gets a clear error, not a hang", async () => {
  const server = await serverWithPreviousRelease();
  const v1 = bundle(1);
  server.write("a.js", v1);
  const context = await browser.newContext();
  const old = await context.newPage();
  await old.goto(server.url + "/style.css");
  await old.evaluate(async (ws) => {
    const m = await import("/pkg-v1/assetsync.js");
    await m.default();
    window.client = await m.SyncClient.connect(ws, { db: "held" });
    await window.client.sync("a.js");
  }, server.ws);
  const page = await openClientPage(context, server);
  const started = Date.now();
  const refused = await page.evaluate((ws) => Promise.race([
    window.assetsync.SyncClient.connect(ws, { db: "held" }).then(() => "resolved", (e) => e.message),
    new Promise((ok) => setTimeout(() => ok("still waiting after 15 s"), 15_000)),
  ]), server.ws);
  const waited = Date.now() - started;
  assert.match(refused, /^cannot open the store "held": a page running an older assetsync holds it open; reload or close that page$/);
  assert.ok(waited < 10_000, `gave up after ${waited} ms`);
  // Once that page is gone, the same call upgrades the store, and the old version is there.
  await old.close();
  assert.equal(await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "held" });
    return window.hex(await window.client.read("a.js"));
  }, server.ws), sha256(v1));
  await server.stop();
  await context.close();
});

/** The built-in demo's server, and its page in a new context, once the page is ready offline. */
async function openDemo() {
  const server = await startServer({ demo: true });
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(server.url + "/");
  await page.waitForSelector('#status[data-state="ok"]', { timeout: 30_000 });
  return { server, context, page };
}

/** The bytes a figure the demo shows ("744 B", "8.2 KB", "1.23 MB") stands for. */
const shownBytes = (amount, unit) => Number(amount) * { B: 1, KB: 1024, MB: 1024 * 1024 }[unit];

test("the demo is a PWA: installable, served offline by its worker, a rebuild is announced in every tab and loads for kilobytes", async (t) => {
  const { server, context, page } = await openDemo();
  assert.equal(await page.locator("#build").textContent(), "Build 1");
  if (inChromium(t, "installability is asked through the DevTools protocol")) {
    const cdp = await context.newCDPSession(page);
    const { installabilityErrors } = await cdp.send("Page.getInstallabilityErrors");
    // The test's context is incognito-like (nothing installs there): what the app could fix is.
    const errors = installabilityErrors.map((e) => e.errorId).filter((id) => id !== "in-incognito");
    assert.deepEqual(errors, [], "the demo is an installable PWA");
    await cdp.detach();
  }
  await context.setOffline(true);
  await page.reload();
  await page.waitForSelector('#served[data-source="worker"]', { timeout: 30_000 });
  assert.equal(await page.locator("#network").textContent(), "Offline");
  assert.equal(await page.locator("#build").textContent(), "Build 1", "the bundle ran offline");
  await context.setOffline(false);
  await page.reload();
  await page.waitForSelector('#served[data-source="worker"]', { timeout: 30_000 });
  // A second tab: the rebuild in the first is announced to it too.
  const other = await context.newPage();
  await other.goto(server.url + "/");
  await other.waitForSelector('#served[data-source="worker"]', { timeout: 30_000 });
  await page.click("#rebuild");
  for (const p of [page, other]) await p.waitForSelector("#update:not([hidden])", { timeout: 30_000 });
  const wire = await page.locator("#wire").textContent();
  const [, amount, unit] = /^([\d.]+) (B|KB|MB)$/.exec(wire);
  const bytes = shownBytes(amount, unit);
  assert.ok(bytes < 8 * 1024, `a rebuild should cost about a kilobyte, showed ${wire}`);
  assert.equal(await page.locator(".chart-row").count(), 2, "the chart shows the first sync and the update");
  mkdirSync(join(repo, "target"), { recursive: true });
  await page.screenshot({ path: join(repo, "target/demo-update.png"), fullPage: true });
  await page.click("#reload");
  await page.waitForSelector('#served[data-source="worker"]', { timeout: 30_000 });
  assert.equal(await page.locator("#build").textContent(), "Build 2");
  await page.screenshot({ path: join(repo, "target/demo.png"), fullPage: true });
  await server.stop();
  await context.close();
});

test("the demo page edits its bundle and saves it back for kilobytes; the next load runs the edit", async () => {
  const { server, context, page } = await openDemo();
  await page.waitForSelector("#editor:not([hidden])");
  await page.evaluate(() => { document.querySelector("#greeting").value = "Saved from the test"; });
  await page.click("#save");
  await page.waitForFunction(() => /^(Saved|Save failed)/.test(document.querySelector("#save-note").textContent), null, { timeout: 30_000 });
  const said = await page.locator("#save-note").textContent();
  const m = /^Saved: ([\d.]+) (B|KB|MB) sent for a ([\d.]+) MB bundle \((\d+) of (\d+) chunks\)/.exec(said);
  assert.ok(m, said);
  const sent = shownBytes(m[1], m[2]);
  assert.ok(sent < 64 * 1024, `a save of a one-line edit should cost kilobytes: ${said}`);
  assert.ok(Number(m[4]) <= 3, said);
  // The page's service worker synced the saved build (the editor awaits its check): a reload
  // runs it.
  await page.reload();
  await page.waitForSelector('#served[data-source="worker"]', { timeout: 30_000 });
  assert.equal(await page.locator("#said").textContent(), "Saved from the test", "the saved bundle ran");
  mkdirSync(join(repo, "target"), { recursive: true });
  await page.screenshot({ path: join(repo, "target/demo-editor.png"), fullPage: true });
  await server.stop();
  await context.close();
});

test("the client runs in a worker: a folder and an asset sync, verify, commit and read back there", async () => {
  const server = await startServer();
  const files = { "app/a.js": bundle(1), "app/b.css": randomBytes(5000), "app/c/d.js": randomBytes(9000), "big.bin": randomBytes(300_000) };
  for (const [asset, bytes] of Object.entries(files)) server.write(asset, bytes);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  const got = await page.evaluate(async (ws) => {
    // A module worker of its own: no `window` there, the same IndexedDB and WebSocket.
    const source = `
      import init, { SyncClient } from "${location.origin}/pkg/assetsync.js";
      const hex = async (b) => [...new Uint8Array(await crypto.subtle.digest("SHA-256", b))]
        .map((x) => x.toString(16).padStart(2, "0")).join("");
      onmessage = async ({ data: ws }) => {
        try {
          await init();
          const client = await SyncClient.connect(ws, { db: "in-a-worker" });
          const folder = await client.syncFolder("app/");
          const one = await client.sync("big.bin");
          const again = await client.syncFolder("app/");
          const hashes = {};
          for (const asset of [...folder.fetched, "big.bin"]) hashes[asset] = await hex(await client.read(asset));
          client.close();
          // A refused connection is told apart there too (an HTTP probe of the same address).
          const refused = await SyncClient.connect("ws://127.0.0.1:9/sync", { db: "in-a-worker" }).then(() => "connected", (e) => e.message);
          postMessage({ fetched: folder.fetched, again: again.fetched, hashes, refused, inWindow: typeof window });
        } catch (e) {
          postMessage({ error: String(e) });
        }
      };`;
    const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    const worker = new Worker(url, { type: "module" });
    const answer = new Promise((ok) => (worker.onmessage = ({ data }) => ok(data)));
    worker.onerror = (e) => console.error("worker error:", e.message);
    worker.postMessage(ws);
    return answer;
  }, server.ws);
  assert.equal(got.error, undefined, got.error);
  assert.equal(got.inWindow, "undefined", "the client must have run outside a page's window");
  assert.deepEqual([...got.fetched].sort(), ["app/a.js", "app/b.css", "app/c/d.js"]);
  assert.deepEqual(got.again, [], "the second folder sync finds it unchanged");
  assert.match(got.refused, /nothing answers there; is the server running\?/);
  for (const [asset, bytes] of Object.entries(files)) assert.equal(got.hashes[asset], sha256(bytes), asset);
  await server.stop();
  await context.close();
});

test("a folder larger than what the client holds in memory still commits in one switch", async () => {
  const server = await startServer();
  // 42 MiB: past the 32 MiB the client holds before writing files ahead of the commit.
  const files = {};
  for (let i = 0; i < 12; i++) files[`big/f${i}.bin`] = randomBytes(3.5 * 1024 * 1024);
  files["big/small-a.js"] = randomBytes(2000);
  files["big/small-b.js"] = randomBytes(3000);
  for (const [asset, bytes] of Object.entries(files)) server.write(asset, bytes);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  const done = await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "write-ahead" });
    const done = await window.client.syncFolder("big/");
    const db = await idb("write-ahead");
    const pending = await req(db.transaction("pending").objectStore("pending").count());
    db.close();
    return { fetched: done.fetched.length, pending, gc: await window.client.gc() };
  }, server.ws);
  assert.equal(done.fetched, Object.keys(files).length);
  assert.equal(done.pending, 0, "the commit drops the note of what it wrote ahead");
  assert.deepEqual([done.gc.versionsDeleted, done.gc.packsDeleted], [0, 0], "nothing written was left unreached");
  await assertStored(page, files);
  await server.stop();
  await context.close();
});

test("through nginx, a page subscribed on one instance hears within 2 s of a change only the other instance saw", async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  // One build folder, two instances on one bus: B watches it, A does not (only the machine
  // that wrote a shared volume gets file events). nginx sends everyone to A while it is up.
  const root = scratch("assetsync-shared-root-");
  const bus = ["--bus", redis.url, "--trusted-proxy", "127.0.0.1"];
  const b = await startServer({ root, extraArgs: bus });
  const a = await startServer({ root, extraArgs: [...bus, "--no-watch"] });
  const host = (server) => server.url.replace("http://", "");
  const nginx = await startNginx(t, [host(a), `${host(b)} backup`]);
  if (!nginx) return;
  b.write("js/app.js", bundle(1));
  const context = await browser.newContext();
  const page = await openClientPage(context, nginx);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "through-nginx" });
    await window.client.sync("js/app.js");
    window.updates = [];
    await window.client.subscribe("js/", (u) => window.updates.push(u));
  }, nginx.ws);
  const v2 = bundle(2);
  const started = Date.now();
  b.write("js/app.js", v2);
  await page.waitForFunction(() => window.updates.some((u) => u.asset === "js/app.js"), null, { timeout: 10_000 });
  const took = Date.now() - started;
  const u = await page.evaluate(async () => {
    const u = window.updates.find((u) => u.asset === "js/app.js");
    return { error: u.error?.message, wire: u.result?.stats.wireBytesIn, hash: u.result && (await window.hex(u.result.bytes())) };
  });
  assert.equal(u.error, undefined);
  assert.equal(u.hash, sha256(v2), "the pushed update must equal the new file");
  assert.ok(u.wire < 20 * 1024, `a pushed rebuild cost ${u.wire} bytes`);
  assert.ok(took < 2000, `the change took ${took} ms to reach the page`);
  await context.close();
  nginx.stop();
  await Promise.all([a.stop(), b.stop()]);
  redis.stop();
});

test("an answer offloaded to HTTP is fetched by the page, resumed with a Range request after a cut, and verified", async (t) => {
  const server = await startServer({ extraArgs: ["--offload-url", "/offload", "--offload-min", "65536"] });
  const big = randomBytes(3 << 20);
  server.write("big.bin", big);
  // The WebSocket passes whole; the first download is cut 700 KB in; the rest pass.
  const proxy = await cuttingProxy(server, [Infinity, 700_000]);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "offload" });
  }, proxy.ws);
  const got = await syncIn(page, "big.bin");
  assert.equal(got.hash, sha256(big));
  const object = Number(/offloaded=(\d+)/.exec(await server.waitForLog("offloaded="))[1]);
  assert.ok(object > big.length, `the whole answer went in the object (${object} bytes)`);
  assert.equal(got.stats.httpBytesIn, object, "each byte of the object was fetched once");
  assert.equal(got.stats.requests, 1, "resumed over HTTP, not asked for again over the WebSocket");
  assert.ok(got.stats.wireBytesIn < 16 * 1024, `the WebSocket carried ${got.stats.wireBytesIn} bytes`);
  assert.ok(proxy.connections >= 3, `the download was resumed on a new connection (${proxy.connections})`);
  t.diagnostic(`3 MiB offloaded, cut once: ${got.stats.httpBytesIn} bytes over HTTP, ${got.stats.wireBytesIn} over the WebSocket`);
  await context.close();
  await proxy.close();
  await server.stop();
});

test("a WebAssembly rebuild arrives as a binary patch against the old module remapped, applied in WASM, byte-identical", async () => {
  const file = "dist/sql-wasm.wasm";
  const [v1, v2] = [npmFile("sql.js", "1.10.2", file), npmFile("sql.js", "1.10.3", file)];
  const server = await startServer({ extraArgs: ["--no-store"] });
  server.write("sql-wasm.wasm", v1);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "patch" });
    await window.client.sync("sql-wasm.wasm");
  }, server.ws);
  server.write("sql-wasm.wasm", v2);
  // Computed ahead when the server sees the change: the best zstd answer, and the patch.
  const line = await server.waitForLog("binary patch computed");
  const [zstd, patch, maps] = ["zstd", "patch", "maps"].map((k) => Number(new RegExp(` ${k}=(\\d+)`).exec(line)[1]));
  assert.match(line, /used=true/, line);
  // Taken against the old module with its indices and addresses remapped (the page remaps its
  // copy with these maps before applying the patch, or the file would not verify).
  assert.ok(maps > 0, line);
  await server.waitForLog("answers computed ahead");
  const got = await syncIn(page, "sql-wasm.wasm");
  assert.equal(got.hash, sha256(v2));
  assert.ok(got.stats.wireBytesIn < zstd, `${got.stats.wireBytesIn} bytes, where the zstd answer alone is ${zstd} (the patch ${patch})`);
  // Rebuilt in slices between yields (the file is several slices long), and timed.
  assert.ok(got.stats.patchMs > 0, JSON.stringify(got.stats));
  await context.close();
  await server.stop();
});

test("a page saves an edit back with upload(), sending only the changed chunks; a stale base is refused", async () => {
  const dir = scratch("assetsync-upload-");
  const tokenFile = join(dir, "token");
  writeFileSync(tokenFile, "page-secret\n", { mode: 0o600 });
  const server = await startServer({ extraArgs: ["--allow-write", "--token-file", tokenFile] });
  const v1 = bundle(1);
  server.write("js/app.js", v1);
  const context = await browser.newContext();
  const page = await openClientPage(context, server);
  // The page syncs the bundle, edits 1 KiB in its middle, and saves it back.
  const saved = await page.evaluate(async (ws) => {
    window.client = await window.assetsync.SyncClient.connect(ws, { db: "upload", token: "page-secret" });
    const bytes = (await window.client.sync("js/app.js")).bytes();
    const middle = bytes.length >> 1;
    for (let i = 0; i < 1024; i++) bytes[middle + i] = 0x41 + (i % 26);
    const progress = [];
    const r = await window.client.upload("js/app.js", bytes, { onProgress: (p) => progress.push(p) });
    return { stats: r.stats, hash: await window.hex(r.bytes()), stored: await window.hex(await window.client.read("js/app.js")), progress };
  }, server.ws);
  const onServer = readFileSync(join(server.root, "js/app.js"));
  assert.equal(sha256(onServer), saved.hash, "the server's file is the page's edit");
  assert.equal(saved.stored, saved.hash, "and the page's store holds it");
  assert.ok(saved.stats.chunksSent >= 1 && saved.stats.chunksSent <= 3, JSON.stringify(saved.stats));
  assert.ok(saved.stats.wireBytesOut < 64 << 10, `${saved.stats.wireBytesOut} bytes sent for a 1 KiB edit`);
  const last = saved.progress.at(-1);
  assert.ok(last && last.sentBytes === last.totalBytes && last.totalBytes > 0, JSON.stringify(saved.progress));

  // Another page, which never synced the file, saves a second edit made from the first (rsync's
  // flow: it asks for the server's manifest first, then sends only what the server lacks).
  const edit2 = Buffer.from(onServer);
  edit2.write("/* saved from another page */", 1000);
  const other = await openClientPage(context, server);
  const second = await other.evaluate(async ({ ws, b64, base }) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const client = await window.assetsync.SyncClient.connect(ws, { db: "upload-other", token: "page-secret" });
    return (await client.upload("js/app.js", bytes, { base })).stats;
  }, { ws: server.ws, b64: edit2.toString("base64"), base: saved.stats.version });
  assert.equal(sha256(readFileSync(join(server.root, "js/app.js"))), sha256(edit2));
  assert.ok(second.wireBytesOut < 64 << 10, `${second.wireBytesOut} bytes sent without the base`);

  // The first page's copy is now stale: its next save is refused, and nothing is written.
  const refused = await page.evaluate(async () => {
    const bytes = await window.client.read("js/app.js");
    bytes[0] = 0x20;
    return window.client.upload("js/app.js", bytes).then(() => "resolved", (e) => e.message);
  });
  assert.match(refused, /conflict: the server's file changed/);
  assert.equal(sha256(readFileSync(join(server.root, "js/app.js"))), sha256(edit2), "nothing written");
  await context.close();
  await server.stop();
});
