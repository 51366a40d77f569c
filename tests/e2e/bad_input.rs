//! Hostile and malformed input: a clear error, a clean close where the session cannot go on, and
//! a server that keeps serving everyone else.

use tokio_tungstenite::tungstenite::Message;

use crate::util::{Raw, Served, TestClient, TestServer, random_bytes};

/// Proves the server still works for a well-behaved client.
async fn still_serving(server: &TestServer) {
    let data = random_bytes(100_000, 42);
    server.write("healthy.bin", &data);
    TestClient::new().pull_and_check(server, "healthy.bin", &data).await;
}

async fn sync_error(raw: &mut Raw, asset: &str) -> serde_json::Value {
    let request = serde_json::json!({"type": "sync", "id": 5, "asset": asset});
    raw.send_text(&request.to_string()).await;
    let answer = raw.json().await;
    assert_eq!(answer["type"], "error", "{asset:?} was not refused: {answer}");
    assert_eq!(answer["id"], 5);
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn path_escapes_are_refused_with_a_clear_error() {
    let server = TestServer::start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), server.root.path().join("link.txt"))
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), server.root.path().join("linkdir")).unwrap();
    let mut raw = Raw::greeted(&server).await;
    for asset in [
        "../secret.txt",
        "a/../../secret.txt",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "..\\..\\secret.txt",
        "a\u{0}b",
        "%2e%2e/secret.txt",
        "link.txt",
        "linkdir/secret.txt",
    ] {
        let e = sync_error(&mut raw, asset).await;
        let code = e["code"].as_str().unwrap();
        assert!(code == "bad_path" || code == "unknown_asset", "{asset:?}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert!(!e.to_string().contains("secret\""), "{e}");
    }
    // Symlinks that stay inside the root are fine.
    server.write("real.txt", b"inside");
    std::os::unix::fs::symlink(server.root.path().join("real.txt"), server.root.path().join("alias.txt"))
        .unwrap();
    raw.send_text(r#"{"type":"sync","id":6,"asset":"alias.txt"}"#).await;
    assert_eq!(raw.json().await["type"], "update");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_asset_is_a_request_error_and_the_session_continues() {
    let server = TestServer::start().await;
    server.write("there.txt", b"hello");
    let mut raw = Raw::greeted(&server).await;
    let e = sync_error(&mut raw, "missing.js").await;
    assert_eq!(e["code"], "unknown_asset");
    assert!(e["message"].as_str().unwrap().contains("missing.js"));
    let e = sync_error(&mut raw, "").await;
    assert_eq!(e["code"], "bad_path");
    raw.send_text(r#"{"type":"sync","id":9,"asset":"there.txt"}"#).await;
    let update = raw.json().await;
    assert_eq!(update["type"], "update");
    // One chunk of 5 bytes, sent (as a plain chunk frame: this client offered no encodings).
    assert_eq!(update["recipe"], serde_json::json!([5]));
    assert!(matches!(raw.next().await, Some(Message::Binary(_))));
    server.stop().await;
}

/// Each case: what to send after connecting, whether to greet first, the error code and close code.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_get_an_error_and_a_clean_close() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let cases: Vec<(&str, bool, Message, &str, u16)> = vec![
        ("not json", true, Message::text("{this is not json"), "bad_message", 1002),
        ("wrong types", true, Message::text(r#"{"type":"sync","id":"x","asset":1}"#), "bad_message", 1002),
        ("unknown kind", true, Message::text(r#"{"type":"delete_everything"}"#), "bad_message", 1002),
        ("binary before hello", false, Message::binary(vec![1u8, 2, 3]), "bad_message", 1003),
        (
            "sync before hello",
            false,
            Message::text(r#"{"type":"sync","id":1,"asset":"a"}"#),
            "bad_message",
            1002,
        ),
        ("old protocol", false, Message::text(r#"{"type":"hello","protocol":0}"#), "protocol_version", 1002),
        (
            "bad chunk set",
            true,
            Message::text(
                r#"{"type":"sync","id":1,"asset":"a","have":{"chunks":{"prefix":0,"ids":"AAAA"}}}"#,
            ),
            "bad_message",
            1002,
        ),
        ("second hello", true, Message::text(r#"{"type":"hello","protocol":2}"#), "bad_message", 1002),
        ("oversized message", true, Message::text("x".repeat(200 * 1024)), "too_large", 1009),
    ];
    for (name, greet, message, code, close) in cases {
        let mut raw = if greet { Raw::greeted(&server).await } else { Raw::connect(&server).await };
        raw.send(message).await;
        let e = raw.json().await;
        assert_eq!(e["type"], "error", "{name}: {e}");
        assert_eq!(e["code"], code, "{name}: {e}");
        let closed = raw.close_code().await;
        if code == "too_large" {
            // The server stops reading an oversized message mid-way, so the kernel may reset the
            // connection right after the error and close frame; the error itself must arrive.
            assert!(closed.is_none() || closed == Some(close), "{name}: {closed:?}");
        } else {
            assert_eq!(closed, Some(close), "{name}");
        }
    }
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_over_the_limit_is_refused() {
    let server = TestServer::start_with(|c| c.limits.max_have = 100).await;
    server.write("a.txt", b"a");
    let mut raw = Raw::greeted(&server).await;
    let ids = (0..101u32).map(|i| assetsync_protocol::Hash::of(&i.to_le_bytes()));
    let have = assetsync_protocol::ChunkSet::new(ids);
    let request = serde_json::json!({"type": "sync", "id": 1, "asset": "a.txt", "have": {"chunks": have}});
    raw.send_text(&request.to_string()).await;
    let e = raw.json().await;
    assert_eq!(e["code"], "too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("101"));
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let server =
        TestServer::start_with(|c| c.limits.idle_timeout = std::time::Duration::from_millis(300)).await;
    let mut raw = Raw::greeted(&server).await;
    let e = raw.json().await;
    assert_eq!((e["code"].as_str(), e["message"].as_str()), (Some("idle_timeout"), Some("idle timeout")));
    assert_eq!(raw.close_code().await, Some(1008));

    // A subscribed connection is pinged instead, and stays open while it answers: four idle
    // periods pass with pings and nothing else.
    let mut subscribed = Raw::greeted(&server).await;
    subscribed.send_text(r#"{"type":"subscribe","id":1,"path":""}"#).await;
    assert_eq!(subscribed.json().await["type"], "subscribed");
    let (mut pings, until) = (0, tokio::time::Instant::now() + std::time::Duration::from_millis(1200));
    while let Ok(frame) = tokio::time::timeout_at(until, subscribed.frame()).await {
        match frame {
            Some(Message::Ping(_)) => pings += 1,
            other => panic!("a subscribed connection that answers pings got {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings in four idle periods");
    // One that stops answering is closed after the next period.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), subscribed.close_code()).await;
    assert_eq!(closed, Ok(Some(1008)), "a subscribed connection that stopped answering pings");
    server.stop().await;
}

/// A subscribed session that falls further behind the pushed changes than the backlog (4 here,
/// while it is busy with a paced answer) is closed with 1013, "try again later", and a message
/// that says to reconnect and sync again; the server goes on serving others.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscribed_session_that_falls_behind_is_closed_with_1013() {
    let server = TestServer::start_with(|c| {
        c.limits.change_backlog = 4;
        // 3 MB go out at once, the rest at 50 KB/s: the answer below takes about 4 s.
        c.limits.bytes_per_minute = 3_000_000;
        c.watch = Some(std::time::Duration::from_millis(50));
    })
    .await;
    server.write("big.bin", &random_bytes(3_200_000, 70));
    let mut raw = Raw::greeted(&server).await;
    raw.send_text(r#"{"type":"subscribe","id":1,"path":"f/"}"#).await;
    assert_eq!(raw.json().await["type"], "subscribed");
    raw.send_text(r#"{"type":"sync","id":2,"asset":"big.bin","have":{}}"#).await;
    assert_eq!(raw.json().await["type"], "update");
    // Ten changes while the session is busy sending.
    for i in 0..10 {
        server.write(&format!("f/{i}.txt"), b"x");
    }
    let (mut error, mut close) = (None, None);
    while let Some(message) = raw.next().await {
        match message {
            Message::Text(t) => error = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap()),
            Message::Close(frame) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    let error = error.expect("an error message before the close");
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("lagged")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("reconnect and sync again"), "{error}");
    assert_eq!(close, Some(1013));
    still_serving(&server).await;
    server.stop().await;
}

/// `subscribe` on a server that does not watch its root is refused as `unsupported`, and the
/// connection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn subscribing_without_watching_is_unsupported() {
    let server = TestServer::start_with(|c| c.watch = None).await;
    server.write("a.txt", b"hello");
    let mut raw = Raw::greeted(&server).await;
    raw.send_text(r#"{"type":"subscribe","id":1,"path":"a.txt"}"#).await;
    let e = raw.json().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_u64(), e["code"].as_str()),
        (Some("error"), Some(1), Some("unsupported"))
    );
    raw.send_text(r#"{"type":"sync","id":2,"asset":"a.txt","have":{}}"#).await;
    assert_eq!(raw.json().await["type"], "update");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_are_refused_and_others_continue() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    server.write("a.txt", b"hello");
    let mut a = Raw::greeted(&server).await;
    let b = Raw::greeted(&server).await;
    let refused = tokio_tungstenite::connect_async(server.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("third connection was not refused: {other:?}"),
    }
    // The sessions already open are served as before.
    a.send_text(r#"{"type":"sync","id":1,"asset":"a.txt","have":{}}"#).await;
    assert_eq!(a.json().await["type"], "update");
    drop(b);
    // The freed place is reused once the server notices the close.
    let mut last = None;
    for _ in 0..50 {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok(_) => {
                last = Some(());
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert!(last.is_some(), "connection slot was never released");
    server.stop().await;
}

/// Tabs still running an older client keep working after a server upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_1_clients_are_still_served() {
    let server = TestServer::start().await;
    server.write("a.txt", b"hello");
    let mut raw = Raw::connect(&server).await;
    raw.send_text(r#"{"type":"hello","protocol":1,"agent":"old"}"#).await;
    assert_eq!(raw.json().await["protocol"], 1);
    let unknown = "0".repeat(64);
    // Protocol 1 knows no `unknown_base`, and lists chunks as full hex ids.
    for have in [format!(r#"{{"versions":["{unknown}"]}}"#), format!(r#"{{"chunks":["{unknown}"]}}"#)] {
        raw.send_text(&format!(r#"{{"type":"sync","id":1,"asset":"a.txt","have":{have}}}"#)).await;
        let answer = raw.json().await;
        assert_eq!(answer["type"], "update", "{answer}");
        assert!(matches!(raw.next().await, Some(Message::Binary(_))));
    }
    still_serving(&server).await;
    server.stop().await;
}

/// A digest of millions of entries that still fits in one message (1-byte id prefixes) is
/// refused by count at the default limits, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_digest_with_millions_of_entries_is_refused_and_the_session_goes_on() {
    let server = TestServer::start().await;
    server.write("a.txt", b"a");
    let mut raw = Raw::greeted(&server).await;
    // 6 MB of base64 under the 8 MiB message limit: 4.5 million 1-byte ids.
    let ids = "A".repeat(6_000_000);
    let have = format!(r#"{{"chunks":{{"prefix":1,"ids":"{ids}"}}}}"#);
    raw.send_text(&format!(r#"{{"type":"sync","id":1,"asset":"a.txt","have":{have}}}"#)).await;
    let e = raw.json().await;
    assert_eq!(e["code"], "too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("4500000 entries"), "{e}");
    raw.send_text(r#"{"type":"sync","id":2,"asset":"a.txt"}"#).await;
    assert_eq!(raw.json().await["type"], "update");
    still_serving(&server).await;
    server.stop().await;
}

/// Memory of a process, in bytes: `VmRSS` (now) or `VmHWM` (peak) from `/proc/PID/status`.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Clients that ask for a large asset again and again but never read the answers: each session
/// waits on its full socket instead of buffering, so the server's memory stays bounded (here
/// 20 connections x 10 requests x 32 MiB would be 6.4 GiB), and others are still served.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_read_do_not_make_the_server_buffer() {
    const MIB: usize = 1 << 20;
    let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(root.path().join("big.bin"), random_bytes(32 * MIB, 3)).unwrap();
    std::fs::write(root.path().join("small.bin"), b"small").unwrap();
    // The real binary, so that its memory is its own; uncompressed, so that every answer is
    // built frame by frame from the indexed file.
    let server = Served::start([
        "--no-compress".as_ref(),
        "--no-watch".as_ref(),
        "--root".as_ref(),
        root.path().as_os_str(),
        "--store".as_ref(),
        state.path().as_os_str(),
    ]);
    let url = server.url.clone();
    // Indexed and answered once, so that the baseline holds the file.
    TestClient::new().pull_from(url.clone(), &["big.bin"]).await.unwrap();
    let baseline = memory(server.child.id(), "VmRSS:");
    let mut silent = Vec::new();
    for _ in 0..20 {
        let mut raw = Raw::greeted_at(&url).await;
        for id in 0..10 {
            raw.send_text(&format!(r#"{{"type":"sync","id":{id},"asset":"big.bin"}}"#)).await;
        }
        silent.push(raw);
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    TestClient::new().pull_from(url.clone(), &["small.bin"]).await.unwrap();
    let grew = memory(server.child.id(), "VmHWM:").saturating_sub(baseline);
    drop(silent);
    drop(server);
    eprintln!(
        "server memory grew {} MiB over a baseline of {} MiB",
        grew / MIB as u64,
        baseline / MIB as u64
    );
    assert!(grew < 64 * MIB as u64, "the server grew {} MiB for clients that do not read", grew / MIB as u64);
}

/// A client that sends its HTTP headers slowly ("slowloris") is cut off after the header
/// timeout, and others are served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn slow_header_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    server.write("a.txt", b"a");
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /sync HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    still_serving(&server).await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    // The server answers 408 or just closes; either way the connection ends.
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a slow-header connection was still open after 20 s");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    server.stop().await;
}

/// Thousands of requests pipelined on one connection are all answered in order, paced to the
/// connection's request rate, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_requests_on_one_connection_are_paced_and_do_not_starve_others() {
    // Bursts of 1,200, then 20 a second.
    let server = TestServer::start_with(|c| c.limits.requests_per_minute = 1_200).await;
    server.write("a.txt", b"tiny");
    let mut raw = Raw::greeted(&server).await;
    const N: u32 = 1_300;
    let started = std::time::Instant::now();
    for id in 0..N {
        raw.send_text(&format!(r#"{{"type":"sync","id":{id},"asset":"a.txt"}}"#)).await;
    }
    still_serving(&server).await;
    let mut answered = 0;
    while answered < N {
        match raw.next().await {
            Some(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["id"], answered, "answers come in order");
                answered += 1;
            }
            Some(Message::Binary(_)) => {}
            other => panic!("connection ended after {answered} answers: {other:?}"),
        }
    }
    // However fast the server, the 100 over the burst take 5 s at 20 a second.
    let elapsed = started.elapsed();
    assert!(elapsed > std::time::Duration::from_millis(4_500), "not paced: all answered in {elapsed:?}");
    server.stop().await;
}

/// A connection over its byte rate is sent its answer more slowly, not refused; another
/// connection meanwhile gets its own full rate.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_over_its_byte_rate_is_slowed_not_refused() {
    const MIB: usize = 1 << 20;
    // 51 KiB a second, in bursts of 3 MiB; uncompressed, so that bytes sent are chunk bytes.
    let server = TestServer::start_with(|c| {
        c.limits.bytes_per_minute = 3 * MIB as u64;
        c.encode = None;
    })
    .await;
    let big = random_bytes(3 * MIB + 100 * 1024, 7);
    server.write("big.bin", &big);
    let started = std::time::Instant::now();
    let client = TestClient::new();
    let pull = client.pull_and_check(&server, "big.bin", &big);
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        still_serving(&server).await;
        t.elapsed()
    };
    let (_, other_took) = tokio::join!(pull, other);
    // The 100 KiB over the burst take 2 s.
    let elapsed = started.elapsed();
    assert!(elapsed > std::time::Duration::from_millis(1_800), "not paced: sent in {elapsed:?}");
    assert!(other_took < std::time::Duration::from_secs(1), "another connection waited {other_took:?}");
    server.stop().await;
}
