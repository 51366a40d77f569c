//! Whole folders: one round trip lists and fetches a build folder; deletions and renames follow.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use assetsync::pull::PullEvent;

use crate::util::{TestClient, TestServer, random_bytes};
use crate::watch::Follower;

/// Every file under `dir`, by path relative to it.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_syncs_in_one_request_with_new_changed_and_removed_files() {
    let server = TestServer::start().await;
    let a = random_bytes(300_000, 30);
    server.write("dist/a.js", &a);
    server.write("dist/b.js", b"b");
    server.write("dist/sub/c.js", &random_bytes(100_000, 31));
    server.write("other.js", b"not in the folder");
    let client = TestClient::new();
    let reports = client.pull(&server, &["dist/"]).await.unwrap();
    assert_eq!(reports.len(), 3);
    let out = client.dir.path().join("out");
    assert_eq!(tree(&out.join("dist")), tree(&server.root.path().join("dist")));
    assert!(!out.join("other.js").exists());

    // A rebuild: one file edited, one gone, one new.
    let mut a2 = a.clone();
    a2[150_000..150_100].fill(9);
    server.write("dist/a.js", &a2);
    std::fs::remove_file(server.root.path().join("dist/b.js")).unwrap();
    server.write("dist/d.js", b"new file");
    let reports = client.pull(&server, &["dist/"]).await.unwrap();
    // The small new file comes first, in a pack; the edited one as a delta.
    let fetched: Vec<&str> = reports.iter().map(|r| r.asset.as_str()).collect();
    assert_eq!(fetched, ["dist/d.js", "dist/a.js"]);
    assert!(reports[1].wire_bytes_in < 32 * 1024, "{:?}", reports[1]);
    assert_eq!(tree(&out.join("dist")), tree(&server.root.path().join("dist")));

    // Nothing changed: the listing alone.
    assert!(client.pull(&server, &["dist/"]).await.unwrap().is_empty());
    server.stop().await;
}

/// The shared part is more than the cache writes ahead in one batch (4 MiB): the second file's
/// chunks are read back from the cache while the batch holding them may still be in writing.
#[tokio::test(flavor = "multi_thread")]
async fn chunks_shared_by_files_of_a_folder_cross_the_wire_once() {
    let server = TestServer::start().await;
    let shared = random_bytes(6 << 20, 32);
    server.write("dist/x.bin", &shared);
    let y = [&shared[..], b"and a tail"].concat();
    server.write("dist/y.bin", &y);
    let client = TestClient::new();
    let reports = client.pull(&server, &["dist/"]).await.unwrap();
    let wire: u64 = reports.iter().map(|r| r.wire_bytes_in).sum();
    assert!(wire < (6 << 20) + 100_000, "two files sharing 6 MiB cost {wire} bytes");
    assert!(std::fs::read(client.out("dist/y.bin")).unwrap() == y, "y.bin differs");
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn folder_listings_follow_symlinks_only_inside_the_root() {
    let server = TestServer::start().await;
    server.write("lib/shared.js", b"shared");
    server.write("dist/app.js", b"app");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
    let dist = server.root.path().join("dist");
    std::os::unix::fs::symlink(server.root.path().join("lib/shared.js"), dist.join("shared.js")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), dist.join("secret.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dist.join("outside")).unwrap();
    // A loop must not hang the listing.
    std::os::unix::fs::symlink(&dist, dist.join("again")).unwrap();
    let client = TestClient::new();
    let mut got: Vec<String> =
        client.pull(&server, &["dist/"]).await.unwrap().into_iter().map(|r| r.asset).collect();
    got.sort();
    assert_eq!(got, ["dist/app.js", "dist/shared.js"]);
    server.stop().await;
}

/// `pull --follow dist/`: files created, modified, deleted and renamed on the server; the output
/// folder ends identical to the served one.
#[tokio::test(flavor = "multi_thread")]
async fn following_a_folder_mirrors_creates_edits_deletes_and_renames() {
    let server = TestServer::start().await;
    server.write("dist/a.js", &random_bytes(200_000, 33));
    server.write("dist/b.js", b"b");
    let mut f = Follower::start(&server, &["dist/"]);
    let mut files_in = Vec::new();
    loop {
        match f.next().await {
            PullEvent::Pulled(r) => files_in.push(r.wire_bytes_in),
            PullEvent::Folder(r) => {
                assert_eq!(r.fetched, ["dist/b.js", "dist/a.js"], "small new files come first, packed");
                // Each file's share of the answer, counted per message, not per socket read.
                assert!(files_in.iter().all(|&n| n > 0), "{files_in:?}");
                assert!(files_in.iter().sum::<u64>() < r.wire_bytes_in, "{files_in:?} {r:?}");
                break;
            }
            _ => {}
        }
    }
    let root = server.root.path().join("dist");
    server.write("dist/new/c.js", b"created");
    server.replace("dist/a.js", &random_bytes(200_000, 34));
    std::fs::remove_file(root.join("b.js")).unwrap();
    server.write("dist/old.js", b"to be renamed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(root.join("old.js"), root.join("renamed.js")).unwrap();
    let out = f.out_dir().join("dist");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tree(&out) != tree(&root) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} != {:?}",
            tree(&out).keys(),
            tree(&root).keys()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), f.next()).await;
    }
    server.stop().await;
}

/// Pulls `folder` into `client`; returns its folder report.
async fn pull_folder(
    client: &TestClient,
    server: &TestServer,
    folder: &str,
) -> assetsync::pull::FolderReport {
    let mut report = None;
    let targets = [assetsync_protocol::Scope::new(folder).unwrap()];
    assetsync::pull::pull(&client.config(server.url()), &targets, |e| {
        if let PullEvent::Folder(f) = e {
            report = Some(f.clone());
        }
    })
    .await
    .unwrap();
    report.unwrap()
}

/// A 10,000-file build folder: once pulled, an unchanged check is one round trip of well under
/// 1 KB (the client names its listing by version), one edited file costs its listing entry and
/// its delta, and deletions and renames are mirrored, each as a listing delta.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_unchanged_folder_costs_one_small_round_trip_and_changes_travel_as_deltas() {
    let server = TestServer::start().await;
    let files = 10_000;
    for i in 0..files {
        server.write(&format!("dist/m{}/f{i}.js", i % 50), format!("export const v{i} = {i};\n").as_bytes());
    }
    let client = TestClient::new();
    let cold = pull_folder(&client, &server, "dist/").await;
    assert_eq!((cold.files, cold.fetched.len()), (files, files));
    let (root, out) = (server.root.path().join("dist"), client.dir.path().join("out/dist"));
    assert_eq!(tree(&out), tree(&root));

    let unchanged = pull_folder(&client, &server, "dist/").await;
    assert_eq!((unchanged.files, unchanged.fetched.len()), (files, 0));
    // One request, the shape of the copy under --out included.
    assert_eq!(unchanged.requests, 1, "{unchanged:?}");
    let wire = unchanged.wire_bytes_in + unchanged.wire_bytes_out;
    assert!(wire < 1024, "an unchanged 10,000-file folder cost {wire} bytes");

    server.replace("dist/m7/f7.js", b"export const v7 = 'edited';\n");
    let edited = pull_folder(&client, &server, "dist/").await;
    assert_eq!(edited.fetched, ["dist/m7/f7.js"]);
    let wire = edited.wire_bytes_in + edited.wire_bytes_out;
    assert!(wire < 2048, "one edited file among 10,000 cost {wire} bytes");

    std::fs::remove_file(root.join("m8/f8.js")).unwrap();
    std::fs::rename(root.join("m9/f9.js"), root.join("m9/renamed.js")).unwrap();
    let moved = pull_folder(&client, &server, "dist/").await;
    assert_eq!(moved.fetched, ["dist/m9/renamed.js"]);
    assert_eq!(moved.removed.len(), 2, "{moved:?}");
    assert!(moved.wire_bytes_in + moved.wire_bytes_out < 2048, "{moved:?}");
    assert_eq!(tree(&out), tree(&root));
    server.stop().await;
}

/// With a watcher, a folder that nothing changed in is answered from its last listing, without a
/// `stat` per file (`/status` counts walks and reuses), and a change made just before a pull is
/// in its answer, whatever its kind: a file in a new folder, an edit, a removal, a rename.
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_folder_is_answered_without_a_walk_and_a_change_is_seen_at_once() {
    let server = TestServer::start().await;
    for i in 0..300 {
        server.write(&format!("site/d{}/f{i}.js", i % 10), format!("export const v{i} = {i};\n").as_bytes());
    }
    let client = TestClient::new();
    let (root, out) = (server.root.path().join("site"), client.dir.path().join("out/site"));
    pull_folder(&client, &server, "site/").await;
    let counts = || async {
        let status = assetsync::status::fetch(&server.url(), None).await.unwrap();
        (status["folder_walks"].as_u64().unwrap(), status["folder_listings_reused"].as_u64().unwrap())
    };
    for what in ["a file in a new folder", "an edit", "a removal", "a rename"] {
        // Still for a moment (indexing's reads may have touched access times): the walk is kept,
        // and the next check reuses it. Tried a few times: on a loaded machine the watcher may
        // fall behind the check's wait for it, and the check then walks.
        let mut reused_once = false;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            pull_folder(&client, &server, "site/").await;
            let (walks, reused) = counts().await;
            let unchanged = pull_folder(&client, &server, "site/").await;
            assert_eq!(unchanged.fetched.len() + unchanged.removed.len(), 0);
            reused_once = counts().await == (walks, reused + 1);
            if reused_once {
                break;
            }
        }
        assert!(reused_once, "before {what}, an unchanged folder was walked on every check");
        let (walks, _) = counts().await;
        match what {
            "a file in a new folder" => server.write("site/new/deep/x.js", b"new"),
            "an edit" => server.replace("site/d3/f3.js", b"edited"),
            "a removal" => std::fs::remove_file(root.join("d4/f4.js")).unwrap(),
            _ => std::fs::rename(root.join("d5/f5.js"), root.join("d5/g5.js")).unwrap(),
        }
        pull_folder(&client, &server, "site/").await;
        let (got, want) = (tree(&out), tree(&root));
        let differ: Vec<_> = got.keys().chain(want.keys()).filter(|k| got.get(*k) != want.get(*k)).collect();
        assert!(differ.is_empty(), "{what} made just before the pull was missed: {differ:?}");
        assert_eq!(counts().await.0, walks + 1, "after {what}");
    }
    server.stop().await;
}

/// A folder's copies under `--out` are written beside the sync: one that cannot be written (a
/// folder stands where the file goes) stops the pull with the path, the cache still commits the
/// files that came before the stop, that one included, and once the obstacle is gone the next
/// pull writes its copy from the cache instead of fetching it.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_cannot_be_written_fails_the_pull_and_the_next_one_writes_it_from_the_cache() {
    let server = TestServer::start().await;
    for i in 0..200 {
        server.write(&format!("dist/f{i}.js"), &random_bytes(3000, 700 + i));
    }
    let client = TestClient::new();
    let blocked = client.out("dist/f77.js");
    std::fs::create_dir_all(blocked.join("in the way")).unwrap();
    let error = client.pull(&server, &["dist/"]).await.unwrap_err().to_string();
    assert!(error.contains("cannot write") && error.contains("f77.js"), "{error}");
    assert_eq!(
        std::fs::read(client.out("dist/f5.js")).unwrap(),
        std::fs::read(server.root.path().join("dist/f5.js")).unwrap()
    );

    std::fs::remove_dir_all(&blocked).unwrap();
    let again = pull_folder(&client, &server, "dist/").await;
    assert_eq!(again.repaired, ["dist/f77.js"], "{again:?}");
    assert!(again.fetched.len() < 150, "the files before the stop were committed: {again:?}");
    assert_eq!(tree(&client.dir.path().join("out/dist")), tree(&server.root.path().join("dist")));
    server.stop().await;
}

/// A folder over the server's `--max-folder-files` is refused with what to do, and the session
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_over_the_file_limit_is_refused_with_what_to_do() {
    let server = TestServer::start_with(|c| c.max_folder_files = 20).await;
    for i in 0..21 {
        server.write(&format!("dist/f{i}.js"), b"x");
    }
    let client = TestClient::new();
    let error = client.pull(&server, &["dist/"]).await.unwrap_err().to_string();
    assert!(
        error.contains("holds more than 20 files: sync its subfolders, or raise serve --max-folder-files"),
        "{error}"
    );
    server.write("dist/sub/a.js", b"a");
    client.pull(&server, &["dist/sub/"]).await.unwrap();
    server.stop().await;
}

/// A folder's new versions are committed to the cache in one step: a pull killed halfway leaves
/// the cache holding the old set of versions, every one of them (not a mix), and the next pull
/// completes the new set.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_pull_killed_halfway_leaves_the_cache_on_the_old_folder() {
    // Over 64 KiB each, so that they travel one by one rather than in a pack.
    const FILES: u64 = 40;
    const LEN: usize = 70_000;
    let server = TestServer::start().await;
    let name = |i: u64| format!("dist/f{i:03}.bin");
    for i in 0..FILES {
        server.write(&name(i), &random_bytes(LEN, i));
    }
    let client = TestClient::new();
    pull_folder(&client, &server, "dist/").await;
    let folder = assetsync_protocol::Scope::new("dist/").unwrap();
    let held = || assetsync::cache::Cache::open(&client.cache()).unwrap().entries_in(&folder);
    let old = held();
    assert_eq!(old.len(), FILES as usize);

    // Every file changes; past the first 600 KB the server sends 10 KB a second.
    let new: Vec<Vec<u8>> = (0..FILES).map(|i| random_bytes(LEN, 1000 + i)).collect();
    for i in 0..FILES {
        server.replace(&name(i), &new[i as usize]);
    }
    let server = server.restart_with(|c| c.limits.bytes_per_minute = 600_000).await;
    let mut pull = std::process::Command::new(crate::util::BIN)
        .args(["pull", "--server", &server.url(), "--cache"])
        .arg(client.cache())
        .arg("--out")
        .arg(client.dir.path().join("out"))
        .arg("dist/")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once five files are written under --out in their new version.
    let out = client.dir.path().join("out");
    let written = || {
        (0..FILES).filter(|&i| std::fs::read(out.join(name(i))).ok() == Some(new[i as usize].clone())).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while written() < 5 {
        assert!(std::time::Instant::now() < deadline, "the pull wrote {} new files in a minute", written());
        assert!(pull.try_wait().unwrap().is_none(), "the pull ended before it was killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pull.kill().unwrap();
    pull.wait().unwrap();
    assert!(written() < FILES as usize, "the pull finished before it was killed");
    assert_eq!(held(), old, "the cache holds a mix of the old and new folder");

    let server = server.restart_with(|c| c.limits.bytes_per_minute = 1 << 30).await;
    let report = pull_folder(&client, &server, "dist/").await;
    assert_eq!(report.files, FILES as usize);
    assert_eq!(tree(&client.dir.path().join("out/dist")), tree(&server.root.path().join("dist")));
    server.stop().await;
}

/// A listing of 2,500 files reaches a client that offers `pages` as three `folder` messages
/// of at most 1,024 entries (only the last with the version and no `more`), and one that does
/// not (an older client) as one message, as before; both add up to the same listing.
#[tokio::test]
async fn a_large_listing_comes_in_pages_to_clients_that_take_them_and_whole_to_others() {
    use assetsync_protocol::{LISTING_PAGE, PROTOCOL_VERSION};
    let server = TestServer::start().await;
    for i in 0..2500 {
        server.write(&format!("dist/f{i:04}.js"), format!("export const v = {i};\n").as_bytes());
    }
    let listing = |pages: bool| {
        let url = server.url();
        async move {
            let mut raw = crate::util::Raw::connect_to(&url).await;
            let offer = if pages { r#","encodings":["pages"]"# } else { "" };
            let hello = format!(r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"agent":"t"{offer}}}"#);
            raw.send_text(&hello).await;
            let welcome = raw.json().await;
            let echoed = welcome["encodings"].as_array().is_some_and(|e| e.iter().any(|e| e == "pages"));
            assert_eq!(echoed, pages, "{welcome}");
            raw.send_text(r#"{"type":"list_folder","id":1,"folder":"dist/"}"#).await;
            let mut messages = Vec::new();
            loop {
                let message = raw.json().await;
                assert_eq!((&message["type"], &message["id"]), (&"folder".into(), &1.into()), "{message}");
                let more = message["more"].as_bool().unwrap_or(false);
                messages.push(message);
                if !more {
                    return messages;
                }
            }
        }
    };
    let names = |messages: &[serde_json::Value]| -> Vec<String> {
        let files = messages.iter().flat_map(|m| m["files"].as_array().unwrap());
        files.map(|f| f["asset"].as_str().unwrap().to_owned()).collect()
    };
    let paged = listing(true).await;
    assert_eq!(paged.len(), 3, "2,500 entries in pages of {LISTING_PAGE}");
    assert!(paged.iter().all(|m| m["files"].as_array().unwrap().len() <= LISTING_PAGE));
    let whole = listing(false).await;
    assert_eq!(whole.len(), 1, "an older client gets the listing in one message");
    assert_eq!(names(&paged), names(&whole));
    assert_eq!(names(&whole).len(), 2500);
    server.stop().await;
}

/// 100,000 files in one folder (the default `--max-folder-files`): the CLI pulls them cold (the
/// listing in pages) and then finds them unchanged in one small round trip, the server and the
/// CLI each staying within a bounded amount of memory (processes of their own, measured by their
/// peak resident size).
#[test]
fn a_100000_file_folder_syncs_in_bounded_memory_on_both_ends() {
    const FILES: usize = 100_000;
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // Paths as long as a bundler's (about 90 bytes): the listing is 18 MB of JSON, more than
    // the CLI's 16 MiB message limit, so it must come in pages.
    for i in 0..FILES {
        let sub = root.join(format!("dist/assets/generated-chunks-of-the-vendor-bundle/m{:02}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(
            sub.join(format!("vendor-module-with-a-long-name-{i:06}.js")),
            format!("export const v{i} = {};\n", i * 7919 % 100_003),
        )
        .unwrap();
    }
    let server = crate::util::Served::start([
        "--root".as_ref(),
        root.as_os_str(),
        "--store".as_ref(),
        dir.path().join("store").as_os_str(),
    ]);
    let pull = |json: bool| {
        let mut command = std::process::Command::new(crate::util::BIN);
        command.args(["pull", "--server", &server.url, "--cache"]).arg(dir.path().join("cache"));
        command.arg("--out").arg(dir.path().join("out")).arg("dist/");
        if json {
            command.arg("--json");
        }
        let (output, peak) = crate::util::run_measured(&mut command);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let last = String::from_utf8(output.stdout).unwrap().lines().last().unwrap_or_default().to_owned();
        (last, peak)
    };
    let started = std::time::Instant::now();
    let (cold, cold_peak) = pull(false);
    assert!(cold.starts_with("dist/: 100000 files, 100000 fetched"), "{cold}");
    let cold_time = started.elapsed();
    let (unchanged, unchanged_peak) = pull(true);
    let report: serde_json::Value = serde_json::from_str(&unchanged).unwrap();
    assert_eq!(
        (report["files"].as_u64(), report["fetched"].as_array().map(Vec::len)),
        (Some(100_000), Some(0))
    );
    let wire = report["wire_bytes_in"].as_u64().unwrap() + report["wire_bytes_out"].as_u64().unwrap();
    assert!(wire < 1024, "an unchanged 100,000-file folder cost {wire} bytes");
    let server_peak = crate::util::peak_rss(server.child.id()).unwrap();
    println!(
        "100,000 files: cold pull {cold_time:?}, peak RSS: CLI {} MiB cold, {} MiB unchanged; server {} MiB",
        cold_peak / MIB,
        unchanged_peak / MIB,
        server_peak / MIB
    );
    assert!(cold_peak.max(unchanged_peak) < 256 * MIB, "the CLI peaked at {} MiB", cold_peak / MIB);
    assert!(server_peak < 512 * MIB, "the server peaked at {} MiB", server_peak / MIB);
}

/// A cold pull of 2,000 small modules cut from one real bundle (as a bundler's chunks share
/// its text): they travel in packs, compressed against each other, instead of one message and
/// one compressed frame each. Every file still checks against its listed version.
#[tokio::test(flavor = "multi_thread")]
async fn small_new_files_travel_in_packs_compressed_across_files() {
    let server = TestServer::start().await;
    let bundle = crate::util::real_bundle();
    let mut raw = 0;
    for i in 0..2000usize {
        let len = 2000 + i * 7919 % 3000;
        let at = i * 104_729 % (bundle.len() - len);
        let file = [format!("// module {i}\n").as_bytes(), &bundle[at..at + len]].concat();
        raw += file.len();
        server.write(&format!("dist/m{}/chunk-{i}.js", i % 20), &file);
    }
    let client = TestClient::new();
    let report = pull_folder(&client, &server, "dist/").await;
    assert_eq!(report.fetched.len(), 2000);
    assert_eq!(tree(&client.dir.path().join("out/dist")), tree(&server.root.path().join("dist")));
    let wire = report.wire_bytes_in;
    println!(
        "2,000 modules, {raw} bytes: {wire} bytes on the wire ({:.1}x smaller)",
        raw as f64 / wire as f64
    );
    assert!(wire * 6 < raw as u64, "{raw} bytes of modules cost {wire} bytes");

    // A protocol-3 client (an open tab from before) is answered with one `update` per file.
    let mut old = crate::util::Raw::connect(&server).await;
    old.send_text(r#"{"type":"hello","protocol":3,"agent":"old","encodings":["zstd"]}"#).await;
    assert_eq!(old.json().await["type"], "welcome");
    old.send_text(r#"{"type":"sync_folder","id":1,"folder":"dist/"}"#).await;
    let listing = old.json().await;
    assert_eq!((listing["type"].as_str(), listing.get("packs")), (Some("folder"), None));
    assert_eq!(old.json().await["type"], "update");
    server.stop().await;
}

/// Small files of several chunks (20-60 KiB, cut at 8 KiB on average) travel in packs too from
/// protocol 5: the client cuts each one's chunks as the server did and checks its version. A
/// protocol-4 client gets them as one `update` each, as before.
#[tokio::test(flavor = "multi_thread")]
async fn small_files_of_several_chunks_travel_in_packs_too() {
    let server = TestServer::start().await;
    let bundle = crate::util::real_bundle();
    // Slices that do not overlap, so that no two files share a chunk (a shared one is sent once,
    // and its second file by `update`).
    let mut next = 0;
    for i in 0..25usize {
        let len = 20_000 + i * 7919 % 40_000;
        let slice = &bundle[next..next + len];
        next += len;
        server
            .write(&format!("dist/m{}/big-{i}.js", i % 5), &[format!("// {i}\n").as_bytes(), slice].concat());
    }
    let client = TestClient::new();
    let report = pull_folder(&client, &server, "dist/").await;
    assert_eq!(report.fetched.len(), 25);
    assert_eq!(tree(&client.dir.path().join("out/dist")), tree(&server.root.path().join("dist")));

    // Every file in the packs: the next answer on the connection is that of the next request.
    let answer = async |protocol: u32| {
        let mut raw = crate::util::Raw::connect(&server).await;
        raw.send_text(&format!(
            r#"{{"type":"hello","protocol":{protocol},"agent":"t","encodings":["zstd"]}}"#
        ))
        .await;
        assert_eq!(raw.json().await["type"], "welcome");
        raw.send_text(r#"{"type":"sync_folder","id":1,"folder":"dist/"}"#).await;
        let listing = raw.json().await;
        for _ in 0..listing["packs"].as_u64().unwrap_or(0) {
            assert!(
                matches!(raw.next().await, Some(tokio_tungstenite::tungstenite::Message::Binary(_))),
                "a pack was due"
            );
        }
        raw.send_text(r#"{"type":"list_folder","id":2,"folder":"dist/"}"#).await;
        raw.json().await["type"].as_str().unwrap().to_owned()
    };
    assert_eq!(answer(5).await, "folder", "a file of several chunks did not travel in a pack");
    assert_eq!(answer(4).await, "update", "a protocol-4 client was sent a file of several chunks in a pack");
    server.stop().await;
}
