//! The version store (issue 15): remembered versions survive a restart and a deploy to a new
//! release folder, two servers cannot share one store, and a damaged store still serves exact
//! bytes.

use std::path::Path;
use std::process::Stdio;

use assetsync::StoreConfig;
use assetsync::store::Store;

use redb::ReadableTable;

use crate::util::{BIN, Served, TestClient, TestServer, random_bytes, real_bundle};

fn store_at(dir: &Path) -> Option<StoreConfig> {
    Some(StoreConfig { dir: dir.to_path_buf(), max_bytes: 1 << 30 })
}

/// Changes every stored chunk's bytes (one byte in 64 flipped), as bit rot that the file system
/// does not notice would.
fn damage_chunks(store: &Path) {
    edit_chunks(store, |chunks, ids| {
        for id in ids {
            let mut bytes = chunks.get(&id).unwrap().unwrap().value().to_vec();
            bytes.iter_mut().step_by(64).for_each(|b| *b ^= 0x20);
            chunks.insert(&id, bytes.as_slice()).unwrap();
        }
    });
}

/// [`crate::util::edit_chunks`] of the version store in `store`, which must hold some.
fn edit_chunks(store: &Path, edit: impl FnOnce(&mut redb::Table<&[u8; 32], &[u8]>, Vec<[u8; 32]>)) {
    crate::util::edit_chunks(&store.join("store.redb"), |chunks, ids| {
        assert!(!ids.is_empty(), "nothing stored");
        edit(chunks, ids);
    });
}

/// A rebuild of `bundle`: three edits of a few dozen bytes, as a small source change makes.
fn rebuilt(bundle: &[u8]) -> Vec<u8> {
    let mut out = bundle.to_vec();
    for (at, text) in
        [(0.2, "/* fixed a bug */"), (0.5, "const retries = 3;"), (0.8, "export const BUILD = 2;")]
    {
        let at = (out.len() as f64 * at) as usize;
        out.splice(at..at, text.bytes());
    }
    out
}

/// What one update costs on the wire, both ways.
fn wire(report: &assetsync::pull::PullReport) -> u64 {
    report.wire_bytes_in + report.wire_bytes_out
}

/// A client of v1 updating to v2 pays the same after the server restarted (with its store) as
/// without a restart; without the store, it pays much more (its version is unknown).
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_still_sends_patch_level_updates() {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    let (v1, v2) = (real_bundle(), rebuilt(&real_bundle()));
    server.write("app.js", &v1);
    let steady = TestClient::new();
    steady.pull_and_check(&server, "app.js", &v1).await;
    let (restarted, forgetful) = (steady.copy(), steady.copy());

    server.replace("app.js", &v2);
    let without_restart = wire(&steady.pull_and_check(&server, "app.js", &v2).await);

    let server = server.restart().await;
    let after_restart = wire(&restarted.pull_and_check(&server, "app.js", &v2).await);

    let server = server.restart_with(|c| c.store = None).await;
    let without_store = wire(&forgetful.pull_and_check(&server, "app.js", &v2).await);
    server.stop().await;

    println!(
        "update: {without_restart} B; after a restart: {after_restart} B; without a store: {without_store} B"
    );
    assert!(
        after_restart as f64 <= without_restart as f64 * 1.1,
        "after a restart the update cost {after_restart} B, against {without_restart} B without one"
    );
    assert!(
        after_restart * 2 < without_store,
        "the store made no difference: {after_restart} B vs {without_store} B"
    );
}

/// A deploy: a server started on a new release folder, with the store the old release's server
/// used, answers the old release's clients at patch level.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_release_folder_answers_the_old_releases_clients_at_patch_level() {
    let (store, releases) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (v1, v2) = (real_bundle(), rebuilt(&real_bundle()));
    for (release, bundle) in [("v1", &v1), ("v2", &v2)] {
        std::fs::create_dir_all(releases.path().join(release).join("js")).unwrap();
        std::fs::write(releases.path().join(release).join("js/app.js"), bundle).unwrap();
    }
    let release = |name: &str| releases.path().join(name);
    let server = TestServer::start_with(|c| {
        c.store = store_at(store.path());
        c.root = release("v1");
    })
    .await;
    let client = TestClient::new();
    client.pull_and_check(&server, "js/app.js", &v1).await;
    let server = server.restart_with(|c| c.root = release("v2")).await;
    let report = client.pull_and_check(&server, "js/app.js", &v2).await;
    server.stop().await;
    assert_eq!(report.requests, 1, "the new release's server did not know the client's version");
    assert!(wire(&report) < 5_000, "the deploy's update cost {} B", wire(&report));
}

/// A second server pointed at a store in use refuses to start, saying why; the first one keeps
/// serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_store_refuses_to_start() {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    server.write("app.js", b"first");
    let root = tempfile::tempdir().unwrap();
    let second = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root", root.path().to_str().unwrap(), "--store"])
        .arg(store.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(stderr.contains("in use by another assetsync server"), "{stderr}");
    TestClient::new().pull_and_check(&server, "app.js", b"first").await;
    server.stop().await;
}

/// Damaged stored bytes are found out when they are read: the server forgets that version and
/// its client still ends up with the exact new file.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_still_serves_exact_bytes() {
    damaged_store_serves_exact_bytes(damage_chunks).await;
}

/// A chunk missing from the store (a version kept, one of its chunks gone) is found out the same
/// way.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_missing_a_chunk_still_serves_exact_bytes() {
    damaged_store_serves_exact_bytes(|store| {
        edit_chunks(store, |chunks, ids| {
            chunks.remove(&ids[ids.len() / 2]).unwrap();
        })
    })
    .await;
}

async fn damaged_store_serves_exact_bytes(damage: impl FnOnce(&Path)) {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    let (v1, v2) = (real_bundle(), rebuilt(&real_bundle()));
    server.write("app.js", &v1);
    let client = TestClient::new();
    client.pull_and_check(&server, "app.js", &v1).await;
    server.stop().await;
    damage(store.path());
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    server.write("app.js", &v2);
    let report = client.pull_and_check(&server, "app.js", &v2).await;
    server.stop().await;
    // The server found the damage: the client was not sent chunks it could not decode.
    assert!(!report.retried, "the client had to retry: the server used damaged bytes");
}

/// A freshly provisioned machine: an empty store, the new release as root and the previous one
/// named by `history`. The previous release's clients still get patch-level updates.
#[tokio::test(flavor = "multi_thread")]
async fn history_folders_seed_an_empty_store() {
    let releases = tempfile::tempdir().unwrap();
    let (v1, v2) = (real_bundle(), rebuilt(&real_bundle()));
    let release = |name: &str| releases.path().join(name);
    for (name, bundle) in [("v1", &v1), ("v2", &v2)] {
        std::fs::create_dir_all(release(name).join("js")).unwrap();
        std::fs::write(release(name).join("js/app.js"), bundle).unwrap();
        std::fs::write(release(name).join(format!("only-in-{name}.txt")), name).unwrap();
    }
    // The old machine, whose memory is lost.
    let old = TestServer::start_with(|c| c.root = release("v1")).await;
    let client = TestClient::new();
    client.pull_and_check(&old, "js/app.js", &v1).await;
    old.stop().await;

    let store = tempfile::tempdir().unwrap();
    let new = TestServer::start_with(|c| {
        c.root = release("v2");
        c.store = store_at(store.path());
        c.history = vec![release("v1")];
    })
    .await;
    let report = client.pull_and_check(&new, "js/app.js", &v2).await;
    new.stop().await;
    assert_eq!(report.requests, 1, "the new machine did not know the old release's version");
    assert!(wire(&report) < 5_000, "the update cost {} B", wire(&report));
}

/// The best-level answer, computed in the background after the first (fast-level) one, is kept
/// in the store: after a restart, the next client in the same state gets it at once.
#[tokio::test(flavor = "multi_thread")]
async fn best_answers_survive_a_restart() {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    let v1 = real_bundle();
    // A minifier-style rename: many chunks change, little text.
    let v2 = String::from_utf8_lossy(&v1).replace("Vector3", "Vec3").into_bytes();
    server.write("app.js", &v1);
    let client = TestClient::new();
    client.pull_and_check(&server, "app.js", &v1).await;
    let later = client.copy();
    server.replace("app.js", &v2);
    let first = wire(&client.copy().pull_and_check(&server, "app.js", &v2).await);
    // Wait for the background's best-level answer to replace the first one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let best = loop {
        let cost = wire(&client.copy().pull_and_check(&server, "app.js", &v2).await);
        if cost < first {
            break cost;
        }
        assert!(std::time::Instant::now() < deadline, "no best-level answer after 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let server = server.restart().await;
    let after_restart = wire(&later.pull_and_check(&server, "app.js", &v2).await);
    server.stop().await;
    println!("first answer {first} B, best {best} B, after a restart {after_restart} B");
    assert_eq!(after_restart, best, "the restarted server did not answer with the stored best answer");
}

/// After a deploy, the server computes the best-level answer for the previous release's clients
/// before any of them asks (and says so in its log): the first client gets the same small answer
/// as every later one, not the fast-level one.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_client_after_a_deploy_gets_the_best_answer() {
    let (store, releases) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let v1 = real_bundle();
    let v2 = String::from_utf8_lossy(&v1).replace("Vector3", "Vec3").into_bytes();
    for (release, bundle) in [("v1", &v1), ("v2", &v2)] {
        std::fs::create_dir_all(releases.path().join(release)).unwrap();
        std::fs::write(releases.path().join(release).join("app.js"), bundle).unwrap();
    }
    let old = TestServer::start_with(|c| {
        c.store = store_at(store.path());
        c.root = releases.path().join("v1");
    })
    .await;
    let client = TestClient::new();
    client.pull_and_check(&old, "app.js", &v1).await;
    old.stop().await;

    let server = Served::start([
        "--no-watch".as_ref(),
        "--root".as_ref(),
        releases.path().join("v2").as_os_str(),
        "--store".as_ref(),
        store.path().as_os_str(),
    ]);
    let ahead = server.wait_for("answers computed ahead");
    let url = server.url.clone();
    let first = client.copy().pull_from(url.clone(), &["app.js"]).await.unwrap().remove(0);
    let second = client.copy().pull_from(url, &["app.js"]).await.unwrap().remove(0);
    drop(server);
    println!("{ahead}first client: {} B, second: {} B", wire(&first), wire(&second));
    assert!(ahead.contains("app.js"), "{ahead}");
    assert_eq!(wire(&first), wire(&second), "the first client after the deploy got another answer");
}

/// `assetsync store stats` counts what a store holds; `store verify` finds damaged chunks and
/// drops them with the versions that need them, and refuses a store a server has open.
#[tokio::test(flavor = "multi_thread")]
async fn store_verify_drops_damaged_chunks_and_their_versions() {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    server.write("app.js", &real_bundle());
    server.write("lib/small.js", b"export const small = 1;");
    let client = TestClient::new();
    client.pull(&server, &["app.js", "lib/small.js"]).await.unwrap();
    let cli = |args: &[&str]| {
        let out =
            std::process::Command::new(BIN).args(args).arg("--store").arg(store.path()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, stderr) = cli(&["store", "stats"]);
    assert!(!ok && stderr.contains("in use by a running server: stop it first"), "{stderr}");
    server.stop().await;

    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let (ok, stdout, stderr) = cli(&["store", "stats", "--json"]);
    assert!(ok, "{stderr}");
    let stats = json(&stdout);
    assert_eq!(
        (stats["versions"].as_u64(), stats["assets"]["app.js"].as_u64()),
        (Some(2), Some(1)),
        "{stats}"
    );
    assert!(stats["chunk_bytes"].as_u64().unwrap() >= real_bundle().len() as u64, "{stats}");

    let (ok, stdout, stderr) = cli(&["store", "verify", "--json"]);
    assert!(ok, "{stderr}");
    assert_eq!(json(&stdout)["damaged_chunks"].as_u64(), Some(0), "{stdout}");
    damage_chunks(store.path());
    let (ok, stdout, stderr) = cli(&["store", "verify", "--json"]);
    assert!(ok, "{stderr}");
    let report = json(&stdout);
    assert!(report["damaged_chunks"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["incomplete_versions"].as_u64(), Some(2), "{report}");
    let (_, stdout, _) = cli(&["store", "stats", "--json"]);
    assert_eq!(json(&stdout)["versions"].as_u64(), Some(0), "{stdout}");
}

/// With --store-max-bytes, the store drops its oldest versions to stay within it, never the
/// current one; a client of a dropped version still gets exact bytes (from its chunk set).
#[tokio::test(flavor = "multi_thread")]
async fn the_store_stays_within_its_size_limit() {
    let store = tempfile::tempdir().unwrap();
    const MIB: u64 = 1 << 20;
    let server = TestServer::start_with(|c| {
        c.store = Some(StoreConfig { dir: store.path().to_path_buf(), max_bytes: 5 * MIB / 2 });
    })
    .await;
    let mut clients = Vec::new();
    for n in 0..5 {
        let data = random_bytes(MIB as usize, n);
        server.replace("big.bin", &data);
        let client = TestClient::new();
        client.pull_and_check(&server, "big.bin", &data).await;
        clients.push(client);
    }
    let last = random_bytes(MIB as usize, 99);
    server.replace("big.bin", &last);
    // The newest earlier version is still known: one request; the oldest is not: two.
    let recent = clients.pop().unwrap().pull_and_check(&server, "big.bin", &last).await;
    let oldest = clients.remove(0).pull_and_check(&server, "big.bin", &last).await;
    server.stop().await;
    assert_eq!((recent.requests, oldest.requests), (1, 2));
    let (opened, _) = Store::open(store.path(), u64::MAX, |_| {}).unwrap();
    let stats = opened.stats().unwrap();
    assert!(stats.chunk_bytes <= 5 * MIB / 2, "{stats:?}");
    assert_eq!(stats.versions, 2, "{stats:?}");
}

/// A server killed with SIGKILL at any moment, while it indexes, answers and writes its store,
/// restarts on that store, and every client still ends with the exact bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_at_random_moments_restarts_and_serves_exact_bytes() {
    let (root, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let seed: u64 = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    println!("KILL_SEED={seed}");
    let mut rng = seed;
    let mut next = move |below: u64| {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) % below
    };
    let clients: Vec<TestClient> = (0..4).map(|_| TestClient::new()).collect();
    let files = ["app.js", "lib/a.js", "lib/b.js"];
    let mut contents = Vec::new();
    for round in 0..6u64 {
        // A new release: each file edited, the bundle a real one with its text shifted.
        contents = files
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let mut data = if i == 0 { real_bundle() } else { random_bytes(300_000, i as u64) };
                data.splice(0..0, format!("/* release {round} */").bytes());
                data.extend(random_bytes(2_000, round * 10 + i as u64));
                data
            })
            .collect();
        for (file, data) in files.iter().zip(&contents) {
            let path = root.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, data).unwrap();
        }
        let mut server = Served::start([
            "--root".as_ref(),
            root.path().as_os_str(),
            "--store".as_ref(),
            store.path().as_os_str(),
        ]);
        let url = server.url.clone();
        // Clients pull while the server is killed at a random moment.
        let pulls: Vec<_> = clients
            .iter()
            .map(|c| {
                let config = c.config(url.clone());
                tokio::spawn(async move {
                    let targets: Vec<_> =
                        files.iter().map(|f| assetsync_protocol::Scope::new(f).unwrap()).collect();
                    let _ = assetsync::pull::pull(&config, &targets, |_| {}).await;
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(next(400))).await;
        server.child.kill().unwrap();
        for pull in pulls {
            pull.abort();
            let _ = pull.await;
        }
    }
    // A last server on the store the kills left: every client ends with the exact bytes.
    let server = TestServer::start_with(|c| {
        c.store = store_at(store.path());
        c.root = root.path().to_path_buf();
    })
    .await;
    for client in &clients {
        for (file, data) in files.iter().zip(&contents) {
            client.pull_and_check(&server, file, data).await;
        }
    }
    server.stop().await;
    let (opened, _) = Store::open(store.path(), u64::MAX, |_| {}).unwrap();
    let report = opened.verify().unwrap();
    assert_eq!((report.damaged_chunks, report.incomplete_versions), (0, 0), "{report:?}");
}

/// A store that cannot be written (here: the file size limit reached, as a full disk would
/// fail it) never breaks serving: the server says so once and keeps new versions in memory,
/// so their clients still get exact bytes and small updates.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_be_written_leaves_serving_intact() {
    let (root, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Writes past 3 MiB fail with EFBIG (SIGXFSZ ignored, as its default would kill the process).
    let command = format!(
        "trap '' XFSZ; ulimit -f 3072; exec '{BIN}' serve --listen 127.0.0.1:0 --no-watch --root '{}' --store '{}'",
        root.path().display(),
        store.path().display()
    );
    let mut bash = std::process::Command::new("bash");
    bash.args(["-c", &command]);
    let server = Served::spawn(bash);
    let url = server.url.clone();
    let client = TestClient::new();
    let mut last = Vec::new();
    for n in 0..6 {
        let old = std::mem::replace(&mut last, random_bytes(1 << 20, n));
        last.splice(0..0, old.iter().take(200_000).copied());
        std::fs::write(root.path().join("big.bin"), &last).unwrap();
        let report = client.pull_from(url.clone(), &["big.bin"]).await.unwrap().remove(0);
        assert_eq!(std::fs::read(client.out("big.bin")).unwrap(), last);
        if n > 0 {
            // The version before is known (from memory once the store failed): one request.
            assert_eq!(report.requests, 1, "round {n}");
        }
    }
    let said = server.said("cannot write the version store");
    assert_eq!(said.len(), 1, "the server should say once that it cannot write its store: {said:?}");
}

/// Folder listings survive a restart: an unchanged folder is one short round trip even from a
/// server without a store (it knows its current listing's version), and a changed one travels
/// as a delta from a server with one (without it, the client names each file's version).
#[tokio::test(flavor = "multi_thread")]
async fn folder_listings_survive_a_restart() {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    for i in 0..1_000 {
        server.write(&format!("dist/f{i}.js"), format!("export const f{i} = {i};").as_bytes());
    }
    let client = TestClient::new();
    client.pull(&server, &["dist/"]).await.unwrap();
    let folder_wire = |client: &TestClient, server: &TestServer| {
        let config = client.config(server.url());
        async move {
            let mut wire = 0;
            let targets = [assetsync_protocol::Scope::new("dist/").unwrap()];
            assetsync::pull::pull(&config, &targets, |e| {
                if let assetsync::pull::PullEvent::Folder(f) = e {
                    wire = f.wire_bytes_in + f.wire_bytes_out;
                }
            })
            .await
            .unwrap();
            wire
        }
    };

    let server = server.restart_with(|c| c.store = None).await;
    let unchanged = folder_wire(&client, &server).await;
    assert!(unchanged < 1_024, "an unchanged folder cost {unchanged} B after a restart");

    let server = server.restart_with(|c| c.store = store_at(store.path())).await;
    server.write("dist/f7.js", b"export const f7 = 'edited';");
    let changed = folder_wire(&client, &server).await;
    assert_eq!(std::fs::read(client.out("dist/f7.js")).unwrap(), b"export const f7 = 'edited';");

    let server = server.restart_with(|c| c.store = None).await;
    server.write("dist/f8.js", b"export const f8 = 'edited';");
    let without = folder_wire(&client, &server).await;
    server.stop().await;
    println!(
        "unchanged: {unchanged} B; one file changed: {changed} B, {without} B without the stored listing"
    );
    assert!(changed * 10 < without, "the stored listing saved nothing: {changed} B against {without} B");
}

/// Kept answers stay within a quarter of --store-max-bytes, the oldest dropped first.
#[tokio::test(flavor = "multi_thread")]
async fn kept_answers_stay_within_their_budget() {
    let store = tempfile::tempdir().unwrap();
    const MAX: u64 = 400_000;
    let server = TestServer::start_with(|c| {
        c.store = Some(StoreConfig { dir: store.path().to_path_buf(), max_bytes: MAX });
    })
    .await;
    // Hex text, which compresses to about half: each cold answer (about 50 KB) is kept at once
    // (small enough for the best level), and two of them pass the budget.
    for file in 0..4u64 {
        let text = hex::encode(random_bytes(50_000, file));
        server.write(&format!("f{file}.txt"), text.as_bytes());
        TestClient::new().pull(&server, &[&format!("f{file}.txt")]).await.unwrap();
    }
    server.stop().await;
    let (opened, _) = Store::open(store.path(), u64::MAX, |_| {}).unwrap();
    let stats = opened.stats().unwrap();
    assert!(stats.answers >= 1 && stats.answer_bytes <= MAX / 4, "{stats:?}");
    assert!(stats.answers < 4, "no answer was dropped: {stats:?}");
}

/// An asset larger than the compression window is compressed against the end of its old
/// version only (all a 2^26-byte window can reach), read back from the store after a restart:
/// its client still rebuilds the exact file, and an edit near the end costs little.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_asset_updates_against_the_end_of_its_old_version() {
    const MIB: usize = 1 << 20;
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| c.store = store_at(store.path())).await;
    let v1 = random_bytes(72 * MIB, 72);
    server.write("big.bin", &v1);
    let client = TestClient::new();
    client.pull_and_check(&server, "big.bin", &v1).await;
    let mut v2 = v1.clone();
    v2.splice(70 * MIB..70 * MIB, b"an edit near the end".iter().copied());
    server.replace("big.bin", &v2);
    let server = server.restart().await;
    let report = client.pull_and_check(&server, "big.bin", &v2).await;
    server.stop().await;
    assert_eq!(report.requests, 1);
    // The chunk with the edit, compressed against the old bytes around it.
    assert!(wire(&report) < 8_192, "an edit near the end cost {} B", wire(&report));
}
