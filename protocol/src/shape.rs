//! A folder's shape: what a native `pull` mirrors besides its files' bytes, as `rsync -a` does:
//! its folders (empty ones too), the symlinks whose target stays inside it (as symlinks, not
//! copies), and which files are executable. A `sync_folder` asks for the [`Shape`] of the
//! server's folder; [`shape_changes`] says what a client does to its copy to match it.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{AssetPath, Hash, VersionId};

/// A folder's shape; every list sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Every folder below the one asked for, empty ones too (not those reached through a link).
    #[serde(default)]
    pub dirs: Vec<AssetPath>,
    /// Symlinks below it whose target stays inside it, with their target relative to the
    /// link's folder (other symlinks are not part of the shape: a file they lead to is listed
    /// as a file, as today).
    #[serde(default)]
    pub links: Vec<Link>,
    /// Regular files with an executable bit set.
    #[serde(default)]
    pub exec: Vec<AssetPath>,
}

impl Shape {
    /// The SHA-256 of its JSON form: equal shapes, listed in the same order, have equal digests.
    pub fn digest(&self) -> VersionId {
        Hash::of(&serde_json::to_vec(self).expect("shapes serialise"))
    }
}

/// A symlink.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    /// Where it is.
    pub asset: AssetPath,
    /// What it points to, relative to its folder (`../lib/x.js`); never absolute.
    pub target: String,
}

impl Link {
    /// Whether `target`, read from the link at `asset`, stays inside the folder `folder`
    /// (`""`: the root): relative, and never climbing above it.
    pub fn stays_inside(asset: &AssetPath, target: &str, folder: &str) -> bool {
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return false;
        }
        let below = match folder {
            "" => asset.as_str(),
            folder => match asset.as_str().strip_prefix(folder).and_then(|r| r.strip_prefix('/')) {
                Some(rest) => rest,
                None => return false,
            },
        };
        // Folders between `folder` and the link's own.
        let mut depth = below.split('/').count() as i64 - 1;
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            if depth < 0 {
                return false;
            }
        }
        true
    }
}

/// What a client does to its copy of a folder to give it the server's shape, in this order:
/// create `mkdir`, replace whatever is at each of `link`'s paths with the link, set each of
/// `chmod`'s files executable or not, delete the files `remove` and the stale links `unlink`,
/// then the folders `rmdir` (deepest first; only empty ones are removed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShapeChanges {
    /// Folders to create, parents first.
    pub mkdir: Vec<AssetPath>,
    /// Symlinks to create, replacing a file, a link or an empty folder at their path.
    pub link: Vec<Link>,
    /// Files whose executable bit to set (`true`) or clear.
    pub chmod: Vec<(AssetPath, bool)>,
    /// Files of the copy that the server does not list (put there by someone else).
    pub remove: Vec<AssetPath>,
    /// Symlinks the server does not have.
    pub unlink: Vec<AssetPath>,
    /// Folders the server does not have, deepest first.
    pub rmdir: Vec<AssetPath>,
}

/// Compares the shape of a client's copy (`local`, read without following links, with its
/// regular files `local_files`) with the server's; `files` are the folder's files as listed by
/// the server, whose modes are compared. Without `delete` (`pull --no-delete`), nothing the
/// server lacks is removed.
pub fn shape_changes(
    local: &Shape,
    local_files: &[AssetPath],
    server: &Shape,
    files: &[AssetPath],
    delete: bool,
) -> ShapeChanges {
    let local_dirs: HashSet<&AssetPath> = local.dirs.iter().collect();
    let local_links: HashMap<&AssetPath, &str> =
        local.links.iter().map(|l| (&l.asset, l.target.as_str())).collect();
    let server_dirs: HashSet<&AssetPath> = server.dirs.iter().collect();
    let server_links: HashSet<&AssetPath> = server.links.iter().map(|l| &l.asset).collect();
    let (local_exec, server_exec): (HashSet<&AssetPath>, HashSet<&AssetPath>) =
        (local.exec.iter().collect(), server.exec.iter().collect());
    let mut changes = ShapeChanges {
        mkdir: server.dirs.iter().filter(|d| !local_dirs.contains(d)).cloned().collect(),
        link: server
            .links
            .iter()
            .filter(|l| local_links.get(&l.asset) != Some(&l.target.as_str()))
            .cloned()
            .collect(),
        chmod: files
            .iter()
            .filter(|f| !server_links.contains(f))
            .filter_map(|f| {
                let want = server_exec.contains(f);
                (want != local_exec.contains(f)).then(|| (f.clone(), want))
            })
            .collect(),
        ..ShapeChanges::default()
    };
    if delete {
        let listed: HashSet<&AssetPath> = files.iter().collect();
        changes.remove = local_files.iter().filter(|f| !listed.contains(f)).cloned().collect();
        // A link where the server now has a folder is replaced by `mkdir`.
        changes.unlink = local
            .links
            .iter()
            .map(|l| &l.asset)
            .filter(|a| !server_links.contains(a) && !server_dirs.contains(a))
            .cloned()
            .collect();
        changes.rmdir = local
            .dirs
            .iter()
            .filter(|d| !server_dirs.contains(d) && !server_links.contains(d))
            .rev()
            .cloned()
            .collect();
    }
    changes.mkdir.sort();
    changes.rmdir.sort_by(|a, b| b.cmp(a));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AssetPath {
        AssetPath::new(s).unwrap()
    }

    fn link(asset: &str, target: &str) -> Link {
        Link { asset: p(asset), target: target.into() }
    }

    #[test]
    fn links_that_would_climb_out_of_the_folder_do_not_stay_inside() {
        assert!(Link::stays_inside(&p("d/a/l"), "../b/x", "d"));
        assert!(Link::stays_inside(&p("d/l"), "b/x", "d"));
        assert!(!Link::stays_inside(&p("d/l"), "../x", "d"));
        assert!(!Link::stays_inside(&p("d/a/l"), "../../x", "d"));
        assert!(Link::stays_inside(&p("a/l"), "../x", ""));
        assert!(!Link::stays_inside(&p("l"), "../x", ""));
        assert!(!Link::stays_inside(&p("d/l"), "/etc/passwd", "d"));
        assert!(!Link::stays_inside(&p("e/l"), "x", "d"));
        assert!(
            !Link::stays_inside(&p("d/a/l"), "../../d/x", "d"),
            "leaving the folder even to come back is refused"
        );
    }

    #[test]
    fn a_copy_gets_the_servers_folders_links_and_modes() {
        let server = Shape {
            dirs: vec![p("d/empty"), p("d/lib"), p("d/lib/deep")],
            links: vec![link("d/latest.js", "lib/app.js"), link("d/same", "lib")],
            exec: vec![p("d/run.sh")],
        };
        let local = Shape {
            dirs: vec![p("d/lib"), p("d/old"), p("d/old/inner"), p("d/same")],
            links: vec![link("d/empty", "lib"), link("d/gone", "lib"), link("d/latest.js", "lib/old.js")],
            exec: vec![p("d/lib/app.js")],
        };
        let files = [p("d/lib/app.js"), p("d/run.sh"), p("d/latest.js")];
        let local_files = [p("d/lib/app.js"), p("d/mine.txt"), p("d/run.sh")];
        let changes = shape_changes(&local, &local_files, &server, &files, true);
        assert_eq!(changes.mkdir, vec![p("d/empty"), p("d/lib/deep")]);
        assert_eq!(changes.link, server.links);
        assert_eq!(changes.chmod, vec![(p("d/lib/app.js"), false), (p("d/run.sh"), true)]);
        assert_eq!(changes.unlink, vec![p("d/gone")]);
        assert_eq!(changes.remove, vec![p("d/mine.txt")]);
        // d/same becomes a link: replaced, not removed.
        assert_eq!(changes.rmdir, vec![p("d/old/inner"), p("d/old")]);
        let kept = shape_changes(&local, &local_files, &server, &files, false);
        assert!(kept.unlink.is_empty() && kept.rmdir.is_empty() && kept.remove.is_empty());
        assert_eq!(kept.mkdir, changes.mkdir);
        assert_eq!(shape_changes(&server, &files, &server, &files, true), ShapeChanges::default());
    }
}
