//! The upload of one asset: learning the server's version when the client does not hold it,
//! sending the new version as a delta against it, the answer, a conflict, retries after a lost
//! connection, and committing the uploaded version to the client's own store.

use std::collections::HashSet;
use std::mem;

use super::{Action, ClientError, Input, Losses, Machine, Queue, SyncReport, bump};
use crate::upload::{Compressor, Prepared, prepare, read_ids, read_manifest};
use crate::{
    AssetPath, ChunkId, ChunkParams, ClientMessage, Error, MAX_REQUESTS, Manifest, ServerMessage, Synced,
    VerifiedChunk, VersionId,
};

/// What an upload did.
#[derive(Debug)]
pub struct Uploaded {
    /// The uploaded version's manifest.
    pub manifest: Manifest,
    /// The uploaded file.
    pub data: Vec<u8>,
    /// The server's version of the asset now (the uploaded one, unless the server cuts files
    /// with other parameters than the base had).
    pub version: VersionId,
    /// Whether the server already held exactly this file: nothing was sent.
    pub unchanged: bool,
    /// Distinct chunks whose bytes were sent (in the last attempt).
    pub chunks_sent: usize,
    /// Their bytes before compression.
    pub chunk_bytes: u64,
    /// Its figures; `requests` counts the uploads sent.
    pub report: SyncReport,
}

/// Where the upload's base comes from.
#[derive(Debug)]
enum Base {
    /// Ask the server for its current version first, which must be this one if given.
    Ask(Option<VersionId>),
    /// The version the client last synced or uploaded (`None`: it held none, so the asset must
    /// not exist on the server yet).
    Known(Option<Manifest>),
}

#[derive(Debug)]
enum State {
    /// Ask the server for its manifest.
    Ask,
    AwaitManifest(u32),
    /// Read the base's file from the store, as a compression prefix.
    LoadPrefix,
    /// Plan the upload against the base.
    Prepare,
    SendUpload(Prepared),
    SendFrames(Prepared),
    AwaitAnswer(Prepared),
    Reconnecting(u32),
    Committing(Synced),
    Finished,
    Failed(ClientError),
    Over,
}

/// The upload of `data` as the new version of an asset (see the [module docs](self)).
#[derive(Debug)]
pub struct UploadSync {
    asset: AssetPath,
    data: Vec<u8>,
    base: Base,
    /// The server's version the upload is made from, once known.
    server: Option<Manifest>,
    prefix: Option<Vec<u8>>,
    /// Chunks the server kept from an attempt cut short.
    received: HashSet<ChunkId>,
    /// Whether an attempt was cut after its upload was sent: the next asks what was kept.
    resuming: bool,
    compress: Option<Compressor>,
    /// On a conflict, upload over the server's version instead of failing.
    force: bool,
    /// Whether the driver has a store to commit the uploaded version to.
    commit: bool,
    next_id: u32,
    new: Option<Manifest>,
    version: Option<VersionId>,
    sent: (usize, u64),
    losses: Losses,
    resume: bool,
    report: SyncReport,
    queue: Queue,
    state: State,
}

impl UploadSync {
    /// An upload of `data` as the new version of `asset`. `base` is the version the client
    /// last synced or uploaded (`Some(None)`: it held none, the asset is new), against which the
    /// upload is made, so that a server whose file changed since refuses it; `None` uploads over
    /// whatever version the server holds when the upload starts. Request ids start at
    /// `next_id`.
    pub fn new(asset: AssetPath, data: Vec<u8>, base: Option<Option<Manifest>>, next_id: u32) -> Self {
        let (base, state) = match base {
            None => (Base::Ask(None), State::Ask),
            Some(known) => (Base::Known(known), State::LoadPrefix),
        };
        UploadSync {
            asset,
            data,
            base,
            server: None,
            prefix: None,
            received: HashSet::new(),
            resuming: false,
            compress: None,
            force: false,
            commit: false,
            next_id: next_id.max(1),
            new: None,
            version: None,
            sent: (0, 0),
            losses: Losses::default(),
            resume: true,
            report: SyncReport::default(),
            queue: Queue::new(),
            state,
        }
    }

    /// Sends the chunks as one zstd batch, compressed against the base's file when the store
    /// holds it (a client without an encoder, the browser's, sends plain chunks).
    pub fn compressed(mut self, compress: Compressor) -> Self {
        self.compress = Some(compress);
        self
    }

    /// The version the new file was made from, as the page or tool learned it elsewhere. The
    /// upload is made from the base given to [`UploadSync::new`] if it is that version; else the
    /// server's version is asked for first, and must be this one, or the upload fails with
    /// [`ClientError::Conflict`].
    pub fn expecting(mut self, version: VersionId) -> Self {
        if !matches!(&self.base, Base::Known(Some(held)) if held.version() == version) {
            (self.base, self.state) = (Base::Ask(Some(version)), State::Ask);
        }
        self
    }

    /// On a conflict, asks for the server's version and uploads over it (`push --force`).
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// Commits the uploaded version to the driver's store ([`Action::Commit`]), so that the
    /// next upload is made from it and a sync finds it current.
    pub fn committing(mut self) -> Self {
        self.commit = true;
        self
    }

    /// Leaves a lost connection to the caller instead of reconnecting.
    pub fn without_resume(mut self) -> Self {
        self.resume = false;
        self
    }

    /// The result, after [`Action::Done`].
    pub fn finish(self) -> Uploaded {
        let State::Finished = self.state else { panic!("finish() before Action::Done") };
        let manifest = self.new.expect("a finished upload has its manifest");
        let version = self.version.unwrap_or_else(|| manifest.version());
        let unchanged = self.server.as_ref().is_some_and(|s| s.version() == manifest.version());
        let (chunks_sent, chunk_bytes) = self.sent;
        let data = self.data;
        Uploaded { manifest, data, version, unchanged, chunks_sent, chunk_bytes, report: self.report }
    }

    /// The base, once known (from the caller, or the server's `manifest` answer).
    fn base(&self) -> Option<&Manifest> {
        match &self.base {
            Base::Known(known) => known.as_ref(),
            Base::Ask(_) => self.server.as_ref(),
        }
    }

    /// The new version cut with `params` (the base's, so that unchanged regions match).
    fn cut(&mut self, params: ChunkParams) -> Result<&Manifest, ClientError> {
        if self.new.as_ref().is_none_or(|m| m.params != params) {
            let built = Manifest::build(self.asset.clone(), &self.data, params);
            self.new = Some(built.map_err(|e| ClientError::GaveUp { requests: 0, last: e })?);
        }
        Ok(self.new.as_ref().expect("built above"))
    }

    /// The step after the base is known.
    fn prepare(&mut self) -> State {
        let params = self.base().map_or_else(ChunkParams::default, |b| b.params);
        if let Err(e) = self.cut(params) {
            return State::Failed(e);
        }
        let version = self.new.as_ref().expect("cut above").version();
        if let Some(base) = self.base().filter(|b| b.version() == version) {
            // The server holds exactly this file.
            self.server = Some(base.clone());
            return self.done(version);
        }
        let id = bump(&mut self.next_id);
        let (new, base) = (self.new.as_ref().expect("cut above"), self.base());
        let prefix = self.prefix.as_deref().filter(|_| base.is_some());
        let prepared = prepare(id, new, &self.data, base, &self.received, prefix, self.compress);
        self.sent = (prepared.chunks_sent, prepared.chunk_bytes);
        self.report.requests += 1;
        State::SendUpload(prepared)
    }

    /// The server holds the new file as `version`: commit it locally, if wanted, and finish.
    fn done(&mut self, version: VersionId) -> State {
        self.version = Some(version);
        let new = self.new.as_ref().expect("uploaded a manifest");
        if !self.commit || version != new.version() {
            // A server that cuts with other parameters indexed another manifest: the next sync
            // brings it.
            return State::Finished;
        }
        // Chunks of a base the store holds are not stored again.
        let stored = match &self.base {
            Base::Known(Some(base)) => base.chunks.iter().map(|c| c.id).collect(),
            _ => HashSet::new(),
        };
        let mut seen = HashSet::new();
        let received = new
            .offsets()
            .filter(|(_, c)| !stored.contains(&c.id) && seen.insert(c.id))
            .map(|(at, c)| VerifiedChunk::hashed_by_driver(c.id, self.data[at..at + c.len as usize].to_vec()))
            .collect();
        State::Committing(Synced {
            manifest: new.clone(),
            version,
            data: mem::take(&mut self.data),
            received,
            chunks_reused: new.chunks.len() - self.sent.0,
        })
    }

    fn on_answer(&mut self, prepared: Prepared, message: ServerMessage) -> State {
        let id = match &prepared.message {
            ClientMessage::Upload(request) => request.id,
            _ => unreachable!("prepared uploads hold an upload"),
        };
        let mine = self.new.as_ref().map(Manifest::version);
        match message {
            ServerMessage::Changed { asset, version } => {
                self.queue.push_back(Action::Changed { asset, version });
                State::AwaitAnswer(prepared)
            }
            ServerMessage::Uploaded { id: answered, version } if answered == id => self.done(version),
            // An earlier attempt, cut before its answer, did land.
            ServerMessage::Conflict { id: answered, version } if answered == id && version == mine => {
                self.done(version.expect("compared with Some above"))
            }
            ServerMessage::Conflict { id: answered, version } if answered == id => {
                if self.force && self.report.requests < MAX_REQUESTS {
                    self.queue.push_back(Action::Warn(format!(
                        "{}: the server's file changed meanwhile; uploading over its new version",
                        self.asset
                    )));
                    self.base = Base::Ask(None);
                    self.prefix = None;
                    return State::Ask;
                }
                State::Failed(ClientError::Conflict { current: version })
            }
            ServerMessage::Error { id: Some(answered), code, message } if answered == id => {
                State::Failed(ClientError::Refused { code, message })
            }
            ServerMessage::Error { id: None, message, .. } => self.lost(message),
            other => State::Failed(ClientError::GaveUp {
                requests: self.report.requests,
                last: Error::Protocol(format!("unexpected `{}` answering an upload", other.kind())),
            }),
        }
    }

    fn on_manifest(&mut self, id: u32, message: ServerMessage) -> State {
        match message {
            ServerMessage::Changed { asset, version } => {
                self.queue.push_back(Action::Changed { asset, version });
                State::AwaitManifest(id)
            }
            ServerMessage::Manifest { id: answered, version, manifest, received } if answered == id => {
                self.received = match read_ids(&received) {
                    Ok(ids) => ids.into_iter().collect(),
                    Err(e) => {
                        return State::Failed(ClientError::GaveUp {
                            requests: self.report.requests,
                            last: e,
                        });
                    }
                };
                // A known base stays the base: the server refuses the upload if it changed.
                if let Base::Known(_) = self.base {
                    return State::LoadPrefix;
                }
                self.server = match (version, manifest) {
                    (Some(version), Some(manifest)) => match read_manifest(&self.asset, version, &manifest) {
                        Ok(manifest) => Some(manifest),
                        Err(e) => {
                            return State::Failed(ClientError::GaveUp {
                                requests: self.report.requests,
                                last: e,
                            });
                        }
                    },
                    // No such file yet: the upload creates it.
                    _ => None,
                };
                if let Base::Ask(Some(expected)) = self.base
                    && version != Some(expected)
                {
                    return State::Failed(ClientError::Conflict { current: version });
                }
                State::LoadPrefix
            }
            ServerMessage::Error { id: Some(answered), code, message } if answered == id => {
                State::Failed(ClientError::Refused { code, message })
            }
            ServerMessage::Error { id: None, message, .. } => self.lost(message),
            other => State::Failed(ClientError::GaveUp {
                requests: self.report.requests,
                last: Error::Protocol(format!("unexpected `{}` answering get_manifest", other.kind())),
            }),
        }
    }

    /// The connection was lost: reconnect, then start again (see [`UploadSync::restart`]). A
    /// resumed upload whose attempt landed after all is answered `conflict` naming this very
    /// version, which counts as done.
    fn lost(&mut self, why: String) -> State {
        let state = match self.losses.reconnect(self.resume, self.asset.as_str(), why, &mut self.queue) {
            Ok(after_ms) => State::Reconnecting(after_ms),
            Err(error) => State::Failed(error),
        };
        self.report.reconnects = self.losses.count;
        state
    }

    /// Where a reconnected upload starts again: asking what the server kept of an upload cut
    /// short (and its version, without a known base).
    fn restart(&self) -> State {
        match (&self.base, self.resuming) {
            (Base::Known(_), false) => State::Prepare,
            _ => State::Ask,
        }
    }
}

impl Machine for UploadSync {
    fn poll(&mut self) -> Action<'_> {
        if let Some(action) = self.queue.pop_front() {
            return action;
        }
        loop {
            match mem::replace(&mut self.state, State::Over) {
                State::Ask => {
                    let id = bump(&mut self.next_id);
                    self.state = State::AwaitManifest(id);
                    let resume = self.new.as_ref().map(Manifest::version).filter(|_| self.resuming);
                    let asset = self.asset.as_str().to_owned();
                    return Action::Send(ClientMessage::GetManifest { id, asset, resume });
                }
                // The base's file, once (a resumed upload has it already).
                State::LoadPrefix
                    if self.compress.is_some() && self.base().is_some() && self.prefix.is_none() =>
                {
                    self.state = State::LoadPrefix;
                    break;
                }
                State::LoadPrefix | State::Prepare => self.state = self.prepare(),
                State::Failed(error) => return Action::Failed(error),
                State::Over => panic!("poll() after Action::Failed"),
                state => {
                    self.state = state;
                    break;
                }
            }
            if let Some(action) = self.queue.pop_front() {
                return action;
            }
        }
        match &self.state {
            State::LoadPrefix => Action::LoadFile(self.base().expect("checked in the loop")),
            State::AwaitManifest(_) | State::AwaitAnswer(_) => Action::Receive,
            State::SendUpload(prepared) => Action::Send(prepared.message.clone()),
            State::SendFrames(prepared) => Action::SendFrames(&prepared.frames),
            State::Reconnecting(after_ms) => Action::Reconnect { after_ms: *after_ms },
            State::Committing(synced) => Action::Commit(synced),
            State::Finished => Action::Done,
            State::Ask | State::Prepare | State::Failed(_) | State::Over => unreachable!("handled above"),
        }
    }

    fn handle(&mut self, input: Input<'_>) {
        self.state = match (mem::replace(&mut self.state, State::Over), input) {
            (_, Input::Stop(why)) => State::Failed(ClientError::Stopped(why)),
            (State::Reconnecting(_), Input::Reconnected) => self.restart(),
            (State::Reconnecting(_), Input::Lost(why)) => self.lost(format!("reconnecting failed: {why}")),
            (state, Input::Lost(why)) => {
                // The server keeps what it verified of an upload cut short.
                self.resuming |=
                    matches!(state, State::SendUpload(_) | State::SendFrames(_) | State::AwaitAnswer(_));
                self.lost(why)
            }
            (State::AwaitManifest(id), Input::Sent { wire }) => {
                self.report.wire_out += wire;
                State::AwaitManifest(id)
            }
            (State::AwaitManifest(id), Input::Message { message, wire }) => {
                self.report.wire_in += wire;
                self.on_manifest(id, message)
            }
            (State::LoadPrefix, Input::File(file)) => {
                // Without the base's file (not in the store), the chunks go uncompressed against it.
                self.prefix = file.ok();
                State::Prepare
            }
            (State::SendUpload(prepared), Input::Sent { wire }) => {
                self.report.wire_out += wire;
                match prepared.frames.is_empty() {
                    true => State::AwaitAnswer(prepared),
                    false => State::SendFrames(prepared),
                }
            }
            (State::SendFrames(prepared), Input::Sent { wire }) => {
                self.report.wire_out += wire;
                State::AwaitAnswer(prepared)
            }
            (State::AwaitAnswer(prepared), Input::Message { message, wire }) => {
                self.report.wire_in += wire;
                self.on_answer(prepared, message)
            }
            (State::AwaitManifest(_) | State::AwaitAnswer(_), Input::Frame { .. }) => {
                State::Failed(ClientError::GaveUp {
                    requests: self.report.requests,
                    last: Error::Protocol("a chunk frame answering an upload".into()),
                })
            }
            (State::Committing(synced), Input::Stored) => {
                self.data = synced.data;
                State::Finished
            }
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
