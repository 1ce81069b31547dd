//! The update's journal: written (and its directory synced) before each step that
//! moves a file, removed once the new set is proven or the update undone. A power cut
//! leaves it behind; the next `start` or `update` reads it and undoes the update,
//! because a set that was never proven is never booted as the current one by
//! surprise. It says which set it went back to.

use super::slots::{self, Slot, Staging};
use super::UpdateError;
use crate::run_files::{self, RunFile};
use crate::rundir::RunDir;
use crate::spec::Spec;
use protocol::release::InstalledSet;
use serde::{Deserialize, Serialize};

/// How far an update got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The new set is being put, or waits, in `.next`; the current set is untouched.
    Staged,
    /// The files are being swapped, or the new set boots and is not proven yet.
    Switched,
}

/// An update or rollback under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// How far it got.
    pub step: Step,
    /// How the new set was staged (which says how staging is undone).
    pub staging: Staging,
    /// The files it moves.
    pub slots: Vec<Slot>,
    /// The set being installed.
    pub to: InstalledSet,
    /// The set it replaces, when `update` installed that one too.
    pub from: Option<InstalledSet>,
    /// The `update` process that wrote it: its own boots leave the journal alone.
    #[serde(default)]
    pub pid: u32,
}

impl Journal {
    /// Records this journal durably before the step it names is taken.
    pub fn record(&self, file: &RunFile<Journal>) -> Result<(), UpdateError> {
        file.write(self)?;
        let dir = file.path().parent().unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| UpdateError::Read {
                path: dir.to_path_buf(),
                source,
            })
    }

    /// Puts every file back where it was before this journal's update began.
    pub fn undo(&self) -> Result<(), UpdateError> {
        if self.step == Step::Switched {
            slots::unswitch(&self.slots)?;
        }
        slots::unstage(&self.slots, self.staging)?;
        Ok(())
    }

    /// How the set it replaces is named in messages.
    pub fn from_name(&self) -> String {
        self.from
            .as_ref()
            .map_or_else(|| "the set in place before".to_string(), |s| s.describe())
    }
}

/// The journal of `spec`'s VM.
pub fn file(spec: &Spec) -> RunFile<Journal> {
    run_files::update_journal(&RunDir::new(&spec.run_dir))
}

/// Undoes an update a power cut or a killed `update` left unfinished; what it did, in
/// one sentence, or `None` when there was nothing to undo (or the journal is this
/// process's own, whose update is under way).
pub fn recover(spec: &Spec) -> Result<Option<String>, UpdateError> {
    let file = file(spec);
    let Some(journal) = file.read()? else {
        return Ok(None);
    };
    if journal.pid == std::process::id() {
        return Ok(None); // this process's own update, booting its new set
    }
    journal.undo()?;
    file.remove()?;
    let what = match journal.staging {
        Staging::Copied => "an update to",
        Staging::FromPrevious => "a rollback to",
    };
    let how = match journal.step {
        Step::Staged => "before it switched any file: the staged copy was removed",
        Step::Switched => "before the new set was proven: its files were put back",
    };
    Ok(Some(format!(
        "{what} {} was interrupted (a power cut, or the command was killed) {how}; VM {} boots {} as before",
        journal.to.describe(),
        spec.name,
        journal.from_name()
    )))
}
