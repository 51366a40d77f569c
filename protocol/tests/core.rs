//! Tests of the pure core: golden chunk boundaries, and whole syncs driven through the server
//! planner and the client machine without a network.

use std::collections::{HashMap, HashSet, VecDeque};

use assetsync_protocol::engine::{Action, AssetSync, ClientError, Input, Machine};
use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkParams, ChunkSet, ClientSync, ClientView, Error, Event, Hash, MAX_REQUESTS,
    Manifest, RecipeOp, ServerMessage, ask_for_chunks, client_holds, cut_runs, patch, plan,
};

const FIXTURE: &str = "tests/fixtures/lodash-4.17.21.js";
const GOLDEN: &str = "tests/fixtures/lodash-4.17.21.chunks";

/// Pins FastCDC cut points and ids: a chunker upgrade that moves them must fail loudly, because
/// every cached chunk in every client would stop matching. Regenerate with `UPDATE_GOLDEN=1`.
#[test]
fn golden_chunk_boundaries_and_ids() {
    let data = std::fs::read(FIXTURE).unwrap();
    let m = Manifest::build(AssetPath::new("lodash.js").unwrap(), &data, ChunkParams::default()).unwrap();
    let mut text = format!("sha256 {}\nversion {}\n", m.sha256, m.version());
    for (off, c) in m.offsets() {
        text.push_str(&format!("{off} {} {}\n", c.len, c.id));
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &text).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file (create with UPDATE_GOLDEN=1)");
    assert_eq!(text, golden, "chunk boundaries moved; if intended, rerun with UPDATE_GOLDEN=1");
}

/// The chunker cuts where the `fastcdc` crate's own iterator does, for other parameters and
/// lengths than the golden file's too (empty, under the minimum, over the maximum).
#[test]
fn chunks_are_cut_where_fastcdcs_iterator_cuts_them() {
    let data = std::fs::read(FIXTURE).unwrap();
    for avg in [256, 8 << 10, 64 << 10] {
        let params = ChunkParams::with_avg(avg).unwrap();
        for len in [0, 1, params.min as usize, params.min as usize + 1, 3 * params.max as usize, data.len()] {
            let data = &data[..len.min(data.len())];
            let ours: Vec<usize> = assetsync_protocol::chunk_data(data, params)
                .unwrap()
                .iter()
                .map(|c| c.len as usize)
                .collect();
            let theirs: Vec<usize> = fastcdc::v2020::FastCDC::new(data, params.min, params.avg, params.max)
                .map(|c| c.length)
                .collect();
            assert_eq!(ours, theirs, "avg {avg}, {len} bytes");
        }
    }
}

/// An in-memory client store plus a server with version history, wired through the real planner
/// and client machine.
#[derive(Clone, Default)]
struct Client {
    chunks: HashMap<Hash, Vec<u8>>,
    current: Option<Manifest>,
}

struct Server {
    history: Vec<Manifest>,
    data: Vec<u8>,
}

impl Server {
    fn new(data: Vec<u8>) -> Self {
        let mut server = Server { history: Vec::new(), data: Vec::new() };
        server.publish(data);
        server
    }
    fn publish(&mut self, data: Vec<u8>) {
        let m = Manifest::build(AssetPath::new("app.js").unwrap(), &data, ChunkParams::default()).unwrap();
        self.history.push(m);
        self.data = data;
    }
    fn current(&self) -> &Manifest {
        self.history.last().unwrap()
    }
    /// Answers a request: returns the control message and the binary frames.
    fn answer(&self, msg: &assetsync_protocol::ClientMessage) -> (ServerMessage, Vec<Vec<u8>>) {
        let assetsync_protocol::ClientMessage::Sync { id, have, .. } = msg else { panic!() };
        let known: Vec<(u32, &Manifest)> = (0..)
            .zip(&have.versions)
            .filter_map(|(i, v)| Some((i, self.history.iter().find(|m| m.version() == *v)?)))
            .collect();
        let cur = self.current();
        if ask_for_chunks(2, have, known.first().is_none_or(|(i, _)| *i != 0)) {
            return (ServerMessage::UnknownBase { id: *id }, Vec::new());
        }
        let held: HashSet<Hash> = client_holds(have, known.iter().map(|(_, m)| *m), [cur]);
        let p = plan(
            *id,
            cur,
            cur.version(),
            ClientView { base: known.first().map(|&(i, m)| (i, m.version(), m)), held: &held },
        );
        let offsets: Vec<usize> = cur.offsets().map(|(o, _)| o).collect();
        let frames = p
            .send
            .iter()
            .map(|&i| {
                let (o, len) = (offsets[i as usize], cur.chunks[i as usize].len as usize);
                ChunkFrame::Chunk { id: *id, index: i, bytes: &self.data[o..o + len] }.encode()
            })
            .collect();
        (p.message, frames)
    }
}

impl Client {
    /// One sync attempt naming the current version; returns the bytes received over the "wire"
    /// (frames only).
    fn sync(&mut self, server: &Server, tamper: impl Fn(&mut Vec<u8>)) -> Result<usize, Error> {
        self.attempt(server, self.current.clone(), ChunkSet::default(), tamper)
    }

    /// Syncs as both clients do: with the engine's [`AssetSync`], here over a perfect link.
    /// Returns the requests made and the chunk bytes received.
    fn sync_engine(&mut self, server: &Server) -> Result<(u32, usize), ClientError> {
        let asset = AssetPath::new("app.js").unwrap();
        let mut machine = AssetSync::new(asset, self.current.clone(), vec![], 1);
        let mut link = VecDeque::new();
        let mut wire = 0;
        loop {
            let input = match machine.poll() {
                Action::Send(request) => {
                    let (reply, frames) = server.answer(&request);
                    link.push_back(Ok(reply));
                    link.extend(frames.into_iter().map(Err));
                    Input::Sent { wire: 0 }
                }
                Action::Receive => match link.pop_front().expect("the machine waits for nothing") {
                    Ok(message) => {
                        machine.handle(Input::Message { message, wire: 0 });
                        continue;
                    }
                    Err(frame) => {
                        wire += frame.len();
                        machine.handle(Input::Frame { frame: &frame, wire: 0 });
                        continue;
                    }
                },
                Action::CheckFile(m) => Input::Checked(self.file(m).map(drop)),
                Action::LoadFile(m) => Input::File(self.file(m)),
                Action::LoadChunks { ids, .. } => Input::Chunks(
                    ids.iter().filter_map(|id| Some((*id, self.chunks.get(id)?.clone()))).collect(),
                ),
                Action::Verify(data) => Input::Digest(Hash::of(data)),
                Action::Commit(synced) => {
                    for c in &synced.received {
                        self.chunks.insert(c.id(), c.bytes().to_vec());
                    }
                    self.current = Some(synced.manifest.clone());
                    Input::Stored
                }
                Action::Discard(ids) => {
                    ids.iter().for_each(|id| drop(self.chunks.remove(id)));
                    continue;
                }
                Action::Done => return Ok((machine.finish().report.requests, wire)),
                Action::Failed(error) => return Err(error),
                _ => continue,
            };
            machine.handle(input);
        }
    }

    /// The committed file of `m`, or the chunks that keep it from being rebuilt.
    fn file(&self, m: &Manifest) -> Result<Vec<u8>, Vec<Hash>> {
        let data: Vec<u8> =
            m.chunks.iter().flat_map(|c| self.chunks.get(&c.id).cloned().unwrap_or_default()).collect();
        if Hash::of(&data) == m.sha256 { Ok(data) } else { Err(m.damaged_chunks(&data)) }
    }

    /// Retries as [`Error::retry_holding`] says, with chunk sets cut to `prefix` bytes: the rule
    /// under forced collisions (the engine itself always picks collision-safe prefixes; see
    /// `sim.rs` for the engine under faults). Returns the number of requests made.
    fn retry_with_prefix(&mut self, server: &Server, prefix: usize) -> Result<u32, Error> {
        let (mut base, mut held) = (self.current.clone(), Vec::new());
        let mut requests = 0;
        loop {
            requests += 1;
            let have = ChunkSet::with_prefix(held, prefix);
            let cut = have.prefix();
            let error = match self.attempt(server, base.take(), have, |_| {}) {
                Ok(_) => return Ok(requests),
                Err(e) if requests == MAX_REQUESTS => return Err(e),
                Err(e) => e,
            };
            held = error.retry_holding(self.chunks.keys().copied().collect(), cut).ok_or(error)?;
        }
    }

    fn attempt(
        &mut self,
        server: &Server,
        base: Option<Manifest>,
        have: ChunkSet,
        tamper: impl Fn(&mut Vec<u8>),
    ) -> Result<usize, Error> {
        let (mut machine, msg) = ClientSync::new(1, AssetPath::new("app.js").unwrap(), base, vec![], have);
        let (reply, frames) = server.answer(&msg);
        let mut wire = 0;
        let mut event = machine.on_message(reply)?;
        for mut f in frames {
            assert_ne!(event, Event::Complete);
            wire += f.len();
            tamper(&mut f);
            event = machine.on_frame(&f)?;
        }
        assert_eq!(event, Event::Complete);
        let local = machine
            .local_chunks()
            .into_iter()
            .filter_map(|id| Some((id, self.chunks.get(&id)?.clone())))
            .collect();
        let synced = machine.finish(local)?;
        for c in synced.received {
            self.chunks.insert(c.id(), c.into_bytes());
        }
        assert_eq!(Hash::of(&synced.data), synced.manifest.sha256);
        self.current = Some(synced.manifest);
        Ok(wire)
    }
}

/// Plain chunk frames as one batch, as a server with zstd sends them: their indices, the zstd
/// frame (stored uncompressed: the tests are about framing and prefixes), and the raw length.
fn one_batch(frames: &[Vec<u8>]) -> (Vec<u32>, Vec<u8>, usize) {
    let mut indices = Vec::new();
    let mut raw = Vec::new();
    for f in frames {
        let Ok(ChunkFrame::Chunk { index, bytes, .. }) = ChunkFrame::decode(f) else { panic!() };
        indices.push(index);
        raw.extend_from_slice(bytes);
    }
    let compressed =
        ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Uncompressed);
    (indices, compressed, raw.len())
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn cold_then_edit_then_unchanged() {
    let v1 = pseudo_random(1 << 20, 1);
    let mut server = Server::new(v1.clone());
    let mut client = Client::default();
    let cold = client.sync(&server, |_| {}).unwrap();
    assert!(cold >= v1.len());

    let mut v2 = v1.clone();
    v2[500_000..501_024].fill(0xAA);
    server.publish(v2.clone());
    let warm = client.sync(&server, |_| {}).unwrap();
    assert!(warm < 64 * 1024, "1 KiB edit cost {warm} bytes");
    assert_eq!(client.current.as_ref().unwrap().sha256, Hash::of(&v2));

    assert_eq!(client.sync(&server, |_| {}).unwrap(), 0);
}

#[test]
fn tampered_frame_is_rejected_before_it_reaches_the_store() {
    let server = Server::new(pseudo_random(200_000, 2));
    let mut client = Client::default();
    let err = client.sync(&server, |f| *f.last_mut().unwrap() ^= 1).unwrap_err();
    assert!(matches!(err, Error::FileMismatch), "{err}");
    assert!(client.chunks.is_empty() && client.current.is_none());
}

#[test]
fn missing_or_damaged_local_chunks_are_reported_by_id() {
    let mut server = Server::new(pseudo_random(300_000, 3));
    let mut client = Client::default();
    client.sync(&server, |_| {}).unwrap();
    let chunks = client.current.as_ref().unwrap().chunks.clone();
    // One chunk truncated, one flipped in place (same length: only the file hash can tell).
    client.chunks.insert(chunks[5].id, b"rotten".to_vec());
    client.chunks.get_mut(&chunks[9].id).unwrap()[100] ^= 1;
    let mut v2 = server.data.clone();
    v2[0] ^= 1;
    server.publish(v2);
    match client.sync(&server, |_| {}) {
        Err(Error::MissingLocal(ids)) => assert_eq!(ids, vec![chunks[5].id]),
        other => panic!("{other:?}"),
    }
    client.chunks.insert(
        chunks[5].id,
        server.data[chunks[..5].iter().map(|c| c.len as usize).sum::<usize>()..][..chunks[5].len as usize]
            .to_vec(),
    );
    match client.sync(&server, |_| {}) {
        Err(Error::MissingLocal(ids)) => assert_eq!(ids, vec![chunks[9].id]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_that_forgot_the_version_is_answered_from_a_chunk_set() {
    let v1 = pseudo_random(1 << 20, 4);
    let mut client = Client::default();
    client.sync(&Server::new(v1.clone()), |_| {}).unwrap();
    let mut v2 = v1.clone();
    v2[300_000..301_000].fill(7);
    // A restarted server knows only v2.
    let server = Server::new(v2.clone());
    let mut first = client.clone();
    assert!(matches!(first.sync(&server, |_| {}), Err(Error::UnknownBase)));
    let (requests, wire) = client.sync_engine(&server).unwrap();
    assert_eq!(requests, 2);
    assert_eq!(client.current.as_ref().unwrap().sha256, Hash::of(&v2));
    // Only the edited chunk (or two) came over the wire, not the file again.
    assert!(wire < 64 * 1024, "a 1 KB edit after a restart cost {wire} chunk bytes");
}

/// One-byte ids collide by construction: the server wrongly counts a new chunk as held, the
/// client finds it missing, and the retry drops the colliding prefix and still ends verified.
#[test]
fn a_truncated_id_collision_costs_a_retry_not_a_wrong_file() {
    let v1 = pseudo_random(1 << 20, 5);
    let mut client = Client::default();
    client.sync(&Server::new(v1.clone()), |_| {}).unwrap();
    let held = ChunkSet::with_prefix(client.chunks.keys().copied(), 1);
    // Find an edit whose new chunk collides with a held one at one byte.
    let (server, v2) = (0u8..)
        .map(|seed| {
            let mut v2 = v1.clone();
            v2[600_000..600_100].fill(seed);
            (Server::new(v2.clone()), v2)
        })
        .find(|(server, _)| {
            let new: Vec<Hash> = server
                .current()
                .chunks
                .iter()
                .map(|c| c.id)
                .filter(|id| !client.chunks.contains_key(id))
                .collect();
            !held.matching(&new).is_empty()
        })
        .unwrap();
    // unknown_base, the colliding answer, then the repaired one.
    assert_eq!(client.retry_with_prefix(&server, 1).unwrap(), 3);
    assert_eq!(client.current.as_ref().unwrap().sha256, Hash::of(&v2));
}

/// An answer compressed against the client's old version. When the driver rebuilt that file
/// from its store (it needs it as the prefix anyway), the chunks reused from it are taken from
/// there, not read from the store a second time; a copy from memory says nothing about the
/// store, whose chunks are then read (and checked) as usual.
#[test]
fn chunks_reused_from_a_prefix_read_from_the_store_are_not_read_again() {
    let v1 = pseudo_random(300_000, 5);
    let mut server = Server::new(v1.clone());
    let mut client = Client::default();
    client.sync(&server, |_| {}).unwrap();
    let mut v2 = v1.clone();
    v2[150_000..150_100].fill(0x55);
    server.publish(v2.clone());

    for reuse in [true, false] {
        let base = client.current.clone();
        let (mut machine, msg) =
            ClientSync::new(1, AssetPath::new("app.js").unwrap(), base, vec![], ChunkSet::default());
        let (reply, frames) = server.answer(&msg);
        let ServerMessage::Update(mut update) = reply else { panic!("expected an update") };
        // The same answer as one batch compressed "against" v1, as a server with zstd sends it.
        update.dict = true;
        let (indices, compressed, _) = one_batch(&frames);
        machine.on_message(ServerMessage::Update(update)).unwrap();
        assert_eq!(
            machine.wanted_prefix().map(Manifest::version),
            client.current.as_ref().map(Manifest::version)
        );
        machine.set_prefix(Ok(v1.clone()), reuse);
        let frame = ChunkFrame::Batch { id: 1, indices, compressed: &compressed }.encode();
        assert_eq!(machine.on_frame(&frame).unwrap(), Event::Complete);
        let wanted = machine.local_chunks();
        let reused = client.current.as_ref().unwrap().chunks.len() - frames.len();
        assert_eq!(wanted.len(), if reuse { 0 } else { reused }, "reuse: {reuse}");
        let local = wanted.iter().map(|id| (*id, client.chunks[id].clone())).collect();
        let synced = machine.finish(local).unwrap();
        assert_eq!(synced.data, v2);
        assert_eq!(synced.chunks_reused, synced.manifest.chunks.len() - frames.len());
    }
}

/// A driver that hashes received chunks itself (the browser, with `crypto.subtle`) gets the same
/// verified result; an id it gets wrong is caught by the version check, and the machine refuses
/// to assemble before every received chunk is hashed.
#[test]
fn chunks_hashed_by_the_driver_are_checked_like_any_other() {
    let v1 = std::fs::read(FIXTURE).unwrap();
    let server = Server::new(v1.clone());
    for wrong in [false, true] {
        let (mut machine, msg) =
            ClientSync::new(1, AssetPath::new("app.js").unwrap(), None, vec![], ChunkSet::default());
        machine.defer_hashing();
        let (reply, frames) = server.answer(&msg);
        machine.on_message(reply).unwrap();
        let mut unhashed = Vec::new();
        for f in &frames {
            machine.on_frame(f).unwrap();
            unhashed.extend(machine.take_unhashed());
        }
        assert_eq!(unhashed.len(), frames.len(), "every received chunk is left to the driver");
        assert!(machine.take_received().is_empty(), "nothing is held before the driver hashed it");
        for (n, (index, bytes)) in unhashed.into_iter().enumerate() {
            let id = if wrong && n == 3 { Hash::of(b"not these bytes") } else { Hash::of(&bytes) };
            machine.hashed(index, bytes, id);
        }
        match machine.finish(Vec::new()) {
            Ok(synced) => {
                assert!(!wrong);
                assert_eq!(synced.data, v1);
            }
            Err(e) => assert!(wrong && matches!(e, Error::FileMismatch), "{e}"),
        }
    }
    let (mut machine, msg) =
        ClientSync::new(1, AssetPath::new("app.js").unwrap(), None, vec![], ChunkSet::default());
    machine.defer_hashing();
    let (reply, frames) = server.answer(&msg);
    machine.on_message(reply).unwrap();
    for f in &frames {
        machine.on_frame(f).unwrap();
    }
    assert!(matches!(machine.finish(Vec::new()), Err(Error::Protocol(_))));
}

/// A batch too large for one WebSocket message arrives in parts (protocol 3): each part gives
/// progress, the parts join into the same verified file, and a part out of place (another frame
/// inside the batch, bytes past its announced length) is refused.
#[test]
fn a_batch_in_parts_reports_progress_per_part_and_rebuilds_the_same_file() {
    let data = pseudo_random(400_000, 9);
    let server = Server::new(data.clone());
    let start = || {
        let (mut machine, msg) =
            ClientSync::new(1, AssetPath::new("app.js").unwrap(), None, vec![], ChunkSet::default());
        let (reply, frames) = server.answer(&msg);
        let (indices, compressed, raw) = one_batch(&frames);
        assert_eq!(machine.on_message(reply).unwrap(), Event::Progress { received: 0, total: raw as u64 });
        (machine, ChunkFrame::batch(1, indices, &compressed, true))
    };

    let (mut machine, parts) = start();
    assert!(parts.len() >= 6, "{} parts", parts.len());
    let mut seen = Vec::new();
    for part in &parts {
        match machine.on_frame(part).unwrap() {
            Event::Progress { received, total } => seen.push((received, total)),
            Event::Complete => seen.push((data.len() as u64, data.len() as u64)),
        }
    }
    assert_eq!(seen.len(), parts.len());
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "progress rises with every part: {seen:?}");
    assert_eq!(seen.last(), Some(&(data.len() as u64, data.len() as u64)));
    assert_eq!(machine.finish(Vec::new()).unwrap().data, data);

    let (mut machine, parts) = start();
    machine.on_frame(&parts[0]).unwrap();
    let interloper = ChunkFrame::Chunk { id: 1, index: 0, bytes: b"x" }.encode();
    assert!(matches!(machine.on_frame(&interloper), Err(Error::BadFrame(_))));
    let (mut machine, parts) = start();
    assert!(matches!(machine.on_frame(&parts[1]), Err(Error::BadFrame(_))), "a part without its start");
    let (mut machine, parts) = start();
    for part in &parts[..parts.len() - 1] {
        machine.on_frame(part).unwrap();
    }
    let mut long = parts.last().unwrap().clone();
    long.extend_from_slice(b"more");
    assert!(matches!(machine.on_frame(&long), Err(Error::BadFrame(_))), "past the announced length");
}

/// The answer of a server that sends `new` as a binary patch against `old` (all of it new
/// bytes: the patch's matching is the server's business) to a client holding `old`, with runs
/// of sent chunks given as [`RecipeOp::Cut`]s.
fn patch_answer(old: &[u8], new: &[u8]) -> (Manifest, Manifest, ServerMessage, Vec<u8>) {
    let asset = AssetPath::new("app.wasm").unwrap();
    let base = Manifest::build(asset.clone(), old, ChunkParams::default()).unwrap();
    let current = Manifest::build(asset, new, ChunkParams::default()).unwrap();
    let held: HashSet<Hash> = base.chunks.iter().map(|c| c.id).collect();
    let view = ClientView { base: Some((0, base.version(), &base)), held: &held };
    let mut answer = plan(1, &current, current.version(), view).message;
    let ServerMessage::Update(update) = &mut answer else { panic!("an update") };
    update.dict = true;
    let sent = update.recipe.iter().filter(|op| matches!(op, RecipeOp::Sent(_))).count();
    cut_runs(&mut update.recipe);
    assert!(update.recipe.len() + 10 < sent, "runs of {sent} sent chunks: {:?}", update.recipe);
    let mut streams = patch::Streams::default();
    streams.push(&[], new, 0);
    let compress =
        |raw: &[u8]| ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest);
    let frame =
        ChunkFrame::Patch { id: 1, maps: None, payload: &streams.encode(compress), tail: None }.encode();
    (base, current, answer, frame)
}

#[test]
fn a_patchs_runs_of_chunks_are_cut_by_the_client_as_the_server_cut_them() {
    let old = pseudo_random(400_000, 1);
    // Two changed regions, each many chunks long, between unchanged ones.
    let new =
        [&old[..100_000], &pseudo_random(150_000, 2), &old[150_000..300_000], &pseudo_random(90_000, 3)]
            .concat();
    let (base, current, answer, frame) = patch_answer(&old, &new);
    let (mut client, _) =
        ClientSync::new(1, current.path.clone(), Some(base.clone()), Vec::new(), ChunkSet::default());
    client.on_message(answer.clone()).unwrap();
    client.set_prefix(Ok(old.clone()), true);
    assert!(matches!(client.on_frame(&frame).unwrap(), Event::Progress { .. }));
    let mut event = None;
    while client.has_work() {
        event = Some(client.work().unwrap());
    }
    assert_eq!(event, Some(Event::Complete));
    let synced = client.finish(Vec::new()).unwrap();
    assert_eq!((synced.manifest, synced.data), (current.clone(), new.clone()));

    // Runs come only with a patch: chunk frames for them are refused.
    let (mut client, _) = ClientSync::new(1, current.path, Some(base), Vec::new(), ChunkSet::default());
    client.on_message(answer).unwrap();
    client.set_prefix(Ok(old), true);
    let plain = ChunkFrame::Chunk { id: 1, index: 0, bytes: &new[..100] }.encode();
    assert!(matches!(client.on_frame(&plain), Err(Error::BadFrame(why)) if why.contains("only a patch")));
}
