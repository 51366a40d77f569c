//! `cargo bench -p assetsync --bench load [-- CLIENTS] [--instances 1,2,3 [--shared] | --offload]`:
//! many clients updating at once, or fetching a bundle for the first time.
//!
//! Starts the release `assetsync serve` as its own process on 127.0.0.1 with a 5 MB bundle made
//! of the real libraries in `demo/js/vendor/`. One client syncs it; its cache (one database
//! file) is then copied into CLIENTS (default 1000) caches. The bundle is rebuilt (one renamed function per library copy) and all
//! clients update at the same moment, each over its own connection, in this process. Prints the
//! p50/p99/max sync time, what each client received, and the server's CPU time and peak RSS.
//!
//! With `--instances 1,2,3`, each count N runs the same update against N servers on the same
//! root behind a real nginx running `deploy/nginx.conf` (round robin; `scripts/test.sh`
//! installs nginx), one table row per N, with the CPU the instances spent per update. With
//! `--shared`, each N runs a second time with the instances on one S3 bucket (moto) and one
//! Redis bus (`--shared-store`, `--bus`), where one instance computes the best-level answer for
//! all.
//!
//! With `--offload`, CLIENTS clients with empty caches fetch the 5 MB bundle (100 at a time)
//! through nginx, once with the answers on the WebSocket and once offloaded to nginx's cache
//! (`--offload-url /offload`, `deploy/nginx.conf`); it prints the origin's egress for each: the
//! WebSocket bytes, and the object bytes nginx fetched from the origin (its access log).

#[allow(dead_code)] // `serve_bundle` is the fan-out benchmark's
mod common;

#[allow(dead_code)]
#[path = "../../tests/e2e/services.rs"]
mod services;

use std::process::Child;
use std::time::{Duration, Instant};

use assetsync::pull::{PullConfig, pull};
use assetsync_protocol::Scope;

use crate::common::{bundle, copy_cache, pull_one, start_server_with, usage, write_atomic};

const BUNDLE_BYTES: usize = 5_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clients: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1000);
    let instances: Option<Vec<usize>> = args
        .iter()
        .position(|a| a == "--instances")
        .map(|i| args[i + 1].split(',').map(|n| n.parse().expect("--instances 1,2,3")).collect());
    let shared = args.iter().any(|a| a == "--shared");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if args.iter().any(|a| a == "--offload") {
        println!(
            "| {clients} first visits of a {:.1} MB bundle | origin egress | on the WebSocket | objects nginx fetched from the origin | clients received over HTTP | wall time |",
            BUNDLE_BYTES as f64 / 1e6
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for offload in [false, true] {
            runtime.block_on(egress(clients, offload));
        }
        return;
    }
    match instances {
        None => runtime.block_on(run(clients, None, false)).print_direct(clients),
        Some(counts) => {
            println!(
                "| instances | wall time | updates/s | sync p50 / p99 | server CPU per update (each instance) | peak RSS per instance | bytes per client |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for n in counts {
                runtime.block_on(run(clients, Some(n), false)).print_row(clients, "");
                if shared {
                    runtime
                        .block_on(run(clients, Some(n), true))
                        .print_row(clients, ", shared store and bus");
                }
            }
        }
    }
}

/// What one run measured.
struct Measured {
    wall: Duration,
    /// Sync times, sorted, in ms.
    times: Vec<f64>,
    wire_in: u64,
    /// Each instance's CPU seconds for the updates, and its peak RSS in MiB.
    servers: Vec<(f64, f64)>,
    client_cpu: f64,
}

impl Measured {
    fn pct(&self, p: f64) -> f64 {
        self.times[((self.times.len() - 1) as f64 * p).round() as usize]
    }

    fn print_direct(&self, clients: usize) {
        let (cpu, rss) = self.servers[0];
        println!("| measurement | result |");
        println!("|---|---:|");
        println!("| clients updating a {:.1} MB bundle at once | {clients} |", BUNDLE_BYTES as f64 / 1e6);
        println!("| all verified and committed, wall time | {:.2} s |", self.wall.as_secs_f64());
        let (p50, p99, max) = (self.pct(0.5), self.pct(0.99), self.pct(1.0));
        println!("| sync time p50 / p99 / max | {p50:.0} / {p99:.0} / {max:.0} ms |");
        println!("| bytes received per client (mean) | {} B |", self.wire_in / clients as u64);
        println!("| server CPU for the {clients} updates | {cpu:.2} s |");
        println!("| server peak RSS | {rss:.0} MiB |");
        println!(
            "| CPU of the {clients} clients (rebuild, verify and commit 5 MB each; same 2 cores) | {:.2} s |",
            self.client_cpu
        );
    }

    fn print_row(&self, clients: usize, label: &str) {
        let per_update: Vec<String> =
            self.servers.iter().map(|(cpu, _)| format!("{:.2}", cpu * 1e3 / clients as f64)).collect();
        let rss: Vec<String> = self.servers.iter().map(|(_, rss)| format!("{rss:.0}")).collect();
        println!(
            "| {}{label} | {:.2} s | {:.0} | {:.0} / {:.0} ms | {} ms | {} MiB | {} B |",
            self.servers.len(),
            self.wall.as_secs_f64(),
            clients as f64 / self.wall.as_secs_f64(),
            self.pct(0.5),
            self.pct(0.99),
            per_update.join(" + "),
            rss.join(" / "),
            self.wire_in / clients as u64,
        );
    }
}

/// Runs the update for `clients`, against one server, or `instances` behind nginx (`shared`:
/// on one S3 bucket and one Redis bus).
async fn run(clients: usize, instances: Option<usize>, shared: bool) -> Measured {
    let asset = "app.js";
    let root = tempfile::tempdir().unwrap();
    write_atomic(&root.path().join(asset), &bundle(1, BUNDLE_BYTES));
    let check = "the load benchmark on a shared store";
    let s3 = shared.then(|| services::S3::start(check).expect("the --shared benchmark needs moto"));
    let redis = shared.then(|| services::Redis::start(check).expect("the --shared benchmark needs Redis"));
    let env = s3.as_ref().map(|s3| services::S3::env(s3.addr()).to_vec()).unwrap_or_default();
    let bus = redis.as_ref().map(services::Redis::url);
    let args: Vec<&str> = match &bus {
        Some(bus) => vec!["--bus", bus, "--shared-store", "s3://assetsync/load"],
        None => Vec::new(),
    };
    let mut servers: Vec<(Child, String)> =
        (0..instances.unwrap_or(1)).map(|_| start_server_with(root.path(), &args, &env)).collect();
    let nginx = instances.map(|_| {
        let upstream: Vec<String> = servers
            .iter()
            .map(|(_, url)| url.trim_start_matches("ws://").trim_end_matches("/sync").to_owned())
            .collect();
        services::Nginx::start("the load benchmark behind nginx", &upstream, None)
            .expect("the --instances benchmark needs nginx")
    });
    let url = nginx.as_ref().map_or_else(|| servers[0].1.clone(), |n| n.url());
    let caches = tempfile::tempdir().unwrap();
    let config_at = |i: usize, url: &str| PullConfig {
        server: url.to_owned(),
        cache: caches.path().join(format!("c{i}")),
        out: None,
        token: None,
        relay: None,
        no_delete: false,
    };
    let config = |i: usize| config_at(i, &url);
    let target = [Scope::new(asset).unwrap()];
    // Every instance indexes build 1, the base of the update.
    for (_, direct) in &servers {
        pull(&config_at(0, direct), &target, |_| {}).await.unwrap();
    }
    for i in 1..clients {
        copy_cache(&caches.path().join("c0"), &caches.path().join(format!("c{i}")));
    }

    write_atomic(&root.path().join(asset), &bundle(2, BUNDLE_BYTES));
    let before: Vec<f64> = servers.iter().map(|(s, _)| usage(s.id()).0).collect();
    let (client_cpu0, _) = usage(std::process::id());
    let started = Instant::now();
    let syncs = (0..clients).map(|i| {
        let (config, target) = (config(i), target.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let report = pull_one(&config, &target).await;
            (t.elapsed(), report)
        })
    });
    let results = futures_util::future::join_all(syncs).await;
    let wall = started.elapsed();
    let servers_used: Vec<(f64, f64)> = servers
        .iter()
        .zip(before)
        .map(|((s, _), cpu0)| {
            let (cpu1, rss) = usage(s.id());
            (cpu1 - cpu0, rss)
        })
        .collect();
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
    drop(nginx);
    for (server, _) in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    Measured { wall, times, wire_in, servers: servers_used, client_cpu: client_cpu1 - client_cpu0 }
}

/// First visits through nginx, at most this many at once.
const FIRST_VISITS_AT_ONCE: usize = 100;

/// `clients` first visits of the bundle through nginx, with the answers offloaded or not; prints
/// the origin's egress as a table row.
async fn egress(clients: usize, offload: bool) {
    let asset = "app.js";
    let root = tempfile::tempdir().unwrap();
    write_atomic(&root.path().join(asset), &bundle(1, BUNDLE_BYTES));
    let args: &[&str] = if offload { &["--offload-url", "/offload"] } else { &[] };
    let (mut server, direct) = start_server_with(root.path(), args, &[]);
    let upstream = [direct.trim_start_matches("ws://").trim_end_matches("/sync").to_owned()];
    let nginx = services::Nginx::start("the offload benchmark", &upstream, None)
        .expect("the --offload benchmark needs nginx");
    let caches = tempfile::tempdir().unwrap();
    let target = [Scope::new(asset).unwrap()];
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(FIRST_VISITS_AT_ONCE));
    let started = Instant::now();
    let visits = (0..clients).map(|i| {
        let config = PullConfig {
            server: nginx.url(),
            cache: caches.path().join(format!("c{i}")),
            out: None,
            token: None,
            relay: None,
            no_delete: false,
        };
        let (target, gate) = (target.clone(), gate.clone());
        tokio::spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            let report = pull_one(&config, &target).await;
            // The cache is not needed any more: 5 MB each would add up.
            let _ = std::fs::remove_dir_all(&config.cache);
            report
        })
    });
    let reports = futures_util::future::join_all(visits).await;
    let wall = started.elapsed();
    let (mut ws, mut http) = (0, 0);
    let mut versions = std::collections::HashSet::new();
    for report in reports {
        let report = report.unwrap();
        ws += report.wire_bytes_in;
        http += report.http_bytes_in;
        versions.insert(report.version);
    }
    assert_eq!(versions.len(), 1, "every client must end on the same verified version");
    // `up=` is $upstream_bytes_received: what nginx read from the origin (a cache hit reads none).
    let fetched: u64 = nginx
        .access_log()
        .lines()
        .filter(|l| l.contains("/offload/"))
        .filter_map(|l| l.rsplit("up=").next()?.trim().parse::<u64>().ok())
        .sum();
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    println!(
        "| offload {} | **{}** | {} | {} | {} | {:.1} s |",
        if offload { "on (`--offload-url /offload`, nginx `proxy_cache`)" } else { "off" },
        mb(ws + fetched),
        mb(ws),
        mb(fetched),
        mb(http),
        wall.as_secs_f64()
    );
    drop(nginx);
    let _ = server.kill();
    let _ = server.wait();
}
