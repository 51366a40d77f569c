//! Tests of the pure core: golden chunk boundaries, and whole syncs driven through the server
//! planner and the client machine without a network.

use std::collections::{HashMap, HashSet};

use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkParams, ClientSync, ClientView, Error, Event, Hash, Manifest, ServerMessage,
    plan,
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

/// An in-memory client store plus a server with version history, wired through the real planner
/// and client machine.
#[derive(Default)]
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
        let mut held: HashSet<Hash> = have.chunks.iter().copied().collect();
        held.extend(known.iter().flat_map(|(_, m)| m.chunks.iter().map(|c| c.id)));
        let cur = self.current();
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
    /// One sync attempt; returns the bytes received over the "wire" (frames only).
    fn sync(&mut self, server: &Server, tamper: impl Fn(&mut Vec<u8>)) -> Result<usize, Error> {
        let (mut machine, msg) =
            ClientSync::new(1, AssetPath::new("app.js").unwrap(), self.current.clone(), vec![], vec![]);
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
