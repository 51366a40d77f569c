//! Answers computed ahead: when an asset gets a new version (the watcher saw it change, or a
//! deploy put a version the store did not have under `--root`), the best-level answers for
//! clients holding one of its most recent earlier versions are computed in the background, so
//! that the first client after a deploy gets the small answer at once instead of the fast-level
//! one (see [`crate::encode`]).
//!
//! The CPU this takes is bounded: one encoding at a time (shared with the encoder's own
//! background work), at most [`BASES`] answers and [`MAX_BEST_WORK`] bytes of zstd input per
//! new version, a binary patch tried for the first of them only, and one log line each.

use std::sync::Arc;
use std::time::Instant;

use assetsync_protocol::{AssetPath, ClientView, Have, plan};
use tokio::sync::broadcast::error::RecvError;

use crate::encode::{MAX_BEST_WORK, work};
use crate::index::{INDEX_BATCH, Indexed};
use crate::server::AppState;

/// Earlier versions answered ahead per new version.
const BASES: usize = 3;

/// Starts computing answers ahead: first for the remembered assets whose file holds a new
/// version at start-up (a deploy), then for every change announced, until shutdown.
pub(crate) fn start(state: Arc<AppState>) {
    let mut changes = state.hub.listen();
    tokio::spawn(async move {
        for batch in state.index.remembered().chunks(INDEX_BATCH) {
            if state.shutdown.is_cancelled() {
                return;
            }
            let assets: Vec<AssetPath> = batch.iter().map(|(asset, _)| asset.clone()).collect();
            for ((_, newest), current) in batch.iter().zip(state.index.current_of(&assets).await) {
                if let Ok(current) = current
                    && current.version != *newest
                {
                    ahead(&state, &current).await;
                }
            }
        }
        loop {
            let change = tokio::select! {
                () = state.shutdown.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(change) if change.version.is_some() => {
                    if let Ok(current) = state.index.current(&change.asset).await {
                        ahead(&state, &current).await;
                    }
                }
                // Behind by many changes (a whole folder rewritten): the next ones still count.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Computes the best-level answers from `current`'s most recent earlier versions, as a client
/// holding just one of them would ask.
async fn ahead(state: &AppState, current: &Arc<Indexed>) {
    let started = Instant::now();
    let (mut answers, mut total) = (0, 0);
    for base in state.index.recent(&current.manifest.path, &current.version, BASES) {
        let have = Have { versions: vec![base.version], ..Have::default() };
        let (_, held) = state.index.resolve_have(&have, [current.manifest.as_ref()]);
        let view = ClientView { base: Some((0, base.version, base.manifest.as_ref())), held: &held };
        let send = plan(0, &current.manifest, current.version, view).send;
        let work = work(current, &send, Some(&base));
        if send.is_empty() || total + work > MAX_BEST_WORK {
            continue;
        }
        // A binary patch only from the newest: the version most clients hold.
        if state.encoder.precompute(&state.index, current, &send, &base, answers == 0).await {
            answers += 1;
            total += work;
        }
    }
    if answers > 0 {
        tracing::info!(
            asset = %current.manifest.path,
            answers,
            work_bytes = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answers computed ahead"
        );
    }
}
