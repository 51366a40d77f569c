//! Context compression of the chunks a client lacks.
//!
//! Minified bundles change all over (renamed identifiers), so most of their chunks are new, but
//! almost all of their *text* is still in the client's old version. Compressing the missing chunks
//! with zstd, with the old file as a prefix (`zstd --patch-from` semantics), turns that shared text
//! into short matches. Without a known old version, batches are compressed plainly.
//!
//! Results are cached per (base version, new version, chunks sent), so a rebuild pushed to many
//! clients in the same state is compressed once. The work runs on the blocking pool.
//!
//! zstd's best levels cost about a second of CPU per 1.5 MB of prefix and input, while level 3
//! takes about 10 ms even against a 9 MB prefix (and sends about 1.5 to 2 times the bytes of
//! level 19). So that the first client of a large update does not wait, its answer is encoded at
//! the fast level; the best-level encoding then runs in the background, one at a time, and
//! replaces the cached answer for every later client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use assetsync_protocol::patch::Streams;
use assetsync_protocol::wasm;
use assetsync_protocol::{Hash, Offloaded, VersionId, compress};
use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore};
use zstd::zstd_safe::{CCtx, ResetDirective};

use crate::index::{AssetIndex, Base, Indexed};
use crate::store::{AnswerKey, answer_key};

/// Compression settings.
#[derive(Clone, Copy, Debug)]
pub struct EncodeConfig {
    /// zstd level of the cached answers that every later client gets.
    pub level: i32,
    /// zstd level of the first answer of a large update, while the `level` one is computed.
    pub fast_level: i32,
    /// Whether best-level answers also try a binary patch (see [`patch`]).
    pub patches: bool,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig { level: 19, fast_level: 3, patches: true }
    }
}

/// Prefix plus input bytes up to which even the first answer is encoded at the best level
/// (about 150 ms of CPU at level 19); for a folder, the files' work in all.
pub const QUICK_WORK: usize = 256 << 10;
/// Prefix plus input bytes up to which a best-level encoding is made at all (in the background,
/// or ahead by [`crate::warm`]): about 40 s of CPU at level 19. Past it, the fast-level answer
/// stays; a queued encoding holds its inputs in memory, and a 300 MB asset's would take minutes.
pub const MAX_BEST_WORK: usize = 64 << 20;
/// The part of a base version used as the compression prefix: its end. Frames use a window of at
/// most 2^26 bytes (see [`compress`]), so no match reaches further back than that from a batch
/// of at most [`LARGE_BATCH`]: a longer prefix would only cost memory, and reading it back from
/// the store. The client decodes with its whole old version, whose end is the same bytes.
pub const PREFIX_BYTES: usize = (1 << 26) - LARGE_BATCH;
/// Raw bytes per batch. A batch is one WebSocket message, decoded (and its chunks kept) only
/// once whole, so a transfer cut midway loses at most the batch in flight: small batches resume
/// well. Without a prefix, each batch starts from an empty window, so they stay at 1 MiB to
/// compress well. With one, each batch loads the prefix into zstd again, which at level 6 and up
/// costs about 0.2 s per 9 MB of prefix: there, batches are large.
const SMALL_BATCH: usize = 256 << 10;
const PLAIN_BATCH: usize = 1 << 20;
const LARGE_BATCH: usize = 8 << 20;
/// The first level whose prefix load is slow enough to need large batches.
const SLOW_PREFIX_LEVEL: i32 = 6;
/// Encoded answers kept for reuse.
const CACHED: usize = 64;
/// Compressed bytes of folder packs kept for reuse.
const PACK_CACHE_BYTES: usize = 64 << 20;

/// How one group of chunks travels.
pub enum Batch {
    /// One zstd frame holding the chunks at `indices`, back to back.
    Compressed {
        /// Manifest positions of the chunks.
        indices: Vec<u32>,
        /// The zstd frame.
        frame: Vec<u8>,
    },
    /// Plain chunk frames: compression did not pay for these.
    Plain {
        /// Manifest positions of the chunks.
        indices: Vec<u32>,
    },
}

/// The encoded chunks of one answer.
pub struct Encoded {
    /// Whether batches were compressed with the base version's file as prefix.
    pub prefixed: bool,
    /// The batches, in order.
    pub batches: Vec<Batch>,
    /// The whole new file as a binary patch against the base version (see
    /// [`assetsync_protocol::patch`]), when it is smaller than the batches: sent instead of
    /// them to a client that applies patches.
    pub patch: Option<Vec<u8>>,
    /// The [`assetsync_protocol::wasm::Maps`] (encoded) when `patch` was taken against the base
    /// version's WebAssembly module as they remap it: only a client that remaps gets the patch.
    pub maps: Option<Vec<u8>>,
    /// The rest of the new file as a zstd frame against the remapped module, when `patch`
    /// rebuilds only its start (see [`assetsync_protocol::patch`]; only with `maps`): only a
    /// client that takes tails gets the patch.
    pub tail: Option<Vec<u8>>,
    /// What the client is told when the answer is offloaded (see [`crate::offload`]), once
    /// it has been put in an object (`None`: it could not be).
    pub offloaded: OnceCell<Option<Offloaded>>,
}

impl Encoded {
    /// A new encoding, not offloaded yet.
    fn new(prefixed: bool, batches: Vec<Batch>) -> Self {
        Encoded { prefixed, batches, patch: None, maps: None, tail: None, offloaded: OnceCell::new() }
    }

    /// The patch frame's parts (maps, patch, tail), for a client that applies patches
    /// (`patch`), remaps WebAssembly (`wasm`) and takes tails (`tail`), if it can apply this one.
    pub fn patch_for(&self, patch: bool, wasm: bool, tail: bool) -> Option<PatchParts<'_>> {
        let fits = patch && (wasm || self.maps.is_none()) && (tail || self.tail.is_none());
        let p = self.patch.as_deref().filter(|_| fits)?;
        Some((self.maps.as_deref(), p, self.tail.as_deref()))
    }

    /// Bytes of the chunks as they travel, close to those of their frames: the patch's and its
    /// maps', when the client gets the patch (`patched`), else the batches'.
    pub fn frame_bytes(&self, current: &Indexed, patched: bool) -> usize {
        if let (Some(p), true) = (&self.patch, patched) {
            return p.len()
                + [&self.maps, &self.tail]
                    .iter()
                    .map(|part| part.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
        }
        let plain = |indices: &[u32]| indices.iter().map(|&i| current.chunk(i as usize).len()).sum::<usize>();
        self.batches
            .iter()
            .map(|batch| match batch {
                Batch::Compressed { frame, .. } => frame.len(),
                Batch::Plain { indices } => plain(indices),
            })
            .sum()
    }

    /// A compact binary form, for the version store: whether prefixed, the number of batches,
    /// then each batch's kind (0 plain, 1 compressed), indices and frame, as little-endian
    /// `u32` counts; then the patch's length and bytes, if there is one, its maps' length
    /// and bytes, if it has maps, and its tail's, if it has one.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.prefixed)];
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for batch in &self.batches {
            let (kind, indices, frame) = match batch {
                Batch::Plain { indices } => (0, indices, None),
                Batch::Compressed { indices, frame } => (1, indices, Some(frame)),
            };
            out.push(kind);
            out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
            out.extend(indices.iter().flat_map(|i| i.to_le_bytes()));
            if let Some(frame) = frame {
                out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
                out.extend_from_slice(frame);
            }
        }
        for part in [&self.patch, &self.maps, &self.tail].into_iter().flatten() {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Reads [`Encoded::to_bytes`]; `None` if it does not parse whole.
    fn from_bytes(mut bytes: &[u8]) -> Option<Encoded> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = bytes.split_at_checked(n)?;
            *bytes = rest;
            Some(head)
        }
        fn count(bytes: &mut &[u8]) -> Option<usize> {
            Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
        }
        let prefixed = take(&mut bytes, 1)?[0] == 1;
        let mut batches = Vec::new();
        for _ in 0..count(&mut bytes)? {
            let kind = take(&mut bytes, 1)?[0];
            let n = count(&mut bytes)?;
            let indices = take(&mut bytes, n.checked_mul(4)?)?
                .chunks(4)
                .map(|i| u32::from_le_bytes(i.try_into().unwrap()))
                .collect();
            batches.push(match kind {
                0 => Batch::Plain { indices },
                1 => {
                    let len = count(&mut bytes)?;
                    Batch::Compressed { indices, frame: take(&mut bytes, len)?.to_vec() }
                }
                _ => return None,
            });
        }
        let mut encoded = Encoded::new(prefixed, batches);
        // Answers kept before patches existed end here, before patches had maps after it, and
        // before they had tails.
        for part in [&mut encoded.patch, &mut encoded.maps, &mut encoded.tail] {
            if !bytes.is_empty() {
                let len = count(&mut bytes)?;
                *part = Some(take(&mut bytes, len)?.to_vec());
            }
        }
        bytes.is_empty().then_some(encoded)
    }
}

type Key = (Option<VersionId>, VersionId, Vec<u32>);

/// A patch frame's maps (if any), patch and tail (if any).
pub type PatchParts<'a> = (Option<&'a [u8]>, &'a [u8], Option<&'a [u8]>);

/// One cached answer: the first encoding, and the best-level one once the background has it.
#[derive(Default)]
struct Entry {
    first: OnceCell<Arc<Encoded>>,
    best: Mutex<Option<Arc<Encoded>>>,
}

/// Encodes answers and remembers recent ones.
pub struct Encoder {
    config: EncodeConfig,
    /// Recent answers, oldest first.
    cache: Mutex<VecDeque<(Key, Arc<Entry>)>>,
    /// Lets one best-level encoding run in the background at a time.
    background: Arc<Semaphore>,
    /// Recent folder packs, oldest first (see [`Encoder::pack`]); an empty cell is being
    /// compressed.
    packs: Mutex<VecDeque<(Hash, Arc<PackCell>)>>,
}

/// A folder pack's compressed bytes once made (`None`: zstd failed).
type PackCell = OnceCell<Option<Arc<Vec<u8>>>>;

impl Encoder {
    /// A new encoder with an empty cache.
    pub fn new(config: EncodeConfig) -> Self {
        Encoder {
            config,
            cache: Mutex::default(),
            background: Arc::new(Semaphore::new(1)),
            packs: Mutex::default(),
        }
    }

    /// The cache entry of an answer, made if there is none.
    fn entry(&self, current: &Indexed, send: &[u32], base: Option<&Base>) -> Arc<Entry> {
        let key: Key = (base.map(|b| b.version), current.version, send.to_vec());
        let mut cache = self.cache.lock().expect("poisoned");
        if let Some((_, entry)) = cache.iter().find(|(k, _)| *k == key) {
            return entry.clone();
        }
        let entry = Arc::new(Entry::default());
        cache.push_back((key, entry.clone()));
        if cache.len() > CACHED {
            cache.pop_front();
        }
        entry
    }

    /// Computes the best-level answer of [`Encoder::encode`] ahead of any client asking (see
    /// [`crate::warm`]), one at a time with the background's, unless it is cached or stored
    /// already; with a binary patch beside it only if `patch` (a patch costs a suffix sort of
    /// the whole base, so one per new version is tried ahead). Returns whether it computed one.
    pub async fn precompute(
        &self,
        index: &AssetIndex,
        current: &Arc<Indexed>,
        send: &[u32],
        base: &Base,
        patch: bool,
    ) -> bool {
        let entry = self.entry(current, send, Some(base));
        let _permit = self.background.acquire().await.expect("never closed");
        if entry.first.initialized() || entry.best.lock().expect("poisoned").is_some() {
            return false;
        }
        let stored = answer_key(Some(base.version), current.version, send);
        // Another instance may have computed it, or be computing it for all.
        if stored_answer(index, &stored).await.is_some() || !index.claim_answer(&stored).await {
            return false;
        }
        let prefix = index.prefix(&base.version).await;
        let job = Job::new(current, send, prefix, Some(base));
        let best = job.best(EncodeConfig { patches: self.config.patches && patch, ..self.config }).await;
        keep_answer(index, stored, &best);
        *entry.best.lock().expect("poisoned") = Some(best);
        true
    }

    /// One pack of a folder answer (see [`assetsync_protocol::pack`]): `raw` compressed at the
    /// fast level against `prefix`, on the blocking pool, or as compressed for an earlier client.
    /// `key` names what the pack and its prefix hold (the answer's files up to it): every client
    /// that syncs the same build from nothing gets the same packs, compressed once. `None` if
    /// zstd fails.
    pub async fn pack(&self, key: Hash, raw: &[u8], prefix: Option<&[u8]>) -> Option<Arc<Vec<u8>>> {
        let cell = {
            let mut packs = self.packs.lock().expect("poisoned");
            match packs.iter().find(|(k, _)| *k == key) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Arc::new(PackCell::new());
                    packs.push_back((key, cell.clone()));
                    cell
                }
            }
        };
        let level = self.config.fast_level;
        let compressed = cell
            .get_or_init(|| {
                let (raw, prefix) = (raw.to_vec(), prefix.map(<[u8]>::to_vec));
                let job = tokio::task::spawn_blocking(move || compress(&raw, prefix.as_deref(), level));
                async { job.await.expect("pack compression panicked").map(Arc::new) }
            })
            .await
            .clone();
        // Oldest first out, past the budget (and a failure is not kept).
        let mut packs = self.packs.lock().expect("poisoned");
        packs.retain(|(_, cell)| cell.get().is_none_or(Option::is_some));
        let mut bytes: usize = packs.iter().filter_map(|(_, c)| c.get()?.as_ref().map(|p| p.len())).sum();
        while bytes > PACK_CACHE_BYTES {
            let Some((_, cell)) = packs.pop_front() else { break };
            bytes -= cell.get().and_then(|p| p.as_ref().map(|p| p.len())).unwrap_or(0);
        }
        compressed
    }

    /// The chunks at `send` (manifest positions of `current`), compressed against `base` when
    /// given (its bytes found through `index` if the answer is not cached). Concurrent requests
    /// for the same answer wait for one encoding.
    ///
    /// `folder_work`, for a file of a folder answer, is what is left of that answer's
    /// [`QUICK_WORK`]: past it the folder's files are encoded at the fast level only (a
    /// build folder's thousands of small files would take seconds of level 19, and a
    /// best-level encoding per file in the background would be evicted before anyone used it).
    pub async fn encode(
        &self,
        index: &Arc<AssetIndex>,
        current: &Arc<Indexed>,
        send: &[u32],
        base: Option<&Base>,
        folder_work: Option<&mut usize>,
    ) -> Arc<Encoded> {
        let work = work(current, send, base);
        let config = self.config;
        let EncodeConfig { level, fast_level, .. } = config;
        let in_folder = folder_work.is_some();
        let budget =
            folder_work.map_or(QUICK_WORK, |left| std::mem::replace(left, left.saturating_sub(work)));
        let quick = work <= budget || fast_level >= level;
        if in_folder && !quick && base.is_none() && work <= INLINE_WORK {
            // A small new file of a folder, past the folder's best-level budget: encoding it
            // here takes less time than looking for a cached or stored answer would.
            return Arc::new(encode(current, send, None, fast_level));
        }
        let entry = self.entry(current, send, base);
        if let Some(best) = entry.best.lock().expect("poisoned").clone() {
            return best;
        }
        // The job that computed the first answer, if it was this call.
        let mut ran = None;
        let first = entry
            .first
            .get_or_init(|| async {
                let stored = answer_key(base.map(|b| b.version), current.version, send);
                if let Some(answer) = stored_answer(index, &stored).await {
                    return answer;
                }
                let prefix = match base {
                    Some(base) => index.prefix(&base.version).await,
                    None => None,
                };
                let job = Job::new(current, send, prefix, base);
                let first = job.clone().run(if quick { level } else { fast_level }).await;
                if quick {
                    keep_answer(index, stored, &first);
                }
                ran = Some((job, stored));
                first
            })
            .await
            .clone();
        if let Some((job, stored)) = ran.filter(|_| !quick && !in_folder && work <= MAX_BEST_WORK) {
            let permits = self.background.clone();
            let index = index.clone();
            tokio::spawn(async move {
                let best = match index.claim_answer(&stored).await {
                    true => None,
                    // Another instance computes it for all.
                    false => index.await_answer(&stored).await.and_then(|b| Encoded::from_bytes(&b)),
                };
                let best = match best {
                    Some(best) => Arc::new(best),
                    None => {
                        let _permit = permits.acquire_owned().await.expect("never closed");
                        let best = job.best(config).await;
                        index.put_answer(stored, best.to_bytes());
                        best
                    }
                };
                *entry.best.lock().expect("poisoned") = Some(best);
            });
        }
        first
    }
}

/// Prefix plus input bytes of an encoding.
pub fn work(current: &Indexed, send: &[u32], base: Option<&Base>) -> usize {
    base.map_or(0, |b| b.manifest.len as usize)
        + send.iter().map(|&i| current.chunk(i as usize).len()).sum::<usize>()
}

/// The best-level answer kept under `key` in the version store or the shared store, if any.
async fn stored_answer(index: &AssetIndex, key: &AnswerKey) -> Option<Arc<Encoded>> {
    index.answer(key).await.and_then(|bytes| Encoded::from_bytes(&bytes)).map(Arc::new)
}

/// Keeps a best-level answer in the version store and the shared store, where there are.
fn keep_answer(index: &AssetIndex, key: AnswerKey, encoded: &Encoded) {
    index.put_answer(key, encoded.to_bytes());
}

/// The inputs of one encoding.
#[derive(Clone)]
struct Job {
    current: Arc<Indexed>,
    send: Vec<u32>,
    /// The client's version's bytes, if the store still has them.
    prefix: Option<Bytes>,
    /// Whether `prefix` is the whole of the client's version (not only its end), so that a
    /// binary patch against it can be made.
    whole: bool,
    /// Prefix plus input bytes.
    work: usize,
}

/// Work encoded on the calling thread at a fast level (tens of microseconds), rather than handed
/// to the blocking pool: a folder's small files would spend more time in the handover.
const INLINE_WORK: usize = 64 << 10;

impl Job {
    fn new(current: &Arc<Indexed>, send: &[u32], prefix: Option<Bytes>, base: Option<&Base>) -> Self {
        let whole = prefix.as_ref().zip(base).is_some_and(|(p, b)| p.len() as u64 == b.manifest.len);
        let work = work(current, send, base);
        Job { current: current.clone(), send: send.to_vec(), prefix, whole, work }
    }

    /// The best-level answer ([`Job::run`] at `config.level`), and a binary patch beside it
    /// when that is smaller (see [`patch`]). Runs in the background only: a patch costs seconds.
    async fn best(self, config: EncodeConfig) -> Arc<Encoded> {
        let (asset, whole, level) =
            (self.current.manifest.path.clone(), self.whole && config.patches, config.level);
        self.log(level);
        let encoded = tokio::task::spawn_blocking(move || {
            let mut encoded = encode(&self.current, &self.send, self.prefix.as_deref(), level);
            let zstd = encoded.frame_bytes(&self.current, false);
            let (Some(old), true) = (self.prefix.as_deref(), whole) else { return encoded };
            let new = &self.current.data[..];
            if zstd < MIN_PATCHED_ANSWER || new.len() > MAX_PATCH_FILE || old.len() > MAX_PATCH_FILE {
                return encoded;
            }
            let started = std::time::Instant::now();
            let level = patch_level(level, new.len());
            let (patch, maps, tail) = match wasm_maps(old, new) {
                Some((maps, remapped)) => {
                    let (patch, tail) = wasm_patch(&remapped, new, level).unzip();
                    (patch, Some(maps), tail.flatten())
                }
                None => (patch(old, new, level), None, None),
            };
            let bytes = |part: &Option<Vec<u8>>| part.as_ref().map_or(0, Vec::len);
            let (took, sizes) = (started.elapsed(), [&patch, &maps, &tail].map(bytes));
            (encoded.patch, encoded.maps, encoded.tail) = (patch, maps, tail);
            // What a client that takes the patch receives, against the zstd answer.
            let used = encoded.patch.is_some() && encoded.frame_bytes(&self.current, true) < zstd;
            tracing::info!(
                %asset,
                old = old.len(),
                new = new.len(),
                zstd,
                patch = sizes[0],
                maps = sizes[1],
                tail = sizes[2],
                used,
                ms = took.as_millis() as u64,
                "binary patch computed"
            );
            if !used {
                (encoded.patch, encoded.maps, encoded.tail) = (None, None, None);
            }
            encoded
        });
        Arc::new(encoded.await.expect("encoding task panicked"))
    }

    /// The debug line of each encoding (which the tests count).
    fn log(&self, level: i32) {
        let (asset, chunks) = (&self.current.manifest.path, self.send.len());
        tracing::debug!(%asset, chunks, work = self.work, level, delta = self.prefix.is_some(), "encoding an answer");
    }

    /// Encodes on the blocking pool, or here if it is quick.
    async fn run(self, level: i32) -> Arc<Encoded> {
        self.log(level);
        if self.work <= INLINE_WORK && level < SLOW_PREFIX_LEVEL {
            return Arc::new(encode(&self.current, &self.send, self.prefix.as_deref(), level));
        }
        let encoded = tokio::task::spawn_blocking(move || {
            encode(&self.current, &self.send, self.prefix.as_deref(), level)
        });
        Arc::new(encoded.await.expect("encoding task panicked"))
    }
}

fn encode(current: &Indexed, send: &[u32], prefix: Option<&[u8]>, level: i32) -> Encoded {
    let batch_bytes = match prefix {
        None => PLAIN_BATCH,
        Some(_) if level >= SLOW_PREFIX_LEVEL => LARGE_BATCH,
        Some(_) => SMALL_BATCH,
    };
    let mut batches = Vec::new();
    let mut used_prefix = false;
    let mut start = 0;
    while start < send.len() {
        let mut end = start;
        let mut raw = Vec::new();
        while end < send.len()
            && (raw.is_empty() || raw.len() + current.chunk(send[end] as usize).len() <= batch_bytes)
        {
            raw.extend_from_slice(current.chunk(send[end] as usize));
            end += 1;
        }
        let indices = send[start..end].to_vec();
        match compress(&raw, prefix, level) {
            // Worth it only if it saves at least 1/64 of the plain frames: a batch is decoded
            // and kept only once whole, so a cut loses all of it, where plain frames lose one
            // chunk (incompressible data, such as images or random bytes, travels plain).
            Some(frame)
                if frame.len() + 4 * indices.len() + raw.len() / 64 < raw.len() + 5 * indices.len() =>
            {
                used_prefix |= prefix.is_some();
                batches.push(Batch::Compressed { indices, frame });
            }
            _ => batches.push(Batch::Plain { indices }),
        }
        start = end;
    }
    Encoded::new(used_prefix, batches)
}

/// Answers smaller than this are not worth a binary patch: it could save little, and costs a
/// suffix sort of the whole base version.
const MIN_PATCHED_ANSWER: usize = 4 << 10;
/// The largest file (old or new) a binary patch is computed for: the base's suffix array takes
/// four bytes per byte, and the sort about a second per 10 MB.
pub const MAX_PATCH_FILE: usize = 64 << 20;

/// The zstd level of a binary patch's streams beside an answer at `level`: zstd's highest, 22,
/// for new files up to [`MAX_ULTRA_PATCH_FILE`] when the answer is at the best levels (the
/// difference stream of esbuild.wasm 0.27.2 -> 0.27.3 came out 7% smaller than at level 19, for
/// about three times the CPU), else `level`.
fn patch_level(level: i32, new_len: usize) -> i32 {
    match level >= 19 && new_len <= MAX_ULTRA_PATCH_FILE {
        true => 22,
        false => level,
    }
}

/// The largest new file whose patch streams are compressed at level 22 (about 10 s of CPU for
/// 13.5 MB here).
const MAX_ULTRA_PATCH_FILE: usize = 16 << 20;

/// The new file `new` as a binary patch against `old` (see [`assetsync_protocol::patch`]): the
/// matches found by `bidiff` (bsdiff's suffix-array search), each stream compressed at `level`.
pub fn patch(old: &[u8], new: &[u8], level: i32) -> Option<Vec<u8>> {
    encode_streams(&matches(old, new)?, level)
}

/// A patch of the new WebAssembly module `new` against the old one `remapped` (see
/// [`wasm_maps`]), and its tail when one is smaller: the module's data after its code as a zstd
/// frame against `remapped`, and the patch only up to there. Rust's data moves between builds
/// in ways LZ matching encodes better than bsdiff's controls (swc 1.3.100 -> 1.3.102: the patch
/// of its 5.3 MB of data was 592 KB, the tail 428 KB), while the code is where the patch wins.
fn wasm_patch(remapped: &[u8], new: &[u8], level: i32) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let streams = matches(remapped, new)?;
    let whole = encode_streams(&streams, level)?;
    let code_end = wasm::walk(new, |_| {}).and_then(|layout| Some(layout.bodies.last()?.end));
    let split = code_end.filter(|&end| (MIN_TAIL..=MAX_TAIL).contains(&(new.len() - end)));
    let Some(split) = split else { return Some((whole, None)) };
    // A quick tail first (tens of milliseconds): the best levels take seconds against a large
    // module, and shrink a level-1 tail by about 40% at most (0.59-0.62x on the corpus's
    // modules), so one over twice the whole patch cannot pay (esbuild.wasm 0.27.3: 393 KB
    // quick, against a patch of 91 KB).
    if compress::compress(&new[split..], Some(remapped), 1)?.len() / 2 >= whole.len() {
        return Some((whole, None));
    }
    let head = encode_streams(&streams.head(split), level)?;
    let tail = compress::compress(&new[split..], Some(remapped), level)?;
    match head.len() + tail.len() < whole.len() {
        true => Some((head, Some(tail))),
        false => Some((whole, None)),
    }
}

/// Tails shorter than this are not worth trying.
const MIN_TAIL: usize = 64 << 10;
/// The longest tail: a client decodes it in one step (about 16 ms in a browser).
const MAX_TAIL: usize = 16 << 20;

/// bsdiff's matches of `new` against `old` (by `bidiff`), as a patch's streams.
fn matches(old: &[u8], new: &[u8]) -> Option<Streams> {
    let mut streams = Streams::default();
    let mut translator = bidiff::Translator::new(old, new, |c: &bidiff::Control| {
        streams.push(c.add, c.copy, c.seek);
        Ok::<(), std::io::Error>(())
    });
    bidiff::diff(old, new, &bidiff::DiffParams::default(), |m| translator.translate(m)).ok()?;
    translator.close().ok()?;
    Some(streams)
}

/// A patch's payload: each stream compressed at `level`, windowed so that clients decode the
/// streams a slice at a time.
fn encode_streams(streams: &Streams, level: i32) -> Option<Vec<u8>> {
    let mut failed = false;
    let payload = streams.encode(|raw| {
        compress::compress_stream(raw, level).unwrap_or_else(|| {
            failed = true;
            Vec::new()
        })
    });
    (!failed).then_some(payload)
}

/// For a new WebAssembly module, the maps that make the old one most like it (encoded) and the
/// old one remapped with them, to take the patch against (see [`assetsync_protocol::wasm`]);
/// `None` for other files, modules the walker does not read, and maps that change nothing.
fn wasm_maps(old: &[u8], new: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let maps = wasm::learn(old, new).filter(|maps| *maps != wasm::Maps::default())?;
    Some((maps.encode(), wasm::remap(old, &maps)?))
}

/// One zstd frame of `raw`, with `prefix` referenced as if it preceded it (see
/// [`compress::compress`]). `None` if zstd fails (it should not; the caller then sends plain
/// chunks).
fn compress(raw: &[u8], prefix: Option<&[u8]>, level: i32) -> Option<Vec<u8>> {
    match prefix {
        Some(prefix) => compress::compress(raw, Some(prefix), level),
        // Without a prefix (the many small files of a folder), one context per thread is kept:
        // creating one costs more than compressing a few kilobytes.
        None => PLAIN_CCTX.with_borrow_mut(|cctx| {
            let cctx = match cctx {
                Some(cctx) => cctx,
                None => cctx.insert(CCtx::try_create()?),
            };
            let out = compress::compress_with(cctx, raw, None, level);
            cctx.reset(ResetDirective::SessionAndParameters).ok()?;
            out
        }),
    }
}

thread_local! {
    static PLAIN_CCTX: std::cell::RefCell<Option<CCtx<'static>>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    // With the dev-dependency's `c-zstd`, `decompress` is the native clients' decoder.
    use assetsync_protocol::compress::{decompress as native, decompress_portable};
    use assetsync_protocol::test_util::random_bytes;

    use super::{Batch, EncodeConfig, Encoded, Encoder, compress};

    /// The server's C encoder and both clients' decoders (the browser's pure-Rust one, the
    /// native C one) must agree byte for byte, with and without a prefix, including matches
    /// that reach far back into the prefix.
    #[test]
    fn c_encoder_frames_decode_with_ruzstd_and_natively() {
        let old = [random_bytes(3 << 20, 1), b"the tail of the old file".to_vec()].concat();
        let mut new = old[1 << 20..].to_vec();
        new.extend_from_slice(&random_bytes(5000, 2));
        new.extend_from_slice(&old[..70_000]);
        for prefix in [None, Some(&old[..])] {
            let frame = compress(&new, prefix, 19).unwrap();
            assert_eq!(decompress_portable(&frame, prefix, new.len()).unwrap(), new);
            assert_eq!(native(&frame, prefix, new.len()).unwrap(), new);
            if prefix.is_some() {
                assert!(frame.len() < 10_000, "prefix not used: {} bytes", frame.len());
            }
        }
    }

    #[test]
    fn stored_answers_read_back_whole_or_not_at_all() {
        let encoded = Encoded::new(
            true,
            vec![
                Batch::Compressed { indices: vec![0, 2], frame: b"zstd frame".to_vec() },
                Batch::Plain { indices: vec![1, 3, 4] },
            ],
        );
        let bytes = encoded.to_bytes();
        let back = Encoded::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        for cut in 0..bytes.len() {
            assert!(Encoded::from_bytes(&bytes[..cut]).is_none(), "a cut at {cut} parsed");
        }
        assert!(Encoded::from_bytes(&[bytes.as_slice(), b"x"].concat()).is_none());
        // A patch, and a WebAssembly patch's maps and tail after it.
        let mut patched = Encoded::new(true, Vec::new());
        patched.patch = Some(b"patch".to_vec());
        let without_maps = patched.to_bytes();
        patched.maps = Some(b"maps".to_vec());
        let without_tail = patched.to_bytes();
        patched.tail = Some(b"tail".to_vec());
        let back = Encoded::from_bytes(&patched.to_bytes()).unwrap();
        assert_eq!((back.patch, back.maps, back.tail), (patched.patch, patched.maps, patched.tail));
        assert!(Encoded::from_bytes(&without_maps).unwrap().maps.is_none(), "stored before maps");
        assert!(Encoded::from_bytes(&without_tail).unwrap().tail.is_none(), "stored before tails");
    }

    /// A frame that does not announce its length and asks for a window past the 64 MiB any
    /// encoder here uses is refused before the decoder allocates it; the same bytes with a
    /// window the encoder uses decode.
    #[test]
    fn decoder_refuses_windows_larger_than_the_encoder_uses() {
        use std::io::Write;
        let data = vec![b'x'; 1 << 20];
        // Streamed, so that the encoder does not know the length and keeps the window asked.
        let frame = |window: u32| {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            encoder.window_log(window).unwrap();
            encoder.write_all(&data).unwrap();
            encoder.finish().unwrap()
        };
        assert_eq!(native(&frame(26), None, data.len()).unwrap(), data);
        assert!(native(&frame(27), None, data.len()).is_err(), "a 128 MiB window");
    }

    #[test]
    fn decoder_refuses_output_longer_than_announced() {
        let data = vec![b'x'; 100_000];
        let frame = compress(&data, None, 3).unwrap();
        for decode in [decompress_portable, native] {
            assert!(decode(&frame, None, 99_999).is_err());
            assert!(decode(&frame[..frame.len() - 3], None, 100_000).is_err());
            assert_eq!(decode(&frame, None, 100_000).unwrap(), data);
        }
    }

    /// Every client syncing the same build from nothing gets the same packs: compressed once.
    #[tokio::test]
    async fn a_folder_pack_is_compressed_once_for_every_client() {
        let encoder = Encoder::new(EncodeConfig::default());
        let (raw, prefix) = (random_bytes(200_000, 3), random_bytes(100_000, 4));
        let key = assetsync_protocol::Hash::of(b"the files up to this pack");
        let first = encoder.pack(key, &raw, Some(&prefix)).await.unwrap();
        assert_eq!(native(&first, Some(&prefix), raw.len()).unwrap(), raw);
        let again = encoder.pack(key, &raw, Some(&prefix)).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "the same pack was compressed twice");
        let other = encoder.pack(assetsync_protocol::Hash::of(b"other files"), &raw, None).await.unwrap();
        assert!(!std::sync::Arc::ptr_eq(&first, &other));
    }
}
