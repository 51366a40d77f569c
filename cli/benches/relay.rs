//! `cargo bench -p assetsync --bench relay [-- FOLLOWERS [EDGES]]`: one rebuild pushed to
//! FOLLOWERS (default 100) native clients, first all following the origin directly, then
//! through EDGES (default 4) edges (`serve --upstream`) with FOLLOWERS / EDGES each, side by side
//! in one run. Prints, for each, the origin's egress for the rebuild (its `/status` bytes out,
//! which also counts the two status requests) and the time until the last client has committed
//! the verified new version.

#[allow(dead_code)] // the load benchmarks' helpers
mod common;

use std::time::{Duration, Instant};

use assetsync::pull::{PullConfig, PullEvent, follow};
use assetsync_protocol::{Hash, Scope};
use tokio::sync::mpsc;

use crate::common::{bundle, serve_bundle, start_edge, write_atomic};

const BUNDLE_BYTES: usize = 3_000_000;
const ASSET: &str = "app.js";

fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let followers = numbers.next().unwrap_or(100);
    let edges = numbers.next().unwrap_or(4);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("| layout | origin egress for the rebuild | rebuild written -> last client committed |");
    println!("|---|---:|---:|");
    for edges in [0, edges] {
        let (egress, last) = runtime.block_on(run(followers, edges));
        let layout = match edges {
            0 => format!("1 origin, {followers} followers"),
            n => format!("1 origin, {n} edges, {} followers each", followers / n),
        };
        println!("| {layout} | {egress} B | {:.0} ms |", last.as_secs_f64() * 1e3);
    }
}

/// One layout: the origin's egress for one rebuild, and when the last follower had it.
async fn run(followers: usize, edges: usize) -> (u64, Duration) {
    let (root, origin, origin_url) = serve_bundle(ASSET, BUNDLE_BYTES);
    let dirs = tempfile::tempdir().unwrap();
    let mut edge_processes = Vec::new();
    let urls: Vec<String> = match edges {
        0 => vec![origin_url.clone()],
        n => (0..n)
            .map(|i| {
                let (process, url) = start_edge(&origin_url, &dirs.path().join(format!("edge{i}")));
                edge_processes.push(process);
                url
            })
            .collect(),
    };
    let first = bundle(1, BUNDLE_BYTES);
    // Each edge holds the first build before its followers start.
    for i in 0..edges {
        let path = dirs.path().join(format!("edge{i}/files/{ASSET}"));
        while std::fs::read(&path).ok().as_deref() != Some(&first[..]) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..followers {
        let config = PullConfig {
            server: urls[i % urls.len()].clone(),
            cache: dirs.path().join(format!("c{i}/cache")),
            out: Some(dirs.path().join(format!("c{i}/out"))),
            token: None,
            relay: None,
            no_delete: false,
        };
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            follow(&config, &[Scope::new(ASSET).unwrap()], |e| {
                let _ = tx.send(e.clone());
            })
            .await
        }));
    }
    let wait_for_all = async |events: &mut mpsc::UnboundedReceiver<PullEvent>| {
        let mut pulled = 0;
        while pulled < followers {
            match tokio::time::timeout(Duration::from_secs(120), events.recv()).await.unwrap().unwrap() {
                PullEvent::Pulled(_) => pulled += 1,
                PullEvent::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    };
    wait_for_all(&mut events).await;
    let egress = || async {
        assetsync::status::fetch(&origin_url, None).await.unwrap()["bytes_out"].as_u64().unwrap()
    };
    let before = egress().await;
    let next = bundle(2, BUNDLE_BYTES);
    let t = Instant::now();
    write_atomic(&root.path().join(ASSET), &next);
    wait_for_all(&mut events).await;
    let last = t.elapsed();
    let sent = egress().await - before;
    for i in 0..followers {
        let out = std::fs::read(dirs.path().join(format!("c{i}/out/{ASSET}"))).unwrap();
        assert_eq!(Hash::of(&out), Hash::of(&next), "follower {i} does not hold the new version");
    }
    for task in tasks {
        task.abort();
    }
    for mut process in edge_processes.into_iter().chain([origin]) {
        let _ = process.kill();
        let _ = process.wait();
    }
    (sent, last)
}
