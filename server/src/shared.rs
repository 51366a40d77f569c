//! The shared store (`--shared-store s3://BUCKET/PREFIX` or `file:///PATH`): an object store
//! that every instance reads and writes, so that what one instance indexed or computed, the
//! others use.
//!
//! It holds immutable objects named by their content: each version's manifest
//! (`manifests/<version>`, which hashes to its name) and file (`files/<version>`), the folder
//! listings sent to clients (`listings/<version>`, likewise), best-level answers
//! (`answers/<key>`, their SHA-256 ahead of their bytes), and offloaded answers' bodies
//! (`offload/<name>`, named by their SHA-256; see [`crate::offload`]). An object is never changed once
//! written, so instances need no coordination: two that write the same one write the same
//! bytes. A client naming a version (or a folder listing) this instance never saw gets a delta
//! against it when it is in the shared store; an answer one instance computed is fetched, not
//! computed again, by the others. When the instances share a change bus too (`--bus`), an
//! instance about to compute a best-level answer first claims it there, so that two asked for
//! the same new answer at once (as after every deploy) do not both compute it: the other waits
//! for it to appear here.
//!
//! Everything read is verified (a manifest against its name, a file's chunks against the
//! manifest, an answer against its SHA-256); a read that fails or does not verify is tried
//! again, up to [`ATTEMPTS`] times, and an object that never verifies is deleted and treated
//! as missing, so the next instance that has those bytes writes it again. object_store retries
//! transient S3 errors with backoff (twice, within 5 s); after [`FAILURES`] failed reads in a
//! row the store is left alone for [`PAUSE`], so that an unreachable store costs an instance
//! only what it would have had without one: it serves from memory, its own version store and
//! its root, never wrong bytes, and does not wait on the store for every request.
//! Old objects are left to the bucket's lifecycle rules (expire them after some days).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assetsync_protocol::{FolderEntry, Hash, Manifest, VersionId, folder_version};
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::aws::AmazonS3ConfigKey;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use tokio::sync::Semaphore;

use crate::bus::Claims;
use crate::store::{AnswerKey, checksummed, decode_listing, encode_listing, tail_chunks, verified};

/// Reads of one object before it counts as missing.
const ATTEMPTS: u32 = 3;
/// Failed reads in a row (each retried by object_store already) after which the store is left
/// alone for [`PAUSE`].
const FAILURES: u32 = 3;
/// How long the store is left alone after it kept failing.
const PAUSE: Duration = Duration::from_secs(10);
/// Files larger than this go up in parts of this size.
const PART_BYTES: usize = 16 << 20;
/// Versions written to the store at once.
const WRITES: usize = 8;
/// How long a claim on an answer lasts: longer than a best-level encoding takes.
const CLAIM_TTL: Duration = Duration::from_secs(120);
/// How often an instance waiting for a claimed answer looks for it.
const CLAIM_POLL: Duration = Duration::from_millis(250);
/// How long a version found missing is not looked for again.
const MISS_TTL: Duration = Duration::from_secs(5);

/// A handle on the shared store. Cheap to share.
pub struct Shared {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// Versions recently found missing, so that a client naming an unknown one does not cost a
    /// request each time.
    misses: Mutex<HashMap<VersionId, Instant>>,
    /// Versions written at once.
    writes: Semaphore,
    /// Reads that failed in a row.
    failures: AtomicU32,
    /// Until when the store is left alone, after [`FAILURES`] failed reads in a row.
    paused_until: Mutex<Option<Instant>>,
    /// Claims on answers, when the instances share a bus too.
    claims: OnceLock<Arc<Claims>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Shared {
    /// Opens the store at `url`: `s3://BUCKET[/PREFIX]` (credentials, region and endpoint from
    /// the standard `AWS_*` environment variables), or `file:///PATH` (created if missing).
    /// Nothing is read or written yet.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let bad = || format!("--shared-store {url}: expected s3://BUCKET/PREFIX or file:///PATH");
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(!bucket.is_empty(), bad());
            let retry =
                RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(5), ..Default::default() };
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                // On top of what the environment set (AWS_ALLOW_HTTP among them).
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "2s")
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "60s")
                .build()
                .with_context(|| format!("--shared-store {url}"))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) }
        } else if let Some(path) = url.strip_prefix("file://") {
            anyhow::ensure!(path.starts_with('/'), bad());
            std::fs::create_dir_all(path).with_context(|| format!("cannot create --shared-store {path}"))?;
            Arc::new(LocalFileSystem::new_with_prefix(path).with_context(|| format!("--shared-store {url}"))?)
        } else {
            anyhow::bail!(bad());
        };
        Ok(Shared {
            store,
            url: url.to_owned(),
            misses: Mutex::default(),
            writes: Semaphore::new(WRITES),
            failures: AtomicU32::new(0),
            paused_until: Mutex::default(),
            claims: OnceLock::new(),
        })
    }

    /// Writes `manifest`'s version, whose bytes are `data`, unless it is there already: the file
    /// first, so that a manifest found there always has its file.
    pub async fn put_version(&self, manifest: &Manifest, data: Bytes) {
        let version = manifest.version();
        let _permit = self.writes.acquire().await.expect("never closed");
        if !self.missing(&manifest_path(&version)).await {
            return;
        }
        let written = async {
            self.put_file(&file_path(&version), data).await?;
            self.store.put(&manifest_path(&version), PutPayload::from(manifest.canonical_bytes())).await
        };
        match written.await {
            Ok(_) => {
                self.misses.lock().expect("poisoned").remove(&version);
                tracing::debug!(version = %version.to_hex(), "version written to the shared store");
            }
            Err(e) => {
                tracing::warn!(version = %version.to_hex(), error = %e, "cannot write to the shared store")
            }
        }
    }

    /// Writes `data` at `path`: in one request, or, past [`PART_BYTES`], as a multipart upload
    /// (S3 takes at most 5 GB in one request, and a failed part is retried alone).
    async fn put_file(&self, path: &Path, data: Bytes) -> object_store::Result<()> {
        if data.len() <= PART_BYTES {
            return self.store.put(path, PutPayload::from_bytes(data)).await.map(drop);
        }
        let upload = self.store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        writer.put(data);
        writer.finish().await.map(drop)
    }

    /// The manifest of `version`, if the shared store has it.
    pub async fn manifest(&self, version: &VersionId) -> Option<Manifest> {
        {
            let mut misses = self.misses.lock().expect("poisoned");
            misses.retain(|_, at| at.elapsed() < MISS_TTL);
            if misses.contains_key(version) {
                return None;
            }
        }
        let found = self
            .read(&manifest_path(version), None, &[], |bytes| {
                Manifest::decode_canonical(bytes).ok().filter(|m| m.version() == *version)
            })
            .await;
        if found.is_none() {
            self.misses.lock().expect("poisoned").insert(*version, Instant::now());
        }
        found
    }

    /// The end of `manifest`'s version, at least its last `tail` bytes, each chunk checked.
    pub async fn tail(&self, manifest: &Manifest, tail: u64) -> Option<Vec<u8>> {
        let (first, len) = tail_chunks(manifest, tail);
        let range = manifest.len - len..manifest.len;
        let chunks = &manifest.chunks[first..];
        let version = manifest.version();
        // A file that does not verify goes with its manifest, so that the next instance to index
        // the version writes both again.
        let companion = [manifest_path(&version)];
        self.read(&file_path(&version), Some(range), &companion, |bytes| {
            let mut at = 0;
            for chunk in chunks {
                let piece = bytes.get(at..at + chunk.len as usize)?;
                if Hash::of(piece) != chunk.id {
                    return None;
                }
                at += piece.len();
            }
            (at == bytes.len()).then(|| bytes.to_vec())
        })
        .await
    }

    /// Writes a folder listing sent to a client, named by its version, unless it is there.
    pub async fn put_listing(&self, version: VersionId, entries: &[FolderEntry]) {
        let path = listing_path(&version);
        if !self.missing(&path).await {
            return;
        }
        if let Err(e) = self.store.put(&path, PutPayload::from(encode_listing(entries))).await {
            tracing::warn!(listing = %version.to_hex(), error = %e, "cannot write a listing to the shared store");
        }
    }

    /// The folder listing whose version is `version`, if the shared store has it.
    pub async fn listing(&self, version: &VersionId) -> Option<Vec<FolderEntry>> {
        self.read(&listing_path(version), None, &[], |bytes| {
            decode_listing(bytes).filter(|entries| folder_version(entries) == *version)
        })
        .await
    }

    /// The best-level answer kept under `key`, if any.
    pub async fn answer(&self, key: &AnswerKey) -> Option<Vec<u8>> {
        self.read(&answer_path(key), None, &[], |bytes| verified(bytes).map(<[u8]>::to_vec)).await
    }

    /// Keeps an offloaded answer's body (see [`crate::offload`]) for every instance, under its
    /// name, unless it is there.
    pub async fn put_offloaded(&self, name: &str, body: Bytes) {
        let path = offload_path(name);
        if !self.missing(&path).await {
            return;
        }
        if let Err(e) = self.put_file(&path, body).await {
            tracing::warn!(error = %e, "cannot write an offloaded answer to the shared store");
        }
    }

    /// The offloaded answer's body named `name`, if the shared store has it intact.
    pub async fn offloaded(&self, name: &str) -> Option<Vec<u8>> {
        self.read(&offload_path(name), None, &[], |bytes| {
            (assetsync_protocol::offload::name(bytes) == name).then(|| bytes.to_vec())
        })
        .await
    }

    /// Lets the instances claim answers through the bus (see [`Shared::claim_answer`]).
    pub fn coordinate(&self, claims: Arc<Claims>) {
        let _ = self.claims.set(claims);
    }

    /// Whether this instance should compute the answer under `key`: `false` when another one
    /// has claimed it (through the bus, in the last [`CLAIM_TTL`]) and will put it here.
    pub async fn claim_answer(&self, key: &AnswerKey) -> bool {
        match self.claims.get() {
            Some(claims) => claims.claim(answer_path(key).as_ref(), CLAIM_TTL).await,
            None => true,
        }
    }

    /// The answer under `key` once the instance that claimed it has put it here: looked for
    /// every [`CLAIM_POLL`] for as long as a claim lasts.
    pub async fn await_answer(&self, key: &AnswerKey) -> Option<Vec<u8>> {
        let until = Instant::now() + CLAIM_TTL;
        while Instant::now() < until {
            if let Some(answer) = self.answer(key).await {
                return Some(answer);
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
        None
    }

    /// Keeps a best-level answer for every instance.
    pub async fn put_answer(&self, key: AnswerKey, answer: &[u8]) {
        if self.paused() {
            return;
        }
        let body = PutPayload::from(checksummed(answer));
        if let Err(e) = self.store.put(&answer_path(&key), body).await {
            tracing::warn!(error = %e, "cannot write an answer to the shared store");
        }
    }

    /// Whether `path` should be written: the store is not left alone, and has no such object.
    async fn missing(&self, path: &Path) -> bool {
        !self.paused() && self.store.head(path).await.is_err()
    }

    /// Reads `path` (`range` of it), checked by `verify`, reading it again after an error or
    /// a failed check; `None` when it is not there, the store is failing, or it never verifies
    /// (then it is deleted, and its `companions` with it).
    async fn read<T>(
        &self,
        path: &Path,
        range: Option<std::ops::Range<u64>>,
        companions: &[Path],
        verify: impl Fn(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let mut damaged = false;
        for _ in 0..ATTEMPTS {
            if self.paused() {
                return None;
            }
            let read = match &range {
                Some(range) => self.store.get_range(path, range.clone()).await,
                None => match self.store.get(path).await {
                    Ok(got) => got.bytes().await,
                    Err(e) => Err(e),
                },
            };
            match read {
                Ok(bytes) => {
                    self.failures.store(0, Ordering::Relaxed);
                    if let Some(value) = verify(&bytes) {
                        return Some(value);
                    }
                    damaged = true;
                    tracing::debug!(%path, "an object of the shared store does not match its name");
                }
                Err(object_store::Error::NotFound { .. }) => {
                    self.failures.store(0, Ordering::Relaxed);
                    return None;
                }
                Err(e) => {
                    damaged = false;
                    self.failed(&e);
                }
            }
        }
        if damaged {
            tracing::warn!(%path, "deleting an object of the shared store that does not match its name");
            for path in std::iter::once(path).chain(companions) {
                let _ = self.store.delete(path).await;
            }
        }
        None
    }

    /// Whether the store is being left alone after failing.
    fn paused(&self) -> bool {
        let mut until = self.paused_until.lock().expect("poisoned");
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Counts a read that failed (after object_store's retries); [`FAILURES`] in a row leave
    /// the store alone for [`PAUSE`].
    fn failed(&self, error: &object_store::Error) {
        tracing::debug!(%error, "shared store read failed");
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < FAILURES {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            store = self.url,
            %error,
            "the shared store keeps failing; serving without it for {} s",
            PAUSE.as_secs()
        );
        *self.paused_until.lock().expect("poisoned") = Some(Instant::now() + PAUSE);
    }
}

fn manifest_path(version: &VersionId) -> Path {
    Path::from(format!("manifests/{}", version.to_hex()))
}

fn file_path(version: &VersionId) -> Path {
    Path::from(format!("files/{}", version.to_hex()))
}

fn listing_path(version: &VersionId) -> Path {
    Path::from(format!("listings/{}", version.to_hex()))
}

fn offload_path(name: &str) -> Path {
    Path::from(format!("offload/{name}"))
}

fn answer_path(key: &AnswerKey) -> Path {
    Path::from(format!("answers/{}", hex::encode(Hash::of(key).0)))
}
