//! `cargo bench -p assetsync-server --bench patchers`: bsdiff-style matchers compared on the
//! corpus's real release pairs (`tests/bench/corpus-pairs.mjs`, fetched into `target/corpus/` by
//! `node tests/bench/corpus.mjs`). For each pair: the server's binary patch (`bidiff`'s matches,
//! each stream zstd level 19), `qbsdiff`'s matches encoded the same way (so that only the matching
//! differs), the same with qbsdiff's skipping of small matches turned off (`small_match(0)`:
//! every exact match counts, as in bsdiff itself), `qbsdiff`'s own bsdiff 4 patch (bzip2, default
//! settings), and the time each matcher took.

mod corpus;

use std::time::Instant;

use assetsync_protocol::compress;
use assetsync_protocol::patch::{self, Streams};
use assetsync_server::encode;

const LEVEL: i32 = 19;

fn main() {
    println!(
        "| pair | bidiff + zstd (the server's) | qbsdiff + zstd | qbsdiff small_match 0 + zstd | qbsdiff, bzip2 (bsdiff 4) | bidiff | qbsdiff | qbsdiff small_match 0 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0; 3];
    for corpus::Pair { label, bytes } in corpus::pairs(|_| true) {
        let Some((old, new)) = bytes else {
            println!("| {label} | not fetched: run `node tests/bench/corpus.mjs` first | | | | | | |");
            continue;
        };
        let started = Instant::now();
        let ours = encode::patch(&old, &new, LEVEL).expect("the server's patch");
        let bidiff_ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(patch::apply(&old, &ours, None, new.len() as u64).unwrap(), new);
        let qbsdiff = |small_match: usize| {
            let started = Instant::now();
            let mut bsdiff4 = Vec::new();
            let diff = qbsdiff::Bsdiff::new(&old, &new).small_match(small_match);
            diff.compare(std::io::Cursor::new(&mut bsdiff4)).expect("qbsdiff");
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let patch = reencode(&bsdiff4);
            assert_eq!(
                patch::apply(&old, &patch, None, new.len() as u64).unwrap(),
                new,
                "{label}: qbsdiff's matches"
            );
            (patch, bsdiff4, ms)
        };
        let (theirs, bsdiff4, qbsdiff_ms) = qbsdiff(qbsdiff::bsdiff::SMALL_MATCH);
        let (every, _, every_ms) = qbsdiff(0);
        for (total, patch) in totals.iter_mut().zip([&ours, &theirs, &every]) {
            *total += patch.len();
        }
        println!(
            "| {label} | {} | {} | {} | {} | {bidiff_ms:.0} ms | {qbsdiff_ms:.0} ms | {every_ms:.0} ms |",
            ours.len(),
            theirs.len(),
            every.len(),
            bsdiff4.len()
        );
    }
    println!("| total | {} | {} | {} | | | | |", totals[0], totals[1], totals[2]);
}

/// A bsdiff 4 patch (`BSDIFF40`, three bzip2 streams) as this protocol's patch: the same
/// controls, differences and extra bytes, each stream zstd-compressed as the server does.
fn reencode(bsdiff4: &[u8]) -> Vec<u8> {
    assert_eq!(&bsdiff4[..8], b"BSDIFF40");
    // bsdiff's integers: 8 bytes, little-endian magnitude, the top bit the sign.
    let offtin = |b: &[u8]| {
        let x = i64::from_le_bytes(b[..8].try_into().unwrap());
        if x < 0 { -(x & i64::MAX) } else { x }
    };
    let (ctrl_len, diff_len) = (offtin(&bsdiff4[8..]) as usize, offtin(&bsdiff4[16..]) as usize);
    let body = &bsdiff4[32..];
    let bunzip = |b: &[u8]| {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut bzip2::read::BzDecoder::new(b), &mut out).unwrap();
        out
    };
    let ctrl = bunzip(&body[..ctrl_len]);
    let (diff, extra) = (bunzip(&body[ctrl_len..ctrl_len + diff_len]), bunzip(&body[ctrl_len + diff_len..]));
    let (mut diff, mut extra) = (&diff[..], &extra[..]);
    let mut streams = Streams::default();
    for c in ctrl.chunks(24) {
        let (add, copy, seek) = (offtin(&c[..8]) as usize, offtin(&c[8..16]) as usize, offtin(&c[16..]));
        streams.push(&diff[..add], &extra[..copy], seek);
        (diff, extra) = (&diff[add..], &extra[copy..]);
    }
    streams.encode(|raw| compress::compress_stream(raw, LEVEL).unwrap())
}
