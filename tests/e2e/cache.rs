//! The native client's cache: corruption is detected and repaired, GC frees exactly the garbage.

use crate::util::{TestClient, TestServer, random_bytes};

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_cache_chunk_is_detected_and_fetched_again() {
    let server = TestServer::start().await;
    let mut data = random_bytes(1 << 20, 7);
    server.write("a.bin", &data);
    let client = TestClient::new();
    client.pull_and_check(&server, "a.bin", &data).await;

    client.damage_chunk(client.cached_chunks()[3]);

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
    let before = client.cached_chunks().len();

    // Replace the second half of a.bin: its old second-half chunks become garbage.
    let mut v2 = v1.clone();
    v2[600_000..].copy_from_slice(&random_bytes(v1.len() - 600_000, 10));
    server.write("a.bin", &v2);
    client.pull(&server, &["a.bin"]).await.unwrap();
    let grown = client.cached_chunks().len();
    assert!(grown > before);

    let mut cache = assetsync::cache::Cache::open(&client.cache()).unwrap();
    let report = cache.gc().unwrap();
    drop(cache);
    assert!(report.chunks_deleted > 10, "{report:?}");
    assert!(report.bytes_freed > 300_000, "{report:?}");
    assert_eq!(client.cached_chunks().len(), grown - report.chunks_deleted);

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

/// A cache written by the releases before the database (one file per chunk and per manifest,
/// `refs.json`) is moved into it on first open: nothing is fetched again, and the old files are
/// gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_cache_in_the_old_layout_is_upgraded_in_place_without_fetching_again() {
    use assetsync_protocol::{AssetPath, ChunkParams, Manifest};
    let server = TestServer::start().await;
    let files = [("a.bin", random_bytes(1 << 20, 21)), ("css/b.css", b"body { color: red }\n".to_vec())];
    let client = TestClient::new();
    let cache = client.cache();
    let mut refs = std::collections::BTreeMap::new();
    for (path, data) in &files {
        server.write(path, data);
        let manifest = Manifest::build(AssetPath::new(path).unwrap(), data, ChunkParams::default()).unwrap();
        for (offset, chunk) in manifest.offsets() {
            let hex = chunk.id.to_hex();
            std::fs::create_dir_all(cache.join("chunks").join(&hex[..2])).unwrap();
            let bytes = &data[offset..offset + chunk.len as usize];
            std::fs::write(cache.join("chunks").join(&hex[..2]).join(&hex), bytes).unwrap();
        }
        std::fs::create_dir_all(cache.join("manifests")).unwrap();
        std::fs::write(cache.join("manifests").join(manifest.version().to_hex()), manifest.canonical_bytes())
            .unwrap();
        refs.insert(path.to_string(), manifest.version());
    }
    std::fs::create_dir_all(cache.join("tmp")).unwrap();
    std::fs::write(cache.join("refs.json"), serde_json::to_vec_pretty(&refs).unwrap()).unwrap();

    let reports = client.pull(&server, &["a.bin", "css/b.css"]).await.unwrap();
    for r in &reports {
        assert_eq!(r.chunks_reused, r.chunks, "{r:?}");
        assert!(r.wire_bytes_in < 512, "the upgraded cache fetched again: {r:?}");
    }
    for (path, data) in &files {
        assert_eq!(&std::fs::read(client.out(path)).unwrap(), data);
    }
    for old in ["chunks", "manifests", "tmp", "refs.json"] {
        assert!(!cache.join(old).exists(), "{old} is still there");
    }
    assert_eq!(client.cached_chunks().len(), reports.iter().map(|r| r.chunks).sum::<usize>());

    // A folder that only looks like one (no refs.json) keeps what it holds.
    let other = TestClient::new();
    for mine in ["tmp/notes.txt", "chunks/data.bin", "manifests/list.txt"] {
        std::fs::create_dir_all(other.cache().join(mine).parent().unwrap()).unwrap();
        std::fs::write(other.cache().join(mine), b"mine").unwrap();
    }
    other.pull(&server, &["a.bin"]).await.unwrap();
    for mine in ["tmp/notes.txt", "chunks/data.bin", "manifests/list.txt"] {
        assert_eq!(std::fs::read(other.cache().join(mine)).unwrap(), b"mine", "{mine} was deleted");
    }
    server.stop().await;
}

/// A cache database that is not one (overwritten, truncated) fails the pull with one line that
/// names the file and what to do, and nothing else is touched.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_cache_database_is_refused_with_what_to_do() {
    let server = TestServer::start().await;
    server.write("a.js", b"export const a = 1;\n");
    let client = TestClient::new();
    std::fs::create_dir_all(client.cache()).unwrap();
    std::fs::write(client.cache().join("cache.redb"), b"not a database").unwrap();
    let error = client.pull(&server, &["a.js"]).await.unwrap_err().to_string();
    assert!(
        error.contains("cache.redb (if it is damaged, delete it: the next pull starts a new cache)"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
    assert_eq!(std::fs::read(client.cache().join("cache.redb")).unwrap(), b"not a database");
    std::fs::remove_file(client.cache().join("cache.redb")).unwrap();
    client.pull(&server, &["a.js"]).await.unwrap();
    server.stop().await;
}
