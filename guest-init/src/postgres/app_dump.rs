//! `sovereign db dump APP` and `db restore APP FILE`: one app's database as
//! `pg_dump -Fc`, out to the host and back in. A restore never drops the only copy:
//! the incoming dump is received whole (its SHA-256 checked) before the database is
//! touched, the current database is renamed to `<app>_before_restore_<time>`, and if
//! `pg_restore` fails the new one is dropped and the old one takes its name back.

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

/// A PostgreSQL client program as the superuser over the unix socket.
fn client(account: &Account, program: &str, port: u16, db: &str) -> Result<Command, PgError> {
    let bin = find_bin_dir(Path::new("/")).ok_or(PgError::NotInstalled)?;
    let mut c = account.command(bin.join(program));
    c.args(super::superuser_over_socket(port)).args(["-d", db]);
    Ok(c)
}

/// Runs `sql` as the superuser in the `postgres` database.
fn psql(account: &Account, port: u16, sql: &str) -> Result<String, AppDumpError> {
    let mut c = client(account, "psql", port, "postgres")?;
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
    let mut c = client(&account, "pg_dump", cfg.port, app)?;
    c.arg("-Fc");
    command::stream(&mut c, None, &mut writer)?;
    writer.finish().map_err(AppDumpError::Stream)
}

/// Receives a dump of `bytes` bytes and loads it into `app`'s database, keeping the
/// current one under another name. Returns what was done, the size and the SHA-256.
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
    if kept.len() > 63 {
        return Err(AppDumpError::NameTooLong(kept));
    }
    let (mut file, size, sha) = receive(input, bytes)?;
    // The app's sessions end and its database moves aside; a new, empty one owned by
    // the app takes the name (provisioning's grants: CONNECT only for the owner).
    psql(
        &account,
        cfg.port,
        &format!(
            "ALTER DATABASE {app} WITH ALLOW_CONNECTIONS false;\n\
             SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = '{app}';\n\
             ALTER DATABASE {app} RENAME TO {kept};\n\
             ALTER DATABASE {kept} WITH ALLOW_CONNECTIONS true;\n\
             CREATE DATABASE {app} OWNER {app};\n\
             REVOKE ALL ON DATABASE {app} FROM PUBLIC;\n"
        ),
    )?;
    let mut c = client(&account, "pg_restore", cfg.port, app)?;
    c.args([
        "--no-owner",
        "--no-acl",
        &format!("--role={app}"),
        "--single-transaction",
        "--exit-on-error",
    ]);
    let loaded = file
        .rewind()
        .map_err(AppDumpError::Incoming)
        .and_then(|()| Ok(command::stream(&mut c, Some(file), &mut io::sink())?));
    if let Err(e) = loaded {
        log::error!("db restore {app}: {e}; putting the previous database back");
        let back = psql(
            &account,
            cfg.port,
            &format!(
                "DROP DATABASE IF EXISTS {app} WITH (FORCE);\n\
                 ALTER DATABASE {kept} RENAME TO {app};\n"
            ),
        );
        return Err(match back {
            Ok(_) => AppDumpError::RolledBack {
                failed: format!("pg_restore into {app} failed: {e}"),
            },
            Err(b) => AppDumpError::Command(CommandError::Failed {
                program: "psql".into(),
                exit: crate::reaper::Exit::Code(1),
                stderr: format!(
                    "pg_restore into {app} failed ({e}) and renaming {kept} back to {app} failed too ({b}): do it by hand"
                ),
            }),
        });
    }
    Ok((
        format!(
            "restored the database of app {app}; the previous one is kept as {kept} (drop it with: sovereign query 'DROP DATABASE {kept}')"
        ),
        size,
        sha,
    ))
}

/// Receives the whole dump into an unnamed root-only file on the data disk and checks
/// its SHA-256 before anything else happens.
fn receive(input: impl Read, bytes: u64) -> Result<(File, u64, String), AppDumpError> {
    if let Some(usage) = crate::disk_watch::usage_at(Path::new(crate::boot::DATA_DIR), false) {
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
