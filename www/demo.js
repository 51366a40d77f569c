// The demo page: registers the service worker that serves this app's build, and shows which
// build runs, where it came from, and what each update cost.

import { registerAssets } from "/pkg/page.js";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "assetsync-demo-updates";

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}

function setStatus(id, state, text) {
  $(id).dataset.state = state;
  $(id).textContent = text;
}

function note(text, isError = false) {
  $("note").textContent = text || "\u00a0";
  $("note").classList.toggle("error", isError);
}

function showNetwork() {
  setStatus("network", navigator.onLine ? "ok" : "busy", navigator.onLine ? "Online" : "Offline");
}

function loadHistory() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch (_) { return []; }
}

/** Shows an update as recorded in the history (see `record`). */
function showUpdate(r) {
  $("wire").textContent = fmtBytes(r.wire);
  const pct = (100 * r.wire) / Math.max(r.buildBytes, 1);
  $("wire-sub").textContent = `${pct < 1 ? pct.toFixed(2) : pct.toFixed(1)}% of the build · ${r.first ? "the first sync" : "an update"}`;
  $("size").textContent = fmtBytes(r.buildBytes);
  $("files").textContent = `${r.files} files`;
  $("fetched").textContent = String(r.fetched.length);
  $("fetched-sub").textContent = r.fetched.length ? r.fetched.slice(0, 2).join(", ") + (r.fetched.length > 2 ? ", …" : "") : "nothing changed";
  $("time").textContent = `${Math.round(r.elapsedMs)} ms`;
}

function renderChart() {
  const rows = loadHistory();
  const chart = $("chart");
  chart.replaceChildren();
  if (rows.length === 0) {
    chart.innerHTML = '<p class="empty">No updates yet.</p>';
    return;
  }
  for (const r of rows) {
    const row = document.createElement("div");
    row.className = "chart-row";
    const share = Math.min(100, (100 * r.wire) / Math.max(r.buildBytes, 1));
    row.innerHTML = `
      <div class="chart-label">${new Date(r.at).toLocaleTimeString()}<span class="pill ${r.first ? "cold" : "delta"}">${r.first ? "first" : "update"}</span></div>
      <div class="chart-track" title="${fmtBytes(r.wire)} of ${fmtBytes(r.buildBytes)}"><div class="chart-bar" style="width: max(3px, ${share}%)"></div></div>
      <div class="chart-value num">${fmtBytes(r.wire)} <span class="sub">of ${fmtBytes(r.buildBytes)}</span></div>`;
    chart.appendChild(row);
  }
}

function record(u) {
  // Every open tab is told of the same update: the first one records it.
  if (!loadHistory().some((r) => r.build === u.build)) {
    const entry = {
      at: Date.now(), build: u.build, first: !u.previous, wire: u.wireBytesIn + u.wireBytesOut,
      buildBytes: u.buildBytes, files: u.files, fetched: u.fetched, elapsedMs: u.elapsedMs,
    };
    localStorage.setItem(HISTORY_KEY, JSON.stringify([entry, ...loadHistory()].slice(0, 10)));
  }
  renderChart();
  showUpdate(loadHistory().find((r) => r.build === u.build));
}

async function main() {
  const bundle = globalThis.assetsyncDemo;
  $("build").textContent = bundle ? `Build ${bundle.build}` : "The app's bundle did not load";
  showNetwork();
  addEventListener("online", showNetwork);
  addEventListener("offline", showNetwork);
  renderChart();
  const last = loadHistory()[0];
  if (last?.fetched) showUpdate(last);

  let app;
  try {
    app = await registerAssets("/sw.js");
  } catch (e) {
    setStatus("status", "error", "No service worker");
    return note(e.message, true);
  }
  window.demo = { app };
  $("served").textContent = app.build
    ? `Served by the service worker from IndexedDB: build ${app.build.slice(0, 12)}, verified`
    : "Served by the network (a first visit): the service worker keeps this build for the next ones";
  $("served").dataset.source = app.build ? "worker" : "network";
  setStatus("status", app.ready ? "ok" : "busy", app.ready ? "Ready offline" : "Syncing for offline use…");

  app.addEventListener("update", (e) => {
    const u = e.detail;
    record(u);
    if (app.build && u.build !== app.build) {
      $("update").hidden = false;
      $("update-sub").textContent = `${fmtBytes(u.wireBytesIn + u.wireBytesOut)} for ${u.fetched.length} changed file${u.fetched.length === 1 ? "" : "s"}: reload to run it.`;
      setStatus("status", "busy", "Update ready");
    } else {
      setStatus("status", "ok", "Ready offline");
    }
  });
  app.addEventListener("error", (e) => note(`Update failed, this build goes on being served: ${e.detail.message}`, true));

  $("reload").onclick = () => location.reload();
  $("check").onclick = async () => {
    try {
      const u = await app.check();
      if (!u.changed) note(`Up to date: the check cost ${fmtBytes(u.wireBytesIn + u.wireBytesOut)}.`);
    } catch (e) {
      note(e.message, true);
    }
  };
  // A server that is not the demo has no rebuild; offline, the button says why it fails.
  const demo = await fetch("/demo/build").then((r) => r.ok, () => true);
  if (!demo) {
    $("rebuild").hidden = true;
    return;
  }
  startEditor();
  $("rebuild").onclick = async () => {
    try {
      const r = await fetch("/demo/rebuild", { method: "POST" });
      if (!r.ok) throw new Error(await r.text());
      const build = await r.json();
      note(`The server wrote build ${build.build} of js/app.js (${fmtBytes(build.bytes)}); syncing…`);
      const u = await app.check();
      note(`The service worker synced build ${build.build} for ${fmtBytes(u.wireBytesIn + u.wireBytesOut)}.`);
    } catch (e) {
      note(`Rebuild failed: ${e.message}`, true);
    }
  };
}

/** The bundle's line that carries the editor's greeting (replaced by each save). */
const GREETING = /\nglobalThis\.assetsyncDemoGreeting = .*;\n$/;

/** The editor card: the page edits the bundle and saves it back with `SyncClient.upload`. */
async function startEditor() {
  $("said").textContent = globalThis.assetsyncDemoGreeting ?? "nothing yet";
  // The demo hands its page the secret for saving to its private copy.
  const token = await fetch("/demo/token").then((r) => (r.ok ? r.text() : null), () => null);
  if (!token) return;
  $("editor").hidden = false;
  $("save").onclick = async () => {
    $("save").disabled = true;
    try {
      const { default: init, SyncClient } = await import("/pkg/assetsync.js");
      await init();
      const ws = location.origin.replace(/^http/, "ws") + "/sync";
      const client = await SyncClient.connect(ws, { db: "assetsync-demo-editor", token });
      const current = await client.sync("js/app.js");
      const text = new TextDecoder().decode(current.bytes()).replace(GREETING, "\n");
      const line = `globalThis.assetsyncDemoGreeting = ${JSON.stringify($("greeting").value)};\n`;
      const edited = new TextEncoder().encode(text + line);
      const saved = await client.upload("js/app.js", edited, { base: current.stats.version });
      client.close();
      // This tab's service worker brings the saved build in (the others hear of it by push).
      await window.demo.app.check();
      const s = saved.stats;
      $("save-note").textContent = `Saved: ${fmtBytes(s.wireBytesOut)} sent for a ${fmtBytes(s.bytes)} bundle ` +
        `(${s.chunksSent} of ${s.chunks} chunks), in ${Math.round(s.elapsedMs)} ms: reload to run it.`;
      $("save-note").classList.remove("error");
    } catch (e) {
      $("save-note").textContent = `Save failed: ${e.message}`;
      $("save-note").classList.add("error");
    } finally {
      $("save").disabled = false;
    }
  };
}

main();
