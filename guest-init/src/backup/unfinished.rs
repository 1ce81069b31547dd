//! Restores that a power cut or a stop interrupted. Before a restore moves anything it
//! records itself on the data disk ([`MARKER`]); once the restored server has taken
//! over, the marker goes. The boot that finds one:
//!
//! - for a restore in place (`sovereign restore`, `restore --from-export`), undoes it:
//!   the data directory from before the restore goes back in place, the unfinished one
//!   is kept beside it, and an import's previous repository is put back; the user's
//!   restore never finished, so the database stays as it was before it;
//! - for a restore onto a new data disk, finishes it: the disk held nothing else, so
//!   the partial restore is removed and the same target restored again.

use super::pgbackrest::REPO1_PATH;
use crate::durable::{self, DurableError, Marker};
use crate::postgres::CLUSTER_DIR;
use protocol::backup::RestoreTarget;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a restore under way is recorded, beside the data directory.
pub const MARKER: &str = "/data/postgres.restore";

/// A restore under way, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Restore {
    /// In place: the data directory from before it is at `kept`; with an import, the
    /// repository from before it is at `repo_aside`.
    InPlace {
        /// What it restores to, for the message.
        target: String,
        /// The data directory from before the restore.
        kept: PathBuf,
        /// The repository from before an import.
        #[serde(default)]
        repo_aside: Option<PathBuf>,
    },
    /// Onto a new, blank data disk.
    NewDisk {
        /// What it restores to.
        target: RestoreTarget,
    },
}

/// The marker.
pub fn marker() -> Marker {
    Marker::at(PathBuf::from(MARKER))
}

/// The restore an earlier boot left unfinished, if any.
pub fn pending() -> Result<Option<Restore>, DurableError> {
    marker().read()
}

/// Undoes an unfinished restore in place; returns the line that says what was done.
pub fn undo_in_place(
    target: &str,
    kept: &Path,
    repo_aside: Option<&Path>,
) -> Result<String, DurableError> {
    let stamp = crate::clock::now_unix();
    let data = Path::new(CLUSTER_DIR);
    let said = if kept.exists() {
        let unfinished = PathBuf::from(format!("{CLUSTER_DIR}.unfinished-restore-{stamp}"));
        let mut said = format!(
            "a restore to {target} was interrupted (a power cut or a stop); this boot put the data from before it back in place"
        );
        if data.exists() {
            durable::rename(data, &unfinished)?;
            said.push_str(&format!(
                " (the unfinished restore is kept as {})",
                unfinished.display()
            ));
        }
        durable::rename(kept, data)?;
        if let Some(aside) = repo_aside.filter(|a| a.exists()) {
            let repo = Path::new(REPO1_PATH);
            durable::remove_tree(repo)?;
            durable::rename(aside, repo)?;
            said.push_str("; the backup repository from before the import is back too (the export file itself is untouched)");
        }
        said
    } else {
        format!(
            "a restore to {target} was interrupted before it moved anything (a power cut or a stop); the data is as it was"
        )
    };
    marker().clear()?;
    log::warn!("{said}");
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_the_kind_of_restore() {
        let json = serde_json::to_value(Restore::NewDisk {
            target: RestoreTarget::Latest,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "new_disk", "target": {"kind": "latest"}})
        );
        let in_place: Restore = serde_json::from_value(serde_json::json!({
            "kind": "in_place",
            "target": "latest",
            "kept": "/data/postgres.before-restore-1"
        }))
        .unwrap();
        assert!(matches!(
            in_place,
            Restore::InPlace {
                repo_aside: None,
                ..
            }
        ));
    }
}
