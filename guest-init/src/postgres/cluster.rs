//! Making a cluster where there is none: `initdb` on a primary's first boot, a copy of
//! the peer on a replica's. Both work in a directory of their own beside the data
//! directory and are renamed into place only once complete and synced, so a power cut
//! or a stop during either leaves no half-made cluster that a later boot would take for
//! a real one (a half-run initdb's `PG_VERSION` once stranded a VM for good): the next
//! boot removes the work directory, says so, and starts the step over.

use super::{Account, PgError, CLUSTER_DIR};
use crate::command;
use crate::durable;
use crate::owned_files;
use std::path::{Path, PathBuf};

/// Where `initdb` builds a first cluster.
pub const INITDB_WORK: &str = "/data/postgres.initdb";

/// Where a replica's copy of its peer is made.
pub const COPY_WORK: &str = "/data/postgres.copying";

/// True when the data directory holds a cluster.
pub fn exists() -> bool {
    Path::new(CLUSTER_DIR).join("PG_VERSION").exists()
}

/// Refuses a cluster that the image's server cannot read: the data directory's
/// `PG_VERSION` names another major than `bin` (`/usr/lib/postgresql/<major>/bin`)
/// serves. A root image with another major reaches here only when the host could not
/// tell beforehand; `sovereign update` then boots the previous set again.
pub fn check_major(bin: &Path) -> Result<(), PgError> {
    check_major_of(Path::new(CLUSTER_DIR), bin)
}

fn check_major_of(data: &Path, bin: &Path) -> Result<(), PgError> {
    let Ok(text) = std::fs::read_to_string(data.join("PG_VERSION")) else {
        return Ok(());
    };
    let data = text.trim().to_string();
    let image = bin
        .parent()
        .and_then(Path::file_name)
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_default();
    if data == image {
        Ok(())
    } else {
        Err(PgError::MajorMismatch { data, image })
    }
}

/// Removes what an initdb or a copy that never finished left behind; returns one line
/// for each, saying what happened.
pub fn clear_unfinished() -> Result<Vec<String>, PgError> {
    clear_unfinished_in(&[
        (Path::new(INITDB_WORK), "the first boot's initdb"),
        (Path::new(COPY_WORK), "copying the peer"),
    ])
}

fn clear_unfinished_in(work_dirs: &[(&Path, &str)]) -> Result<Vec<String>, PgError> {
    let mut said = Vec::new();
    for (work, what) in work_dirs {
        if work.exists() {
            durable::remove_tree(work)?;
            said.push(format!(
                "{what} was interrupted (a power cut or a stop); its partial work in {} was removed and the step starts over",
                work.display()
            ));
        }
    }
    Ok(said)
}

/// A work directory for a new cluster: any leftover removed, then made anew for
/// postgres, durably, so that a power cut before anything else reaches the disk still
/// leaves a trace the next boot finds and names.
pub(crate) fn fresh_work_dir(work: &str, account: Account) -> Result<PathBuf, PgError> {
    let dir = PathBuf::from(work);
    durable::remove_tree(&dir)?;
    owned_files::prepare_dir(&dir, 0o700, account.owner())?;
    durable::sync_dir(dir.parent().unwrap_or(Path::new("/")))?;
    Ok(dir)
}

/// `initdb` on a blank data disk, into [`INITDB_WORK`] and then into place. It gets no
/// password at all: host connections are refused in the first pg_hba.conf, which the
/// configuration replaces before the server starts, and provisioning sets the
/// superuser's password as a SCRAM verifier. So no password ever sits in a file or
/// reaches another process.
pub(crate) fn initdb(bin: &Path, account: Account) -> Result<(), PgError> {
    if crate::lifecycle::stop::requested() {
        return Err(PgError::ShuttingDown);
    }
    log::info!(
        "postgres: first boot, running initdb (in {INITDB_WORK}, then moved to {CLUSTER_DIR})"
    );
    let work = fresh_work_dir(INITDB_WORK, account)?;
    command::run(
        account
            .command(bin.join("initdb"))
            .arg("-D")
            .arg(&work)
            .args([
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
    install(&work)?;
    log::info!("postgres: initdb finished; the cluster is in place");
    Ok(())
}

/// Makes the complete, synced cluster in `work` the data directory. What sits at the
/// data directory without a cluster in it (an older version's unfinished work) is
/// moved aside, never removed.
pub fn install(work: &Path) -> Result<(), PgError> {
    let data = Path::new(CLUSTER_DIR);
    match std::fs::remove_dir(data) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => {
            let aside = PathBuf::from(format!(
                "{CLUSTER_DIR}.incomplete-{}",
                crate::clock::now_unix()
            ));
            log::warn!(
                "postgres: {CLUSTER_DIR} holds files but no cluster; moving it to {} (kept) before the new cluster takes its place",
                aside.display()
            );
            durable::rename(data, &aside)?;
        }
    }
    durable::rename(work, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_work_is_removed_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let initdb = dir.path().join("postgres.initdb");
        std::fs::create_dir_all(initdb.join("global")).unwrap();
        std::fs::write(initdb.join("PG_VERSION"), "17\n").unwrap();
        let copy = dir.path().join("postgres.copying");
        let dirs = [
            (initdb.as_path(), "the first boot's initdb"),
            (copy.as_path(), "copying the peer"),
        ];
        let said = clear_unfinished_in(&dirs).unwrap();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("the first boot's initdb was interrupted")
                && said[0].contains("postgres.initdb was removed"),
            "{said:?}"
        );
        assert!(!initdb.exists());
        assert!(clear_unfinished_in(&dirs).unwrap().is_empty());
    }

    #[test]
    fn a_data_directory_of_another_major_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let bin17 = dir.path().join("usr/lib/postgresql/17/bin");
        check_major_of(dir.path(), &bin17).unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "17\n").unwrap();
        check_major_of(dir.path(), &bin17).unwrap();
        let bin18 = dir.path().join("usr/lib/postgresql/18/bin");
        let e = check_major_of(dir.path(), &bin18).unwrap_err().to_string();
        assert!(
            e.contains("data directory is PostgreSQL 17") && e.contains("server is PostgreSQL 18"),
            "{e}"
        );
    }
}
