//! `cargo bench -p assetsync --bench fanout [-- CLIENTS]`: one rebuild pushed to many followers.
//!
//! Starts the release `assetsync serve` as its own process on 127.0.0.1, with a 3 MB bundle made
//! of the real libraries in `demo/js/vendor/`, and CLIENTS (default 200) native clients following
//! it (`pull --follow`, in this process, each with its own cache). Once all hold the first
//! version, the bundle is rebuilt (one renamed function per library copy, written to a temporary
//! file and renamed, as build tools do). Prints the time until the last client has committed the
//! verified new version, the bytes it cost per client, and the server's CPU time and peak RSS
//! read from /proc.

#[allow(dead_code)] // the load benchmarks' helpers
mod common;

use std::time::{Duration, Instant};

use assetsync::pull::{PullConfig, PullEvent, follow};
use assetsync_protocol::{Hash, Scope};
use tokio::sync::mpsc;

use crate::common::{bundle, serve_bundle, usage, write_atomic};

const BUNDLE_BYTES: usize = 3_000_000;

fn main() {
    let clients: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(clients));
}

async fn run(clients: usize) {
    let asset = "app.js";
    let (root, mut server, url) = serve_bundle(asset, BUNDLE_BYTES);

    let caches = tempfile::tempdir().unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let config = PullConfig {
            server: url.clone(),
            cache: caches.path().join(format!("c{i}/cache")),
            out: Some(caches.path().join(format!("c{i}/out"))),
            token: None,
            relay: None,
            no_delete: false,
        };
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let targets = [Scope::new(asset).unwrap()];
            follow(&config, &targets, |e| {
                let _ = tx.send(e.clone());
            })
            .await
        }));
    }
    // Waits for one `Pulled` per client; returns the bytes each received and when the first
    // one landed.
    let wait_for = async |events: &mut mpsc::UnboundedReceiver<PullEvent>| {
        let (mut wire_in, mut first) = (Vec::new(), None);
        while wire_in.len() < clients {
            match tokio::time::timeout(Duration::from_secs(120), events.recv()).await.unwrap().unwrap() {
                PullEvent::Pulled(r) => {
                    first.get_or_insert_with(Instant::now);
                    wire_in.push(r.wire_bytes_in);
                }
                PullEvent::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        (wire_in, first.expect("clients > 0"))
    };
    let t = Instant::now();
    wait_for(&mut events).await;
    let cold = t.elapsed();
    let (cpu0, rss0) = usage(server.id());
    let (client_cpu0, _) = usage(std::process::id());

    let next = bundle(2, BUNDLE_BYTES);
    let expected = Hash::of(&next);
    let t = Instant::now();
    write_atomic(&root.path().join(asset), &next);
    let (wire_in, first) = wait_for(&mut events).await;
    let elapsed = t.elapsed();
    let (cpu1, rss1) = usage(server.id());
    let (client_cpu1, _) = usage(std::process::id());
    for i in 0..clients {
        let out = std::fs::read(caches.path().join(format!("c{i}/out/{asset}"))).unwrap();
        assert_eq!(Hash::of(&out), expected, "client {i} does not hold the new version");
    }
    let mean_in = wire_in.iter().sum::<u64>() as f64 / wire_in.len() as f64;
    println!("| measurement | result |");
    println!("|---|---:|");
    println!("| clients following one {:.1} MB bundle | {clients} |", next.len() as f64 / 1e6);
    println!("| first sync of all clients (cold) | {:.2} s |", cold.as_secs_f64());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| rebuild written -> first client verified and committed | {:.0} ms |", ms(first - t));
    println!("| rebuild written -> last client verified and committed | {:.0} ms |", ms(elapsed));
    println!("| bytes received per client for the rebuild (mean) | {mean_in:.0} B |");
    println!(
        "| server CPU for the rebuild (index once, compress, {clients} answers) | {:.2} s |",
        cpu1 - cpu0
    );
    println!("| server peak RSS before / after the rebuild | {rss0:.0} / {rss1:.0} MiB |");
    println!(
        "| CPU of the {clients} clients for the rebuild (rebuild, verify, commit; same 2 cores) | {:.2} s |",
        client_cpu1 - client_cpu0
    );
    for task in tasks {
        task.abort();
    }
    let _ = server.kill();
    let _ = server.wait();
}
