//! `sovereign db dump APP` and `db restore APP FILE`: one app's database as
//! `pg_dump -Fc`, out to the host and back in. A restore never drops the only copy and
//! never leaves the app without its database, whatever step a power cut interrupts:
//! the incoming dump is received whole (its SHA-256 checked) before anything is
//! touched; it is loaded into a database of its own (`<app>_restoring_<time>`) while the
//! app keeps working; only then, in one transaction, the current database becomes
//! `<app>_before_restore_<time>` and the loaded one takes the app's name. A failed load
//! is dropped and changes nothing; a boot after a power cut drops a half-loaded one
//! ([`settle_unfinished`]) and lets connections in again.

use super::{find_bin_dir, Account, PgError};
use crate::command::{self, CommandError};
use protocol::bulk::{ChunkReader, ChunkWriter};
use protocol::config::PostgresConfig;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::process::Command;
use thiserror::Error;

/// Where a received dump waits (root-only) until it is loaded: the data disk, which
/// has the room a dump of its own database needs.
const INCOMING_DIR: &str = "/data/incoming";

/// Room kept free on the data disk beyond the received dump.
const SPACE_MARGIN: u64 = 256 << 20;

/// Why a dump or a restore of an app's database did not complete.
#[derive(Debug, Error)]
pub enum AppDumpError {
    #[error("app {app:?} is not in this VM's spec (its apps: {known})")]
    UnknownApp { app: String, known: String },
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("the data connection: {0}")]
    Stream(io::Error),
    #[error("keeping the received dump in {INCOMING_DIR}: {0}")]
    Incoming(io::Error),
    #[error(
        "the data disk has {free_mib} MiB free; a {need_mib} MiB dump needs that and a margin"
    )]
    NoSpace { free_mib: u64, need_mib: u64 },
    #[error("{0:?} is not a database that can be dumped (an app's, an orphan, or a kept copy)")]
    NotDumpable(String),
    #[error("the name {0:?} for the kept database is longer than PostgreSQL allows")]
    NameTooLong(String),
    #[error("{failed}; the previous database is back under its name")]
    RolledBack { failed: String },
    #[error("{failed}; {app} is under its name but still closed to new connections (opening it failed: {reopen}); the next start opens it")]
    StillClosed {
        failed: String,
        app: String,
        reopen: String,
    },
}

/// Refuses a name that cannot be a database to dump: not an SQL identifier, or the
/// server's own `postgres` (an app's database, an orphan or a copy kept by a restore
/// can be dumped; `db drop` dumps before it drops).
pub fn check_dumpable(name: &str) -> Result<(), AppDumpError> {
    if protocol::config::is_sql_identifier(name)
        && name != "postgres"
        && !name.starts_with("template")
    {
        return Ok(());
    }
    Err(AppDumpError::NotDumpable(name.to_string()))
}

/// Refuses an app the configuration does not name.
pub fn check_app(cfg: &PostgresConfig, app: &str) -> Result<(), AppDumpError> {
    if cfg.apps.iter().any(|a| a.name == app) {
        return Ok(());
    }
    Err(AppDumpError::UnknownApp {
        app: app.to_string(),
        known: cfg
            .apps
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A PostgreSQL client program as `role` over the unix socket, in database `db`.
fn client(
    account: &Account,
    program: &str,
    port: u16,
    role: &str,
    db: &str,
) -> Result<Command, PgError> {
    let bin = find_bin_dir(Path::new("/")).ok_or(PgError::NotInstalled)?;
    let mut c = account.command(bin.join(program));
    c.args(super::account::role_over_socket(port, role))
        .args(["-d", db]);
    Ok(c)
}

/// Runs `sql` as the superuser in the `postgres` database.
fn psql(account: &Account, port: u16, sql: &str) -> Result<String, AppDumpError> {
    let mut c = client(account, "psql", port, "postgres", "postgres")?;
    c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    Ok(command::run_with_input(&mut c, sql.as_bytes(), &[])?.stdout)
}

/// Streams `pg_dump -Fc` of `app`'s database into `out`; returns its size and SHA-256.
pub fn dump(
    cfg: &PostgresConfig,
    app: &str,
    out: impl Write,
) -> Result<(u64, String), AppDumpError> {
    check_dumpable(app)?;
    let account = Account::lookup()?;
    let mut writer = ChunkWriter::new(out);
    let mut c = client(&account, "pg_dump", cfg.port, "postgres", app)?;
    c.arg("-Fc");
    command::stream(&mut c, None, &mut writer)?;
    writer.finish().map_err(AppDumpError::Stream)
}

/// The database a restore of `app` loads into before it takes the app's name.
fn loading_name(app: &str, stamp: i64) -> String {
    format!("{app}_restoring_{stamp}")
}

/// Receives a dump of `bytes` bytes and makes it `app`'s database, keeping the current
/// one under another name. Returns what was done, the size and the SHA-256.
pub fn restore(
    cfg: &PostgresConfig,
    app: &str,
    input: impl Read,
    bytes: u64,
    stamp: i64,
) -> Result<(String, u64, String), AppDumpError> {
    check_app(cfg, app)?;
    let account = Account::lookup()?;
    let kept = format!("{app}_before_restore_{stamp}");
    let loading = loading_name(app, stamp);
    for name in [&kept, &loading] {
        if name.len() > 63 {
            return Err(AppDumpError::NameTooLong(name.clone()));
        }
    }
    let (mut file, size, sha) = receive(input, bytes)?;
    // A new database owned by the app, closed to others (provisioning's grants), that
    // the app does not know about yet: its own database keeps serving meanwhile.
    psql(
        &account,
        cfg.port,
        &format!(
            "DROP DATABASE IF EXISTS {loading};\n\
             CREATE DATABASE {loading} OWNER {app};\n\
             REVOKE ALL ON DATABASE {loading} FROM PUBLIC;\n"
        ),
    )?;
    log::info!("db restore {app}: loading the dump into {loading}");
    // As the app's own role, not the superuser with SET ROLE: a dump is the app's data
    // and may hold any SQL, and a `RESET ROLE` in it must not reach past the app.
    let mut c = client(&account, "pg_restore", cfg.port, app, &loading)?;
    c.args([
        "--no-owner",
        "--no-acl",
        "--single-transaction",
        "--exit-on-error",
    ]);
    let loaded = file
        .rewind()
        .map_err(AppDumpError::Incoming)
        .and_then(|()| Ok(command::stream(&mut c, Some(file), &mut io::sink())?));
    if let Err(e) = loaded {
        log::error!("db restore {app}: {e}; dropping {loading}, {app} is untouched");
        let _ = psql(
            &account,
            cfg.port,
            &format!("DROP DATABASE IF EXISTS {loading} WITH (FORCE);\n"),
        );
        return Err(AppDumpError::RolledBack {
            failed: format!("pg_restore of the dump failed: {e}"),
        });
    }
    // The swap: the app's sessions end, then both renames commit together or not at
    // all. A power cut before the commit leaves the app's database in place (closed to
    // new sessions until the next boot's provisioning opens it again).
    let swapped = psql(
        &account,
        cfg.port,
        &format!(
            "ALTER DATABASE {app} WITH ALLOW_CONNECTIONS false;\n\
             SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname IN ('{app}', '{loading}');\n\
             BEGIN;\n\
             ALTER DATABASE {app} RENAME TO {kept};\n\
             ALTER DATABASE {loading} RENAME TO {app};\n\
             ALTER DATABASE {kept} WITH ALLOW_CONNECTIONS true;\n\
             COMMIT;\n"
        ),
    );
    if let Err(e) = swapped {
        log::error!("db restore {app}: the swap failed: {e}; {app} stays as it was");
        let failed = format!("swapping the loaded database in failed: {e}");
        let reopened = psql(
            &account,
            cfg.port,
            &format!("ALTER DATABASE {app} WITH ALLOW_CONNECTIONS true;\n"),
        );
        let _ = psql(
            &account,
            cfg.port,
            &format!("DROP DATABASE IF EXISTS {loading} WITH (FORCE);\n"),
        );
        return Err(match reopened {
            Ok(_) => AppDumpError::RolledBack { failed },
            Err(e) => AppDumpError::StillClosed {
                failed,
                app: app.to_string(),
                reopen: e.to_string(),
            },
        });
    }
    Ok((
        format!(
            "restored the database of app {app}; the previous one is kept as {kept} (drop it with: sovereign db drop --sql {kept})"
        ),
        size,
        sha,
    ))
}

/// At boot, before provisioning: drops what an interrupted restore was loading and
/// opens an app's database a swap cut short left closed. Returns one line for each.
pub(crate) fn settle_unfinished(
    account: &Account,
    cfg: &PostgresConfig,
) -> Result<Vec<String>, AppDumpError> {
    let mut said = Vec::new();
    for app in &cfg.apps {
        let n = &app.name;
        let out = psql(
            account,
            cfg.port,
            &format!(
                "SELECT datname FROM pg_database WHERE datname ~ '^{n}_restoring_[0-9]+$' \
                 UNION ALL SELECT '!' FROM pg_database WHERE datname = '{n}' AND NOT datallowconn;\n"
            ),
        )?;
        for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line == "!" {
                psql(
                    account,
                    cfg.port,
                    &format!("ALTER DATABASE {n} WITH ALLOW_CONNECTIONS true;\n"),
                )?;
                said.push(format!("a db restore of {n} was interrupted while it swapped databases (a power cut or a stop); {n} is as it was and accepts connections again"));
            } else if protocol::config::is_sql_identifier(line) {
                psql(account, cfg.port, &format!("DROP DATABASE {line};\n"))?;
                said.push(format!("a db restore of {n} was interrupted while it loaded the dump (a power cut or a stop); {n} is as it was and the partial {line} was dropped"));
            }
        }
    }
    for line in &said {
        log::warn!("postgres: {line}");
    }
    Ok(said)
}

/// Receives the whole dump into an unnamed root-only file on the data disk and checks
/// its SHA-256 before anything else happens.
fn receive(input: impl Read, bytes: u64) -> Result<(File, u64, String), AppDumpError> {
    if let Some(usage) = crate::disk_watch::usage_at(Path::new(crate::disks::DATA_MOUNT), false) {
        if usage.available_bytes < bytes.saturating_add(SPACE_MARGIN) {
            return Err(AppDumpError::NoSpace {
                free_mib: usage.available_bytes >> 20,
                need_mib: bytes >> 20,
            });
        }
    }
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(INCOMING_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(AppDumpError::Incoming(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(INCOMING_DIR)
        .map_err(AppDumpError::Incoming)?;
    let mut reader = ChunkReader::new(input);
    io::copy(&mut reader, &mut file).map_err(AppDumpError::Stream)?;
    let sha = reader.sha256().unwrap_or_default().to_string();
    Ok((file, reader.payload_bytes(), sha))
}
