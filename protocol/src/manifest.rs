//! Manifests (one asset version's recipe), their version ids, and manifest deltas.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{AssetPath, ChunkId, ChunkParams, ChunkRef, Error, Hash, chunk_data};

/// The id of one asset version: the SHA-256 of its manifest's canonical encoding.
pub type VersionId = Hash;

/// Most chunks one manifest may list (16 GiB at the smallest allowed average).
pub const MAX_CHUNKS: usize = 1 << 22;

/// One version of one asset: everything needed to rebuild and verify it from chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Where the asset lives, relative to the served root.
    pub path: AssetPath,
    /// Length of the whole file in bytes.
    pub len: u64,
    /// SHA-256 of the whole file, checked by the client before it commits.
    pub sha256: Hash,
    /// How the file was cut.
    pub params: ChunkParams,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Builds the manifest of `data` from chunks computed elsewhere (the server hashes the whole
    /// file and cuts it on two threads).
    pub fn from_parts(
        path: AssetPath,
        data_len: usize,
        sha256: Hash,
        params: ChunkParams,
        chunks: Vec<ChunkRef>,
    ) -> Self {
        Manifest { path, len: data_len as u64, sha256, params, chunks }
    }

    /// Chunks and hashes `data` on the calling thread.
    pub fn build(path: AssetPath, data: &[u8], params: ChunkParams) -> Result<Self, Error> {
        let chunks = chunk_data(data, params)?;
        Ok(Manifest::from_parts(path, data.len(), Hash::of(data), params, chunks))
    }

    /// The version id: SHA-256 of [`Manifest::canonical_bytes`].
    pub fn version(&self) -> VersionId {
        Hash::of(&self.canonical_bytes())
    }

    /// A fixed little-endian layout that does not depend on JSON formatting, so that every party
    /// computes the same version id.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.path.as_str().len() + self.chunks.len() * 36);
        out.extend_from_slice(b"assetsync-manifest-v1\0");
        out.extend_from_slice(&(self.path.as_str().len() as u32).to_le_bytes());
        out.extend_from_slice(self.path.as_str().as_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.sha256.0);
        for v in [self.params.min, self.params.avg, self.params.max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.id.0);
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        out
    }

    /// Parses [`Manifest::canonical_bytes`], as stored by client caches (which name the file by
    /// its version id, so a store can check it with [`Manifest::version`]).
    pub fn decode_canonical(bytes: &[u8]) -> Result<Self, Error> {
        let bad = || Error::BadManifest("truncated or malformed canonical encoding");
        let mut rest = bytes.strip_prefix(b"assetsync-manifest-v1\0".as_slice()).ok_or_else(bad)?;
        let mut take = |n: usize| -> Result<&[u8], Error> {
            let (head, tail) = rest.split_at_checked(n).ok_or_else(bad)?;
            rest = tail;
            Ok(head)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let path_len = u32_at(take(4)?) as usize;
        let path = std::str::from_utf8(take(path_len)?).map_err(|_| bad())?;
        let path = AssetPath::new(path)?;
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let sha256 = Hash(take(32)?.try_into().expect("32 bytes"));
        let params = ChunkParams { min: u32_at(take(4)?), avg: u32_at(take(4)?), max: u32_at(take(4)?) };
        let count = u32_at(take(4)?) as usize;
        if count > MAX_CHUNKS {
            return Err(Error::BadManifest("too many chunks"));
        }
        let mut chunks = Vec::new();
        for _ in 0..count {
            let id = Hash(take(32)?.try_into().expect("32 bytes"));
            chunks.push(ChunkRef { id, len: u32_at(take(4)?) });
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        let m = Manifest { path, len, sha256, params, chunks };
        m.validate()?;
        Ok(m)
    }

    /// Checks that the manifest is self-consistent: valid parameters, chunk lengths within them,
    /// and lengths that add up to the file length.
    pub fn validate(&self) -> Result<(), Error> {
        self.params.validate()?;
        if self.chunks.len() > MAX_CHUNKS {
            return Err(Error::BadManifest("too many chunks"));
        }
        let mut total = 0u64;
        for c in &self.chunks {
            if c.len == 0 || c.len > self.params.max {
                return Err(Error::BadManifest("a chunk length is outside the manifest's parameters"));
            }
            total += u64::from(c.len);
        }
        if total != self.len {
            return Err(Error::BadManifest("chunk lengths do not add up to the file length"));
        }
        Ok(())
    }

    /// Ids of the chunks whose bytes in `data` (the rebuilt file) do not hash to their id: used to
    /// find damaged cache entries once a whole-file check has failed.
    pub fn damaged_chunks(&self, data: &[u8]) -> Vec<ChunkId> {
        let mut damaged: Vec<ChunkId> = self
            .offsets()
            .filter(|(off, c)| data.get(*off..*off + c.len as usize).is_none_or(|b| Hash::of(b) != c.id))
            .map(|(_, c)| c.id)
            .collect();
        damaged.sort_unstable();
        damaged.dedup();
        damaged
    }

    /// Byte offset of each chunk, in order.
    pub fn offsets(&self) -> impl Iterator<Item = (usize, &ChunkRef)> {
        self.chunks.iter().scan(0usize, |off, c| {
            let at = *off;
            *off += c.len as usize;
            Some((at, c))
        })
    }
}

/// One step of a manifest delta.
///
/// On the wire: `[from, count]` copies `count` entries of the base manifest starting at `from`;
/// `["<hex id>", len]` is a chunk the base does not list at that place; a bare `len` is a chunk
/// whose bytes follow in this answer, and whose id the client computes from them; `[len]` (only
/// in a binary patch's answer to a client that lists [`crate::patch::CUT_ENCODING`]) is a run of
/// such chunks, `len` bytes in all, which the client cuts from the rebuilt file itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeOp {
    /// Entries `from..from + count` of the base manifest.
    Copy(u32, u32),
    /// A chunk given by id and length.
    Chunk(ChunkId, u32),
    /// A chunk of this length whose bytes are sent with the answer.
    Sent(u32),
    /// Chunks whose bytes are sent with the answer, this many bytes of them back to back: the
    /// client cuts them with the manifest's FastCDC parameters (see [`cut_runs`]).
    Cut(u32),
}

impl Serialize for RecipeOp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            RecipeOp::Copy(from, count) => (from, count).serialize(s),
            RecipeOp::Chunk(id, len) => (id, len).serialize(s),
            RecipeOp::Sent(len) => len.serialize(s),
            RecipeOp::Cut(len) => [len].serialize(s),
        }
    }
}

/// Reads the three shapes by what the JSON holds, instead of serde's untagged matching, which
/// buffers every entry and tries each variant in turn (slower, and a large part of the browser
/// client's code).
impl<'de> Deserialize<'de> for RecipeOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, Error as _, Unexpected};

        /// The first element of a pair: a position in the base, or a chunk id.
        enum First {
            From(u32),
            Id(ChunkId),
        }
        struct FirstVisitor;
        impl de::Visitor<'_> for FirstVisitor {
            type Value = First;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a manifest position or a chunk id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<First, E> {
                u32::try_from(v)
                    .map(First::From)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<First, E> {
                Hash::from_hex(v).map(First::Id).map_err(E::custom)
            }
        }
        impl<'de> Deserialize<'de> for First {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(FirstVisitor)
            }
        }

        struct OpVisitor;
        impl<'de> de::Visitor<'de> for OpVisitor {
            type Value = RecipeOp;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a chunk length, [from, count], [\"<chunk id>\", length] or [length]")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RecipeOp, E> {
                u32::try_from(v)
                    .map(RecipeOp::Sent)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RecipeOp, A::Error> {
                let first: First = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let Some(second) = seq.next_element::<u32>()? else {
                    return match first {
                        First::From(len) => Ok(RecipeOp::Cut(len)),
                        First::Id(_) => Err(A::Error::invalid_length(1, &self)),
                    };
                };
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(match first {
                    First::From(from) => RecipeOp::Copy(from, second),
                    First::Id(id) => RecipeOp::Chunk(id, second),
                })
            }
        }
        d.deserialize_any(OpVisitor)
    }
}

/// Encodes `new` as a delta against `base` (or as a plain list when there is no base).
///
/// Runs of chunks that appear in the same order in the base become one `Copy`, so an unchanged
/// region of any size costs a few bytes instead of 32 bytes per chunk.
pub fn diff(base: Option<&[ChunkRef]>, new: &[ChunkRef]) -> Vec<RecipeOp> {
    let base = base.unwrap_or(&[]);
    let mut first_at: HashMap<ChunkId, usize> = HashMap::with_capacity(base.len());
    for (i, c) in base.iter().enumerate() {
        first_at.entry(c.id).or_insert(i);
    }
    let mut ops = Vec::new();
    let mut i = 0;
    while i < new.len() {
        let c = new[i];
        match first_at.get(&c.id) {
            Some(&from) if base[from].len == c.len => {
                let mut count = 1;
                while i + count < new.len()
                    && from + count < base.len()
                    && base[from + count] == new[i + count]
                {
                    count += 1;
                }
                ops.push(RecipeOp::Copy(from as u32, count as u32));
                i += count;
            }
            _ => {
                ops.push(RecipeOp::Chunk(c.id, c.len));
                i += 1;
            }
        }
    }
    ops
}

/// A placeholder id for [`RecipeOp::Sent`] entries until their bytes arrive.
pub const UNKNOWN_ID: ChunkId = Hash([0; 32]);

/// Turns each run of two or more `Sent` entries into one [`RecipeOp::Cut`]: for an answer whose
/// client rebuilds the whole file before taking the chunks out (a binary patch), so that it
/// can find their lengths itself (about 5 bytes a chunk less: 6 KB for esbuild.wasm's 1,236
/// new chunks).
pub fn cut_runs(recipe: &mut Vec<RecipeOp>) {
    let mut out: Vec<RecipeOp> = Vec::with_capacity(recipe.len());
    for op in recipe.drain(..) {
        let merged = match (out.last(), op) {
            (Some(&RecipeOp::Sent(a) | &RecipeOp::Cut(a)), RecipeOp::Sent(b)) => a.checked_add(b),
            _ => None,
        };
        match merged {
            Some(len) => *out.last_mut().expect("matched") = RecipeOp::Cut(len),
            None => out.push(op),
        }
    }
    *recipe = out;
}

/// A delta applied by [`apply`].
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// The new chunk list, with [`UNKNOWN_ID`] at each sent entry. A [`RecipeOp::Cut`] run is
    /// one entry as long as the whole run until the client cuts it.
    pub chunks: Vec<ChunkRef>,
    /// The positions of the sent entries, runs included.
    pub sent: Vec<u32>,
    /// The positions of the runs.
    pub runs: Vec<u32>,
}

/// Rebuilds the chunk list that [`diff`] encoded (see [`Applied`]). Fails on a reference outside
/// the base or a result longer than [`MAX_CHUNKS`], so hostile input cannot make it allocate
/// without bound.
pub fn apply(base: Option<&[ChunkRef]>, ops: &[RecipeOp]) -> Result<Applied, Error> {
    let base = base.unwrap_or(&[]);
    let mut out = Vec::new();
    let mut sent = Vec::new();
    let mut runs = Vec::new();
    for op in ops {
        match *op {
            RecipeOp::Copy(from, count) => {
                let (from, count) = (from as usize, count as usize);
                let run = from
                    .checked_add(count)
                    .and_then(|end| base.get(from..end))
                    .ok_or(Error::BadManifest("a delta copies entries the base does not have"))?;
                out.extend_from_slice(run);
            }
            RecipeOp::Chunk(id, len) => out.push(ChunkRef { id, len }),
            RecipeOp::Sent(len) => {
                sent.push(out.len() as u32);
                out.push(ChunkRef { id: UNKNOWN_ID, len });
            }
            RecipeOp::Cut(0) => return Err(Error::BadManifest("a run of chunks of no bytes")),
            RecipeOp::Cut(len) => {
                sent.push(out.len() as u32);
                runs.push(out.len() as u32);
                out.push(ChunkRef { id: UNKNOWN_ID, len });
            }
        }
        if out.len() > MAX_CHUNKS {
            return Err(Error::BadManifest("too many chunks"));
        }
    }
    Ok(Applied { chunks: out, sent, runs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(ids: &[u8]) -> Vec<ChunkRef> {
        ids.iter().map(|&b| ChunkRef { id: Hash([b; 32]), len: 100 + u32::from(b) }).collect()
    }

    #[test]
    fn delta_round_trips_and_is_compact() {
        let base = refs(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let new = refs(&[1, 2, 3, 9, 5, 6, 7, 8, 1, 2]);
        let ops = diff(Some(&base), &new);
        assert_eq!(
            ops,
            vec![
                RecipeOp::Copy(0, 3),
                RecipeOp::Chunk(Hash([9; 32]), 109),
                RecipeOp::Copy(4, 4),
                RecipeOp::Copy(0, 2)
            ]
        );
        assert_eq!(apply(Some(&base), &ops).unwrap().chunks, new);
        assert_eq!(apply(None, &diff(None, &new)).unwrap().chunks, new);
        let applied =
            apply(Some(&base), &[RecipeOp::Copy(0, 1), RecipeOp::Sent(5), RecipeOp::Cut(9)]).unwrap();
        let unknown = |len| ChunkRef { id: UNKNOWN_ID, len };
        assert_eq!(
            applied,
            Applied { chunks: vec![base[0], unknown(5), unknown(9)], sent: vec![1, 2], runs: vec![2] }
        );
        assert!(apply(None, &[RecipeOp::Cut(0)]).is_err());
    }

    #[test]
    fn runs_of_sent_chunks_become_one_cut() {
        let id = Hash([7; 32]);
        let mut recipe = vec![
            RecipeOp::Sent(3),
            RecipeOp::Copy(0, 2),
            RecipeOp::Sent(4),
            RecipeOp::Sent(5),
            RecipeOp::Sent(6),
            RecipeOp::Chunk(id, 2),
            RecipeOp::Sent(u32::MAX),
            RecipeOp::Sent(1),
        ];
        cut_runs(&mut recipe);
        let expected = [
            RecipeOp::Sent(3),
            RecipeOp::Copy(0, 2),
            RecipeOp::Cut(15),
            RecipeOp::Chunk(id, 2),
            RecipeOp::Sent(u32::MAX),
            RecipeOp::Sent(1),
        ];
        assert_eq!(recipe, expected);
    }

    #[test]
    fn delta_refuses_out_of_range_copies() {
        let base = refs(&[1, 2]);
        assert!(apply(Some(&base), &[RecipeOp::Copy(1, 2)]).is_err());
        assert!(apply(Some(&base), &[RecipeOp::Copy(u32::MAX, 2)]).is_err());
        assert!(apply(None, &[RecipeOp::Copy(0, 1)]).is_err());
    }

    #[test]
    fn recipe_ops_have_a_compact_json_form() {
        let ops = vec![
            RecipeOp::Copy(3, 4),
            RecipeOp::Chunk(Hash([0xab; 32]), 7),
            RecipeOp::Sent(9),
            RecipeOp::Cut(12),
        ];
        let json = serde_json::to_string(&ops).unwrap();
        assert_eq!(json, format!("[[3,4],[\"{}\",7],9,[12]]", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<Vec<RecipeOp>>(&json).unwrap(), ops);
    }

    #[test]
    fn recipe_ops_reject_every_other_shape() {
        for bad in
            ["-1", "1.5", "4294967296", "[]", "[-1]", "[1,2,3]", r#"["zz",1]"#, r#"[1,"a"]"#, "{}", "null"]
        {
            assert!(serde_json::from_str::<RecipeOp>(bad).is_err(), "{bad} accepted");
        }
        let id_alone = format!("[\"{}\"]", "ab".repeat(32));
        assert!(serde_json::from_str::<RecipeOp>(&id_alone).is_err(), "a chunk id without a length");
    }

    #[test]
    fn version_depends_on_every_field() {
        let data = vec![7u8; 50_000];
        let m = Manifest::build(AssetPath::new("a.js").unwrap(), &data, ChunkParams::default()).unwrap();
        m.validate().unwrap();
        let mut other = m.clone();
        other.path = AssetPath::new("b.js").unwrap();
        assert_ne!(m.version(), other.version());
        let mut other = m.clone();
        other.chunks[0].len -= 1;
        assert_ne!(m.version(), other.version());
        assert!(other.validate().is_err());
        assert_eq!(Manifest::decode_canonical(&m.canonical_bytes()).unwrap(), m);
        let bytes = m.canonical_bytes();
        for cut in [0, 10, bytes.len() - 1] {
            assert!(Manifest::decode_canonical(&bytes[..cut]).is_err());
        }
    }
}
