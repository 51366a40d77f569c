//! Asset names: relative, normalised, and unable to name anything outside the served root.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A validated asset path such as `js/app.js`.
///
/// It is relative, uses `/` as separator, and has no empty, `.` or `..` components, no
/// backslashes, drive letters, control characters or NUL bytes. Holding one proves that joining it
/// to a root stays lexically inside that root; symlinks are the server's business.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AssetPath(String);

impl AssetPath {
    /// Longest accepted asset name, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Validates `s`.
    pub fn new(s: &str) -> Result<Self, Error> {
        let bad = |why: &'static str| Err(Error::BadPath { path: truncate(s), why });
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.len() > Self::MAX_LEN {
            return bad("it is longer than 1024 bytes");
        }
        if s.chars().any(|c| c.is_control()) {
            return bad("it contains a control character or NUL byte");
        }
        if s.contains('\\') {
            return bad("it contains a backslash");
        }
        if s.starts_with('/') {
            return bad("it is absolute");
        }
        if s.as_bytes().get(1) == Some(&b':') {
            return bad("it starts with a drive letter");
        }
        for part in s.split('/') {
            match part {
                "" => return bad("it has an empty component"),
                "." | ".." => return bad("it has a '.' or '..' component"),
                _ => {}
            }
        }
        Ok(AssetPath(s.to_owned()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's components, for joining onto a root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// What a subscription covers: every asset (`""`), a folder and everything below it (`"dist/"`),
/// or one asset (`"dist/app.js"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every asset under the root.
    All,
    /// The assets below a folder.
    Folder(AssetPath),
    /// One asset.
    Asset(AssetPath),
}

impl Scope {
    /// Parses the wire form; a folder ends with `/`.
    pub fn new(s: &str) -> Result<Self, Error> {
        Ok(match s.strip_suffix('/') {
            _ if s.is_empty() => Scope::All,
            Some(folder) => Scope::Folder(AssetPath::new(folder)?),
            None => Scope::Asset(AssetPath::new(s)?),
        })
    }

    /// The path it names, without a folder's `/` (`""` for everything).
    pub fn path(&self) -> &str {
        match self {
            Scope::All => "",
            Scope::Folder(path) | Scope::Asset(path) => path.as_str(),
        }
    }

    /// Whether `asset` is inside the scope.
    pub fn covers(&self, asset: &AssetPath) -> bool {
        match self {
            Scope::All => true,
            Scope::Folder(folder) => {
                asset.as_str().strip_prefix(folder.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
            Scope::Asset(one) => one == asset,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => Ok(()),
            Scope::Folder(folder) => write!(f, "{}/", folder.as_str()),
            Scope::Asset(asset) => f.write_str(asset.as_str()),
        }
    }
}

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    out = out.escape_debug().to_string();
    out
}

impl fmt::Debug for AssetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for AssetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AssetPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        AssetPath::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_what_they_name() {
        let a = |s| AssetPath::new(s).unwrap();
        assert!(Scope::new("").unwrap().covers(&a("x/y.js")));
        let dist = Scope::new("dist/").unwrap();
        assert!(dist.covers(&a("dist/app.js")) && dist.covers(&a("dist/js/app.js")));
        assert!(!dist.covers(&a("dist")) && !dist.covers(&a("distant/app.js")));
        let one = Scope::new("dist/app.js").unwrap();
        assert!(one.covers(&a("dist/app.js")) && !one.covers(&a("dist/app.json")));
        assert_eq!(dist.to_string(), "dist/");
        for bad in ["/", "../", "a//", "/abs"] {
            assert!(Scope::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_ordinary_paths() {
        for p in ["app.js", "js/app.js", "a/b/c.d.e", "..hidden", "dist/x..y"] {
            assert_eq!(AssetPath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn refuses_every_escape_form() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "..",
            ".",
            "C:/x",
            "c:x",
            "a\\..\\b",
            "\\\\server\\share",
            "a\0b",
            "a\nb",
        ] {
            assert!(AssetPath::new(p).is_err(), "{p:?} accepted");
        }
        assert!(AssetPath::new(&"a".repeat(2000)).is_err());
    }
}
