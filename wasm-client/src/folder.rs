//! Whole folders: `syncFolder("dist/")` lists a folder and fetches every new or changed file in
//! one round trip, and deletes the files the server no longer has.

use std::rc::Rc;

use assetsync_protocol::engine::{FolderSync, Machine};
use assetsync_protocol::{AssetPath, Scope, VersionId};
use js_sys::{Array, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::{Client, SyncResult, digest, js_error, now_ms};

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
    /// Bytes of offloaded answers fetched over HTTP.
    pub http_in: u64,
    pub elapsed_ms: f64,
    /// Connections lost and resumed.
    pub reconnects: u32,
    /// The folder's version as this sync left it committed.
    pub version: VersionId,
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
        set("httpBytesIn", (self.http_in as f64).into());
        set("elapsedMs", self.elapsed_ms.into());
        set("reconnects", self.reconnects.into());
        set("version", self.version.to_hex().into());
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
        let held = self.store.entries_in(folder).await.map_err(js_error)?;
        let mut machine = FolderSync::new(folder.clone(), held, self.next_id.get());
        if digest::subtle() {
            machine.set_driver_hashes();
        }
        self.connected(&mut guard).await?;
        // Errors name the folder; the whole root has no name of its own.
        let target = match folder.to_string() {
            root if root.is_empty() => "the root folder".to_owned(),
            name => name,
        };
        let run = self.drive(&mut machine, &mut guard, None, None).await;
        self.next_id.set(machine.next_id());
        let driven = self.stopped(run, &mut guard, &target)?;
        drop(guard);
        let done = machine.finish();
        Ok(FolderOutcome {
            files: done.files,
            fetched: driven.files,
            removed: done.removed,
            wire_in: self.received.get() - in0,
            wire_out: self.sent.get() - out0,
            http_in: done.report.downloaded,
            elapsed_ms: now_ms() - started,
            reconnects: done.report.reconnects,
            version: done.version,
        })
    }
}
