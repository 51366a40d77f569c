//! Where asset paths lead on disk: one folder (`--root`), whose files are named by their path in
//! it, or named modules (`--config`), each with its own folder, whose files are named by the
//! module's name and their path in that folder (`site/js/app.js`).

use std::io;
use std::path::{Path, PathBuf};

/// The folders served.
#[derive(Clone, Debug)]
pub enum Roots {
    /// One folder, `--root`.
    One(PathBuf),
    /// Modules: name and folder, sorted by name; no folder inside another.
    Modules(Vec<(String, PathBuf)>),
}

impl Roots {
    /// Makes every folder canonical, checking that it is one.
    pub(crate) fn canonicalize(&mut self) -> anyhow::Result<()> {
        let open = |dir: &mut PathBuf| -> anyhow::Result<()> {
            *dir = dir
                .canonicalize()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot open root {}: {e}", dir.display())))?;
            if !dir.is_dir() {
                anyhow::bail!("root {} is not a directory", dir.display());
            }
            Ok(())
        };
        match self {
            Roots::One(dir) => open(dir),
            Roots::Modules(modules) => modules.iter_mut().try_for_each(|(_, dir)| open(dir)),
        }
    }

    /// Each folder with the prefix of its assets' names (`""`, or a module's name and `/`).
    pub fn dirs(&self) -> Vec<(String, &Path)> {
        match self {
            Roots::One(dir) => vec![(String::new(), dir.as_path())],
            Roots::Modules(modules) => {
                modules.iter().map(|(name, dir)| (format!("{name}/"), dir.as_path())).collect()
            }
        }
    }

    /// The folder that `path` (an asset or folder name) lies in, its module's prefix, and the
    /// rest of `path` inside that folder (`""` for a module itself); `None` for a module that
    /// does not exist, or for `""` when there are modules.
    pub fn locate<'a>(&'a self, path: &'a str) -> Option<Located<'a>> {
        match self {
            Roots::One(dir) => Some(Located { dir, prefix: "", rest: path }),
            Roots::Modules(modules) => {
                let (name, rest) = path.split_once('/').unwrap_or((path, ""));
                let (_, dir) = modules.iter().find(|(n, _)| n == name)?;
                Some(Located { dir, prefix: &path[..(name.len() + 1).min(path.len())], rest })
            }
        }
    }

    /// The asset name of the file or folder at `path` on disk (`None` outside every folder; a
    /// module's folder is named by the module's name, the root by `""`).
    pub fn name_of(&self, path: &Path) -> Option<String> {
        self.dirs().into_iter().find_map(|(prefix, dir)| {
            let rest = path.strip_prefix(dir).ok()?.to_str()?;
            Some(match (prefix.as_str(), rest) {
                (prefix, "") => prefix.trim_end_matches('/').to_owned(),
                (prefix, rest) => format!("{prefix}{rest}"),
            })
        })
    }

    /// Whether `path` lies in one of the folders.
    pub fn contain(&self, path: &Path) -> bool {
        self.dirs().iter().any(|(_, dir)| path.starts_with(dir))
    }
}

/// Where a name leads: see [`Roots::locate`].
#[derive(Clone, Copy, Debug)]
pub struct Located<'a> {
    /// The folder.
    pub dir: &'a Path,
    /// What names in this folder start with: `""`, or the module's name and `/` (without the
    /// `/` when the name was the module's alone).
    pub prefix: &'a str,
    /// The rest of the name, inside the folder.
    pub rest: &'a str,
}

impl Located<'_> {
    /// The path on disk, not resolved.
    pub fn path(&self) -> PathBuf {
        let mut path = self.dir.to_path_buf();
        path.extend(self.rest.split('/').filter(|c| !c.is_empty()));
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lead_into_their_module() {
        let roots = Roots::Modules(vec![("docs".into(), "/srv/d".into()), ("site".into(), "/srv/s".into())]);
        let l = roots.locate("site/js/app.js").unwrap();
        assert_eq!((l.dir, l.prefix, l.rest), (Path::new("/srv/s"), "site/", "js/app.js"));
        assert_eq!(l.path(), Path::new("/srv/s/js/app.js"));
        let l = roots.locate("docs").unwrap();
        assert_eq!((l.dir, l.prefix, l.rest), (Path::new("/srv/d"), "docs", ""));
        assert!(roots.locate("").is_none());
        assert!(roots.locate("other/x").is_none());
        assert!(roots.locate("sit/x").is_none());
        assert_eq!(roots.name_of(Path::new("/srv/s/js/app.js")).as_deref(), Some("site/js/app.js"));
        assert_eq!(roots.name_of(Path::new("/srv/d")).as_deref(), Some("docs"));
        assert_eq!(roots.name_of(Path::new("/srv/x")), None);

        let one = Roots::One("/srv/s".into());
        let l = one.locate("js/app.js").unwrap();
        assert_eq!((l.prefix, l.rest), ("", "js/app.js"));
        assert_eq!(one.name_of(Path::new("/srv/s/js/app.js")).as_deref(), Some("js/app.js"));
        assert_eq!(one.name_of(Path::new("/srv/s")).as_deref(), Some(""));
    }
}
