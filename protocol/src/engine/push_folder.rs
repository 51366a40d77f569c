//! Pushing a folder: which local files are uploaded (each by an [`super::UploadSync`]), which are
//! already on the server, and which server files a push with `--delete` removes; and the
//! requests that need no sync machinery (a folder's listing, a deletion), each an
//! [`Exchange`] that survives lost connections.

use std::collections::HashMap;
use std::mem;

use super::{Action, ClientError, Input, Losses, Machine, Pages, Queue, SyncReport, bump};
use crate::{AssetPath, ClientMessage, Error, FolderEntry, MAX_REQUESTS, ServerMessage, VersionId};

/// What a folder push does, file by file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FolderPushPlan {
    /// Local files to upload, each with the server's version of it (`None`: new on the server),
    /// which the upload must still find there.
    pub upload: Vec<(AssetPath, Option<VersionId>)>,
    /// Local files the server holds exactly: nothing to send.
    pub unchanged: Vec<AssetPath>,
    /// Server files with no local file, to delete (with `--delete`) if still that version.
    pub delete: Vec<(AssetPath, VersionId)>,
}

/// Plans pushing the `local` files (each with its version, cut with the server's default
/// parameters) over the server's `listing` of the same folder; with `delete`, server files
/// missing locally are removed.
pub fn plan_folder_push(
    local: Vec<(AssetPath, VersionId)>,
    listing: &[FolderEntry],
    delete: bool,
) -> FolderPushPlan {
    let mut server: HashMap<&AssetPath, VersionId> = listing.iter().map(|e| (&e.asset, e.version)).collect();
    let mut plan = FolderPushPlan::default();
    for (asset, version) in local {
        match server.remove(&asset) {
            Some(there) if there == version => plan.unchanged.push(asset),
            there => plan.upload.push((asset, there)),
        }
    }
    if delete {
        plan.delete = listing
            .iter()
            .filter(|e| server.contains_key(&e.asset))
            .map(|e| (e.asset.clone(), e.version))
            .collect();
    }
    plan
}

/// What an [`Exchange`] asks.
#[derive(Clone, Debug)]
enum Ask {
    List(String),
    Delete(AssetPath, VersionId),
}

/// What an [`Exchange`] got.
#[derive(Debug)]
pub enum Exchanged {
    /// The folder's files.
    Listing(Vec<FolderEntry>),
    /// The file is deleted (or was already gone when a deletion was sent again after a lost
    /// connection).
    Deleted,
}

#[derive(Debug)]
enum State {
    Send,
    Await(u32),
    Reconnecting(u32),
    Finished(Exchanged),
    Failed(ClientError),
    Over,
}

/// One request and its answer, sent again after a lost connection.
#[derive(Debug)]
pub struct Exchange {
    ask: Ask,
    next_id: u32,
    /// Whether a deletion was sent on a connection that was then lost: it may have landed.
    sent_once: bool,
    /// On a conflict, delete the server's version instead of failing.
    force: bool,
    losses: Losses,
    report: SyncReport,
    queue: Queue,
    /// The pages of a listing received so far.
    pages: Pages,
    state: State,
}

impl Exchange {
    /// Asks for the listing of `folder` (`""`: everything).
    pub fn list(folder: &str, next_id: u32) -> Self {
        Self::new(Ask::List(folder.to_owned()), next_id)
    }

    /// Deletes `asset` if the server's file is still `base`.
    pub fn delete(asset: AssetPath, base: VersionId, next_id: u32) -> Self {
        Self::new(Ask::Delete(asset, base), next_id)
    }

    fn new(ask: Ask, next_id: u32) -> Self {
        Exchange {
            ask,
            next_id: next_id.max(1),
            sent_once: false,
            force: false,
            losses: Losses::default(),
            report: SyncReport::default(),
            queue: Queue::new(),
            pages: Pages::default(),
            state: State::Send,
        }
    }

    /// A deletion that deletes whatever version the server holds (`push --force --delete`).
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// The answer, after [`Action::Done`]; and the figures.
    pub fn finish(self) -> (Exchanged, SyncReport) {
        let State::Finished(done) = self.state else { panic!("finish() before Action::Done") };
        (done, self.report)
    }

    fn what(&self) -> &str {
        match &self.ask {
            Ask::List(folder) => folder,
            Ask::Delete(asset, _) => asset.as_str(),
        }
    }

    fn on_answer(&mut self, id: u32, message: ServerMessage) -> State {
        match (&self.ask, message) {
            (_, ServerMessage::Changed { asset, version }) => {
                self.queue.push_back(Action::Changed { asset, version });
                State::Await(id)
            }
            (Ask::List(_), ServerMessage::Folder { id: answered, files, delta: false, more: true, .. })
                if answered == id =>
            {
                self.pages.add(files, Vec::new());
                State::Await(id)
            }
            (Ask::List(_), ServerMessage::Folder { id: answered, files, delta: false, packs: 0, .. })
                if answered == id =>
            {
                State::Finished(Exchanged::Listing(self.pages.finish(files, Vec::new()).0))
            }
            (Ask::Delete(..), ServerMessage::Deleted { id: answered }) if answered == id => {
                State::Finished(Exchanged::Deleted)
            }
            // Sent before the connection was lost, it landed.
            (Ask::Delete(..), ServerMessage::Conflict { id: answered, version: None })
                if answered == id && self.sent_once =>
            {
                State::Finished(Exchanged::Deleted)
            }
            (Ask::Delete(asset, _), ServerMessage::Conflict { id: answered, version: Some(version) })
                if answered == id && self.force && self.report.requests < MAX_REQUESTS =>
            {
                self.ask = Ask::Delete(asset.clone(), version);
                State::Send
            }
            (Ask::Delete(..), ServerMessage::Conflict { id: answered, version }) if answered == id => {
                State::Failed(ClientError::Conflict { current: version })
            }
            (_, ServerMessage::Error { id: Some(answered), code, message }) if answered == id => {
                State::Failed(ClientError::Refused { code, message })
            }
            (_, ServerMessage::Error { id: None, message, .. }) => self.lost(message),
            (_, other) => State::Failed(ClientError::GaveUp {
                requests: self.report.requests,
                last: Error::Protocol(format!("unexpected `{}` answering {}", other.kind(), self.what())),
            }),
        }
    }

    fn lost(&mut self, why: String) -> State {
        let who = self.what().to_owned();
        let state = match self.losses.reconnect(true, &who, why, &mut self.queue) {
            Ok(after_ms) => State::Reconnecting(after_ms),
            Err(error) => State::Failed(error),
        };
        self.report.reconnects = self.losses.count;
        state
    }
}

impl Machine for Exchange {
    fn poll(&mut self) -> Action<'_> {
        if let Some(action) = self.queue.pop_front() {
            return action;
        }
        match mem::replace(&mut self.state, State::Over) {
            State::Send => {
                let id = bump(&mut self.next_id);
                self.pages = Pages::default();
                self.report.requests += 1;
                self.state = State::Await(id);
                Action::Send(match &self.ask {
                    Ask::List(folder) => ClientMessage::ListFolder { id, folder: folder.clone() },
                    Ask::Delete(asset, base) => {
                        ClientMessage::Delete { id, asset: asset.as_str().to_owned(), base: *base }
                    }
                })
            }
            State::Failed(error) => Action::Failed(error),
            State::Over => panic!("poll() after Action::Failed"),
            state => {
                self.state = state;
                match &self.state {
                    State::Await(_) => Action::Receive,
                    State::Reconnecting(after_ms) => Action::Reconnect { after_ms: *after_ms },
                    State::Finished(_) => Action::Done,
                    _ => unreachable!("handled above"),
                }
            }
        }
    }

    fn handle(&mut self, input: Input<'_>) {
        self.state = match (mem::replace(&mut self.state, State::Over), input) {
            (_, Input::Stop(why)) => State::Failed(ClientError::Stopped(why)),
            (State::Reconnecting(_), Input::Reconnected) => State::Send,
            (State::Reconnecting(_), Input::Lost(why)) => self.lost(format!("reconnecting failed: {why}")),
            (State::Await(_), Input::Lost(why)) => {
                self.sent_once = true;
                self.lost(why)
            }
            (_, Input::Lost(why)) => self.lost(why),
            (State::Await(id), Input::Sent { wire }) => {
                self.report.wire_out += wire;
                State::Await(id)
            }
            (State::Await(id), Input::Message { message, wire }) => {
                self.report.wire_in += wire;
                self.on_answer(id, message)
            }
            (State::Await(_), Input::Frame { .. }) => State::Failed(ClientError::GaveUp {
                requests: self.report.requests,
                last: Error::Protocol(format!("a chunk frame answering {}", self.what())),
            }),
            (state, input) => {
                debug_assert!(false, "input {input:?} does not answer {state:?}");
                state
            }
        }
    }

    fn next_id(&self) -> u32 {
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hash;

    fn path(p: &str) -> AssetPath {
        AssetPath::new(p).unwrap()
    }

    #[test]
    fn a_folder_push_uploads_what_differs_and_deletes_only_when_asked() {
        let (v1, v2) = (Hash([1; 32]), Hash([2; 32]));
        let local = vec![(path("d/same.js"), v1), (path("d/changed.js"), v2), (path("d/new.js"), v1)];
        let listing = [
            FolderEntry { asset: path("d/changed.js"), version: v1 },
            FolderEntry { asset: path("d/gone.js"), version: v2 },
            FolderEntry { asset: path("d/same.js"), version: v1 },
        ];
        let plan = plan_folder_push(local.clone(), &listing, false);
        assert_eq!(plan.upload, vec![(path("d/changed.js"), Some(v1)), (path("d/new.js"), None)]);
        assert_eq!(plan.unchanged, vec![path("d/same.js")]);
        assert!(plan.delete.is_empty());
        assert_eq!(plan_folder_push(local, &listing, true).delete, vec![(path("d/gone.js"), v2)]);
    }

    /// Drives a deletion through `answers` (a lost connection for `None`), reconnecting at once.
    fn delete_with(answers: Vec<Option<ServerMessage>>) -> Result<Exchanged, ClientError> {
        let mut machine = Exchange::delete(path("a.js"), Hash([1; 32]), 1);
        let mut answers = answers.into_iter();
        loop {
            match machine.poll() {
                Action::Send(_) => machine.handle(Input::Sent { wire: 10 }),
                Action::Receive => match answers.next().expect("an answer for each request") {
                    Some(message) => machine.handle(Input::Message { message, wire: 10 }),
                    None => machine.handle(Input::Lost("cut".into())),
                },
                Action::Reconnect { .. } => machine.handle(Input::Reconnected),
                Action::Warn(_) => {}
                Action::Done => return Ok(machine.finish().0),
                Action::Failed(e) => return Err(e),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_deletion_that_landed_before_its_answer_was_lost_counts_as_done() {
        assert!(matches!(delete_with(vec![Some(ServerMessage::Deleted { id: 1 })]), Ok(Exchanged::Deleted)));
        let after_cut = vec![None, Some(ServerMessage::Conflict { id: 2, version: None })];
        assert!(matches!(delete_with(after_cut), Ok(Exchanged::Deleted)));
        // Without a cut, a file already gone is someone else's doing: reported.
        let gone = vec![Some(ServerMessage::Conflict { id: 1, version: None })];
        assert!(matches!(delete_with(gone), Err(ClientError::Conflict { current: None })));
        let changed = vec![Some(ServerMessage::Conflict { id: 1, version: Some(Hash([3; 32])) })];
        assert!(matches!(delete_with(changed), Err(ClientError::Conflict { current: Some(_) })));
    }
}
