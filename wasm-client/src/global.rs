//! The global scope the client runs in: a page's `Window`, or a worker's `WorkerGlobalScope`
//! (dedicated, shared or service worker), for the few things the client asks of it. IndexedDB
//! and `WebSocket` are the same in both.

use js_sys::{Function, Promise};
use wasm_bindgen::JsCast;
use web_sys::{Crypto, Performance, RequestInit, Window, WorkerGlobalScope};

/// The global scope, if it is a page or a worker.
pub enum Global {
    Window(Window),
    Worker(WorkerGlobalScope),
}

impl Global {
    pub fn get() -> Option<Global> {
        let global = js_sys::global();
        match global.dyn_into::<Window>() {
            Ok(window) => Some(Global::Window(window)),
            Err(global) => global.dyn_into::<WorkerGlobalScope>().ok().map(Global::Worker),
        }
    }

    pub fn is_secure_context(&self) -> bool {
        match self {
            Global::Window(w) => w.is_secure_context(),
            Global::Worker(w) => w.is_secure_context(),
        }
    }

    pub fn crypto(&self) -> Option<Crypto> {
        match self {
            Global::Window(w) => w.crypto().ok(),
            Global::Worker(w) => w.crypto().ok(),
        }
    }

    pub fn performance(&self) -> Option<Performance> {
        match self {
            Global::Window(w) => w.performance(),
            Global::Worker(w) => w.performance(),
        }
    }

    /// Calls `f` after `ms` milliseconds.
    pub fn set_timeout(&self, f: &Function, ms: i32) {
        let _ = match self {
            Global::Window(w) => w.set_timeout_with_callback_and_timeout_and_arguments_0(f, ms),
            Global::Worker(w) => w.set_timeout_with_callback_and_timeout_and_arguments_0(f, ms),
        };
    }

    pub fn fetch(&self, url: &str, init: &RequestInit) -> Promise {
        match self {
            Global::Window(w) => w.fetch_with_str_and_init(url, init),
            Global::Worker(w) => w.fetch_with_str_and_init(url, init),
        }
    }

    /// The page's or worker's origin (a worker made from a `blob:` URL has its page's).
    pub fn origin(&self) -> String {
        match self {
            Global::Window(w) => w.location().origin().unwrap_or_default(),
            Global::Worker(w) => w.location().origin(),
        }
    }
}
