//! Modules and users (`serve --config`): a real server process serving two folders and a
//! private one, read and written by real clients signed in as the secrets file's users.

use std::path::{Path, PathBuf};

use assetsync::pull::{PullConfig, pull};
use assetsync::push::{PushConfig, push};
use assetsync_protocol::Scope;

use crate::util::{BIN, Raw, Served, TestClient, random_bytes};
use crate::watch::Follower;

const ALICE: &str = "alice:a-secret";
const BOB: &str = "bob:b-secret";

/// A config folder: `site/` (alice writes, anyone reads), `docs/` (read-only), `private/`
/// (bob reads), with `extra` appended to the site module, and a secrets file of `mode`.
fn setup(extra: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for module in ["site/js", "docs", "private"] {
        std::fs::create_dir_all(dir.path().join(module)).unwrap();
    }
    std::fs::write(dir.path().join("secrets"), format!("# assetsync users\n{ALICE}\n{BOB}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path().join("secrets"), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let config = dir.path().join("assetsync.toml");
    let text = format!(
        r#"
secrets = "secrets"

[module.site]
path = "site"
read_only = false
write = ["alice"]
{extra}

[module.docs]
path = "docs"
write = ["alice"]

[module.private]
path = "private"
read = ["bob"]
"#
    );
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

fn serve(config: &Path) -> Served {
    Served::start([
        "--no-store".as_ref(),
        "--quiet-ms".as_ref(),
        "20".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ])
}

async fn pull_as(url: &str, token: Option<&str>, asset: &str) -> Result<TestClient, String> {
    let client = TestClient::new();
    let config = PullConfig { token: token.map(str::to_owned), ..client.config(url.to_owned()) };
    match pull(&config, &[Scope::new(asset).unwrap()], |_| {}).await {
        Ok(_) => Ok(client),
        Err(e) => Err(e.to_string()),
    }
}

/// The error a pull that must fail ends with.
async fn pull_refused(url: &str, token: Option<&str>, asset: &str) -> String {
    match pull_as(url, token, asset).await {
        Ok(_) => panic!("pulling {asset} as {token:?} worked"),
        Err(e) => e,
    }
}

async fn push_as(url: &str, token: Option<&str>, from: &Path, asset: &str) -> Result<(), String> {
    let config = PushConfig {
        server: url.to_owned(),
        from: from.to_path_buf(),
        cache: None,
        token: token.map(str::to_owned),
        force: false,
        delete: false,
    };
    push(&config, &[Scope::new(asset).unwrap()], |_| {}).await.map(drop).map_err(|e| e.to_string())
}

/// Every file under `dir`, with its bytes: what a refused upload must leave as it was.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_serve_their_folders_to_the_users_they_name_and_refuse_the_rest() {
    let (dir, config) = setup("", 0o600);
    let app = random_bytes(300_000, 1);
    std::fs::write(dir.path().join("site/js/app.js"), &app).unwrap();
    std::fs::write(dir.path().join("docs/readme.txt"), b"read me").unwrap();
    std::fs::write(dir.path().join("private/plan.txt"), b"for bob").unwrap();
    let server = serve(&config);
    let url = server.url.clone();

    // Reads: anyone reads site and docs, by paths that start with the module's name.
    let reader = pull_as(&url, None, "site/js/app.js").await.unwrap();
    assert_eq!(std::fs::read(reader.out("site/js/app.js")).unwrap(), app);
    let folder = pull_as(&url, None, "site/").await.unwrap();
    assert_eq!(std::fs::read(folder.out("site/js/app.js")).unwrap(), app);
    assert!(!folder.out("docs/readme.txt").exists(), "a module's listing holds its own files only");
    pull_as(&url, None, "docs/readme.txt").await.unwrap();
    // Only bob reads private.
    for token in [None, Some(ALICE)] {
        let e = pull_refused(&url, token, "private/plan.txt").await;
        assert!(e.contains("forbidden") && e.contains("module private"), "{e}");
    }
    let bob = pull_as(&url, Some(BOB), "private/plan.txt").await.unwrap();
    assert_eq!(std::fs::read(bob.out("private/plan.txt")).unwrap(), b"for bob");
    let e = pull_refused(&url, None, "blog/index.html").await;
    assert!(e.contains("unknown_asset") && e.contains("docs/, private/, site/"), "{e}");
    let e = pull_refused(&url, None, "").await;
    assert!(e.contains("name a module"), "{e}");

    // Writes: alice writes site, and a follower of the module sees it.
    let mut follower = Follower::start_with(url.clone(), None, &["site/"]);
    follower.pulled("site/js/app.js").await;
    let from = tempfile::tempdir().unwrap();
    let mut edited = app.clone();
    edited[1000..2000].fill(7);
    std::fs::create_dir_all(from.path().join("site/js")).unwrap();
    std::fs::create_dir_all(from.path().join("docs")).unwrap();
    std::fs::write(from.path().join("site/js/app.js"), &edited).unwrap();
    std::fs::write(from.path().join("docs/readme.txt"), b"rewritten").unwrap();
    push_as(&url, Some(ALICE), from.path(), "site/js/app.js").await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("site/js/app.js")).unwrap(), edited);
    follower.pulled("site/js/app.js").await;

    // Everyone else is refused, with the reason, and nothing is written.
    std::fs::write(from.path().join("site/js/app.js"), b"vandalised").unwrap();
    let before = contents(dir.path());
    let refused = [
        (Some(BOB), "site/js/app.js", "forbidden"),
        (None, "site/js/app.js", "forbidden"),
        (Some("alice:wrong"), "site/js/app.js", "wrong user or secret"),
        (Some("carol:a-secret"), "site/js/app.js", "wrong user or secret"),
        (Some("a-secret"), "site/js/app.js", "wrong user or secret"),
        (Some(ALICE), "docs/readme.txt", "read_only"),
    ];
    for (token, asset, expected) in refused {
        let e = push_as(&url, token, from.path(), asset).await.unwrap_err();
        assert!(e.contains(expected), "{token:?} pushing {asset}: {e}");
    }
    assert_eq!(contents(dir.path()), before, "a refused upload wrote something");
}

#[tokio::test(flavor = "multi_thread")]
async fn module_limits_refuse_large_files_a_full_quota_and_extra_connections() {
    let limits = "max_file_bytes = 100000\nquota_bytes = 250000\nmax_connections = 1";
    let (dir, config) = setup(limits, 0o600);
    std::fs::write(dir.path().join("site/old.bin"), random_bytes(50_000, 2)).unwrap();
    let server = serve(&config);
    let url = server.url.clone();
    let from = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(from.path().join("site")).unwrap();
    let put = |name: &str, len: usize, seed: u64| {
        std::fs::write(from.path().join("site").join(name), random_bytes(len, seed)).unwrap();
        format!("site/{name}")
    };

    let big = put("big.bin", 100_001, 3);
    let e = push_as(&url, Some(ALICE), from.path(), &big).await.unwrap_err();
    assert!(e.contains("too_large") && e.contains("limit of 100000 bytes"), "{e}");
    // 50,000 + 2 x 90,000 fit in 250,000; a third does not, but replacing a file with a
    // smaller one does.
    for (i, seed) in [(1, 4), (2, 5)] {
        let asset = put(&format!("part{i}.bin"), 90_000, seed);
        push_as(&url, Some(ALICE), from.path(), &asset).await.unwrap();
    }
    let third = put("part3.bin", 90_000, 6);
    let e = push_as(&url, Some(ALICE), from.path(), &third).await.unwrap_err();
    assert!(e.contains("too_large") && e.contains("quota of 250000 bytes"), "{e}");
    let smaller = put("part1.bin", 60_000, 7);
    push_as(&url, Some(ALICE), from.path(), &smaller).await.unwrap();
    assert!(!dir.path().join("site/big.bin").exists() && !dir.path().join("site/part3.bin").exists());

    // One connection at a time in site: a second is told to come back later; other modules
    // are not counted against it.
    // The pushes' own connections are given back as their sockets close, which may be a moment
    // after the push returned.
    let mut tries = 0;
    let first = loop {
        let mut first = Raw::greeted_at(&url).await;
        first.send_text(r#"{"type":"sync","id":1,"asset":"site/old.bin"}"#).await;
        let answer = first.json().await;
        if answer["type"] != "error" {
            break first;
        }
        tries += 1;
        assert!(answer["code"] == "busy" && tries < 50, "the first connection was refused: {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let e = pull_refused(&url, None, "site/old.bin").await;
    assert!(e.contains("busy") && e.contains("maximum of 1 connections"), "{e}");
    pull_as(&url, None, "docs/").await.unwrap();
    drop(first);
    let mut tries = 0;
    while let Err(e) = pull_as(&url, None, "site/old.bin").await {
        tries += 1;
        assert!(tries < 50, "the module's place was not given back: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn a_secrets_file_others_can_read_stops_the_server_from_starting() {
    let (_dir, config) = setup("", 0o644);
    let output = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-store", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("may be read by other users") && stderr.contains("chmod 600"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line naming the cause and the fix: {stderr}");
}
