//! Subscriptions: a session's scopes, counted in the hub while it lives.

use std::sync::Arc;

use assetsync_protocol::{ErrorCode, Scope, ServerMessage};
use axum::extract::ws::WebSocket;

use super::answer::refuse;
use super::{Fatal, send_json};
use crate::server::AppState;
use crate::watch::Hub;

/// Most subscriptions per connection.
pub(super) const MAX_SUBSCRIPTIONS: usize = 256;

/// A session's subscriptions, counted in the hub while the session lives.
pub(super) struct Subscriptions {
    hub: Arc<Hub>,
    scopes: Vec<Scope>,
}

impl Subscriptions {
    pub(super) fn new(state: &AppState) -> Self {
        Subscriptions { hub: state.hub.clone(), scopes: Vec::new() }
    }

    /// Whether nothing is subscribed.
    pub(super) fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether a subscription covers `asset`.
    pub(super) fn covers(&self, asset: &assetsync_protocol::AssetPath) -> bool {
        self.scopes.iter().any(|s| s.covers(asset))
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for scope in &self.scopes {
            self.hub.remove(scope);
        }
    }
}

/// Answers `subscribe`: from now on, changes inside `path` are pushed as `changed`.
pub(super) async fn subscribe(
    socket: &mut WebSocket,
    state: &AppState,
    subscriptions: &mut Subscriptions,
    id: u32,
    path: &str,
) -> Result<(), Fatal> {
    let scope = match Scope::new(path) {
        Ok(scope) => scope,
        Err(e) => return send_json(socket, &refuse(id, ErrorCode::BadPath, e.to_string())).await,
    };
    if !state.watching {
        let message = "this server does not watch its files (it runs with --no-watch)".to_owned();
        return send_json(socket, &refuse(id, ErrorCode::Unsupported, message)).await;
    }
    if subscriptions.scopes.len() >= MAX_SUBSCRIPTIONS {
        let message = format!("more than {MAX_SUBSCRIPTIONS} subscriptions on one connection");
        return send_json(socket, &refuse(id, ErrorCode::TooLarge, message)).await;
    }
    let missing = match &scope {
        Scope::All => false,
        Scope::Folder(folder) => !state.index.is_folder(folder),
        Scope::Asset(asset) if state.index.is_folder(asset) => {
            let message =
                format!("{asset:?} is a folder, not a file: subscribe to it as a folder, \"{asset}/\"");
            return send_json(socket, &refuse(id, ErrorCode::UnknownAsset, message)).await;
        }
        Scope::Asset(asset) => !state.index.is_file(asset),
    };
    tracing::debug!(%scope, missing, "subscribed");
    state.hub.add(&scope);
    subscriptions.scopes.push(scope);
    send_json(socket, &ServerMessage::Subscribed { id, missing }).await
}
