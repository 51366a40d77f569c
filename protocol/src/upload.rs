//! Uploads: a client sends a new version of an asset to the server, the way the server sends
//! updates to clients, and with the same pieces.
//!
//! The client cuts its new file with the parameters of `base` (the server's version it was made
//! from), so that unchanged regions give the same chunks. [`prepare`] plans the `upload` exactly
//! as the server plans an `update` ([`crate::plan`], the base's chunks counting as held): a
//! recipe of `Copy` runs against the base and `Sent` chunks, whose bytes follow in binary frames,
//! compressed against the base's file when the client holds it (`dict`). One message stream, no
//! round trip first, when the client knows the base (it synced it); otherwise it asks for the
//! server's manifest first (`get_manifest`), as rsync's receiver sends its block checksums.
//!
//! The server reads it with [`receiver`], the client's own [`ClientSync`] machine: the same
//! decoding, the same bounds, and the same verification (the file it rebuilds must hash to the
//! announced version), before it writes anything.

use std::collections::HashSet;

use crate::{
    AssetPath, ChunkFrame, ChunkId, ChunkSet, ClientMessage, ClientSync, ClientView, Error, Event, Manifest,
    ServerMessage, Update, UploadRequest, VersionId, plan,
};

/// Compresses a batch of chunk bytes, with the base's file as prefix when given, into one zstd
/// frame that [`crate::compress::decompress`] reads back (a native client passes
/// [`crate::compress::compress`] at its level). `None` when it cannot.
pub type Compressor = fn(&[u8], Option<&[u8]>) -> Option<Vec<u8>>;

/// An upload ready to send: the `upload` message, then its frames.
#[derive(Debug)]
pub struct Prepared {
    /// The `upload` message.
    pub message: ClientMessage,
    /// The binary frames that follow it.
    pub frames: Vec<Vec<u8>>,
    /// Distinct chunks whose bytes travel.
    pub chunks_sent: usize,
    /// Their bytes, before compression.
    pub chunk_bytes: u64,
}

/// Raw chunk bytes per batch of an upload: a batch is decoded, verified and kept by the server
/// only once all of it has arrived, so an upload cut short resumes from its last whole batch.
pub const UPLOAD_BATCH: usize = 1 << 20;

/// Plans request `id`: the new version `new` (cut with the base's parameters) of the file
/// `data`, as a delta against `base`, the server's version of the asset, if any; `kept` are
/// further chunks the server holds (kept from this upload's attempt that was cut short). `prefix`
/// is the base's file when the client holds it; with `compress`, the chunks sent travel in zstd
/// batches of [`UPLOAD_BATCH`] bytes (against `prefix` if given), each plain when that is
/// smaller.
pub fn prepare(
    id: u32,
    new: &Manifest,
    data: &[u8],
    base: Option<&Manifest>,
    kept: &HashSet<ChunkId>,
    prefix: Option<&[u8]>,
    compress: Option<Compressor>,
) -> Prepared {
    let version = new.version();
    let mut held = kept.clone();
    held.extend(base.iter().flat_map(|b| b.chunks.iter().map(|c| c.id)));
    let base = base.map(|b| (0, b.version(), b));
    let planned = plan(id, new, version, ClientView { base, held: &held });
    let recipe = match planned.message {
        ServerMessage::Update(update) => update.recipe,
        // The same version: nothing to send.
        _ => Vec::new(),
    };
    let offsets: Vec<usize> = new.offsets().map(|(at, _)| at).collect();
    let chunk = |i: u32| {
        let at = offsets[i as usize];
        &data[at..at + new.chunks[i as usize].len as usize]
    };
    let (mut frames, mut dict, mut batch, mut raw) = (Vec::new(), false, Vec::new(), Vec::new());
    let mut flush = |batch: &mut Vec<u32>, raw: &mut Vec<u8>, frames: &mut Vec<Vec<u8>>| {
        let compressed = compress.and_then(|compress| compress(raw, prefix)).filter(|c| c.len() < raw.len());
        match compressed {
            Some(compressed) => {
                dict |= prefix.is_some();
                frames.extend(ChunkFrame::batch(id, std::mem::take(batch), &compressed, true));
            }
            None => frames.extend(
                batch.drain(..).map(|index| ChunkFrame::Chunk { id, index, bytes: chunk(index) }.encode()),
            ),
        }
        raw.clear();
    };
    let mut chunk_bytes = 0;
    for &index in &planned.send {
        raw.extend_from_slice(chunk(index));
        chunk_bytes += chunk(index).len() as u64;
        batch.push(index);
        if raw.len() >= UPLOAD_BATCH {
            flush(&mut batch, &mut raw, &mut frames);
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut raw, &mut frames);
    }
    let message = ClientMessage::Upload(UploadRequest {
        id,
        asset: new.path.as_str().to_owned(),
        base: base.map(|(_, v, _)| v),
        version,
        params: new.params,
        recipe,
        dict,
        frames: frames.len() as u32,
    });
    Prepared { message, frames, chunks_sent: planned.send.len(), chunk_bytes }
}

/// The server's side of `request` for `asset`, whose current manifest `base` is the version the
/// request names: a [`ClientSync`] that reads the frames that follow (after
/// [`ClientSync::set_prefix`] with the base's file when it asks for one) and rebuilds and
/// verifies the file with the base's chunks as the local ones. The event says whether frames
/// are expected. The new file's length ([`ClientSync::manifest`]) is known before any frame is
/// read.
pub fn receiver(
    request: &UploadRequest,
    asset: AssetPath,
    base: Option<Manifest>,
) -> Result<(ClientSync, Event), Error> {
    let has_base = base.is_some();
    let (mut machine, _) = ClientSync::new(request.id, asset, base, Vec::new(), ChunkSet::default());
    let update = Update {
        id: request.id,
        asset: None,
        version: request.version,
        base: has_base.then_some(0),
        params: Some(request.params),
        recipe: request.recipe.clone(),
        dict: request.dict,
        offload: None,
    };
    let event = machine.on_message(ServerMessage::Update(update))?;
    Ok((machine, event))
}

/// The canonical bytes of a `manifest` answer, decoded and checked against its version.
pub fn read_manifest(asset: &AssetPath, version: VersionId, encoded: &str) -> Result<Manifest, Error> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| Error::Protocol("a manifest that is not base64".into()))?;
    let manifest = Manifest::decode_canonical(&bytes)?;
    if manifest.version() != version || manifest.path != *asset {
        return Err(Error::Protocol(format!("the manifest sent for {asset} does not match its version")));
    }
    manifest.validate()?;
    Ok(manifest)
}

/// The chunk ids of a `manifest` answer's `received`: whole ids, so that no prefix collision can
/// make a client leave out a chunk the server lacks.
pub fn read_ids(encoded: &str) -> Result<Vec<ChunkId>, Error> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded)
        .map_err(|_| Error::Protocol("received chunk ids that are not base64".into()))?;
    if bytes.len() % 32 != 0 {
        return Err(Error::Protocol("received chunk ids that are not whole".into()));
    }
    Ok(bytes.chunks_exact(32).map(|id| crate::Hash(id.try_into().expect("32 bytes"))).collect())
}

/// `received`'s encoding of `ids` (see [`read_ids`]).
pub fn write_ids(ids: &[ChunkId]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(ids.iter().flat_map(|id| id.0).collect::<Vec<u8>>())
}

/// A `manifest` answer's encoding of `manifest` (see [`read_manifest`]).
pub fn write_manifest(manifest: &Manifest) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(manifest.canonical_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::random_bytes;
    use crate::{ChunkParams, Hash};

    fn upload(old: &[u8], new: &[u8], with_base: bool) -> (Prepared, Result<VersionId, Error>) {
        let asset = AssetPath::new("site/app.js").unwrap();
        let params = ChunkParams::default();
        let base = Manifest::build(asset.clone(), old, params).unwrap();
        let old_chunks: Vec<(ChunkId, Vec<u8>)> =
            base.offsets().map(|(at, c)| (c.id, old[at..at + c.len as usize].to_vec())).collect();
        let manifest = Manifest::build(asset.clone(), new, params).unwrap();
        let base = with_base.then_some(base);
        let prepared = prepare(7, &manifest, new, base.as_ref(), &HashSet::new(), None, None);
        let ClientMessage::Upload(request) = &prepared.message else { panic!("an upload") };
        let rebuilt = (|| {
            let (mut machine, _) = receiver(request, asset, base)?;
            for frame in &prepared.frames {
                machine.on_frame(frame)?;
            }
            let wanted: HashSet<ChunkId> = machine.local_chunks().into_iter().collect();
            let local = old_chunks.into_iter().filter(|(id, _)| wanted.contains(id)).collect();
            let synced = machine.finish(local)?;
            assert_eq!(synced.data, new);
            Ok(synced.version)
        })();
        assert_eq!(rebuilt.as_ref().ok(), Some(&manifest.version()));
        (prepared, rebuilt)
    }

    #[test]
    fn an_edit_sends_only_the_chunks_it_touched_and_rebuilds_exactly() {
        let old = random_bytes(1 << 20, 1);
        let mut new = old.clone();
        new[500_000..501_024].copy_from_slice(&random_bytes(1024, 2));
        let (prepared, rebuilt) = upload(&old, &new, true);
        assert!(prepared.chunks_sent <= 3, "{} chunks sent", prepared.chunks_sent);
        assert!(prepared.chunk_bytes < 64 << 10, "{} bytes sent", prepared.chunk_bytes);
        rebuilt.unwrap();
        // Without a base every chunk travels.
        let (whole, rebuilt) = upload(&old, &new, false);
        assert_eq!(whole.chunk_bytes, new.len() as u64);
        rebuilt.unwrap();
    }

    #[test]
    fn a_manifest_answer_round_trips_and_is_checked() {
        let asset = AssetPath::new("a.bin").unwrap();
        let m = Manifest::build(asset.clone(), &random_bytes(100_000, 3), ChunkParams::default()).unwrap();
        let wire = write_manifest(&m);
        assert_eq!(read_manifest(&asset, m.version(), &wire).unwrap(), m);
        assert!(read_manifest(&asset, Hash::of(b"other"), &wire).is_err());
        assert!(read_manifest(&AssetPath::new("b.bin").unwrap(), m.version(), &wire).is_err());
        assert!(read_manifest(&asset, m.version(), "!!").is_err());
        let ids: Vec<ChunkId> = m.chunks.iter().map(|c| c.id).collect();
        assert_eq!(read_ids(&write_ids(&ids)).unwrap(), ids);
        assert!(read_ids(&write_ids(&ids)[..10]).is_err());
        assert!(read_ids("!!").is_err());
    }
}
