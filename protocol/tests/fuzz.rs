//! Bounded fuzzing of every decoder that reads network input: arbitrary bytes must give an error
//! or a value, never a panic, an unbounded allocation or a hang. Runs in CI at proptest's default
//! 256 cases per property (raise with `PROPTEST_CASES`).

use assetsync_protocol::{
    AssetPath, ChunkFrame, ChunkParams, ClientMessage, ClientSync, Error, Event, Hash, Manifest, RecipeOp,
    Scope, ServerMessage, Update, UploadRequest, compress, patch, upload, wasm,
};
use proptest::prelude::*;

/// JSON-ish input: mostly structure, so the decoders get past the first byte.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        r#"{"type":"#,
        r#""hello""#,
        r#""sync""#,
        r#""sync_folder""#,
        r#""subscribe""#,
        r#""update""#,
        r#""changed""#,
        r#""upload""#,
        r#""get_manifest""#,
        r#""manifest""#,
        r#""uploaded""#,
        r#""conflict""#,
        r#""list_folder""#,
        r#""delete""#,
        r#""deleted""#,
        r#""get_shape""#,
        r#""shape":{"links":[{"asset":"#,
        r#""target":"#,
        r#""via":["#,
        r#""path":["#,
        r#""folder":"#,
        r#""frames":"#,
        r#""params":{"min":"#,
        r#""base":"#,
        r#""id":"#,
        r#""asset":"#,
        r#""have":"#,
        r#""versions":["#,
        r#""chunks":"#,
        r#"{"prefix":"#,
        r#""ids":""#,
        r#""recipe":[["#,
        r#""version":"#,
        "0",
        "1",
        "4294967296",
        "-1",
        "]",
        "}",
        ",",
        ":",
        r#"""#,
        "null",
        "true",
        "\u{0}",
        "..",
        "/",
        r#""AAAA""#,
        "1e999",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|parts| parts.concat())
}

/// Feeds `frames` (manifest position, bytes) to `machine` after `event`, until an error; whether
/// it then assembled a file that matches the announced version (from arbitrary frames and
/// zeroed local chunks, it never may).
fn feed_and_finish(
    mut machine: ClientSync,
    mut event: Result<Event, Error>,
    frames: &[(u32, Vec<u8>)],
) -> bool {
    for (index, bytes) in frames {
        if event.is_err() {
            break;
        }
        event = machine.on_frame(&ChunkFrame::Chunk { id: 1, index: *index, bytes }.encode());
    }
    if let Ok(Event::Complete) = event {
        let local = machine.local_chunks().into_iter().map(|id| (id, vec![0u8; 4])).collect();
        return machine.finish(local).is_ok();
    }
    false
}

proptest! {
    #[test]
    fn client_messages_never_panic(text in jsonish()) {
        let _ = serde_json::from_str::<ClientMessage>(&text);
    }

    #[test]
    fn server_messages_never_panic(text in jsonish()) {
        let _ = serde_json::from_str::<ServerMessage>(&text);
    }

    #[test]
    fn chunk_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = ChunkFrame::decode(&bytes);
    }

    #[test]
    fn manifests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::decode_canonical(&bytes);
    }

    #[test]
    fn zstd_frames_never_panic_nor_exceed_their_bound(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
        frame.extend_from_slice(&bytes);
        if let Ok(out) = compress::decompress(&frame, Some(b"prefix"), 1 << 16) {
            prop_assert!(out.len() <= 1 << 16);
        }
    }

    /// Patches with any header and stream contents (each stream a valid zstd frame, so that the
    /// controls are reached), with or without a tail: an error, or exactly the announced
    /// length, never a panic.
    #[test]
    fn patches_never_panic_nor_exceed_their_length(
        lens in prop::collection::vec(0u64..300, 3),
        controls in prop::collection::vec(any::<u8>(), 0..48),
        diff in prop::collection::vec(any::<u8>(), 0..64),
        extra in prop::collection::vec(any::<u8>(), 0..64),
        new_len in 0u64..200,
        honest in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        slice in 1usize..9,
        tail in prop::option::of((prop::collection::vec(any::<u8>(), 0..32), any::<bool>())),
    ) {
        let frame = |raw: &[u8]| ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Uncompressed);
        // A tail: a valid zstd frame of the rest of the file, or any bytes.
        let tail_len = tail.as_ref().map_or(0, |(t, _)| t.len() as u64);
        let tail = tail.map(|(t, framed)| if framed { frame(&t) } else { t });
        // Honest lengths get past the header checks to the controls.
        let (lens, new_len) = match honest {
            true => (vec![controls.len() as u64, diff.len() as u64, extra.len() as u64], (diff.len() + extra.len()) as u64 + tail_len),
            false => (lens, new_len),
        };
        let streams = [frame(&controls), frame(&diff), frame(&extra)];
        let mut payload = Vec::new();
        for n in lens.iter().copied().chain([streams[0].len() as u64, streams[1].len() as u64]) {
            assetsync_protocol::varint::put(&mut payload, n);
        }
        payload.extend(streams.concat());
        let old = b"an old file of some length, for controls to read and seek around in".as_slice();
        let tail = tail.as_deref();
        for payload in [&payload[..], &payload[..cut.index(payload.len() + 1)]] {
            let whole = patch::apply(old, payload, tail, new_len).ok();
            if let Some(out) = &whole {
                prop_assert_eq!(out.len() as u64, new_len);
            }
            // Applied a few bytes at a time, as a browser does between yields: the same outcome.
            let sliced = patch::Patching::new(payload, tail, new_len).and_then(|mut p| {
                while !p.step(old, slice)? {}
                Ok(p.into_output())
            });
            prop_assert_eq!(sliced.ok(), whole);
        }
    }

    /// Modules with bytes flipped, cut or inserted, and maps from arbitrary bytes: the walker and
    /// the remapping answer or refuse, never panic; what they answer keeps the module's length
    /// but for the rewritten immediates.
    #[test]
    fn wasm_modules_and_maps_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..4),
        maps in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut module = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x0a".to_vec();
        let body = [0u8, 0x41, 0x90, 0x03, 0x1a, 0x10, 0x80, 0x80, 0x80, 0x80, 0x00, 0x23, 0x00, 0x1a, 0x42, 0x7f, 0x1a, 0x0b];
        module.extend([body.len() as u8 + 2, 1, body.len() as u8]);
        module.extend(body);
        for (at, byte, how) in edits {
            if module.is_empty() {
                break;
            }
            let i = at.index(module.len());
            match how {
                0 => module[i] = byte,
                1 => module.truncate(i),
                _ => module.insert(i, byte),
            }
        }
        let maps = wasm::Maps::decode(&maps).unwrap_or_else(|| wasm::Maps {
            functions: vec![(0, u32::MAX - 1, u32::MAX)],
            shifts: [vec![(0, i64::MAX)], vec![(0, -1)], vec![(i64::MIN, i64::MAX)], vec![(-1, i64::MIN)]],
        });
        let _ = wasm::walk(&module, |_| {});
        if let Some(out) = wasm::remap(&module, &maps) {
            prop_assert!(out.len() <= module.len() * 2 + 16);
        }
        let _ = wasm::learn(&module, &module);
    }

    #[test]
    fn paths_and_scopes_never_panic(s in ".{0,64}") {
        let _ = AssetPath::new(&s);
        let _ = Scope::new(&s);
    }

    /// Well-formed updates with hostile contents (copies out of range, huge lengths, odd chunk
    /// parameters, a base that was never named), then frames for them: errors, never panics,
    /// and never a result that does not match the announced version.
    #[test]
    fn hostile_updates_are_refused_cleanly(
        ops in prop::collection::vec(
            prop_oneof![
                (0u32..8, 0u32..8).prop_map(|(a, b)| RecipeOp::Copy(a, b)),
                (any::<[u8; 32]>(), 0u32..70_000).prop_map(|(id, len)| RecipeOp::Chunk(Hash(id), len)),
                (0u32..70_000).prop_map(RecipeOp::Sent),
                Just(RecipeOp::Copy(u32::MAX, u32::MAX)),
            ],
            0..12,
        ),
        base in prop::option::of(0u32..3),
        params in prop::option::of((0u32..5000, 0u32..5000, 0u32..5000)),
        frames in prop::collection::vec((0u32..16, prop::collection::vec(any::<u8>(), 0..64)), 0..6),
    ) {
        let data = b"some base content that is long enough to matter".repeat(20);
        let held = Manifest::build(AssetPath::new("a.js").unwrap(), &data, ChunkParams::default()).unwrap();
        let (mut machine, _) =
            ClientSync::new(1, AssetPath::new("a.js").unwrap(), Some(held), vec![], Default::default());
        let update = Update {
            id: 1,
            asset: None,
            version: Hash::of(b"announced"),
            base,
            params: params.map(|(min, avg, max)| ChunkParams { min, avg, max }),
            recipe: ops,
            dict: false,
            offload: None,
        };
        let event = machine.on_message(ServerMessage::Update(update));
        prop_assert!(!feed_and_finish(machine, event, &frames));
    }

    /// Patch answers whose recipes give runs of chunks to cut ([`RecipeOp::Cut`]) of any
    /// length, beside sent and copied chunks, with a patch rebuilding a file of any length, and
    /// maybe WebAssembly maps of any bytes, or real ones with the patch cut anywhere and the
    /// rest of the file as a tail: errors, never panics, and never a result that does not match
    /// the announced version.
    #[test]
    fn patch_answers_with_hostile_runs_are_refused_cleanly(
        ops in prop::collection::vec(
            prop_oneof![
                (0u32..8, 0u32..8).prop_map(|(a, b)| RecipeOp::Copy(a, b)),
                (0u32..70_000).prop_map(RecipeOp::Sent),
                (0u32..200_000).prop_map(RecipeOp::Cut),
                Just(RecipeOp::Cut(u32::MAX)),
            ],
            0..8,
        ),
        new in prop::collection::vec(any::<u8>(), 0..3000),
        fit in any::<bool>(),
        seed in any::<u64>(),
        maps in prop::option::of(prop::collection::vec(any::<u8>(), 0..24)),
        split in prop::option::of(any::<prop::sample::Index>()),
    ) {
        // The base: a WebAssembly module of one custom section, which maps can remap.
        let content = b"some base content that is long enough to matter".repeat(20);
        let mut data = b"\0asm\x01\0\0\0\0".to_vec();
        assetsync_protocol::varint::put(&mut data, content.len() as u64 + 2);
        data.extend([1, b'x']);
        data.extend(&content);
        let asset = AssetPath::new("a.wasm").unwrap();
        let held = Manifest::build(asset.clone(), &data, ChunkParams::default()).unwrap();
        let (mut machine, _) = ClientSync::new(1, asset, Some(held), vec![], Default::default());
        let update = Update {
            id: 1,
            asset: None,
            version: Hash::of(&seed.to_le_bytes()),
            base: Some(0),
            params: None,
            recipe: ops,
            dict: true,
            offload: None,
        };
        let frame = |raw: &[u8]| ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Uncompressed);
        let outcome = machine.on_message(ServerMessage::Update(update)).and_then(|_| {
            // A file as long as the recipe says gets past the patch's checks, to the cutting.
            let len = machine.manifest().map_or(0, |m| m.len as usize);
            let new = match fit && len <= 1 << 20 {
                true => new.iter().copied().cycle().chain(std::iter::repeat(7)).take(len).collect(),
                false => new,
            };
            let mut streams = patch::Streams::default();
            streams.push(&[], &new, 0);
            // The patch may rebuild only the start, the rest in a tail (with maps, which then
            // are real ones).
            let split = split.map(|at| at.index(new.len() + 1));
            let maps = match split {
                Some(_) => Some(assetsync_protocol::wasm::Maps::default().encode()),
                None => maps,
            };
            let payload = match split {
                Some(at) => streams.head(at).encode(frame),
                None => streams.encode(frame),
            };
            let tail = split.map(|at| frame(&new[at..]));
            machine.set_prefix(Ok(data.clone()), true);
            let frame = ChunkFrame::Patch { id: 1, maps: maps.as_deref(), payload: &payload, tail: tail.as_deref() };
            let mut event = machine.on_frame(&frame.encode())?;
            while machine.has_work() {
                event = machine.work()?;
            }
            Ok(event)
        });
        if let Ok(Event::Complete) = outcome {
            let local = machine.local_chunks().into_iter().map(|id| (id, vec![0u8; 4])).collect();
            prop_assert!(machine.finish(local).is_err());
        }
    }

    /// The server's side of an upload: hostile recipes, parameters and frames against its current
    /// version (or none) are refused cleanly, and nothing assembled matches a version nobody
    /// built. `manifest` answers that are not a manifest are refused too.
    #[test]
    fn hostile_uploads_are_refused_cleanly(
        ops in prop::collection::vec(
            prop_oneof![
                (0u32..8, 0u32..8).prop_map(|(a, b)| RecipeOp::Copy(a, b)),
                (any::<[u8; 32]>(), 0u32..70_000).prop_map(|(id, len)| RecipeOp::Chunk(Hash(id), len)),
                (0u32..70_000).prop_map(RecipeOp::Sent),
            ],
            0..12,
        ),
        has_base in any::<bool>(),
        dict in any::<bool>(),
        (min, avg, max) in (0u32..5000, 0u32..5000, 0u32..5000),
        frames in prop::collection::vec((0u32..16, prop::collection::vec(any::<u8>(), 0..64)), 0..6),
        encoded in ".{0,80}",
    ) {
        let asset = AssetPath::new("a.js").unwrap();
        let data = b"the server's current version of the file".repeat(20);
        let current = Manifest::build(asset.clone(), &data, ChunkParams::default()).unwrap();
        let request = UploadRequest {
            id: 1,
            asset: "a.js".into(),
            base: has_base.then(|| current.version()),
            version: Hash::of(b"announced"),
            params: ChunkParams { min, avg, max },
            recipe: ops,
            dict,
            frames: frames.len() as u32,
        };
        if let Ok((mut machine, first)) = upload::receiver(&request, asset.clone(), has_base.then_some(current.clone())) {
            if machine.wanted_prefix().is_some() {
                machine.set_prefix(Ok(data.clone()), true);
            }
            prop_assert!(!feed_and_finish(machine, Ok(first), &frames));
        }
        prop_assert!(upload::read_manifest(&asset, current.version(), &encoded).is_err());
    }

    /// A client machine fed arbitrary server messages and frames errs cleanly.
    #[test]
    fn the_client_machine_survives_any_answer(
        text in jsonish(),
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..4),
    ) {
        let base = Manifest::build(AssetPath::new("a.js").unwrap(), b"some base content", ChunkParams::default()).unwrap();
        let (mut machine, _) = ClientSync::new(1, AssetPath::new("a.js").unwrap(), Some(base), vec![], Default::default());
        if let Ok(message) = serde_json::from_str::<ServerMessage>(&text) {
            let _ = machine.on_message(message);
        }
        for frame in &frames {
            let _ = machine.on_frame(frame);
        }
    }
}
