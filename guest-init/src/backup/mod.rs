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
mod catalog;
pub mod cluster;
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
mod stanza;
pub mod unfinished;

use crate::command;
use crate::disks::{Disk, DiskError};
use crate::owned_files::{self, Owner};
use crate::postgres::Account;
use pgbackrest::{Repos, BACKUP_MOUNT, REPO1_PATH, WORK_DIR};
use protocol::backup::{
    ArchiveState, BackupConfig, BackupRun, BackupSet, BackupStatus, OffsiteStatus, REPO_LOCAL,
    REPO_OFFSITE,
};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;

/// The label of the backup filesystem.
pub const BACKUP_LABEL: &str = "sovereign-backup";

/// How often the backup thread asks the schedule.
const TICK: Duration = Duration::from_secs(30);

/// How often the backup thread reads repo2's sets (repo1's: every tick).
const OFFSITE_REFRESH: Duration = Duration::from_secs(600);

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

#[derive(Debug, Default)]
struct State {
    /// Why backups do not work, when they don't.
    problem: Option<String>,
    /// `problem` is a failed stanza-create that the next tick tries again (a cluster's
    /// node).
    stanza_failed: bool,
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
    /// Whether repo2's stanza was made (or found) this boot.
    offsite_stanza: bool,
    /// When repo2's sets were last read.
    offsite_refreshed: Option<std::time::Instant>,
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
    /// The other nodes, when this node is one of a cluster's.
    cluster: Option<cluster::ClusterRepo>,
    /// The data disk's size, for the archive queue's bound.
    data_disk_bytes: u64,
    /// pgBackRest's TLS server for them, once started.
    server: Mutex<Option<crate::lifecycle::service::Service>>,
    pg_port: u16,
    disk: Disk,
    account: Option<Account>,
    /// Held by a backup or a restore: one at a time.
    work: Mutex<()>,
    /// Set once an export this boot waits for became the repository.
    imported: (Mutex<bool>, std::sync::Condvar),
    state: Mutex<State>,
}

impl Backups {
    /// Mounts the backup disk (formatting it when blank), prepares repo1, the spool and
    /// the configuration. Never fails: what went wrong is kept and shown in status, and
    /// [`Backups::archive_settings`] is then empty so postgres runs without archiving.
    pub fn prepare(
        cfg: &BackupConfig,
        pg_port: u16,
        data_disk_bytes: u64,
        cluster: Option<cluster::ClusterRepo>,
    ) -> Backups {
        let b = Backups {
            cfg: cfg.clone(),
            cluster,
            data_disk_bytes,
            server: Mutex::new(None),
            pg_port,
            disk: Disk::new(BACKUP_MOUNT, BACKUP_LABEL),
            account: Account::lookup().ok(),
            work: Mutex::new(()),
            imported: (Mutex::new(false), std::sync::Condvar::new()),
            state: Mutex::default(),
        };
        if let Err(e) = b.prepare_files() {
            log::error!("backups disabled: {e}");
            b.lock().problem = Some(e.to_string());
        }
        b
    }

    fn prepare_files(&self) -> Result<(), BackupError> {
        let owner = self.owner()?;
        let info = self.disk.mount(Path::new(&self.cfg.device))?;
        log::info!("backup disk: {info}");
        export::clear_unfinished_imports();
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
        self.recovery_finished();
        let root = Owner { uid: 0, gid: 0 };
        for dir in [
            pgbackrest::ROOT_RUN_DIR.to_string(),
            format!("{WORK_DIR}/log-root"),
            format!("{WORK_DIR}/spool-root"),
        ] {
            owned_files::prepare_dir(Path::new(&dir), 0o700, root)?;
        }
        if let Some(o) = &self.cfg.offsite {
            offsite::write_credentials(o)?;
        }
        self.write_configs()?;
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
            .then(|| pgbackrest::archive_settings(&self.cfg, self.cluster.is_some()))
    }

    /// Runs a pgBackRest command on the repositories its `--repo=N` names (both without
    /// one; see [`Repos::for_args`]); its error output on failure.
    fn pgbackrest(&self, command_name: &str, extra: &[String]) -> Result<String, BackupError> {
        self.pgbackrest_on(Repos::for_args(extra), command_name, extra)
    }

    /// Runs a pgBackRest command with the configuration of `repos`: as postgres for
    /// repo1 alone, as root when repo2 is in it ([`Repos::runs_as_root`]).
    pub(super) fn pgbackrest_on(
        &self,
        repos: Repos,
        command_name: &str,
        extra: &[String],
    ) -> Result<String, BackupError> {
        let args = pgbackrest::args_with(repos.config_file(), command_name, extra);
        let mut cmd = if repos.runs_as_root() {
            std::process::Command::new(pgbackrest::PROGRAM)
        } else {
            self.account
                .ok_or_else(|| BackupError::Unavailable("user 'postgres' not found".into()))?
                .command(pgbackrest::PROGRAM)
        };
        cmd.args(args);
        Ok(command::run(&mut cmd, &[])?.stdout)
    }

    /// Why backups cannot run, if they cannot.
    fn unavailable(&self) -> Option<String> {
        self.lock().problem.clone()
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

    /// Grows the backup disk's filesystem when the host made the disk larger.
    pub fn grow_disk_if_device_grew(&self) -> Option<String> {
        self.disk.grow_if_device_grew()
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
        if let Err(e) = self.refresh_repo(REPO_LOCAL) {
            log::warn!("backups: cannot read the catalog: {e}");
            return;
        }
        self.refresh_offsite_now_and_then();
        let sets = self.lock().sets.clone();
        for repo in self.repos() {
            let last_failure = self
                .lock()
                .runs(repo)
                .last
                .as_ref()
                .filter(|r| !r.ok())
                .map(|r| r.started_unix);
            let of_repo: Vec<BackupSet> = sets.iter().filter(|s| s.repo == repo).cloned().collect();
            if let Some(kind) =
                schedule::due(crate::clock::now_unix(), &of_repo, &self.cfg, last_failure)
            {
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
                let mut stanza = me.create_stanza();
                loop {
                    if !stanza && me.lock().stanza_failed {
                        stanza = me.create_stanza();
                    }
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

    /// Says that the export the boot waits for is the repository now.
    pub(crate) fn import_arrived(&self) {
        let (done, cv) = &self.imported;
        *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Waits up to `limit` for [`Backups::import_arrived`]; false when it did not come
    /// (or a stop was asked for).
    pub(crate) fn wait_for_import(&self, limit: std::time::Duration) -> bool {
        let (done, cv) = &self.imported;
        let until = std::time::Instant::now() + limit;
        let mut arrived = done.lock().unwrap_or_else(|p| p.into_inner());
        while !*arrived {
            let now = std::time::Instant::now();
            if now >= until || crate::lifecycle::stop::requested() {
                return false;
            }
            let step = (until - now).min(std::time::Duration::from_secs(1));
            arrived = cv
                .wait_timeout(arrived, step)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
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

    /// Runs a pgBackRest restore into the (empty) data directory. From repo2 the
    /// restored server's `restore_command` (run by postgres) needs repo2's key and
    /// passphrase: a postgres-readable copy is written for the time it recovers,
    /// removed by [`Backups::recovery_finished`].
    pub(crate) fn restore_into_data_dir(&self, extra: &[String]) -> Result<(), BackupError> {
        let mut args = extra.to_vec();
        if let (Repos::Offsite, Some(o)) = (Repos::for_args(extra), &self.cfg.offsite) {
            let owner = self.owner()?;
            offsite::write_recovery_key(o, owner)?;
            let conf = pgbackrest::render_config(&self.cfg, Repos::Recovery, self.pg_port, 0);
            let path = Repos::Recovery.config_file();
            owned_files::write_file(Path::new(path), conf.as_bytes(), 0o600, owner)?;
            args.push(format!(
                "--recovery-option=restore_command={} --config={path} --stanza={} archive-get %f \"%p\"",
                pgbackrest::PROGRAM,
                pgbackrest::STANZA
            ));
            log::warn!("restoring from repo2: postgres may read its key until recovery ends");
        }
        self.pgbackrest("restore", &args).map(|_| ())
    }

    /// Removes what a recovery from repo2 needed postgres to read (see
    /// [`Backups::restore_into_data_dir`]); called once the restored server is promoted
    /// or gave up, and at every boot.
    pub(crate) fn recovery_finished(&self) {
        for f in [
            Repos::Recovery.config_file(),
            offsite::RECOVERY_KEY_FILE,
            offsite::RECOVERY_KNOWN_HOSTS,
        ] {
            match std::fs::remove_file(f) {
                Ok(()) => log::info!("removed {f}: recovery from repo2 is over"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::error!("cannot remove {f}: {e}"),
            }
        }
    }

    /// True when the backup disk and pgBackRest's files are ready.
    pub fn usable(&self) -> bool {
        self.lock().problem.is_none()
    }

    /// The backup disk's gate, for shutdown.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}
