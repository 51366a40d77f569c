//! `cargo bench -p assetsync-server --bench wasmprep`: does WebAssembly-aware preprocessing
//! ([`assetsync_protocol::wasm`]) make the server's binary patch smaller on the corpus's real
//! `.wasm` release pairs (`tests/bench/corpus-pairs.mjs`, fetched into `target/corpus/` by
//! `node tests/bench/corpus.mjs`)?
//!
//! For each pair: the server's patch of the new module against the old one; the maps learned
//! from both; the patch against the old module remapped with only the function map, then with
//! every map; the maps' size as a patch frame carries them (and compressed, for comparison);
//! the time learning and remapping took. First, the protocol's walker is checked against `wasmparser` on both modules:
//! the same immediates at the same places.

mod corpus;

use std::time::Instant;

use assetsync_protocol::wasm::{self, Imm, Kind, Maps};
use assetsync_server::encode;
use wasmparser::{Operator, Parser, Payload};

const LEVEL: i32 = 19;

fn main() {
    println!(
        "| pair | size old / new | functions old / new | patch | old's function indices remapped | every kind remapped | maps: function runs / shift runs, bytes (zstd -19) | with maps vs patch | learn (server) | remap (client's work) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // `cargo bench ... -- swc`: only the pairs whose label holds one of the words given.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for corpus::Pair { label, bytes } in corpus::pairs(|file| file.ends_with(".wasm")) {
        if !only.is_empty() && !only.iter().any(|word| label.contains(word.as_str())) {
            continue;
        }
        let Some((old, new)) = bytes else {
            println!("| {label} | not fetched: run `node tests/bench/corpus.mjs` first | | | | | | | | |");
            continue;
        };
        let functions = |module: &[u8]| {
            let mut imms = Vec::new();
            let layout = wasm::walk(module, |imm| imms.push(imm)).expect("a module the walker reads");
            assert_eq!(imms, wasmparser_immediates(module), "{label}: the walker and wasmparser disagree");
            layout.imported_functions as usize + layout.bodies.len()
        };
        let (old_functions, new_functions) = (functions(&old), functions(&new));

        let started = Instant::now();
        let maps = wasm::learn(&old, &new).expect("maps");
        let learn_ms = started.elapsed().as_millis();
        let started = Instant::now();
        let remapped = wasm::remap(&old, &maps).expect("remapped");
        let remap_ms = started.elapsed().as_secs_f64() * 1e3;
        let only_functions = Maps { functions: maps.functions.clone(), ..Maps::default() };
        let map_bytes = maps.encode().len();
        let map_zstd = zstd::bulk::compress(&maps.encode(), LEVEL).unwrap().len();
        assert_eq!(Maps::decode(&maps.encode()).as_ref(), Some(&maps));

        let plain = encode::patch(&old, &new, LEVEL).expect("a patch").len();
        let functions_only =
            encode::patch(&wasm::remap(&old, &only_functions).unwrap(), &new, LEVEL).expect("a patch").len();
        let every = encode::patch(&remapped, &new, LEVEL).expect("a patch").len();
        let shift_runs: usize = maps.shifts.iter().map(Vec::len).sum();
        println!(
            "| {label} | {} / {} | {old_functions} / {new_functions} | {plain} | {functions_only} | {every} | {} / {shift_runs}, {map_bytes} B ({map_zstd}) | {:.2}x | {learn_ms} ms | {remap_ms:.1} ms |",
            old.len(),
            new.len(),
            maps.functions.len(),
            (every + map_bytes) as f64 / plain as f64,
        );
    }
}

/// The immediates `wasm::walk` reports, as `wasmparser` finds them.
fn wasmparser_immediates(module: &[u8]) -> Vec<Imm> {
    let mut imms = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let Payload::CodeSectionEntry(body) = payload.expect("a valid module") else { continue };
        let mut ops = body.get_operators_reader().expect("a body");
        while !ops.eof() {
            let (op, at) = ops.read_with_offset().expect("an operator");
            let (kind, value) = match op {
                Operator::Call { function_index }
                | Operator::ReturnCall { function_index }
                | Operator::RefFunc { function_index } => (Kind::Func, function_index.into()),
                Operator::CallIndirect { type_index, .. }
                | Operator::ReturnCallIndirect { type_index, .. } => (Kind::Type, type_index.into()),
                Operator::GlobalGet { global_index } | Operator::GlobalSet { global_index } => {
                    (Kind::Global, global_index.into())
                }
                Operator::I32Const { value } => (Kind::I32, value.into()),
                Operator::I64Const { value } => (Kind::I64, value),
                _ => continue,
            };
            let start = at + 1;
            let len = module[start..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
            imms.push(Imm { at: start..start + len, kind, value });
        }
    }
    imms
}
