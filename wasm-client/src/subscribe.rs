//! Subscriptions: the server pushes `changed`, the client syncs what changed, commits it, and
//! tells the page.
//!
//! Pushes travel apart from answers ([`Socket::take_pushes`]), so they never disturb an answer
//! being read. One listener task per socket handles them in order; it holds the client weakly,
//! so a client the page dropped is not kept alive by it. The policy is the engine's
//! (`Follow`, [`Push::decide`]): when the socket closes, the listener reconnects with backoff,
//! subscribes again and brings every subscription up to date (folders with a folder sync), so
//! that nothing announced meanwhile is missed.

use std::rc::{Rc, Weak};

use assetsync_protocol::engine::{Push, Subscription};
use assetsync_protocol::{AssetPath, ClientMessage, Scope, VersionId};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::socket::{Incoming, PushStream, Socket};
use crate::{Client, SyncResult, js_error, next};

impl Client {
    /// See `SyncClient::subscribe`.
    pub(crate) async fn subscribe(self: &Rc<Self>, path: String, on_update: Function) -> Result<(), JsError> {
        let scope = Scope::new(&path).map_err(js_error)?;
        let mut guard = self.socket.lock().await;
        let new = self.follow.borrow_mut().add(scope.clone());
        let subscribed = match guard.as_mut() {
            Some(socket) if socket.is_open() => match new {
                true => self.request_subscription(socket, &scope).await,
                false => Ok(()),
            },
            // A new connection subscribes to everything followed, this one included.
            _ => self.handshake().await.map(|socket| *guard = Some(socket)),
        };
        match subscribed {
            Ok(()) => self.callbacks.borrow_mut().push((scope, on_update)),
            Err(e) if new => {
                self.follow.borrow_mut().remove(&scope);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Sends `subscribe` and waits for the server's confirmation.
    async fn request_subscription(
        self: &Rc<Self>,
        socket: &mut Socket,
        scope: &Scope,
    ) -> Result<(), JsError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let fail = |why: String| js_error(why);
        let refused = |why: &dyn std::fmt::Display| {
            js_error(format!("cannot subscribe to {:?}: {why}", scope.to_string()))
        };
        self.send(socket, &ClientMessage::Subscribe { id, path: scope.to_string() }).map_err(fail)?;
        loop {
            let Incoming::Message(message, _) = next(socket).await.map_err(fail)? else {
                return Err(js_error("unexpected binary frame in answer to subscribe"));
            };
            let answer = self.follow.borrow_mut().answer(scope, id, message);
            match answer.map_err(|e| refused(&e))? {
                Subscription::Confirmed => return Ok(()),
                Subscription::Changed { asset, version } => self.deliver_later(asset, version),
            }
        }
    }

    /// On every new socket: subscribes again to everything listed and starts its listener.
    pub(crate) async fn renew_subscriptions(self: &Rc<Self>, socket: &mut Socket) -> Result<(), JsError> {
        let scopes = self.follow.borrow().scopes().to_vec();
        for scope in &scopes {
            self.request_subscription(socket, scope).await?;
        }
        self.follow.borrow_mut().connected();
        if let Some(pushes) = socket.take_pushes() {
            wasm_bindgen_futures::spawn_local(listen(Rc::downgrade(self), pushes));
        }
        Ok(())
    }

    /// [`Client::deliver`]s a push read where an answer was due (the socket hands pushes to the
    /// listener; one that reaches an answer is delivered the same way), once this task yields.
    pub(crate) fn deliver_later(self: &Rc<Self>, asset: AssetPath, version: Option<VersionId>) {
        let client = Rc::clone(self);
        wasm_bindgen_futures::spawn_local(async move { client.deliver(asset, Some(version)).await });
    }

    /// Brings `asset` up to date after a push (`Some(version)`, `None` inside when it was
    /// removed) or a reconnection (`None`: unknown whether it changed), and tells the
    /// subscriptions covering it if it did change.
    pub(crate) async fn deliver(self: &Rc<Self>, asset: AssetPath, pushed: Option<Option<VersionId>>) {
        if !self.follow.borrow().covers(&asset) {
            return;
        }
        let _one_at_a_time = self.delivering.lock().await;
        let before = self.store.current(&asset).await.ok().flatten().map(|m| m.version());
        let push = match pushed {
            Some(version) => Push::decide(asset.clone(), version, before),
            // After a reconnection: whether it changed is unknown, so sync.
            None => Some(Push::Sync(asset.clone())),
        };
        match push {
            None => {}
            Some(Push::Remove(asset)) => {
                self.remembered.borrow_mut().remove(&asset);
                let error = self.store.remove(&asset).await.err();
                let error = error.map(|e| js_error(format!("{asset}: cannot delete the local copy: {}", e)));
                self.notify(&asset, Update::Removed(error));
            }
            Some(Push::Sync(asset)) => match self.sync(asset.as_str().to_owned(), None).await {
                Ok(result) if !Push::is_news(before, result.version) => {}
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
        let callbacks: Vec<Function> =
            self.callbacks.borrow().iter().filter(|(s, _)| s.covers(asset)).map(|(_, f)| f.clone()).collect();
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
        let scopes = self.follow.borrow().scopes().to_vec();
        for scope in scopes {
            match scope {
                Scope::Asset(asset) => self.deliver(asset, None).await,
                folder => {
                    let _one_at_a_time = self.delivering.lock().await;
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
async fn listen(client: Weak<Client>, mut pushes: PushStream) {
    while let Some((asset, version)) = pushes.next().await {
        let Some(client) = client.upgrade() else { return };
        client.deliver(asset, Some(version)).await;
    }
    loop {
        let wait = {
            let Some(client) = client.upgrade() else { return };
            if client.closed.get() || client.follow.borrow().scopes().is_empty() {
                return;
            }
            client.follow.borrow_mut().lost()
        };
        sleep(wait as i32).await;
        let Some(client) = client.upgrade() else { return };
        match client.resume().await {
            Ok(()) => return,
            Err(e) => {
                let message: JsValue = e.into();
                web_sys::console::warn_2(&"assetsync: reconnecting failed:".into(), &message);
            }
        }
    }
}

pub(crate) async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(global) = crate::global::Global::get() {
            global.set_timeout(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
