//! Behind a real nginx running `deploy/nginx.conf`: the WebSocket upgrade on `/sync`,
//! subscriptions kept open through silence, the `Origin` and token checks, and an instance killed
//! in the middle of a transfer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use assetsync::pull::{PullEvent, pull};
use assetsync_protocol::Scope;

use crate::bus::an_edit_only_b_sees_reaches;
use crate::faults::{Fault, Proxy};
use crate::security::{pull_a_js, upgrade};
use crate::services::{Nginx, Redis};
use crate::util::{Served, TestClient, TestServer, random_bytes};
use crate::watch::Follower;

const CHECK: &str = "the nginx tests";

#[tokio::test(flavor = "multi_thread")]
async fn through_nginx_a_subscriber_stays_connected_while_silent_and_hears_of_changes_another_instance_saw() {
    let Some(redis) = Redis::start(CHECK) else { return };
    let b = TestServer::start_with(|c| c.bus = Some(redis.url())).await;
    let shared = b.root.path().to_path_buf();
    let a = TestServer::start_with(|c| {
        c.root = shared;
        c.watch = None;
        c.bus = Some(redis.url());
        c.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    // A takes every connection while it is up, so the subscriber is on A, which gets no file
    // events; nginx's timeouts are 3 s instead of 300 s.
    let upstream = [a.addr.to_string(), format!("{} backup", b.addr)];
    let Some(nginx) = Nginx::start(CHECK, &upstream, Some("3s")) else { return };
    let v1 = random_bytes(1 << 20, 41);
    b.write("app.js", &v1);
    let mut f = Follower::start_at(nginx.url(), &["app.js"]);
    f.pulled("app.js").await;

    // Longer than nginx's timeouts: only A's pings to a silent subscriber keep it connected.
    f.silent_for(Duration::from_secs(5)).await;

    an_edit_only_b_sees_reaches(&mut f, &b, &v1).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_and_token_checks_hold_through_nginx() {
    let server = TestServer::start_with(|c| c.token = Some("s3cret-token".into())).await;
    server.write("a.js", b"guarded");
    let Some(nginx) = Nginx::start(CHECK, &[server.addr.to_string()], None) else { return };
    let url = nginx.url();
    let own = format!("http://127.0.0.1:{}", nginx.port);
    assert_eq!(upgrade(&url, None, None).await, 101, "native clients send no Origin");
    assert_eq!(upgrade(&url, Some(&own), None).await, 101, "the page nginx serves, by address");
    assert_eq!(upgrade(&url, Some("https://evil.example"), None).await, 403, "any other site");
    let rebound = format!("evil.example:{}", nginx.port);
    let origin = format!("http://{rebound}");
    assert_eq!(upgrade(&url, Some(&origin), Some(&rebound)).await, 403, "DNS rebinding");

    let refused = pull_a_js(url.clone(), None).await.unwrap_err().to_string();
    assert!(refused.contains("requires a token"), "{refused}");
    pull_a_js(url, Some("s3cret-token")).await.unwrap();
    server.stop().await;
}

/// Two `assetsync serve` processes on one root behind nginx; the one serving a 16 MiB cold
/// transfer (paced to 4 MiB/s) is SIGKILLed 6 MiB in. The client reconnects through nginx to
/// the other and fetches only what had not arrived.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_killed_mid_transfer_behind_nginx_is_resumed_on_the_other() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(16 << 20, 42);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let serve =
        || Served::start([std::ffi::OsStr::new("--no-store"), "--root".as_ref(), root.path().as_os_str()]);
    let (a, b) = (serve(), serve());
    let addr = |s: &Served| s.url.trim_start_matches("ws://").trim_end_matches("/sync").to_owned();
    let upstream = [addr(&a), format!("{} backup", addr(&b))];
    let Some(nginx) = Nginx::start(CHECK, &upstream, None) else { return };
    let slow =
        Proxy::to(([127, 0, 0, 1], nginx.port).into(), vec![Fault::Pace(4 << 20)], Arc::new(|| {})).await;

    let a = Mutex::new(Some(a));
    let mut killed_at = None;
    let client = TestClient::new();
    let mut wire = 0;
    pull(&client.config(slow.url()), &[Scope::new("big.bin").unwrap()], |e| match e {
        PullEvent::Progress { received, .. } if *received > 6 << 20 && killed_at.is_none() => {
            let mut a = a.lock().unwrap().take().unwrap();
            a.child.kill().unwrap();
            a.child.wait().unwrap();
            killed_at = Some(*received);
        }
        PullEvent::Pulled(r) => wire = r.wire_bytes_in,
        _ => {}
    })
    .await
    .unwrap();
    let killed_at = killed_at.expect("the transfer ended before the kill");
    assert_eq!(slow.connections(), 2, "the client reconnected once");
    assert_eq!(std::fs::read(client.out("big.bin")).unwrap(), data);
    // What the same pull costs uncut, from the surviving instance.
    let uncut = TestClient::new().pull_from(b.url.clone(), &["big.bin"]).await.unwrap()[0].wire_bytes_in;
    // Again: the plan (what the uncut pull took beyond the file), and at most the batch that was
    // in flight (its 64 KiB parts, a chunk frame cut in the middle).
    let plan = uncut - data.len() as u64;
    let bound = uncut + plan + 128 * 1024;
    assert!(killed_at > bound - uncut, "the bound must fail a client that starts over");
    assert!(wire < bound, "{wire} bytes in all, {uncut} uncut, killed {killed_at} bytes in");
    eprintln!("killed {killed_at} bytes in: {wire} bytes in all, {uncut} uncut");
}

/// A rolling deploy: three `assetsync serve` processes behind nginx, on one Redis, each with
/// its own version store, are restarted one at a time (SIGTERM, then started again) from
/// release 1's folder onto release 2's while 50 clients follow through nginx. Every client ends
/// on release 2, verified, having fetched a patch, not the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_deploy_moves_50_followers_to_the_new_release_at_patch_level() {
    let Some(redis) = Redis::start(CHECK) else { return };
    let releases = tempfile::tempdir().unwrap();
    let v1 = random_bytes(1 << 20, 43);
    let mut v2 = v1.clone();
    v2[500_000..500_100].fill(9);
    for (release, data) in [("1", &v1), ("2", &v2)] {
        std::fs::create_dir(releases.path().join(release)).unwrap();
        std::fs::write(releases.path().join(release).join("app.js"), data).unwrap();
    }
    let stores: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| crate::services::free_port()).collect();
    let serve = |i: usize, release: &str| {
        let mut command = std::process::Command::new(crate::util::BIN);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{}", ports[i]), "--bus", &redis.url()])
            .args(["--trusted-proxy", "127.0.0.1", "--root"])
            .arg(releases.path().join(release))
            .arg("--store")
            .arg(stores[i].path());
        Served::spawn(command)
    };
    let mut instances: Vec<Served> = (0..3).map(|i| serve(i, "1")).collect();
    let upstream: Vec<String> =
        ports.iter().map(|p| format!("127.0.0.1:{p} max_fails=1 fail_timeout=1s")).collect();
    let Some(nginx) = Nginx::start(CHECK, &upstream, None) else { return };

    let mut followers: Vec<Follower> =
        (0..50).map(|_| Follower::start_at(nginx.url(), &["app.js"])).collect();
    for f in &mut followers {
        f.pulled("app.js").await;
    }
    for (i, instance) in instances.iter_mut().enumerate() {
        let stopped =
            std::process::Command::new("kill").args(["-TERM", &instance.child.id().to_string()]).status();
        assert!(stopped.unwrap().success());
        assert!(instance.child.wait().unwrap().success(), "instance {i} did not stop cleanly");
        *instance = serve(i, "2");
    }

    let mut total = 0;
    for (n, f) in followers.iter_mut().enumerate() {
        let mut wire = 0;
        // Each follower had release 1, so release 2 arrives in a `Pulled` event of its own.
        loop {
            match f.next().await {
                PullEvent::Pulled(report) => {
                    wire += report.wire_bytes_in;
                    if f.out("app.js").as_deref() == Some(&v2[..]) {
                        break;
                    }
                }
                PullEvent::Failed { error, .. } => panic!("follower {n}: {error}"),
                _ => {}
            }
        }
        // A patch against release 1 from the restarted instance's store: reusing the client's
        // chunks without one would cost at least the changed 8 KiB chunk.
        assert!(wire < 4096, "follower {n} fetched {wire} bytes for a 100-byte edit");
        total += wire;
    }
    eprintln!("50 followers moved to release 2 for {total} bytes in all");
}
