//! The `assetsync` binary's contract: flags, `--json` output, exit codes and one-line errors.

use std::process::Command;

use crate::util::{TestClient, TestServer, random_bytes};

fn assetsync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_assetsync"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_json_reports_every_field_and_gc_frees_space() {
    let server = TestServer::start().await;
    let data = random_bytes(500_000, 11);
    server.write("js/app.js", &data);
    server.write("css/site.css", b"body { color: red }\n");
    let client = TestClient::new();
    let url = server.url();
    let cache = client.cache();
    let out = client.dir.path().join("out");
    let run = move |assets: &[&str]| {
        let mut cmd = assetsync();
        cmd.args(["pull", "--server", &url, "--cache"]).arg(&cache).arg("--out").arg(&out).arg("--json");
        cmd.args(assets);
        cmd.output().unwrap()
    };
    let output = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["js/app.js", "css/site.css"])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for field in [
        "asset",
        "version",
        "bytes",
        "chunks",
        "chunks_reused",
        "wire_bytes_in",
        "wire_bytes_out",
        "elapsed_ms",
    ] {
        assert!(lines[0].get(field).is_some(), "missing {field}: {}", lines[0]);
    }
    assert_eq!(lines[0]["asset"], "js/app.js");
    assert_eq!(lines[0]["bytes"], 500_000);
    assert_eq!(std::fs::read(client.out("js/app.js")).unwrap(), data);
    assert_eq!(std::fs::read(client.out("css/site.css")).unwrap(), b"body { color: red }\n");

    // Replace app.js entirely: after the next pull, its old chunks are garbage.
    server.write("js/app.js", &random_bytes(500_000, 12));
    let output = tokio::task::spawn_blocking(move || run(&["js/app.js"])).await.unwrap();
    assert!(output.status.success());
    let gc = assetsync().args(["gc", "--json", "--cache"]).arg(client.cache()).output().unwrap();
    assert!(gc.status.success());
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert!(report["chunks_deleted"].as_u64().unwrap() > 10, "{report}");
    assert!(report["bytes_freed"].as_u64().unwrap() >= 400_000, "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_exit_non_zero_with_a_one_line_error() {
    let server = TestServer::start().await;
    let client = TestClient::new();
    let url = server.url();
    let cases = [
        (url.clone(), "no/such.js", "unknown asset"),
        (url.clone(), "../escape.js", "invalid asset path"),
        ("ws://127.0.0.1:1/sync".to_owned(), "a.js", "cannot connect"),
        ("http://127.0.0.1:1/sync".to_owned(), "a.js", "ws://"),
    ];
    for (server_url, asset, expected) in cases {
        let cache = client.cache();
        let out = client.dir.path().join("out");
        let output = tokio::task::spawn_blocking(move || {
            assetsync()
                .args(["pull", "--server", &server_url, "--cache"])
                .arg(cache)
                .arg("--out")
                .arg(out)
                .arg(asset)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(!output.status.success(), "{asset} succeeded");
        let stderr = String::from_utf8(output.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(expected), "{stderr}");
        assert!(!client.out(asset).exists());
    }
    server.stop().await;
}
