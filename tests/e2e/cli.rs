//! The `assetsync` binary's contract: flags, `--json` output, exit codes and one-line errors.

use std::process::Command;

use crate::util::{BIN, TestClient, TestServer, random_bytes};

fn assetsync() -> Command {
    Command::new(BIN)
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

/// A small disk of its own: a tmpfs mounted in a private mount namespace (`unshare`, which
/// needs no root where user namespaces are enabled), held open by a sleeping process. Commands
/// run inside it with `nsenter`; the test reads its files through `/proc/PID/root`.
pub struct SmallDisk {
    holder: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (and a note on stderr) where this machine cannot create the namespace.
    pub fn mount(bytes: u64) -> Option<SmallDisk> {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let script = format!("mount -t tmpfs -o size={bytes} tmpfs \"$0\" && echo mounted && exec sleep 600");
        let holder = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let skipped = |why: &str| crate::util::skipped("the disk-full tests", why);
        let mut holder = match holder {
            Ok(holder) => holder,
            Err(e) => {
                skipped(&format!("cannot start unshare: {e}"));
                return None;
            }
        };
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if line.trim() != "mounted" {
            let mut why = String::new();
            let _ = std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut why);
            skipped(&format!("cannot mount a small tmpfs in a user namespace here: {why}"));
            let _ = holder.kill();
            return None;
        }
        Some(SmallDisk { holder, dir })
    }

    /// A command run inside the namespace, where the tmpfs is mounted.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "--user", "--mount", "--preserve-credentials"]);
        cmd.arg(program);
        cmd
    }

    pub fn resize(&self, bytes: u64) {
        let status = self
            .command("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.dir.path())
            .status();
        assert!(status.unwrap().success());
    }

    /// `relative` inside the tmpfs, as the test process can reach it.
    pub fn outside(&self, relative: &str) -> std::path::PathBuf {
        let inside = self.dir.path().join(relative);
        std::path::Path::new(&format!("/proc/{}/root", self.holder.id()))
            .join(inside.strip_prefix("/").unwrap())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The disk fills up during a pull: a one-line error naming the cause, `--out` and the cache
/// keep the previous verified version, no temporary file is left behind, and once there is room
/// again the same command completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_the_pull_clearly_and_keeps_the_previous_version() {
    const MIB: usize = 1 << 20;
    let Some(disk) = SmallDisk::mount(6 * MIB as u64) else { return };
    let server = TestServer::start().await;
    let v1 = random_bytes(2 * MIB, 1);
    server.write("big.bin", &v1);
    let (cache, out) = (disk.dir.path().join("cache"), disk.dir.path().join("out"));
    let pull = || {
        let mut cmd = disk.command(BIN);
        cmd.args(["pull", "--server", &server.url(), "--cache"]).arg(&cache).arg("--out").arg(&out);
        cmd.arg("big.bin");
        cmd.output().unwrap()
    };
    let first = pull();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(std::fs::read(disk.outside("out/big.bin")).unwrap(), v1);
    let committed = || {
        let cache = assetsync::cache::Cache::open(&disk.outside("cache")).unwrap();
        cache.current(&assetsync_protocol::AssetPath::new("big.bin").unwrap()).map(|m| m.version())
    };
    let before = committed();
    assert!(before.is_some());

    // 2 MiB of new chunks plus a 2 MiB output file do not fit in the 2 MiB left.
    let v2 = random_bytes(2 * MIB, 2);
    server.replace("big.bin", &v2);
    let full = pull();
    assert!(!full.status.success(), "the pull succeeded on a full disk");
    let stderr = String::from_utf8(full.stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("No space left on device"), "{stderr}");
    assert_eq!(std::fs::read(disk.outside("out/big.bin")).unwrap(), v1, "the previous version was damaged");
    let leftovers = |dir: &str| std::fs::read_dir(disk.outside(dir)).unwrap().count();
    assert_eq!(leftovers("out"), 1, "a temporary file was left in --out");
    assert_eq!(committed(), before, "the cache's commit point moved");

    disk.resize(16 * MIB as u64);
    let again = pull();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read(disk.outside("out/big.bin")).unwrap(), v2);
    server.stop().await;
}

/// A transfer that takes over a second shows a progress bar (bytes, rate, time left) when stderr
/// is a terminal, here a pseudo-terminal from `script`; piped, the output is the one line.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_pull_shows_a_progress_bar_on_a_terminal_only() {
    if Command::new("script").arg("--version").output().is_err() {
        return crate::util::skipped("progress bar test", "`script` (util-linux) is not installed");
    }
    // 3 MB go out at once, the last 100 KB at 50 KB/s: about two seconds.
    let server = TestServer::start_with(|c| c.limits.bytes_per_minute = 3_000_000).await;
    server.write("big.bin", &random_bytes(3_100_000, 13));
    let client = TestClient::new();
    let pull = format!(
        "{BIN} pull --server {} --cache {} --out {} big.bin",
        server.url(),
        client.cache().display(),
        client.dir.path().join("out").display()
    );
    let log = client.dir.path().join("tty.log");
    let tty = tokio::task::spawn_blocking(move || {
        Command::new("script").args(["-qec", &pull]).arg(&log).output().unwrap();
        std::fs::read_to_string(&log).unwrap()
    })
    .await
    .unwrap();
    assert!(tty.contains("big.bin [") && tty.contains("/s, ") && tty.contains(" left"), "no bar: {tty}");
    assert!(tty.contains("big.bin: 3100000 bytes"), "{tty}");

    // The same pull, piped: no bar, the summary line alone.
    let piped = tokio::task::spawn_blocking({
        let (url, cache, out) = (server.url(), client.cache(), client.dir.path().join("out2"));
        move || {
            let cache2 = cache.with_extension("2");
            assetsync()
                .args(["pull", "--server", &url, "--cache"])
                .arg(cache2)
                .arg("--out")
                .arg(out)
                .arg("big.bin")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(piped.status.success());
    assert!(!String::from_utf8_lossy(&piped.stderr).contains(" left"), "a bar on a pipe");
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);
    server.stop().await;
}
