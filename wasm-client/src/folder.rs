//! Whole folders: `syncFolder("dist/")` lists a folder and fetches every new or changed file in
//! one round trip, and deletes the files the server no longer has.

use std::rc::Rc;

use assetsync_protocol::{
    AssetPath, ChunkId, ChunkSet, ClientMessage, ClientSync, Error as SyncError, Have, Manifest, Scope,
    ServerMessage, Synced, folder_changes, held_chunk_ids,
};
use js_sys::{Array, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::socket::{Incoming, Socket};
use crate::{Bytes, Client, Fatal, Losses, SyncResult, Timings, js_error, next, now_ms, parse};

/// What one folder sync did.
pub(crate) struct FolderOutcome {
    /// Files the server listed.
    pub files: usize,
    /// The new and changed files, verified and committed.
    pub fetched: Vec<SyncResult>,
    /// Files deleted from the store because the server no longer lists them.
    pub removed: Vec<AssetPath>,
    pub wire_in: u64,
    pub wire_out: u64,
    pub elapsed_ms: f64,
    /// Connections lost and resumed.
    pub reconnects: u32,
}

impl FolderOutcome {
    /// The JS form: `{folder, files, fetched: [asset...], removed: [asset...], wireBytesIn, ...}`.
    pub fn to_js(&self, folder: &Scope) -> JsValue {
        let out = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).expect("set on a plain object");
        let names = |assets: &mut dyn Iterator<Item = &AssetPath>| {
            assets.map(|a| JsValue::from_str(a.as_str())).collect::<Array>().into()
        };
        set("folder", folder.to_string().into());
        set("files", (self.files as f64).into());
        set("fetched", names(&mut self.fetched.iter().map(|r| &r.asset)));
        set("removed", names(&mut self.removed.iter()));
        set("wireBytesIn", (self.wire_in as f64).into());
        set("wireBytesOut", (self.wire_out as f64).into());
        set("elapsedMs", self.elapsed_ms.into());
        set("reconnects", self.reconnects.into());
        out.into()
    }
}

impl Client {
    /// See `SyncClient::syncFolder`.
    pub(crate) async fn sync_folder(self: &Rc<Self>, folder: &Scope) -> Result<FolderOutcome, JsError> {
        let started = now_ms();
        if let Scope::Asset(_) = folder {
            return Err(js_error(format!("{:?} is not a folder: end it with '/'", folder.to_string())));
        }
        let mut guard = self.socket.lock().await;
        let (in0, out0) = (self.received.get(), self.sent.get());
        let (mut fetched, mut kept, mut losses) = (Vec::new(), Vec::new(), Losses::default());
        let (files, again, removed) = loop {
            // Again after a lost connection: files committed meanwhile are held now.
            let held = self.held_in(folder).await?;
            let socket = self.connected(&mut guard).await?;
            match self.folder_answer(socket, folder, &held, &kept, &mut fetched).await {
                Ok(answer) => break answer,
                Err(lost) if lost.connection_lost => {
                    let why = format!("{folder}: {}", lost.message);
                    kept.extend(lost.kept);
                    self.reconnect(&mut guard, &mut losses, &why).await?;
                }
                Err(fatal) => {
                    if !fatal.refused {
                        *guard = None;
                    }
                    return Err(js_error(format!("{folder}: {}", fatal.message)));
                }
            }
        };
        drop(guard);
        // The kept chunks are in committed files now.
        self.store.discard(&kept).await?;
        let wire_in = self.received.get() - in0;
        for asset in &removed {
            self.remembered.borrow_mut().remove(asset);
            self.store.remove(asset).await?;
        }
        // Files whose data failed verification, each with the full retry of a single sync.
        for asset in again {
            fetched.push(self.sync(asset.as_str().to_owned(), None).await?);
        }
        Ok(FolderOutcome {
            files,
            fetched,
            removed,
            wire_in,
            wire_out: self.sent.get() - out0,
            elapsed_ms: now_ms() - started,
            reconnects: losses.count,
        })
    }

    /// The committed versions of the files inside `folder`.
    async fn held_in(&self, folder: &Scope) -> Result<Vec<Manifest>, JsError> {
        let mut held = Vec::new();
        for asset in self.store.assets().await? {
            if folder.covers(&asset)
                && let Some(manifest) = self.store.current(&asset).await?
            {
                held.push(manifest);
            }
        }
        Ok(held)
    }

    /// Sends `sync_folder`, naming `held` and the `kept` chunks of an interrupted attempt, and
    /// reads the whole answer, committing each file as it is verified and adding it to
    /// `fetched`. Returns the number of files listed, the ones to fetch again on their own, and
    /// the ones to remove.
    async fn folder_answer(
        &self,
        socket: &mut Socket,
        folder: &Scope,
        held: &[Manifest],
        kept: &[ChunkId],
        fetched: &mut Vec<SyncResult>,
    ) -> Result<(usize, Vec<AssetPath>, Vec<AssetPath>), Fatal> {
        let versions: Vec<_> = held.iter().map(Manifest::version).collect();
        let mut chunks = ChunkSet::new(kept.to_vec());
        let (id, files) = loop {
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            let have = Have { versions: versions.clone(), chunks: chunks.clone() };
            self.send(socket, &ClientMessage::SyncFolder { id, folder: folder.to_string(), have })?;
            match next(socket).await? {
                Incoming::Text(text) => match parse(&text)? {
                    ServerMessage::Folder { id: got, files } if got == id => break (id, files),
                    // The server forgot some of these versions: list their chunks instead.
                    ServerMessage::UnknownBase { id: got } if got == id && chunks.is_empty() => {
                        chunks = ChunkSet::new(held_chunk_ids(held));
                    }
                    ServerMessage::Error { message, .. } => return Err(Fatal::refused(message)),
                    other => {
                        return Err(Fatal::lost(format!(
                            "unexpected `{}` answer to sync_folder",
                            other.kind()
                        )));
                    }
                },
                _ => return Err(Fatal::lost("unexpected binary frame in answer to sync_folder")),
            }
        };
        let changes = folder_changes(held, &files);
        let mut again = Vec::new();
        // Where reused chunks may be read: the held files, and those committed from this answer.
        let mut sources = held.to_vec();
        for asset in &changes.fetch {
            let started = now_ms();
            let in0 = self.received.get();
            let mut machine = ClientSync::for_folder_file(id, asset.clone(), held.to_vec(), chunks.prefix());
            let verified = match self.receive(socket, &mut machine, asset, None).await {
                Err(lost) if lost.connection_lost => {
                    return Err(self.keep_received(&mut machine, lost).await);
                }
                Err(fatal) => return Err(fatal),
                Ok(Err(e)) => Err(e),
                // Chunks sent for earlier files of this answer are committed by now.
                Ok(Ok(())) => {
                    let sources: Vec<&Manifest> = sources.iter().collect();
                    self.rebuild(machine, &sources, &mut Timings::default()).await?.0
                }
            };
            let synced = match verified {
                Ok(synced) => synced,
                Err(error) => {
                    if let SyncError::MissingLocal(damaged) = &error {
                        self.store.discard(damaged).await.map_err(|e| Fatal::new(e.0))?;
                    }
                    web_sys::console::warn_1(
                        &format!("assetsync: {asset}: {error}; fetching it again").into(),
                    );
                    again.push(asset.clone());
                    continue;
                }
            };
            self.store
                .commit(&synced)
                .await
                .map_err(|e| Fatal::new(format!("{asset}: {}; the previous version is kept", e.0)))?;
            sources.push(synced.manifest.clone());
            let wire_in = self.received.get() - in0;
            fetched.push(self.folder_file_result(synced, wire_in, now_ms() - started));
        }
        Ok((files.len(), again, changes.removed))
    }

    fn folder_file_result(&self, synced: Synced, wire_in: u64, elapsed_ms: f64) -> SyncResult {
        let data = Bytes::Wasm(Rc::new(synced.data));
        let asset = synced.manifest.path.clone();
        if self.memory_cache {
            self.remembered.borrow_mut().insert(asset.clone(), (synced.version, data.clone()));
        }
        let stats = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&stats, &k.into(), &v).expect("set on a plain object");
        set("version", synced.version.to_hex().into());
        set("bytes", (synced.manifest.len as f64).into());
        set("chunks", (synced.manifest.chunks.len() as f64).into());
        set("chunksReused", (synced.chunks_reused as f64).into());
        set("wireBytesIn", (wire_in as f64).into());
        set("wireBytesOut", 0.into());
        set("elapsedMs", elapsed_ms.into());
        set("requests", 1.into());
        set("retried", false.into());
        SyncResult { asset, version: synced.version, data, stats }
    }
}
