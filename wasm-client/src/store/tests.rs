//! IndexedDB store tests, run in headless Chromium by wasm-bindgen-test.

use std::collections::HashSet;

use assetsync_protocol::test_util::random_bytes;
use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkParams, ClientSync, ClientView, Error, Hash, Manifest, Synced, VerifiedChunk,
    plan,
};
use wasm_bindgen_test::*;

use super::Store;

wasm_bindgen_test_configure!(run_in_browser);

/// A verified sync of `data` that carries every chunk, as a cold sync would.
fn synced(asset: &str, data: &[u8]) -> Synced {
    let manifest = Manifest::build(AssetPath::new(asset).unwrap(), data, ChunkParams::default()).unwrap();
    let received = manifest
        .offsets()
        .map(|(o, c)| VerifiedChunk::verify(c.id, data[o..o + c.len as usize].to_vec()).unwrap())
        .collect();
    Synced { version: manifest.version(), manifest, data: data.to_vec(), received, chunks_reused: 0 }
}

async fn fresh_store(name: &str) -> Store {
    idb::Factory::new().unwrap().delete(name).unwrap().await.unwrap();
    Store::open(name).await.unwrap()
}

fn asset(name: &str) -> AssetPath {
    AssetPath::new(name).unwrap()
}

#[wasm_bindgen_test]
async fn an_aborted_commit_leaves_the_previous_version_and_no_new_chunks() {
    let store = fresh_store("test-atomic").await;
    let v1 = random_bytes(200_000, 1);
    store.commit(&synced("a.js", &v1)).await.unwrap();
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap(), v1);

    let v2 = random_bytes(200_000, 2);
    let s2 = synced("a.js", &v2);
    assert!(store.commit_inner(&s2, true).await.is_err());
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap(), v1, "old version must stay current");
    let new_ids: Vec<_> = s2.manifest.chunks.iter().map(|c| c.id).collect();
    assert!(store.chunks(&new_ids).await.unwrap().is_empty(), "aborted commit left chunks behind");

    store.commit(&s2).await.unwrap();
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap(), v2);
}

#[wasm_bindgen_test]
async fn a_failed_verification_never_reaches_the_store() {
    let store = fresh_store("test-verify").await;
    let v1 = random_bytes(150_000, 3);
    store.commit(&synced("a.js", &v1)).await.unwrap();

    // A server answer for v2 whose first chunk frame is damaged in transit.
    let mut v2 = v1.clone();
    v2[10] ^= 1;
    let m2 = Manifest::build(asset("a.js"), &v2, ChunkParams::default()).unwrap();
    let base = store.current(&asset("a.js")).await.unwrap().unwrap();
    let held: HashSet<Hash> = base.chunks.iter().map(|c| c.id).collect();
    let answer =
        plan(1, &m2, m2.version(), ClientView { base: Some((0, base.version(), &base)), held: &held });
    let (mut machine, _) = ClientSync::new(1, asset("a.js"), Some(base), vec![], Default::default());
    machine.on_message(answer.message).unwrap();
    let index = answer.send[0];
    let (offset, entry) = m2.offsets().nth(index as usize).unwrap();
    let mut bytes = v2[offset..offset + entry.len as usize].to_vec();
    bytes[0] ^= 0xFF;
    machine.on_frame(&ChunkFrame::Chunk { id: 1, index, bytes: &bytes }.encode()).unwrap();
    let local = store.chunks(&machine.local_chunks()).await.unwrap();
    let err = machine.finish(local).unwrap_err();
    assert!(matches!(err, Error::FileMismatch), "{err}");
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap(), v1);

    // A chunk damaged inside the store is caught on read and removed, never returned as data.
    let victim = synced("a.js", &v1).manifest.chunks[2].id;
    let tx = store.db.transaction(&[super::CHUNKS], idb::TransactionMode::ReadWrite).unwrap();
    let chunks = tx.object_store(super::CHUNKS).unwrap();
    let garbage = js_sys::Uint8Array::from(&b"garbage"[..]);
    chunks.put(&garbage.into(), Some(&victim.to_hex().into())).unwrap();
    tx.commit().unwrap().await.unwrap();
    assert!(store.read(&asset("a.js")).await.is_err());
    assert!(store.chunks(&[victim]).await.unwrap().is_empty());
}

#[wasm_bindgen_test]
async fn gc_frees_exactly_what_no_committed_manifest_uses() {
    let store = fresh_store("test-gc").await;
    let shared = random_bytes(100_000, 4);
    let a1 = [shared.as_slice(), &random_bytes(100_000, 5)].concat();
    let b = [shared.as_slice(), &random_bytes(50_000, 6)].concat();
    let a2 = [shared.as_slice(), &random_bytes(100_000, 7)].concat();
    let (s_a1, s_b, s_a2) = (synced("a.js", &a1), synced("b.js", &b), synced("a.js", &a2));
    for s in [&s_a1, &s_b, &s_a2] {
        store.commit(s).await.unwrap();
    }
    let live: HashSet<Hash> = s_b.manifest.chunks.iter().chain(&s_a2.manifest.chunks).map(|c| c.id).collect();
    let garbage: HashSet<Hash> =
        s_a1.manifest.chunks.iter().map(|c| c.id).filter(|id| !live.contains(id)).collect();
    assert!(!garbage.is_empty());
    let expected_bytes: u64 =
        s_a1.manifest.chunks.iter().filter(|c| garbage.contains(&c.id)).map(|c| u64::from(c.len)).sum();

    let report = store.gc().await.unwrap();
    assert_eq!(report.chunks_deleted as usize, garbage.len());
    assert_eq!(report.bytes_freed, expected_bytes);
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap(), a2);
    assert_eq!(store.read(&asset("b.js")).await.unwrap().unwrap(), b);
    assert_eq!(store.gc().await.unwrap(), super::GcReport::default());
}
