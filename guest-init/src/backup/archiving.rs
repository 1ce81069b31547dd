//! What PID 1 knows about WAL archiving: the archiver's state as `pg_stat_archiver`
//! gives it, the window a restore can reach, and the pgBackRest processes and spool a
//! stopped server leaves behind.

use super::pgbackrest::{self, WORK_DIR};
use protocol::backup::{ArchiveState, BackupSet, RecoveryWindow};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the archiver's state is read for status: the age of the newest archived
/// change is the committed work at risk, so it must not be stale by much.
const ARCHIVE_WATCH: Duration = Duration::from_secs(5);

/// Starts the archive watch: a thread that re-reads `pg_stat_archiver` every
/// [`ARCHIVE_WATCH`], so that status shows the archive's age within seconds rather
/// than at the next backup tick.
pub(super) fn start_watch(backups: &Arc<super::Backups>) {
    let me = Arc::clone(backups);
    let watching = std::thread::Builder::new()
        .name("archive-watch".into())
        .spawn(move || loop {
            if me.unavailable().is_none() {
                if let Err(e) = me.refresh_archive() {
                    log::debug!("backups: cannot read the archiver's state: {e}");
                }
            }
            std::thread::sleep(ARCHIVE_WATCH);
        });
    if let Err(e) = watching {
        log::warn!(
            "cannot start the archive watch (status then shows the archive as `backup list` last read it): {e}"
        );
    }
}

/// pgBackRest's program name, as `/proc/PID/comm` shows it.
const PGBACKREST: &str = "pgbackrest";

/// Ends any pgBackRest process left from a server that was stopped (an async
/// archive-push outlives its postgres and would go on working through the old
/// cluster's WAL queue) and empties the archive-push spool, whose status files describe
/// that old queue. Called before a restored (or put back) cluster starts.
pub fn forget_old_archiving() {
    let pids = crate::lifecycle::pids::named(PGBACKREST);
    for pid in &pids {
        let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::lifecycle::pids::named(PGBACKREST).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in crate::lifecycle::pids::named(PGBACKREST) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    if !pids.is_empty() {
        log::warn!(
            "ended {} pgBackRest process(es) of the stopped server",
            pids.len()
        );
    }
    let out = Path::new(WORK_DIR)
        .join("spool/archive")
        .join(pgbackrest::STANZA)
        .join("out");
    match std::fs::remove_dir_all(&out) {
        Ok(()) => log::info!("emptied the archive-push spool {}", out.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot empty {}: {e}", out.display()),
    }
}

/// The span a restore can reach: from the end of the oldest set to the newest
/// archived change (or the end of the newest set, before anything was archived).
pub fn window(sets: &[BackupSet], archive: &ArchiveState) -> Option<RecoveryWindow> {
    let earliest = sets.iter().map(|s| s.stopped_unix).min()?;
    let newest_set = sets
        .iter()
        .map(|s| s.stopped_unix)
        .max()
        .unwrap_or(earliest);
    let latest = archive
        .last_archived_unix
        .unwrap_or(newest_set)
        .max(newest_set);
    Some(RecoveryWindow {
        earliest_unix: earliest,
        latest_unix: latest,
    })
}

/// `pg_stat_archiver` as one JSON object in [`ArchiveState`]'s fields.
pub(super) const ARCHIVER_SQL: &str = "select json_build_object(\
     'last_archived_wal', last_archived_wal, \
     'last_archived_unix', extract(epoch from last_archived_time)::bigint, \
     'last_failed_wal', last_failed_wal, \
     'last_failed_unix', extract(epoch from last_failed_time)::bigint) \
     from pg_stat_archiver";

/// Reads [`ARCHIVER_SQL`]'s output; what cannot be read is an archiver with no
/// history.
pub(super) fn parse_archiver(output: &str) -> ArchiveState {
    output
        .lines()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::backup::BackupKind;

    #[test]
    fn the_archiver_object_parses_with_nulls() {
        let a = parse_archiver(
            "{\"last_archived_wal\" : \"000000010000000000000003\", \"last_archived_unix\" : 1764691500, \"last_failed_wal\" : null, \"last_failed_unix\" : null}\n",
        );
        assert_eq!(
            a.last_archived_wal.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(a.last_archived_unix, Some(1764691500));
        assert_eq!(a.last_failed_wal, None);
        assert!(!a.failing());
        assert_eq!(parse_archiver("psql: error"), ArchiveState::default());
        let failing = parse_archiver(
            "{\"last_archived_wal\" : \"00000001000000000000000A\", \"last_archived_unix\" : 100, \"last_failed_wal\" : \"00000001000000000000000B\", \"last_failed_unix\" : 160}",
        );
        assert!(failing.failing());
    }

    #[test]
    fn the_window_runs_from_the_oldest_set_to_the_newest_archived_change() {
        let set = |stop| BackupSet {
            label: String::new(),
            kind: BackupKind::Full,
            started_unix: stop - 10,
            stopped_unix: stop,
            database_bytes: 0,
            repo_bytes: 0,
            repo: 1,
        };
        let mut archive = ArchiveState::default();
        assert_eq!(window(&[], &archive), None);
        let sets = [set(200), set(100)];
        assert_eq!(
            window(&sets, &archive),
            Some(RecoveryWindow {
                earliest_unix: 100,
                latest_unix: 200
            })
        );
        archive.last_archived_unix = Some(500);
        assert_eq!(window(&sets, &archive).map(|w| w.latest_unix), Some(500));
    }
}
