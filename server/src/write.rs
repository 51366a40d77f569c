//! Writing an uploaded file into the root (or deleting one): only where no symlink, folder or
//! special file is in the way, and atomically (a temporary file in the same folder, fsync'd, renamed over the old
//! one, and the folder fsync'd), so that a reader or a crash sees the old file or the new one,
//! never a mix, and a failed write leaves no temporary file behind.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Where the file at `rest` (a valid asset path) is written under `root`, or why it may not
/// be: each existing component of the path is checked without following links, so an upload
/// never writes through a symlink (even one that stays inside the root), onto a folder, or
/// onto a device or a socket.
pub(crate) fn writable_path(root: &Path, rest: &str) -> Result<PathBuf, String> {
    if rest.is_empty() {
        return Err("it names a module, not a file in it".into());
    }
    let components: Vec<&str> = rest.split('/').collect();
    let mut path = root.to_path_buf();
    for (i, component) in components.iter().enumerate() {
        path.push(component);
        let named = components[..=i].join("/");
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // The rest of the path is created.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                path.extend(&components[i + 1..]);
                break;
            }
            Err(e) => return Err(format!("cannot look at {named:?}: {e}")),
        };
        let last = i + 1 == components.len();
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(format!("{named:?} is a symlink, and uploads never write through one"));
        }
        if !last && !kind.is_dir() {
            return Err(format!("{named:?} is a file, not a folder"));
        }
        if last && kind.is_dir() {
            return Err("it is a folder on the server".into());
        }
        if last && !kind.is_file() {
            return Err("it is not a regular file on the server".into());
        }
    }
    Ok(path)
}

/// Replaces the file at `path` (or creates it, with its folders) with `data`, atomically and
/// durably. A new file gets mode 0644; a replaced one keeps its mode.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("an asset lies inside the root");
    std::fs::create_dir_all(dir)?;
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    // Named as editors' temporary files are, so that the watcher and folder listings skip it.
    let mut file = tempfile::Builder::new().prefix(".assetsync-upload-").suffix(".tmp").tempfile_in(dir)?;
    file.write_all(data)?;
    #[cfg(unix)]
    let permissions = permissions.or_else(|| Some(std::os::unix::fs::PermissionsExt::from_mode(0o644)));
    if let Some(permissions) = permissions {
        file.as_file().set_permissions(permissions)?;
    }
    file.as_file().sync_all()?;
    // On failure the temporary file is deleted when dropped.
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Deletes the file at `path` durably (the folder fsync'd after), leaving its folders.
pub(crate) fn remove_durably(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    std::fs::File::open(path.parent().expect("an asset lies inside the root"))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_folders_and_files_in_the_way() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir_all(root.join("dir/sub")).unwrap();
        std::fs::write(root.join("dir/file.js"), b"x").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("dir"), root.join("link")).unwrap();
            std::os::unix::fs::symlink(root.join("dir/file.js"), root.join("dir/alias.js")).unwrap();
        }
        let path = |p: &str| writable_path(root, p);
        assert_eq!(path("dir/file.js").unwrap(), root.join("dir/file.js"));
        assert_eq!(path("new/deep/file.js").unwrap(), root.join("new/deep/file.js"));
        assert!(path("dir/sub").unwrap_err().contains("folder"));
        assert!(path("dir/file.js/x").unwrap_err().contains("not a folder"));
        #[cfg(unix)]
        {
            assert!(path("link/file.js").unwrap_err().contains("symlink"));
            assert!(path("dir/alias.js").unwrap_err().contains("symlink"));
        }
    }

    #[test]
    fn writes_whole_files_and_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b.bin");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let left: Vec<_> = std::fs::read_dir(root.path().join("a")).unwrap().collect();
        assert_eq!(left.len(), 1, "only the file itself");
    }
}
