//! `SyncClient.upload`: the engine's [`UploadSync`] run by the browser driver (`drive.rs`), the
//! uploaded version then committed to IndexedDB like a synced one.

use std::rc::Rc;

use assetsync_protocol::engine::{Machine, UploadSync};
use assetsync_protocol::{AssetPath, Hash};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::drive::Stats;
use crate::{Bytes, Client, SyncResult, js_error, now_ms};

impl Client {
    pub(crate) async fn upload(
        self: &Rc<Self>,
        asset: String,
        data: Vec<u8>,
        options: Option<Object>,
    ) -> Result<SyncResult, JsError> {
        let started = now_ms();
        let option = |name: &str| options.as_ref().and_then(|o| Reflect::get(o, &name.into()).ok());
        let on_progress = option("onProgress").and_then(|f| f.dyn_into::<Function>().ok());
        let expected = match option("base").and_then(|b| b.as_string()) {
            Some(hex) => Some(Hash::from_hex(&hex).map_err(|e| js_error(format!("options.base: {e}")))?),
            None => None,
        };
        let asset = AssetPath::new(&asset).map_err(js_error)?;
        let mut guard = self.socket.lock().await;
        let (in0, out0) = (self.received.get(), self.sent.get());
        let t0 = now_ms();
        let current = self.store.current_file(&asset).await.map_err(js_error)?.map(|(m, _)| m);
        let store_ms = now_ms() - t0;
        // From the version this client holds, unless the page names another one.
        let mut machine =
            UploadSync::new(asset.clone(), data, Some(current), self.next_id.get()).committing();
        if let Some(version) = expected {
            machine = machine.expecting(version);
        }
        self.connected(&mut guard).await?;
        let run = self.drive(&mut machine, &mut guard, None, on_progress.as_ref()).await;
        self.next_id.set(machine.next_id());
        let driven = self.stopped(run, &mut guard, asset.as_str())?;
        drop(guard);
        let done = machine.finish();
        let wire = (self.received.get() - in0, self.sent.get() - out0);
        let stats = Stats::of_upload(&done, wire, now_ms() - started, store_ms + driven.timings.store_ms);
        let data = Bytes::Wasm(Rc::new(done.data));
        if self.memory_cache && done.version == done.manifest.version() {
            self.remembered.borrow_mut().insert(asset.clone(), (done.version, data.clone()));
        }
        Ok(SyncResult { asset, version: done.version, data, stats })
    }
}
