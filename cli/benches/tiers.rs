//! `cargo bench -p assetsync --bench tiers [-- RUNS]`: where a client's old version is read
//! from, and what that costs the first update a freshly started server answers.
//!
//! A 5 MB bundle (the real libraries in `demo/js/vendor/`), build 1 then build 2. Each run
//! starts a server on build 2 and times one client's update from build 1 (a fresh copy of a
//! cache holding it), the first request the server answers, so that nothing is cached in its
//! memory yet. The base version is (a) in the server's own version store (the server had
//! served build 1 before a restart onto build 2), or (b) only in a shared S3 bucket (moto on
//! 127.0.0.1: another instance served build 1; this one runs `--no-store --shared-store`).
//! Run 1 of each computes the answer (and keeps it in that tier); runs 2 to RUNS (default 7)
//! find it there. Prints both, side by side.

#[allow(dead_code)] // `serve_bundle` is the fan-out benchmark's
mod common;

#[allow(dead_code)]
#[path = "../../tests/e2e/services.rs"]
mod services;

use std::path::Path;
use std::time::Instant;

use assetsync::pull::PullConfig;
use assetsync_protocol::Scope;

use crate::common::{bundle, copy_cache, pull_one, start_server_with, write_atomic};

const BUNDLE_BYTES: usize = 5_000_000;

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(7);
    tokio::runtime::Runtime::new().unwrap().block_on(run(runs));
}

/// Pulls `app.js` from `url` into the cache `cache`: the time it took, and the bytes received.
async fn update(url: &str, cache: &Path) -> (f64, u64) {
    let config = PullConfig {
        server: url.to_owned(),
        cache: cache.to_owned(),
        out: None,
        token: None,
        relay: None,
        no_delete: false,
    };
    let started = Instant::now();
    let report = pull_one(&config, &[Scope::new("app.js").unwrap()]).await;
    (started.elapsed().as_secs_f64() * 1e3, report.wire_bytes_in)
}

async fn run(runs: usize) {
    let s3 = services::S3::start("the tiers benchmark").expect("the tiers benchmark needs moto");
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("1"), dir.path().join("2"));
    for (root, build) in [(&one, 1), (&two, 2)] {
        std::fs::create_dir(root).unwrap();
        write_atomic(&root.join("app.js"), &bundle(build, BUNDLE_BYTES));
    }
    let store = dir.path().join("store");
    let store_args = ["--store", store.to_str().unwrap()];
    let shared_args = ["--shared-store", "s3://assetsync/bench"];
    let env = services::S3::env(s3.addr());
    let start = |root: &Path, args: &[&str]| start_server_with(root, args, &env);
    // Build 1, served once by a server with the version store and by one on the bucket.
    let base = dir.path().join("base");
    for args in [&store_args[..], &shared_args[..]] {
        let (mut server, url) = start(&one, args);
        update(&url, &base).await;
        std::thread::sleep(std::time::Duration::from_millis(500)); // the bucket's writes
        let _ = server.kill();
        let _ = server.wait();
    }
    let mut results: Vec<(&str, Vec<(f64, u64)>)> =
        vec![("own version store", vec![]), ("shared S3 bucket", vec![])];
    for i in 0..runs {
        for (tier, args) in [(0, &store_args[..]), (1, &shared_args[..])] {
            let (mut server, url) = start(&two, args);
            let cache = dir.path().join(format!("c{tier}-{i}"));
            copy_cache(&base, &cache);
            results[tier].1.push(update(&url, &cache).await);
            let _ = server.kill();
            let _ = server.wait();
        }
    }
    println!(
        "| base version read from | run 1: the answer computed | runs 2-{runs}: the answer kept there, median (min-max) | bytes received (run 1, later) |"
    );
    println!("|---|---:|---:|---:|");
    for (tier, samples) in results {
        let (first, mut later) = (samples[0], samples[1..].to_vec());
        later.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (min, med, max) = (later[0].0, later[later.len() / 2].0, later[later.len() - 1].0);
        println!(
            "| {tier} | {:.0} ms | {med:.0} ms ({min:.0}-{max:.0}) | {} B, {} B |",
            first.0,
            first.1,
            later[later.len() / 2].1
        );
    }
}
