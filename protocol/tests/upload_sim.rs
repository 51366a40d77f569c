//! Deterministic simulation of uploads: the engine's [`UploadSync`] against a server that reads
//! uploads as the real one does ([`upload::receiver`], the base checked before writing), over a
//! link that cuts the connection anywhere (before the upload, among its frames, after the server
//! wrote it but before its answer arrived) and a second writer that changes the file meanwhile.
//!
//! Each schedule checks:
//! - the server's file is only ever one of the versions someone wrote whole;
//! - an upload that ends done left its bytes on the server (unless the other writer wrote
//!   after it), and one that met no fault ends done;
//! - a conflict is reported only when the other writer changed the file, and is never lost: the
//!   other writer's version stays;
//! - a resumed upload never sends a chunk the server kept from the cut attempt;
//! - a version committed to the client's store is the one uploaded.
//!
//! `UPLOAD_SIM_SEEDS=N` runs N schedules (default 2,000); `UPLOAD_SIM_SEED=S` replays one.

use std::collections::{HashMap, HashSet, VecDeque};

use assetsync_protocol::engine::{Action, ClientError, Input, Machine, UploadSync};
use assetsync_protocol::upload::{Compressor, receiver, write_ids, write_manifest};
use assetsync_protocol::{
    AssetPath, ChunkId, ChunkParams, ClientMessage, Hash, Manifest, ServerMessage, UploadRequest, VersionId,
};

/// The server's chunking, which a client uses for a new file too.
mod common;
use common::Rng;

const PARAMS: ChunkParams = ChunkParams { min: 2048, avg: 8192, max: 32768 };
const MAX_ACTIONS: usize = 10_000;

fn manifest(data: &[u8]) -> Manifest {
    Manifest::build(AssetPath::new("a.bin").unwrap(), data, PARAMS).unwrap()
}

/// The server: its file, what it kept of uploads cut short, and every version written whole.
#[derive(Default)]
struct Server {
    file: Option<Vec<u8>>,
    kept: HashMap<VersionId, HashMap<ChunkId, Vec<u8>>>,
    /// The SHA-256 of every file written whole.
    written: HashSet<Hash>,
}

impl Server {
    fn current(&self) -> Option<Manifest> {
        self.file.as_deref().map(manifest)
    }

    /// Reads `request` and its first `frames` frames (all of them unless cut); the answer, if
    /// the upload was whole. A cut upload leaves its verified chunks kept.
    fn upload(&mut self, request: &UploadRequest, frames: &[Vec<u8>], whole: bool) -> Option<ServerMessage> {
        let id = request.id;
        let current = self.current();
        if current.as_ref().map(Manifest::version) != request.base {
            return whole.then_some(ServerMessage::Conflict { id, version: current.map(|m| m.version()) });
        }
        let (mut machine, _) = receiver(request, AssetPath::new("a.bin").unwrap(), current.clone()).unwrap();
        if machine.wanted_prefix().is_some() {
            machine.set_prefix(Ok(self.file.clone().unwrap()), true);
        }
        for frame in frames {
            machine.on_frame(frame).unwrap();
        }
        if !whole {
            let kept = self.kept.entry(request.version).or_default();
            kept.extend(machine.take_received().into_iter().map(|c| (c.id(), c.into_bytes())));
            return None;
        }
        let kept = self.kept.remove(&request.version).unwrap_or_default();
        let old: HashMap<ChunkId, Vec<u8>> = match (&current, &self.file) {
            (Some(m), Some(file)) => {
                m.offsets().map(|(at, c)| (c.id, file[at..at + c.len as usize].to_vec())).collect()
            }
            _ => HashMap::new(),
        };
        let local = machine
            .local_chunks()
            .into_iter()
            .filter_map(|id| Some((id, kept.get(&id).or_else(|| old.get(&id))?.clone())))
            .collect();
        let synced = machine.finish(local).expect("a whole upload rebuilds to its version");
        self.written.insert(Hash::of(&synced.data));
        self.file = Some(synced.data);
        Some(ServerMessage::Uploaded { id, version: synced.version })
    }
}

/// The ids of the chunks `frames` carry for `request` against `base`.
fn sent_ids(
    request: &UploadRequest,
    base: Option<Manifest>,
    base_file: Option<&[u8]>,
    frames: &[Vec<u8>],
) -> HashSet<ChunkId> {
    let Ok((mut machine, _)) = receiver(request, AssetPath::new("a.bin").unwrap(), base) else {
        return HashSet::new();
    };
    if machine.wanted_prefix().is_some() {
        machine.set_prefix(base_file.map(<[u8]>::to_vec).ok_or_else(Vec::new), true);
    }
    for frame in frames {
        let _ = machine.on_frame(frame);
    }
    machine.take_received().iter().map(|c| c.id()).collect()
}

fn schedule(seed: u64, verbose: bool) {
    let mut rng = Rng(seed);
    let len = 2_000 + rng.below(200_000);
    let old = rng.bytes(len);
    let new = match rng.below(4) {
        0 => {
            let len = 1 + rng.below(100_000);
            rng.bytes(len)
        }
        _ => rng.edit(&old),
    };
    let mut server = Server::default();
    let exists = !rng.chance(150);
    if exists {
        server.file = Some(old.clone());
        server.written.insert(Hash::of(&old));
    }
    // The client's store holds the old version (a base known, no round trip first), or nothing.
    let knows = rng.chance(500);
    let base = knows.then(|| exists.then(|| manifest(&old)));
    let compress: Compressor = |raw, prefix| {
        prefix
            .is_none()
            .then(|| ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest))
    };
    let mut machine = UploadSync::new(AssetPath::new("a.bin").unwrap(), new.clone(), base, 1).committing();
    if rng.chance(500) {
        machine = machine.compressed(compress);
    }
    let force = rng.chance(200);
    if force {
        machine = machine.force();
    }
    let faults = rng.chance(700);
    let (mut link, mut pending): (VecDeque<ServerMessage>, Option<UploadRequest>) = (VecDeque::new(), None);
    let (mut cut, mut met_fault, mut other_wrote_after_us, mut we_wrote) = (false, false, false, false);
    let mut other_wrote = false;
    let mut trace = Vec::new();
    for _ in 0..MAX_ACTIONS {
        let action = machine.poll();
        let line: String = format!("{action:?}").chars().take(140).collect();
        if verbose {
            println!("{line}");
        }
        trace.push(line);
        // Another writer changes the file, now and then.
        if faults && rng.chance(30) {
            let theirs = rng.edit(server.file.as_deref().unwrap_or(&old));
            server.written.insert(Hash::of(&theirs));
            server.file = Some(theirs);
            (met_fault, other_wrote) = (true, true);
            other_wrote_after_us |= we_wrote;
        }
        let input = match action {
            Action::Send(message) => {
                if cut {
                    machine.handle(Input::Lost("the link is down".into()));
                    continue;
                }
                match message {
                    ClientMessage::GetManifest { id, resume, .. } => {
                        let current = server.current();
                        let received: Vec<ChunkId> = resume
                            .and_then(|v| server.kept.get(&v))
                            .map(|k| k.keys().copied().collect())
                            .unwrap_or_default();
                        link.push_back(ServerMessage::Manifest {
                            id,
                            version: current.as_ref().map(Manifest::version),
                            manifest: current.as_ref().map(write_manifest),
                            received: write_ids(&received),
                        });
                    }
                    ClientMessage::Upload(request) => {
                        if request.frames == 0 {
                            let answer = server.upload(&request, &[], true);
                            we_wrote |= matches!(answer, Some(ServerMessage::Uploaded { .. }));
                            link.extend(answer);
                        } else {
                            pending = Some(request);
                        }
                    }
                    other => panic!("an upload sent {other:?}"),
                }
                Input::Sent { wire: 1 }
            }
            Action::SendFrames(frames) => {
                let request = pending.take().expect("frames follow an upload");
                // Whatever the server kept of this version must not be sent again.
                let kept: HashSet<ChunkId> = server
                    .kept
                    .get(&request.version)
                    .map(|k| k.keys().copied().collect())
                    .unwrap_or_default();
                let base = server.current().filter(|m| Some(m.version()) == request.base);
                let sent = sent_ids(&request, base, server.file.as_deref(), frames);
                assert!(sent.is_disjoint(&kept), "a resumed upload sent again a chunk the server kept");
                if faults && rng.chance(300) {
                    // Cut among the frames: the server keeps what it verified.
                    let at = rng.below(frames.len() + 1);
                    server.upload(&request, &frames[..at], false);
                    (cut, met_fault) = (true, true);
                    machine.handle(Input::Lost("cut among the frames".into()));
                    continue;
                }
                let answer = server.upload(&request, frames, true);
                we_wrote |= matches!(answer, Some(ServerMessage::Uploaded { .. }));
                if faults && rng.chance(200) {
                    // Written, but the answer is lost.
                    (cut, met_fault) = (true, true);
                } else {
                    link.extend(answer);
                }
                Input::Sent { wire: 1 }
            }
            Action::Receive => match link.pop_front() {
                Some(message) => Input::Message { message, wire: 1 },
                None if cut => Input::Lost("cut".into()),
                None => panic!("the machine waits for an answer the server never sends"),
            },
            Action::Reconnect { after_ms } => {
                assert!(after_ms <= 5_000);
                link.clear();
                cut = faults && rng.chance(100);
                match cut {
                    true => Input::Lost("refused".into()),
                    false => Input::Reconnected,
                }
            }
            Action::LoadFile(m) => match knows && exists && m.version() == manifest(&old).version() {
                true => Input::File(Ok(old.clone())),
                false => Input::File(Err(Vec::new())),
            },
            Action::Commit(synced) => {
                assert!(synced.data == new, "the commit is the uploaded file");
                assert_eq!(synced.manifest.version(), synced.version);
                Input::Stored
            }
            Action::Warn(_) | Action::Changed { .. } => continue,
            Action::Done => {
                let done = machine.finish();
                assert_eq!(done.version, manifest(&new).version());
                if !other_wrote_after_us {
                    let file = server.file.as_deref().map(Hash::of);
                    assert!(
                        file == Some(Hash::of(&new)),
                        "done, yet the server holds another file\n{}",
                        trace.join("\n")
                    );
                }
                return;
            }
            Action::Failed(error) => {
                assert!(met_fault, "an upload that met no fault failed: {error}\n{}", trace.join("\n"));
                match error {
                    ClientError::Conflict { .. } => assert!(other_wrote, "a conflict without another writer"),
                    ClientError::GaveUpReconnecting { .. } => {}
                    other => panic!("unexpected failure: {other}\n{}", trace.join("\n")),
                }
                return;
            }
            other => panic!("an upload does not ask for {other:?}"),
        };
        machine.handle(input);
        // The server's file is always one someone wrote whole.
        if let Some(file) = &server.file {
            assert!(server.written.contains(&Hash::of(file)), "the server holds a mix");
        }
    }
    panic!("the upload did not end within {MAX_ACTIONS} actions\n{}", trace.join("\n"));
}

#[test]
fn seeded_upload_schedules_keep_every_invariant() {
    if let Some(seed) = std::env::var("UPLOAD_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        schedule(seed, true);
        return;
    }
    let seeds: u64 = std::env::var("UPLOAD_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000);
    for seed in 0..seeds {
        if std::panic::catch_unwind(|| schedule(seed, false)).is_err() {
            panic!(
                "upload schedule {seed} failed; replay it with UPLOAD_SIM_SEED={seed} cargo test -p assetsync-protocol --test upload_sim -- --nocapture"
            );
        }
    }
    println!("{seeds} seeded upload schedules passed");
}
