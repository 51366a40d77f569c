//! Pacing a connection to its request and byte rates.

use std::time::{Duration, Instant};

use assetsync_protocol::ErrorCode;
use axum::extract::ws::{WebSocket, close_code};
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;

use super::Fatal;
use crate::limit::Rate;
use crate::server::AppState;

/// Paces a connection to its request and byte rates (`--max-requests-per-minute`,
/// `--max-bytes-per-minute`): over them, the session waits instead of failing, and meanwhile
/// reads nothing more from the client.
pub(super) struct Throttle {
    requests: Option<Rate>,
    bytes: Option<Rate>,
    shutdown: CancellationToken,
    /// Whether this session was already logged as throttled.
    logged: bool,
}

impl Throttle {
    pub(super) fn new(state: &AppState) -> Self {
        let now = Instant::now();
        Throttle {
            requests: Rate::per_minute(state.limits.requests_per_minute.into(), now),
            bytes: Rate::per_minute(state.limits.bytes_per_minute, now),
            shutdown: state.shutdown.clone(),
            logged: false,
        }
    }

    /// Waits until one more request is within the rate.
    pub(super) async fn request(&mut self) -> Result<(), Fatal> {
        let wait = self.requests.as_mut().map(|r| r.take(1, Instant::now()));
        self.wait(wait, "requests").await
    }

    /// Waits until `n` more bytes are within the rate, flushing `socket` first if it must wait
    /// (what was written so far goes out before the pause).
    pub(super) async fn bytes(&mut self, n: usize, socket: &mut WebSocket) -> Result<(), Fatal> {
        let wait = self.bytes.as_mut().map(|r| r.take(n as u64, Instant::now()));
        if wait.is_some_and(|w| !w.is_zero()) {
            socket.flush().await.map_err(super::gone)?;
        }
        self.wait(wait, "bytes").await
    }

    async fn wait(&mut self, wait: Option<Duration>, what: &str) -> Result<(), Fatal> {
        let Some(wait) = wait.filter(|w| !w.is_zero()) else { return Ok(()) };
        if !std::mem::replace(&mut self.logged, true) {
            tracing::info!(over = what, "over the per-connection rate; slowing this connection down");
        }
        tokio::select! {
            () = self.shutdown.cancelled() => {
                Err(Fatal::new(ErrorCode::ShuttingDown, close_code::AWAY, "server is shutting down"))
            }
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }
}
