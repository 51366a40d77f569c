//! Whether a request may touch the path it names: with `--root`, anyone reads and the holder of
//! the write secret writes; with modules, the module's read and write users decide, and a
//! connection counts against a module's connection limit from its first request there until it
//! closes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use assetsync_protocol::ErrorCode;
use tokio::sync::OwnedSemaphorePermit;

use crate::modules::{Module, Need, Refusal};
use crate::server::AppState;

/// Who the client signed in as in `hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Signed {
    /// Nobody: no token, or (with `--root`) the read token only.
    Nobody,
    /// With `--root`: the holder of the write secret.
    Writer,
    /// With modules: a user of the secrets file.
    User(usize),
}

/// The modules a connection has used, each holding its place under the module's limit.
#[derive(Default)]
pub(super) struct Visits(HashMap<usize, Option<OwnedSemaphorePermit>>);

/// Checks that the client signed in as `signed` may do `need` with `path` (an asset, folder or
/// subscription path); the module it lies in, if the server has modules.
pub(super) fn admit<'s>(
    state: &'s AppState,
    signed: Signed,
    visits: &mut Visits,
    path: &str,
    need: Need,
) -> Result<Option<&'s Module>, Refusal> {
    let Some(modules) = &state.modules else {
        if need == Need::Write {
            if state.write_token.is_none() {
                let why = "this server does not accept uploads: start it with serve --allow-write --token-file FILE";
                return Err((ErrorCode::ReadOnly, why.into()));
            }
            if signed != Signed::Writer {
                let why = "uploads need the server's write secret: give it with push --token-file FILE, or SyncClient.connect(url, { token })";
                return Err((ErrorCode::Unauthorized, why.into()));
            }
        }
        return Ok(None);
    };
    let (i, module) = modules.locate(path)?;
    let user = match signed {
        Signed::User(u) => Some(u),
        Signed::Nobody | Signed::Writer => None,
    };
    modules.allow(module, user, need)?;
    if let Entry::Vacant(visit) = visits.0.entry(i) {
        let permit = match module.connections() {
            Some((max, semaphore)) => Some(semaphore.clone().try_acquire_owned().map_err(|_| {
                let why =
                    format!("module {} has its maximum of {max} connections: try again later", module.name);
                (ErrorCode::Busy, why)
            })?),
            None => None,
        };
        visit.insert(permit);
    }
    Ok(Some(module))
}
