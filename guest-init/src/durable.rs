//! Changes to the data disk that must survive a power cut: a rename or a removal is
//! durable only once its directory is synced, and a marker that says "this step is under
//! way" must reach the disk before the step starts. Every multi-step operation of the
//! guest (making, copying, rewinding or restoring a cluster) is built from these, so the
//! next boot finds either the old state, the new one, or a marker naming the step.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A durable change that failed, with the path and what was attempted.
#[derive(Debug, Error)]
#[error("{op} {path}: {source}")]
pub struct DurableError {
    /// What was attempted.
    pub op: &'static str,
    /// The path.
    pub path: PathBuf,
    /// Why it failed.
    pub source: std::io::Error,
}

fn fail(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DurableError {
    let path = path.to_path_buf();
    move |source| DurableError { op, path, source }
}

/// Syncs the directory `dir`, making the renames, creations and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("syncing directory", dir))
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
}

/// Renames `from` to `to` (same file system) and syncs the directories involved.
pub fn rename(from: &Path, to: &Path) -> Result<(), DurableError> {
    std::fs::rename(from, to).map_err(fail("renaming into place", to))?;
    sync_dir(parent(to))?;
    if parent(from) != parent(to) {
        sync_dir(parent(from))?;
    }
    Ok(())
}

/// Removes the directory tree at `path` if it exists, durably.
pub fn remove_tree(path: &Path) -> Result<(), DurableError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail("removing", path)(e)),
    }
}

/// Removes the file at `path` if it exists, durably.
pub fn remove_file(path: &Path) -> Result<(), DurableError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail("removing", path)(e)),
    }
}

/// Writes `content` to `path` (root's, 0600) under a temporary name, syncs it, renames it
/// into place and syncs the directory: after a power cut the file is either the old
/// one or the new one, whole.
pub fn write(path: &Path, content: &[u8]) -> Result<(), DurableError> {
    let tmp = path.with_extension("partial");
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(fail("creating", &tmp))?;
        f.write_all(content).map_err(fail("writing", &tmp))?;
        f.sync_all().map_err(fail("syncing", &tmp))?;
        rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A JSON marker on the data disk: written (durably) before a step starts, read by the
/// next boot when the step never finished, removed (durably) when it did.
#[derive(Debug, Clone)]
pub struct Marker {
    path: PathBuf,
}

impl Marker {
    /// The marker at `path`.
    pub const fn at(path: PathBuf) -> Marker {
        Marker { path }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `state`: the step is under way (or has moved on to this state).
    pub fn set<T: Serialize>(&self, state: &T) -> Result<(), DurableError> {
        let json = serde_json::to_vec(state)
            .map_err(|e| fail("encoding", &self.path)(std::io::Error::other(e)))?;
        write(&self.path, &json)
    }

    /// What an unfinished step left here: `Ok(None)` when there is no marker, an error
    /// when there is one that cannot be read (never guessed at).
    pub fn read<T: DeserializeOwned>(&self) -> Result<Option<T>, DurableError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| fail("reading the marker", &self.path)(std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail("reading the marker", &self.path)(e)),
        }
    }

    /// The step is done: the marker goes.
    pub fn clear(&self) -> Result<(), DurableError> {
        remove_file(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Step {
        phase: String,
    }

    #[test]
    fn a_marker_is_set_read_replaced_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let m = Marker::at(dir.path().join("step"));
        assert_eq!(m.read::<Step>().unwrap(), None);
        m.set(&Step {
            phase: "copying".into(),
        })
        .unwrap();
        m.set(&Step {
            phase: "copied".into(),
        })
        .unwrap();
        assert_eq!(
            m.read::<Step>().unwrap(),
            Some(Step {
                phase: "copied".into()
            })
        );
        assert!(!dir.path().join("step.partial").exists());
        m.clear().unwrap();
        m.clear().unwrap();
        assert_eq!(m.read::<Step>().unwrap(), None);
    }

    #[test]
    fn a_marker_that_cannot_be_read_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = Marker::at(dir.path().join("step"));
        std::fs::write(m.path(), "{half").unwrap();
        let e = m.read::<Step>().unwrap_err().to_string();
        assert!(
            e.contains("reading the marker") && e.contains("step"),
            "{e}"
        );
    }

    #[test]
    fn renames_and_removals_of_trees() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("sub/f"), "x").unwrap();
        let b = dir.path().join("b");
        rename(&a, &b).unwrap();
        assert!(b.join("sub/f").exists() && !a.exists());
        remove_tree(&b).unwrap();
        remove_tree(&b).unwrap();
        assert!(!b.exists());
    }
}
