//! Shared helpers: a real server on 127.0.0.1:0 over a temporary root, a real native client, and
//! a raw WebSocket client for feeding the server hostile input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use assetsync::pull::{PullConfig, PullEvent, PullReport, pull};
use assetsync::{ServeConfig, run};
pub use assetsync_protocol::test_util::random_bytes;
use assetsync_protocol::{Hash, PROTOCOL_VERSION, Scope};
use futures_util::{SinkExt, StreamExt};
use redb::ReadableTable;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tokio_util::sync::CancellationToken;

/// The `assetsync` binary, for tests of the CLI and of the server as a process of its own.
pub const BIN: &str = env!("CARGO_BIN_EXE_assetsync");

/// A server running on loopback for the duration of a test.
pub struct TestServer {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    config: ServeConfig,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A listener on 127.0.0.1, on a port below the kernel's ephemeral range: a restarted server
/// binds the same port again, which an outgoing connection of another test (an ephemeral port)
/// could otherwise hold by then.
async fn listen() -> tokio::net::TcpListener {
    use std::hash::BuildHasher as _;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let state = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..200 {
        let port = 10_000 + (state.hash_one(attempt) % u64::from(low.saturating_sub(10_000).max(1))) as u16;
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut config = ServeConfig { root: root.path().to_path_buf(), ..ServeConfig::default() };
        tweak(&mut config);
        Self::spawn(listen().await, root, config)
    }

    fn spawn(listener: tokio::net::TcpListener, root: tempfile::TempDir, config: ServeConfig) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(run(listener, config.clone(), async move { token.cancelled().await }));
        TestServer { addr, root, config, stop, task: Some(task) }
    }

    /// Stops the server and starts a new one with the same settings on the same address and
    /// root: it knows nothing but what its version store (if it has one) kept.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// [`TestServer::restart`] with changed settings.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap().unwrap();
        // Its port was outside the ephemeral range (see `listen`): no client socket takes it.
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let mut config = self.config.clone();
        tweak(&mut config);
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        Self::spawn(listener, root, config)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/sync", self.addr)
    }

    /// Writes a file under the root, creating folders.
    pub fn write(&self, asset: &str, data: &[u8]) {
        let path = self.root.path().join(asset);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Writes a file the way build tools do: a temporary file, then a rename over the old one.
    pub fn replace(&self, asset: &str, data: &[u8]) {
        let path = self.root.path().join(asset);
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// Stops the server and waits for it, checking that it shut down cleanly.
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A native client with its own cache and output folders.
pub struct TestClient {
    pub dir: tempfile::TempDir,
}

impl TestClient {
    pub fn new() -> Self {
        TestClient { dir: tempfile::tempdir().unwrap() }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn out(&self, asset: &str) -> PathBuf {
        self.dir.path().join("out").join(asset)
    }

    /// This client's settings for pulling from the sync endpoint `url`.
    pub fn config(&self, url: String) -> PullConfig {
        PullConfig {
            server: url,
            cache: self.cache(),
            out: Some(self.dir.path().join("out")),
            token: None,
            relay: None,
            no_delete: false,
        }
    }

    pub async fn pull(&self, server: &TestServer, assets: &[&str]) -> anyhow::Result<Vec<PullReport>> {
        self.pull_from(server.url(), assets).await
    }

    /// Pulls `assets` (files, or folders ending in `/`) from the sync endpoint `url`.
    pub async fn pull_from(&self, url: String, assets: &[&str]) -> anyhow::Result<Vec<PullReport>> {
        let targets: Vec<Scope> = assets.iter().map(|a| Scope::new(a).unwrap()).collect();
        let mut reports = Vec::new();
        pull(&self.config(url), &targets, |e| {
            if let PullEvent::Pulled(r) = e {
                reports.push(r.clone());
            }
        })
        .await?;
        Ok(reports)
    }

    /// Pulls one asset and checks that the output equals `expected` byte for byte (by SHA-256).
    pub async fn pull_and_check(&self, server: &TestServer, asset: &str, expected: &[u8]) -> PullReport {
        let report = self.pull(server, &[asset]).await.unwrap().remove(0);
        let got = std::fs::read(self.out(asset)).unwrap();
        assert_eq!(Hash::of(&got), Hash::of(expected), "{asset}: output differs from the server's file");
        assert_eq!(report.bytes, expected.len() as u64);
        report
    }

    /// A second client whose cache is a copy of this one's.
    pub fn copy(&self) -> Self {
        fn copy_dir(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy_dir(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), target).unwrap();
                }
            }
        }
        let copy = TestClient::new();
        copy_dir(&self.cache(), &copy.cache());
        copy
    }

    /// The ids of the chunks in the cache's database (`client/src/cache.rs`), in order.
    pub fn cached_chunks(&self) -> Vec<[u8; 32]> {
        edit_chunks(&self.cache().join("cache.redb"), |_, ids| ids)
    }

    /// Flips the first byte of a cached chunk behind the client's back, as bit rot would.
    pub fn damage_chunk(&self, id: [u8; 32]) {
        edit_chunks(&self.cache().join("cache.redb"), |chunks, _| {
            let mut bytes = chunks.get(&id).unwrap().unwrap().value().to_vec();
            bytes[0] ^= 0xFF;
            chunks.insert(&id, bytes.as_slice()).unwrap();
        });
    }
}

/// Calls `edit` with the chunk table of the redb database `file` and every chunk id in it, in
/// one transaction: the server's version store and the native cache keep chunks alike.
pub fn edit_chunks<T>(
    file: &Path,
    edit: impl FnOnce(&mut redb::Table<&[u8; 32], &[u8]>, Vec<[u8; 32]>) -> T,
) -> T {
    const CHUNKS: redb::TableDefinition<&[u8; 32], &[u8]> = redb::TableDefinition::new("chunks");
    let db = redb::Database::open(file).unwrap();
    let tx = db.begin_write().unwrap();
    let result = {
        let mut chunks = tx.open_table(CHUNKS).unwrap();
        let ids: Vec<[u8; 32]> = chunks.iter().unwrap().map(|e| *e.unwrap().0.value()).collect();
        edit(&mut chunks, ids)
    };
    tx.commit().unwrap();
    result
}

/// A real published bundle shipped in the repository (three.js r160, 1.2 MB).
pub fn real_bundle() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/js/vendor/three.module.js")).unwrap()
}

/// A raw WebSocket client that speaks JSON by hand, for hostile-input tests.
pub struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Raw {
    pub async fn connect(server: &TestServer) -> Self {
        Self::connect_to(&server.url()).await
    }

    pub async fn connect_to(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.unwrap();
        Raw { ws }
    }

    /// Connects and completes the `hello` handshake.
    pub async fn greeted(server: &TestServer) -> Self {
        Self::greeted_at(&server.url()).await
    }

    pub async fn greeted_at(url: &str) -> Self {
        let mut raw = Self::connect_to(url).await;
        raw.send_text(&format!(r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"agent":"test"}}"#)).await;
        assert_eq!(raw.json().await["type"], "welcome");
        raw
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send(&mut self, message: Message) {
        // The server may close first; the test then checks what it said before closing.
        let _ = self.ws.send(message).await;
    }

    /// The next message, which must be JSON text.
    pub async fn json(&mut self) -> serde_json::Value {
        match self.next().await {
            Some(Message::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// The next frame, pings included (reading one makes the stream answer it with a pong), or
    /// `None` once the socket has ended.
    pub async fn frame(&mut self) -> Option<Message> {
        self.ws.next().await?.ok()
    }

    /// The next message other than ping/pong, or `None` once the socket has ended.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(m) => return Some(m),
                Err(_) => return None,
            }
        }
    }

    /// Reads until the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some(m) = self.next().await {
            if let Message::Close(frame) = m {
                return frame.map(|f| f.code.into());
            }
        }
        None
    }
}

pub use crate::services::skipped;

/// `assetsync serve` as a process of its own (the binary, or a shell that ends by running it),
/// once its banner names its address; each later line of its log is kept for [`Served::wait_for`]
/// and [`Served::said`]. Killed on drop.
pub struct Served {
    pub child: std::process::Child,
    /// Its sync endpoint.
    pub url: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl Served {
    /// Starts `assetsync serve --listen 127.0.0.1:0` with `args`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Self {
        let mut command = std::process::Command::new(BIN);
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        Self::spawn(command)
    }

    /// Starts `command`, which must run the server.
    pub fn spawn(mut command: std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        stderr.read_line(&mut banner).unwrap();
        let addr =
            banner.split("ws://").nth(1).unwrap_or_else(|| panic!("the server did not start: {banner}"));
        let url = format!("ws://{}", addr.split_whitespace().next().unwrap().trim_end_matches(')'));
        let (lines, log) = std::sync::mpsc::channel();
        // Read to the end, so that the server's log never meets a closed pipe.
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = lines.send(std::mem::take(&mut line));
            }
        });
        Served { child, url, log }
    }

    /// Waits (up to three minutes: a 19 MB module's patch takes most of one in a debug build on
    /// a busy machine) for a log line containing `text`, and returns it.
    pub fn wait_for(&self, text: &str) -> String {
        loop {
            let line = self.log.recv_timeout(std::time::Duration::from_secs(180));
            let line =
                line.unwrap_or_else(|_| panic!("the server did not log {text:?} within three minutes"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// The lines logged so far that contain `text`.
    pub fn said(&self, text: &str) -> Vec<String> {
        self.log.try_iter().filter(|l| l.contains(text)).collect()
    }

    /// The CPU time the process has used so far.
    pub fn cpu(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        std::time::Duration::from_millis(ticks * 10)
    }
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in bytes; `None` once it is gone.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Runs `command` to its end: its output, and its peak resident memory (sampled every 10 ms, the
/// last sample just before it exits).
pub fn run_measured(command: &mut std::process::Command) -> (std::process::Output, u64) {
    let child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output().unwrap();
        let _ = done.send(());
        output
    });
    let mut peak = 0;
    while finished.recv_timeout(std::time::Duration::from_millis(10)).is_err() {
        peak = peak_rss(pid).unwrap_or(peak).max(peak);
    }
    (waiter.join().unwrap(), peak)
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
