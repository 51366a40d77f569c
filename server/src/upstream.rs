//! An edge's view of its upstream (`serve --upstream`): whether it follows it now, how far behind
//! it is, and the upstream's path to the origin, which the edge's `welcome` extends and against
//! which relay loops are found. The follower that keeps the edge's folder in step (the native
//! client's `follow`, run by the binary) reports here; sessions and `/status` read it.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

/// The upstream of an edge, as its follower last reported it.
#[derive(Debug)]
pub struct Upstream {
    url: String,
    state: Mutex<State>,
    /// The upstream's path to the origin, from its last `welcome`.
    path: watch::Sender<Vec<String>>,
}

#[derive(Debug)]
struct State {
    connected: bool,
    /// When `connected` last changed (or the edge started).
    since: Instant,
    since_wall: SystemTime,
    /// Why the last connection ended or failed.
    error: Option<String>,
    /// Changes the upstream announced that are not applied yet, and when the oldest was.
    pending: usize,
    oldest_pending: Option<Instant>,
    /// Files applied (pulled or removed) since start.
    applied: u64,
    /// Times another server answered at the upstream's address.
    replaced: u64,
}

/// `/status`'s `upstream`.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    /// The upstream's sync endpoint.
    pub url: String,
    /// `following` (connected) or `unreachable`.
    pub state: &'static str,
    /// Why the last connection ended, when not following.
    pub error: Option<String>,
    /// Changes announced by the upstream and not applied here yet.
    pub lag_versions: usize,
    /// Seconds since this edge was last known to hold what its upstream holds (0 when it does).
    pub lag_seconds: f64,
    /// Files pulled or removed from the upstream since start.
    pub applied: u64,
    /// Times another server (another id) answered at the upstream's address since start.
    pub replaced: u64,
    /// The upstream's path to the origin (server ids).
    pub path: Vec<String>,
}

impl Upstream {
    /// An upstream at `url`, not reached yet.
    pub fn new(url: &str) -> Self {
        let state = State {
            connected: false,
            since: Instant::now(),
            since_wall: SystemTime::now(),
            error: Some("not reached yet".into()),
            pending: 0,
            oldest_pending: None,
            applied: 0,
            replaced: 0,
        };
        Upstream { url: url.to_owned(), state: Mutex::new(state), path: watch::channel(Vec::new()).0 }
    }

    /// The follower connected; the upstream's path is `path`.
    pub fn connected(&self, path: Vec<String>) {
        let mut state = self.state.lock().expect("poisoned");
        let before = self.path.borrow().first().cloned();
        if let (Some(was), Some(now)) = (&before, path.first())
            && was != now
        {
            // Another server took the address (a redeploy, or a mistake): what it serves
            // replaces what this edge holds, file by file, each verified.
            tracing::warn!(
                upstream = %self.url,
                was = %was,
                now = %now,
                "the upstream is now a different server; syncing everything from it"
            );
            state.replaced += 1;
        }
        if !state.connected {
            tracing::info!(upstream = %self.url, path = %path.join(" -> "), "following the upstream");
        }
        (state.connected, state.since, state.since_wall, state.error) =
            (true, Instant::now(), SystemTime::now(), None);
        // Announced on the lost connection: the follower syncs everything again now.
        (state.pending, state.oldest_pending) = (0, None);
        self.path.send_if_modified(|p| std::mem::replace(p, path.clone()) != path);
    }

    /// The follower lost the upstream (or could not reach it) because of `why`.
    pub fn disconnected(&self, why: &str) {
        let mut state = self.state.lock().expect("poisoned");
        if state.connected {
            (state.since, state.since_wall) = (Instant::now(), SystemTime::now());
            tracing::warn!(upstream = %self.url, error = why, "upstream unreachable; serving the last verified versions");
        }
        state.connected = false;
        state.error = Some(why.to_owned());
    }

    /// The upstream announced a change, which the follower applies next.
    pub fn announced(&self) {
        let mut state = self.state.lock().expect("poisoned");
        state.pending += 1;
        state.oldest_pending.get_or_insert_with(Instant::now);
    }

    /// The follower applied a file (pulled, removed, or failed to and moved on).
    pub fn applied(&self) {
        let mut state = self.state.lock().expect("poisoned");
        state.applied += 1;
        state.pending = state.pending.saturating_sub(1);
        if state.pending == 0 {
            state.oldest_pending = None;
        }
    }

    /// The upstream's path to the origin, as last heard.
    pub fn path(&self) -> Vec<String> {
        self.path.borrow().clone()
    }

    /// Told each time the upstream's path changes.
    pub fn watch_path(&self) -> watch::Receiver<Vec<String>> {
        self.path.subscribe()
    }

    /// Why this edge's versions may be old: set while the upstream is unreachable.
    pub fn stale(&self) -> Option<String> {
        let state = self.state.lock().expect("poisoned");
        (!state.connected).then(|| {
            let since = state.since_wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!(
                "upstream {} unreachable for {} s (since unix time {since}): {}; serving the last verified versions",
                self.url,
                state.since.elapsed().as_secs(),
                state.error.as_deref().unwrap_or("unknown")
            )
        })
    }

    /// What `/status` says of the upstream.
    pub fn status(&self) -> UpstreamStatus {
        let state = self.state.lock().expect("poisoned");
        let lag = match (state.connected, state.oldest_pending) {
            (false, _) => state.since.elapsed().as_secs_f64(),
            (true, Some(oldest)) => oldest.elapsed().as_secs_f64(),
            (true, None) => 0.0,
        };
        UpstreamStatus {
            url: self.url.clone(),
            state: if state.connected { "following" } else { "unreachable" },
            error: state.error.clone(),
            lag_versions: state.pending,
            lag_seconds: (lag * 1000.0).round() / 1000.0,
            applied: state.applied,
            replaced: state.replaced,
            path: self.path(),
        }
    }
}
