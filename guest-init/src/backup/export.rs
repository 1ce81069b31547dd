//! `backup export` and `restore --from-export`: the backup disk's repository as one tar
//! stream, out to the host and back in. An export is taken under the backup lock (no
//! backup or expire changes the sets meanwhile; WAL archiving goes on, and a segment
//! that arrives during the walk is either in the tar whole or not at all, because
//! pgBackRest writes each file under a temporary name first).
//!
//! An export can also start at one set (`backup export SET`, see [`super::export_set`]).
//!
//! An import is unpacked next to the repository, checked (only plain files and
//! directories under `pgbackrest/`, the stream's SHA-256, a stanza's `backup.info`),
//! and only then swapped in; the current repository is kept as
//! `pgbackrest.before-import-<time>`, and put back if the restore from the import fails.

use super::export_set::{self, SetSelection};
use super::pgbackrest::{self, BACKUP_MOUNT, REPO1_PATH, STANZA};
use super::restore::{self, move_dir, RestoreError};
use super::Backups;
use crate::clock::now_unix;
use crate::guest::Guest;
use crate::postgres::Account;
use protocol::backup::RestoreTarget;
use protocol::bulk::{ChunkReader, ChunkWriter};
use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

/// The top directory in an export: the repository's own name.
const TOP: &str = "pgbackrest";

/// Room kept free on the backup disk beyond the export being unpacked.
const SPACE_MARGIN: u64 = 128 << 20;

/// Why an export or an import did not complete.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("backups are unavailable: {0}")]
    Unavailable(String),
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("the data connection: {0}")]
    Stream(io::Error),
    #[error("the backup disk has {free_mib} MiB free; unpacking a {need_mib} MiB export needs that and a margin")]
    NoSpace { free_mib: u64, need_mib: u64 },
    #[error(
        "the export holds {entry:?}, which is not a plain file or directory under {TOP}/: refused"
    )]
    BadEntry { entry: String },
    #[error("the export is not a backup repository: it has no {TOP}/backup/{STANZA}/backup.info")]
    NotARepository,
    #[error("unpacking into {path}: {source}")]
    Unpack { path: String, source: io::Error },
    #[error("{0}; the repository from before the import is in place")]
    Restore(RestoreError),
    #[error("there is no complete backup set {0:?} in the repository (backup list names them)")]
    NoSuchSet(String),
    #[error("reading the repository's sets: {0}")]
    Catalog(String),
    #[error("the export leaves out set {label}, and expiring it from the import failed: {why}")]
    Expire { label: String, why: String },
}

/// Every file, or those of an export from one set on.
fn wanted_by(selection: Option<&SetSelection>) -> impl Fn(&Path) -> bool + '_ {
    move |rel| selection.is_none_or(|s| s.wants(rel))
}

/// Writes the repository (all of it, or the part `selection` names, see
/// [`select_from`]) as a tar into `out`; returns the payload's size and SHA-256.
pub fn export(
    backups: &Backups,
    selection: Option<&SetSelection>,
    out: impl Write,
) -> Result<(u64, String), ExportError> {
    if let Some(why) = backups.unavailable() {
        return Err(ExportError::Unavailable(why));
    }
    let _work = backups.work_lock();
    let mut tar = tar::Builder::new(ChunkWriter::new(out));
    tar.follow_symlinks(false);
    let wanted = wanted_by(selection);
    append_tree(&mut tar, Path::new(REPO1_PATH), Path::new(TOP), &wanted)?;
    let writer = tar.into_inner().map_err(ExportError::Stream)?;
    writer.finish().map_err(ExportError::Stream)
}

/// What an export from set `label` on holds, from the repository's own catalog.
pub fn select_from(backups: &Backups, label: &str) -> Result<SetSelection, ExportError> {
    let json = backups
        .pgbackrest("info", &["--output=json".into(), "--repo=1".into()])
        .map_err(|e| ExportError::Catalog(e.to_string()))?;
    let info = pgbackrest::parse_info(&json).map_err(|e| ExportError::Catalog(e.to_string()))?;
    let sets: Vec<(String, i64)> = info
        .sets
        .iter()
        .map(|s| (s.label.clone(), s.started_unix))
        .collect();
    export_set::select(label, &sets, &info.first_segments)
        .ok_or_else(|| ExportError::NoSuchSet(label.to_string()))
}

/// Appends `dir` and everything under it that `wanted` takes (given its path below
/// [`TOP`]) as `name/...`, in name order; files that vanish during the walk (expired,
/// or a temporary name renamed) are skipped.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    wanted: &dyn Fn(&Path) -> bool,
) -> Result<(), ExportError> {
    let read = |e: io::Error| ExportError::Read {
        path: dir.display().to_string(),
        source: e,
    };
    tar.append_dir(name, dir).map_err(ExportError::Stream)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let inner = name.join(entry.file_name());
        if !wanted(inner.strip_prefix(TOP).unwrap_or(&inner)) {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            append_tree(tar, &path, &inner, wanted)?;
        } else if kind.is_file() && !entry.file_name().to_string_lossy().ends_with(".tmp") {
            match File::open(&path) {
                Ok(mut f) => tar
                    .append_file(&inner, &mut f)
                    .map_err(ExportError::Stream)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ExportError::Read {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
            }
        }
    }
    Ok(())
}

/// The directory an import unpacks into, on the backup disk.
fn incoming_dir(stamp: i64) -> PathBuf {
    PathBuf::from(format!("{BACKUP_MOUNT}/import-{stamp}.partial"))
}

/// Receives an export of `bytes` bytes from `input` into a directory on the backup disk
/// (removed again when anything fails), without the sets it left out; returns the swap
/// that makes it the repository, that directory, and the export's size and SHA-256.
fn receive(
    backups: &Backups,
    input: impl Read,
    bytes: u64,
) -> Result<(RepoSwap, PathBuf, u64, String), ExportError> {
    if let Some(why) = backups.unavailable() {
        return Err(ExportError::Unavailable(why));
    }
    check_space(bytes)?;
    let stamp = now_unix();
    let incoming = incoming_dir(stamp);
    let received = unpack(input, &incoming).and_then(|done| {
        expire_left_out_sets(backups, &incoming.join(TOP))?;
        Ok(done)
    });
    let (size, sha) = match received {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&incoming);
            return Err(e);
        }
    };
    let swap = RepoSwap {
        incoming: incoming.join(TOP),
        aside: PathBuf::from(format!("{REPO1_PATH}.before-import-{stamp}")),
        swapped: Cell::new(false),
    };
    Ok((swap, incoming, size, sha))
}

/// Removes what imports a power cut or a stop interrupted left on the backup disk
/// (their unpacked files; the export file itself is the user's, on the host).
pub fn clear_unfinished_imports() {
    let Ok(entries) = std::fs::read_dir(BACKUP_MOUNT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("import-") && name.ends_with(".partial") {
            match crate::durable::remove_tree(&e.path()) {
                Ok(()) => log::warn!(
                    "removed {name} on the backup disk: what an interrupted import had unpacked"
                ),
                Err(err) => log::warn!("cannot remove {name}: {err}"),
            }
        }
    }
}

/// Receives an export of `bytes` bytes from `input`, makes it the repository and
/// restores the database from it to `target`. Returns what was done.
pub fn restore_from_export(
    guest: &Guest,
    backups: &Backups,
    input: impl Read,
    bytes: u64,
    target: &RestoreTarget,
) -> Result<(String, u64, String), ExportError> {
    let (swap, incoming, size, sha) = receive(backups, input, bytes)?;
    let _work = backups.work_lock();
    let restored = restore::run_locked(guest, backups, target, Some(&swap));
    let _ = std::fs::remove_dir_all(&incoming);
    match restored {
        Ok(message) => Ok((
            format!(
                "{message} The export is now the backup disk's repository; the previous repository is kept as {}.",
                swap.aside.display()
            ),
            size,
            sha,
        )),
        Err(e) => Err(ExportError::Restore(e)),
    }
}

/// Receives an export of `bytes` bytes and makes it the repository (the current one is
/// kept aside), for a boot that restores onto a new data disk from it
/// ([`super::new_disk`]); returns what was done.
pub fn import_only(
    backups: &Backups,
    input: impl Read,
    bytes: u64,
) -> Result<(String, u64, String), ExportError> {
    let (swap, incoming, size, sha) = receive(backups, input, bytes)?;
    let swapped = swap.swap_in().map_err(ExportError::Restore);
    let _ = std::fs::remove_dir_all(&incoming);
    swapped?;
    backups.import_arrived();
    Ok((
        format!(
            "the export is now the backup disk's repository (the previous one is kept as {}); the boot restores from it",
            swap.aside.display()
        ),
        size,
        sha,
    ))
}

/// An unpacked export waiting to become the repository, and where the current
/// repository goes meanwhile.
#[derive(Debug)]
pub struct RepoSwap {
    /// The unpacked repository.
    pub(super) incoming: PathBuf,
    aside: PathBuf,
    swapped: Cell<bool>,
}

impl RepoSwap {
    /// Where the repository from before the import waits while the import is tried.
    pub(super) fn aside_path(&self) -> PathBuf {
        self.aside.clone()
    }

    /// Moves the repository aside and the export into its place.
    pub(super) fn swap_in(&self) -> Result<(), RestoreError> {
        let repo = Path::new(REPO1_PATH);
        move_dir(repo, &self.aside)?;
        if let Err(e) = move_dir(&self.incoming, repo) {
            let _ = move_dir(&self.aside, repo);
            return Err(e);
        }
        self.swapped.set(true);
        log::warn!(
            "the export is now the repository; the previous one is kept as {}",
            self.aside.display()
        );
        Ok(())
    }

    /// Puts the previous repository back (the export goes back where it was unpacked).
    pub(super) fn swap_back(&self) {
        if !self.swapped.replace(false) {
            return;
        }
        let repo = Path::new(REPO1_PATH);
        let back = move_dir(repo, &self.incoming).and_then(|()| move_dir(&self.aside, repo));
        match back {
            Ok(()) => log::warn!("the repository from before the import is back"),
            Err(e) => log::error!("cannot put the previous repository back: {e}"),
        }
    }
}

/// An export from one set on lists older sets in its `backup.info` without holding
/// them: expire those from the unpacked repository with pgBackRest's own
/// `expire --set` (oldest first; each takes the sets built on it along), so that the
/// repository says what it holds before it is used.
fn expire_left_out_sets(backups: &Backups, repo: &Path) -> Result<(), ExportError> {
    let catalog = backups
        .catalog_at(repo)
        .map_err(|e| ExportError::Catalog(e.to_string()))?;
    let set_dir = |label: &str| repo.join("backup").join(STANZA).join(label);
    let left_out: Vec<&str> = catalog
        .sets
        .iter()
        .map(|s| s.label.as_str())
        .filter(|l| !set_dir(l).is_dir())
        .collect();
    if left_out.is_empty() {
        return Ok(());
    }
    let account = Account::lookup().map_err(|e| ExportError::Unavailable(e.to_string()))?;
    for label in &left_out {
        // pgBackRest removes the set's directory as it expires it; give it one to remove.
        let dir = set_dir(label);
        std::fs::create_dir(&dir)
            .and_then(|()| give_to(&dir, &account))
            .map_err(|e| ExportError::Unpack {
                path: dir.display().to_string(),
                source: e,
            })?;
    }
    for label in left_out.iter().filter(|l| !l.contains('_')) {
        let args = [
            "--repo=1".to_string(),
            format!("--repo1-path={}", repo.display()),
            format!("--set={label}"),
        ];
        backups
            .pgbackrest("expire", &args)
            .map_err(|e| ExportError::Expire {
                label: (*label).to_string(),
                why: e.to_string(),
            })?;
        log::info!("import: expired set {label}, which the export leaves out");
    }
    Ok(())
}

/// Refuses an export the backup disk has no room for.
fn check_space(bytes: u64) -> Result<(), ExportError> {
    let Some(usage) = crate::disk_watch::usage_at(Path::new(BACKUP_MOUNT), false) else {
        return Ok(());
    };
    if usage.available_bytes < bytes.saturating_add(SPACE_MARGIN) {
        return Err(ExportError::NoSpace {
            free_mib: usage.available_bytes >> 20,
            need_mib: bytes >> 20,
        });
    }
    Ok(())
}

/// Unpacks the tar on `input` into `dir` (plain files and directories under
/// [`TOP`] only), reads the stream to its checked end, and gives the tree to postgres.
fn unpack(input: impl Read, dir: &Path) -> Result<(u64, String), ExportError> {
    let unpacking = |e: io::Error| ExportError::Unpack {
        path: dir.display().to_string(),
        source: e,
    };
    std::fs::create_dir(dir).map_err(unpacking)?;
    let mut reader = ChunkReader::new(input);
    {
        let mut archive = tar::Archive::new(&mut reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(false);
        for entry in archive.entries().map_err(unpacking)? {
            let mut entry = entry.map_err(unpacking)?;
            let path = entry.path().map_err(unpacking)?.into_owned();
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) || !allowed(&path) {
                return Err(ExportError::BadEntry {
                    entry: path.display().to_string(),
                });
            }
            entry.unpack_in(dir).map_err(unpacking)?;
        }
    }
    io::copy(&mut reader, &mut io::sink()).map_err(ExportError::Stream)?;
    let sha = reader.sha256().map(str::to_string).ok_or_else(|| {
        ExportError::Stream(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended without its trailer",
        ))
    })?;
    let root = dir.join(TOP);
    if !root
        .join("backup")
        .join(STANZA)
        .join("backup.info")
        .is_file()
    {
        return Err(ExportError::NotARepository);
    }
    let account = Account::lookup().map_err(|e| ExportError::Unavailable(e.to_string()))?;
    give_to(&root, &account).map_err(unpacking)?;
    Ok((reader.payload_bytes(), sha))
}

/// True for a relative path under [`TOP`] with no `..`.
fn allowed(path: &Path) -> bool {
    let mut parts = path.components();
    parts.next() == Some(Component::Normal(TOP.as_ref()))
        && parts.all(|c| matches!(c, Component::Normal(_)))
}

/// Makes postgres (pgBackRest's user) own `path` and everything under it, without
/// following links (there are none: only files and directories were unpacked).
fn give_to(path: &Path, account: &Account) -> io::Result<()> {
    let owner = account.owner();
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_to(&entry?.path(), account)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_repository_are_allowed() {
        assert!(allowed(Path::new("pgbackrest")));
        assert!(allowed(Path::new("pgbackrest/backup/db/backup.info")));
        assert!(!allowed(Path::new("pgbackrest/../etc/passwd")));
        assert!(!allowed(Path::new("/pgbackrest/x")));
        assert!(!allowed(Path::new("etc/passwd")));
        assert!(!allowed(Path::new("./pgbackrest/x")));
    }

    #[test]
    fn a_tree_goes_out_and_comes_back_whole() {
        let src = tempfile::tempdir().unwrap();
        let repo = src.path().join("repo");
        std::fs::create_dir_all(repo.join("backup/db")).unwrap();
        std::fs::write(repo.join("backup/db/backup.info"), "[db]\n").unwrap();
        std::fs::write(repo.join("backup/db/x.pgbackrest.tmp"), "half").unwrap();
        let mut wire = Vec::new();
        let mut tar = tar::Builder::new(ChunkWriter::new(&mut wire));
        append_tree(&mut tar, &repo, Path::new(TOP), &wanted_by(None)).unwrap();
        tar.into_inner().unwrap().finish().unwrap();

        let mut reader = ChunkReader::new(&wire[..]);
        let mut archive = tar::Archive::new(&mut reader);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "pgbackrest",
                "pgbackrest/backup",
                "pgbackrest/backup/db",
                "pgbackrest/backup/db/backup.info"
            ]
        );
    }
}
