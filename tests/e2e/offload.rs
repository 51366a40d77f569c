//! CDN offload (`--offload-url`): large answers fetched over HTTP, through a real nginx cache
//! running `deploy/nginx.conf`, resumed with `Range` after a cut, served by any instance of a
//! shared store, and asked for over the WebSocket when HTTP fails.

use std::sync::Arc;

use assetsync::offload::OffloadConfig;
use assetsync::pull::PullReport;

use crate::faults::{Fault, Proxy};
use crate::services::Nginx;
use crate::util::{TestClient, TestServer, random_bytes};

const CHECK: &str = "the offload tests";

/// Offloads answers of 64 KiB or more to `url`.
fn offload(url: &str) -> Option<OffloadConfig> {
    Some(OffloadConfig { url: url.to_owned(), min_bytes: 64 << 10 })
}

/// A 4 MiB file and its next version, 1 MiB of it new: random bytes, so the answer stays
/// large once compressed.
fn versions() -> (Vec<u8>, Vec<u8>) {
    let v1 = random_bytes(4 << 20, 61);
    let mut v2 = v1.clone();
    v2[1 << 20..2 << 20].copy_from_slice(&random_bytes(1 << 20, 62));
    (v1, v2)
}

/// `client` pulled `asset` and its copy is `expected`.
async fn pulled(client: &TestClient, url: String, asset: &str, expected: &[u8]) -> PullReport {
    let report = client.pull_from(url, &[asset]).await.unwrap().remove(0);
    assert!(std::fs::read(client.out(asset)).unwrap() == expected, "{asset} differs from the server's");
    report
}

/// The lines of nginx's access log about offloaded objects: (request, status, body bytes,
/// cache status).
fn offload_log(nginx: &Nginx) -> Vec<(String, u16, u64, String)> {
    nginx
        .access_log()
        .lines()
        .filter(|l| l.contains("GET /offload/"))
        .map(|line| {
            let request = line.split('"').nth(1).unwrap().to_owned();
            let rest: Vec<&str> = line.rsplit('"').next().unwrap().split_whitespace().collect();
            let cache = rest[2].trim_start_matches("cache=").to_owned();
            (request, rest[0].parse().unwrap(), rest[1].parse().unwrap(), cache)
        })
        .collect()
}

/// Two clients in the same state fetch the same patch through nginx's cache: the WebSocket
/// carries only the plan, the origin serves the object once, and the second client's download,
/// cut in the middle, resumes with a `Range` request instead of starting over.
#[tokio::test(flavor = "multi_thread")]
async fn two_clients_fetch_one_offloaded_answer_through_nginx_which_asks_the_origin_once() {
    let server = TestServer::start_with(|c| c.offload = offload("/offload")).await;
    let Some(nginx) = Nginx::start(CHECK, &[server.addr.to_string()], None) else { return };
    let (v1, v2) = versions();
    server.write("app.js", &v1);
    let first = TestClient::new();
    let cold = pulled(&first, nginx.url(), "app.js", &v1).await;
    assert!(cold.http_bytes_in > 4_000_000 && cold.wire_bytes_in < 16 << 10, "{cold:?}");
    let second = first.copy();
    server.replace("app.js", &v2);

    let patch = pulled(&first, nginx.url(), "app.js", &v2).await;
    assert!(patch.http_bytes_in > 1 << 20, "the patch came over HTTP: {patch:?}");
    assert!(patch.http_bytes_in < 1_100_000, "only the changed megabyte: {patch:?}");
    assert!(patch.wire_bytes_in < 8 << 10, "the WebSocket carried only the plan: {patch:?}");

    // The second client's connections go through a proxy: its WebSocket whole, its download
    // cut after 512 KiB, then whole again.
    let cut = Proxy::to(nginx.addr(), vec![Fault::None, Fault::CutAfter(512 << 10)], Arc::new(|| {})).await;
    let resumed = pulled(&second, cut.url(), "app.js", &v2).await;
    assert_eq!(resumed.http_bytes_in, patch.http_bytes_in, "no byte fetched twice: {resumed:?}");
    assert_eq!(resumed.requests, 1, "resumed over HTTP, not asked for again: {resumed:?}");
    assert!(
        cut.forwarded() < patch.http_bytes_in + (16 << 10) + 2 * 1024,
        "{} bytes through the proxy for a {} byte object",
        cut.forwarded(),
        patch.http_bytes_in
    );

    let log = offload_log(&nginx);
    let of_patch: Vec<_> = log.iter().filter(|(_, _, bytes, _)| *bytes < 2 << 20).collect();
    let statuses: Vec<(u16, &str)> = of_patch.iter().map(|(_, s, _, c)| (*s, c.as_str())).collect();
    assert_eq!(statuses[0], (200, "MISS"), "the first client's fetch reached the origin: {log:?}");
    assert!(of_patch[1..].iter().all(|(_, _, _, c)| c == "HIT"), "the others came from the cache: {log:?}");
    assert_eq!(statuses.last().unwrap().0, 206, "the cut download resumed with a Range request: {log:?}");
    assert_eq!(of_patch.len(), 3, "{log:?}");
    server.stop().await;
}

/// An offload URL that refuses connections (a CDN down) or answers 404 costs a few retries or
/// none; then the answer comes over the WebSocket, and it is correct.
#[tokio::test(flavor = "multi_thread")]
async fn when_the_offload_url_fails_the_answer_comes_over_the_websocket() {
    let (v1, _) = versions();
    for (url, transient) in [("http://127.0.0.1:9/offload", true), ("/nowhere", false)] {
        let server = TestServer::start_with(|c| c.offload = offload(url)).await;
        server.write("app.js", &v1);
        let started = std::time::Instant::now();
        let report = TestClient::new().pull_and_check(&server, "app.js", &v1).await;
        assert_eq!((report.requests, report.http_bytes_in), (2, 0), "{url}: {report:?}");
        assert!(report.wire_bytes_in > 4_000_000, "{url}: {report:?}");
        // Backoff between the tries of a refused connection only (0.25 + 0.5 + 1 s).
        let waited = started.elapsed().as_millis();
        assert_eq!(waited >= 1_750, transient, "{url}: {waited} ms");
        server.stop().await;
    }
}

/// Two instances on one shared store: the object one of them put is served by the other.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_put_by_one_instance_is_served_by_another_from_the_shared_store() {
    let bucket = tempfile::tempdir().unwrap();
    let shared = format!("file://{}", bucket.path().display());
    let b = TestServer::start_with(|c| {
        c.shared_store = Some(shared.clone());
        c.offload = offload("/offload");
    })
    .await;
    let a = TestServer::start_with(|c| {
        c.root = b.root.path().to_path_buf();
        c.shared_store = Some(shared.clone());
        c.offload = offload(&format!("http://{}/offload", b.addr));
    })
    .await;
    let (v1, _) = versions();
    b.write("app.js", &v1);
    let report = TestClient::new().pull_and_check(&a, "app.js", &v1).await;
    assert!(report.http_bytes_in > 4_000_000 && report.requests == 1, "{report:?}");
    let objects = std::fs::read_dir(bucket.path().join("offload")).unwrap().count();
    assert_eq!(objects, 1, "A put the object in the shared store");
    a.stop().await;
    b.stop().await;
}
