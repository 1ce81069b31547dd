//! Backups with pgBackRest: repo1 on the backup disk (`/dev/vdc`, mounted at /backup,
//! its own label, formatted only when blank), continuous WAL archiving with async push,
//! time-based retention, a schedule run by PID 1 itself ([`schedule`]), backups on the
//! host's request, the catalog and the recoverable window, and restores ([`restore`]).
//!
//! Backups never stand in the database's way: when the backup disk cannot be used,
//! postgres runs without archiving and status says why; when the repository stops
//! taking WAL, the archive queue is bounded (pgBackRest drops WAL past it rather than
//! fill the data disk) and status says point-in-time recovery is broken.

pub mod archiving;
pub mod export;
pub mod export_set;
pub mod identity;
pub mod new_disk;
pub mod offsite;
pub mod pgbackrest;
pub mod restore;
mod runs;
pub mod schedule;
pub mod shipping;

use crate::command;
use crate::datadisk::{DataDisk, DiskError};
use crate::owned_files::{self, Owner};
use crate::postgres::wal_budget::WalBudget;
use crate::postgres::{find_bin_dir, Account};
use pgbackrest::{
    BACKUP_MOUNT, CONFIG_FILE, LOCAL_CONFIG_FILE, OFFSITE_CONFIG_FILE, REPO1_PATH, WORK_DIR,
};
use protocol::backup::{
    ArchiveState, BackupCatalog, BackupConfig, BackupRun, BackupSet, BackupStatus, OffsiteStatus,
    REPO_LOCAL, REPO_OFFSITE,
};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The label of the backup filesystem.
pub const BACKUP_LABEL: &str = "sovereign-backup";

/// How often the backup thread asks the schedule.
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
    /// The runs to repo1 and repo2.
    runs: [RepoRuns; 2],
    /// Sets of every repository.
    sets: Vec<BackupSet>,
    /// Repositories `pgbackrest info` could not read, with its message.
    broken_repos: Vec<(u8, String)>,
    /// Why repo2's name could not be looked up in the tailnet, when it could not.
    offsite_unresolved: Option<String>,
    /// WAL shipping to repo2: the newest file shipped, and when.
    shipped: Option<(String, i64)>,
    /// Why the last shipping round stopped short, when it did.
    ship_problem: Option<String>,
    archive: ArchiveState,
}

/// The outcomes kept for one repository.
#[derive(Debug, Default)]
struct RepoRuns {
    last: Option<BackupRun>,
    last_ok: Option<BackupRun>,
}

impl State {
    fn runs(&mut self, repo: u8) -> &mut RepoRuns {
        &mut self.runs[usize::from(repo == REPO_OFFSITE)]
    }
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
            &format!("{WORK_DIR}/ship"),
        ] {
            owned_files::prepare_dir(Path::new(dir), 0o750, owner)?;
        }
        owned_files::prepare_dir(Path::new("/run/pgbackrest"), 0o750, owner)?;
        if let Some(o) = &self.cfg.offsite {
            offsite::write_credentials(o, owner)?;
        }
        // A share of the data disk may wait for an unreachable repository; past it
        // pgBackRest drops WAL instead of filling the disk.
        let queue_mib = WalBudget::for_disk(data_disk_bytes).archive_queue_mib;
        let conf = pgbackrest::render_config(&self.cfg, self.pg_port, queue_mib);
        owned_files::write_file(Path::new(CONFIG_FILE), conf.as_bytes(), 0o640, owner)?;
        let local_only = BackupConfig {
            offsite: None,
            ..self.cfg.clone()
        };
        let conf = pgbackrest::render_config(&local_only, self.pg_port, queue_mib);
        owned_files::write_file(Path::new(LOCAL_CONFIG_FILE), conf.as_bytes(), 0o640, owner)?;
        if self.cfg.offsite.is_some() {
            let full = pgbackrest::render_config(&self.cfg, self.pg_port, queue_mib);
            // Without repo1, and without the queue bound: with it, archive-push looks
            // for PostgreSQL's archive_status beside the file, which only pg_wal has.
            let offsite_only: String = full
                .lines()
                .filter(|l| !l.starts_with("repo1-") && !l.starts_with("archive-push-queue-max"))
                .map(|l| format!("{l}\n"))
                .collect();
            owned_files::write_file(
                Path::new(OFFSITE_CONFIG_FILE),
                offsite_only.as_bytes(),
                0o640,
                owner,
            )?;
        }
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
        let _ = self.unreachable(REPO_OFFSITE);
        let Err(e) = self.pgbackrest("stanza-create", &[]) else {
            log::info!("pgbackrest: stanza {} ready", pgbackrest::STANZA);
            return;
        };
        if self.cfg.offsite.is_some() {
            // stanza-create acts on every repository and knows no --repo: with repo2
            // out of reach, create it on repo1 alone, and on repo2 when it answers.
            log::warn!(
                "pgbackrest stanza-create with repo2 failed ({e}); creating it on repo1 only"
            );
            let local = self.pgbackrest_local("stanza-create");
            if local.is_ok() {
                log::info!("pgbackrest: stanza {} ready on repo1", pgbackrest::STANZA);
                return;
            }
        }
        log::error!("pgbackrest stanza-create failed: {e}");
        self.lock().problem = Some(format!("stanza-create failed: {e}"));
    }

    /// Runs a pgBackRest command against repo1 alone (its own configuration file).
    fn pgbackrest_local(&self, command_name: &str) -> Result<String, BackupError> {
        let account = self
            .account
            .ok_or_else(|| BackupError::Unavailable("user 'postgres' not found".into()))?;
        let mut cmd = account.command(pgbackrest::PROGRAM);
        cmd.args(pgbackrest::args_with(LOCAL_CONFIG_FILE, command_name, &[]));
        Ok(command::run(&mut cmd, &[])?.stdout)
    }

    /// Why backups cannot run, if they cannot.
    fn unavailable(&self) -> Option<String> {
        self.lock().problem.clone()
    }

    /// Re-reads the sets from the repository.
    fn refresh_catalog(&self) -> Result<Vec<BackupSet>, BackupError> {
        let json = self.pgbackrest("info", &["--output=json".to_string()])?;
        let info = pgbackrest::parse_info(&json)?;
        let mut st = self.lock();
        st.sets = info.sets.clone();
        st.broken_repos = info.broken_repos;
        Ok(info.sets)
    }

    /// Re-reads `pg_stat_archiver`: what reached the repository, and what failed.
    pub(super) fn refresh_archive(&self) -> Result<(), BackupError> {
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
        self.lock().archive = archiving::parse_archiver(&out.stdout);
        Ok(())
    }

    /// The catalog for `backup list`: the sets and the window.
    pub fn catalog(&self) -> Result<BackupCatalog, BackupError> {
        if let Some(why) = self.unavailable() {
            return Err(BackupError::Unavailable(why));
        }
        let sets = self.refresh_catalog()?;
        let _ = self.refresh_archive();
        let window = archiving::window(&sets, &self.lock().archive);
        Ok(BackupCatalog { sets, window })
    }

    /// The catalog of a repository unpacked at `repo` (an import not yet swapped in).
    pub(crate) fn catalog_at(&self, repo: &Path) -> Result<BackupCatalog, BackupError> {
        let extra = [
            "--output=json".to_string(),
            "--repo=1".to_string(),
            format!("--repo1-path={}", repo.display()),
        ];
        let sets = pgbackrest::parse_info(&self.pgbackrest("info", &extra)?)?.sets;
        let window = archiving::window(&sets, &self.lock().archive);
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
        let local: Vec<BackupSet> = st
            .sets
            .iter()
            .filter(|s| s.repo == REPO_LOCAL)
            .cloned()
            .collect();
        let offsite = self.cfg.offsite.as_ref().map(|o| OffsiteStatus {
            target: offsite::target(o),
            problem: st.offsite_unresolved.clone().or_else(|| {
                st.broken_repos
                    .iter()
                    .find(|(r, _)| *r == REPO_OFFSITE)
                    .map(|(_, m)| m.clone())
            }),
            last_run: st.runs[1].last.clone(),
            last_ok: st.runs[1].last_ok.clone(),
            shipped_wal: st.shipped.as_ref().map(|s| s.0.clone()),
            shipped_unix: st.shipped.as_ref().map(|s| s.1),
            shipping_problem: st.ship_problem.clone(),
            sets: st.sets.len() - local.len(),
        });
        BackupStatus {
            problem: st.problem.clone(),
            last_run: st.runs[0].last.clone(),
            last_ok: st.runs[0].last_ok.clone(),
            archive: st.archive.clone(),
            window: archiving::window(&st.sets, &st.archive),
            sets: local.len(),
            disk: self.disk.usage(),
            offsite,
        }
    }

    /// One round of the backup thread: refresh what status shows, then take the
    /// backup the schedule says is due, if any.
    fn tick(&self) {
        if self.unavailable().is_some() {
            return;
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
        for repo in self.repos() {
            let last_failure = self
                .lock()
                .runs(repo)
                .last
                .as_ref()
                .filter(|r| !r.ok())
                .map(|r| r.started_unix);
            let of_repo: Vec<BackupSet> = sets.iter().filter(|s| s.repo == repo).cloned().collect();
            if let Some(kind) = schedule::due(now_unix(), &of_repo, &self.cfg, last_failure) {
                if repo == REPO_OFFSITE {
                    // A repository that was unreachable at boot has no stanza yet.
                    self.create_stanza();
                }
                self.run_locked(kind, repo);
            }
        }
    }

    /// Starts the backup thread (the stanza, then a tick every [`TICK`] for ever), the
    /// archive watch (every [`ARCHIVE_WATCH`]) and, with repo2, the WAL shipping.
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
        archiving::start_watch(self);
        if self.cfg.offsite.is_some() {
            shipping::start(self);
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

    /// Before a restored (or put back) cluster starts: see
    /// [`archiving::forget_old_archiving`].
    pub(crate) fn forget_old_archiving(&self) {
        archiving::forget_old_archiving();
    }

    /// Runs a pgBackRest restore into the (empty) data directory.
    pub(crate) fn restore_into_data_dir(&self, extra: &[String]) -> Result<(), BackupError> {
        self.pgbackrest("restore", extra).map(|_| ())
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
