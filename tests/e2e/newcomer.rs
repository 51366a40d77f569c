//! A newcomer's mistakes (issue 13): each gets a fast error that says what to do, and nothing
//! happens that the user did not cause.

use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message;

use crate::util::{BIN, Raw, TestClient, TestServer, random_bytes};

/// Subscribing to a folder pushes only what changes from then on: files that merely exist (or
/// that the server reads to answer someone) are not announced as changes.
#[tokio::test(flavor = "multi_thread")]
async fn subscribing_to_a_folder_pushes_nothing_until_a_file_changes() {
    let server = TestServer::start().await;
    for name in ["hello.js", "a.js", "b.js", "c.js"] {
        server.write(&format!("lib/{name}"), &random_bytes(20_000, name.len() as u64));
    }
    // A server started over the folder: the files existed before it, so no file event of theirs
    // is still pending in its watcher, however loaded the machine.
    let server = server.restart().await;
    let mut raw = Raw::greeted(&server).await;
    raw.send_text(r#"{"type":"sync","id":1,"asset":"lib/hello.js","have":{}}"#).await;
    assert_eq!(raw.json().await["type"], "update");
    while let Ok(Some(Message::Binary(_))) =
        tokio::time::timeout(Duration::from_millis(300), raw.next()).await
    {}
    raw.send_text(r#"{"type":"subscribe","id":2,"path":"lib/"}"#).await;
    assert_eq!(raw.json().await["type"], "subscribed");
    // Another client reads every file of the folder meanwhile.
    let mut other = Raw::greeted(&server).await;
    other.send_text(r#"{"type":"sync_folder","id":1,"folder":"lib/","have":{}}"#).await;
    let until = Instant::now() + Duration::from_millis(1500);
    if let Ok(Some(m)) = tokio::time::timeout_at(until.into(), raw.next()).await {
        panic!("pushed although nothing changed: {m:?}");
    }
    // A real edit is pushed.
    server.replace("lib/a.js", b"edited");
    let pushed = raw.json().await;
    assert_eq!((pushed["type"].as_str(), pushed["asset"].as_str()), (Some("changed"), Some("lib/a.js")));
    server.stop().await;
}

/// Runs the `assetsync` binary with `args`; returns its exit status, stderr and how long it took.
async fn run(args: Vec<String>) -> (bool, String, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = std::process::Command::new(BIN).args(&args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned(), started.elapsed())
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `pull` from the endpoint `url` into `client`'s cache and output folder, then `rest`.
fn pull_args(url: String, client: &TestClient, rest: &[&str]) -> Vec<String> {
    let (cache, out) = (client.cache(), client.dir.path().join("out"));
    let mut args = vec!["pull".into(), "--server".into(), url, "--cache".into()];
    args.extend([cache.to_str().unwrap().to_owned(), "--out".into(), out.to_str().unwrap().to_owned()]);
    args.extend(strings(rest));
    args
}

/// One `error:` line, and nothing retried: within 2 s.
fn one_fast_error(stderr: &str, took: Duration, expected: &str) {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expected), "expected {expected:?} in {stderr}");
    assert!(!stderr.contains("WARN"), "a user's mistake is not retried: {stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {stderr}");
}

/// A mistyped asset, and a folder named without its slash, fail at once with what to do; the
/// other assets of the same pull are still written.
#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_asset_or_a_folder_without_its_slash_fails_fast_and_the_rest_is_pulled() {
    let server = TestServer::start().await;
    server.write("lib/hello.js", b"hello");
    let client = TestClient::new();
    let (ok, stderr, took) =
        run(pull_args(server.url(), &client, &["lib/nope.js", "lib/hello.js", "lib"])).await;
    assert!(!ok);
    one_fast_error(&stderr, took, "unknown asset \"lib/nope.js\"");
    assert!(stderr.contains(r#""lib" is a folder, not a file: sync it as a folder, "lib/""#), "{stderr}");
    assert_eq!(std::fs::read(client.out("lib/hello.js")).unwrap(), b"hello");
    server.stop().await;
}

/// `pull --follow` of a name that matches nothing on the server (or a folder without its slash)
/// fails at once and says what to follow instead, rather than waiting in silence.
#[tokio::test(flavor = "multi_thread")]
async fn following_a_name_that_matches_nothing_fails_fast_and_names_what_to_follow() {
    let server = TestServer::start().await;
    server.write("lib/hello.js", b"hello");
    let client = TestClient::new();
    for (target, expected) in [
        (
            "lib/nope.js",
            r#"lib/nope.js: nothing by that name on the server: check it, or subscribe to its folder "lib/""#,
        ),
        ("nope/", r#"nope/: nothing by that name on the server: check it, or subscribe to "" (every asset)"#),
        ("lib", r#""lib" is a folder, not a file: subscribe to it as a folder, "lib/""#),
    ] {
        let args = pull_args(server.url(), &client, &["--follow", "lib/hello.js", target]);
        let (ok, stderr, took) = run(args).await;
        assert!(!ok);
        one_fast_error(&stderr, took, expected);
    }
    server.stop().await;
}

/// A URL that is not the sync endpoint (the page's root, a trailing slash, the host alone) fails
/// at once and says where the endpoint is.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_endpoint_fails_fast_and_names_the_right_one() {
    let server = TestServer::start().await;
    server.write("a.js", b"a");
    let client = TestClient::new();
    let base = format!("ws://{}", server.addr);
    for url in [format!("{base}/"), base.clone(), format!("{base}/sync/")] {
        let (ok, stderr, took) = run(pull_args(url, &client, &["a.js"])).await;
        assert!(!ok);
        one_fast_error(&stderr, took, "is not an assetsync endpoint");
        assert!(stderr.contains("use ws://HOST:PORT/sync"), "{stderr}");
    }
    server.stop().await;
}

/// `gc` pointed at a folder that is not a cache creates nothing there; on a cache a follower
/// holds, it fails at once instead of waiting for as long as the follower runs.
#[tokio::test(flavor = "multi_thread")]
async fn gc_refuses_a_folder_that_is_not_a_cache_and_a_cache_in_use() {
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = elsewhere.path().to_str().unwrap().to_owned();
    let (ok, stderr, took) = run(strings(&["gc", "--cache", &dir])).await;
    assert!(!ok);
    one_fast_error(&stderr, took, "is not an assetsync cache");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "gc created files in a non-cache");

    let server = TestServer::start().await;
    server.write("a.js", b"a");
    let mut follower = crate::watch::Follower::start(&server, &["a.js"]);
    follower.pulled("a.js").await;
    let cache = follower.cache().to_str().unwrap().to_owned();
    let (ok, stderr, took) = run(strings(&["gc", "--cache", &cache])).await;
    assert!(!ok);
    one_fast_error(&stderr, took, "is in use (a pull --follow?)");
    server.stop().await;
}

/// `serve --root` of a folder that does not exist fails before announcing that it serves.
#[tokio::test(flavor = "multi_thread")]
async fn serving_a_missing_root_fails_before_the_banner() {
    let (ok, stderr, took) =
        run(strings(&["serve", "--root", "/nonexistent/assets", "--listen", "127.0.0.1:0"])).await;
    assert!(!ok);
    one_fast_error(&stderr, took, "--root /nonexistent/assets is not a folder");
    assert!(!stderr.contains("serving"), "{stderr}");
}

/// Log lines carry no terminal colour codes when stderr is a file or a pipe.
#[tokio::test(flavor = "multi_thread")]
async fn logs_have_no_colour_codes_off_a_terminal() {
    let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stderr = tokio::task::spawn_blocking(move || {
        let mut serve = std::process::Command::new(BIN)
            .args(["serve", "--root", root.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .env("XDG_STATE_HOME", state.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        serve.kill().unwrap();
        serve.wait().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(stderr.contains("INFO"), "no log line to check: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// A folder pull repairs `--out` as rsync would: a file edited and a file deleted there since
/// the last pull are written again from the cache (without fetching them), and reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_pull_repairs_files_edited_or_deleted_under_out() {
    let server = TestServer::start().await;
    let (a, b) = (random_bytes(50_000, 81), random_bytes(50_000, 82));
    server.write("lib/a.js", &a);
    server.write("lib/b.js", &b);
    server.write("lib/c.js", b"untouched");
    let client = TestClient::new();
    client.pull(&server, &["lib/"]).await.unwrap();
    std::fs::write(client.out("lib/a.js"), b"a local edit").unwrap();
    let mut same_size = b.clone();
    same_size[100] ^= 1;
    std::fs::write(client.out("lib/b.js"), &same_size).unwrap();
    std::fs::remove_file(client.out("lib/c.js")).unwrap();
    let mut folder = None;
    let targets = [assetsync_protocol::Scope::new("lib/").unwrap()];
    let mut reports = Vec::new();
    assetsync::pull::pull(&client.config(server.url()), &targets, |e| match e {
        assetsync::pull::PullEvent::Folder(f) => folder = Some(f.clone()),
        assetsync::pull::PullEvent::Pulled(r) => reports.push(r.clone()),
        _ => {}
    })
    .await
    .unwrap();
    let mut folder = folder.unwrap();
    folder.repaired.sort();
    assert_eq!(folder.fetched, Vec::<String>::new(), "{folder:?}");
    assert_eq!(folder.repaired, ["lib/a.js", "lib/b.js", "lib/c.js"], "{folder:?}");
    assert_eq!(std::fs::read(client.out("lib/a.js")).unwrap(), a);
    assert_eq!(std::fs::read(client.out("lib/b.js")).unwrap(), b);
    assert_eq!(std::fs::read(client.out("lib/c.js")).unwrap(), b"untouched");
    // Written from the cache: nothing but the requests' answers crossed the wire.
    assert!(reports.iter().all(|r| r.chunks_reused == r.chunks), "{reports:?}");
    server.stop().await;
}
