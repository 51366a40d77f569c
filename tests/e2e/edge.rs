//! Relay trees: edges (`serve --upstream`) that follow an origin or another edge and serve their
//! own clients, all real processes on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{BIN, Raw, Served, TestClient, random_bytes};
use crate::watch::Follower;

const ASSET: &str = "data/level.bin";

/// Replaces `root/asset` with `data` by a rename, as a deploy does.
fn deploy(root: &Path, asset: &str, data: &[u8]) {
    let path = root.join(asset);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = root.join(".deploying.tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn origin(root: &Path) -> Served {
    Served::start([
        "--no-store".as_ref(),
        "--quiet-ms".as_ref(),
        "20".as_ref(),
        "--root".as_ref(),
        root.as_os_str(),
    ])
}

/// An edge of `upstream` keeping its files in `dir`, listening on `listen`.
fn edge_at(upstream: &str, dir: &Path, listen: &str) -> Served {
    edge_with(upstream, dir, listen, &[])
}

/// [`edge_at`] with `extra` arguments.
fn edge_with(upstream: &str, dir: &Path, listen: &str, extra: &[&str]) -> Served {
    let mut command = std::process::Command::new(BIN);
    command.args(["serve", "--no-store", "--quiet-ms", "20", "--listen", listen, "--upstream", upstream]);
    command.arg("--edge-dir").arg(dir).args(extra);
    Served::spawn(command)
}

fn edge(upstream: &str, dir: &Path) -> Served {
    edge_at(upstream, dir, "127.0.0.1:0")
}

/// The server's `/status`.
async fn status(server: &Served) -> serde_json::Value {
    assetsync::status::fetch(&server.url, None).await.unwrap()
}

/// Waits (up to `limit`) until `check` holds.
async fn until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the edge whose files are in `dir` holds `data` at `asset`.
async fn holds(dir: &Path, asset: &str, data: &[u8]) {
    let path = dir.join("files").join(asset);
    until(Duration::from_secs(30), &format!("{} holds {asset}", dir.display()), async || {
        std::fs::read(&path).is_ok_and(|d| d == data)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_1_kib_edit_at_the_origin_reaches_clients_two_edges_down_within_3_s_as_a_delta() {
    let root = tempfile::tempdir().unwrap();
    let original = random_bytes(8 << 20, 60);
    deploy(root.path(), ASSET, &original);
    let origin = origin(root.path());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edge(&origin.url, dir_a.path());
    let b = edge(&a.url, dir_b.path());
    holds(dir_b.path(), ASSET, &original).await;

    let mut followers: Vec<Follower> = (0..3).map(|_| Follower::start_at(b.url.clone(), &[ASSET])).collect();
    for follower in &mut followers {
        follower.pulled(ASSET).await;
    }
    let b_status = status(&b).await;
    assert_eq!(b_status["upstream"]["state"], "following", "{b_status}");
    let path: Vec<&str> = b_status["path"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let ids =
        [status(&b).await["id"].clone(), status(&a).await["id"].clone(), status(&origin).await["id"].clone()];
    assert_eq!(path, ids.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(), "B -> A -> origin");

    // The edit: what the origin sends for it, and how long until every client has it.
    let egress_before = status(&origin).await["bytes_out"].as_u64().unwrap();
    let mut edited = original.clone();
    edited[4 << 20..(4 << 20) + 1024].copy_from_slice(&random_bytes(1024, 61));
    let started = Instant::now();
    deploy(root.path(), ASSET, &edited);
    for follower in &mut followers {
        follower.pulled(ASSET).await;
    }
    let latency = started.elapsed();
    for follower in &followers {
        assert_eq!(std::fs::read(follower.client.out(ASSET)).unwrap(), edited);
    }
    assert!(latency < Duration::from_secs(3), "the edit took {latency:?} to reach the clients");
    // Only edge A follows the origin; the status request itself is counted too.
    let egress = status(&origin).await["bytes_out"].as_u64().unwrap() - egress_before;
    assert!(egress < 64 << 10, "the origin sent {egress} bytes for a 1 KiB edit to its one edge");
    eprintln!("edit reached 3 clients two edges down in {latency:?}; origin egress {egress} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_whose_upstream_dies_keeps_serving_and_catches_up_when_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let v1 = random_bytes(2 << 20, 62);
    deploy(root.path(), ASSET, &v1);
    let origin = origin(root.path());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = edge(&origin.url, dir_a.path());
    let a_listen = a.url.trim_start_matches("ws://").trim_end_matches("/sync").to_owned();
    let b = edge(&a.url, dir_b.path());
    holds(dir_b.path(), ASSET, &v1).await;
    let mut follower = Follower::start_at(b.url.clone(), &[ASSET]);
    follower.pulled(ASSET).await;

    // A new version at the origin, and edge A killed while it may be fetching it.
    let v2 = random_bytes(2 << 20, 63);
    deploy(root.path(), ASSET, &v2);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    until(Duration::from_secs(30), "B notices that A is gone", async || {
        status(&b).await["upstream"]["state"] == "unreachable"
    })
    .await;
    // B serves what it verified, and says that it may be old.
    let mut raw = Raw::connect_to(&b.url).await;
    raw.send_text(&format!(
        r#"{{"type":"hello","protocol":{},"agent":"t"}}"#,
        assetsync_protocol::PROTOCOL_VERSION
    ))
    .await;
    let welcome = raw.json().await;
    assert!(welcome["stale"].as_str().is_some_and(|s| s.contains("unreachable")), "{welcome}");
    let reader = TestClient::new();
    reader.pull_from(b.url.clone(), &[ASSET]).await.unwrap();
    let held = std::fs::read(reader.out(ASSET)).unwrap();
    assert!(held == v1 || held == v2, "B serves a whole verified version, never a mix");

    // A comes back (same folder, same address): B reconnects and its clients catch up.
    let _a = edge_at(&origin.url, dir_a.path(), &a_listen);
    holds(dir_b.path(), ASSET, &v2).await;
    if held == v1 {
        follower.pulled(ASSET).await;
    }
    until(Duration::from_secs(30), "the client holds v2", async || {
        std::fs::read(follower.client.out(ASSET)).is_ok_and(|d| d == v2)
    })
    .await;
    until(Duration::from_secs(10), "B follows again", async || {
        status(&b).await["upstream"]["state"] == "following"
    })
    .await;
}

/// A free port on 127.0.0.1, for servers that must know each other's address before starting.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_that_follow_each_other_in_a_circle_report_a_relay_loop() {
    // An edge pointed at itself.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let own = format!("ws://127.0.0.1:{port}/sync");
    let selfish = edge_at(&own, dir.path(), &format!("127.0.0.1:{port}"));
    selfish.wait_for("relay loop");
    until(Duration::from_secs(10), "the loop shows in /status", async || {
        status(&selfish).await["upstream"]["error"].as_str().is_some_and(|e| e.contains("relay loop"))
    })
    .await;

    // Two edges, each the other's upstream.
    let (pa, pb) = (free_port(), free_port());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edge_at(&format!("ws://127.0.0.1:{pb}/sync"), dir_a.path(), &format!("127.0.0.1:{pa}"));
    let b = edge_at(&format!("ws://127.0.0.1:{pa}/sync"), dir_b.path(), &format!("127.0.0.1:{pb}"));
    until(Duration::from_secs(30), "one of them reports the loop", async || {
        let errors = [status(&a).await, status(&b).await];
        errors.iter().any(|s| s["upstream"]["error"].as_str().is_some_and(|e| e.contains("relay loop")))
    })
    .await;
}

#[test]
fn assetsync_status_prints_the_servers_state() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.js"), b"x").unwrap();
    let origin = origin(root.path());
    let output =
        std::process::Command::new(BIN).args(["status", "--json", "--server", &origin.url]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in ["id", "path", "upstream", "clients", "subscriptions", "bytes_in", "bytes_out"] {
        assert!(status.get(field).is_some(), "missing {field}: {status}");
    }
    assert!(status["upstream"].is_null(), "an origin has no upstream");
    let output = std::process::Command::new(BIN).args(["status", "--server", &origin.url]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("upstream: none") && text.contains("clients: "), "{text}");
    let output = std::process::Command::new(BIN)
        .args(["status", "--server", "ws://127.0.0.1:1/sync"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach"));
}

/// Every entry under `dir`, without following links: path, kind (`d`, `f`, or `l` and its
/// target), whether a file is executable, and a file's SHA-256.
fn tree(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let name = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                out.push(format!("{name} l {}", std::fs::read_link(&path).unwrap().display()));
            } else if meta.is_dir() {
                out.push(format!("{name} d"));
                stack.push(path);
            } else {
                let exec = meta.permissions().mode() & 0o100 != 0;
                let hash = assetsync_protocol::Hash::of(&std::fs::read(&path).unwrap()).to_hex();
                out.push(format!("{name} f x={exec} {}", &hash[..16]));
            }
        }
    }
    out.sort();
    out
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pulled_folder_is_the_servers_with_its_folders_links_and_modes_directly_and_through_an_edge() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let site = root.path().join("site");
    for dir in ["js/lib", "empty", "deep/er", "bin"] {
        std::fs::create_dir_all(site.join(dir)).unwrap();
    }
    std::fs::write(site.join("index.html"), b"<html>").unwrap();
    std::fs::write(site.join("js/app.js"), random_bytes(30_000, 70)).unwrap();
    std::fs::write(site.join("js/lib/util.js"), random_bytes(5_000, 71)).unwrap();
    std::fs::write(site.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    chmod(&site.join("bin/run.sh"), 0o755);
    symlink("js/app.js", site.join("latest.js")).unwrap();
    symlink("js/lib", site.join("vendor")).unwrap();
    // Links that lead out of the folder are left out, as before.
    symlink("../../etc", site.join("outside")).unwrap();
    symlink("/etc/hostname", site.join("absolute")).unwrap();
    let expected = |site: &Path| -> Vec<String> {
        tree(site).into_iter().filter(|e| !e.starts_with("outside") && !e.starts_with("absolute")).collect()
    };
    let origin = origin(root.path());
    let (client, keeper) = (TestClient::new(), TestClient::new());
    for c in [&client, &keeper] {
        c.pull_from(origin.url.clone(), &["site/"]).await.unwrap();
        assert_eq!(tree(&c.out("site")), expected(&site), "after the first pull");
        std::fs::write(c.out("site/mine.txt"), b"mine").unwrap();
        std::fs::create_dir_all(c.out("site/mine")).unwrap();
    }

    // Changes of every kind, and extras of the client's own.
    std::fs::remove_dir(site.join("empty")).unwrap();
    std::fs::create_dir_all(site.join("new/inner")).unwrap();
    chmod(&site.join("bin/run.sh"), 0o644);
    chmod(&site.join("js/lib/util.js"), 0o755);
    std::fs::remove_file(site.join("latest.js")).unwrap();
    symlink("js/lib/util.js", site.join("latest.js")).unwrap();
    std::fs::remove_file(site.join("vendor")).unwrap();
    std::fs::create_dir_all(site.join("vendor")).unwrap();
    std::fs::remove_file(site.join("index.html")).unwrap();
    client.pull_from(origin.url.clone(), &["site/"]).await.unwrap();
    assert_eq!(tree(&client.out("site")), expected(&site), "after the changes");

    // The server's shape did not change, so it is not sent again: the copy is mended to the
    // one the cache kept.
    std::fs::remove_dir_all(client.out("site/new")).unwrap();
    chmod(&client.out("site/js/lib/util.js"), 0o644);
    std::fs::remove_file(client.out("site/latest.js")).unwrap();
    client.pull_from(origin.url.clone(), &["site/"]).await.unwrap();
    assert_eq!(tree(&client.out("site")), expected(&site), "after local changes");

    // --no-delete keeps what the client has that the server does not.
    let config = assetsync::pull::PullConfig { no_delete: true, ..keeper.config(origin.url.clone()) };
    assetsync::pull::pull(&config, &[assetsync_protocol::Scope::new("site/").unwrap()], |_| {})
        .await
        .unwrap();
    let kept = tree(&keeper.out("site"));
    for extra in ["mine d", "index.html f", "mine.txt f", "empty d"] {
        assert!(kept.iter().any(|e| e.starts_with(extra)), "--no-delete removed {extra}: {kept:?}");
    }

    // An edge of that folder alone mirrors the same tree, and serves it so.
    std::fs::write(root.path().join("elsewhere.txt"), b"not in site/").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_with(&origin.url, dir.path(), "127.0.0.1:0", &["--upstream-scope", "site/"]);
    until(Duration::from_secs(30), "the edge mirrors the folder", async || {
        std::fs::read_dir(dir.path().join("files/site")).is_ok()
            && tree(&dir.path().join("files/site")) == expected(&site)
    })
    .await;
    let reader = TestClient::new();
    reader.pull_from(edge.url.clone(), &["site/"]).await.unwrap();
    assert_eq!(tree(&reader.out("site")), expected(&site), "pulled from the edge");
    assert!(!dir.path().join("files/elsewhere.txt").exists(), "the edge mirrored outside its scope");
}

/// An origin serving `root` on `listen`.
fn origin_at(root: &Path, listen: &str) -> Served {
    let mut command = std::process::Command::new(BIN);
    command.args(["serve", "--no-store", "--quiet-ms", "20", "--listen", listen, "--root"]).arg(root);
    Served::spawn(command)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_replaced_by_another_server_is_reported_and_its_files_replace_the_old_ones() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (first_root, second_root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (old, new) = (random_bytes(100_000, 80), random_bytes(100_000, 81));
    deploy(first_root.path(), ASSET, &old);
    deploy(second_root.path(), ASSET, &new);
    let mut first = origin_at(first_root.path(), &listen);
    let dir = tempfile::tempdir().unwrap();
    let edge = edge(&format!("ws://{listen}/sync"), dir.path());
    holds(dir.path(), ASSET, &old).await;
    let first_id = status(&edge).await["upstream"]["path"][0].clone();

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _second = origin_at(second_root.path(), &listen);
    edge.wait_for("the upstream is now a different server");
    holds(dir.path(), ASSET, &new).await;
    let status = status(&edge).await;
    assert_eq!(status["upstream"]["replaced"], 1, "{status}");
    assert_ne!(status["upstream"]["path"][0], first_id, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_whose_bytes_do_not_verify_leaves_the_edge_on_its_last_verified_version() {
    use crate::faults::{Fault, Proxy};
    let root = tempfile::tempdir().unwrap();
    let v1 = random_bytes(2 << 20, 82);
    deploy(root.path(), ASSET, &v1);
    let origin = origin(root.path());
    let addr: std::net::SocketAddr =
        origin.url.trim_start_matches("ws://").trim_end_matches("/sync").parse().unwrap();
    // The edge's connection carries v1 intact, then has a bit flipped every 997 bytes, and so
    // has every connection after it (from its 1,000th byte): whatever of v2 arrives is damaged,
    // however often it is asked for again or the edge reconnects.
    let mut plan = vec![Fault::FlipEvery(997, 2_300_000)];
    plan.extend(std::iter::repeat_n(Fault::FlipEvery(997, 1000), 500));
    let proxy = Proxy::to(addr, plan, std::sync::Arc::new(|| {})).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = edge(&proxy.url(), dir.path());
    holds(dir.path(), ASSET, &v1).await;

    deploy(root.path(), ASSET, &random_bytes(2 << 20, 83));
    until(Duration::from_secs(30), "damaged bytes reach the edge", async || proxy.flips() > 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read(dir.path().join("files").join(ASSET)).unwrap(),
        v1,
        "the edge wrote unverified bytes"
    );
    // Its clients get v1, whole.
    let reader = TestClient::new();
    reader.pull_from(edge.url.clone(), &[ASSET]).await.unwrap();
    assert_eq!(std::fs::read(reader.out(ASSET)).unwrap(), v1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_on_every_hop() {
    let root = tempfile::tempdir().unwrap();
    deploy(root.path(), ASSET, b"secret build");
    let secrets = tempfile::tempdir().unwrap();
    let (origin_token, edge_token) = (secrets.path().join("origin"), secrets.path().join("edge"));
    std::fs::write(&origin_token, "origin-secret\n").unwrap();
    std::fs::write(&edge_token, "edge-secret\n").unwrap();
    let origin = Served::start([
        "--no-store".as_ref(),
        "--token-file".as_ref(),
        origin_token.as_os_str(),
        "--root".as_ref(),
        root.path().as_os_str(),
    ]);
    // An edge without the origin's secret is refused, and says so.
    let (bad_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let refused = edge(&origin.url, bad_dir.path());
    refused.wait_for("cannot follow the upstream");
    let mut command = std::process::Command::new(BIN);
    command.args(["serve", "--no-store", "--listen", "127.0.0.1:0", "--upstream", &origin.url, "--edge-dir"]);
    command
        .arg(dir.path())
        .arg("--upstream-token-file")
        .arg(&origin_token)
        .arg("--token-file")
        .arg(&edge_token);
    let edge = Served::spawn(command);
    holds(dir.path(), ASSET, b"secret build").await;
    // The edge's clients need the edge's secret, not the origin's.
    let client = TestClient::new();
    let pull = |token: Option<&str>| {
        let config = assetsync::pull::PullConfig {
            token: token.map(str::to_owned),
            ..client.config(edge.url.clone())
        };
        async move {
            assetsync::pull::pull(&config, &[assetsync_protocol::Scope::new(ASSET).unwrap()], |_| {}).await
        }
    };
    for token in [None, Some("origin-secret")] {
        let e = pull(token).await.unwrap_err().to_string();
        assert!(e.contains("token"), "{token:?}: {e}");
    }
    pull(Some("edge-secret")).await.unwrap();
    assert_eq!(std::fs::read(client.out(ASSET)).unwrap(), b"secret build");
    // So does /status.
    let e = assetsync::status::fetch(&edge.url, None).await.unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("--token-file"), "{e}");
    let status = assetsync::status::fetch(&edge.url, Some("edge-secret")).await.unwrap();
    assert_eq!(status["upstream"]["state"], "following", "{status}");
}
