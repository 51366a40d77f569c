//! The change bus (`--bus`): instances serving one build folder through a real Redis tell each
//! other's subscribers about changes only one of them saw.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::services::{CutProxy, Redis};
use crate::util::{TestClient, TestServer, random_bytes};
use crate::watch::Follower;

const CHECK: &str = "the change bus tests";

/// Instance B watches the shared root; instance A does not (as when only the machine that wrote
/// a shared volume gets file events). Both are on the bus at their own URL for it.
async fn two_instances(bus_b: String, bus_a: String) -> (TestServer, TestServer) {
    let b = TestServer::start_with(|c| c.bus = Some(bus_b)).await;
    let shared = b.root.path().to_path_buf();
    let a = TestServer::start_with(|c| {
        c.root = shared;
        c.watch = None;
        c.bus = Some(bus_a);
    })
    .await;
    (a, b)
}

/// Waits until the bus's hash holds news of `asset` from B's watcher (up to 30 s: a precondition,
/// not a measured speed, and a loaded machine once took over 10 s to see, hash and publish a new
/// file).
async fn published(redis: &Redis, asset: &str) {
    let mut conn = redis.connect().await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let news: Option<String> =
            redis::cmd("HGET").arg("assetsync:versions").arg(asset).query_async(&mut conn).await.unwrap();
        if news.is_some() {
            return;
        }
        assert!(Instant::now() < until, "{asset} was not published within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn edited(v1: &[u8]) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    v2[300_000..300_100].fill(7);
    v2
}

/// Rebuilds `app.js` (a 100-byte edit of `v1`) on B's side, and checks that `f`, subscribed on
/// A, gets the new version within 2 s, at patch level.
pub async fn an_edit_only_b_sees_reaches(f: &mut Follower, b: &TestServer, v1: &[u8]) {
    let v2 = edited(v1);
    let start = Instant::now();
    b.replace("app.js", &v2);
    let wire = f.pulled("app.js").await;
    let took = start.elapsed();
    assert_eq!(f.out("app.js").unwrap(), v2);
    assert!(wire < 64 * 1024, "a 100-byte edit cost {wire} bytes");
    assert!(took < Duration::from_secs(2), "the change took {took:?} to reach the subscriber");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_on_one_instance_hears_within_2s_of_changes_only_another_instance_saw() {
    let Some(redis) = Redis::start(CHECK) else { return };
    let (a, b) = two_instances(redis.url(), redis.url()).await;
    let v1 = random_bytes(1 << 20, 31);
    b.write("app.js", &v1);
    b.write("lib.js", b"lib, first");
    let mut f = Follower::start(&a, &["app.js", "lib.js"]);
    f.pulled("app.js").await;
    f.pulled("lib.js").await;
    // B serves lib.js too, so it publishes lib.js's versions; it only tells the bus that app.js
    // changed on disk. Either way A re-checks its own copy.
    TestClient::new().pull(&b, &["lib.js"]).await.unwrap();

    an_edit_only_b_sees_reaches(&mut f, &b, &v1).await;

    std::fs::remove_file(b.root.path().join("lib.js")).unwrap();
    f.removed("lib.js").await;
    assert!(f.out("lib.js").is_none());
    a.stop().await;
    b.stop().await;
}

/// A is cut off the bus while B publishes a change: the message is gone for good, and A learns
/// of the change from the hash when it reconnects.
#[tokio::test(flavor = "multi_thread")]
async fn news_missed_while_cut_off_the_bus_is_recovered_after_reconnecting() {
    let Some(redis) = Redis::start(CHECK) else { return };
    let proxy = CutProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let (a, b) = two_instances(redis.url(), format!("redis://{}", proxy.addr)).await;
    let v1 = random_bytes(1 << 20, 32);
    b.write("app.js", &v1);
    published(&redis, "app.js").await;
    let mut f = Follower::start(&a, &["app.js"]);
    f.pulled("app.js").await;

    // The test hears B's next message itself, so it knows when it has been and gone.
    let mut watcher = redis::Client::open(redis.url()).unwrap().get_async_pubsub().await.unwrap();
    watcher.subscribe("assetsync:changes").await.unwrap();
    proxy.cut();
    let v2 = edited(&v1);
    b.replace("app.js", &v2);
    let message = tokio::time::timeout(Duration::from_secs(10), watcher.on_message().next()).await;
    let message = message.expect("B published nothing within 10 s").unwrap();
    assert!(String::from_utf8_lossy(message.get_payload_bytes()).contains("app.js"));
    f.quiet_for(Duration::from_millis(500)).await;

    proxy.restore();
    f.pulled("app.js").await;
    assert_eq!(f.out("app.js").unwrap(), v2);
    a.stop().await;
    b.stop().await;
}

/// Redis itself dies, and comes back empty: the change made meanwhile still reaches A's
/// subscriber, because B keeps it until it can publish it.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_while_redis_is_down_is_published_once_it_is_back() {
    let Some(mut redis) = Redis::start(CHECK) else { return };
    let (a, b) = two_instances(redis.url(), redis.url()).await;
    let v1 = random_bytes(1 << 20, 33);
    b.write("app.js", &v1);
    let mut f = Follower::start(&a, &["app.js"]);
    f.pulled("app.js").await;

    redis.kill();
    let v2 = edited(&v1);
    b.replace("app.js", &v2);
    f.quiet_for(Duration::from_millis(700)).await;
    redis.restart();
    f.pulled("app.js").await;
    assert_eq!(f.out("app.js").unwrap(), v2);
    a.stop().await;
    b.stop().await;
}

/// A malformed bus URL is refused at start-up, naming the expected form.
#[tokio::test]
async fn a_malformed_bus_url_is_a_clear_startup_error() {
    let output = std::process::Command::new(crate::util::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--bus", "http://localhost:6379", "--root"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("redis://HOST:PORT"), "{stderr}");
}
