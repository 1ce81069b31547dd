//! Files root writes that hold the database (exports, dumps): mode 0600, created new
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`) in a directory nobody else can rearrange, never through
//! a symbolic link. A link planted where an export goes would otherwise make root
//! truncate whatever it points at, and a file made under umask 022 would hand every
//! table to every local user.

use nix::sys::stat::Mode;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a private file was not written.
#[derive(Debug, Error)]
pub enum PrivateFileError {
    #[error("{path} is a symbolic link: refusing to write through it")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    #[error("{path} exists and is not a regular file: refusing to replace it")]
    NotAFile {
        /// What is there.
        path: PathBuf,
    },
    #[error("{path} belongs to uid {uid}, not to this user: refusing to replace it")]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    #[error("{dir} can be changed by other users (mode {mode:o}, no sticky bit): refusing to write there")]
    OpenDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PrivateFileError + 'a {
    move |source| PrivateFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses `path` when a file there could not safely be replaced by a rename: a link,
/// something other than a regular file, or a file of another user. Nothing there is fine.
pub fn check_replaceable(path: &Path) -> Result<(), PrivateFileError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspect", path)(e)),
    };
    let path = path.to_path_buf();
    if meta.file_type().is_symlink() {
        return Err(PrivateFileError::Symlink { path });
    }
    if !meta.file_type().is_file() {
        return Err(PrivateFileError::NotAFile { path });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PrivateFileError::NotOurs {
            path,
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// Refuses a directory others can rearrange: writable by group or others without the
/// sticky bit (with it, as in /tmp, nobody can rename or remove another user's file).
pub fn check_directory(dir: &Path) -> Result<(), PrivateFileError> {
    let meta = std::fs::metadata(dir).map_err(io("inspect", dir))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(PrivateFileError::OpenDirectory {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `path` anew for writing, mode 0600, in a directory [`check_directory`]
/// accepts. A regular file of ours already there (what a cut run left) is removed
/// first; a link or anyone else's file is refused.
pub fn create_new(path: &Path) -> Result<File, PrivateFileError> {
    check_directory(parent_of(path))?;
    check_replaceable(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove the leftover", path)(e))
        }
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io("create", path))
}

/// Makes `dir` (0700) when it is missing; refuses one that is a link or that others can
/// change.
pub fn ensure_directory(dir: &Path) -> Result<(), PrivateFileError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(PrivateFileError::Symlink {
                path: dir.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            nix::unistd::mkdir(dir, Mode::from_bits_truncate(0o700))
                .map_err(|e| io("create the directory", dir)(e.into()))?;
        }
        Err(e) => return Err(io("inspect", dir)(e)),
    }
    check_directory(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_file_is_ours_alone_and_a_planted_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.tar");
        create_new(&file).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A leftover of ours is replaced.
        create_new(&file).unwrap();

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let link = dir.path().join("planted.partial");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = create_new(&link).unwrap_err().to_string();
        assert!(
            e.contains("planted.partial") && e.contains("symbolic link"),
            "{e}"
        );
        assert!(check_replaceable(&link).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn a_directory_others_can_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = create_new(&open.join("dump")).unwrap_err().to_string();
        assert!(e.contains("can be changed by other users"), "{e}");
        // Sticky, as /tmp: others cannot touch our files there.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        create_new(&open.join("dump")).unwrap();

        let made = dir.path().join("dumps");
        ensure_directory(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
