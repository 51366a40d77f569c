//! `cargo bench -p assetsync --bench sync`: indexing throughput against memcpy in the same run,
//! and bytes on the wire for the edit cases of the end-to-end tests, over a real loopback server.

use std::hint::black_box;
use std::time::{Duration, Instant};

use assetsync::pull::{PullConfig, PullEvent, pull};
use assetsync::{ServeConfig, run};
use assetsync_protocol::test_util::random_bytes;
use assetsync_protocol::{AssetPath, ChunkParams, Hash, Manifest, Scope, chunk_data};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    throughput();
    wire();
}

/// Best of several runs, in MB/s (10^6 bytes per second).
fn best_mb_s(len: usize, mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    len as f64 / best.as_secs_f64() / 1e6
}

fn throughput() {
    let data = random_bytes(64 * MIB, 1);
    let params = ChunkParams::default();
    let mut copy = vec![0u8; data.len()];
    let memcpy = best_mb_s(data.len(), || {
        copy.copy_from_slice(black_box(&data));
        black_box(&copy);
    });
    let cdc = best_mb_s(data.len(), || {
        let n = fastcdc::v2020::FastCDC::new(&data, params.min, params.avg, params.max).count();
        black_box(n);
    });
    let sha = best_mb_s(data.len(), || {
        black_box(Hash::of(black_box(&data)));
    });
    let chunk_hash = best_mb_s(data.len(), || {
        black_box(chunk_data(&data, params).unwrap());
    });
    let manifest = best_mb_s(data.len(), || {
        black_box(Manifest::build(AssetPath::new("x").unwrap(), &data, params).unwrap());
    });
    // What the server's indexer does: chunk ids on one thread, whole-file hash on another.
    let indexer = best_mb_s(data.len(), || {
        std::thread::scope(|s| {
            let whole = s.spawn(|| Hash::of(&data));
            black_box(chunk_data(&data, params).unwrap());
            black_box(whole.join().unwrap());
        })
    });
    let alone = 1.0 / (1.0 / cdc + 1.0 / sha);
    println!("## Indexing throughput (64 MiB buffer, avg chunk 8 KiB, best of 7, one run)\n");
    println!("| operation | MB/s | vs memcpy |");
    println!("|---|---:|---:|");
    for (name, v) in [
        ("memcpy", memcpy),
        ("FastCDC v2020 cut points only", cdc),
        ("SHA-256 of the whole buffer", sha),
        ("chunk + SHA-256 per chunk (`chunk_data`)", chunk_hash),
        ("manifest on one thread (chunk ids + whole-file hash)", manifest),
        ("server indexer (whole-file hash on a 2nd thread)", indexer),
    ] {
        println!("| {name} | {v:.0} | {:.3} |", v / memcpy);
    }
    println!(
        "\nchunk+hash reaches {:.0}% of FastCDC and SHA-256 run back to back ({alone:.0} MB/s)\n",
        100.0 * chunk_hash / alone
    );
}

fn wire() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/sync", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let config = ServeConfig { root: root.path().to_path_buf(), ..ServeConfig::default() };
        let server = tokio::spawn(run(listener, config, async move { token.cancelled().await }));
        let client = tempfile::tempdir().unwrap();
        let pull_cfg = PullConfig {
            server: url,
            cache: client.path().join("cache"),
            out: None,
            token: None,
            relay: None,
            no_delete: false,
        };

        let big = random_bytes(8 * MIB, 2);
        let bundle =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/js/vendor/three.module.js")).unwrap();
        let mut edited = big.clone();
        edited[4 * MIB..4 * MIB + 1024].copy_from_slice(&random_bytes(1024, 3));
        let mut prepended = b"/* banner */\n".to_vec();
        prepended.extend_from_slice(&edited);
        let bundle_edit = String::from_utf8(bundle.clone())
            .unwrap()
            .replacen("const REVISION = '160';", "const REVISION = '161-dev';", 1)
            .into_bytes();
        let steps: [(&str, &str, &[u8]); 6] = [
            ("8 MiB random, cold", "big.bin", &big),
            ("8 MiB, 1 KiB overwritten in the middle", "big.bin", &edited),
            ("8 MiB, 13 bytes inserted at the start", "big.bin", &prepended),
            ("8 MiB, unchanged", "big.bin", &prepended),
            ("three.js r160 (1.27 MB), cold", "three.js", &bundle),
            ("three.js, one-line edit", "three.js", &bundle_edit),
        ];
        println!("## Bytes on the wire (native client, loopback, counted at the socket)\n");
        println!("| case | file bytes | received | sent | received / file | chunks reused |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, asset, content) in steps {
            std::fs::write(root.path().join(asset), content).unwrap();
            let mut reports = Vec::new();
            let collect = |e: &PullEvent| {
                if let PullEvent::Pulled(r) = e {
                    reports.push(r.clone());
                }
            };
            pull(&pull_cfg, &[Scope::new(asset).unwrap()], collect).await.unwrap();
            let r = reports.remove(0);
            println!(
                "| {name} | {} | {} | {} | {:.4} | {}/{} |",
                r.bytes,
                r.wire_bytes_in,
                r.wire_bytes_out,
                r.wire_bytes_in as f64 / r.bytes as f64,
                r.chunks_reused,
                r.chunks
            );
        }
        stop.cancel();
        server.await.unwrap().unwrap();
    });
}
