//! `cargo bench -p assetsync --bench load [-- CLIENTS]`: many clients updating at once.
//!
//! Starts the release `assetsync serve` as its own process on 127.0.0.1 with a 5 MB bundle made
//! of the real libraries in `demo/js/vendor/`. One client syncs it; its cache is then
//! hard-linked into CLIENTS (default 1000) caches (chunk files never change in place, so they
//! can be shared). The bundle is rebuilt (one renamed function per library copy) and all
//! clients update at the same moment, each over its own connection, in this process. Prints the
//! p50/p99/max sync time, what each client received, and the server's CPU time and peak RSS.

mod common;

use std::path::Path;
use std::time::Instant;

use assetsync::pull::{PullConfig, pull};
use assetsync_protocol::Scope;

use crate::common::{bundle, serve_bundle, usage, write_atomic};

const BUNDLE_BYTES: usize = 5_000_000;

fn main() {
    let clients: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    tokio::runtime::Runtime::new().unwrap().block_on(run(clients));
}

/// Copies the cache `from` to `to`, hard-linking its files (but not its lock file: each cache
/// must have its own).
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_name() == "lock" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            link_tree(&entry.path(), &target);
        } else {
            std::fs::hard_link(entry.path(), target).unwrap();
        }
    }
}

async fn run(clients: usize) {
    let asset = "app.js";
    let (root, mut server, url) = serve_bundle(asset, BUNDLE_BYTES);
    let caches = tempfile::tempdir().unwrap();
    let config = |i: usize| PullConfig {
        server: url.clone(),
        cache: caches.path().join(format!("c{i}")),
        out: None,
        token: None,
    };
    let target = [Scope::new(asset).unwrap()];
    pull(&config(0), &target, |_| {}).await.unwrap();
    for i in 1..clients {
        link_tree(&caches.path().join("c0"), &caches.path().join(format!("c{i}")));
    }

    write_atomic(&root.path().join(asset), &bundle(2, BUNDLE_BYTES));
    let (cpu0, _) = usage(server.id());
    let (client_cpu0, _) = usage(std::process::id());
    let started = Instant::now();
    let syncs = (0..clients).map(|i| {
        let (config, target) = (config(i), target.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let report = pull(&config, &target, |_| {}).await.unwrap().remove(0);
            (t.elapsed(), report)
        })
    });
    let results = futures_util::future::join_all(syncs).await;
    let wall = started.elapsed();
    let (cpu1, rss) = usage(server.id());
    let (client_cpu1, _) = usage(std::process::id());
    let mut times: Vec<f64> = Vec::new();
    let mut versions = std::collections::HashSet::new();
    let mut wire_in = 0;
    for result in results {
        let (elapsed, report) = result.unwrap();
        times.push(elapsed.as_secs_f64() * 1e3);
        versions.insert(report.version);
        wire_in += report.wire_bytes_in;
    }
    assert_eq!(versions.len(), 1, "every client must end on the same verified version");
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!("| measurement | result |");
    println!("|---|---:|");
    println!("| clients updating a {:.1} MB bundle at once | {clients} |", BUNDLE_BYTES as f64 / 1e6);
    println!("| all verified and committed, wall time | {:.2} s |", wall.as_secs_f64());
    println!("| sync time p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |", pct(0.5), pct(0.99), pct(1.0));
    println!("| bytes received per client (mean) | {} B |", wire_in / clients as u64);
    println!("| server CPU for the {clients} updates | {:.2} s |", cpu1 - cpu0);
    println!("| server peak RSS | {rss:.0} MiB |");
    println!(
        "| CPU of the {clients} clients (rebuild, verify and commit 5 MB each; same 2 cores) | {:.2} s |",
        client_cpu1 - client_cpu0
    );
    let _ = server.kill();
    let _ = server.wait();
}
