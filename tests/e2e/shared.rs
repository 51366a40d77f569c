//! The shared store (`--shared-store`): instances with different roots and no version store
//! of their own use the versions and answers the others wrote.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::faults::{Fault, Proxy};
use crate::services::{Nginx, Redis, S3};
use crate::util::{Served, TestClient, TestServer, random_bytes};

/// Waits (up to 10 s) until `dir` holds `n` files, and returns them with their modification
/// times.
pub fn wait_for_objects(dir: &Path, n: usize) -> Vec<(PathBuf, SystemTime)> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<(PathBuf, SystemTime)> = std::fs::read_dir(dir).map_or(Vec::new(), |d| {
            d.map(|e| e.unwrap().path())
                .map(|p| (p.clone(), std::fs::metadata(p).unwrap().modified().unwrap()))
                .collect()
        });
        assert!(files.len() <= n, "{files:?}");
        if files.len() == n {
            let mut files = files;
            files.sort();
            return files;
        }
        assert!(Instant::now() < until, "{} holds {} files, not {n}, after 10 s", dir.display(), files.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test server with no version store, on the shared store in the folder `shared`.
async fn on_shared_folder(shared: &Path) -> TestServer {
    let url = format!("file://{}", shared.display());
    TestServer::start_with(move |c| {
        c.shared_store = Some(url);
        c.store = None;
    })
    .await
}

/// A serves release 1, B and C release 2, all on one shared store and none with a version
/// store. A client that synced v1 from A updates from B at patch level (B never saw v1: it
/// reads v1 from the shared store); a second such client updates from C with the answer B
/// computed, which C does not compute again.
#[tokio::test(flavor = "multi_thread")]
async fn instances_on_one_shared_store_answer_each_others_clients_at_patch_level_and_encode_once() {
    let shared = tempfile::tempdir().unwrap();
    let start = || on_shared_folder(shared.path());
    let (a, b, c) = (start().await, start().await, start().await);
    let v1 = random_bytes(1 << 20, 44);
    let mut v2 = v1.clone();
    v2[600_000..600_100].fill(3);
    a.write("app.js", &v1);
    b.write("app.js", &v2);
    c.write("app.js", &v2);

    let first = TestClient::new();
    first.pull_and_check(&a, "app.js", &v1).await;
    wait_for_objects(&shared.path().join("manifests"), 1);
    // A's best-level cold answer, computed in the background.
    let answers = shared.path().join("answers");
    wait_for_objects(&answers, 1);
    let second = first.copy();

    let report = first.pull_and_check(&b, "app.js", &v2).await;
    assert!(report.wire_bytes_in < 4096, "B sent {} bytes for a 100-byte edit", report.wire_bytes_in);
    // B computed the best-level update in the background and shared it (its warm-up may write
    // the same answer once more: wait until nothing changes for half a second).
    let mut written = wait_for_objects(&answers, 2);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = wait_for_objects(&answers, 2);
        if std::mem::replace(&mut written, now) == written {
            break;
        }
    }

    let report = second.pull_and_check(&c, "app.js", &v2).await;
    assert!(report.wire_bytes_in < 4096, "C sent {} bytes for a 100-byte edit", report.wire_bytes_in);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_for_objects(&answers, 2), written, "C computed and wrote an answer again");
    for server in [a, b, c] {
        server.stop().await;
    }
}

const CHECK: &str = "the S3 shared store tests";

/// Release 1 (`app.js`, 1 MiB) and release 2 (a 100-byte edit) in folders of their own.
fn releases() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    releases_of(1 << 20, 700_000)
}

/// [`releases`] with an `app.js` of `len` bytes, edited at `at`.
fn releases_of(len: usize, at: usize) -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let v1 = random_bytes(len, 45);
    let mut v2 = v1.clone();
    v2[at..at + 100].fill(5);
    for (release, data) in [("1", &v1), ("2", &v2)] {
        std::fs::create_dir(dir.path().join(release)).unwrap();
        std::fs::write(dir.path().join(release).join("app.js"), data).unwrap();
    }
    (dir, v1, v2)
}

/// `assetsync serve` on `root` with no version store of its own, sharing through the bucket
/// reached at `endpoint`, logging at debug level, not watching its root.
fn serve_on_s3(root: &Path, endpoint: std::net::SocketAddr) -> Served {
    serve_on_s3_with(root, endpoint, &["--no-watch"])
}

/// [`serve_on_s3`] with `extra` arguments instead of `--no-watch`.
fn serve_on_s3_with(root: &Path, endpoint: std::net::SocketAddr, extra: &[&str]) -> Served {
    let mut command = std::process::Command::new(crate::util::BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--no-store", "--root"])
        .arg(root)
        .args(extra)
        .args(["--shared-store", &format!("s3://{}/site", S3::BUCKET)])
        .envs(S3::env(endpoint))
        .env("RUST_LOG", "assetsync=debug,warn");
    Served::spawn(command)
}

/// Pulls `app.js` from `url` and checks it is `expected`; returns the bytes received.
async fn pull_app(client: &TestClient, url: &str, expected: &[u8]) -> u64 {
    let report = client.pull_from(url.to_owned(), &["app.js"]).await.unwrap().remove(0);
    assert_eq!(std::fs::read(client.out("app.js")).unwrap(), expected);
    report.wire_bytes_in
}

/// Waits (up to 10 s) until the bucket holds `n` objects under `prefix`.
fn wait_for_keys(s3: &S3, prefix: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while s3.keys(prefix).len() != n {
        assert!(Instant::now() < until, "{prefix}: {:?}, not {n} objects, after 10 s", s3.keys(prefix));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same as the file:// test, on a real S3 API (moto): A serves release 1, B and C release
/// 2. B updates A's client at patch level from the bucket; C answers a second such client with
/// the answer B put there, without encoding one (its log says which).
#[tokio::test(flavor = "multi_thread")]
async fn instances_on_one_s3_bucket_share_versions_and_answers() {
    let Some(s3) = S3::start(CHECK) else { return };
    let (dir, v1, v2) = releases();
    let a = serve_on_s3(&dir.path().join("1"), s3.addr());
    let b = serve_on_s3(&dir.path().join("2"), s3.addr());
    let c = serve_on_s3(&dir.path().join("2"), s3.addr());

    let first = TestClient::new();
    pull_app(&first, &a.url, &v1).await;
    wait_for_keys(&s3, "site/manifests/", 1);
    wait_for_keys(&s3, "site/answers/", 1); // A's best-level cold answer
    let second = first.copy();
    let wire = pull_app(&first, &b.url, &v2).await;
    assert!(wire < 4096, "B sent {wire} bytes for a 100-byte edit");
    wait_for_keys(&s3, "site/answers/", 2);

    let wire = pull_app(&second, &c.url, &v2).await;
    assert!(wire < 4096, "C sent {wire} bytes for a 100-byte edit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = c.said("");
    assert!(log.iter().any(|l| l.contains("answer read from the shared store")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("encoding an answer")), "C encoded: {log:#?}");
}

/// A version larger than a part (16 MiB) goes up as a multipart upload; another instance
/// still reads its end back (ranged, chunk by chunk checked) and answers with a patch.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_larger_than_a_part_is_uploaded_in_parts_and_still_serves_patches() {
    let Some(s3) = S3::start(CHECK) else { return };
    let (dir, v1, v2) = releases_of(36 << 20, 30 << 20);
    let a = serve_on_s3(&dir.path().join("1"), s3.addr());
    let b = serve_on_s3(&dir.path().join("2"), s3.addr());
    let client = TestClient::new();
    pull_app(&client, &a.url, &v1).await;
    wait_for_keys(&s3, "site/manifests/", 1);
    let files = s3.objects("site/files/");
    // 36 MiB in parts of 16 MiB: the ETag of a 3-part upload.
    assert!(files[0].1.trim_matches('"').ends_with("-3"), "{files:?}");
    let wire = pull_app(&client, &b.url, &v2).await;
    assert!(wire < 4096, "B sent {wire} bytes for a 100-byte edit");
}

/// The bucket is reached through a proxy that cuts a third of its connections part-way and
/// flips a bit every 997 bytes in another third: every client still ends with the exact bytes of
/// both releases.
#[tokio::test(flavor = "multi_thread")]
async fn every_client_ends_correct_when_the_object_store_fails_a_fraction_of_requests() {
    let Some(s3) = S3::start(CHECK) else { return };
    let plan = (0..400)
        .map(|i| match i % 3 {
            1 => Fault::CutAfter(200 + (i * 997) % 30_000),
            2 => Fault::FlipEvery(997, (i * 131) % 400),
            _ => Fault::None,
        })
        .collect();
    let faulty = Proxy::to(s3.addr(), plan, std::sync::Arc::new(|| {})).await;
    let (dir, v1, v2) = releases();
    let a = serve_on_s3(&dir.path().join("1"), faulty.addr);
    let b = serve_on_s3(&dir.path().join("2"), faulty.addr);
    let mut updates = Vec::new();
    for _ in 0..8 {
        let client = TestClient::new();
        pull_app(&client, &a.url, &v1).await;
        updates.push(pull_app(&client, &b.url, &v2).await);
    }
    eprintln!(
        "{} connections to the store, {} bits flipped; update bytes per client: {updates:?}",
        faulty.connections(),
        faulty.flips()
    );
    assert!(faulty.connections() >= 4, "only {} connections to the store", faulty.connections());
    assert!(faulty.flips() > 0, "no bit was flipped");
}

/// The bucket's address answers nothing: the instance serves from its root as if it had no
/// shared store, says so once, and does not wait on the store for every request.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_object_store_costs_nothing_but_the_sharing() {
    let (dir, v1, _) = releases();
    let nowhere: std::net::SocketAddr = ([127, 0, 0, 1], crate::services::free_port()).into();
    let a = serve_on_s3(&dir.path().join("1"), nowhere);
    let started = Instant::now();
    for _ in 0..5 {
        pull_app(&TestClient::new(), &a.url, &v1).await;
    }
    let took = started.elapsed();
    let warnings: Vec<String> = a.said("serving without it");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    // Each request waiting out the store's retries would take seconds.
    assert!(took < Duration::from_secs(10), "5 cold pulls took {took:?}");
}

/// Pulls the folder `dist/` from `url` into `client`: the folder's report.
async fn pull_dist(client: &TestClient, url: String) -> assetsync::pull::FolderReport {
    let mut report = None;
    let targets = [assetsync_protocol::Scope::new("dist/").unwrap()];
    assetsync::pull::pull(&client.config(url), &targets, |e| {
        if let assetsync::pull::PullEvent::Folder(r) = e {
            report = Some(r.clone());
        }
    })
    .await
    .unwrap();
    report.expect("no folder report")
}

/// A folder: a client that synced release 1's `dist/` from A updates it from B, which never
/// listed it nor saw its files. B reads the client's listing, and its versions of the two
/// changed files, from the shared store, and sends patches.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_synced_from_one_instance_updates_from_another_at_patch_level() {
    let shared = tempfile::tempdir().unwrap();
    let start = || on_shared_folder(shared.path());
    let (a, b) = (start().await, start().await);
    for i in 0..10u64 {
        let v1 = random_bytes(256 << 10, 100 + i);
        let mut v2 = v1.clone();
        if i == 3 || i == 7 {
            v2[100_000..100_100].fill(1);
        }
        a.write(&format!("dist/f{i}.js"), &v1);
        b.write(&format!("dist/f{i}.js"), &v2);
    }
    let client = TestClient::new();
    pull_dist(&client, a.url()).await;
    wait_for_objects(&shared.path().join("manifests"), 10);
    wait_for_objects(&shared.path().join("listings"), 1);

    let report = pull_dist(&client, b.url()).await;
    assert_eq!(report.fetched, ["dist/f3.js", "dist/f7.js"]);
    assert!(report.wire_bytes_in < 4096, "B sent {} bytes for two 100-byte edits", report.wire_bytes_in);
    for i in 0..10 {
        let asset = format!("dist/f{i}.js");
        assert_eq!(
            std::fs::read(client.out(&asset)).unwrap(),
            std::fs::read(b.root.path().join(&asset)).unwrap()
        );
    }
    a.stop().await;
    b.stop().await;
}

/// Two instances on one bucket and one bus, behind nginx, serve v1; a rebuild is seen by B's
/// watcher only and reaches A through the bus, and both compute answers ahead for their v1
/// clients. They claim the new answer through the bus: one encodes it, the other fetches it,
/// and clients reconnecting through nginx, to either instance, get the same patch.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_rebuild_two_instances_on_one_bus_and_bucket_encode_the_new_answer_once() {
    let (Some(s3), Some(redis)) = (S3::start(CHECK), Redis::start(CHECK)) else { return };
    let root = tempfile::tempdir().unwrap();
    let v1 = random_bytes(2 << 20, 46);
    let mut v2 = v1.clone();
    v2[1_000_000..1_000_100].fill(6);
    std::fs::write(root.path().join("app.js"), &v1).unwrap();
    let a = serve_on_s3_with(root.path(), s3.addr(), &["--no-watch", "--bus", &redis.url()]);
    let b = serve_on_s3_with(root.path(), s3.addr(), &["--bus", &redis.url()]);
    let host = |s: &Served| s.url.trim_start_matches("ws://").trim_end_matches("/sync").to_owned();
    let Some(nginx) = Nginx::start(CHECK, &[host(&a), host(&b)], None) else { return };
    // Each instance serves v1 to a client of its own.
    let clients: Vec<TestClient> = (0..4).map(|_| TestClient::new()).collect();
    for (i, client) in clients.iter().enumerate() {
        pull_app(client, if i % 2 == 0 { &a.url } else { &b.url }, &v1).await;
    }
    wait_for_keys(&s3, "site/answers/", 1); // the cold answer

    // A rebuild: a temporary file, then a rename.
    std::fs::write(root.path().join("app.js.tmp"), &v2).unwrap();
    std::fs::rename(root.path().join("app.js.tmp"), root.path().join("app.js")).unwrap();
    wait_for_keys(&s3, "site/answers/", 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Through nginx's round robin, to either instance.
    for client in &clients {
        let wire = pull_app(client, &nginx.url(), &v2).await;
        assert!(wire < 4096, "{wire} bytes for a 100-byte edit");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let encoded: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|s| s.said("encoding an answer"))
        .filter(|l| l.contains("delta=true"))
        .collect();
    assert_eq!(encoded.len(), 1, "{encoded:#?}");
}

/// `serve --store URL` is `--no-store --shared-store URL`: versions go to the object store
/// alone; naming two object stores is refused.
#[tokio::test(flavor = "multi_thread")]
async fn store_given_an_object_store_url_keeps_versions_there_alone() {
    let (dir, v1, _) = releases();
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let root = dir.path().join("1");
    let server = Served::start(["--store".as_ref(), url.as_ref(), "--root".as_ref(), root.as_os_str()]);
    server.wait_for(&format!("versions kept in {url} only"));
    pull_app(&TestClient::new(), &server.url, &v1).await;
    assert!(!wait_for_objects(&bucket.path().join("manifests"), 1).is_empty());

    let both = std::process::Command::new(crate::util::BIN)
        .args(["serve", "--store", &url, "--shared-store", &url, "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success() && stderr.contains("both name an object store"), "{stderr}");
}
