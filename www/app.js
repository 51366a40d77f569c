// The demo page: drives the WASM SyncClient and shows what each sync cost.

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "assetsync-demo-history";
const endpoint = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/sync`;

let wasm = null;
let client = null;
let busy = false;
// Assets this page follows: the server pushes their changes, and the client syncs them.
const followed = new Set();

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function note(text, isError = false) {
  $("note").textContent = text || "\u00a0";
  $("note").classList.toggle("error", isError);
}

function setBusy(on) {
  busy = on;
  for (const b of document.querySelectorAll("button")) b.disabled = on;
}

async function getClient() {
  if (!wasm) {
    try {
      wasm = await import("/pkg/assetsync.js");
      await wasm.default();
    } catch (e) {
      wasm = null;
      throw new Error("the WASM client is not built: run scripts/build-web.sh (or scripts/run.sh)");
    }
  }
  if (!client) client = await wasm.SyncClient.connect(endpoint, { db: "assetsync-demo" });
  return client;
}

function dropClient() {
  if (client) {
    try { client.close(); } catch (_) {}
    client.free();
  }
  client = null;
  followed.clear();
  $("live").hidden = true;
}

/** Asks the server to push changes of `asset`; each one is synced and shown as it lands. */
async function follow(c, asset) {
  if (followed.has(asset)) return;
  followed.add(asset);
  try {
    await c.subscribe(asset, (u) => {
      if (u.error) return note(`Pushed change of ${u.asset} failed: ${u.error.message}`, true);
      if (!u.result) return note(`${u.asset} was removed on the server.`);
      const stats = u.result.stats;
      u.result.free();
      if (u.asset !== $("asset").value.trim()) return;
      record(asset, stats, true);
      setStatus("ok", "Verified and cached");
      note(`Pushed by the server: the new build arrived in ${Math.round(stats.elapsedMs)} ms for ${fmtBytes(stats.wireBytesIn)}.`);
    });
    $("live").hidden = false;
  } catch (e) {
    followed.delete(asset);
    note(`Live updates are off: ${e.message}`, true);
  }
}

function record(asset, stats, pushed) {
  $("bar").style.width = "100%";
  showStats(stats);
  const history = [{ at: Date.now(), asset, pushed, ...stats }, ...loadHistory()].slice(0, 8);
  sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  renderHistory();
}

function loadHistory() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_KEY)) || []; } catch (_) { return []; }
}

function renderHistory() {
  const rows = loadHistory();
  const body = $("history");
  body.replaceChildren();
  if (rows.length === 0) {
    body.innerHTML = '<tr class="empty"><td colspan="6">No syncs yet.</td></tr>';
    return;
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    const kind = r.chunksReused === r.chunks ? ["same", "unchanged"] : r.chunksReused === 0 ? ["cold", "full"] : ["delta", "delta"];
    const cells = [
      new Date(r.at).toLocaleTimeString(),
      `${r.version.slice(0, 12)}<span class="pill ${kind[0]}">${kind[1]}</span>${r.pushed ? '<span class="pill pushed">pushed</span>' : ""}`,
      fmtBytes(r.wireBytesIn),
      `${((100 * r.wireBytesIn) / Math.max(r.bytes, 1)).toFixed(r.wireBytesIn * 100 < r.bytes ? 2 : 1)}%`,
      `${r.chunksReused} / ${r.chunks}`,
      `${Math.round(r.elapsedMs)} ms`,
    ];
    cells.forEach((html, i) => {
      const td = document.createElement("td");
      td.innerHTML = html;
      if (i === 1) td.className = "mono";
      if (i >= 2) td.className = "num";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

function showStats(s) {
  $("wire").textContent = fmtBytes(s.wireBytesIn);
  const pct = (100 * s.wireBytesIn) / Math.max(s.bytes, 1);
  $("wire-sub").textContent = `${pct < 1 ? pct.toFixed(2) : pct.toFixed(1)}% of the file · ${fmtBytes(s.wireBytesOut)} sent`;
  $("size").textContent = fmtBytes(s.bytes);
  $("version").textContent = `version ${s.version.slice(0, 12)}`;
  $("reused").textContent = `${s.chunksReused} / ${s.chunks}`;
  $("reused-sub").textContent = s.retried ? "retried after a bad chunk" : `${s.chunks - s.chunksReused} fetched`;
  $("time").textContent = `${Math.round(s.elapsedMs)} ms`;
}

async function sync() {
  const asset = $("asset").value.trim();
  setBusy(true);
  setStatus("busy", "Syncing…");
  note("");
  $("bar").style.width = "0%";
  try {
    const c = await getClient();
    const result = await c.sync(asset, (p) => {
      $("bar").style.width = `${(100 * p.receivedBytes) / Math.max(p.totalBytes, 1)}%`;
    });
    const stats = result.stats;
    result.free();
    record(asset, stats, false);
    setStatus("ok", "Verified and cached");
    note(stats.chunksReused === stats.chunks
      ? "Already up to date: the server only confirmed the version."
      : stats.chunksReused === 0
        ? `Fetched all ${stats.chunks} chunks: the first visit. The next update costs only what changed.`
        : `Fetched ${stats.chunks - stats.chunksReused} chunks; the other ${stats.chunksReused} came from IndexedDB.`);
  } catch (e) {
    if (/connection lost|cannot connect/.test(e.message)) dropClient();
    setStatus("error", "Sync failed");
    note(e.message, true);
  } finally {
    setBusy(false);
  }
  if (client && asset) await follow(client, asset);
}

async function rebuild() {
  setBusy(true);
  try {
    const r = await fetch("/demo/rebuild", { method: "POST" });
    if (!r.ok) throw new Error(await r.text());
    const build = await r.json();
    note(`Server wrote build ${build.build} (${fmtBytes(build.bytes)}); waiting for the push…`);
  } catch (e) {
    note(`Rebuild failed: ${e.message}`, true);
    setBusy(false);
    return;
  }
  setBusy(false);
  // Followed assets arrive by push, in every open tab; otherwise fetch it here.
  if (!followed.has($("asset").value.trim())) await sync();
}

async function readOffline() {
  const asset = $("asset").value.trim();
  try {
    const c = client || (await getClient().catch(() => null));
    if (!c) throw new Error("no connection yet, and the store is opened with it");
    const bytes = await c.read(asset);
    if (!bytes) return note(`No cached copy of ${asset} yet.`);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const hex = [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
    note(`Offline copy: ${fmtBytes(bytes.length)}, SHA-256 ${hex.slice(0, 16)}…, read from IndexedDB without the network.`);
  } catch (e) {
    note(e.message, true);
  }
}

async function collect() {
  try {
    const c = await getClient();
    const r = await c.gc();
    note(`Garbage collection freed ${fmtBytes(r.bytesFreed)}: ${r.versionsDeleted} unused versions, ${r.chunksDeleted} chunks left by interrupted transfers.`);
  } catch (e) {
    note(e.message, true);
  }
}

async function main() {
  renderHistory();
  $("sync").onclick = sync;
  $("rebuild").onclick = rebuild;
  $("offline").onclick = readOffline;
  $("gc").onclick = collect;
  $("asset").onkeydown = (e) => { if (e.key === "Enter" && !busy) sync(); };
  const demo = await fetch("/demo/build").then((r) => (r.ok ? r.json() : null)).catch(() => null);
  if (demo) {
    $("asset").value = demo.asset;
  } else {
    $("rebuild").hidden = true;
  }
  await sync();
}

main();
