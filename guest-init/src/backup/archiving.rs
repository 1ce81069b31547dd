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
    let pids = crate::processes::named(PGBACKREST);
    for pid in &pids {
        let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::processes::named(PGBACKREST).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in crate::processes::named(PGBACKREST) {
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

/// Reads psql's `wal|time|failed wal|failed time` line.
pub(super) fn parse_archiver(line: &str) -> ArchiveState {
    let mut f = line.trim().split('|').map(str::trim);
    let mut text = || f.next().filter(|s| !s.is_empty()).map(str::to_string);
    let last_archived_wal = text();
    let last_archived_unix = text().and_then(|s| s.parse().ok());
    let last_failed_wal = text();
    let last_failed_unix = text().and_then(|s| s.parse().ok());
    ArchiveState {
        last_archived_wal,
        last_archived_unix,
        last_failed_wal,
        last_failed_unix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::backup::BackupKind;

    #[test]
    fn archiver_line_parses_with_blanks() {
        let a = parse_archiver("000000010000000000000003|1764691500||\n");
        assert_eq!(
            a.last_archived_wal.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(a.last_archived_unix, Some(1764691500));
        assert_eq!(a.last_failed_wal, None);
        assert!(!a.failing());
        let f = parse_archiver("|||");
        assert_eq!(f, ArchiveState::default());
        let failing = parse_archiver("00000001000000000000000A|100|00000001000000000000000B|160");
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
