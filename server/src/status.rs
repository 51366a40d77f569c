//! `GET /status`: what a server (origin or edge) is doing, as JSON: its id and path to the
//! origin, its upstream's state and lag, its clients and subscriptions, and the bytes its sockets
//! carried since start (counted under HTTP and WebSockets, as the network sees them).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::AppState;
use crate::upstream::UpstreamStatus;

/// Bytes read and written by every socket since start.
#[derive(Debug, Default)]
pub struct Traffic {
    read: AtomicU64,
    written: AtomicU64,
}

/// A socket whose bytes are added to a [`Traffic`].
pub(crate) struct Counted<S> {
    pub inner: S,
    pub traffic: Arc<Traffic>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.traffic.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.traffic.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `/status`'s body.
#[derive(Debug, Serialize)]
struct Status {
    server: &'static str,
    /// This server's id.
    id: String,
    /// Its path to the origin: its id, then its upstream's path.
    path: Vec<String>,
    uptime_s: u64,
    /// Its upstream (an edge's), or `null` for an origin.
    upstream: Option<UpstreamStatus>,
    /// Open WebSocket connections.
    clients: usize,
    /// Subscriptions of those connections.
    subscriptions: usize,
    /// Bytes read from and written to every socket since start.
    bytes_in: u64,
    bytes_out: u64,
    /// Folder listings walked on disk, and answered from a walk while nothing changed.
    folder_walks: u64,
    folder_listings_reused: u64,
    /// Files the watcher looked at again because it heard of a change to them.
    watch_rechecks: u64,
}

/// Answers `/status`; with `--token-file`, only a request that presents the token as
/// `Authorization: Bearer TOKEN`.
pub(crate) async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|t| crate::session::token_matches(t, expected)) {
            let why = "this server requires its token: assetsync status --token-file FILE\n";
            return (StatusCode::UNAUTHORIZED, why).into_response();
        }
    }
    Json(Status {
        server: concat!("assetsync/", env!("CARGO_PKG_VERSION")),
        id: state.id.clone(),
        path: state.path(),
        uptime_s: state.started.elapsed().as_secs(),
        upstream: state.upstream.as_ref().map(|u| u.status()),
        clients: state.clients(),
        subscriptions: state.hub.subscriptions(),
        bytes_in: state.traffic.read.load(Ordering::Relaxed),
        bytes_out: state.traffic.written.load(Ordering::Relaxed),
        folder_walks: state.index.listings_walked(),
        folder_listings_reused: state.index.listings_reused(),
        watch_rechecks: state.hub.rechecks(),
    })
    .into_response()
}
