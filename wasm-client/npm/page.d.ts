import type { BuildUpdate } from "./assetsync-sw.js";
export type { BuildUpdate };

/**
 * Registers the module service worker at `scriptUrl` (one that calls `serveAssets`) and
 * resolves to a handle on this page's build.
 */
export function registerAssets(scriptUrl: string | URL, options?: { scope?: string }): Promise<AssetsHandle>;

/**
 * The page's view of its service worker. Events: `"update"` (a `CustomEvent` whose `detail` is
 * the `BuildUpdate` that made a new build ready) and `"error"` (`detail`: the `Error` that
 * failed an update; the page's build goes on being served).
 */
export class AssetsHandle extends EventTarget {
  readonly registration: ServiceWorkerRegistration;
  /** The build this page was served (hex), or null if it came from the network. */
  build: string | null;
  /** The newest build the worker holds (hex), or null before the first one is synced. */
  ready: string | null;
  /** The last update the worker told of while this page was open. */
  lastUpdate: BuildUpdate | null;
  /** Resolves when a build newer than this page's is ready: time to offer "reload to update". */
  readonly updateReady: Promise<BuildUpdate>;
  /** Asks the worker again which build this page runs and which is ready, and whether it is
   *  live (`serveAssets({ live: true })`) and following the server's pushes now. */
  refresh(): Promise<{ build: string | null; ready: string | null; live: boolean; following: boolean }>;
  /** Asks the worker to sync now; resolves to what the update did. */
  check(): Promise<BuildUpdate>;
}
