//! The shared store (`--shared-store`): instances with different roots and no version store
//! of their own use the versions and answers the others wrote.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::util::{TestClient, TestServer, random_bytes};

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

/// A serves release 1, B and C release 2, all on one shared store and none with a version
/// store. A client that synced v1 from A updates from B at patch level (B never saw v1: it
/// reads v1 from the shared store); a second such client updates from C with the answer B
/// computed, which C does not compute again.
#[tokio::test(flavor = "multi_thread")]
async fn instances_on_one_shared_store_answer_each_others_clients_at_patch_level_and_encode_once() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let start = || {
        let url = url.clone();
        TestServer::start_with(move |c| {
            c.shared_store = Some(url);
            c.store = None;
        })
    };
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
    // B computed the best-level update in the background and shared it.
    let written = wait_for_objects(&answers, 2);

    let report = second.pull_and_check(&c, "app.js", &v2).await;
    assert!(report.wire_bytes_in < 4096, "C sent {} bytes for a 100-byte edit", report.wire_bytes_in);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_for_objects(&answers, 2), written, "C computed and wrote an answer again");
    for server in [a, b, c] {
        server.stop().await;
    }
}
