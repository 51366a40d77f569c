//! IndexedDB store tests, run in headless Chromium by wasm-bindgen-test.

use std::collections::VecDeque;

use assetsync_protocol::engine::{Action, AssetSync, Input, Machine};
use assetsync_protocol::test_util::random_bytes;
use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkId, ChunkParams, ClientMessage, ClientView, Hash, Manifest, ServerMessage,
    Synced, VerifiedChunk, client_holds, plan,
};
use idb::{Factory, ObjectStoreParams, TransactionMode};
use js_sys::Uint8Array;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

use super::{CHUNKS, FILES, MANIFESTS, REFS, Store};

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
    Factory::new().unwrap().delete(name).unwrap().await.unwrap();
    Store::open(name).await.unwrap()
}

fn asset(name: &str) -> AssetPath {
    AssetPath::new(name).unwrap()
}

/// Replaces the stored file of `version` with `bytes`, behind the store's back.
async fn overwrite_file(store: &Store, version: Hash, bytes: &[u8]) {
    let tx = store.db.transaction(&[FILES], TransactionMode::ReadWrite).unwrap();
    tx.object_store(FILES)
        .unwrap()
        .put(&super::blob(bytes).unwrap(), Some(&version.to_hex().into()))
        .unwrap();
    tx.commit().unwrap().await.unwrap();
}

#[wasm_bindgen_test]
async fn an_aborted_commit_leaves_the_previous_version_and_no_new_file() {
    let store = fresh_store("test-atomic").await;
    let v1 = random_bytes(200_000, 1);
    store.commit(&synced("a.js", &v1)).await.unwrap();
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap().to_vec(), v1);

    let v2 = random_bytes(200_000, 2);
    let s2 = synced("a.js", &v2);
    // A commit that dies after writing its file, manifest and pointer, before the transaction
    // ends (as when the tab closes): the transaction aborts, and takes them with it.
    let tx = store.db.transaction(&super::COMMITTED, TransactionMode::ReadWrite).unwrap();
    super::write(&tx, &[super::Staged::file(&s2).unwrap()]).await.unwrap();
    // (The abort event arrives through the aborted requests, which the idb crate reports as an
    // error of its own; the outcome is checked below.)
    let _ = tx.abort().unwrap().await;
    assert_eq!(
        store.read(&asset("a.js")).await.unwrap().unwrap().to_vec(),
        v1,
        "old version must stay current"
    );
    assert!(store.file(&s2.manifest).await.unwrap().is_err(), "aborted commit left its file behind");

    store.commit(&s2).await.unwrap();
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap().to_vec(), v2);
    let s1 = synced("a.js", &v1);
    assert!(store.file(&s1.manifest).await.unwrap().is_err(), "the replaced version must be deleted");
}

/// The engine against this store, with the server's planner on the other end: the first answer
/// carries a chunk damaged in transit (same length, so only the rebuilt file's hash can tell).
/// Nothing of it reaches the store (still v1 when the retry is sent); the retry's verified
/// result is committed, once.
#[wasm_bindgen_test]
async fn a_failed_verification_never_reaches_the_store() {
    let store = fresh_store("test-verify").await;
    let v1 = random_bytes(150_000, 3);
    store.commit(&synced("a.js", &v1)).await.unwrap();
    let mut v2 = v1.clone();
    v2[10] ^= 1;
    let m2 = Manifest::build(asset("a.js"), &v2, ChunkParams::default()).unwrap();
    let base = store.current(&asset("a.js")).await.unwrap().unwrap();
    let mut machine = AssetSync::new(asset("a.js"), Some(base.clone()), vec![], 1);
    let mut link: VecDeque<Result<ServerMessage, Vec<u8>>> = VecDeque::new();
    let (mut requests, mut commits) = (0, 0);
    loop {
        let input = match machine.poll() {
            Action::Send(ClientMessage::Sync { id, have, .. }) => {
                requests += 1;
                let stored = store.read(&asset("a.js")).await.unwrap().unwrap().to_vec();
                assert!(stored == v1, "request {requests}: the store must still hold v1");
                let known = have.versions.first().filter(|v| **v == base.version()).map(|_| &base);
                let held = client_holds(&have, known, [&m2]);
                let view = ClientView { base: known.map(|b| (0, b.version(), b)), held: &held };
                let answer = plan(id, &m2, m2.version(), view);
                link.push_back(Ok(answer.message));
                for (n, &index) in answer.send.iter().enumerate() {
                    let (offset, entry) = m2.offsets().nth(index as usize).unwrap();
                    let mut bytes = v2[offset..offset + entry.len as usize].to_vec();
                    if requests == 1 && n == 0 {
                        bytes[0] ^= 0xFF;
                    }
                    link.push_back(Err(ChunkFrame::Chunk { id, index, bytes: &bytes }.encode()));
                }
                Input::Sent { wire: 0 }
            }
            Action::Receive => {
                match link.pop_front().expect("the answer is complete") {
                    Ok(message) => machine.handle(Input::Message { message, wire: 0 }),
                    Err(frame) => machine.handle(Input::Frame { frame: &frame, wire: 0 }),
                }
                continue;
            }
            Action::LoadFile(m) => Input::File(store.file(m).await.unwrap().map(|f| f.to_vec())),
            Action::LoadChunks { ids, sources } => {
                let sources: Vec<&Manifest> = sources.iter().collect();
                Input::Chunks(store.chunks(&ids, &sources, &[]).await.unwrap())
            }
            Action::Verify(data) => Input::Digest(Hash::of(data)),
            Action::Commit(synced) => {
                commits += 1;
                assert!(synced.data == v2, "only the verified v2 is committed");
                store.commit(synced).await.unwrap();
                Input::Stored
            }
            Action::Discard(ids) | Action::Release(ids) => {
                store.discard(&ids).await.unwrap();
                continue;
            }
            Action::Done => break,
            Action::Failed(error) => panic!("{error}"),
            _ => continue,
        };
        machine.handle(input);
    }
    assert_eq!((requests, commits), (2, 1));
    assert!(machine.finish().report.retried);
    assert!(store.read(&asset("a.js")).await.unwrap().unwrap().to_vec() == v2);

    // One flipped byte inside the stored file (same length) is caught on read and named, never
    // returned as data.
    let mut damaged = v2.clone();
    let (at, victim) = m2.offsets().nth(2).unwrap();
    damaged[at + 5] ^= 0x01;
    overwrite_file(&store, m2.version(), &damaged).await;
    assert!(store.read(&asset("a.js")).await.is_err());
    assert_eq!(store.file(&m2).await.unwrap().unwrap_err(), vec![victim.id]);
}

#[wasm_bindgen_test]
async fn reused_chunks_are_slices_of_stored_files() {
    let store = fresh_store("test-slices").await;
    let a = random_bytes(300_000, 8);
    let b = random_bytes(100_000, 9);
    let (sa, sb) = (synced("a.js", &a), synced("b.js", &b));
    store.commit(&sa).await.unwrap();
    store.commit(&sb).await.unwrap();
    // Every other chunk of a (runs with gaps), all of b, and one id nobody holds.
    let mut wanted: Vec<ChunkId> = sa.manifest.chunks.iter().step_by(2).map(|c| c.id).collect();
    wanted.extend(sb.manifest.chunks.iter().map(|c| c.id));
    wanted.push(Hash::of(b"nobody"));
    let got = store.chunks(&wanted, &[&sa.manifest, &sb.manifest], &[]).await.unwrap();
    assert_eq!(got.len(), wanted.len() - 1);
    for (id, bytes) in &got {
        assert_eq!(Hash::of(bytes), *id, "a slice must be exactly the chunk");
    }
    // A source whose file is gone yields nothing, and that is not an error.
    store.remove(&asset("b.js")).await.unwrap();
    let got = store.chunks(&wanted, &[&sb.manifest], &[]).await.unwrap();
    assert!(got.is_empty());
}

#[wasm_bindgen_test]
async fn gc_frees_what_no_committed_version_uses() {
    let store = fresh_store("test-gc").await;
    let shared = random_bytes(100_000, 4);
    let a1 = [shared.as_slice(), &random_bytes(100_000, 5)].concat();
    let b = [shared.as_slice(), &random_bytes(50_000, 6)].concat();
    let a2 = [shared.as_slice(), &random_bytes(100_000, 7)].concat();
    for s in [synced("a.js", &a1), synced("b.js", &b), synced("a.js", &a2)] {
        store.commit(&s).await.unwrap();
    }
    // Chunks kept from a transfer that broke and never committed.
    let kept = synced("c.js", &random_bytes(40_000, 10)).received;
    store.keep(&kept).await.unwrap();
    let report = store.gc().await.unwrap();
    assert_eq!(report.chunks_deleted as usize, kept.len());
    assert_eq!(report.versions_deleted, 0, "a commit deletes the version it replaces");
    assert_eq!(report.bytes_freed, 40_000);
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap().to_vec(), a2);
    assert_eq!(store.read(&asset("b.js")).await.unwrap().unwrap().to_vec(), b);
    assert_eq!(store.gc().await.unwrap(), super::GcReport::default());
}

/// Writes `files` the way `schema` 1 or 2 of the store did: a record per chunk (1) or a file
/// record per version (2), the manifests, and a pointer record per asset.
async fn write_old_schema(name: &str, schema: u32, files: &[&Synced]) {
    let stores: &[&str] =
        if schema == 1 { &[CHUNKS, MANIFESTS, REFS] } else { &[FILES, CHUNKS, MANIFESTS, REFS] };
    let factory = Factory::new().unwrap();
    factory.delete(name).unwrap().await.unwrap();
    let mut request = factory.open(name, Some(schema)).unwrap();
    request.on_upgrade_needed(move |event| {
        let db = idb::DatabaseEvent::database(&event).unwrap();
        for store in stores {
            db.create_object_store(store, ObjectStoreParams::new()).unwrap();
        }
    });
    let db = request.await.unwrap();
    let tx = db.transaction(stores, TransactionMode::ReadWrite).unwrap();
    for s in files {
        let version = JsValue::from_str(&s.version.to_hex());
        if schema == 1 {
            super::put_chunks(&tx.object_store(CHUNKS).unwrap(), &s.received).unwrap();
        } else {
            // As schema 2 kept them: a small file as its bytes, a large one as a `Blob`.
            let file = match s.data.len() < 64 << 10 {
                true => Uint8Array::from(s.data.as_slice()).into(),
                false => super::blob(&s.data).unwrap(),
            };
            tx.object_store(FILES).unwrap().put(&file, Some(&version)).unwrap();
        }
        let manifest = Uint8Array::from(s.manifest.canonical_bytes().as_slice());
        tx.object_store(MANIFESTS).unwrap().put(&manifest.into(), Some(&version)).unwrap();
        tx.object_store(REFS).unwrap().put(&version, Some(&s.manifest.path.as_str().into())).unwrap();
    }
    tx.commit().unwrap().await.unwrap();
    db.close();
}

#[wasm_bindgen_test]
async fn a_version_1_store_is_upgraded_in_place() {
    let a = random_bytes(250_000, 11);
    let b = random_bytes(120_000, 12);
    let c = random_bytes(80_000, 13);
    let (sa, sb) = (synced("a.js", &a), synced("b.js", &b));
    // c's chunk records are incomplete: it cannot be rebuilt, so it is dropped, not served.
    let mut sc = synced("c.js", &c);
    sc.received.pop();
    write_old_schema("test-upgrade", 1, &[&sa, &sb, &sc]).await;

    let store = Store::open("test-upgrade").await.unwrap();
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap().to_vec(), a);
    assert_eq!(store.read(&asset("b.js")).await.unwrap().unwrap().to_vec(), b);
    assert!(store.read(&asset("c.js")).await.unwrap().is_none());
    let tx = store.db.transaction(&[CHUNKS], TransactionMode::ReadOnly).unwrap();
    let left = tx.object_store(CHUNKS).unwrap().count(None).unwrap().await.unwrap();
    assert_eq!(left, 0, "the chunk records are in the files now");
    store.close();
    // Opening it again finds nothing to do.
    let store = Store::open("test-upgrade").await.unwrap();
    assert_eq!(store.read(&asset("a.js")).await.unwrap().unwrap().to_vec(), a);
}

/// A folder's files and removals commit in one transaction: aborted, none of them happened;
/// committed, all of them did.
#[wasm_bindgen_test]
async fn a_folder_commits_all_its_files_and_removals_or_none() {
    let store = fresh_store("test-folder-atomic").await;
    let (old, a, b) = (random_bytes(1000, 3), random_bytes(50_000, 4), random_bytes(50_000, 5));
    store.commit(&synced("dist/old.js", &old)).await.unwrap();
    let changes = || {
        vec![
            super::Staged::file(&synced("dist/a.js", &a)).unwrap(),
            super::Staged::file(&synced("dist/b.js", &b)).unwrap(),
            super::Staged::Removal("dist/old.js".into()),
        ]
    };
    let tx = store.db.transaction(&super::COMMITTED, TransactionMode::ReadWrite).unwrap();
    super::write(&tx, &changes()).await.unwrap();
    let _ = tx.abort().unwrap().await;
    let folder = assetsync_protocol::Scope::new("dist/").unwrap();
    let held: Vec<String> =
        store.entries_in(&folder).await.unwrap().iter().map(|e| e.asset.to_string()).collect();
    assert_eq!(held, ["dist/old.js"], "an aborted folder commit changed nothing");

    store.commit_all(&changes(), None).await.unwrap();
    let held = store.entries_in(&folder).await.unwrap();
    let names: Vec<String> = held.iter().map(|e| e.asset.to_string()).collect();
    assert_eq!(names, ["dist/a.js", "dist/b.js"]);
    let versions: Vec<_> = held.iter().map(|e| e.version).collect();
    assert_eq!(store.manifests(&versions).await.unwrap().len(), 2, "both manifests were committed");
    assert_eq!(store.read(&asset("dist/b.js")).await.unwrap().unwrap().to_vec(), b);
    assert!(store.read(&asset("dist/old.js")).await.unwrap().is_none());
}

/// How many records `store` holds.
async fn count(store: &Store, name: &str) -> u32 {
    let tx = store.db.transaction(&[name], TransactionMode::ReadOnly).unwrap();
    tx.object_store(name).unwrap().count(None).unwrap().await.unwrap()
}

/// A folder of many small files commits as one pack and a few pointer shards, serves its files,
/// chunks and manifests from the pack, and the pack goes once no pointer reaches it.
#[wasm_bindgen_test]
async fn small_files_committed_together_share_one_pack_until_none_is_current() {
    let store = fresh_store("test-packs").await;
    let files: Vec<Synced> =
        (0..300).map(|i| synced(&format!("dist/m{i}.js"), &random_bytes(1000 + i * 7, i as u64))).collect();
    let big = synced("dist/big.js", &random_bytes(100_000, 1000));
    let mut changes: Vec<_> = files.iter().map(|s| super::Staged::file(s).unwrap()).collect();
    changes.push(super::Staged::file(&big).unwrap());
    store.commit_all(&changes, None).await.unwrap();
    assert_eq!(count(&store, super::PACKS).await, 1, "the small files share one pack");
    assert_eq!(count(&store, FILES).await, 1, "the large file is stored on its own");
    assert_eq!(count(&store, MANIFESTS).await, 1);
    assert!(count(&store, super::INDEX).await <= u32::from(super::index::SHARDS));
    for s in files.iter().step_by(37).chain([&big]) {
        assert_eq!(store.read(&s.manifest.path).await.unwrap().unwrap().to_vec(), s.data);
        assert_eq!(store.current(&s.manifest.path).await.unwrap().as_ref(), Some(&s.manifest));
    }
    let versions: Vec<_> = files.iter().map(|s| s.version).collect();
    assert_eq!(store.manifests(&versions).await.unwrap().len(), files.len());
    let wanted: Vec<ChunkId> = files[5..9].iter().map(|s| s.manifest.chunks[0].id).collect();
    let sources: Vec<&Manifest> = files.iter().map(|s| &s.manifest).collect();
    let got = store.chunks(&wanted, &sources, &[]).await.unwrap();
    assert_eq!(got.len(), wanted.len());
    for (id, bytes) in &got {
        assert_eq!(Hash::of(bytes), *id, "a chunk read from a pack must be exactly the chunk");
    }

    // One file changes alone: it is stored on its own; the pack still serves the others.
    let changed = synced("dist/m0.js", &random_bytes(900, 5000));
    store.commit(&changed).await.unwrap();
    assert_eq!(count(&store, super::PACKS).await, 1);
    assert_eq!(store.read(&asset("dist/m0.js")).await.unwrap().unwrap().to_vec(), changed.data);
    assert_eq!(store.read(&asset("dist/m1.js")).await.unwrap().unwrap().to_vec(), files[1].data);
    assert!(store.file(&files[0].manifest).await.unwrap().is_err(), "the replaced version is gone");

    // Every packed file replaced or removed: the pack goes with the commit that does it.
    let mut rest: Vec<_> = files[1..150]
        .iter()
        .map(|s| super::Staged::file(&synced(s.manifest.path.as_str(), &random_bytes(500, 7))).unwrap())
        .collect();
    rest.extend(files[150..].iter().map(|s| super::Staged::Removal(s.manifest.path.as_str().into())));
    store.commit_all(&rest, None).await.unwrap();
    assert_eq!(count(&store, super::PACKS).await, 1, "the old pack went, the new files made one");
    assert!(store.read(&asset("dist/m200.js")).await.unwrap().is_none());
    assert_eq!(store.gc().await.unwrap(), super::GcReport::default(), "the commits left nothing behind");

    // A pack nothing points to (left by a store written elsewhere) is collected.
    let tx = store.db.transaction(&[super::PACKS], TransactionMode::ReadWrite).unwrap();
    let stray = super::blob(&[1, 2, 3]).unwrap();
    tx.object_store(super::PACKS).unwrap().put(&stray, Some(&super::pack_key(7))).unwrap();
    tx.commit().unwrap().await.unwrap();
    let report = store.gc().await.unwrap();
    assert_eq!((report.packs_deleted, report.bytes_freed), (1, 3));
}

#[wasm_bindgen_test]
async fn a_version_2_store_keeps_its_files_and_moves_its_pointers() {
    let files: Vec<Synced> =
        (0..40).map(|i| synced(&format!("dist/f{i}.js"), &random_bytes(3000 + i, 100 + i as u64))).collect();
    write_old_schema("test-upgrade-2", 2, &files.iter().collect::<Vec<_>>()).await;
    let store = Store::open("test-upgrade-2").await.unwrap();
    assert_eq!(count(&store, REFS).await, 0, "the old pointer table is emptied");
    let folder = assetsync_protocol::Scope::new("dist/").unwrap();
    assert_eq!(store.entries_in(&folder).await.unwrap().len(), files.len());
    for s in &files {
        assert_eq!(store.read(&s.manifest.path).await.unwrap().unwrap().to_vec(), s.data);
    }
    assert_eq!(store.gc().await.unwrap(), super::GcReport::default(), "every file is still reached");
}

/// A folder sync writes its files ahead of its one commit: nothing of them is visible until the
/// commit switches the pointers, a GC meanwhile leaves them alone, later files read chunks from
/// them, and the commit leaves no note behind. A run abandoned an hour ago is collected.
#[wasm_bindgen_test]
async fn files_written_ahead_switch_in_one_commit_and_gc_spares_them_until_then() {
    let store = fresh_store("test-write-ahead").await;
    let old = synced("dist/old.js", &random_bytes(2000, 1));
    store.commit(&old).await.unwrap();
    let files: Vec<Synced> =
        (0..40).map(|i| synced(&format!("dist/m{i}.js"), &random_bytes(3000 + i, 50 + i as u64))).collect();
    let big = synced("dist/big.bin", &random_bytes(200_000, 99));
    let mut staged: Vec<_> = files.iter().chain([&big]).map(|s| super::Staged::file(s).unwrap()).collect();
    store.write_ahead(&mut staged, 7).await.unwrap();
    // More files later in the same run: written ahead once, and noted once per pack.
    let later: Vec<Synced> =
        (0..2).map(|i| synced(&format!("dist/later{i}.js"), &random_bytes(700, 80 + i))).collect();
    staged.extend(later.iter().map(|s| super::Staged::file(s).unwrap()));
    store.write_ahead(&mut staged, 7).await.unwrap();
    let tx = store.db.transaction(&[super::PENDING], TransactionMode::ReadOnly).unwrap();
    let note = tx.object_store(super::PENDING).unwrap().get(super::pending_key(7)).unwrap().await.unwrap();
    let (_, packs, own) = super::read_note(&super::bytes_of(&note.unwrap())).unwrap();
    assert_eq!((packs.len(), own.len()), (2, 1), "each pack and each file of its own noted once");
    // And files the commit itself packs, beside those packed ahead (whose packs stay theirs).
    let last: Vec<Synced> =
        (0..2).map(|i| synced(&format!("dist/last{i}.js"), &random_bytes(600, 90 + i))).collect();
    staged.extend(last.iter().map(|s| super::Staged::file(s).unwrap()));
    staged.push(super::Staged::Removal("dist/old.js".into()));
    let folder = assetsync_protocol::Scope::new("dist/").unwrap();
    assert_eq!(store.entries_in(&folder).await.unwrap().len(), 1, "files written ahead are not committed");
    assert_eq!(store.gc().await.unwrap(), super::GcReport::default(), "a GC spares a run in progress");
    let wanted = [files[3].manifest.chunks[0].id, big.manifest.chunks[1].id];
    let got = store.chunks(&wanted, &[&files[3].manifest, &big.manifest], &staged).await.unwrap();
    assert_eq!(got.len(), 2, "chunks are read from files written ahead");

    store.commit_all(&staged, Some(7)).await.unwrap();
    assert_eq!(store.entries_in(&folder).await.unwrap().len(), files.len() + 1 + later.len() + last.len());
    for s in [&files[5], &later[1], &last[0]] {
        assert_eq!(store.read(&s.manifest.path).await.unwrap().unwrap().to_vec(), s.data);
    }
    assert_eq!(store.read(&asset("dist/big.bin")).await.unwrap().unwrap().to_vec(), big.data);
    assert_eq!(count(&store, super::PENDING).await, 0, "the commit drops the run's note");
    assert_eq!(store.gc().await.unwrap(), super::GcReport::default());

    // A run that wrote ahead and never committed, an hour and more ago: collected.
    let mut abandoned = vec![super::Staged::file(&synced("dist/x.js", &random_bytes(900, 3))).unwrap()];
    abandoned.push(super::Staged::file(&synced("dist/y.js", &random_bytes(900, 4))).unwrap());
    store.write_ahead(&mut abandoned, 8).await.unwrap();
    let tx = store.db.transaction(&[super::PENDING], TransactionMode::ReadWrite).unwrap();
    let pending = tx.object_store(super::PENDING).unwrap();
    let note = pending.get(super::pending_key(8)).unwrap().await.unwrap().unwrap();
    let mut note = super::bytes_of(&note);
    // Begun at the epoch: the note's leading varint (its time) becomes 0.
    let time_len = note.iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    note.splice(0..time_len, [0u8]);
    pending.put(&Uint8Array::from(note.as_slice()), Some(&super::pending_key(8))).unwrap();
    tx.commit().unwrap().await.unwrap();
    let report = store.gc().await.unwrap();
    assert_eq!(report.packs_deleted, 1, "{report:?}");
    assert_eq!(count(&store, super::PENDING).await, 0);
    assert_eq!(store.read(&asset("dist/m5.js")).await.unwrap().unwrap().to_vec(), files[5].data);
}

/// A file's bytes as a kept build serves them (its own record or a slice of its pack).
#[cfg(feature = "worker")]
async fn built(store: &Store, build: &super::Build, asset: &str) -> Option<Vec<u8>> {
    let (manifest, blob) = store.build_file(build.files.get(asset)?).await.unwrap()?;
    Some(Store::check(&manifest, Some(blob)).await.unwrap().ok()?.to_vec())
}

/// A kept build's files outlive the commits that replace or remove them (a page loaded on it
/// keeps being served it), through GC too, until the build is dropped.
#[cfg(feature = "worker")]
#[wasm_bindgen_test]
async fn a_kept_build_keeps_its_files_through_later_commits_and_gc_until_dropped() {
    let store = fresh_store("test-builds").await;
    let dist = assetsync_protocol::Scope::new("dist/").unwrap();
    let small: Vec<Synced> =
        (0..3).map(|i| synced(&format!("dist/s{i}.js"), &random_bytes(2000, i))).collect();
    let big = synced("dist/big.js", &random_bytes(100_000, 10));
    let mut changes: Vec<_> = small.iter().map(|s| super::Staged::file(s).unwrap()).collect();
    changes.push(super::Staged::file(&big).unwrap());
    store.commit_all(&changes, None).await.unwrap();
    store.commit(&synced("other/x.js", &random_bytes(500, 11))).await.unwrap();
    let listing = store.entries_in(&dist).await.unwrap();
    let version = assetsync_protocol::plan::folder_version(&listing);
    assert!(
        store.keep_build(&dist, &Hash::of(b"another")).await.unwrap().is_none(),
        "not the state expected"
    );
    let b1 = store.keep_build(&dist, &version).await.unwrap().unwrap();
    assert_eq!(b1.files.len(), 4, "only the folder's files");
    assert_eq!(
        store.keep_build(&dist, &version).await.unwrap(),
        Some(b1.clone()),
        "the same listing is the same build"
    );

    // Build 2: the large file and every packed one replaced, one removed.
    let big2 = synced("dist/big.js", &random_bytes(100_000, 20));
    let mut changes: Vec<_> = small[..2]
        .iter()
        .map(|s| super::Staged::file(&synced(s.manifest.path.as_str(), &random_bytes(2100, 30))).unwrap())
        .collect();
    changes.push(super::Staged::Removal("dist/s2.js".into()));
    changes.push(super::Staged::file(&big2).unwrap());
    store.commit_all(&changes, None).await.unwrap();
    let version = assetsync_protocol::plan::folder_version(&store.entries_in(&dist).await.unwrap());
    let b2 = store.keep_build(&dist, &version).await.unwrap().unwrap();
    assert_ne!(b2.id, b1.id);
    store.gc().await.unwrap();
    for s in small.iter().chain([&big]) {
        let path = s.manifest.path.as_str();
        assert_eq!(built(&store, &b1, path).await.as_ref(), Some(&s.data), "{path} of build 1");
    }
    assert_eq!(built(&store, &b2, "dist/big.js").await, Some(big2.data.clone()));
    assert_eq!(store.read(&asset("dist/big.js")).await.unwrap().unwrap().to_vec(), big2.data);

    // Build 1 dropped: its files go with the next GC; build 2's stay.
    let keep = std::collections::HashSet::from([b2.id]);
    assert_eq!(store.drop_builds(&dist, &keep).await.unwrap(), 1);
    assert!(store.build(&dist, &b1.id).await.unwrap().is_none());
    let report = store.gc().await.unwrap();
    assert_eq!((report.versions_deleted, report.packs_deleted), (1, 1), "build 1's large file and its pack");
    assert!(built(&store, &b1, "dist/big.js").await.is_none());
    assert_eq!(built(&store, &b2, "dist/big.js").await, Some(big2.data));
}
