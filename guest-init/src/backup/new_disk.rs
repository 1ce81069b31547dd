//! `restore --new-disk`: the data disk was lost, so PID 1 restores the repository onto
//! a blank one before postgres first starts on it.

use super::restore::{pgbackrest_time, repo_arg, RestoreError};
use super::Backups;
use crate::postgres::{Account, PgError, DATA_DIR};
use protocol::backup::RestoreTarget;
use std::path::Path;

/// `restore --new-disk`: before postgres first starts on a blank data disk, restore
/// the repository's `target` into it. Refuses a data disk that already holds a cluster
/// (the host moves the old image aside first; this is the guard if it did not).
pub fn onto_new_disk(backups: &Backups, target: &RestoreTarget) -> Result<String, RestoreError> {
    let data = Path::new(DATA_DIR);
    if data.join("PG_VERSION").exists() {
        return Err(RestoreError::DiskNotNew);
    }
    let _work = backups.work_lock();
    let sets = backups.sets_now()?;
    let newest = sets.last().ok_or(RestoreError::NoSets)?;
    let (args, what) = match target {
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
    let mut args = args;
    let repo = repo_arg(target, &sets)?;
    log::warn!(
        "new data disk: restoring {what} with {repo} (newest set {})",
        newest.label
    );
    args.push(repo);
    let account = Account::lookup()?;
    crate::owned_files::prepare_dir(data, 0o700, account.owner()).map_err(PgError::Prepare)?;
    backups.restore_into_data_dir(&args)?;
    Ok(format!("restored {what} onto the new data disk"))
}
