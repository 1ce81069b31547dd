//! `restore --new-disk`: the data disk was lost, so PID 1 restores the repository onto
//! a blank one before postgres first starts on it. The host asks for one boot only; the
//! restore records itself on the new disk first ([`unfinished`]), so a power cut midway
//! is finished by the next boot without the request, and a boot after a finished one
//! does nothing.

use super::restore::{pgbackrest_time, repo_arg, RestoreError};
use super::unfinished::{self, Restore};
use super::Backups;
use crate::postgres::{cluster, Account, PgError, CLUSTER_DIR};
use protocol::backup::RestoreTarget;
use std::path::Path;

/// How long a boot asked to restore from an export waits for the host to send it.
const EXPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(1800);

/// This boot's request to restore onto the new data disk.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What to restore to.
    pub target: &'a RestoreTarget,
    /// Whether the host sends an export first, which becomes the repository.
    pub from_export: bool,
}

/// What a boot does about restores before postgres starts, and what it says.
#[derive(Debug, Default)]
pub struct OnBoot {
    /// A restore onto the new disk was made (or finished): the server must recover
    /// and be promoted, and the marker cleared, before it counts.
    pub restored: Option<String>,
    /// What this boot finished or undid of an interrupted restore.
    pub recovered: Option<String>,
}

/// Before postgres starts: carries out this boot's request (`request`), else finishes
/// or undoes a restore an earlier boot left unfinished.
pub fn on_boot(
    backups: Option<&Backups>,
    request: Option<Request<'_>>,
) -> Result<OnBoot, RestoreError> {
    let pending = unfinished::pending().map_err(|e| RestoreError::Marker(e.to_string()))?;
    match (request, pending) {
        (
            Some(Request {
                target,
                from_export,
            }),
            _,
        ) => {
            if cluster::exists() {
                return Err(RestoreError::DiskNotNew);
            }
            let backups = need(backups)?;
            if from_export {
                // Recorded first: a boot after a cut import restores (or says why it
                // cannot) instead of making an empty cluster on the new disk.
                unfinished::marker()
                    .set(&Restore::NewDisk {
                        target: target.clone(),
                    })
                    .map_err(|e| RestoreError::Marker(e.to_string()))?;
                log::warn!("new data disk: waiting for the export the host sends");
                if !backups.wait_for_import(EXPORT_WAIT) {
                    return Err(RestoreError::NoExport(EXPORT_WAIT.as_secs() / 60));
                }
            }
            let what = onto_new_disk(backups, target)?;
            Ok(OnBoot {
                restored: Some(what),
                recovered: None,
            })
        }
        (None, Some(Restore::NewDisk { target })) => {
            log::warn!(
                "a restore onto the new data disk was interrupted; restoring {target} again"
            );
            crate::durable::remove_tree(Path::new(CLUSTER_DIR))
                .map_err(|e| RestoreError::Marker(e.to_string()))?;
            let what = onto_new_disk(need(backups)?, &target)?;
            Ok(OnBoot {
                recovered: Some(format!(
                    "a restore onto the new data disk was interrupted (a power cut or a stop); this boot removed the partial restore and {what}"
                )),
                restored: Some(what),
            })
        }
        (
            None,
            Some(Restore::InPlace {
                target,
                kept,
                repo_aside,
            }),
        ) => Ok(OnBoot {
            restored: None,
            recovered: Some(
                unfinished::undo_in_place(&target, &kept, repo_aside.as_deref())
                    .map_err(|e| RestoreError::Marker(e.to_string()))?,
            ),
        }),
        (None, None) => Ok(OnBoot::default()),
    }
}

fn need(backups: Option<&Backups>) -> Result<&Backups, RestoreError> {
    backups.ok_or_else(|| {
        RestoreError::Backup(super::BackupError::Unavailable(
            "a restore onto the new data disk needs the backup disk, and this boot has none".into(),
        ))
    })
}

/// Restores the repository's `target` into the blank data directory, recorded first.
fn onto_new_disk(backups: &Backups, target: &RestoreTarget) -> Result<String, RestoreError> {
    if crate::lifecycle::stop::requested() {
        return Err(PgError::ShuttingDown.into());
    }
    let _work = backups.work_lock();
    let sets = backups.sets_now()?;
    let newest = sets.last().ok_or(RestoreError::NoSets)?;
    let (mut args, what) = match target {
        RestoreTarget::Latest => (
            vec!["--type=default".to_string()],
            "the latest archived change".to_string(),
        ),
        RestoreTarget::Set { label } => {
            if !sets.iter().any(|s| &s.label == label) {
                return Err(RestoreError::UnknownSet {
                    label: label.clone(),
                    known: sets
                        .iter()
                        .map(|s| s.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            (
                vec![
                    format!("--set={label}"),
                    "--type=immediate".into(),
                    "--target-action=promote".into(),
                ],
                format!("backup set {label}"),
            )
        }
        RestoreTarget::Time { time } => (
            vec![
                "--type=time".into(),
                format!("--target={}", pgbackrest_time(time)),
                "--target-action=promote".into(),
            ],
            time.clone(),
        ),
    };
    let repo = repo_arg(target, &sets)?;
    unfinished::marker()
        .set(&Restore::NewDisk {
            target: target.clone(),
        })
        .map_err(|e| RestoreError::Marker(e.to_string()))?;
    log::warn!(
        "new data disk: restoring {what} with {repo} (newest set {})",
        newest.label
    );
    args.push(repo);
    let account = Account::lookup()?;
    crate::owned_files::prepare_dir(Path::new(CLUSTER_DIR), 0o700, account.owner())
        .map_err(PgError::Prepare)?;
    backups.restore_into_data_dir(&args)?;
    Ok(format!("restored {what} onto the new data disk"))
}
