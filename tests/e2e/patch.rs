//! Binary patches (see `assetsync_protocol::patch`) on real release pairs from npm: a
//! WebAssembly rebuild, where they beat `zstd --patch-from`, and a minified JS one, where the
//! smaller of the two is sent.

use std::path::PathBuf;

use assetsync::pull::PullReport;
use assetsync_protocol::{AssetPath, ChunkFrame, ChunkParams, Manifest, PROTOCOL_VERSION, patch, wasm};
use tokio_tungstenite::tungstenite::Message;

use crate::services::skipped;
use crate::util::{Raw, Served, TestClient};

const CHECK: &str = "the binary patch tests (real npm releases)";

/// The bytes of `file` in the npm package `pkg@version`, fetched once with `npm pack` into
/// `target/corpus/` (where `tests/bench/corpus.mjs` keeps them too); `None`, noted as skipped,
/// where the registry cannot be reached.
pub fn npm_file(pkg: &str, version: &str, file: &str) -> Option<Vec<u8>> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/corpus");
    let out = corpus.join(format!("{}@{version}", pkg.replace('/', "_"))).join(file);
    if let Ok(bytes) = std::fs::read(&out) {
        return Some(bytes);
    }
    // Tests fetch the same package at once: each packs into a folder of its own, and the file
    // appears whole (renamed into place) or not at all.
    std::fs::create_dir_all(&corpus).unwrap();
    let tgz = tempfile::tempdir_in(&corpus).unwrap();
    let packed = std::process::Command::new("npm")
        .args(["pack", &format!("{pkg}@{version}"), "--json", "--pack-destination"])
        .arg(tgz.path())
        .output();
    let name = match &packed {
        Ok(o) if o.status.success() => {
            let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            json[0]["filename"].as_str().unwrap().to_owned()
        }
        Ok(o) => {
            skipped(
                CHECK,
                &format!("npm pack {pkg}@{version} failed: {}", String::from_utf8_lossy(&o.stderr)),
            );
            return None;
        }
        Err(e) => {
            skipped(CHECK, &format!("npm is not installed ({e})"));
            return None;
        }
    };
    let tar = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(tgz.path().join(name))
        .arg(format!("package/{file}"))
        .output()
        .unwrap();
    assert!(tar.status.success(), "{file} is not in {pkg}@{version}");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut written = tempfile::NamedTempFile::new_in(out.parent().unwrap()).unwrap();
    std::io::Write::write_all(&mut written, &tar.stdout).unwrap();
    written.persist(&out).unwrap();
    Some(tar.stdout)
}

/// The `assetsync` binary serving `asset`, changed from `old` to `new` once `holder` synced
/// `old`, and ready with the best answer (computed ahead when the server sees the file change),
/// with patches on or off.
async fn updated(old: &[u8], new: &[u8], patches: bool, holder: &TestClient) -> (Served, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("asset");
    std::fs::write(&path, old).unwrap();
    let mut args = vec!["--no-store".as_ref(), "--root".as_ref(), root.path().as_os_str()];
    if !patches {
        args.push("--no-patch".as_ref());
    }
    let server = Served::start(args);
    holder.pull_from(server.url.clone(), &["asset"]).await.unwrap();
    std::fs::write(root.path().join("asset.tmp"), new).unwrap();
    std::fs::rename(root.path().join("asset.tmp"), &path).unwrap();
    server.wait_for("answers computed ahead");
    (server, root)
}

/// What a client holding `old` receives for `new` (see [`updated`]).
async fn later_client(old: &[u8], new: &[u8], patches: bool) -> PullReport {
    let holder = TestClient::new();
    let (server, _root) = updated(old, new, patches, &holder).await;
    let report = holder.pull_from(server.url.clone(), &["asset"]).await.unwrap().remove(0);
    assert!(std::fs::read(holder.out("asset")).unwrap() == new, "the rebuilt file differs");
    report
}

/// The bytes a later client of `file` from `pkg` (`old` -> `new`) receives with zstd alone
/// and with patches; `None` where npm cannot be reached.
async fn with_and_without_patches(pkg: &str, old: &str, new: &str, file: &str) -> Option<(u64, u64)> {
    let (old_bytes, new_bytes) = (npm_file(pkg, old, file)?, npm_file(pkg, new, file)?);
    let zstd = later_client(&old_bytes, &new_bytes, false).await.wire_bytes_in;
    let patched = later_client(&old_bytes, &new_bytes, true).await.wire_bytes_in;
    eprintln!("{file} {old} -> {new}: {zstd} bytes with zstd alone, {patched} with patches");
    Some((zstd, patched))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webassembly_rebuild_travels_as_a_binary_patch_smaller_than_zstd_patch_from() {
    let Some((zstd, patched)) =
        with_and_without_patches("sql.js", "1.10.2", "1.10.3", "dist/sql-wasm.wasm").await
    else {
        return;
    };
    // 22,308 against 25,749 bytes when this was written (esbuild.wasm, 13 MB: 0.47x).
    assert!(patched < zstd, "a patch: {patched} bytes, zstd against the old version: {zstd}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minified_javascript_rebuild_gets_the_smaller_of_patch_and_zstd() {
    let file = "umd/react-dom.production.min.js";
    let Some((zstd, patched)) = with_and_without_patches("react-dom", "18.2.0", "18.3.1", file).await else {
        return;
    };
    assert!(patched <= zstd + 64, "{patched} bytes with patches, {zstd} without");
}

/// The `update` a client offering `encodings` gets for `asset` when it holds `old` (as raw JSON).
async fn update_for(url: &str, old: &[u8], encodings: &str) -> serde_json::Value {
    answer_for(url, old, encodings).await.0
}

/// The `update` and the chunk frames a client offering `encodings` gets for `asset` when it holds
/// `old`: those that come before the socket has been quiet for a second (the server sends an
/// answer's frames right after its `update`).
async fn answer_for(url: &str, old: &[u8], encodings: &str) -> (serde_json::Value, Vec<Vec<u8>>) {
    let mut raw = Raw::connect_to(url).await;
    let hello =
        format!(r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"agent":"t","encodings":[{encodings}]}}"#);
    raw.send_text(&hello).await;
    assert_eq!(raw.json().await["type"], "welcome");
    let old = Manifest::build(AssetPath::new("asset").unwrap(), old, ChunkParams::default()).unwrap();
    let sync =
        format!(r#"{{"type":"sync","id":1,"asset":"asset","have":{{"versions":["{}"]}}}}"#, old.version());
    raw.send_text(&sync).await;
    let update = raw.json().await;
    let mut frames = Vec::new();
    while let Ok(next) = tokio::time::timeout(std::time::Duration::from_secs(1), raw.next()).await {
        match next {
            Some(Message::Binary(frame)) => frames.push(frame.to_vec()),
            other => panic!("expected chunk frames: {other:?}"),
        }
    }
    (update, frames)
}

/// sql.js's WebAssembly module, 1.10.2 then 1.10.3 from npm, served as `asset` by the binary
/// once `holder` synced 1.10.2 (see [`updated`]); `None` where npm cannot be reached.
async fn sql_js_updated(holder: &TestClient) -> Option<(Vec<u8>, Vec<u8>, Served, tempfile::TempDir)> {
    let file = "dist/sql-wasm.wasm";
    let (old, new) = (npm_file("sql.js", "1.10.2", file)?, npm_file("sql.js", "1.10.3", file)?);
    let (server, root) = updated(&old, &new, true, holder).await;
    Some((old, new, server, root))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_answer_names_runs_of_chunks_for_clients_that_cut_them_and_lengths_for_others() {
    let holder = TestClient::new();
    let Some((old, new, server, _root)) = sql_js_updated(&holder).await else { return };
    let lengths = update_for(&server.url, &old, r#""zstd","patch","wasm""#).await;
    let runs = update_for(&server.url, &old, r#""zstd","patch","cut","wasm""#).await;
    let recipe = |u: &serde_json::Value| u["recipe"].as_array().unwrap().clone();
    let is_run = |op: &serde_json::Value| op.as_array().is_some_and(|a| a.len() == 1);
    assert!(!recipe(&lengths).iter().any(is_run), "a run for a client that does not cut: {lengths}");
    assert!(recipe(&runs).iter().any(is_run), "no run for a client that cuts: {runs}");
    // 67 chunks, all new: 67 lengths against one run.
    let (long, short) = (lengths.to_string().len(), runs.to_string().len());
    assert!(short + 300 < long, "{short} bytes of update against {long}");
    // And the command-line client, which cuts, rebuilds the same file from it.
    holder.pull_from(server.url.clone(), &["asset"]).await.unwrap();
    assert!(std::fs::read(holder.out("asset")).unwrap() == new, "the rebuilt file differs");
}

/// A WebAssembly rebuild's patch is taken against the old module with its function indices,
/// types, globals and constants remapped into the new one's (`assetsync_protocol::wasm`): the
/// frame brings the maps, and the old module remapped with them and patched is the new one.
/// A client that does not remap gets the zstd answer instead, and the patch beats it by far.
#[tokio::test(flavor = "multi_thread")]
async fn a_webassembly_patch_brings_maps_that_remap_the_old_module_before_it_applies() {
    let holder = TestClient::new();
    let Some((old, new, server, _root)) = sql_js_updated(&holder).await else { return };
    let (_, frames) = answer_for(&server.url, &old, r#""zstd","patch","wasm""#).await;
    let [frame] = &frames[..] else { panic!("one patch frame, got {}", frames.len()) };
    let ChunkFrame::Patch { maps: Some(maps), payload, .. } = ChunkFrame::decode(frame).unwrap() else {
        panic!("a patch frame with maps, got kind {}", frame[0]);
    };
    let maps = wasm::Maps::decode(maps).expect("maps");
    assert!(!maps.functions.is_empty(), "sql.js 1.10.3 renumbers functions: {maps:?}");
    let remapped = wasm::remap(&old, &maps).unwrap();
    assert!(
        patch::apply(&remapped, payload, None, new.len() as u64).unwrap() == new,
        "the remapped old, patched"
    );

    let (_, without) = answer_for(&server.url, &old, r#""zstd","patch""#).await;
    let without: usize = without.iter().map(Vec::len).sum();
    eprintln!(
        "sql-wasm.wasm: a patch with maps of {} bytes, {without} bytes for a client that does not remap",
        frame.len()
    );
    // 11,700 against 25,700 bytes when this was written (a patch without maps: 21,300).
    assert!(frame.len() * 2 < without, "{} bytes with maps, {without} for a client without", frame.len());
    // And the command-line client, which remaps, rebuilds the same file from it.
    let report = holder.pull_from(server.url.clone(), &["asset"]).await.unwrap().remove(0);
    assert!(std::fs::read(holder.out("asset")).unwrap() == new, "the rebuilt file differs");
    assert!(report.wire_bytes_in < without as u64, "{} bytes in", report.wire_bytes_in);
}

/// A patch that does not apply (a bit flipped in its streams on the way; a server bug would do
/// the same): the client asks again on the same connection with `no_patch` and gets the zstd
/// answer against the version it holds, not a clean start, and commits the exact file.
#[tokio::test(flavor = "multi_thread")]
async fn a_patch_that_does_not_apply_is_followed_by_the_chunks_on_the_same_connection() {
    use crate::faults::{Fault, OnCut, Proxy};
    let quiet: OnCut = std::sync::Arc::new(|| {});
    let holder = TestClient::new();
    let Some((_, new, server, _root)) = sql_js_updated(&holder).await else { return };
    let addr = server.url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
    // Where the patch ends on the wire: the same pull, undisturbed, by a copy of the holder.
    let probe = Proxy::to(addr, Vec::new(), quiet.clone()).await;
    let clean = holder.copy().pull_from(probe.url(), &["asset"]).await.unwrap().remove(0);
    assert!(!clean.retried, "{clean:?}");
    // The patch frame comes last; a bit 2,000 bytes before the end is in its streams.
    let proxy = Proxy::to(addr, vec![Fault::FlipAt(probe.forwarded() as usize - 2_000)], quiet).await;
    let report = holder.pull_from(proxy.url(), &["asset"]).await.unwrap().remove(0);
    assert!(std::fs::read(holder.out("asset")).unwrap() == new, "the rebuilt file differs");
    assert_eq!((proxy.flips(), proxy.connections()), (1, 1), "one flip, no reconnection");
    assert!(report.retried && report.requests == 2, "{report:?}");
    let answers: Vec<String> = server.said("sync").into_iter().filter(|l| l.contains("base=true")).collect();
    let patches: Vec<bool> = answers.iter().map(|l| l.contains("patch=true")).collect();
    assert_eq!(patches[patches.len() - 2..], [true, false], "the patch, then the chunks: {answers:#?}");
    eprintln!(
        "a patch of {} bytes in, then {} with the chunks after it",
        clean.wire_bytes_in, report.wire_bytes_in
    );
    // The chunks against the version held, compressed against it: about twice the patch, far
    // from the whole module (640 KB).
    assert!(
        report.wire_bytes_in < clean.wire_bytes_in * 4,
        "{} bytes after the patch failed",
        report.wire_bytes_in
    );
}

/// A rebuild of a large Rust WebAssembly module (swc 1.3.100 -> 1.3.102, 19 MB, from npm): its
/// data after the code changes in ways LZ matching encodes better than bsdiff's controls, so the
/// patch rebuilds the code and a tail (a zstd frame against the remapped old module) the rest.
/// A client that does not take tails gets the zstd answer instead; the command-line client,
/// which does, rebuilds the same file.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_webassembly_rebuild_gets_its_data_as_a_tail_after_the_patch_of_its_code() {
    let file = "wasm-web_bg.wasm";
    let (Some(old), Some(new)) =
        (npm_file("@swc/wasm-web", "1.3.100", file), npm_file("@swc/wasm-web", "1.3.102", file))
    else {
        return;
    };
    let holder = TestClient::new();
    let (server, _root) = updated(&old, &new, true, &holder).await;
    let (_, frames) = answer_for(&server.url, &old, r#""zstd","patch","wasm","tail""#).await;
    let [frame] = &frames[..] else { panic!("one patch frame, got {}", frames.len()) };
    let ChunkFrame::Patch { maps: Some(maps), payload, tail: Some(tail), .. } =
        ChunkFrame::decode(frame).unwrap()
    else {
        panic!("a patch frame with maps and a tail, got kind {}", frame[0]);
    };
    let remapped = wasm::remap(&old, &wasm::Maps::decode(maps).unwrap()).unwrap();
    assert!(patch::apply(&remapped, payload, Some(tail), new.len() as u64).unwrap() == new, "patched");
    let (_, without) = answer_for(&server.url, &old, r#""zstd","patch","wasm""#).await;
    assert!(without.iter().all(|f| f[0] != 7 && f[0] != 8), "a patch for a client without tails");
    let report = holder.pull_from(server.url.clone(), &["asset"]).await.unwrap().remove(0);
    assert!(std::fs::read(holder.out("asset")).unwrap() == new, "the rebuilt file differs");
    let without: usize = without.iter().map(Vec::len).sum();
    eprintln!(
        "swc: a patch of {} bytes with a tail of {} ({} in the frame), {without} bytes without tails; the client read {}",
        payload.len(),
        tail.len(),
        frame.len(),
        report.wire_bytes_in
    );
    // 1,003,365 bytes of patch without the tail when this was written.
    assert!(frame.len() < 900_000, "{} bytes of patch frame", frame.len());
}
