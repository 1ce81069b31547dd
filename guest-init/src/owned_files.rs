//! Files and directories that root (PID 1) prepares for an unprivileged service, in
//! places that service can write. Every operation works on a file descriptor opened
//! without following symlinks, and files are written under a fresh name and renamed
//! into place, so a service that plants a symlink or swaps a file mid-way can never make
//! root chown, chmod, write or append to anything outside its own directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// An owned-file operation that failed, with the path and what was attempted.
#[derive(Debug, Error)]
#[error("{op} {path}: {source}")]
pub struct OwnedFileError {
    /// What was attempted.
    pub op: &'static str,
    /// The path.
    pub path: PathBuf,
    /// Why it failed (`ELOOP` for a symlink where a file or directory was expected).
    pub source: std::io::Error,
}

fn fail(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OwnedFileError {
    let path = path.to_path_buf();
    move |source| OwnedFileError { op, path, source }
}

/// Who will own a file: the service's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Creates `dir` (parents as root) and gives it to `owner` with `mode`. A symlink at
/// `dir` is refused (ENOTDIR), never followed.
pub fn prepare_dir(dir: &Path, mode: u32, owner: Owner) -> Result<(), OwnedFileError> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(fail("creating", parent))?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail("creating", dir)(e)),
    }
    let fd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(fail("opening (no symlinks)", dir))?;
    std::os::unix::fs::fchown(&fd, Some(owner.uid), Some(owner.gid)).map_err(fail("chown", dir))?;
    fd.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail("chmod", dir))
}

/// Writes `content` to `path` with `mode`, owned by `owner`: a new file under a
/// temporary name (created exclusively, never through a symlink), chowned through its
/// descriptor, synced, then renamed over whatever `path` was.
pub fn write_file(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Owner,
) -> Result<(), OwnedFileError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.sovereign-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(fail("creating", &tmp))?;
        f.write_all(content).map_err(fail("writing", &tmp))?;
        std::os::unix::fs::fchown(&f, Some(owner.uid), Some(owner.gid))
            .map_err(fail("chown", &tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(fail("chmod", &tmp))?;
        f.sync_all().map_err(fail("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(fail("renaming into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens `path` for appending (a service's output log), 0600 and owned by `owner`
/// (through the descriptor). A symlink, anything but a regular file, or a file with
/// other hard links is refused.
pub fn open_log(path: &Path, owner: Owner) -> Result<File, OwnedFileError> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(fail("opening (no symlinks)", path))?;
    let meta = f.metadata().map_err(fail("stat", path))?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(fail("opening", path)(std::io::Error::other(
            "not a plain file with a single link",
        )));
    }
    std::os::unix::fs::fchown(&f, Some(owner.uid), Some(owner.gid)).map_err(fail("chown", path))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    /// The account files are given to in these tests: `nobody` when we are root (so a
    /// chown through a symlink would show on the outside file), else ourselves.
    fn service() -> Owner {
        if nix::unistd::geteuid().is_root() {
            Owner {
                uid: 65534,
                gid: 65534,
            }
        } else {
            me()
        }
    }

    #[test]
    fn a_symlinked_directory_is_refused_not_chowned() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        let planted = t.path().join("run-postgresql");
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        let e = prepare_dir(&planted, 0o2775, service()).unwrap_err();
        // O_DIRECTORY | O_NOFOLLOW on a symlink: ENOTDIR (ELOOP on some kernels).
        assert!(
            matches!(e.source.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)),
            "{e}"
        );
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((after.uid(), after.mode()), (before.uid(), before.mode()));
        // A real directory is created and given away.
        let real = t.path().join("a/b/real");
        prepare_dir(&real, 0o700, service()).unwrap();
        let m = std::fs::metadata(&real).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (service().uid, 0o700));
    }

    #[test]
    fn writing_replaces_a_planted_symlink_and_leaves_its_target_alone() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("shadow");
        std::fs::write(&outside, "root's secret\n").unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        let conf = t.path().join("postgresql.conf");
        std::os::unix::fs::symlink(&outside, &conf).unwrap();
        write_file(&conf, b"port = 5432\n", 0o600, service()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            "root's secret\n"
        );
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((after.uid(), after.mode()), (before.uid(), before.mode()));
        let m = std::fs::symlink_metadata(&conf).unwrap();
        assert!(m.is_file(), "the symlink itself was replaced");
        assert_eq!((m.uid(), m.mode() & 0o777), (service().uid, 0o600));
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "port = 5432\n");
        let leftovers: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("sovereign-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_log_is_never_opened_through_a_symlink_or_a_hard_link() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("shadow");
        std::fs::write(&outside, "root's secret\n").unwrap();
        let log = t.path().join("startup.log");
        std::os::unix::fs::symlink(&outside, &log).unwrap();
        let e = open_log(&log, service()).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::ELOOP), "{e}");
        std::fs::remove_file(&log).unwrap();
        std::fs::hard_link(&outside, &log).unwrap();
        assert!(
            open_log(&log, service()).is_err(),
            "a second link to another file"
        );
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            "root's secret\n"
        );
        std::fs::remove_file(&log).unwrap();
        let mut f = open_log(&log, service()).unwrap();
        f.write_all(b"starting\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "starting\n");
        assert_eq!(std::fs::metadata(&log).unwrap().uid(), service().uid);
    }
}
