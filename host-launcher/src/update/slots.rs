//! The files of an image set in place. A set is the spec's kernel and root image; an
//! update never moves them elsewhere, so `--sql` and a user's spec work alike. Beside
//! each file live at most two more: `<path>.next` (a set being installed) and
//! `<path>.previous` (the set before, kept for `update --rollback`). Every change is a
//! rename in one directory, synced, so a power cut leaves each file whole in one of
//! its three places, and [`unswitch`] and [`unstage`] put any mixture back.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a file of a set could not be moved.
#[derive(Debug, Error)]
#[error("{what} {from} -> {to}: {source}")]
pub struct MoveError {
    /// What was being done (`renaming`, `removing`).
    pub what: &'static str,
    /// The file.
    pub from: PathBuf,
    /// Where it was going (the same file for a removal).
    pub to: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// One file of a set: its role and where the spec boots it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// `kernel` or `root image`, for messages.
    pub role: String,
    /// The manifest's name for it (`bzImage`, `root.img`).
    pub name: String,
    /// The spec's path.
    pub path: PathBuf,
}

/// How a staged set was staged, which says how staging is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Staging {
    /// Copied in from an artifact directory: undone by removing the copy.
    Copied,
    /// The kept previous set, moved to `.next` (`--rollback`): undone by moving it back.
    FromPrevious,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Slot {
    /// Where a set being installed waits.
    pub fn next(&self) -> PathBuf {
        with_suffix(&self.path, ".next")
    }

    /// Where the set before the current one is kept.
    pub fn previous(&self) -> PathBuf {
        with_suffix(&self.path, ".previous")
    }
}

/// Syncs the directory holding `path`, so a rename in it outlives a power cut.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Renames `from` to `to` (replacing it) and syncs the directory.
pub fn rename(from: &Path, to: &Path) -> Result<(), MoveError> {
    std::fs::rename(from, to)
        .and_then(|()| sync_parent(to))
        .map_err(|source| MoveError {
            what: "renaming",
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        })
}

/// Removes `path` if it exists, and syncs the directory.
pub fn remove(path: &Path) -> Result<(), MoveError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path).map_err(|source| MoveError {
            what: "removing",
            from: path.to_path_buf(),
            to: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MoveError {
            what: "removing",
            from: path.to_path_buf(),
            to: path.to_path_buf(),
            source,
        }),
    }
}

/// True when each slot has a kept previous file.
pub fn previous_complete(slots: &[Slot]) -> bool {
    slots.iter().all(|s| s.previous().is_file())
}

/// `--rollback`'s staging: each kept previous file becomes the set to install.
pub fn stage_previous(slots: &[Slot]) -> Result<(), MoveError> {
    for s in slots {
        if s.previous().exists() {
            rename(&s.previous(), &s.next())?;
        }
    }
    Ok(())
}

/// Switches to the staged set: for each slot the current file becomes the previous
/// one and the staged file the current one.
pub fn switch(slots: &[Slot]) -> Result<(), MoveError> {
    for s in slots {
        rename(&s.path, &s.previous())?;
        rename(&s.next(), &s.path)?;
    }
    Ok(())
}

/// Undoes [`switch`], from wherever it stopped: afterwards each slot holds the set it
/// held before, and the staged set waits in `.next` again. Idempotent.
pub fn unswitch(slots: &[Slot]) -> Result<(), MoveError> {
    for s in slots {
        let (path, next, previous) = (&s.path, s.next(), s.previous());
        if !previous.exists() {
            continue; // this slot was not switched
        }
        if path.exists() && !next.exists() {
            rename(path, &next)?;
        }
        rename(&previous, path)?;
    }
    Ok(())
}

/// Undoes staging: a copied set is removed, the previous set moved back. Idempotent.
pub fn unstage(slots: &[Slot], how: Staging) -> Result<(), MoveError> {
    for s in slots {
        match how {
            Staging::Copied => remove(&s.next())?,
            Staging::FromPrevious if s.next().exists() => rename(&s.next(), &s.previous())?,
            Staging::FromPrevious => {}
        }
    }
    Ok(())
}

/// Removes the kept files of the set before the current one: done before a copied set
/// is staged, so a phone's disk holds one spare set, not two.
pub fn drop_previous(slots: &[Slot]) -> Result<(), MoveError> {
    slots.iter().try_for_each(|s| remove(&s.previous()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(dir: &Path) -> Vec<Slot> {
        ["bzImage", "root.img"]
            .iter()
            .map(|n| Slot {
                role: (*n).into(),
                name: (*n).into(),
                path: dir.join(n),
            })
            .collect()
    }

    fn put(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    /// Every file of every slot: (current, next, previous).
    fn state(slots: &[Slot]) -> Vec<(Option<String>, Option<String>, Option<String>)> {
        slots
            .iter()
            .map(|s| (read(&s.path), read(&s.next()), read(&s.previous())))
            .collect()
    }

    /// Runs [`switch`] up to `renames` renames, as a power cut would stop it.
    fn switch_cut_after(slots: &[Slot], renames: usize) {
        let mut done = 0;
        for s in slots {
            for (from, to) in [(s.path.clone(), s.previous()), (s.next(), s.path.clone())] {
                if done == renames {
                    return;
                }
                std::fs::rename(from, to).unwrap();
                done += 1;
            }
        }
    }

    #[test]
    fn a_switch_cut_anywhere_is_undone_to_the_set_before_with_the_new_one_staged() {
        for cut in 0..=4 {
            let dir = tempfile::tempdir().unwrap();
            let s = slots(dir.path());
            for slot in &s {
                put(&slot.path, "old");
                put(&slot.next(), "new");
            }
            switch_cut_after(&s, cut);
            unswitch(&s).unwrap();
            unswitch(&s).unwrap(); // a second recovery after a cut during the first
            let staged = (Some("old".into()), Some("new".into()), None);
            assert_eq!(state(&s), vec![staged.clone(), staged], "cut after {cut}");
            unstage(&s, Staging::Copied).unwrap();
            assert!(s.iter().all(|x| !x.next().exists()));
        }
    }

    #[test]
    fn a_rollback_cut_anywhere_goes_back_to_where_it_started() {
        // Rollback: current B, previous A. Staged: A moves to .next; switched: A current.
        for cut in 0..=4 {
            let dir = tempfile::tempdir().unwrap();
            let s = slots(dir.path());
            for slot in &s {
                put(&slot.path, "B");
                put(&slot.previous(), "A");
            }
            stage_previous(&s).unwrap();
            switch_cut_after(&s, cut);
            unswitch(&s).unwrap();
            unstage(&s, Staging::FromPrevious).unwrap();
            let before = (Some("B".into()), None, Some("A".into()));
            assert_eq!(state(&s), vec![before.clone(), before], "cut after {cut}");
        }
        // Uncut, a rollback swaps the two sets; a second one swaps them back.
        let dir = tempfile::tempdir().unwrap();
        let s = slots(dir.path());
        for slot in &s {
            put(&slot.path, "B");
            put(&slot.previous(), "A");
        }
        assert!(previous_complete(&s));
        for (now, kept) in [("A", "B"), ("B", "A")] {
            stage_previous(&s).unwrap();
            switch(&s).unwrap();
            let swapped = (Some(now.into()), None, Some(kept.into()));
            assert_eq!(state(&s), vec![swapped.clone(), swapped]);
        }
    }

    #[test]
    fn a_slot_without_a_kept_file_is_left_alone_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = slots(dir.path());
        put(&s[0].path, "current");
        unswitch(&s).unwrap();
        assert_eq!(read(&s[0].path).as_deref(), Some("current"));
        assert!(!previous_complete(&s));
        let e = switch(&s).unwrap_err().to_string();
        assert!(e.contains("bzImage.next"), "{e}");
    }
}
