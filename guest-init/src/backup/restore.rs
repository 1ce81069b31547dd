//! `sovereign restore`: the target is checked against the catalog first (a time outside
//! the recoverable window is refused, naming the window), then postgres stops, the data
//! directory is moved aside, pgBackRest restores into a fresh one, and the restored
//! server must finish recovery, take writes and answer on the tailnet before the
//! restore counts. If any step fails, the restored copy is moved away and the previous
//! data directory is put back and started: nothing is lost by a failed restore.
//!
//! The previous data directory is kept as `postgres.before-restore-<time>` until the
//! next successful restore (one such copy at most), so a restore to the wrong time can
//! be undone by hand.

use super::export::RepoSwap;
use super::{unfinished, BackupError, Backups};
use crate::clock::now_unix;
use crate::command;
use crate::guest::Guest;
use crate::lifecycle::stop::StopBudget;
use crate::postgres::{find_bin_dir, Account, PgError, Postgres, CLUSTER_DIR};
use protocol::backup::{utc_text, BackupCatalog, BackupSet, RestoreTarget, REPO_LOCAL};
use protocol::{Stage, StageReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long a restored server may take to replay WAL and be promoted.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(3600);

/// Room kept free on the data disk beyond the restored database's size.
const SPACE_MARGIN: u64 = 256 << 20;

/// Why a restore did not happen, or did not hold.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("the repository holds no backup set yet: take one with `sovereign backup now`")]
    NoSets,
    #[error("the export to restore from did not arrive within {0} minutes")]
    NoExport(u64),
    #[error("no backup set is labelled {label:?}; the sets are: {known}")]
    UnknownSet { label: String, known: String },
    #[error("{time:?} is not a time PostgreSQL reads: {why}")]
    BadTime { time: String, why: String },
    #[error("{time} is outside the recoverable window {earliest} .. {latest}")]
    OutsideWindow {
        time: String,
        earliest: String,
        latest: String,
    },
    #[error("postgres is not running, so the target cannot be checked; start the VM first")]
    NoServer,
    #[error("the data disk already holds a database cluster; --new-disk restores only onto a blank data disk")]
    DiskNotNew,
    #[error("the data disk has {free_mib} MiB free; restoring a {need_mib} MiB database next to the kept copy needs {need_mib} MiB and a margin")]
    NoSpace { free_mib: u64, need_mib: u64 },
    #[error("moving {from} to {to}: {source}")]
    Move {
        from: String,
        to: String,
        source: std::io::Error,
    },
    #[error("recording the restore on the data disk: {0}")]
    Marker(String),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("{failed}; the previous data is back and postgres runs on it{}", .put_back_error.as_ref().map(|e| format!(" (but starting it again failed: {e})")).unwrap_or_default())]
    RolledBack {
        failed: String,
        put_back_error: Option<String>,
    },
}

/// Restores to `target` and returns what was done, for the host.
pub fn run(
    guest: &Guest,
    backups: &Backups,
    target: &RestoreTarget,
) -> Result<String, RestoreError> {
    let _work = backups.work_lock();
    run_locked(guest, backups, target, None)
}

/// [`run`] for a caller that holds the backup lock already. With `import` (a restore
/// from an export), the target is checked against the unpacked export, and the export
/// becomes the repository only once the old server has stopped (so that it archives
/// nothing into it), before the restore; it is swapped back if the restore fails.
pub(super) fn run_locked(
    guest: &Guest,
    backups: &Backups,
    target: &RestoreTarget,
    import: Option<&RepoSwap>,
) -> Result<String, RestoreError> {
    let Some(config) = guest.config.get() else {
        return Err(RestoreError::NoServer);
    };
    if crate::lifecycle::stop::requested() {
        return Err(PgError::ShuttingDown.into());
    }
    let old = guest
        .running()
        .postgres
        .clone()
        .ok_or(RestoreError::NoServer)?;
    let catalog = match import {
        Some(swap) => backups.catalog_at(&swap.incoming)?,
        None => backups.catalog()?,
    };
    let (mut args, what) = check_target(target, &catalog, config.postgres.port)?;
    args.push(match import {
        Some(_) => "--repo=1".to_string(),
        None => repo_arg(target, &catalog.sets)?,
    });
    check_space(&catalog)?;

    let reporter = &guest.reporter;
    reporter.report(StageReport::degraded(
        Stage::Postgres,
        format!("restoring to {what}"),
    ));
    log::warn!("restore to {what}: stopping postgres");
    guest.running().postgres = None;
    old.stop(StopBudget {
        grace: Duration::from_secs(60),
        after_kill: Duration::from_secs(5),
    });
    drop(old);

    let stamp = now_unix();
    let data = PathBuf::from(CLUSTER_DIR);
    let kept = PathBuf::from(format!("{CLUSTER_DIR}.before-restore-{stamp}"));
    // Recorded before anything moves: a power cut from here until the restored server
    // takes over is undone by the next boot (unfinished.rs).
    unfinished::marker()
        .set(&unfinished::Restore::InPlace {
            target: what.clone(),
            kept: kept.clone(),
            repo_aside: import.map(RepoSwap::aside_path),
        })
        .map_err(|e| RestoreError::Marker(e.to_string()))?;
    if let Err(e) = move_dir(&data, &kept) {
        let _ = unfinished::marker().clear();
        return Err(e);
    }
    let restored = match import.map(RepoSwap::swap_in).transpose() {
        Ok(_) => restore_and_start(guest, backups, &args),
        Err(e) => Err(e),
    };
    match restored {
        Ok(pg) => {
            guest.running().postgres = Some(Arc::clone(&pg));
            reporter.report(StageReport::ready(Stage::Postgres, pg.info()));
            forget_older_copies(&kept);
            Ok(format!(
                "restored to {what}; postgres is up on the restored data. The data before the restore is kept as {} until the next restore.",
                kept.display()
            ))
        }
        Err(e) => {
            log::error!("restore to {what} failed: {e}; putting the previous data back");
            let _ = unfinished::marker().clear();
            let failed = PathBuf::from(format!("{CLUSTER_DIR}.failed-restore-{stamp}"));
            if let Some(swap) = import {
                swap.swap_back();
            }
            let put_back = move_dir(&data, &failed)
                .or_else(|_| remove_if_empty(&data))
                .and_then(|()| move_dir(&kept, &data))
                .map_err(|e| e.to_string())
                .and_then(|()| start_again(guest, backups).map_err(|e| e.to_string()));
            let put_back_error = put_back.err();
            if put_back_error.is_none() {
                if let Some(pg) = guest.running().postgres.clone() {
                    reporter.report(StageReport::ready(Stage::Postgres, pg.info()));
                }
            }
            Err(RestoreError::RolledBack {
                failed: format!("restore to {what} failed: {e}"),
                put_back_error,
            })
        }
    }
}

/// The repository to restore from: a set's own; else repo1 while it holds a set, and
/// repo2 when it is all there is (the backup disk was lost with the phone).
pub(super) fn repo_arg(target: &RestoreTarget, sets: &[BackupSet]) -> Result<String, RestoreError> {
    let repo = match target {
        RestoreTarget::Set { label } => sets.iter().find(|s| &s.label == label).map(|s| s.repo),
        _ => sets
            .iter()
            .map(|s| s.repo)
            .min_by_key(|r| (*r != REPO_LOCAL, *r)),
    };
    repo.map(|r| format!("--repo={r}"))
        .ok_or(RestoreError::NoSets)
}

/// pgBackRest's arguments for `target` and how to name it, once it is known to be
/// reachable.
fn check_target(
    target: &RestoreTarget,
    catalog: &BackupCatalog,
    port: u16,
) -> Result<(Vec<String>, String), RestoreError> {
    let window = catalog.window.ok_or(RestoreError::NoSets)?;
    match target {
        RestoreTarget::Latest => Ok((
            vec!["--type=default".into()],
            format!(
                "the latest archived change ({})",
                utc_text(window.latest_unix)
            ),
        )),
        RestoreTarget::Set { label } => {
            if !catalog.sets.iter().any(|s| &s.label == label) {
                return Err(RestoreError::UnknownSet {
                    label: label.clone(),
                    known: catalog
                        .sets
                        .iter()
                        .map(|s| s.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Ok((
                vec![
                    format!("--set={label}"),
                    "--type=immediate".into(),
                    "--target-action=promote".into(),
                ],
                format!("backup set {label}"),
            ))
        }
        RestoreTarget::Time { time } => {
            let (unix, normalized) = read_time(time, port)?;
            if unix < window.earliest_unix || unix > window.latest_unix {
                return Err(RestoreError::OutsideWindow {
                    time: time.clone(),
                    earliest: utc_text(window.earliest_unix),
                    latest: utc_text(window.latest_unix),
                });
            }
            Ok((
                vec![
                    "--type=time".into(),
                    format!("--target={normalized}"),
                    "--target-action=promote".into(),
                ],
                format!("{time} ({normalized})"),
            ))
        }
    }
}

/// PostgreSQL reads the time (any form it accepts; no zone means UTC) and gives it back
/// as seconds since the epoch and in the one form pgBackRest takes
/// (`YYYY-MM-DD HH:MM:SS.mmm+00`, UTC), so the target handed on is one both read the
/// same way. The text travels as a psql variable, quoted by psql, never spliced into
/// SQL.
fn read_time(time: &str, port: u16) -> Result<(i64, String), RestoreError> {
    let bad = |why: String| RestoreError::BadTime {
        time: time.to_string(),
        why,
    };
    if time.len() > 64 || time.contains('\n') {
        return Err(bad("too long or more than one line".into()));
    }
    let account = Account::lookup()?;
    let bin = find_bin_dir(Path::new("/")).ok_or(PgError::NotInstalled)?;
    let out = command::output_with_input(
        &mut account.psql(
            &bin,
            port,
            &["-A", "-t", "-v", &format!("t={time}"), "-f", "-"],
        ),
        b"select json_build_object('unix', extract(epoch from :'t'::timestamptz)::bigint, \
          'pgbackrest', to_char(:'t'::timestamptz at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') || '+00');\n",
        4096,
    )
    .map_err(|e| bad(e.to_string()))?;
    if !out.exit.success() {
        return Err(bad(out.stderr.trim().replace("psql:<stdin>:1: ", "")));
    }
    /// The time as PostgreSQL read it.
    #[derive(serde::Deserialize)]
    struct ReadTime {
        unix: i64,
        pgbackrest: String,
    }
    let text = out.stdout.trim();
    serde_json::from_str::<ReadTime>(text)
        .map(|t| (t.unix, t.pgbackrest))
        .map_err(|_| bad(text.to_string()))
}

/// The RFC 3339 forms (`2026-12-02T16:04:05Z`, `...T16:04:05.5+01:00`) in pgBackRest's
/// form, for a restore onto a new disk, where no server is there to read the time yet;
/// anything else is handed on as written.
pub fn pgbackrest_time(time: &str) -> String {
    let t = time.trim();
    match t.split_once('T') {
        Some((date, rest)) if date.len() == 10 => {
            let rest = rest
                .strip_suffix('Z')
                .map_or_else(|| rest.to_string(), |r| format!("{r}+00"));
            format!("{date} {rest}")
        }
        _ => t.to_string(),
    }
}

/// Refuses a restore the data disk has no room for (the kept copy stays).
fn check_space(catalog: &BackupCatalog) -> Result<(), RestoreError> {
    let need = catalog
        .sets
        .iter()
        .map(|s| s.database_bytes)
        .max()
        .unwrap_or(0);
    let Some(usage) = crate::disk_watch::usage_at(Path::new(crate::disks::DATA_MOUNT), false)
    else {
        return Ok(());
    };
    if usage.available_bytes < need + SPACE_MARGIN {
        return Err(RestoreError::NoSpace {
            free_mib: usage.available_bytes >> 20,
            need_mib: need >> 20,
        });
    }
    Ok(())
}

/// pgBackRest restores into a fresh data directory; the server starts on it and must
/// finish recovery, take writes and answer on the tailnet.
fn restore_and_start(
    guest: &Guest,
    backups: &Backups,
    args: &[String],
) -> Result<Arc<Postgres>, RestoreError> {
    let account = Account::lookup()?;
    crate::owned_files::prepare_dir(Path::new(CLUSTER_DIR), 0o700, account.owner())
        .map_err(PgError::Prepare)?;
    backups.forget_old_archiving();
    log::info!("pgbackrest restore {}", args.join(" "));
    backups.restore_into_data_dir(args)?;
    let pg = start_server(guest, backups)?;
    let recovered = pg.wait_promoted(RECOVERY_DEADLINE);
    backups.recovery_finished();
    let promoted = recovered
        .and_then(|()| {
            // The restored server takes writes from here: a power cut now must keep it.
            unfinished::marker().clear().map_err(PgError::Durable)
        })
        .and_then(|()| bring_up(guest, &pg));
    if let Err(e) = promoted {
        pg.stop(StopBudget {
            grace: Duration::from_secs(30),
            after_kill: Duration::from_secs(5),
        });
        return Err(e.into());
    }
    Ok(pg)
}

/// Starts postgres on whatever data directory is in place now.
fn start_server(guest: &Guest, backups: &Backups) -> Result<Arc<Postgres>, PgError> {
    let config = guest.config.get().ok_or(PgError::NotInstalled)?;
    let listen = guest
        .running()
        .tailscale
        .as_ref()
        .and_then(|t| t.current())
        .map(|t| t.ips)
        .unwrap_or_default();
    Ok(Arc::new(Postgres::start(
        &config.postgres,
        &config.hostname,
        &listen,
        backups.archive_settings(),
        None,
    )?))
}

fn bring_up(guest: &Guest, pg: &Postgres) -> Result<(), PgError> {
    match guest.config.get() {
        Some(config) => pg.bring_up(&config.postgres),
        None => Err(PgError::NotInstalled),
    }
}

/// After a failed restore: the previous data directory is back; start it.
fn start_again(guest: &Guest, backups: &Backups) -> Result<(), PgError> {
    backups.forget_old_archiving();
    let pg = start_server(guest, backups)?;
    guest.running().postgres = Some(Arc::clone(&pg));
    bring_up(guest, &pg)
}

/// Renames a directory durably (the boot after a power cut sees the rename or not).
pub(super) fn move_dir(from: &Path, to: &Path) -> Result<(), RestoreError> {
    crate::durable::rename(from, to).map_err(|e| RestoreError::Move {
        from: from.display().to_string(),
        to: to.display().to_string(),
        source: e.source,
    })
}

fn remove_if_empty(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RestoreError::Move {
            from: dir.display().to_string(),
            to: "(removed)".into(),
            source,
        }),
    }
}

/// Removes the copies earlier restores kept, now that a newer one is kept.
fn forget_older_copies(kept: &Path) {
    let Some(name) = kept.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(crate::disks::DATA_MOUNT) else {
        return;
    };
    for e in entries.flatten() {
        let other = e.file_name();
        let other = other.to_string_lossy();
        if other.starts_with("postgres.before-restore-") && other != name {
            log::info!("removing {other}, kept by an earlier restore");
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                log::warn!("cannot remove {other}: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pgbackrest_time;

    #[test]
    fn rfc3339_times_become_pgbackrest_times() {
        assert_eq!(
            pgbackrest_time("2026-12-02T16:04:05Z"),
            "2026-12-02 16:04:05+00"
        );
        assert_eq!(
            pgbackrest_time("2026-12-02T16:04:05.123+01:00"),
            "2026-12-02 16:04:05.123+01:00"
        );
        assert_eq!(
            pgbackrest_time("2026-12-02 16:04:05+00"),
            "2026-12-02 16:04:05+00"
        );
    }
}
