//! PostgreSQL on the data disk, run and supervised by PID 1: `initdb` on first boot
//! (password from a 0600 file removed afterwards), configuration written on every boot
//! (listen on localhost and the tailnet only, scram-sha-256 from the tailnet ranges and
//! nothing else), started as `postgres`, restarted with backoff, fast shutdown on stop.

use crate::command::{self, CommandError};
use crate::scram;
use crate::supervised::{CommandFactory, Supervised};
use nix::sys::signal::Signal;
use nix::unistd::{chown, Gid, Uid, User};
use protocol::config::PostgresConfig;
use protocol::messages::{PostgresInfo, QueryResult, ServerState};
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The cluster's data directory, on the data disk.
pub const DATA_DIR: &str = "/data/postgres";
/// Where the server puts its unix socket.
pub const SOCKET_DIR: &str = "/run/postgresql";
/// Address ranges allowed to connect over TCP: the tailnet's, and nothing else.
pub const ALLOWED_NETWORKS: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

/// What can stop PostgreSQL from serving.
#[derive(Debug, Error)]
pub enum PgError {
    /// No server binaries in the image.
    #[error("no PostgreSQL server under /usr/lib/postgresql/*/bin in the root image")]
    NotInstalled,
    /// The `postgres` user is missing.
    #[error("user 'postgres' not found in /etc/passwd")]
    NoUser,
    /// A file or directory could not be prepared.
    #[error("preparing {path}: {source}")]
    Prepare {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// initdb, psql or pg_isready failed.
    #[error(transparent)]
    Tool(#[from] CommandError),
    /// The server did not accept connections in time.
    #[error("postgres did not accept connections within {waited:?}; last log lines: {log}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The end of the server's log.
        log: String,
    },
    /// The server runs but does not answer on a listen address.
    #[error("postgres is not reachable on {0}")]
    NotListening(String),
}

fn prep(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> PgError {
    let path = path.as_ref().display().to_string();
    move |source| PgError::Prepare { path, source }
}

/// Locates `/usr/lib/postgresql/<major>/bin`, preferring the highest major.
pub fn find_bin_dir(root: &Path) -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir(root.join("usr/lib/postgresql"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// postgresql.conf, sized for a 1 GiB VM; `listen` adds to localhost.
pub fn render_postgresql_conf(port: u16, listen: &[String], jit: bool) -> String {
    let mut addrs = vec!["localhost".to_string()];
    addrs.extend(listen.iter().cloned());
    format!(
        "# Written by sovereign-init on every boot; edits here are overwritten.\n\
         listen_addresses = '{listen}'\n\
         port = {port}\n\
         unix_socket_directories = '{SOCKET_DIR}'\n\
         max_connections = 50\n\
         password_encryption = scram-sha-256\n\
         # Memory for a 1 GiB VM\n\
         shared_buffers = 128MB\n\
         effective_cache_size = 512MB\n\
         work_mem = 4MB\n\
         maintenance_work_mem = 64MB\n\
         dynamic_shared_memory_type = posix\n\
         # Durability: every commit reaches the disk\n\
         fsync = on\n\
         synchronous_commit = on\n\
         full_page_writes = on\n\
         wal_level = replica\n\
         min_wal_size = 80MB\n\
         max_wal_size = 512MB\n\
         checkpoint_completion_target = 0.9\n\
         jit = {jit}\n\
         # Logging, on the data disk\n\
         logging_collector = on\n\
         log_directory = 'log'\n\
         log_filename = 'postgresql-%a.log'\n\
         log_truncate_on_rotation = on\n\
         log_rotation_age = 1d\n\
         log_connections = on\n\
         log_disconnections = on\n\
         log_line_prefix = '%m [%p] %q%u@%d from %h '\n\
         log_timezone = 'UTC'\n\
         timezone = 'UTC'\n\
         datestyle = 'iso, mdy'\n\
         lc_messages = 'C'\n\
         lc_monetary = 'C'\n\
         lc_numeric = 'C'\n\
         lc_time = 'C'\n\
         default_text_search_config = 'pg_catalog.english'\n",
        listen = addrs.join(","),
        jit = if jit { "on" } else { "off" },
    )
}

/// pg_hba.conf: peer over the unix socket, scram-sha-256 from the tailnet, nothing else.
pub fn render_pg_hba() -> String {
    let mut s = String::from(
        "# Written by sovereign-init on every boot; edits here are overwritten.\n\
         # TYPE  DATABASE  USER  ADDRESS  METHOD\n\
         local   all       all            peer\n",
    );
    for net in ALLOWED_NETWORKS {
        s.push_str(&format!("host    all       all   {net}  scram-sha-256\n"));
    }
    s
}

/// SQL that sets the superuser's password and creates each app's role and database.
/// Passwords go in as SCRAM verifiers, never as plaintext.
pub fn render_provisioning(cfg: &PostgresConfig, salt: impl Fn() -> [u8; 16]) -> String {
    let mut sql = format!(
        "ALTER ROLE postgres PASSWORD '{}';\n",
        scram::verifier(cfg.superuser_password.expose(), &salt())
    );
    for app in &cfg.apps {
        // Names are validated SQL identifiers (see GuestConfig::validate).
        let n = &app.name;
        sql.push_str(&format!(
            "SELECT 'CREATE ROLE {n} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{n}')\\gexec\n\
             ALTER ROLE {n} PASSWORD '{}';\n\
             SELECT 'CREATE DATABASE {n} OWNER {n}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{n}')\\gexec\n\
             REVOKE ALL ON DATABASE {n} FROM PUBLIC;\n",
            scram::verifier(app.password.expose(), &salt())
        ));
    }
    sql
}

/// Writes `content` to `path` with `mode`, owned by `uid:gid`.
fn write_owned(path: &Path, content: &[u8], mode: u32, uid: Uid, gid: Gid) -> Result<(), PgError> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(prep(path))?;
    f.write_all(content).map_err(prep(path))?;
    f.sync_all().map_err(prep(path))?;
    chown(path, Some(uid), Some(gid)).map_err(|e| PgError::Prepare {
        path: path.display().to_string(),
        source: e.into(),
    })
}

fn mkdir_owned(path: &Path, mode: u32, uid: Uid, gid: Gid) -> Result<(), PgError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(prep(path))?;
    chown(path, Some(uid), Some(gid)).map_err(|e| PgError::Prepare {
        path: path.display().to_string(),
        source: e.into(),
    })
}

/// Which `postgres` account to run as.
#[derive(Debug, Clone, Copy)]
struct Account {
    uid: Uid,
    gid: Gid,
}

impl Account {
    fn lookup() -> Result<Account, PgError> {
        let user = User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or(PgError::NoUser)?;
        Ok(Account {
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// A command that runs as postgres, with a clean environment.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.uid(self.uid.as_raw())
            .gid(self.gid.as_raw())
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/var/lib/postgresql")
            .env("LANG", "C.UTF-8");
        c
    }
}

/// The running server.
#[derive(Debug)]
pub struct Postgres {
    service: Supervised,
    bin: PathBuf,
    account: Account,
    port: u16,
    /// Tailnet addresses in postgresql.conf (behind a lock: status reads it while a
    /// reconfiguration may be under way).
    listen: std::sync::Mutex<Vec<String>>,
    version: String,
    jit: bool,
}

impl Postgres {
    /// Initialises (first boot), configures and starts the server under supervision.
    /// Readiness and provisioning are [`Postgres::bring_up`], so a server that fails
    /// them is still owned by the caller (and stopped at shutdown).
    pub fn start(cfg: &PostgresConfig, listen: &[String]) -> Result<Postgres, PgError> {
        let bin = find_bin_dir(Path::new("/")).ok_or(PgError::NotInstalled)?;
        let account = Account::lookup()?;
        let data = Path::new(DATA_DIR);
        mkdir_owned(data, 0o700, account.uid, account.gid)?;
        mkdir_owned(Path::new(SOCKET_DIR), 0o2775, account.uid, account.gid)?;
        if !data.join("PG_VERSION").exists() {
            initdb(&bin, account, cfg)?;
        } else {
            log::info!("postgres: reusing the cluster in {DATA_DIR}");
        }
        // Debian ships JIT as a separate LLVM-backed module; without it, jit must be off.
        let jit = bin
            .parent()
            .is_some_and(|major| major.join("lib/llvmjit.so").exists());
        let version = command::output(Command::new(bin.join("postgres")).arg("--version"))
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default();
        write_config(account, cfg.port, listen, jit)?;
        let pg = Postgres {
            service: start_server(&bin, account),
            bin,
            account,
            port: cfg.port,
            listen: std::sync::Mutex::new(listen.to_vec()),
            version,
            jit,
        };
        Ok(pg)
    }

    /// Waits until the server accepts connections, sets passwords and app databases,
    /// and proves it answers on every tailnet address.
    pub fn bring_up(&self, cfg: &PostgresConfig) -> Result<(), PgError> {
        self.wait_ready(Duration::from_secs(120))?;
        self.provision(cfg)?;
        self.check_listening()
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
            log: server_log_tail(),
        })
    }

    fn psql(&self, extra: &[&str]) -> Command {
        let mut c = self.account.command(self.bin.join("psql"));
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            SOCKET_DIR,
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]);
        c.args(extra);
        c
    }

    fn provision(&self, cfg: &PostgresConfig) -> Result<(), PgError> {
        let sql = render_provisioning(cfg, || scram::random_salt().unwrap_or([7; 16]));
        let path = Path::new("/run/postgresql/provision.sql");
        write_owned(
            path,
            sql.as_bytes(),
            0o600,
            self.account.uid,
            self.account.gid,
        )?;
        let result = command::run(&mut self.psql(&["-f", &path.display().to_string()]), &[]);
        let _ = fs::remove_file(path);
        result?;
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
        write_config(self.account, self.port, ips, self.jit)?;
        self.service.restart(Duration::from_secs(60));
        self.wait_ready(Duration::from_secs(120))?;
        self.check_listening()
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
            data_dir: DATA_DIR.into(),
            listen,
        }
    }

    /// Fast shutdown (SIGINT), SIGKILL after `deadline`.
    pub fn stop(&self, deadline: Duration) {
        self.service.stop(deadline);
    }

    /// The supervised process, for status.
    pub fn service(&self) -> &Supervised {
        &self.service
    }
}

/// Writes postgresql.conf and pg_hba.conf into the data directory.
fn write_config(account: Account, port: u16, listen: &[String], jit: bool) -> Result<(), PgError> {
    let data = Path::new(DATA_DIR);
    let conf = render_postgresql_conf(port, listen, jit);
    write_owned(
        &data.join("postgresql.conf"),
        conf.as_bytes(),
        0o600,
        account.uid,
        account.gid,
    )?;
    write_owned(
        &data.join("pg_hba.conf"),
        render_pg_hba().as_bytes(),
        0o600,
        account.uid,
        account.gid,
    )
}

fn start_server(bin: &Path, account: Account) -> Supervised {
    let postgres = bin.join("postgres");
    let make: CommandFactory = Box::new(move || {
        let mut c = account.command(&postgres);
        c.args(["-D", DATA_DIR]);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{DATA_DIR}/startup.log"));
        if let Ok(log) = log {
            if let Ok(second) = log.try_clone() {
                c.stdout(second);
            }
            c.stderr(log);
        }
        c
    });
    Supervised::start("postgres", Signal::SIGINT, make)
}

fn initdb(bin: &Path, account: Account, cfg: &PostgresConfig) -> Result<(), PgError> {
    log::info!("postgres: first boot, running initdb in {DATA_DIR}");
    let pwfile = Path::new("/run/postgresql/initdb-pw");
    write_owned(
        pwfile,
        cfg.superuser_password.expose().as_bytes(),
        0o600,
        account.uid,
        account.gid,
    )?;
    let result = command::run(
        account.command(bin.join("initdb")).args([
            "-D",
            DATA_DIR,
            "-U",
            "postgres",
            &format!("--pwfile={}", pwfile.display()),
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--data-checksums",
        ]),
        &[],
    );
    let _ = fs::remove_file(pwfile);
    result?;
    Ok(())
}

fn server_log_tail() -> String {
    let mut lines: Vec<String> = Vec::new();
    if let Ok(s) = fs::read_to_string(format!("{DATA_DIR}/startup.log")) {
        lines.extend(s.lines().map(str::to_string));
    }
    let newest = fs::read_dir(format!("{DATA_DIR}/log")).ok().and_then(|rd| {
        rd.flatten()
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
    });
    if let Some(e) = newest {
        if let Ok(s) = fs::read_to_string(e.path()) {
            lines.extend(s.lines().map(str::to_string));
        }
    }
    let keep = lines.len().saturating_sub(8);
    lines[keep..].join(" | ")
}

/// Runs SQL for the host as the `postgres` superuser over the unix socket.
pub fn query(id: u64, sql: &str, port: u16) -> QueryResult {
    let fail = |output: String| QueryResult {
        id,
        ok: false,
        output,
    };
    let Some(bin) = find_bin_dir(Path::new("/")) else {
        return fail(PgError::NotInstalled.to_string());
    };
    let Ok(account) = Account::lookup() else {
        return fail(PgError::NoUser.to_string());
    };
    let mut cmd = account.command(bin.join("psql"));
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        SOCKET_DIR,
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
        sql,
    ]);
    match command::output(&mut cmd) {
        Ok(o) if o.exit.success() => QueryResult {
            id,
            ok: true,
            output: o.stdout,
        },
        Ok(o) => fail(
            format!(
                "{}{}",
                o.stderr.trim(),
                if o.stdout.is_empty() { "" } else { "\n" }
            ) + o.stdout.trim(),
        ),
        Err(e) => fail(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::{AppDatabase, Secret};

    #[test]
    fn hba_allows_only_the_tailnet() {
        let hba = render_pg_hba();
        let rules: Vec<&str> = hba.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(rules.len(), 3);
        assert!(rules[0].starts_with("local") && rules[0].ends_with("peer"));
        assert!(rules[1].contains("100.64.0.0/10") && rules[1].ends_with("scram-sha-256"));
        assert!(rules[2].contains("fd7a:115c:a1e0::/48") && rules[2].ends_with("scram-sha-256"));
        assert!(!hba.contains("trust") && !hba.contains("0.0.0.0") && !hba.contains("md5"));
    }

    #[test]
    fn conf_listens_on_localhost_and_the_tailnet_only() {
        let conf = render_postgresql_conf(
            5432,
            &["100.64.0.7".into(), "fd7a:115c:a1e0::7".into()],
            false,
        );
        assert!(conf.contains("listen_addresses = 'localhost,100.64.0.7,fd7a:115c:a1e0::7'\n"));
        assert!(conf.contains("jit = off\n"));
        assert!(conf.contains("log_connections = on\n"));
        let local = render_postgresql_conf(5432, &[], true);
        assert!(local.contains("listen_addresses = 'localhost'\n"));
        assert!(!local.contains('*'));
    }

    #[test]
    fn provisioning_never_contains_plaintext() {
        let cfg = PostgresConfig {
            superuser_password: Secret::new("super-secret-pw"),
            port: 5432,
            apps: vec![AppDatabase {
                name: "forgejo".into(),
                password: Secret::new("forgejo-secret-pw"),
            }],
        };
        let sql = render_provisioning(&cfg, || [1; 16]);
        assert!(!sql.contains("super-secret-pw") && !sql.contains("forgejo-secret-pw"));
        assert_eq!(sql.matches("SCRAM-SHA-256$4096:").count(), 2);
        assert!(sql.contains("CREATE DATABASE forgejo OWNER forgejo"));
    }

    #[test]
    fn finds_the_highest_major() {
        let root = tempfile::tempdir().unwrap();
        for major in ["15", "17", "notanumber"] {
            let bin = root
                .path()
                .join("usr/lib/postgresql")
                .join(major)
                .join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("postgres"), "").unwrap();
        }
        assert_eq!(
            find_bin_dir(root.path()).unwrap(),
            root.path().join("usr/lib/postgresql/17/bin")
        );
        assert!(find_bin_dir(&root.path().join("none")).is_none());
    }
}
