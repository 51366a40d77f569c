//! The native client's API: `pull` and `pull --follow`, and what they report.

use std::path::PathBuf;
use std::time::Duration;

use assetsync_protocol::engine::{ClientError, Follow, Push};
use assetsync_protocol::{AssetPath, Hash, Scope};
use serde::Serialize;

use crate::Error;
use crate::cache::Cache;
use crate::connection::Connection;

/// Where to pull from and to.
#[derive(Clone, Debug)]
pub struct PullConfig {
    /// `ws://host:port/sync`.
    pub server: String,
    /// The chunk cache directory.
    pub cache: PathBuf,
    /// Each asset is written to `out/ASSET`; `None` only updates the cache.
    pub out: Option<PathBuf>,
    /// The server's shared secret, if it requires one.
    pub token: Option<String>,
    /// The id of the server this client follows for (an edge's, see `serve --upstream`): sent
    /// in `hello`, and an upstream whose path holds it is a relay loop.
    pub relay: Option<String>,
    /// Keep what `out` holds that the server does not (`pull --no-delete`): files removed on the
    /// server, and folders and links not in its folder's shape, stay.
    pub no_delete: bool,
}

impl PullConfig {
    /// Where the copy of `asset` is written, if anywhere.
    pub(crate) fn copy_of(&self, asset: &AssetPath) -> Option<PathBuf> {
        self.out.as_ref().map(|dir| dir.join(asset.as_str()))
    }

    /// The copy to delete when the server removed `asset`: none with `no_delete`.
    pub(crate) fn removed_copy(&self, asset: &AssetPath) -> Option<PathBuf> {
        self.copy_of(asset).filter(|_| !self.no_delete)
    }
}

/// What one asset's sync did, printed by `pull --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PullReport {
    /// The asset path.
    pub asset: String,
    /// The committed version id.
    pub version: String,
    /// File size.
    pub bytes: u64,
    /// Manifest entries.
    pub chunks: usize,
    /// Entries not transferred because the cache had them.
    pub chunks_reused: usize,
    /// Bytes read from the socket for this asset (WebSocket framing included).
    pub wire_bytes_in: u64,
    /// Bytes written to the socket for this asset.
    pub wire_bytes_out: u64,
    /// Bytes of offloaded answers fetched over HTTP, from the server's `--offload-url`
    /// (not in `wire_bytes_in`).
    pub http_bytes_in: u64,
    /// Wall time of the sync, commit included.
    pub elapsed_ms: u64,
    /// `sync` requests made: 1, or more when the server did not know the cached version or the
    /// data failed verification.
    pub requests: u32,
    /// Whether an attempt failed verification and was retried.
    pub retried: bool,
}

/// Pulls each asset in turn over one connection, calling `report` with each event: every file
/// pulled (after its commit), removed, or in progress, and each folder's report. (A caller that
/// wants the reports keeps them there: a folder of 100,000 files has as many.) A target the
/// server refuses (a mistyped name, say) fails alone: the others are still pulled, and the
/// error names every one that failed.
pub async fn pull(
    config: &PullConfig,
    targets: &[Scope],
    mut report: impl FnMut(&PullEvent),
) -> Result<(), Error> {
    // The cache opens while the connection's handshake is on the wire.
    let (cache, conn) = tokio::join!(
        open_cache(&config.cache),
        Connection::open_resilient(&config.server, config.token.as_deref())
    );
    let (mut cache, mut conn) = (cache?, conn?);
    let mut failed = Vec::new();
    for target in targets {
        // A lost connection is resumed inside: only what retrying cannot fix ends here. A refused
        // request leaves the connection in step, so the other targets go on.
        match conn.pull_target(&mut cache, target, config, &mut report).await {
            Ok(()) => {}
            Err(e @ Error::Sync { error: ClientError::Refused { .. }, .. }) => failed.push(e),
            Err(e) => {
                failed.push(e);
                break;
            }
        }
    }
    conn.close().await;
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        _ => Err(Error::Several(failed)),
    }
}

/// What one folder sync did.
#[derive(Clone, Debug, Serialize)]
pub struct FolderReport {
    /// The folder (`""` for the root).
    pub folder: String,
    /// Files the server listed.
    pub files: usize,
    /// Files fetched (new or changed), as the browser's `syncFolder` lists them.
    pub fetched: Vec<String>,
    /// Files deleted because the server no longer lists them.
    pub removed: Vec<String>,
    /// Files under `--out` that were edited or deleted locally and were written again from the
    /// cache.
    pub repaired: Vec<String>,
    /// Bytes read from the socket for the whole folder.
    pub wire_bytes_in: u64,
    /// Bytes written to the socket for the whole folder.
    pub wire_bytes_out: u64,
    /// Bytes of offloaded answers fetched over HTTP (not in `wire_bytes_in`).
    pub http_bytes_in: u64,
    /// Requests sent for the folder, its repairs included: 1 for an unchanged folder (its
    /// shape, for `--out`, is asked in the same request).
    pub requests: u32,
    /// Wall time, commits included.
    pub elapsed_ms: u64,
}

/// What `pull` reports as it goes (and `pull --follow` for as long as it runs).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// An asset was synced and written.
    Pulled(PullReport),
    /// A folder was synced: its new and changed files were `pulled`, its gone ones `removed`.
    Folder(FolderReport),
    /// An asset is gone from the server: deleted from `--out` and the cache's pointers.
    Removed {
        /// The asset path.
        asset: String,
    },
    /// An asset could not be synced; the others go on.
    Failed {
        /// The asset path.
        asset: String,
        /// Why.
        error: String,
    },
    /// Chunk bytes of `asset` received so far, of `total` announced: at the start, every
    /// 64 KiB of the transfer, and at the end. For progress displays: not part of
    /// `pull --json`'s output.
    #[serde(skip)]
    Progress {
        /// The asset being received.
        asset: String,
        /// Chunk bytes received.
        received: u64,
        /// Chunk bytes announced.
        total: u64,
    },
    /// [`follow`] connected (again): the server's path to its origin and, for an edge cut off
    /// from its upstream, why its versions may be old. Not part of `pull --json`'s output.
    #[serde(skip)]
    Connected {
        /// The ids of the servers from the one connected to, to the origin.
        path: Vec<String>,
        /// What that server said in `welcome`'s `stale`.
        stale: Option<String>,
    },
    /// [`follow`] heard that `asset` changed on the server, and syncs or removes it next (one
    /// `pulled`, `removed` or `failed` follows). Not part of `pull --json`'s output.
    #[serde(skip)]
    Announced {
        /// The asset.
        asset: String,
    },
    /// The connection is down; the next attempt is in `retry_ms`.
    Disconnected {
        /// Why.
        error: String,
        /// Wait before reconnecting.
        retry_ms: u64,
    },
}

/// Pulls `assets`, then keeps the connection: each time the server announces that one changed,
/// pulls it again (or deletes it from `out` when it is gone). When the connection is lost it
/// reconnects with backoff and pulls everything again, so nothing announced while it was away
/// is missed (the engine's [`Follow`] policy). Runs until an error that reconnecting cannot fix:
/// a refused connection or subscription, a bad URL, a cache it cannot open or write.
pub async fn follow(
    config: &PullConfig,
    targets: &[Scope],
    mut report: impl FnMut(&PullEvent),
) -> Result<(), Error> {
    let mut cache = open_cache(&config.cache).await?;
    let mut follow = Follow::new(targets.iter().cloned());
    let mut caught_up = false;
    loop {
        let error = match follow_once(config, &mut cache, &mut follow, &mut caught_up, &mut report).await {
            Ok(never) => match never {},
            Err(e) if e.retryable() => e,
            Err(e) => return Err(e),
        };
        let retry_ms = follow.lost();
        report(&PullEvent::Disconnected { error: error.to_string(), retry_ms: retry_ms.into() });
        tokio::time::sleep(Duration::from_millis(retry_ms.into())).await;
    }
}

/// Opens the cache on the blocking pool: it may wait for another process's lock.
pub(crate) async fn open_cache(dir: &std::path::Path) -> Result<Cache, Error> {
    let dir = dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || Cache::open(&dir)).await;
    Ok(opened.expect("opening the cache panicked")?)
}

/// One connection of [`follow`]. The first time, every target's pull is reported; after a
/// reconnection (`caught_up`), only what changed meanwhile.
async fn follow_once(
    config: &PullConfig,
    cache: &mut Cache,
    follow: &mut Follow,
    caught_up: &mut bool,
    report: &mut impl FnMut(&PullEvent),
) -> Result<std::convert::Infallible, Error> {
    let via: Vec<String> = config.relay.iter().cloned().collect();
    let mut conn = Connection::open(&config.server, config.token.as_deref(), &via).await?;
    report(&PullEvent::Connected { path: conn.welcomed.path.clone(), stale: conn.welcomed.stale.clone() });
    // Subscribed before the first pull, so that a change during it is not missed.
    for scope in follow.scopes().to_vec() {
        conn.subscribe(&scope, follow).await?;
    }
    follow.connected();
    for scope in follow.scopes() {
        let held = match scope {
            Scope::Asset(asset) => cache.current(asset).map(|m| m.version()),
            _ => None,
        };
        let renewal = *caught_up;
        conn.follow_pull(cache, scope, config, &mut |event: &PullEvent| match event {
            PullEvent::Pulled(r)
                if renewal && Hash::from_hex(&r.version).is_ok_and(|v| !Push::is_news(held, v)) => {}
            event => report(event),
        })
        .await?;
    }
    *caught_up = true;
    loop {
        let (asset, version) = conn.change().await?;
        let held = cache.current(&asset).map(|m| m.version());
        let decided = Push::decide(asset, version, held);
        if let Some(Push::Sync(asset) | Push::Remove(asset)) = &decided {
            report(&PullEvent::Announced { asset: asset.to_string() });
        }
        match decided {
            Some(Push::Sync(asset)) => conn.follow_pull(cache, &Scope::Asset(asset), config, report).await?,
            Some(Push::Remove(asset)) => {
                cache.remove(&asset, config.removed_copy(&asset).as_deref())?;
                cache.publish()?;
                report(&PullEvent::Removed { asset: asset.to_string() });
            }
            None => {}
        }
    }
}

impl Connection {
    /// [`Connection::pull_target`] for [`follow`]: a request the server refused (an asset not
    /// there yet, say) or whose data kept failing verification is reported, and the connection
    /// goes on.
    async fn follow_pull(
        &mut self,
        cache: &mut Cache,
        target: &Scope,
        config: &PullConfig,
        report: &mut impl FnMut(&PullEvent),
    ) -> Result<(), Error> {
        match self.pull_target(cache, target, config, report).await {
            Err(e @ Error::Sync { error: ClientError::Refused { .. } | ClientError::GaveUp { .. }, .. }) => {
                report(&PullEvent::Failed { asset: target.to_string(), error: e.to_string() });
                Ok(())
            }
            other => other,
        }
    }
}
