//! One `start` at a time per VM: `start` takes an exclusive flock on
//! `<state>/run/<name>.lock` before it validates the host, and hands the lock to the
//! supervisor it launches, which holds it until it exits. Two `start`s at once could
//! otherwise delete each other's run files and both launch a VMM for one data disk.

use rustix::fs::{flock, FlockOperation};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the lock could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    #[error("cannot open the start lock {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM {name} is being started or is running: another `sovereign start` or its supervisor holds {path}{holder} (see `sovereign status`, or `sovereign stop` first)")]
    Held {
        name: String,
        path: PathBuf,
        holder: String,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: rustix::io::Errno,
    },
}

/// The lock file of the VM whose run directory is `run_dir` (beside it, so removing a
/// stale run directory never removes the lock).
pub fn lock_path(run_dir: &Path) -> PathBuf {
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    run_dir.with_file_name(format!("{name}.lock"))
}

/// The held lock: an open file with an exclusive flock. Closing it releases the lock
/// only when no other process (the supervisor) shares the open file.
#[derive(Debug)]
pub struct StartLock {
    file: File,
}

impl StartLock {
    /// Takes the lock of `run_dir` without waiting; `name` is the VM's, for messages.
    /// The file records the holder's pid, so a refusal can name it.
    pub fn acquire(run_dir: &Path, name: &str) -> Result<StartLock, LockError> {
        let path = lock_path(run_dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
                Ok(StartLock { file })
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                Err(LockError::Held {
                    name: name.to_string(),
                    path,
                    holder,
                })
            }
            Err(source) => Err(LockError::Lock { path, source }),
        }
    }

    /// The descriptor to hand to the supervisor (it must survive exec there).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Closes this process's descriptor without unlocking: the supervisor, which
    /// shares the open file, keeps the lock held.
    pub fn hand_over(self) {
        drop(self.file);
    }
}

/// Takes ownership of the lock descriptor `start` passed (`--lock-fd`), so that it is
/// held for as long as this process lives and not inherited by its children.
pub fn adopt(fd: RawFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: `start` opened this descriptor for the supervisor and passed its number
    // on the command line; nothing else in this process knows or closes it, so owning
    // it here is sound.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(std::io::Error::from)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_start_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/sql");
        assert_eq!(lock_path(&run), dir.path().join("run/sql.lock"));
        let first = StartLock::acquire(&run, "sql").unwrap();
        let e = StartLock::acquire(&run, "sql").unwrap_err().to_string();
        assert!(e.contains("VM sql is being started or is running"), "{e}");
        assert!(e.contains(&format!("(pid {})", std::process::id())), "{e}");
        drop(first);
        StartLock::acquire(&run, "sql").unwrap();
    }
}
