//! Sync behaviour: what crosses the wire for cold, edited, shifted, unchanged and shared assets.

use crate::util::{TestClient, TestServer, random_bytes, real_bundle};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn cold_sync_sends_the_whole_file_once() {
    let server = TestServer::start().await;
    let data = random_bytes(8 * MIB, 1);
    server.write("big.bin", &data);
    let client = TestClient::new();
    let r = client.pull_and_check(&server, "big.bin", &data).await;
    assert_eq!(r.chunks_reused, 0);
    assert!(r.wire_bytes_in >= data.len() as u64);
    // Framing, manifest and handshake overhead stays small next to the file.
    assert!(r.wire_bytes_in < data.len() as u64 + 150 * 1024, "cold sync cost {}", r.wire_bytes_in);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overwriting_1kib_in_the_middle_of_8mib_costs_well_under_64kib() {
    let server = TestServer::start().await;
    let mut data = random_bytes(8 * MIB, 2);
    server.write("big.bin", &data);
    let client = TestClient::new();
    client.pull_and_check(&server, "big.bin", &data).await;

    data[4 * MIB..4 * MIB + 1024].copy_from_slice(&random_bytes(1024, 99));
    server.write("big.bin", &data);
    let r = client.pull_and_check(&server, "big.bin", &data).await;
    assert!(r.wire_bytes_in < 64 * 1024, "1 KiB edit cost {} bytes", r.wire_bytes_in);
    assert!(r.chunks_reused + 3 >= r.chunks, "{r:?}");
    assert!(r.wire_bytes_out < 1024, "digest cost {} bytes", r.wire_bytes_out);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inserting_at_the_start_resynchronises_cut_points() {
    let server = TestServer::start().await;
    let data = random_bytes(8 * MIB, 3);
    server.write("big.bin", &data);
    let client = TestClient::new();
    client.pull_and_check(&server, "big.bin", &data).await;

    let mut shifted = b"/* a banner the bundler added */\n".to_vec();
    shifted.extend_from_slice(&data);
    server.write("big.bin", &shifted);
    let r = client.pull_and_check(&server, "big.bin", &shifted).await;
    assert!(r.wire_bytes_in < 64 * 1024, "prepend cost {} bytes", r.wire_bytes_in);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_asset_gets_a_tiny_reply() {
    let server = TestServer::start().await;
    let data = real_bundle();
    server.write("js/three.js", &data);
    let client = TestClient::new();
    client.pull_and_check(&server, "js/three.js", &data).await;
    let r = client.pull_and_check(&server, "js/three.js", &data).await;
    assert_eq!(r.chunks_reused, r.chunks);
    assert!(r.wire_bytes_in < 200, "up-to-date reply cost {} bytes", r.wire_bytes_in);
    assert!(r.wire_bytes_out < 300, "up-to-date request cost {} bytes", r.wire_bytes_out);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_file_is_not_re_chunked() {
    let server = TestServer::start().await;
    let data = random_bytes(300_000, 4);
    server.write("a.bin", &data);
    let client = TestClient::new();
    let first = client.pull_and_check(&server, "a.bin", &data).await;

    // Same size, same mtime, same inode: only a server that re-reads files on every request would
    // notice this in-place change. Ours must answer from its index.
    let path = server.root.path().join("a.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut tampered = data.clone();
    tampered[10] ^= 0xFF;
    std::fs::write(&path, &tampered).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    let second = client.pull(&server, &["a.bin"]).await.unwrap().remove(0);
    assert_eq!(second.version, first.version, "server re-indexed an unchanged stamp");

    // A real change (new mtime) is picked up on the next request.
    std::fs::write(&path, &tampered).unwrap();
    client.pull_and_check(&server, "a.bin", &tampered).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn assets_sharing_chunks_transfer_them_once() {
    let server = TestServer::start().await;
    let vendor = real_bundle();
    let mut app = vendor.clone();
    app.extend_from_slice(b"\nexport const app = 'the only new code';\n");
    server.write("vendor.js", &vendor);
    server.write("app.js", &app);
    let client = TestClient::new();
    client.pull_and_check(&server, "vendor.js", &vendor).await;
    let r = client.pull_and_check(&server, "app.js", &app).await;
    assert!(r.wire_bytes_in < 64 * 1024, "shared chunks were sent again: {} bytes", r.wire_bytes_in);
    assert!(r.chunks_reused + 2 >= r.chunks);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_bundle_edit_is_cheap() {
    let server = TestServer::start().await;
    let v1 = real_bundle();
    server.write("three.js", &v1);
    let client = TestClient::new();
    client.pull_and_check(&server, "three.js", &v1).await;
    let text = String::from_utf8(v1.clone()).unwrap();
    let v2 = text.replacen("const REVISION = '160';", "const REVISION = '161-dev';", 1).into_bytes();
    assert_ne!(v1, v2);
    server.write("three.js", &v2);
    let r = client.pull_and_check(&server, "three.js", &v2).await;
    assert!(r.wire_bytes_in < 40 * 1024, "one-line edit cost {} bytes", r.wire_bytes_in);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_that_forgot_the_clients_version_still_serves_a_correct_file() {
    let server = TestServer::start_with(|c| c.keep_versions = 1).await;
    let mut data = random_bytes(MIB, 5);
    server.write("a.bin", &data);
    let client = TestClient::new();
    client.pull_and_check(&server, "a.bin", &data).await;
    for round in 0..3u8 {
        data[1000 + usize::from(round)] ^= 1;
        server.write("a.bin", &data);
        // The server indexes each version, then forgets the previous one.
        TestClient::new().pull_and_check(&server, "a.bin", &data).await;
    }
    // The server answers `unknown_base`; the client lists its chunks in about 6 bytes each, and
    // gets just the edited chunks, not the whole file.
    let r = client.pull_and_check(&server, "a.bin", &data).await;
    assert_eq!(r.requests, 2, "{r:?}");
    assert!(r.wire_bytes_in < 64 * 1024, "{r:?}");
    assert!(r.wire_bytes_out < 2048, "chunk set for 128 chunks cost {} bytes", r.wire_bytes_out);
    server.stop().await;
}

/// A cache holding a version the server forgot and another asset's version it knows: the
/// chunks of both count as held, and the new file needs only its edit.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_cache_of_known_and_forgotten_versions_is_used_in_full() {
    let server = TestServer::start_with(|c| c.keep_versions = 1).await;
    let (a1, b) = (random_bytes(MIB, 11), random_bytes(MIB / 2, 12));
    server.write("a.bin", &a1);
    server.write("b.bin", &b);
    let client = TestClient::new();
    client.pull(&server, &["a.bin", "b.bin"]).await.unwrap();
    // a.bin v2: its old bytes with a small edit, then half of b.bin.
    let mut a2 = a1.clone();
    a2[10_000] ^= 1;
    a2.extend_from_slice(&b[..MIB / 4]);
    server.write("a.bin", &a2);
    // Another client makes the server index v2, forgetting v1.
    TestClient::new().pull_and_check(&server, "a.bin", &a2).await;
    let r = client.pull_and_check(&server, "a.bin", &a2).await;
    assert_eq!(r.requests, 2, "{r:?}");
    assert!(r.wire_bytes_in < 64 * 1024, "{r:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_all_get_verified_copies() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * MIB, 6);
    server.write("a.bin", &data);
    let clients: Vec<TestClient> = (0..16).map(|_| TestClient::new()).collect();
    let pulls = clients.iter().map(|c| c.pull_and_check(&server, "a.bin", &data));
    let reports = futures_util::future::join_all(pulls).await;
    assert!(reports.iter().all(|r| r.version == reports[0].version));
    server.stop().await;
}

/// Minifiers rename identifiers all through a bundle, so most chunks change but most text does
/// not. Compressing the missing chunks against the client's old version recovers that; both
/// encodings must rebuild the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn context_compression_and_plain_chunks_rebuild_the_same_bytes() {
    let v1 = real_bundle();
    let v2 = String::from_utf8(v1.clone()).unwrap().replace("Vector3", "Vec3").into_bytes();
    let mut wire = Vec::new();
    for encode in [None, Some(assetsync::encode::EncodeConfig::default())] {
        let server = TestServer::start_with(|c| c.encode = encode).await;
        server.write("three.js", &v1);
        let client = TestClient::new();
        client.pull_and_check(&server, "three.js", &v1).await;
        server.write("three.js", &v2);
        let r = client.pull_and_check(&server, "three.js", &v2).await;
        wire.push(r.wire_bytes_in);
        server.stop().await;
    }
    let (plain, compressed) = (wire[0], wire[1]);
    assert!(plain > v2.len() as u64 / 4, "the rename should touch many chunks: {plain} bytes");
    assert!(compressed * 10 < plain, "compressed {compressed} bytes vs plain {plain}");
}

/// The first client of a large update gets a fast-level answer at once; the best-level one is
/// computed in the background and every later client in the same state gets it.
#[tokio::test(flavor = "multi_thread")]
async fn large_updates_are_answered_fast_first_and_smaller_later() {
    let server = TestServer::start().await;
    let v1 = real_bundle();
    let v2 = String::from_utf8(v1.clone()).unwrap().replace("Vector3", "Vec3").into_bytes();
    server.write("three.js", &v1);
    let first = TestClient::new();
    first.pull_and_check(&server, "three.js", &v1).await;
    let later: Vec<TestClient> = (0..20).map(|_| first.copy()).collect();
    server.write("three.js", &v2);
    let fast = first.pull_and_check(&server, "three.js", &v2).await.wire_bytes_in;
    let mut best = fast;
    for client in &later {
        best = client.pull_and_check(&server, "three.js", &v2).await.wire_bytes_in;
        if best < fast {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        best * 10 < fast * 9,
        "the background encoding never replaced the fast one: {fast} then {best} bytes"
    );
    server.stop().await;
}
