//! The data directory's own files: `initdb` on first boot, and postgresql.conf and
//! pg_hba.conf written on every boot from [`Settings`] (edits there are overwritten).

use super::wal_budget::WalBudget;
use super::{config, tls, Account, PgError, DATA_DIR};
use crate::command;
use crate::owned_files;
use std::path::Path;

/// What the configuration files are rendered from, besides the listen addresses.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// TCP port.
    pub(super) port: u16,
    /// Whether `postgres` may log in over the tailnet.
    pub(super) superuser_from_tailnet: bool,
    /// Whether the JIT module is installed.
    pub(super) jit: bool,
    /// postgresql.conf lines for continuous archiving, when backups run.
    pub(super) archive: Option<String>,
    /// WAL sized to the data disk.
    pub(super) wal: WalBudget,
    /// Whether the launcher's certificate is installed (`ssl = on`).
    pub(super) tls: bool,
    /// postgresql.conf lines for streaming replication with the peer, when configured.
    pub(super) replication: Option<String>,
}

/// The size of the data disk the cluster lives on (0 when it cannot be read).
pub(super) fn data_disk_bytes() -> u64 {
    let mount = Path::new(DATA_DIR).parent().unwrap_or(Path::new(DATA_DIR));
    crate::disk_watch::usage_at(mount, false).map_or(0, |u| u.total_bytes)
}

/// Writes postgresql.conf and pg_hba.conf into the data directory.
pub(super) fn write_config(
    account: Account,
    settings: &Settings,
    listen: &[String],
) -> Result<(), PgError> {
    let data = Path::new(DATA_DIR);
    let mut conf =
        config::render_postgresql_conf(settings.port, listen, settings.jit, &settings.wal);
    if let Some(archive) = &settings.archive {
        conf.push_str(archive);
    }
    if settings.tls {
        conf.push_str(&tls::conf_lines());
    }
    if let Some(replication) = &settings.replication {
        conf.push_str(replication);
    }
    owned_files::write_file(
        &data.join("postgresql.conf"),
        conf.as_bytes(),
        0o600,
        account.owner,
    )?;
    owned_files::write_file(
        &data.join("pg_hba.conf"),
        config::render_pg_hba(
            settings.superuser_from_tailnet,
            settings.replication.is_some(),
        )
        .as_bytes(),
        0o600,
        account.owner,
    )?;
    Ok(())
}

/// `initdb` on a blank data directory. It gets no password at all: host connections
/// are refused in the first pg_hba.conf, which [`write_config`] replaces before the
/// server starts, and [`super::Postgres::bring_up`] sets the superuser's password as a SCRAM
/// verifier. So no password ever sits in a file or reaches another process.
pub(super) fn initdb(bin: &Path, account: Account) -> Result<(), PgError> {
    log::info!("postgres: first boot, running initdb in {DATA_DIR}");
    command::run(
        account.command(bin.join("initdb")).args([
            "-D",
            DATA_DIR,
            "-U",
            "postgres",
            "--auth-local=peer",
            "--auth-host=reject",
            "-E",
            "UTF8",
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--data-checksums",
        ]),
        &[],
    )?;
    Ok(())
}
