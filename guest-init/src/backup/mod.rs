//! Backups with pgBackRest: repo1 on the backup disk (`/dev/vdc`, mounted at /backup,
//! its own label, formatted only when blank), continuous WAL archiving with async push,
//! time-based retention, a schedule run by PID 1 itself ([`schedule`]), backups on the
//! host's request, the catalog and the recoverable window, and restores ([`restore`]).
//!
//! Backups never stand in the database's way: when the backup disk cannot be used,
//! postgres runs without archiving and status says why; when the repository stops
//! taking WAL, the archive queue is bounded (pgBackRest drops WAL past it rather than
//! fill the data disk) and status says point-in-time recovery is broken.

pub mod identity;
pub mod pgbackrest;
pub mod restore;
pub mod schedule;

use crate::command;
use crate::datadisk::{DataDisk, DiskError};
use crate::owned_files::{self, Owner};
use crate::postgres::{find_bin_dir, Account};
use pgbackrest::{BACKUP_MOUNT, CONFIG_FILE, REPO1_PATH, WORK_DIR};
use protocol::backup::{
    ArchiveState, BackupCatalog, BackupConfig, BackupKind, BackupRun, BackupSet, BackupStatus,
    RecoveryWindow,
};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The label of the backup filesystem.
pub const BACKUP_LABEL: &str = "sovereign-backup";

/// How often the backup thread refreshes the archive state and asks the schedule.
const TICK: Duration = Duration::from_secs(30);

/// Why backups cannot run.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("backup disk: {0}")]
    Disk(#[from] DiskError),
    #[error("preparing pgBackRest's files: {0}")]
    Files(#[from] owned_files::OwnedFileError),
    #[error(transparent)]
    Tool(#[from] command::CommandError),
    #[error(transparent)]
    Postgres(#[from] crate::postgres::PgError),
    #[error(transparent)]
    Info(#[from] pgbackrest::InfoError),
    #[error("backups are not available: {0}")]
    Unavailable(String),
}

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct State {
    /// Why backups do not work, when they don't.
    problem: Option<String>,
    last_run: Option<BackupRun>,
    last_ok: Option<BackupRun>,
    sets: Vec<BackupSet>,
    archive: ArchiveState,
}

/// The guest's backups: prepared before postgres starts, run after `ready`.
#[derive(Debug)]
pub struct Backups {
    cfg: BackupConfig,
    pg_port: u16,
    disk: DataDisk,
    account: Option<Account>,
    /// Held by a backup or a restore: one at a time.
    work: Mutex<()>,
    state: Mutex<State>,
}

impl Backups {
    /// Mounts the backup disk (formatting it when blank), prepares repo1, the spool and
    /// the configuration. Never fails: what went wrong is kept and shown in status, and
    /// [`Backups::archive_settings`] is then empty so postgres runs without archiving.
    pub fn prepare(cfg: &BackupConfig, pg_port: u16, data_disk_bytes: u64) -> Backups {
        let b = Backups {
            cfg: cfg.clone(),
            pg_port,
            disk: DataDisk::new(BACKUP_MOUNT, BACKUP_LABEL),
            account: Account::lookup().ok(),
            work: Mutex::new(()),
            state: Mutex::default(),
        };
        if let Err(e) = b.prepare_files(data_disk_bytes) {
            log::error!("backups disabled: {e}");
            b.lock().problem = Some(e.to_string());
        }
        b
    }

    fn prepare_files(&self, data_disk_bytes: u64) -> Result<(), BackupError> {
        let owner = self.owner()?;
        let info = self.disk.mount(Path::new(&self.cfg.device))?;
        log::info!("backup disk: {info}");
        owned_files::prepare_dir(Path::new(REPO1_PATH), 0o750, owner)?;
        for dir in [
            WORK_DIR,
            &format!("{WORK_DIR}/spool"),
            &format!("{WORK_DIR}/log"),
        ] {
            owned_files::prepare_dir(Path::new(dir), 0o750, owner)?;
        }
        owned_files::prepare_dir(Path::new("/run/pgbackrest"), 0o750, owner)?;
        // A quarter of the data disk may wait for an unreachable repository; past it
        // pgBackRest drops WAL instead of filling the disk.
        let queue_mib = ((data_disk_bytes / 4) >> 20).max(256);
        let conf = pgbackrest::render_config(&self.cfg, self.pg_port, queue_mib);
        owned_files::write_file(Path::new(CONFIG_FILE), conf.as_bytes(), 0o640, owner)?;
        Ok(())
    }

    fn owner(&self) -> Result<Owner, BackupError> {
        self.account
            .map(|a| a.owner())
            .ok_or_else(|| BackupError::Unavailable("user 'postgres' not found".into()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The postgresql.conf lines for archiving, or nothing when backups cannot run.
    pub fn archive_settings(&self) -> Option<String> {
        self.lock()
            .problem
            .is_none()
            .then(|| pgbackrest::archive_settings(&self.cfg))
    }

    /// Runs a pgBackRest command as postgres; its error output on failure.
    fn pgbackrest(&self, command_name: &str, extra: &[String]) -> Result<String, BackupError> {
        let account = self
            .account
            .ok_or_else(|| BackupError::Unavailable("user 'postgres' not found".into()))?;
        let mut cmd = account.command(pgbackrest::PROGRAM);
        cmd.args(pgbackrest::args(command_name, extra));
        Ok(command::run(&mut cmd, &[])?.stdout)
    }

    /// Creates the stanza (idempotent; needs the running server), once per boot after
    /// postgres is up. Until it exists, WAL pushes fail and status says so.
    pub fn create_stanza(&self) {
        if self.lock().problem.is_some() {
            return;
        }
        match self.pgbackrest("stanza-create", &[]) {
            Ok(_) => log::info!("pgbackrest: stanza {} ready", pgbackrest::STANZA),
            Err(e) => {
                log::error!("pgbackrest stanza-create failed: {e}");
                self.lock().problem = Some(format!("stanza-create failed: {e}"));
            }
        }
    }

    /// Why backups cannot run, if they cannot.
    fn unavailable(&self) -> Option<String> {
        self.lock().problem.clone()
    }

    /// Takes one backup (waiting for any other backup or restore to finish first),
    /// records its outcome, and refreshes the catalog.
    pub fn run(&self, kind: BackupKind) -> BackupRun {
        let _work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        self.run_locked(kind)
    }

    fn run_locked(&self, kind: BackupKind) -> BackupRun {
        let started_unix = now_unix();
        let start = Instant::now();
        log::info!("pgbackrest: {kind} backup starting");
        let outcome = match self.unavailable() {
            Some(why) => Err(BackupError::Unavailable(why)),
            None => self.pgbackrest("backup", &[format!("--type={kind}")]),
        };
        let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let _ = self.refresh_catalog();
        let newest = self
            .lock()
            .sets
            .iter()
            .rev()
            .find(|s| s.started_unix >= started_unix - 1)
            .cloned();
        let run = match (outcome, newest) {
            (Ok(_), Some(set)) => BackupRun {
                kind,
                started_unix,
                duration_ms,
                label: Some(set.label),
                repo_bytes: Some(set.repo_bytes),
                error: None,
            },
            (Ok(_), None) => BackupRun {
                kind,
                started_unix,
                duration_ms,
                label: None,
                repo_bytes: None,
                error: Some(
                    "pgbackrest reported success but no new set is in the repository".into(),
                ),
            },
            (Err(e), _) => BackupRun {
                kind,
                started_unix,
                duration_ms,
                label: None,
                repo_bytes: None,
                error: Some(e.to_string()),
            },
        };
        match &run.error {
            None => log::info!(
                "pgbackrest: {kind} backup {} done in {} ms",
                run.label.as_deref().unwrap_or("?"),
                run.duration_ms
            ),
            Some(e) => log::error!("pgbackrest: {kind} backup failed: {e}"),
        }
        let mut st = self.lock();
        st.last_run = Some(run.clone());
        if run.ok() {
            st.last_ok = Some(run.clone());
        }
        run
    }

    /// Re-reads the sets from the repository.
    fn refresh_catalog(&self) -> Result<Vec<BackupSet>, BackupError> {
        let json = self.pgbackrest("info", &["--output=json".to_string()])?;
        let sets = pgbackrest::parse_info(&json)?;
        self.lock().sets = sets.clone();
        Ok(sets)
    }

    /// Re-reads `pg_stat_archiver`: what reached the repository, and what failed.
    fn refresh_archive(&self) -> Result<(), BackupError> {
        let account = self
            .account
            .ok_or_else(|| BackupError::Unavailable("user 'postgres' not found".into()))?;
        let bin = find_bin_dir(Path::new("/")).ok_or(crate::postgres::PgError::NotInstalled)?;
        let sql = "select coalesce(last_archived_wal, ''), \
                   coalesce(extract(epoch from last_archived_time)::bigint::text, ''), \
                   coalesce(last_failed_wal, ''), \
                   coalesce(extract(epoch from last_failed_time)::bigint::text, '') \
                   from pg_stat_archiver";
        let out = command::run_with_input(
            &mut account.psql(&bin, self.pg_port, &["-A", "-t", "-F", "|", "-f", "-"]),
            sql.as_bytes(),
            &[],
        )?;
        self.lock().archive = parse_archiver(&out.stdout);
        Ok(())
    }

    /// The catalog for `backup list`: the sets and the window.
    pub fn catalog(&self) -> Result<BackupCatalog, BackupError> {
        if let Some(why) = self.unavailable() {
            return Err(BackupError::Unavailable(why));
        }
        let sets = self.refresh_catalog()?;
        let _ = self.refresh_archive();
        let window = window(&sets, &self.lock().archive);
        Ok(BackupCatalog { sets, window })
    }

    /// `pgbackrest verify`: reads every file of the repository back and checks it;
    /// returns what it found (its summary), or why it failed.
    pub fn verify(&self) -> Result<String, BackupError> {
        if let Some(why) = self.unavailable() {
            return Err(BackupError::Unavailable(why));
        }
        let out = self.pgbackrest(
            "verify",
            &["--output=text".to_string(), "--verbose".to_string()],
        )?;
        Ok(out.trim().to_string())
    }

    /// What status shows.
    pub fn status(&self) -> BackupStatus {
        let st = self.lock();
        BackupStatus {
            problem: st.problem.clone(),
            last_run: st.last_run.clone(),
            last_ok: st.last_ok.clone(),
            archive: st.archive.clone(),
            window: window(&st.sets, &st.archive),
            sets: st.sets.len(),
            disk: self.disk.usage(),
        }
    }

    /// One round of the backup thread: refresh what status shows, then take the
    /// backup the schedule says is due, if any.
    fn tick(&self) {
        if self.unavailable().is_some() {
            return;
        }
        if let Err(e) = self.refresh_archive() {
            log::debug!("backups: cannot read the archiver's state: {e}");
        }
        let Ok(_work) = self.work.try_lock() else {
            return; // a backup or restore is under way
        };
        let sets = match self.refresh_catalog() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("backups: cannot read the catalog: {e}");
                return;
            }
        };
        let last_failure = self
            .lock()
            .last_run
            .as_ref()
            .filter(|r| !r.ok())
            .map(|r| r.started_unix);
        if let Some(kind) = schedule::due(now_unix(), &sets, &self.cfg, last_failure) {
            self.run_locked(kind);
        }
    }

    /// Starts the backup thread: the stanza, then a tick every [`TICK`] for ever.
    pub fn start_schedule(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("backups".into())
            .spawn(move || {
                me.create_stanza();
                loop {
                    me.tick();
                    std::thread::sleep(TICK);
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the backup thread: {e}");
            self.lock().problem = Some(format!("the backup thread could not start: {e}"));
        }
    }

    /// The repository's sets, read now (no server needed).
    pub(crate) fn sets_now(&self) -> Result<Vec<BackupSet>, BackupError> {
        if let Some(why) = self.unavailable() {
            return Err(BackupError::Unavailable(why));
        }
        self.refresh_catalog()
    }

    /// Holds off scheduled backups while a restore runs.
    pub(crate) fn work_lock(&self) -> MutexGuard<'_, ()> {
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a restored (or put back) cluster starts: ends any pgBackRest process
    /// left from the server that was stopped (an async archive-push outlives its
    /// postgres and would go on working through the old cluster's WAL queue) and empties
    /// the archive-push spool, whose status files describe that old queue.
    pub(crate) fn forget_old_archiving(&self) {
        let pids = pgbackrest_pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pgbackrest_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in pgbackrest_pids() {
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

    /// Runs a pgBackRest restore into the (empty) data directory.
    pub(crate) fn restore_into_data_dir(&self, extra: &[String]) -> Result<(), BackupError> {
        self.pgbackrest("restore", extra).map(|_| ())
    }

    /// Unmounts the backup disk at shutdown (after every process is gone).
    pub fn close_and_unmount(&self) {
        self.disk.close_and_unmount();
    }

    /// True when the backup disk and pgBackRest's files are ready.
    pub fn usable(&self) -> bool {
        self.lock().problem.is_none()
    }

    /// The restore a new data disk asks for (`sovereign restore --new-disk`), if any.
    pub fn restore_on_boot(&self) -> Option<&protocol::backup::RestoreTarget> {
        self.cfg.restore_on_boot.as_ref()
    }

    /// The backup disk's gate, for shutdown.
    pub fn disk(&self) -> &DataDisk {
        &self.disk
    }
}

/// Processes whose program is pgBackRest (their command line starts with its path or
/// name).
fn pgbackrest_pids() -> Vec<nix::unistd::Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let program = cmdline.split(|b| *b == 0).next()?;
            let name = program.rsplit(|b| *b == b'/').next()?;
            (name == b"pgbackrest").then(|| nix::unistd::Pid::from_raw(pid))
        })
        .collect()
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
fn parse_archiver(line: &str) -> ArchiveState {
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
