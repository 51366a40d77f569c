//! Builds: a folder's files as one sync committed them, kept so that a service worker can go on
//! serving that build to the pages loaded on it while later syncs commit newer files.
//!
//! ```text
//! builds   "<folder>\0<build id hex>" -> Uint8Array  (the build's entries, as a pointer shard)
//! serving  "<folder>"                 -> Uint8Array  (which build is ready, and which build
//!                                                     each open page was loaded on)
//! ```
//!
//! A build's id is its folder version ([`folder_version`]): the same listing is the same build.
//! Its files are live as long as the build is kept: a commit does not delete them when it
//! replaces their assets' pointers, and [`Store::gc`](super::Store::gc) counts them as reached.
//! Builds are dropped by whoever kept them ([`Store::drop_builds`]).

use std::collections::HashSet;

use assetsync_protocol::VersionId;
use idb::Transaction;

use super::index::{self, Place};
use super::records::bytes_of;
use super::{BUILDS, Result};

/// Keeping and serving builds, which only the service worker does (the `worker` feature); every
/// client sharing the database respects the builds kept ([`held`]).
#[cfg(feature = "worker")]
mod kept;
#[cfg(feature = "worker")]
pub use kept::{Build, Serving};

/// The files every kept build points at: versions stored on their own, and packs.
pub(super) async fn held(tx: &Transaction) -> Result<(HashSet<VersionId>, HashSet<u64>)> {
    let (mut own, mut packs) = (HashSet::new(), HashSet::new());
    for value in tx.object_store(BUILDS)?.get_all(None, None)?.await? {
        for entry in index::decode(&bytes_of(&value)).into_values() {
            match entry.place {
                Place::Own => own.insert(entry.version),
                Place::Packed { pack, .. } => packs.insert(pack),
            };
        }
    }
    Ok((own, packs))
}
