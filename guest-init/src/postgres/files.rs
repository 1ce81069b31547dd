//! The data directory's own files: postgresql.conf and pg_hba.conf written on every
//! boot from [`Settings`] (edits there are overwritten), and the lock file a server
//! that did not stop left behind.

use super::wal_budget::WalBudget;
use super::{config, tls, Account, PgError, CLUSTER_DIR};
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
    /// The memory settings derived from the VM's memory.
    pub(super) memory: String,
    /// The spec's `[postgres.settings]`, written last.
    pub(super) overrides: String,
}

/// The size of the data disk the cluster lives on (0 when it cannot be read).
pub(super) fn data_disk_bytes() -> u64 {
    let mount = Path::new(CLUSTER_DIR)
        .parent()
        .unwrap_or(Path::new(CLUSTER_DIR));
    crate::disk_watch::usage_at(mount, false).map_or(0, |u| u.total_bytes)
}

/// Writes postgresql.conf, pg_hba.conf and pg_ident.conf into the data directory.
pub(super) fn write_config(
    account: Account,
    settings: &Settings,
    listen: &[String],
) -> Result<(), PgError> {
    let data = Path::new(CLUSTER_DIR);
    let mut conf = config::render_postgresql_conf(
        settings.port,
        listen,
        settings.jit,
        &settings.wal,
        &settings.memory,
    );
    if let Some(archive) = &settings.archive {
        conf.push_str(archive);
    }
    if settings.tls {
        conf.push_str(&tls::conf_lines());
    }
    if let Some(replication) = &settings.replication {
        conf.push_str(replication);
    }
    conf.push_str(&settings.overrides);
    owned_files::write_file(
        &data.join("postgresql.conf"),
        conf.as_bytes(),
        0o600,
        account.owner(),
    )?;
    owned_files::write_file(
        &data.join("pg_hba.conf"),
        config::render_pg_hba(
            settings.superuser_from_tailnet,
            settings.replication.is_some(),
        )
        .as_bytes(),
        0o600,
        account.owner(),
    )?;
    owned_files::write_file(
        &data.join("pg_ident.conf"),
        config::render_pg_ident().as_bytes(),
        0o600,
        account.owner(),
    )?;
    Ok(())
}

/// The lock file a postmaster keeps in its data directory.
const LOCK_FILE: &str = "postmaster.pid";

/// Removes the data directory's `postmaster.pid` when no postgres process is alive in
/// this VM, so the lock file can only be a leftover of a server that did not stop (a
/// power cut, a killed VM). PostgreSQL keeps a lock file whose PID is alive, and in a
/// fresh guest the PID of the last boot's postmaster is often taken by some other
/// process of this boot (boots run the same programs in the same order), so without
/// this the server, or the crash recovery pg_rewind runs, may refuse the directory.
/// While any postgres process lives (`live_postgres`, from [`crate::lifecycle::pids::named`]),
/// the file stays for PostgreSQL's own checks. Returns the PID the removed file named.
pub(super) fn clear_stale_lock(
    data: &Path,
    live_postgres: &[nix::unistd::Pid],
) -> Result<Option<String>, PgError> {
    let lock = data.join(LOCK_FILE);
    let Ok(contents) = std::fs::read_to_string(&lock) else {
        return Ok(None);
    };
    if !live_postgres.is_empty() {
        log::info!(
            "postgres: keeping {LOCK_FILE}: postgres processes still run ({live_postgres:?})"
        );
        return Ok(None);
    }
    let pid = contents.lines().next().unwrap_or("").trim().to_string();
    std::fs::remove_file(&lock).map_err(|source| PgError::StaleLock {
        path: lock.clone(),
        source,
    })?;
    log::info!(
        "postgres: removed {LOCK_FILE} of a server that did not stop (PID {pid} of an earlier boot; no postgres runs in this VM)"
    );
    Ok(Some(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn a_lock_file_goes_only_when_no_postgres_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(clear_stale_lock(dir.path(), &[]).unwrap(), None);

        let lock = dir.path().join(LOCK_FILE);
        std::fs::write(&lock, "137\n/data/postgres\n1796392000\n5432\n").unwrap();
        let alive = [Pid::from_raw(140)];
        assert_eq!(clear_stale_lock(dir.path(), &alive).unwrap(), None);
        assert!(lock.exists(), "kept while a postgres process lives");

        assert_eq!(
            clear_stale_lock(dir.path(), &[]).unwrap().as_deref(),
            Some("137")
        );
        assert!(!lock.exists());
    }
}
