// The page's side of assetsync's service worker: registers it, tells the page which build it
// runs and when a new one is ready. Plain JS, no WASM: the page loads nothing else of ours.

/** How often a page pings a live worker: under the 30 s after which an idle one is stopped. */
const PING_MS = 20_000;

/**
 * Registers the service worker at `scriptUrl` (a module worker that calls `serveAssets`) and
 * resolves, once it controls the page or has no build yet, to a handle on the page's build.
 */
export async function registerAssets(scriptUrl, { scope } = {}) {
  if (!("serviceWorker" in navigator)) {
    throw new Error("this browser has no service workers (or the page is not on https:// or localhost)");
  }
  const registering = navigator.serviceWorker.register(scriptUrl, { type: "module", scope });
  // A page the worker already serves need not wait for `register`'s check for a new version
  // of the worker's script (seconds, at times).
  const registration = (navigator.serviceWorker.controller && (await navigator.serviceWorker.getRegistration(scope))) || (await registering);
  registering.catch((e) => console.warn("assetsync: cannot register the service worker:", e));
  const handle = new AssetsHandle(registration);
  await handle.refresh();
  return handle;
}

/** The page's view of its service worker: see page.d.ts. */
export class AssetsHandle extends EventTarget {
  constructor(registration) {
    super();
    this.registration = registration;
    /** The build this page was served (hex), or null if it came from the network. */
    this.build = null;
    /** The newest build the worker holds. */
    this.ready = null;
    /** The last update the worker told of, if any. */
    this.lastUpdate = null;
    this.updateReady = new Promise((resolve) => (this._resolveUpdate = resolve));
    navigator.serviceWorker.addEventListener("message", (event) => this._receive(event.data));
  }

  /** Asks the worker which build this page runs and which is ready. */
  async refresh() {
    const status = await this._ask({ type: "assetsync:status" });
    if (status.error) throw new Error(status.error);
    this.build = status.build;
    this.ready = status.ready;
    // A live worker follows the server's pushes only while it runs: an open page keeps it up.
    if (status.live && !this._pinging) {
      this._pinging = setInterval(() => this._worker(false).then((w) => w?.postMessage({ type: "assetsync:ping" })), PING_MS);
      (await this._worker(false))?.postMessage({ type: "assetsync:ping" });
    }
    return status;
  }

  /** Asks the worker to sync the folder now; resolves to what the update did. */
  async check() {
    const answer = await this._ask({ type: "assetsync:check" }, { wait: true });
    if (answer.error) throw new Error(answer.error);
    return answer.update;
  }

  _receive(data) {
    if (data?.type === "assetsync:update") {
      this.lastUpdate = data.update;
      this.ready = data.update.build;
      this.dispatchEvent(new CustomEvent("update", { detail: data.update }));
      if (this.build && this.build !== data.update.build) this._resolveUpdate(data.update);
    } else if (data?.type === "assetsync:update-failed") {
      this.dispatchEvent(new CustomEvent("error", { detail: new Error(data.error) }));
    }
  }

  async _ask(message, { wait = false } = {}) {
    const worker = await this._worker(wait);
    if (!worker) return { build: null, ready: null };
    const channel = new MessageChannel();
    const answered = new Promise((resolve) => (channel.port1.onmessage = (e) => resolve(e.data)));
    worker.postMessage(message, [channel.port2]);
    return answered;
  }

  /** The worker to talk to: the one controlling this page, else (with `wait`) the active one. */
  async _worker(wait) {
    if (navigator.serviceWorker.controller) return navigator.serviceWorker.controller;
    if (!wait) return this.registration.active;
    return (await navigator.serviceWorker.ready).active;
  }
}
