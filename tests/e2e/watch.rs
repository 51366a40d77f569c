//! Live push: the server watches its root and subscribed clients follow every change.

use std::time::Duration;

use assetsync::pull::{PullConfig, PullEvent, follow};
use assetsync_protocol::Scope;
use tokio::sync::mpsc;

use crate::util::{Served, TestClient, TestServer, random_bytes};

/// A native client running `pull --follow` in the background, its events on a channel.
pub struct Follower {
    pub client: TestClient,
    events: mpsc::UnboundedReceiver<PullEvent>,
    task: tokio::task::JoinHandle<Result<(), assetsync::Error>>,
}

impl Follower {
    pub fn start(server: &TestServer, assets: &[&str]) -> Self {
        Self::start_at(server.url(), assets)
    }

    /// [`Follower::start`] on the sync endpoint `url`.
    pub fn start_at(url: String, assets: &[&str]) -> Self {
        Self::start_with(url, None, assets)
    }

    /// [`Follower::start_at`] presenting `token`.
    pub fn start_with(url: String, token: Option<&str>, assets: &[&str]) -> Self {
        let client = TestClient::new();
        let config = PullConfig { token: token.map(str::to_owned), ..client.config(url) };
        let targets: Vec<Scope> = assets.iter().map(|a| Scope::new(a).unwrap()).collect();
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            follow(&config, &targets, |e| {
                // Progress is for displays; the tests follow commits.
                if !matches!(e, PullEvent::Progress { .. }) {
                    let _ = tx.send(e.clone());
                }
            })
            .await
        });
        Follower { client, events, task }
    }

    /// The next event, failing the test after 10 s.
    pub async fn next(&mut self) -> PullEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("no event within 10 s")
            .expect("follow ended")
    }

    /// Waits for the next `Pulled` event of `asset`, returning its wire bytes in.
    pub async fn pulled(&mut self, asset: &str) -> u64 {
        loop {
            match self.next().await {
                PullEvent::Pulled(r) if r.asset == asset => return r.wire_bytes_in,
                PullEvent::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    }

    /// Waits for the next removal, which must be `asset`'s.
    pub async fn removed(&mut self, asset: &str) {
        loop {
            match self.next().await {
                PullEvent::Removed { asset: gone } => return assert_eq!(gone, asset),
                PullEvent::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    }

    /// Fails the test if anything at all happens within `time`, a lost connection included.
    pub async fn silent_for(&mut self, time: Duration) {
        if let Ok(event) = tokio::time::timeout(time, self.events.recv()).await {
            panic!("expected silence, got {event:?}");
        }
    }

    /// Fails the test if anything is pulled, removed or failed within `time`.
    pub async fn quiet_for(&mut self, time: Duration) {
        let until = tokio::time::Instant::now() + time;
        while let Ok(event) = tokio::time::timeout_at(until, self.events.recv()).await {
            match event.expect("follow ended") {
                PullEvent::Disconnected { .. } | PullEvent::Folder(_) => {}
                event => panic!("nothing changed, yet: {event:?}"),
            }
        }
    }

    pub fn out(&self, asset: &str) -> Option<Vec<u8>> {
        std::fs::read(self.client.out(asset)).ok()
    }

    /// The follower's cache folder.
    pub fn cache(&self) -> std::path::PathBuf {
        self.client.cache()
    }

    pub fn out_dir(&self) -> std::path::PathBuf {
        self.client.dir.path().join("out")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_tracks_rewrites_removals_and_recreations() {
    let server = TestServer::start().await;
    let a1 = random_bytes(1 << 20, 20);
    server.write("a.js", &a1);
    server.write("b.js", b"b, first");
    let mut f = Follower::start(&server, &["a.js", "b.js"]);
    f.pulled("a.js").await;
    f.pulled("b.js").await;

    // A rebuild: temporary file, then rename; one edit in the middle.
    let mut a2 = a1.clone();
    a2[500_000..500_100].fill(1);
    server.replace("a.js", &a2);
    let wire = f.pulled("a.js").await;
    assert_eq!(f.out("a.js").unwrap(), a2);
    assert!(wire < 64 * 1024, "a small edit cost {wire} bytes");

    std::fs::remove_file(server.root.path().join("b.js")).unwrap();
    f.removed("b.js").await;
    assert!(f.out("b.js").is_none(), "a removed asset must leave the output folder");

    server.write("b.js", b"b, second");
    f.pulled("b.js").await;
    assert_eq!(f.out("b.js").unwrap(), b"b, second");
    server.stop().await;
}

/// 50 writes in a burst are one change once the file is quiet: the client ends with the last
/// write after far fewer than 50 syncs.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_writes_is_synced_a_few_times_and_ends_on_the_last_write() {
    let server = TestServer::start().await;
    server.write("app.js", b"start");
    let mut f = Follower::start(&server, &["app.js"]);
    f.pulled("app.js").await;
    let build = |i: u32| format!("build {i} ").repeat(1000);
    for i in 0..50 {
        server.replace("app.js", build(i).as_bytes());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = build(49);
    let mut syncs = 0;
    while f.out("app.js").as_deref() != Some(last.as_bytes()) {
        f.pulled("app.js").await;
        syncs += 1;
    }
    // Syncs that come after the last write landed count too: wait well past the quiet time.
    while let Ok(event) = tokio::time::timeout(Duration::from_secs(1), f.events.recv()).await {
        if let PullEvent::Pulled(r) = event.expect("follow ended") {
            assert_eq!(r.asset, "app.js");
            syncs += 1;
        }
    }
    assert_eq!(f.out("app.js").unwrap(), last.as_bytes(), "still on the last write");
    assert!(syncs <= 5, "{syncs} syncs for one burst");
    server.stop().await;
}

/// The server goes away and comes back (knowing nothing): the follower reconnects by itself and
/// picks up what changed while it was away.
#[tokio::test(flavor = "multi_thread")]
async fn follow_reconnects_after_a_server_restart() {
    let server = TestServer::start().await;
    server.write("app.js", &random_bytes(300_000, 21));
    let mut f = Follower::start(&server, &["app.js"]);
    f.pulled("app.js").await;
    let server = server.restart().await;
    let next = random_bytes(300_000, 22);
    server.write("app.js", &next);
    loop {
        match f.next().await {
            PullEvent::Pulled(r) if f.out("app.js").as_deref() == Some(&next[..]) => {
                assert_eq!(r.asset, "app.js");
                break;
            }
            _ => {}
        }
    }
    // Each change is reported once: a script run per `pulled` line runs once.
    f.quiet_for(Duration::from_millis(1500)).await;
    server.stop().await;
}

/// A change noticed first by another client's sync (before the file's quiet time is over) still
/// reaches the subscribers: the index announces every new version, whoever made it index.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_first_seen_by_a_sync_is_still_pushed() {
    let server = TestServer::start_with(|c| c.watch = Some(Duration::from_secs(30))).await;
    server.write("app.js", b"one");
    let mut f = Follower::start(&server, &["app.js"]);
    f.pulled("app.js").await;
    server.replace("app.js", b"two");
    TestClient::new().pull_and_check(&server, "app.js", b"two").await;
    f.pulled("app.js").await;
    assert_eq!(f.out("app.js").unwrap(), b"two");
    server.stop().await;
}

/// A watching server (a process of its own) of a root whose `dist/` holds `files` small files
/// in `folders` folders.
fn serve_folder(files: usize, folders: usize) -> (tempfile::TempDir, Served) {
    let root = tempfile::tempdir().unwrap();
    for i in 0..files {
        let path = root.path().join(format!("dist/{:02}/f{i}.js", i % folders));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("export const f{i} = {i};")).unwrap();
    }
    let server = Served::start(["--no-store".as_ref(), "--root".as_ref(), root.path().as_os_str()]);
    (root, server)
}

/// A watched server that answered folder syncs goes idle: its own listing of directories and
/// reading of files, which notify reports (it watches `IN_OPEN`), set nothing off again.
#[tokio::test(flavor = "multi_thread")]
async fn a_watching_server_goes_idle_after_folder_syncs() {
    let (_root, server) = serve_folder(2_000, 20);
    let client = TestClient::new();
    for _ in 0..3 {
        client.pull_from(server.url.clone(), &["dist/"]).await.unwrap();
    }
    // Whatever the syncs left for the watcher (a quiet time, then its events) is done by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server.cpu() - before;
    assert!(idle < Duration::from_millis(200), "an idle server used {idle:?} of CPU in 2 s");
}

/// The server's own reads (indexing the files of a folder it answers, listing its folders) are
/// not changes: the watcher looks at none of those files again (`/status` counts the files it
/// rechecks), while an edit made afterwards is rechecked.
#[tokio::test(flavor = "multi_thread")]
async fn the_servers_own_reads_are_not_changes_the_watcher_rechecks() {
    let (root, server) = serve_folder(500, 10);
    let client = TestClient::new();
    client.pull_from(server.url.clone(), &["dist/"]).await.unwrap();
    let rechecks = || async {
        let status = assetsync::status::fetch(&server.url, None).await.unwrap();
        status["watch_rechecks"].as_u64().unwrap()
    };
    // Past the watcher's quiet time (100 ms) and its handling of what it heard.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rechecks().await, 0, "the watcher rechecked files the server only read");
    std::fs::write(root.path().join("dist/03/f3.js"), "export const f3 = 'edited';").unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while rechecks().await == 0 {
        assert!(std::time::Instant::now() < until, "an edited file was not rechecked within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
