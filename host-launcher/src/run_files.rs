//! The files that carry a start from `start` to its supervisor and on to later
//! commands, each read and written as its type: the resolved spec, the launch plan
//! preflight checked, this start's one-boot request, and the report of a failed boot.
//! [`RunDir`] names them; this module is the only one that reads or writes them.

use crate::ipc::FailureReport;
use crate::rundir::RunDir;
use crate::spec::Spec;
use crate::vmm::LaunchPlan;
use protocol::config::BootRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a run file could not be read or written.
#[derive(Debug, Error)]
pub enum RunFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{path} is not what this sovereign writes there: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What did not parse.
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One JSON file of a run directory holding a `T`. Written whole (a temporary file,
/// synced, renamed over it, mode 0600: a reader never sees half of one) and read back
/// as the same type.
#[derive(Debug)]
pub struct RunFile<T> {
    path: PathBuf,
    kind: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> RunFile<T> {
    fn at(path: PathBuf) -> RunFile<T> {
        RunFile {
            path,
            kind: PhantomData,
        }
    }

    /// Where it is, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its value, or `None` when there is no such file.
    pub fn read(&self) -> Result<Option<T>, RunFileError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RunFileError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RunFileError::Parse {
                path: self.path.clone(),
                source,
            })
    }

    /// Its value; a missing file is an error naming it.
    pub fn read_present(&self) -> Result<T, RunFileError> {
        self.read()?.ok_or_else(|| RunFileError::Read {
            path: self.path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// Replaces it with `value`.
    pub fn write(&self, value: &T) -> Result<(), RunFileError> {
        let write_err = |source| RunFileError::Write {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(value).map_err(|e| write_err(e.into()))?;
        crate::secrets::write_private(&self.path, &json).map_err(write_err)
    }

    /// Removes it; no file is fine.
    pub fn remove(&self) -> Result<(), RunFileError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RunFileError::Write {
                path: self.path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Reads it and removes it before the value is used: what it says happens once.
    pub fn take(&self) -> Result<Option<T>, RunFileError> {
        let value = self.read()?;
        if value.is_some() {
            self.remove()?;
        }
        Ok(value)
    }

    /// Writes `value`, or removes a stale file when there is none.
    pub fn put(&self, value: Option<&T>) -> Result<(), RunFileError> {
        match value {
            Some(v) => self.write(v),
            None => self.remove(),
        }
    }
}

/// The resolved spec the supervisor runs (also read by `status`, `stop` and the CID
/// check of other starts).
pub fn spec(run: &RunDir) -> RunFile<Spec> {
    RunFile::at(run.spec_json())
}

/// The processes `start` rendered and preflight checked: the supervisor launches these
/// and renders nothing itself.
pub fn launch_plan(run: &RunDir) -> RunFile<LaunchPlan> {
    RunFile::at(run.root().join("launch.json"))
}

/// This start's one-boot request (`rejoin`, `restore --new-disk`): written by `start`,
/// taken by the supervisor before it launches anything, so no later boot of that
/// supervisor (a restart after a crash) and no later start sees it.
pub fn boot_request(run: &RunDir) -> RunFile<BootRequest> {
    RunFile::at(run.root().join("boot-request.json"))
}

/// This boot's control session token (see `supervisor::guest`), so a `stop` without a
/// supervisor admits only PID 1's reconnect too.
pub fn session(run: &RunDir) -> RunFile<String> {
    RunFile::at(run.root().join("session.token"))
}

/// The final report of a boot that did not come up, for a client that connects too
/// late to get it as an event.
pub fn failure(run: &RunDir) -> RunFile<FailureReport> {
    RunFile::at(run.root().join("failure.json"))
}

/// An update or rollback under way (see `update::journal`): what the next `start` or
/// `update` finishes or undoes after a power cut.
pub fn update_journal(run: &RunDir) -> RunFile<crate::update::journal::Journal> {
    RunFile::at(run.root().join("update-journal.json"))
}

/// The image sets `update` installed: the current one and the one kept for rollback.
pub fn image_sets(run: &RunDir) -> RunFile<protocol::release::ImageSets> {
    RunFile::at(run.root().join("images.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let file = boot_request(&run);
        assert!(file.take().unwrap().is_none());
        let request = BootRequest::Rejoin { fresh: true };
        file.put(Some(&request)).unwrap();
        assert_eq!(file.take().unwrap(), Some(request));
        assert!(file.take().unwrap().is_none(), "taken twice");
        std::fs::write(file.path(), "{not json").unwrap();
        let e = file.read().unwrap_err().to_string();
        assert!(e.contains("boot-request.json"), "{e}");
        file.put(None).unwrap();
        assert!(!file.path().exists());
    }
}
