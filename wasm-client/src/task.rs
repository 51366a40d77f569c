//! Keeping the page responsive: the client's work on a large file is split into steps of a few
//! milliseconds each (decoding one frame, rebuilding the file, handing it to IndexedDB), and
//! between steps it yields to the browser, so that no main-thread task runs long.

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// Lets the browser run input, rendering and other tasks before the client goes on:
/// `scheduler.yield()` where the browser has it (which resumes ahead of other tasks), else a
/// zero-delay timer.
pub async fn yield_now() {
    let global = js_sys::global();
    let scheduler = Reflect::get(&global, &"scheduler".into()).ok().filter(|s| s.is_object());
    let yield_fn = scheduler
        .as_ref()
        .and_then(|s| Reflect::get(s, &"yield".into()).ok())
        .and_then(|f| f.dyn_into::<Function>().ok());
    let promise = match (scheduler, yield_fn) {
        (Some(scheduler), Some(f)) => f.call0(&scheduler).ok().and_then(|p| p.dyn_into::<Promise>().ok()),
        _ => None,
    };
    match promise {
        Some(promise) => drop(JsFuture::from(promise).await),
        None => crate::subscribe::sleep(0).await,
    }
}

thread_local! {
    static LAST_YIELD: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Work between two yields, in milliseconds: well under the 50 ms that counts as a long task.
const SLICE_MS: f64 = 10.0;

/// Yields (see [`yield_now`]) if the client has worked [`SLICE_MS`] since it last did. Called
/// between steps, it keeps tasks short without paying for a yield after every small one.
pub async fn yield_if_busy() {
    let now = crate::now_ms();
    if now - LAST_YIELD.get() >= SLICE_MS {
        yield_now().await;
        LAST_YIELD.set(crate::now_ms());
    }
}
