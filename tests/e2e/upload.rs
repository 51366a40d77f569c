//! Uploads: `assetsync push` and the protocol's `upload` against a real server that writes into
//! its root, with followers, conflicts, permissions and hostile input.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use assetsync::pull::PullConfig;
use assetsync::push::{PushConfig, push};
use assetsync_protocol::upload::prepare;
use assetsync_protocol::{AssetPath, ChunkParams, ClientMessage, Hash, Manifest, PROTOCOL_VERSION, Scope};
use tokio_tungstenite::tungstenite::Message;

use crate::faults::{Fault, Proxy};
use crate::util::{BIN, Raw, TestClient, TestServer, random_bytes};
use crate::watch::Follower;

const TOKEN: &str = "upload-secret";

async fn writable_server() -> TestServer {
    TestServer::start_with(|c| {
        c.write_token = Some(TOKEN.into());
        c.token = Some(TOKEN.into());
    })
    .await
}

/// `bytes` with `len` bytes at `at` replaced by other bytes.
fn edited(bytes: &[u8], at: usize, len: usize, seed: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + len].copy_from_slice(&random_bytes(len, seed));
    out
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, TOKEN).unwrap();
    path
}

/// Runs `assetsync push --json` with `args`; its one report, or its error line.
async fn cli_push(server: &TestServer, dir: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["push", "--json", "--server", &server.url(), "--token-file"]).arg(token_file(dir));
    cmd.args(args);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    match output.status.success() {
        true => Ok(serde_json::from_slice(&output.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    }
}

fn config(server: &TestServer, from: &Path, cache: Option<&Path>) -> PushConfig {
    PushConfig { server: server.url(), cache: cache.map(Path::to_path_buf), ..config_for(from) }
}

/// Pushing from `from` with the token, without a cache, to a server set afterwards.
fn config_for(from: &Path) -> PushConfig {
    PushConfig {
        server: String::new(),
        from: from.to_path_buf(),
        cache: None,
        token: Some(TOKEN.into()),
        force: false,
        delete: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_1_kib_edit_of_8_mib_pushed_by_the_cli_sends_under_64_kib_and_reaches_a_follower() {
    let server = writable_server().await;
    let original = random_bytes(8 << 20, 1);
    server.write("data/level.bin", &original);
    let mut follower = Follower::start_with(server.url(), Some(TOKEN), &["data/level.bin"]);
    follower.pulled("data/level.bin").await;

    // A client that synced the file: its cache holds the base, so the upload needs no round trip.
    let client = TestClient::new();
    let pulled = PullConfig { token: Some(TOKEN.into()), ..client.config(server.url()) };
    let target = [assetsync_protocol::Scope::new("data/level.bin").unwrap()];
    assetsync::pull::pull(&pulled, &target, |_| {}).await.unwrap();
    let out = client.dir.path().join("out");
    let edit = edited(&original, 4 << 20, 1024, 2);
    std::fs::write(out.join("data/level.bin"), &edit).unwrap();
    let cache = client.cache();
    let args = ["--from", out.to_str().unwrap(), "--cache", cache.to_str().unwrap(), "data/level.bin"];
    let report = cli_push(&server, client.dir.path(), &args).await.unwrap();
    for field in [
        "asset",
        "version",
        "bytes",
        "chunks",
        "chunks_sent",
        "wire_bytes_in",
        "wire_bytes_out",
        "elapsed_ms",
    ] {
        assert!(report.get(field).is_some(), "missing {field}: {report}");
    }
    let sent = report["wire_bytes_out"].as_u64().unwrap();
    assert!(sent < 64 << 10, "{sent} bytes sent for a 1 KiB edit: {report}");
    assert!(report["chunks_sent"].as_u64().unwrap() <= 3, "{report}");
    let on_server = std::fs::read(server.root.path().join("data/level.bin")).unwrap();
    assert_eq!(Hash::of(&on_server), Hash::of(&edit), "the server's file is the pushed one");
    assert_eq!(
        report["version"],
        Manifest::build(AssetPath::new("data/level.bin").unwrap(), &edit, ChunkParams::default())
            .unwrap()
            .version()
            .to_hex()
    );
    follower.pulled("data/level.bin").await;
    assert_eq!(follower.out("data/level.bin").map(|d| Hash::of(&d)), Some(Hash::of(&edit)));

    // A client that never synced it (rsync's flow): one round trip for the server's manifest,
    // still only the missing chunks sent.
    let stranger = TestClient::new();
    let second = edited(&edit, 1 << 20, 1024, 3);
    std::fs::create_dir_all(stranger.dir.path().join("src/data")).unwrap();
    std::fs::write(stranger.dir.path().join("src/data/level.bin"), &second).unwrap();
    let from = stranger.dir.path().join("src");
    let report =
        cli_push(&server, stranger.dir.path(), &["--from", from.to_str().unwrap(), "data/level.bin"])
            .await
            .unwrap();
    let sent = report["wire_bytes_out"].as_u64().unwrap();
    assert!(sent < 64 << 10, "{sent} bytes sent by a client without the base: {report}");
    assert_eq!(
        Hash::of(&std::fs::read(server.root.path().join("data/level.bin")).unwrap()),
        Hash::of(&second)
    );
    follower.pulled("data/level.bin").await;

    // The same file again: nothing to send.
    let report =
        cli_push(&server, stranger.dir.path(), &["--from", from.to_str().unwrap(), "data/level.bin"])
            .await
            .unwrap();
    assert_eq!(report["unchanged"], true, "{report}");
    assert_eq!(report["chunks_sent"], 0, "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_from_a_stale_cache_is_refused_with_conflict_and_force_overrides_it() {
    let server = writable_server().await;
    let original = random_bytes(300_000, 4);
    server.write("app.js", &original);
    let client = TestClient::new();
    let pulled = PullConfig { token: Some(TOKEN.into()), ..client.config(server.url()) };
    assetsync::pull::pull(&pulled, &[assetsync_protocol::Scope::new("app.js").unwrap()], |_| {})
        .await
        .unwrap();
    // Someone else changes the server's file.
    let theirs = edited(&original, 1000, 500, 5);
    server.replace("app.js", &theirs);
    let mine = edited(&original, 200_000, 500, 6);
    let out = client.dir.path().join("out");
    std::fs::write(out.join("app.js"), &mine).unwrap();
    let mut push_config = config(&server, &out, Some(&client.cache()));
    let e = push(&push_config, &[Scope::new("app.js").unwrap()], |_| {}).await.unwrap_err().to_string();
    assert!(e.starts_with("app.js: conflict: the server's file changed"), "{e}");
    assert!(e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(server.root.path().join("app.js")).unwrap(), theirs, "nothing written");
    push_config.force = true;
    let reports = push(&push_config, &[Scope::new("app.js").unwrap()], |_| {}).await.unwrap();
    assert!(!reports[0].unchanged);
    assert_eq!(std::fs::read(server.root.path().join("app.js")).unwrap(), mine);

    // A file the server does not have yet is created, with its folders.
    std::fs::create_dir_all(out.join("fresh/deep")).unwrap();
    std::fs::write(out.join("fresh/deep/new.js"), b"export const fresh = 1;\n").unwrap();
    let asset = [Scope::new("fresh/deep/new.js").unwrap()];
    let reports = push(&config(&server, &out, None), &asset, |_| {}).await.unwrap();
    assert_eq!(reports[0].chunks_sent, 1);
    assert_eq!(
        std::fs::read(server.root.path().join("fresh/deep/new.js")).unwrap(),
        b"export const fresh = 1;\n"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_uploads_from_the_same_base_one_wins_and_the_other_gets_conflict() {
    let server = writable_server().await;
    let original = random_bytes(2 << 20, 7);
    server.write("shared.bin", &original);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (edit_a, edit_b) = (edited(&original, 10, 1024, 8), edited(&original, 1 << 20, 1024, 9));
    std::fs::write(a.path().join("shared.bin"), &edit_a).unwrap();
    std::fs::write(b.path().join("shared.bin"), &edit_b).unwrap();
    for _ in 0..3 {
        server.write("shared.bin", &original);
        // Both learn the server's version first, then race to upload over it.
        let (ca, cb) = (config(&server, a.path(), None), config(&server, b.path(), None));
        let asset = [Scope::new("shared.bin").unwrap()];
        let (ra, rb) = tokio::join!(push(&ca, &asset, |_| {}), push(&cb, &asset, |_| {}));
        let on_server = std::fs::read(server.root.path().join("shared.bin")).unwrap();
        match (ra, rb) {
            (Ok(_), Ok(_)) => {
                // One ran after the other had written: each from the version it was given.
                assert!(on_server == edit_a || on_server == edit_b);
            }
            (Ok(_), Err(e)) => {
                assert!(e.to_string().contains("conflict"), "{e}");
                assert_eq!(on_server, edit_a);
            }
            (Err(e), Ok(_)) => {
                assert!(e.to_string().contains("conflict"), "{e}");
                assert_eq!(on_server, edit_b);
            }
            (Err(a), Err(b)) => panic!("both failed: {a}; {b}"),
        }
    }
    server.stop().await;
}

/// A connection greeted with the token.
async fn greeted(server: &TestServer) -> Raw {
    let mut raw = Raw::connect(server).await;
    raw.send_text(&format!(
        r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"agent":"test","token":"{TOKEN}"}}"#
    ))
    .await;
    assert_eq!(raw.json().await["type"], "welcome");
    raw
}

/// Request `id` uploading `data` to `asset` over `base`, by hand: the message and its frames.
fn upload_parts(id: u32, asset: &str, data: &[u8], base: Option<&[u8]>) -> (ClientMessage, Vec<Vec<u8>>) {
    let path = AssetPath::new(asset).unwrap_or_else(|_| AssetPath::new("x").unwrap());
    let new = Manifest::build(path.clone(), data, ChunkParams::default()).unwrap();
    let base = base.map(|b| Manifest::build(path.clone(), b, ChunkParams::default()).unwrap());
    let prepared = prepare(id, &new, data, base.as_ref(), &HashSet::new(), None, None);
    let mut message = prepared.message;
    if let ClientMessage::Upload(request) = &mut message {
        request.asset = asset.to_owned();
    }
    (message, prepared.frames)
}

async fn send_upload(raw: &mut Raw, message: &ClientMessage, frames: &[Vec<u8>]) {
    raw.send_text(&serde_json::to_string(message).unwrap()).await;
    for frame in frames {
        raw.send(Message::binary(frame.clone())).await;
    }
}

/// Files under `dir`, temporary ones included.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            out.extend(listing(&entry.path()).into_iter().map(|n| format!("{name}/{n}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_with_nothing_written_and_the_server_serves_on() {
    let server = TestServer::start_with(|c| {
        c.write_token = Some(TOKEN.into());
        c.token = Some(TOKEN.into());
        c.max_asset_bytes = 1 << 20;
    })
    .await;
    let original = random_bytes(200_000, 10);
    server.write("site/app.js", &original);
    std::fs::create_dir_all(server.root.path().join("site/dir")).unwrap();
    std::os::unix::fs::symlink(server.root.path().join("site"), server.root.path().join("link")).unwrap();
    let before = listing(server.root.path());
    let new = edited(&original, 100, 100, 11);
    let big = random_bytes(2 << 20, 12);
    let cases = [
        ("../escape.js", &new[..], None, "bad_path"),
        ("link/app.js", &new, Some(&original[..]), "bad_path"),
        ("site/dir", &new, None, "bad_path"),
        ("big.bin", &big, None, "too_large"),
        // A stale base: the server's file is `original`.
        ("site/app.js", &new, Some(&new[..1000]), "conflict"),
    ];
    let mut raw = greeted(&server).await;
    for (id, (asset, data, base, expected)) in (1..).zip(cases) {
        let (message, frames) = upload_parts(id, asset, data, base);
        send_upload(&mut raw, &message, &frames).await;
        let answer = raw.json().await;
        let got = answer["code"].as_str().unwrap_or(answer["type"].as_str().unwrap());
        assert_eq!(got, expected, "{asset}: {answer}");
        if let Some(m) = answer["message"].as_str() {
            assert!(!m.contains('\n'), "one line: {m}");
        }
    }

    // Data that rebuilds to another file than the one announced.
    let (message, mut frames) = upload_parts(10, "site/app.js", &new, Some(&original));
    *frames.last_mut().unwrap().last_mut().unwrap() ^= 0xFF;
    send_upload(&mut raw, &message, &frames).await;
    let answer = raw.json().await;
    assert_eq!(answer["code"], "bad_message", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("nothing was written"), "{answer}");
    // The connection stayed in step: the same upload, intact, lands.
    let (message, frames) = upload_parts(11, "site/app.js", &new, Some(&original));
    send_upload(&mut raw, &message, &frames).await;
    let answer = raw.json().await;
    assert_eq!(answer["type"], "uploaded", "{answer}");
    assert_eq!(std::fs::read(server.root.path().join("site/app.js")).unwrap(), new);

    // A client that leaves mid-upload: nothing written.
    let newer = edited(&new, 150_000, 2000, 13);
    let (message, frames) = upload_parts(1, "site/app.js", &newer, Some(&new));
    assert!(!frames.is_empty());
    let mut raw = greeted(&server).await;
    raw.send_text(&serde_json::to_string(&message).unwrap()).await;
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(std::fs::read(server.root.path().join("site/app.js")).unwrap(), new);

    assert_eq!(listing(server.root.path()), before, "no temporary file left, nothing else written");
    // Others are served all along.
    let reader = TestClient::new();
    let pulled = PullConfig { token: Some(TOKEN.into()), ..reader.config(server.url()) };
    let target = [assetsync_protocol::Scope::new("site/app.js").unwrap()];
    assetsync::pull::pull(&pulled, &target, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(reader.out("site/app.js")).unwrap(), new);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_need_allow_write_and_the_token() {
    // Without --allow-write.
    let server = TestServer::start_with(|c| c.token = Some(TOKEN.into())).await;
    server.write("a.js", b"old");
    let from = tempfile::tempdir().unwrap();
    std::fs::write(from.path().join("a.js"), b"new").unwrap();
    let asset = [Scope::new("a.js").unwrap()];
    let e = push(&config(&server, from.path(), None), &asset, |_| {}).await.unwrap_err().to_string();
    assert!(e.contains("read_only") && e.contains("--allow-write"), "{e}");
    server.stop().await;

    let server = writable_server().await;
    server.write("a.js", b"old");
    for token in [None, Some("wrong")] {
        let config = PushConfig { token: token.map(str::to_owned), ..config(&server, from.path(), None) };
        let e = push(&config, &asset, |_| {}).await.unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
    }
    assert_eq!(std::fs::read(server.root.path().join("a.js")).unwrap(), b"old");
    server.stop().await;

    // A server whose reads are open takes uploads only from clients with the write secret.
    let server = TestServer::start_with(|c| c.write_token = Some(TOKEN.into())).await;
    server.write("a.js", b"old");
    let config = PushConfig { token: None, ..config(&server, from.path(), None) };
    let e = push(&config, &asset, |_| {}).await.unwrap_err().to_string();
    assert!(e.contains("unauthorized") && e.contains("write secret"), "{e}");
    assert_eq!(std::fs::read(server.root.path().join("a.js")).unwrap(), b"old");
    push(&PushConfig { token: Some(TOKEN.into()), ..config }, &asset, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(server.root.path().join("a.js")).unwrap(), b"new");
    server.stop().await;

    // --allow-write without a secret does not start.
    let output =
        Command::new(BIN).args(["serve", "--allow-write", "--root"]).arg(from.path()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--token-file"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_midway_resumes_without_sending_again_what_the_server_kept() {
    let server = writable_server().await;
    // A new file, all of it sent: batches of 1 MiB, each kept by the server once whole.
    let data = random_bytes(6 << 20, 20);
    let from = tempfile::tempdir().unwrap();
    std::fs::write(from.path().join("data.bin"), &data).unwrap();
    let cut_at = 3_500_000;
    let proxy = Proxy::to(server.addr, vec![Fault::CutUpAfter(cut_at)], Arc::new(|| {})).await;
    let config = PushConfig { server: proxy.url(), ..config(&server, from.path(), None) };
    let reports = push(&config, &[Scope::new("data.bin").unwrap()], |_| {}).await.unwrap();
    assert_eq!(std::fs::read(server.root.path().join("data.bin")).unwrap(), data);
    assert_eq!(proxy.connections(), 2, "one cut, one resumption");
    // Without resuming, the second connection would carry the whole file again (9.8 MB in all).
    let up = proxy.forwarded_up();
    assert!(up < data.len() as u64 * 5 / 4, "{up} bytes sent for a {} byte file cut at {cut_at}", data.len());
    assert!(
        reports[0].chunks_sent < reports[0].chunks,
        "the resumed upload names what the server kept: {:?}",
        reports[0]
    );
    server.stop().await;
}

/// The server's disk fills up while it writes an upload: the client gets one line naming the
/// cause, the old file stays whole, no temporary file is left, and the same push works once
/// there is room.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_the_upload_clearly_and_keeps_the_old_file() {
    const MIB: usize = 1 << 20;
    let Some(disk) = crate::cli::SmallDisk::mount(6 * MIB as u64) else { return };
    let (v1, v2) = (random_bytes(3 * MIB, 30), random_bytes(4 * MIB, 31));
    std::fs::create_dir_all(disk.outside("root")).unwrap();
    std::fs::write(disk.outside("root/big.bin"), &v1).unwrap();
    let secret = tempfile::tempdir().unwrap();
    let mut serve = disk.command(BIN);
    serve.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-store",
        "--no-watch",
        "--allow-write",
        "--token-file",
    ]);
    serve.arg(token_file(secret.path())).arg("--root").arg(disk.dir.path().join("root"));
    let mut server = crate::util::Served::spawn(serve);
    let from = tempfile::tempdir().unwrap();
    std::fs::write(from.path().join("big.bin"), &v2).unwrap();
    let config = PushConfig { server: server.url.clone(), ..config_for(from.path()) };
    let asset = [Scope::new("big.bin").unwrap()];
    let e = push(&config, &asset, |_| {}).await.unwrap_err().to_string();
    assert!(e.contains("No space left on device") && e.contains("the previous file is kept"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(std::fs::read(disk.outside("root/big.bin")).unwrap(), v1, "the old file is whole");
    assert_eq!(listing(&disk.outside("root")), ["big.bin"], "no temporary file left");
    disk.resize(16 * MIB as u64);
    push(&config, &asset, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(disk.outside("root/big.bin")).unwrap(), v2);
    let _ = server.child.kill();
    let _ = server.child.wait();
}

/// `assetsync push --json` with `args`: one report per file, or the error line.
async fn cli_push_all(
    server: &TestServer,
    dir: &Path,
    args: &[&str],
) -> Result<Vec<serde_json::Value>, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["push", "--json", "--server", &server.url(), "--token-file"]).arg(token_file(dir));
    cmd.args(args);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    match output.status.success() {
        true => Ok(String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_push_sends_only_changed_files_and_deletes_missing_ones_with_delete() {
    let server = writable_server().await;
    let (a, b, c) = (random_bytes(200_000, 40), random_bytes(300_000, 41), random_bytes(50_000, 42));
    for (name, data) in [("dist/a.js", &a), ("dist/b.js", &b), ("dist/sub/c.css", &c), ("dist/old.js", &a)] {
        server.write(name, data);
    }
    server.write("other.js", b"outside the folder");
    let mut follower = Follower::start_with(server.url(), Some(TOKEN), &["dist/"]);
    follower.pulled("dist/old.js").await;

    // The local build: a.js and sub/c.css as on the server, b.js edited, new.js new, old.js gone.
    let work = tempfile::tempdir().unwrap();
    let from = work.path().join("build");
    std::fs::create_dir_all(from.join("dist/sub")).unwrap();
    let b2 = edited(&b, 150_000, 1024, 43);
    let new = random_bytes(20_000, 44);
    for (name, data) in [("dist/a.js", &a), ("dist/b.js", &b2), ("dist/sub/c.css", &c), ("dist/new.js", &new)]
    {
        std::fs::write(from.join(name), data).unwrap();
    }
    let from_arg = from.to_str().unwrap();
    let reports = cli_push_all(&server, work.path(), &["--from", from_arg, "dist/"]).await.unwrap();
    let by_name = |reports: &[serde_json::Value], name: &str| {
        reports
            .iter()
            .find(|r| r["asset"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no report for {name}: {reports:?}"))
    };
    for unchanged in ["dist/a.js", "dist/sub/c.css"] {
        let r = by_name(&reports, unchanged);
        assert_eq!((r["unchanged"].as_bool(), r["wire_bytes_out"].as_u64()), (Some(true), Some(0)), "{r}");
    }
    let edit = by_name(&reports, "dist/b.js");
    assert!(edit["wire_bytes_out"].as_u64().unwrap() < 64 << 10, "a 1 KiB edit cost {edit}");
    assert_eq!(by_name(&reports, "dist/new.js")["chunks_sent"], by_name(&reports, "dist/new.js")["chunks"]);
    assert_eq!(reports.len(), 4, "old.js is kept without --delete: {reports:?}");
    assert_eq!(std::fs::read(server.root.path().join("dist/b.js")).unwrap(), b2);
    assert_eq!(std::fs::read(server.root.path().join("dist/new.js")).unwrap(), new);
    assert!(server.root.path().join("dist/old.js").exists());

    // --delete without a folder is a mistake, said at once.
    let e =
        cli_push_all(&server, work.path(), &["--from", from_arg, "--delete", "dist/a.js"]).await.unwrap_err();
    assert!(e.contains("name a folder"), "{e}");

    let reports =
        cli_push_all(&server, work.path(), &["--from", from_arg, "--delete", "dist/"]).await.unwrap();
    let removed = by_name(&reports, "dist/old.js");
    assert_eq!(removed["removed"], true, "{removed}");
    assert!(
        reports.iter().filter(|r| r["asset"] != "dist/old.js").all(|r| r["unchanged"] == true),
        "{reports:?}"
    );
    assert!(!server.root.path().join("dist/old.js").exists());
    assert_eq!(std::fs::read(server.root.path().join("other.js")).unwrap(), b"outside the folder");
    follower.removed("dist/old.js").await;

    // The server's folder is now the local one, file for file.
    let listing = |root: &Path| {
        let mut files: Vec<_> = ["a.js", "b.js", "new.js", "old.js", "sub/c.css"]
            .iter()
            .filter_map(|f| {
                std::fs::read(root.join("dist").join(f)).ok().map(|d| (f.to_string(), Hash::of(&d)))
            })
            .collect();
        files.sort();
        files
    };
    assert_eq!(listing(server.root.path()), listing(&from));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deletes_are_refused_with_nothing_removed() {
    let server = writable_server().await;
    let data = random_bytes(10_000, 50);
    server.write("site/app.js", &data);
    std::fs::create_dir_all(server.root.path().join("site/dir")).unwrap();
    std::os::unix::fs::symlink(server.root.path().join("site"), server.root.path().join("link")).unwrap();
    let version = Manifest::build(AssetPath::new("site/app.js").unwrap(), &data, ChunkParams::default())
        .unwrap()
        .version()
        .to_hex();
    let other = Hash::of(b"another version").to_hex();
    let before = listing(server.root.path());
    let cases = [
        ("../escape.js", &version, "bad_path"),
        ("/etc/passwd", &version, "bad_path"),
        ("link/app.js", &version, "bad_path"),
        ("site/dir", &version, "bad_path"),
        ("site/missing.js", &version, "conflict"),
        // The server's file is not the version named.
        ("site/app.js", &other, "conflict"),
    ];
    let mut raw = greeted(&server).await;
    for (id, (asset, base, expected)) in (1..).zip(cases) {
        raw.send_text(&format!(r#"{{"type":"delete","id":{id},"asset":"{asset}","base":"{base}"}}"#)).await;
        let answer = raw.json().await;
        let got = answer["code"].as_str().unwrap_or(answer["type"].as_str().unwrap());
        assert_eq!(got, expected, "{asset}: {answer}");
    }
    assert_eq!(listing(server.root.path()), before, "a refused delete removed something");
    // Without the write secret: refused; with it, the right version goes.
    let mut reader = Raw::connect(&server).await;
    let hello = format!(r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"agent":"t","token":"{TOKEN}x"}}"#);
    reader.send_text(&hello).await;
    assert_eq!(reader.json().await["code"], "unauthorized");
    raw.send_text(&format!(r#"{{"type":"delete","id":9,"asset":"site/app.js","base":"{version}"}}"#)).await;
    assert_eq!(raw.json().await["type"], "deleted");
    assert!(!server.root.path().join("site/app.js").exists());
    server.stop().await;
}
