/** Options for `serveAssets`. */
export interface ServeAssetsOptions {
  /** The assetsync server's sync URL, such as "wss://example.com/sync". */
  url: string;
  /** The server's folder to keep: "dist/", or "" (default) for everything it serves. */
  folder?: string;
  /** Where the folder's files are requested, relative to the worker's scope (default "./"):
   *  the file `js/app.js` of the folder answers `${base}js/app.js`. Other requests go to the
   *  network untouched. */
  base?: string;
  /** IndexedDB database name (default "assetsync"). */
  db?: string;
  /** The server's shared secret, for a server started with `--token-file`. */
  token?: string;
  /** "next-load" (default): a page keeps the build it loaded on until it is reloaded.
   *  "now": open pages are served each new build as soon as it is ready. */
  update?: "next-load" | "now";
  /** The file of the folder that answers navigations to paths the build lacks (a single-page
   *  app's routes, such as "index.html"), as Workbox's `navigateFallback`. Default: none. */
  navigateFallback?: string;
  /** Sync the folder after each page load (default true); otherwise only on install and when a
   *  page calls `check()`. */
  checkOnLoad?: boolean;
  /** Follow the server's pushes (default false; for dev servers): each change is synced as it
   *  happens and pages are told of the new build at once. The worker follows while it runs;
   *  pages opened with `registerAssets` ping it every 20 s so that the browser keeps it running. */
  live?: boolean;
}

/**
 * Serves the folder's kept builds to the pages of this service worker and syncs them in the
 * background. Call it once, at the top level of a module service worker:
 *
 * ```js
 * import { serveAssets } from "assetsync/sw";
 * serveAssets({ url: "wss://example.com/sync", folder: "dist/" });
 * ```
 *
 * Each page is served one build, whole: the one ready when it loaded. A build that has not
 * finished syncing is never served; a stored file that fails its SHA-256 check is answered
 * from the network and fetched again. Pages are told of a new build by a message
 * `{ type: "assetsync:update", update: BuildUpdate }` (see `registerAssets` in "assetsync/page"),
 * and of a failed update by `{ type: "assetsync:update-failed", error }`.
 */
export function serveAssets(options: ServeAssetsOptions): void;
