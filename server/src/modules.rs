//! Modules and users, as rsyncd has them (`serve --config FILE`): named folders, each read-only
//! or writable, with the users who may read and write it, a connection limit, a largest file
//! and a byte quota; users sign in with a secret from a secrets file that only the server's
//! user may read.
//!
//! ```toml
//! secrets = "secrets"            # "user:secret" lines; relative to this file
//!
//! [module.site]
//! path = "/srv/site"
//! read_only = false              # default true: nobody writes
//! read = ["*"]                   # default: anyone, signed in or not; "*": any signed-in user
//! write = ["alice"]              # who may write, when not read-only
//! max_connections = 100          # connections using the module at once
//! max_file_bytes = 52428800      # largest file an upload may write
//! quota_bytes = 1073741824       # most bytes the module's files may take, after an upload
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use assetsync_protocol::{AssetPath, ErrorCode, Hash};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::roots::Roots;

/// The modules served and their users.
#[derive(Debug)]
pub struct Modules {
    modules: Vec<Module>,
    /// Name and SHA-256 of the secret of each user in the secrets file.
    users: Vec<(String, Hash)>,
}

/// One module.
#[derive(Debug)]
pub struct Module {
    /// Its name, the first component of its assets' paths.
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
    /// Whether uploads are refused whoever sends them.
    pub read_only: bool,
    /// Who may read it (`None`: anyone, signed in or not).
    read: Option<Users>,
    /// Who may write it.
    write: Users,
    /// Connections that may use it at once.
    connections: Option<(usize, Arc<Semaphore>)>,
    /// The largest file an upload may write.
    pub max_file_bytes: Option<u64>,
    /// The most bytes its files may take, after an upload.
    pub quota_bytes: Option<u64>,
}

/// A list of users: indexes into [`Modules::users`], or any signed-in user (`"*"`).
#[derive(Debug)]
enum Users {
    Any,
    Listed(Vec<usize>),
}

/// What a request does with a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Sync, list or subscribe.
    Read,
    /// Upload (and ask for the manifest an upload is made against).
    Write,
}

/// Why a request is refused: the code and the one-line message sent to the client.
pub type Refusal = (ErrorCode, String);

impl Modules {
    /// Reads the config file at `path` and the secrets file it names.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --config {}", path.display()))?;
        let file: ConfigFile =
            toml::from_str(&text).with_context(|| format!("--config {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let users = match &file.secrets {
            Some(secrets) => read_secrets(&base.join(secrets))?,
            None => Vec::new(),
        };
        Self::new(file, base, users).with_context(|| format!("in --config {}", path.display()))
    }

    fn new(file: ConfigFile, base: &Path, users: Vec<(String, Hash)>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !file.module.is_empty(),
            "no modules: declare at least one, as [module.NAME] with a path"
        );
        let user = |name: &str, module: &str| -> anyhow::Result<usize> {
            users.iter().position(|(n, _)| n == name).with_context(|| {
                format!("module {module} names user {name:?}, who is not in the secrets file")
            })
        };
        let list = |names: &[String], module: &str| -> anyhow::Result<Users> {
            if names.iter().any(|n| n == "*") {
                return Ok(Users::Any);
            }
            Ok(Users::Listed(names.iter().map(|n| user(n, module)).collect::<anyhow::Result<_>>()?))
        };
        let mut modules = Vec::new();
        for (name, m) in file.module {
            anyhow::ensure!(
                !name.contains('/') && AssetPath::new(&name).is_ok(),
                "module name {name:?} is not a plain name: use letters, digits, '-', '_' or '.'"
            );
            let path = base.join(&m.path).canonicalize().with_context(|| {
                format!("module {name}: cannot open its path {}", base.join(&m.path).display())
            })?;
            anyhow::ensure!(path.is_dir(), "module {name}: {} is not a folder", path.display());
            let write = list(&m.write, &name)?;
            anyhow::ensure!(
                m.read_only || !matches!(&write, Users::Listed(l) if l.is_empty()),
                "module {name} is not read-only, but write names nobody who may write: list users in write"
            );
            let connections = m.max_connections.map(|n| (n, Arc::new(Semaphore::new(n))));
            modules.push(Module {
                read: m.read.as_deref().map(|r| list(r, &name)).transpose()?,
                write,
                name,
                path,
                read_only: m.read_only,
                connections,
                max_file_bytes: m.max_file_bytes,
                quota_bytes: m.quota_bytes,
            });
        }
        for (i, a) in modules.iter().enumerate() {
            for b in &modules[i + 1..] {
                anyhow::ensure!(
                    !a.path.starts_with(&b.path) && !b.path.starts_with(&a.path),
                    "modules {} and {} share a folder ({} and {}): give each its own",
                    a.name,
                    b.name,
                    a.path.display(),
                    b.path.display()
                );
            }
        }
        Ok(Modules { modules, users })
    }

    /// The modules' folders, for the index.
    pub fn roots(&self) -> Roots {
        Roots::Modules(self.modules.iter().map(|m| (m.name.clone(), m.path.clone())).collect())
    }

    /// The user who presented `token` (`USER:SECRET`), if the secret is theirs.
    pub fn sign_in(&self, token: &str) -> Option<usize> {
        let (name, secret) = token.split_once(':')?;
        let digest = Hash::of(secret.as_bytes());
        // Compared as SHA-256 digests, in constant time: neither the length nor a prefix leaks.
        let i = self.users.iter().position(|(n, _)| n == name)?;
        bool::from(digest.0.ct_eq(&self.users[i].1.0)).then_some(i)
    }

    /// The module `path` names (its first component), and its index, or why there is none.
    pub fn locate(&self, path: &str) -> Result<(usize, &Module), Refusal> {
        let name = path.split('/').next().unwrap_or_default();
        let names = || self.modules.iter().map(|m| format!("{}/", m.name)).collect::<Vec<_>>().join(", ");
        if name.is_empty() {
            let why = format!("name a module: paths on this server start with one ({})", names());
            return Err((ErrorCode::BadPath, why));
        }
        self.modules.iter().enumerate().find(|(_, m)| m.name == name).ok_or_else(|| {
            (ErrorCode::UnknownAsset, format!("no module named {name:?}: this server has {}", names()))
        })
    }

    /// Whether `user` (`None`: not signed in) may do `need` in `module`.
    pub fn allow(&self, module: &Module, user: Option<usize>, need: Need) -> Result<(), Refusal> {
        let may = |users: &Users| match (users, user) {
            (_, None) => false,
            (Users::Any, Some(_)) => true,
            (Users::Listed(list), Some(u)) => list.contains(&u),
        };
        let who = match user {
            Some(u) => format!("user {}", self.users[u].0),
            None => "a client that is not signed in (give USER:SECRET as the token)".to_owned(),
        };
        if let Some(read) = &module.read
            && !may(read)
        {
            return Err((ErrorCode::Forbidden, format!("module {} may not be read by {who}", module.name)));
        }
        if need == Need::Write {
            if module.read_only {
                return Err((ErrorCode::ReadOnly, format!("module {} is read-only", module.name)));
            }
            if !may(&module.write) {
                return Err((
                    ErrorCode::Forbidden,
                    format!("module {} may not be written by {who}", module.name),
                ));
            }
        }
        Ok(())
    }
}

impl Module {
    /// The module's connection limit and its semaphore, if it has one.
    pub fn connections(&self) -> Option<(usize, &Arc<Semaphore>)> {
        self.connections.as_ref().map(|(n, s)| (*n, s))
    }
}

/// The bytes the files under `dir` take, symlinks not followed. Blocking.
pub fn usage(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// The config file's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// The secrets file, relative to the config file.
    secrets: Option<PathBuf>,
    #[serde(default)]
    module: BTreeMap<String, ModuleFile>,
}

/// A module in the config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleFile {
    path: PathBuf,
    #[serde(default = "yes")]
    read_only: bool,
    read: Option<Vec<String>>,
    #[serde(default)]
    write: Vec<String>,
    max_connections: Option<usize>,
    max_file_bytes: Option<u64>,
    quota_bytes: Option<u64>,
}

fn yes() -> bool {
    true
}

/// The users in a secrets file: `user:secret` lines, `#` comments and blank lines skipped.
/// Refused if users other than the file's owner may read it (rsyncd's "strict modes").
fn read_secrets(path: &Path) -> anyhow::Result<Vec<(String, Hash)>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read secrets file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "secrets file {} may be read by other users (mode {mode:o}): chmod 600 it",
            path.display()
        );
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read secrets file {}", path.display()))?;
    let mut users: Vec<(String, Hash)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, secret) = line
            .split_once(':')
            .filter(|(name, secret)| !name.is_empty() && !secret.is_empty() && *name != "*")
            .with_context(|| {
                format!("secrets file {} line {}: expected USER:SECRET", path.display(), n + 1)
            })?;
        anyhow::ensure!(
            users.iter().all(|(n, _)| n != name),
            "secrets file {} names user {name:?} twice",
            path.display()
        );
        users.push((name.to_owned(), Hash::of(secret.as_bytes())));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(toml: &str, dir: &Path) -> anyhow::Result<Modules> {
        std::fs::create_dir_all(dir.join("site")).unwrap();
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        let users = vec![("alice".into(), Hash::of(b"a-secret")), ("bob".into(), Hash::of(b"b-secret"))];
        Modules::new(toml::from_str(toml)?, dir, users)
    }

    #[test]
    fn users_read_and_write_what_their_modules_allow() {
        let dir = tempfile::tempdir().unwrap();
        let m = modules(
            r#"
            [module.site]
            path = "site"
            read_only = false
            write = ["alice"]
            [module.docs]
            path = "docs"
            read = ["bob"]
            "#,
            dir.path(),
        )
        .unwrap();
        let (alice, bob) = (m.sign_in("alice:a-secret"), m.sign_in("bob:b-secret"));
        assert_eq!((alice, bob), (Some(0), Some(1)));
        assert_eq!(m.sign_in("alice:b-secret"), None);
        assert_eq!(m.sign_in("carol:a-secret"), None);
        assert_eq!(m.sign_in("alice"), None);
        let (_, site) = m.locate("site/js/app.js").unwrap();
        let (_, docs) = m.locate("docs").unwrap();
        assert!(m.allow(site, None, Need::Read).is_ok());
        assert!(m.allow(site, alice, Need::Write).is_ok());
        assert_eq!(m.allow(site, bob, Need::Write).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(m.allow(site, None, Need::Write).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(m.allow(docs, None, Need::Read).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(m.allow(docs, alice, Need::Read).unwrap_err().0, ErrorCode::Forbidden);
        assert!(m.allow(docs, bob, Need::Read).is_ok());
        assert_eq!(m.allow(docs, bob, Need::Write).unwrap_err().0, ErrorCode::ReadOnly);
        assert_eq!(m.locate("").unwrap_err().0, ErrorCode::BadPath);
        let (code, why) = m.locate("blog/x").unwrap_err();
        assert_eq!(code, ErrorCode::UnknownAsset);
        assert!(why.contains("docs/, site/"), "{why}");
    }

    #[test]
    fn mistakes_in_the_config_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = |toml: &str| format!("{:#}", modules(toml, dir.path()).unwrap_err());
        assert!(error("").contains("no modules"));
        assert!(error("[module.site]\npath = \"nowhere\"").contains("cannot open its path"));
        assert!(error("[module.site]\npath = \"site\"\nwrite = [\"carol\"]").contains("\"carol\""));
        assert!(error("[module.site]\npath = \"site\"\nread_only = false").contains("nobody"));
        assert!(error("[module.site]\npath = \"site\"\ncolour = 1").contains("colour"));
        assert!(error("[module.\"a/b\"]\npath = \"site\"").contains("plain name"));
        assert!(error("[module.a]\npath = \".\"\n[module.b]\npath = \"site\"").contains("share a folder"));
    }

    #[cfg(unix)]
    #[test]
    fn a_secrets_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        std::fs::write(&path, "# users\nalice:a-secret\n\nbob:b:c\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_secrets(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let users = read_secrets(&path).unwrap();
        assert_eq!(users, vec![("alice".into(), Hash::of(b"a-secret")), ("bob".into(), Hash::of(b"b:c"))]);
        std::fs::write(&path, "alice\n").unwrap();
        assert!(read_secrets(&path).unwrap_err().to_string().contains("line 1"));
    }
}
