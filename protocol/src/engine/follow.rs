//! Following changes: what a subscribed client does about a pushed change, what it brings up to
//! date after a reconnection, and how long it waits before reconnecting. `pull --follow` and the
//! browser's `subscribe` both run this policy.

use std::collections::VecDeque;

use super::{ClientError, FIRST_BACKOFF_MS};
use crate::{AssetPath, Scope, ServerMessage, VersionId};

/// Longest wait between the reconnection attempts of a subscribed client.
pub const MAX_FOLLOW_BACKOFF_MS: u32 = 30_000;

/// What to do about one pushed change.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The asset has a version the client does not hold: sync it.
    Sync(AssetPath),
    /// The asset is gone from the server: delete the local copy.
    Remove(AssetPath),
}

impl Push {
    /// What to do now that `asset` is at `version` on the server (`None`: removed), for a
    /// client holding `held`: nothing when it holds that version already (a sync of its own may
    /// have brought it), or when a removed asset was never held.
    pub fn decide(asset: AssetPath, version: Option<VersionId>, held: Option<VersionId>) -> Option<Push> {
        match version {
            Some(version) if held == Some(version) => None,
            Some(_) => Some(Push::Sync(asset)),
            None if held.is_some() => Some(Push::Remove(asset)),
            None => None,
        }
    }

    /// Whether a sync made for a subscription (after a push, or to catch up after a
    /// reconnection) is news to tell the subscriber: only a version it did not hold before is,
    /// so that a page running a script per update runs it once per change.
    pub fn is_news(held_before: Option<VersionId>, synced: VersionId) -> bool {
        held_before != Some(synced)
    }
}

/// Pushed changes not acted on yet, oldest first, only the latest of each asset: however fast
/// the server pushes, this holds at most one entry per asset.
#[derive(Debug, Default)]
pub struct Pushes {
    queue: VecDeque<(AssetPath, Option<VersionId>)>,
}

impl Pushes {
    /// Notes that `asset` is now at `version` (`None`: removed), replacing an older note.
    pub fn push(&mut self, asset: AssetPath, version: Option<VersionId>) {
        self.queue.retain(|(a, _)| *a != asset);
        self.queue.push_back((asset, version));
    }

    /// The oldest change noted.
    pub fn pop(&mut self) -> Option<(AssetPath, Option<VersionId>)> {
        self.queue.pop_front()
    }

    /// Changes noted.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is noted.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A message read while waiting for the answer to a `subscribe`.
#[derive(Debug, PartialEq, Eq)]
pub enum Subscription {
    /// The server confirmed it.
    Confirmed,
    /// A change pushed before the confirmation: note it, and read on.
    Changed {
        /// The asset.
        asset: AssetPath,
        /// Its new version, `None` when it was removed.
        version: Option<VersionId>,
    },
}

/// A client's subscriptions, renewed on every connection, and its reconnection backoff.
#[derive(Debug)]
pub struct Follow {
    scopes: Vec<Scope>,
    /// Those the server has not confirmed yet.
    unconfirmed: Vec<Scope>,
    backoff_ms: u32,
}

impl Default for Follow {
    fn default() -> Self {
        Follow { scopes: Vec::new(), unconfirmed: Vec::new(), backoff_ms: FIRST_BACKOFF_MS }
    }
}

impl Follow {
    /// Following `scopes`.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut follow = Follow::default();
        for scope in scopes {
            follow.add(scope);
        }
        follow
    }

    /// Adds a subscription, to be confirmed by [`Follow::answer`]; false if it was there
    /// already.
    pub fn add(&mut self, scope: Scope) -> bool {
        let new = !self.scopes.contains(&scope);
        if new {
            self.scopes.push(scope.clone());
            self.unconfirmed.push(scope);
        }
        new
    }

    /// Drops a subscription (one the server refused, say).
    pub fn remove(&mut self, scope: &Scope) {
        self.scopes.retain(|s| s != scope);
        self.unconfirmed.retain(|s| s != scope);
    }

    /// What `message`, read after subscribing to `scope` with request `id`, means. An error
    /// naming the request is a refusal; one naming no request is the server ending the session
    /// (shutting down, or an edge whose path to the origin changed, which asks its relaying
    /// clients to come back for the new path): the connection is lost, and reconnecting is the
    /// answer, not giving up.
    pub fn answer(
        &mut self,
        scope: &Scope,
        id: u32,
        message: ServerMessage,
    ) -> Result<Subscription, ClientError> {
        match message {
            ServerMessage::Subscribed { id: got, missing } if got == id => {
                self.subscribed(scope, missing).map(|()| Subscription::Confirmed)
            }
            ServerMessage::Changed { asset, version } => Ok(Subscription::Changed { asset, version }),
            ServerMessage::Error { id: Some(got), code, message } if got == id => {
                Err(ClientError::Refused { code, message })
            }
            ServerMessage::Error { id: None, message, .. } => {
                Err(ClientError::Lost(format!("the server closed the connection: {message}")))
            }
            other => Err(ClientError::Lost(format!("unexpected `{}` answer to subscribe", other.kind()))),
        }
    }

    /// The server answered a subscription to `scope` with `subscribed`, `missing` when nothing
    /// is inside it there now. The first time, that is a mistyped name far more often than a
    /// file yet to come, and waiting in silence would hide it: the subscription is dropped, with
    /// an error that names the scope to follow instead. Once confirmed, a subscription stands
    /// (on renewals after a reconnection its files may be gone for a while).
    fn subscribed(&mut self, scope: &Scope, missing: bool) -> Result<(), ClientError> {
        let first = self.unconfirmed.contains(scope);
        self.unconfirmed.retain(|s| s != scope);
        if !(first && missing) {
            return Ok(());
        }
        self.remove(scope);
        Err(ClientError::Missing(match scope.path().rsplit_once('/') {
            Some((parent, _)) => format!("its folder \"{parent}/\""),
            None => "\"\" (every asset)".to_owned(),
        }))
    }

    /// The subscriptions, each once, in the order they were made. After a reconnection each is
    /// subscribed to again first (so nothing pushed meanwhile is missed), then brought up to
    /// date: a folder with one folder sync, which also finds files created or deleted while the
    /// client was away; an asset with one sync.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether a subscription covers `asset`.
    pub fn covers(&self, asset: &AssetPath) -> bool {
        self.scopes.iter().any(|s| s.covers(asset))
    }

    /// After a lost connection or a failed attempt: the wait before the next attempt, from
    /// [`FIRST_BACKOFF_MS`] doubling up to [`MAX_FOLLOW_BACKOFF_MS`].
    pub fn lost(&mut self) -> u32 {
        let wait = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_FOLLOW_BACKOFF_MS);
        wait
    }

    /// A connection is up and its subscriptions renewed: the next loss waits the least again.
    pub fn connected(&mut self) {
        self.backoff_ms = FIRST_BACKOFF_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hash;

    #[test]
    fn pushes_keep_the_latest_per_asset_and_decisions_skip_what_is_held() {
        let (a, b) = (AssetPath::new("a.js").unwrap(), AssetPath::new("b.js").unwrap());
        let (v1, v2) = (Hash::of(b"1"), Hash::of(b"2"));
        let mut pushes = Pushes::default();
        for _ in 0..1000 {
            pushes.push(a.clone(), Some(v1));
        }
        pushes.push(b.clone(), None);
        pushes.push(a.clone(), Some(v2));
        assert_eq!(pushes.len(), 2, "one entry per asset however many pushes");
        assert_eq!(pushes.pop(), Some((b.clone(), None)));
        assert_eq!(pushes.pop(), Some((a.clone(), Some(v2))));
        assert_eq!(Push::decide(a.clone(), Some(v2), Some(v2)), None);
        assert_eq!(Push::decide(a.clone(), Some(v2), Some(v1)), Some(Push::Sync(a.clone())));
        assert_eq!(Push::decide(a.clone(), None, Some(v1)), Some(Push::Remove(a.clone())));
        assert_eq!(Push::decide(a, None, None), None);
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets_once_connected() {
        let mut follow = Follow::new([Scope::new("dist/").unwrap(), Scope::new("dist/").unwrap()]);
        assert_eq!(follow.scopes().len(), 1, "each subscription once");
        let waits: Vec<u32> = (0..10).map(|_| follow.lost()).collect();
        assert_eq!(waits[..4], [250, 500, 1000, 2000]);
        assert_eq!(waits[9], MAX_FOLLOW_BACKOFF_MS);
        follow.connected();
        assert_eq!(follow.lost(), FIRST_BACKOFF_MS);
    }

    #[test]
    fn an_error_naming_no_request_while_subscribing_is_a_lost_connection_not_a_refusal() {
        let scope = Scope::new("dist/").unwrap();
        let mut follow = Follow::new([scope.clone()]);
        let error = |id, code| ServerMessage::Error { id, code, message: "why".into() };
        // An edge that has just reached its own upstream ends its relaying clients' sessions so
        // that they come back for its new path: they reconnect, they do not give up.
        let moved = follow.answer(&scope, 7, error(None, crate::ErrorCode::Moved));
        assert!(matches!(moved, Err(ClientError::Lost(ref why)) if why.contains("why")), "{moved:?}");
        let refused = follow.answer(&scope, 7, error(Some(7), crate::ErrorCode::Forbidden));
        assert!(matches!(refused, Err(ClientError::Refused { .. })), "{refused:?}");
        let asset = AssetPath::new("dist/a.js").unwrap();
        let pushed = ServerMessage::Changed { asset: asset.clone(), version: None };
        assert_eq!(follow.answer(&scope, 7, pushed).unwrap(), Subscription::Changed { asset, version: None });
        let confirmed = ServerMessage::Subscribed { id: 7, missing: false };
        assert_eq!(follow.answer(&scope, 7, confirmed).unwrap(), Subscription::Confirmed);
    }

    #[test]
    fn a_first_subscription_to_nothing_is_dropped_with_a_hint_and_a_renewal_stands() {
        let (app, lib) = (Scope::new("lib/app.js").unwrap(), Scope::new("lib/").unwrap());
        let mut follow = Follow::new([app.clone(), lib.clone()]);
        let refused = follow.subscribed(&app, true).unwrap_err().to_string();
        assert!(refused.contains(r#"subscribe to its folder "lib/""#), "{refused}");
        assert_eq!(follow.scopes(), std::slice::from_ref(&lib));
        follow.subscribed(&lib, false).unwrap();
        follow.subscribed(&lib, true).expect("a confirmed subscription stands while its files are gone");
        assert_eq!(follow.scopes(), std::slice::from_ref(&lib));
        let mut follow = Follow::new([lib.clone()]);
        let refused = follow.subscribed(&lib, true).unwrap_err().to_string();
        assert!(refused.contains(r#"subscribe to "" (every asset)"#), "{refused}");
    }
}
