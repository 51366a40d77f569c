//! Subscriptions: the server pushes `changed`, the client syncs what changed, commits it, and
//! tells the page.
//!
//! Pushes travel on their own channel from the socket ([`Socket::take_pushes`]), so they never
//! disturb an answer being read. One listener task per socket handles them in order; it holds
//! the client weakly, so a client the page dropped is not kept alive by it. When the socket
//! closes, the listener reconnects with backoff, subscribes again and brings every subscription
//! up to date (folders with a folder sync), so that nothing announced meanwhile is missed.

use std::collections::HashSet;
use std::rc::{Rc, Weak};

use assetsync_protocol::{AssetPath, ClientMessage, Scope, ServerMessage, VersionId};
use futures_channel::mpsc::UnboundedReceiver;
use futures_util::StreamExt;
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::socket::{Incoming, Socket};
use crate::{Client, FIRST_BACKOFF_MS, SyncResult, js_error, next, parse};

/// Longest wait between a listener's reconnection attempts.
const MAX_BACKOFF_MS: i32 = 30_000;

impl Client {
    /// See `SyncClient::subscribe`.
    pub(crate) async fn subscribe(self: &Rc<Self>, path: String, on_update: Function) -> Result<(), JsError> {
        let scope = Scope::new(&path).map_err(js_error)?;
        let mut guard = self.socket.lock().await;
        match guard.as_mut() {
            Some(socket) if socket.is_open() => {
                self.request_subscription(socket, &scope).await?;
                self.subscriptions.borrow_mut().push((scope, on_update));
            }
            _ => {
                // A new connection subscribes to everything listed, this one included.
                self.subscriptions.borrow_mut().push((scope, on_update));
                match self.handshake().await {
                    Ok(socket) => *guard = Some(socket),
                    Err(e) => {
                        self.subscriptions.borrow_mut().pop();
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `subscribe` and waits for the server's confirmation.
    async fn request_subscription(&self, socket: &mut Socket, scope: &Scope) -> Result<(), JsError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let fail = |why: String| js_error(why);
        self.send(socket, &ClientMessage::Subscribe { id, path: scope.to_string() }).map_err(fail)?;
        match next(socket).await.map_err(fail)? {
            Incoming::Text(text) => match parse(&text).map_err(fail)? {
                ServerMessage::Subscribed { id: got } if got == id => Ok(()),
                ServerMessage::Error { message, .. } => {
                    Err(js_error(format!("cannot subscribe to {:?}: {message}", scope.to_string())))
                }
                other => Err(js_error(format!("unexpected `{}` answer to subscribe", other.kind()))),
            },
            _ => Err(js_error("unexpected binary frame in answer to subscribe")),
        }
    }

    /// On every new socket: subscribes again to everything listed and starts its listener.
    pub(crate) async fn renew_subscriptions(self: &Rc<Self>, socket: &mut Socket) -> Result<(), JsError> {
        let scopes: Vec<Scope> = self.subscriptions.borrow().iter().map(|(s, _)| s.clone()).collect();
        for scope in &scopes {
            self.request_subscription(socket, scope).await?;
        }
        if let Some(pushes) = socket.take_pushes() {
            wasm_bindgen_futures::spawn_local(listen(Rc::downgrade(self), pushes));
        }
        Ok(())
    }

    /// Brings `asset` up to date after a push (`Some(version)`, `None` inside when it was
    /// removed) or a reconnection (`None`: unknown whether it changed), and tells the
    /// subscriptions covering it if it did change.
    pub(crate) async fn deliver(self: &Rc<Self>, asset: AssetPath, pushed: Option<Option<VersionId>>) {
        if !self.subscriptions.borrow().iter().any(|(s, _)| s.covers(&asset)) {
            return;
        }
        let before = self.store.current(&asset).await.ok().flatten().map(|m| m.version());
        match pushed {
            Some(Some(version)) if before == Some(version) => {}
            Some(None) => {
                if before.is_some() {
                    self.remembered.borrow_mut().remove(&asset);
                    let error = self.store.remove(&asset).await.err();
                    let error =
                        error.map(|e| js_error(format!("{asset}: cannot delete the local copy: {}", e.0)));
                    self.notify(&asset, Update::Removed(error));
                }
            }
            _ => match self.sync(asset.as_str().to_owned(), None).await {
                Ok(result) if before == Some(result.version) => {}
                Ok(result) => self.notify(&asset, Update::Synced(result)),
                Err(e) => self.notify(&asset, Update::Failed(pushed.flatten(), e)),
            },
        }
    }

    /// Calls the callbacks of the subscriptions covering `asset` with `update`.
    fn notify(&self, asset: &AssetPath, update: Update) {
        let object = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&object, &k.into(), &v).expect("set on a plain object");
        set("asset", asset.as_str().into());
        match update {
            Update::Synced(result) => {
                set("version", result.version.to_hex().into());
                set("result", result.into());
            }
            Update::Removed(error) => {
                set("version", JsValue::NULL);
                if let Some(error) = error {
                    set("error", error.into());
                }
            }
            Update::Failed(version, error) => {
                set("version", version.map_or(JsValue::NULL, |v| v.to_hex().into()));
                set("error", error.into());
            }
        }
        let callbacks: Vec<Function> = self
            .subscriptions
            .borrow()
            .iter()
            .filter(|(s, _)| s.covers(asset))
            .map(|(_, f)| f.clone())
            .collect();
        for f in callbacks {
            // A throwing callback must not stop the others, nor the listener.
            let _ = f.call1(&JsValue::NULL, &object);
        }
    }

    /// After a lost connection: connects again (renewing the subscriptions) unless a sync
    /// already did, then brings everything subscribed up to date: a folder with one folder sync
    /// (which also finds files created or deleted meanwhile), an asset with one sync.
    async fn resume(self: &Rc<Self>) -> Result<(), JsError> {
        self.connected(&mut *self.socket.lock().await).await?;
        let mut seen = HashSet::new();
        let scopes: Vec<Scope> = self
            .subscriptions
            .borrow()
            .iter()
            .map(|(s, _)| s.clone())
            .filter(|s| seen.insert(s.clone()))
            .collect();
        for scope in scopes {
            match scope {
                Scope::Asset(asset) => self.deliver(asset, None).await,
                folder => {
                    let outcome = self.sync_folder(&folder).await?;
                    for result in outcome.fetched {
                        self.notify(&result.asset.clone(), Update::Synced(result));
                    }
                    for asset in outcome.removed {
                        self.notify(&asset, Update::Removed(None));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a subscription callback is told about one asset.
enum Update {
    /// A new version, committed.
    Synced(SyncResult),
    /// Removed on the server, and here (unless deleting failed).
    Removed(Option<JsError>),
    /// Syncing the announced version failed.
    Failed(Option<VersionId>, JsError),
}

/// Handles one socket's pushes; when it closes, reconnects with backoff while subscriptions
/// remain and the client is neither closed nor dropped.
async fn listen(client: Weak<Client>, mut pushes: UnboundedReceiver<String>) {
    while let Some(text) = pushes.next().await {
        let Some(client) = client.upgrade() else { return };
        if let Ok(ServerMessage::Changed { asset, version }) = serde_json::from_str(&text) {
            client.deliver(asset, Some(version)).await;
        }
    }
    let mut backoff = FIRST_BACKOFF_MS;
    loop {
        {
            let Some(client) = client.upgrade() else { return };
            if client.closed.get() || client.subscriptions.borrow().is_empty() {
                return;
            }
            match client.resume().await {
                Ok(()) => return,
                Err(e) => {
                    let message: JsValue = e.into();
                    web_sys::console::warn_2(&"assetsync: reconnecting failed:".into(), &message);
                }
            }
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF_MS);
    }
}

pub(crate) async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(window) = web_sys::window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
