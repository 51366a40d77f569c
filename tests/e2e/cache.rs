//! The native client's cache: corruption is detected and repaired, GC frees exactly the garbage.

use crate::util::{TestClient, TestServer, random_bytes};

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_cache_chunk_is_detected_and_fetched_again() {
    let server = TestServer::start().await;
    let mut data = random_bytes(1 << 20, 7);
    server.write("a.bin", &data);
    let client = TestClient::new();
    client.pull_and_check(&server, "a.bin", &data).await;

    let victim = client.chunk_files()[3].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0xFF;
    std::fs::write(&victim, bytes).unwrap();

    data[700_000] ^= 1;
    server.write("a.bin", &data);
    let r = client.pull_and_check(&server, "a.bin", &data).await;
    assert!(r.retried, "{r:?}");
    // The edited chunk and the rotten one, and nothing else, cross the wire.
    assert!(r.wire_bytes_in < 100 * 1024, "repair cost {} bytes", r.wire_bytes_in);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_what_current_manifests_need_and_frees_the_rest() {
    let server = TestServer::start().await;
    let v1 = random_bytes(1 << 20, 8);
    let other = random_bytes(200_000, 9);
    server.write("a.bin", &v1);
    server.write("b.bin", &other);
    let client = TestClient::new();
    client.pull(&server, &["a.bin", "b.bin"]).await.unwrap();
    let before = client.chunk_files().len();

    // Replace the second half of a.bin: its old second-half chunks become garbage.
    let mut v2 = v1.clone();
    v2[600_000..].copy_from_slice(&random_bytes(v1.len() - 600_000, 10));
    server.write("a.bin", &v2);
    client.pull(&server, &["a.bin"]).await.unwrap();
    let grown = client.chunk_files().len();
    assert!(grown > before);

    let mut cache = assetsync::cache::Cache::open(&client.cache()).unwrap();
    let report = cache.gc().unwrap();
    drop(cache);
    assert!(report.chunks_deleted > 10, "{report:?}");
    assert!(report.bytes_freed > 300_000, "{report:?}");
    assert_eq!(client.chunk_files().len(), grown - report.chunks_deleted);

    // Everything still committed is intact: a re-sync transfers nothing and rebuilds both files.
    let reports = client.pull(&server, &["a.bin", "b.bin"]).await.unwrap();
    for r in &reports {
        assert_eq!(r.chunks_reused, r.chunks, "{r:?}");
        assert!(!r.retried);
    }
    assert_eq!(std::fs::read(client.out("a.bin")).unwrap(), v2);
    // A second GC finds nothing more.
    let again = assetsync::cache::Cache::open(&client.cache()).unwrap().gc().unwrap();
    assert_eq!((again.chunks_deleted, again.manifests_deleted), (0, 0));
    server.stop().await;
}
