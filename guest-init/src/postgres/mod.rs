//! PostgreSQL on the data disk, run and supervised by PID 1: `initdb` on first boot
//! (no password; provisioning sets it), configuration written on every boot
//! ([`config`]), started as `postgres`, restarted with backoff, fast shutdown on stop;
//! SQL for the host runs through [`query`].
//!
//! Root prepares files in directories the postgres user can write, so every such write
//! goes through [`crate::owned_files`] (no symlink is ever followed).

mod account;
pub mod app_dump;
pub mod cluster;
pub mod config;
mod files;
pub mod logs;
pub mod pgbench;
pub mod query;
pub mod replication;
pub mod tls;
pub mod wal_budget;

use crate::command::{self, CommandError};
use crate::lifecycle::service::{CommandFactory, Service};
use crate::owned_files::{self, OwnedFileError};
use config::SOCKET_DIR;
use files::{clear_stale_lock, data_disk_bytes, write_config, Settings};
use nix::sys::signal::Signal;
use protocol::config::PostgresConfig;
use protocol::messages::{PostgresInfo, ServerState};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use thiserror::Error;
use wal_budget::WalBudget;

pub(crate) use account::{superuser_over_socket, Account};

pub use config::find_bin_dir;

/// The cluster's data directory, on the data disk.
pub const CLUSTER_DIR: &str = "/data/postgres";

/// The server's own output before its logging collector takes over.
pub const STARTUP_LOG: &str = "/data/postgres/startup.log";

/// What can stop PostgreSQL from serving.
#[derive(Debug, Error)]
pub enum PgError {
    #[error("no PostgreSQL server under /usr/lib/postgresql/*/bin in the root image")]
    NotInstalled,
    #[error("the data directory is PostgreSQL {data}, the root image's server is PostgreSQL {image}: it cannot read it (a major upgrade is not supported yet; boot the previous image set: `sovereign update --rollback`)")]
    MajorMismatch { data: String, image: String },
    #[error("user 'postgres' not found in /etc/passwd")]
    NoUser,
    #[error("preparing the server's files: {0}")]
    Prepare(#[from] OwnedFileError),
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("postgres did not accept connections within {waited:?}; last log lines: {log}")]
    NotReady { waited: Duration, log: String },
    #[error("postgres is not reachable on {0}")]
    NotListening(String),
    #[error("the restored server stopped during recovery; its last log lines: {0}")]
    RecoveryFailed(String),
    #[error(transparent)]
    Replication(#[from] replication::ReplicationError),
    #[error("not starting the server: shutdown was requested")]
    ShuttingDown,
    #[error("making the data directory: {0}")]
    Durable(#[from] crate::durable::DurableError),
    #[error("cannot remove the stale lock file {path}: {source}")]
    StaleLock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running server.
#[derive(Debug)]
pub struct Postgres {
    service: Service,
    bin: PathBuf,
    account: Account,
    port: u16,
    /// What the configuration files are rendered from (behind a lock: a replica that
    /// follows a new primary rewrites its replication lines while the server runs).
    settings: std::sync::Mutex<Settings>,
    /// Tailnet addresses in postgresql.conf (behind a lock: status reads it while a
    /// reconfiguration may be under way).
    listen: std::sync::Mutex<Vec<String>>,
    version: String,
    /// What this boot finished or undid of an interrupted step, for the stage report.
    recovered: std::sync::Mutex<Vec<String>>,
    /// The fence's verdict before the server started (a primary with a peer).
    boot_fence: Option<protocol::replication::Fence>,
}

impl Postgres {
    /// Initialises (first boot), configures and starts the server under supervision.
    /// Readiness and provisioning are [`Postgres::bring_up`], so a server that fails
    /// them is still owned by the caller (and stopped at shutdown). `archive` holds the
    /// postgresql.conf lines for continuous archiving when backups run. With a peer,
    /// the data directory is first made what replication asks for
    /// ([`replication::prepare`]), carrying out this boot's `rejoin` request
    /// (`Some(fresh)`) if there is one; `hostname` is this node's tailnet name.
    pub fn start(
        cfg: &PostgresConfig,
        hostname: &str,
        listen: &[String],
        archive: Option<String>,
        rejoin: Option<bool>,
    ) -> Result<Postgres, PgError> {
        let bin = find_bin_dir(Path::new("/")).ok_or(PgError::NotInstalled)?;
        let account = Account::lookup()?;
        let data = Path::new(CLUSTER_DIR);
        // What this boot finished or undid of a step a power cut or a stop interrupted.
        let mut recovered = cluster::clear_unfinished()?;
        for said in &recovered {
            log::warn!("postgres: {said}");
        }
        if cluster::exists() {
            cluster::check_major(&bin)?;
            clear_stale_lock(data, &crate::lifecycle::pids::named("postgres"))?;
        }
        owned_files::prepare_dir(Path::new(SOCKET_DIR), 0o2775, account.owner())?;
        if let Some(material) = &cfg.tls {
            tls::install(material, account.owner())?;
        }
        let mut boot_fence = None;
        let replication_conf = match &cfg.replication {
            Some(r) => {
                replication::write_passfile(r, account)?;
                let prepared = replication::prepare(&bin, account, r, rejoin, cfg.port, hostname)?;
                log::info!(
                    "postgres: replication with {}: {:?}",
                    r.peers.join(", "),
                    prepared.how
                );
                recovered.extend(prepared.recovered);
                boot_fence = prepared.fence;
                Some(prepared.conf)
            }
            None => None,
        };
        if cluster::exists() {
            log::info!("postgres: reusing the cluster in {CLUSTER_DIR}");
        } else {
            cluster::initdb(&bin, account)?;
        }
        owned_files::prepare_dir(data, 0o700, account.owner())?;
        // Debian ships JIT as a separate LLVM-backed module; without it, jit must be off.
        let jit = bin
            .parent()
            .is_some_and(|major| major.join("lib/llvmjit.so").exists());
        let version = command::output(Command::new(bin.join("postgres")).arg("--version"))
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default();
        let settings = Settings {
            port: cfg.port,
            superuser_from_tailnet: cfg.superuser_from_tailnet,
            jit,
            archive,
            wal: WalBudget::for_disk(data_disk_bytes()),
            tls: cfg.tls.is_some(),
            replication: replication_conf,
            memory: protocol::pg_settings::derived_lines(cfg.memory_mib, &cfg.settings),
            overrides: protocol::pg_settings::override_lines(&cfg.settings),
        };
        write_config(account, &settings, listen)?;
        if crate::lifecycle::stop::requested() {
            return Err(PgError::ShuttingDown);
        }
        Ok(Postgres {
            service: start_server(&bin, account),
            bin,
            account,
            port: cfg.port,
            settings: std::sync::Mutex::new(settings),
            listen: std::sync::Mutex::new(listen.to_vec()),
            version,
            recovered: std::sync::Mutex::new(recovered),
            boot_fence,
        })
    }

    /// Adds what the caller finished or undid before the server started (a restore an
    /// earlier boot left unfinished) to what the stage reports.
    pub fn with_recovered(self, said: Option<String>) -> Postgres {
        self.note_recovered(said);
        self
    }

    fn note_recovered(&self, said: impl IntoIterator<Item = String>) {
        if let Ok(mut r) = self.recovered.lock() {
            r.extend(said);
        }
    }

    /// Runs `sql` as the superuser over the unix socket; its output (`-A -t`).
    pub(crate) fn sql(&self, sql: &str) -> Result<String, PgError> {
        let out = command::run_with_input(
            &mut self
                .account
                .psql(&self.bin, self.port, &["-A", "-t", "-f", "-"]),
            sql.as_bytes(),
            &[],
        )?;
        Ok(out.stdout)
    }

    /// The fence's verdict before this server started (a primary with a peer).
    pub fn boot_fence(&self) -> Option<protocol::replication::Fence> {
        self.boot_fence.clone()
    }

    /// This node's identity, from the running server.
    pub fn identity(&self) -> Option<protocol::replication::NodeIdentity> {
        let out = self.sql(protocol::replication::IDENTITY_SQL).ok()?;
        protocol::replication::NodeIdentity::parse(&out)
    }

    /// What to ask a peer: the tools and the account (for [`replication::peer::Peer::ask`]).
    pub(crate) fn tools(&self) -> (&Path, Account) {
        (&self.bin, self.account)
    }

    /// Waits until the server accepts connections, sets passwords and app databases,
    /// and proves it answers on every tailnet address.
    pub fn bring_up(&self, cfg: &PostgresConfig) -> Result<(), PgError> {
        self.wait_ready(Duration::from_secs(120))?;
        self.provision(cfg)?;
        self.check_listening()
    }

    /// Waits until a restored server has finished recovery and been promoted (it then
    /// takes writes). Fails early, with the server's last log lines, when the server
    /// keeps dying (e.g. a recovery target past the end of the archive).
    pub fn wait_promoted(&self, timeout: Duration) -> Result<(), PgError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let out = command::output_with_input(
                &mut self
                    .account
                    .psql(&self.bin, self.port, &["-A", "-t", "-f", "-"]),
                b"select pg_is_in_recovery()",
                4096,
            );
            if matches!(&out, Ok(o) if o.exit.success() && o.stdout.trim() == "f") {
                log::info!("postgres: recovery finished after {:?}", start.elapsed());
                // The checkpointer may have gone to sleep for a whole checkpoint_timeout
                // while recovery was still in progress (archive_timeout does not count
                // then), so the first segment of the new timeline would wait minutes to
                // be archived. A checkpoint wakes it, and it then honours archive_timeout.
                let woke = command::output_with_input(
                    &mut self.account.psql(&self.bin, self.port, &["-q", "-f", "-"]),
                    b"checkpoint",
                    4096,
                );
                if !matches!(&woke, Ok(o) if o.exit.success()) {
                    log::warn!("postgres: the checkpoint after recovery failed: {woke:?}");
                }
                return Ok(());
            }
            if self.service.status().restarts > 0 {
                return Err(PgError::RecoveryFailed(logs::last_lines(12)));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(PgError::NotReady {
            waited: timeout,
            log: logs::last_lines(8),
        })
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), PgError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let ready = command::output(Command::new(self.bin.join("pg_isready")).args([
                "-q",
                "-t",
                "2",
                "-h",
                SOCKET_DIR,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ]));
            if matches!(ready, Ok(o) if o.exit.success()) {
                log::info!(
                    "postgres: accepting connections after {:?}",
                    start.elapsed()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(PgError::NotReady {
            waited: timeout,
            log: logs::last_lines(8),
        })
    }

    /// Sets the passwords and creates the app roles and databases; the SQL (with the
    /// SCRAM verifiers) goes to psql's stdin, never into a file or an argument.
    fn provision(&self, cfg: &PostgresConfig) -> Result<(), PgError> {
        if replication::is_standby() {
            // A replica is read-only: its roles and passwords are the primary's.
            log::info!("postgres: a replica; roles and passwords come from the primary");
            return Ok(());
        }
        match app_dump::settle_unfinished(&self.account, cfg) {
            Ok(said) => self.note_recovered(said),
            Err(e) => log::warn!("postgres: checking for an interrupted db restore: {e}"),
        }
        let sql = config::render_provisioning(cfg, || config::random_salt().unwrap_or([7; 16]));
        command::run_with_input(
            &mut self.account.psql(&self.bin, self.port, &["-q", "-f", "-"]),
            sql.as_bytes(),
            &[],
        )?;
        log::info!(
            "postgres: superuser password set; {} app database(s) provisioned",
            cfg.apps.len()
        );
        Ok(())
    }

    /// Proves the server answers TCP on every tailnet address it should listen on.
    fn check_listening(&self) -> Result<(), PgError> {
        for ip in &self.listen() {
            let Ok(addr) = ip.parse::<IpAddr>() else {
                continue;
            };
            let sa = SocketAddr::new(addr, self.port);
            TcpStream::connect_timeout(&sa, Duration::from_secs(3))
                .map_err(|e| PgError::NotListening(format!("{sa}: {e}")))?;
        }
        Ok(())
    }

    /// True when the server already listens on exactly these tailnet addresses.
    pub fn listening_on(&self, ips: &[String]) -> bool {
        self.listen() == ips
    }

    fn listen(&self) -> Vec<String> {
        self.listen.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Rewrites the configuration for new tailnet addresses and restarts the server
    /// (listen_addresses needs a restart); the data is untouched.
    pub fn relisten(&self, ips: &[String]) -> Result<(), PgError> {
        if let Ok(mut l) = self.listen.lock() {
            *l = ips.to_vec();
        }
        write_config(self.account, &self.settings(), ips)?;
        self.service.restart(Duration::from_secs(60));
        self.wait_ready(Duration::from_secs(120))?;
        self.check_listening()
    }

    fn settings(&self) -> Settings {
        match self.settings.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs a new certificate and has the server reload it (ssl files are re-read
    /// on reload); connections already open keep their session.
    pub fn reload_tls(&self, material: &protocol::config::TlsMaterial) -> Result<(), PgError> {
        tls::install(material, self.account.owner())?;
        command::run_with_input(
            &mut self.account.psql(&self.bin, self.port, &["-q", "-f", "-"]),
            b"select pg_reload_conf()",
            &[],
        )?;
        Ok(())
    }

    /// What the host's status shows.
    pub fn info(&self) -> PostgresInfo {
        let mut listen = vec!["localhost".to_string()];
        listen.extend(self.listen());
        PostgresInfo {
            state: if self.service.pid().is_some() {
                ServerState::Ready
            } else {
                ServerState::Restarting
            },
            version: self.version.clone(),
            data_dir: CLUSTER_DIR.into(),
            listen,
            recovered: self.recovered.lock().map(|r| r.clone()).unwrap_or_default(),
        }
    }

    /// Fast shutdown (SIGINT), SIGKILL when the budget's grace is spent.
    pub fn stop(&self, budget: crate::lifecycle::stop::StopBudget) {
        self.service.stop(budget);
    }

    /// The supervised process, for status.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

fn start_server(bin: &Path, account: Account) -> Service {
    let postgres = bin.join("postgres");
    let make: CommandFactory = Box::new(move || {
        let mut c = account.command(&postgres);
        c.args(["-D", CLUSTER_DIR]);
        match owned_files::open_log(Path::new(STARTUP_LOG), account.owner()) {
            Ok(log) => {
                if let Ok(second) = log.try_clone() {
                    c.stdout(second);
                }
                c.stderr(log);
            }
            Err(e) => log::warn!("postgres: its early output is lost: {e}"),
        }
        c
    });
    Service::start("postgres", Signal::SIGINT, make)
}
