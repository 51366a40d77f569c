//! Real third-party servers the multi-instance tests run against, on 127.0.0.1 only, and a TCP
//! proxy that can cut a connection to them. Self-contained, so that the benchmarks include it
//! too (`cli/benches/load.rs`).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Notes that `check` could not run here and why: on stderr, and in the file named by
/// `ASSETSYNC_SKIPS`, which `scripts/test.sh` prints at the end, so that CI's output shows it
/// even when the test passes.
pub fn skipped(check: &str, why: &str) {
    let line = format!("SKIPPED: {check}: {}", why.trim());
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("ASSETSYNC_SKIPS") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().append(true).open(path);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// A free port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`, failing the test after 10 s.
fn wait_for_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{what} did not listen on 127.0.0.1:{port} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real `redis-server` on 127.0.0.1 that keeps nothing on disk. Killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port, or notes `check` as skipped and returns `None` where
    /// `redis-server` is not installed (`scripts/test.sh` installs it).
    pub fn start(check: &str) -> Option<Self> {
        match Self::start_on(free_port()) {
            Ok(redis) => Some(redis),
            Err(e) => {
                skipped(check, &format!("cannot run redis-server: {e}"));
                None
            }
        }
    }

    fn start_on(port: u16) -> std::io::Result<Self> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()?;
        let redis = Redis { child, port };
        wait_for_port(port, "redis-server");
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: nothing is flushed, every connection drops).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::start_on(self.port).unwrap();
    }

    /// A connection for the test itself.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on 127.0.0.1 to `target` whose traffic the test can cut: [`CutProxy::cut`] drops
/// every connection and refuses new ones until [`CutProxy::restore`].
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (is_cut, epochs, stopped) = (cut.clone(), epoch.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let dropped = epochs.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        () = dropped.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        CutProxy { addr, cut, epoch, stop }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut epoch = self.epoch.lock().unwrap();
        epoch.cancel();
        *epoch = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A real nginx on 127.0.0.1 running `deploy/nginx.conf`, with only its listening port, its
/// upstream servers and (where a test says so) its timeouts changed. Stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    prefix: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of `upstream` (nginx `server` lines without the `server` word, e.g.
    /// `127.0.0.1:4000 backup`), with `timeout` for its proxy read and send timeouts when given;
    /// or notes `check` as skipped and returns `None` where nginx is not installed.
    pub fn start(check: &str, upstream: &[String], timeout: Option<&str>) -> Option<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists());
        let Some(binary) = binary else {
            skipped(check, "nginx is not installed (scripts/test.sh installs nginx-light)");
            return None;
        };
        let shipped = include_str!("../../deploy/nginx.conf");
        let port = free_port();
        let servers: String = upstream.iter().map(|s| format!("        server {s};\n")).collect();
        let mut config = replace_once(
            shipped,
            "        listen 127.0.0.1:8080;",
            &format!("        listen 127.0.0.1:{port};"),
        );
        config = replace_once(
            &config,
            "        server 127.0.0.1:8081 max_fails=1 fail_timeout=5s;\n        server 127.0.0.1:8082 max_fails=1 fail_timeout=5s;\n",
            &servers,
        );
        if let Some(timeout) = timeout {
            config =
                replace_once(&config, "proxy_read_timeout 300s;", &format!("proxy_read_timeout {timeout};"));
            config =
                replace_once(&config, "proxy_send_timeout 300s;", &format!("proxy_send_timeout {timeout};"));
        }
        let prefix = tempfile::tempdir().unwrap();
        for folder in ["logs", "tmp"] {
            std::fs::create_dir(prefix.path().join(folder)).unwrap();
        }
        // Run as root, nginx's workers drop to `nobody`, who must reach its temporary folders.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(prefix.path().join("nginx.conf"), config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(prefix.path())
            .args(["-c", "nginx.conf", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nginx = Nginx { child, port, prefix };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(Instant::now() < until, "nginx did not listen within 10 s: {}", nginx.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }

    /// Its sync endpoint.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/sync", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("logs/access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would leave them running).
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// `text` with `from`, which must occur exactly once, replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "deploy/nginx.conf no longer holds {from:?}");
    text.replacen(from, to, 1)
}

/// A real S3-compatible server on 127.0.0.1: moto's server mode (PyPI `moto[server]`), which
/// implements the S3 API object_store uses (GET with ranges, PUT, HEAD, DELETE, multipart
/// upload, conditional requests). Holds one bucket, `assetsync`. Killed on drop.
pub struct S3 {
    child: Child,
    pub port: u16,
}

impl S3 {
    pub const BUCKET: &str = "assetsync";

    /// Starts it on a free port with an empty bucket, or notes `check` as skipped and returns
    /// `None` where moto is not installed (`scripts/test.sh` installs it).
    pub fn start(check: &str) -> Option<Self> {
        let installed = Command::new("python3").args(["-c", "import moto.server"]).status();
        if !installed.is_ok_and(|s| s.success()) {
            skipped(check, "moto is not installed (scripts/test.sh runs pip install 'moto[server]')");
            return None;
        }
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s3 = S3 { child, port };
        wait_for_port(port, "moto");
        let (status, body) = s3.http("PUT", &format!("/{}", Self::BUCKET));
        assert_eq!(status, 200, "cannot create the bucket: {body}");
        Some(s3)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The environment an `assetsync serve` needs to reach S3 at `endpoint`.
    pub fn env(endpoint: SocketAddr) -> [(&'static str, String); 5] {
        [
            ("AWS_ENDPOINT", format!("http://{endpoint}")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The keys of the bucket's objects under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.objects(prefix).into_iter().map(|(key, _)| key).collect()
    }

    /// The keys and ETags of the bucket's objects under `prefix` (a multipart upload's ETag
    /// ends in `-PARTS`).
    pub fn objects(&self, prefix: &str) -> Vec<(String, String)> {
        let (status, body) = self.http("GET", &format!("/{}?list-type=2&prefix={prefix}", Self::BUCKET));
        assert_eq!(status, 200, "{body}");
        let field = |xml: &str, tag: &str| {
            let open = format!("<{tag}>");
            xml.split_once(&open)?.1.split_once(&format!("</{tag}>")).map(|(v, _)| v.to_owned())
        };
        body.split("<Contents>")
            .skip(1)
            .filter_map(|object| Some((field(object, "Key")?, field(object, "ETag")?)))
            .collect()
    }

    /// One plain HTTP/1.1 request (moto does not check signatures): its status and body.
    fn http(&self, method: &str, target: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr()).unwrap();
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned()))
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
