//! Giving a pulled folder under `--out` its server's shape (see [`assetsync_protocol::shape`]):
//! reading the copy's folders, links and modes without following links, and doing what
//! [`shape_changes`] decides.

use std::io;
use std::path::{Path, PathBuf};

use assetsync_protocol::AssetPath;
use assetsync_protocol::shape::{Link, Shape, ShapeChanges, shape_changes};

use crate::Error;

/// A copy of a folder under `--out`, as read before its sync.
pub(crate) struct Copy {
    /// Its folders and links (its executable files are found by [`crate::cache::OutCheck`]).
    pub shape: Shape,
    /// Its regular files.
    pub files: Vec<AssetPath>,
}

/// Makes the copy of a folder under `out`, which was `copy` (read before its sync, which may
/// since have written and removed files), take the `server`'s shape; `files` are the folder's
/// files as committed. Blocking.
pub(crate) fn apply(
    out: &Path,
    copy: &Copy,
    server: &Shape,
    files: &[AssetPath],
    delete: bool,
) -> Result<(), Error> {
    make(out, &shape_changes(&copy.shape, &copy.files, server, files, delete))
}

/// The folders, links and regular files of the copy of `folder` under `out` (none if it is not
/// there): the directory entries alone, nothing is opened or stat'ed but a link. Blocking.
pub(crate) fn read(out: &Path, folder: &str) -> Result<Copy, Error> {
    read_entries(out, folder)
        .map_err(|e| Error::Local(format!("cannot read {}: {e}", out.join(folder).display())))
}

fn read_entries(out: &Path, folder: &str) -> io::Result<Copy> {
    let (mut shape, mut files) = (Shape::default(), Vec::new());
    let mut stack = vec![(out.join(folder), folder.to_owned())];
    while let Some((dir, name)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let child = if name.is_empty() { file_name } else { format!("{name}/{file_name}") };
            let Ok(asset) = AssetPath::new(&child) else { continue };
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                shape.links.push(Link { asset, target: target.to_string_lossy().into_owned() });
            } else if kind.is_dir() {
                shape.dirs.push(asset);
                stack.push((entry.path(), child));
            } else if kind.is_file() {
                files.push(asset);
            }
        }
    }
    shape.dirs.sort();
    Ok(Copy { shape, files })
}

/// Does `changes` under `out`.
fn make(out: &Path, changes: &ShapeChanges) -> Result<(), Error> {
    let at = |asset: &AssetPath| -> PathBuf { out.join(asset.as_str()) };
    let failed = |what: &str, path: &Path, e: io::Error| {
        Error::Local(format!("cannot {what} {}: {e}", path.display()))
    };
    for dir in &changes.mkdir {
        let path = at(dir);
        // A file or a link where the server has a folder: the folder wins.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&path).map_err(|e| failed("replace", &path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| failed("create", &path, e))?;
    }
    for link in &changes.link {
        let path = at(&link.asset);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_empty_tree(&path).map_err(|e| {
                failed("replace with a link the folder (it holds files the server does not list)", &path, e)
            })?,
            Ok(_) => std::fs::remove_file(&path).map_err(|e| failed("replace", &path, e))?,
            Err(_) => {}
        }
        symlink(&link.target, &path).map_err(|e| failed("create the link", &path, e))?;
    }
    for (file, exec) in &changes.chmod {
        let path = at(file);
        set_executable(&path, *exec).map_err(|e| failed("change the mode of", &path, e))?;
    }
    for file in &changes.remove {
        let path = at(file);
        match std::fs::remove_file(&path) {
            // Removed by the sync meanwhile.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed("remove", &path, e)),
            _ => {}
        }
    }
    for link in &changes.unlink {
        let path = at(link);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) {
            std::fs::remove_file(&path).map_err(|e| failed("remove the link", &path, e))?;
        }
    }
    for dir in &changes.rmdir {
        // Only empty folders go: files the server does not list were kept (--no-delete) or
        // were never pulled.
        let _ = std::fs::remove_dir(at(dir));
    }
    Ok(())
}

/// Removes `dir` if it holds folders only, however deep.
fn remove_empty_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_empty_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(unix)]
fn symlink(target: &str, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

#[cfg(not(unix))]
fn symlink(_: &str, _: &Path) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "symlinks are mirrored on Unix only"))
}

/// Sets (`u+x` and, where reading is allowed, `g+x`/`o+x`) or clears every executable bit.
#[cfg(unix)]
fn set_executable(path: &Path, exec: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)?.permissions().mode();
    let mode = if exec { mode | ((mode & 0o444) >> 2) | 0o100 } else { mode & !0o111 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_executable(_: &Path, _: bool) -> io::Result<()> {
    Ok(())
}
