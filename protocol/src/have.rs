//! The client's digest of what it holds: version ids when the server knows them, otherwise a
//! compact set of truncated chunk ids.
//!
//! A truncated id can match a chunk the client does not hold (a prefix collision). The server
//! then leaves that chunk out, the client finds it missing when it rebuilds, and its retry drops
//! every held id sharing the colliding prefix (see [`crate::Error::retry_holding`]), so a
//! collision costs a round trip, never a wrong file.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use serde::{Deserialize, Serialize};

use crate::{ChunkId, VersionId};

/// The shortest prefix [`ChunkSet::new`] picks.
const MIN_PREFIX: usize = 4;

/// The client's digest, sent with every `sync`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Have {
    /// Version ids the client holds complete, the requested asset's own version first. The
    /// server diffs against the first one it knows and counts every known version's chunks as
    /// already held. When it does not know the first one it answers `unknown_base`, and the
    /// client asks again with `chunks` instead of its own version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionId>,
    /// Chunks the client holds, for a server that does not know its versions (or to repair a
    /// damaged cache).
    #[serde(default, skip_serializing_if = "ChunkSet::is_empty")]
    pub chunks: ChunkSet,
}

impl Have {
    /// Number of entries, for the server's digest limit.
    pub fn len(&self) -> usize {
        self.versions.len() + self.chunks.len()
    }

    /// True when the client holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A set of chunk ids, each cut to its first `prefix` bytes.
///
/// On the wire: `{"prefix": 6, "ids": "<base64 of the prefixes back to back>"}`, about 8 bytes
/// per chunk instead of 67 for a hex id in JSON. Protocol 1's list of full hex ids is still
/// accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AnyWireSet", into = "WireSet")]
pub struct ChunkSet {
    prefix: usize,
    ids: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSet {
    prefix: u8,
    ids: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnyWireSet {
    Compact(WireSet),
    /// Protocol 1.
    Full(Vec<ChunkId>),
}

impl TryFrom<AnyWireSet> for ChunkSet {
    type Error = String;

    fn try_from(w: AnyWireSet) -> Result<Self, String> {
        let w = match w {
            AnyWireSet::Compact(w) => w,
            AnyWireSet::Full(ids) => return Ok(ChunkSet::with_prefix(ids, 32)),
        };
        let prefix = usize::from(w.prefix);
        if !(1..=32).contains(&prefix) {
            return Err(format!("chunk id prefix of {prefix} bytes (need 1..=32)"));
        }
        let ids = BASE64.decode(w.ids).map_err(|e| format!("chunk ids are not base64: {e}"))?;
        if ids.len() % prefix != 0 {
            return Err(format!("{} bytes of chunk ids is not a multiple of the prefix", ids.len()));
        }
        Ok(ChunkSet { prefix, ids })
    }
}

impl From<ChunkSet> for WireSet {
    fn from(s: ChunkSet) -> Self {
        WireSet { prefix: s.prefix as u8, ids: BASE64.encode(&s.ids) }
    }
}

impl ChunkSet {
    /// A set of `ids`, cut to a prefix long enough that a server comparing the set with a
    /// manifest of similar size finds a false match with odds of about 1 in 2^24 per sync:
    /// `2 * log2(n) + 24` bits, at least 4 bytes.
    pub fn new(ids: impl IntoIterator<Item = ChunkId>) -> Self {
        let ids: Vec<ChunkId> = ids.into_iter().collect();
        let bits = 2 * (usize::BITS - ids.len().leading_zeros()) as usize + 24;
        Self::with_prefix(ids, bits.div_ceil(8).clamp(MIN_PREFIX, 32))
    }

    /// A set of `ids` cut to exactly `prefix` bytes (1 to 32). Short prefixes force collisions,
    /// which tests use to exercise the fallback.
    pub fn with_prefix(ids: impl IntoIterator<Item = ChunkId>, prefix: usize) -> Self {
        assert!((1..=32).contains(&prefix), "prefix must be 1..=32 bytes");
        let ids: Vec<ChunkId> = ids.into_iter().collect();
        let mut cut: Vec<&[u8]> = ids.iter().map(|id| &id.0[..prefix]).collect();
        // Sorted and deduplicated: the same holdings always give the same message.
        cut.sort_unstable();
        cut.dedup();
        ChunkSet { prefix, ids: cut.concat() }
    }

    /// Bytes kept of each id (32 for an empty set: nothing can collide).
    pub fn prefix(&self) -> usize {
        if self.ids.is_empty() { 32 } else { self.prefix }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ids.len().checked_div(self.prefix).unwrap_or(0)
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `candidates` whose prefix is in the set.
    pub fn matching<'a>(&self, candidates: impl IntoIterator<Item = &'a ChunkId>) -> Vec<ChunkId> {
        if self.is_empty() {
            return Vec::new();
        }
        let set: HashSet<&[u8]> = self.ids.chunks_exact(self.prefix).collect();
        candidates.into_iter().filter(|id| set.contains(&id.0[..self.prefix])).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hash;

    fn ids(n: usize) -> Vec<ChunkId> {
        (0..n).map(|i| Hash::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn prefix_grows_with_the_set_and_matches_members_only() {
        assert_eq!(ChunkSet::new(ids(10)).prefix(), 4);
        assert_eq!(ChunkSet::new(ids(1250)).prefix(), 6);
        assert_eq!(ChunkSet::new(ids(100_000)).prefix(), 8);
        let set = ChunkSet::new(ids(100));
        assert_eq!(set.len(), 100);
        let all = ids(200);
        assert_eq!(set.matching(&all), all[..100].to_vec());
    }

    #[test]
    fn wire_form_round_trips_and_rejects_garbage() {
        let set = ChunkSet::new(ids(3));
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.starts_with(r#"{"prefix":4,"ids":""#), "{json}");
        assert_eq!(serde_json::from_str::<ChunkSet>(&json).unwrap(), set);
        let full = format!(r#"["{}"]"#, ids(1)[0]);
        assert_eq!(serde_json::from_str::<ChunkSet>(&full).unwrap().matching(&ids(2)), ids(1));
        for bad in [
            r#"["00"]"#,
            r#"{"prefix":0,"ids":""}"#,
            r#"{"prefix":33,"ids":""}"#,
            r#"{"prefix":4,"ids":"AAAAAAA"}"#,
            r#"{"prefix":4,"ids":"!!!!"}"#,
            r#"{"prefix":4,"ids":"AAAAAA","x":1}"#,
        ] {
            assert!(serde_json::from_str::<ChunkSet>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_prefixes_collide() {
        let set = ChunkSet::with_prefix(ids(300), 1);
        assert!(set.len() <= 256);
        // 300 ids over 256 one-byte prefixes: other ids match too.
        assert!(set.matching(&ids(1000)).len() > 300);
    }
}
