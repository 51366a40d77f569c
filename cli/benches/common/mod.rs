//! Helpers shared by the benchmarks that run the release server as its own process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Pulls `target`, one asset; its report.
pub async fn pull_one(
    config: &assetsync::pull::PullConfig,
    target: &[assetsync_protocol::Scope],
) -> assetsync::pull::PullReport {
    let mut report = None;
    assetsync::pull::pull(config, target, |e| {
        if let assetsync::pull::PullEvent::Pulled(r) = e {
            report = Some(r.clone());
        }
    })
    .await
    .unwrap();
    report.expect("the asset was pulled")
}

/// A bundle of `len` bytes: the vendor libraries repeated; `build` renames one function per
/// library copy (a rebuild that touches a few modules).
pub fn bundle(build: u32, len: usize) -> Vec<u8> {
    let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/js/vendor");
    let libs: Vec<String> =
        ["react.development.js", "react-dom.development.js", "lodash.js", "three.module.js"]
            .iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(vendor.join(f)).unwrap()).into_owned())
            .collect();
    let mut out = String::new();
    'fill: for copy in 0.. {
        for lib in &libs {
            out.push_str(&format!("\n/* copy {copy} */\n"));
            out.push_str(&lib.replacen("function ", &format!("function build{build}_"), 1));
            if out.len() >= len {
                break 'fill;
            }
        }
    }
    out.truncate(out.floor_char_boundary(len));
    out.into_bytes()
}

/// Copies the client cache `from` to `to` (but not its lock file: each cache must have its own).
pub fn copy_cache(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_cache(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// utime + stime in seconds, and peak RSS in MiB, of a process.
pub fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    (ticks / 100.0, hwm_kb / 1024.0)
}

/// A temporary root holding `asset`, build 1 of a `len`-byte bundle, served by the release
/// server on a free port: the root, the server process and its sync URL.
pub fn serve_bundle(asset: &str, len: usize) -> (tempfile::TempDir, Child, String) {
    let root = tempfile::tempdir().unwrap();
    write_atomic(&root.path().join(asset), &bundle(1, len));
    let (server, url) = start_server_with(root.path(), &[], &[]);
    (root, server, url)
}

/// Starts `assetsync serve --root root` with `extra` arguments (`--no-store` unless they name
/// a `--store`) and `env` on a free port; returns the process and its sync URL.
pub fn start_server_with(root: &Path, extra: &[&str], env: &[(&str, String)]) -> (Child, String) {
    let no_store = if extra.contains(&"--store") { None } else { Some("--no-store") };
    let mut command = server_command();
    command.arg("--root").arg(root).args(no_store).args(extra).envs(env.iter().map(|(k, v)| (k, v)));
    spawn_server(command)
}

/// Starts an edge of `upstream` (`serve --upstream`) keeping its files in `dir`, on a free port;
/// returns the process and its sync URL.
pub fn start_edge(upstream: &str, dir: &Path) -> (Child, String) {
    let mut command = server_command();
    command.args(["--no-store", "--upstream", upstream, "--edge-dir"]).arg(dir);
    spawn_server(command)
}

/// `assetsync serve` on a free port, for many clients; its other arguments follow.
fn server_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_assetsync"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--max-connections", "10000"]);
    command
}

/// Runs `command` (from [`server_command`]) until its banner names its address.
fn spawn_server(mut command: Command) -> (Child, String) {
    let mut server = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(at) = line.find("at http://") {
            let addr = line[at + 10..].split('/').next().unwrap().to_owned();
            break format!("ws://{addr}/sync");
        }
    };
    // Keep draining the server's log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in stderr.lines() {});
    (server, url)
}
