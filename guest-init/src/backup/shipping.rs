//! Shipping archived WAL from repo1 to repo2. PostgreSQL's `archive_command` pushes to
//! repo1 alone: with both repositories in it, pgBackRest fails the push while repo2 is
//! unreachable, PostgreSQL keeps the WAL, and once the bounded queue is full pgBackRest
//! drops segments, leaving holes in repo1 too. So an off-device outage could break the
//! local point-in-time recovery. Instead a thread of PID 1 copies what repo1 holds
//! and repo2 lacks (`archive-get` from repo1, `archive-push` into repo2), oldest first,
//! history files before segments; repo2 only ever lags, and says by how much.

use super::pgbackrest::{self, Repos, WORK_DIR};
use super::{BackupError, Backups};
use crate::clock::now_unix;
use protocol::backup::{REPO_LOCAL, REPO_OFFSITE};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How many files one round ships at most (the rest wait for the next round).
pub const MAX_PER_ROUND: usize = 64;

/// Pause between rounds: a backup to repo2 waits (up to pgBackRest's archive-timeout)
/// for its WAL to arrive there, so shipping must keep up well within that.
const ROUND_EVERY: Duration = Duration::from_secs(10);

/// The archive directory of our stanza, relative to a repository.
fn archive_dir() -> String {
    format!("archive/{}", pgbackrest::STANZA)
}

/// Starts the shipping thread (a round every [`ROUND_EVERY`], for ever).
pub fn start(backups: &Arc<Backups>) {
    let me = Arc::clone(backups);
    let spawned = std::thread::Builder::new()
        .name("wal-shipping".into())
        .spawn(move || loop {
            std::thread::sleep(ROUND_EVERY);
            let outcome = me.ship_round();
            let mut st = me.lock();
            match outcome {
                Ok(_) => st.ship_problem = None,
                Err(e) => {
                    let said = e.to_string();
                    if st.ship_problem.as_deref() != Some(said.as_str()) {
                        log::warn!("shipping WAL to repo2: {said}");
                    }
                    st.ship_problem = Some(said);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the WAL shipping thread: {e}");
        backups.lock().ship_problem = Some(format!("the shipping thread could not start: {e}"));
    }
}

impl Backups {
    /// One round: lists both archives, ships what repo2 lacks; how many files it shipped.
    fn ship_round(&self) -> Result<usize, BackupError> {
        if let Some(why) = self
            .unavailable()
            .or_else(|| self.unreachable(REPO_OFFSITE))
        {
            return Err(BackupError::Unavailable(why));
        }
        self.offsite_stanza()?;
        let list = |repo: u8| -> Result<BTreeSet<String>, BackupError> {
            let json = self.pgbackrest(
                "repo-ls",
                &[
                    format!("--repo={repo}"),
                    "--recurse".into(),
                    "--output=json".into(),
                    archive_dir(),
                ],
            )?;
            wal_names(&json).map_err(|e| BackupError::Unavailable(format!("repo-ls: {e}")))
        };
        let missing = to_ship(&list(REPO_LOCAL)?, &list(REPO_OFFSITE)?);
        for name in &missing {
            let file = Path::new(WORK_DIR).join("ship").join(name);
            let path = file.to_string_lossy().into_owned();
            // Synchronous: the async mode prefetches a recovery queue into the spool.
            self.pgbackrest(
                "archive-get",
                &[
                    format!("--repo={REPO_LOCAL}"),
                    "--no-archive-async".into(),
                    name.clone(),
                    path.clone(),
                ],
            )?;
            let pushed = self.push_to_offsite(&path);
            let _ = std::fs::remove_file(&file);
            pushed?;
            self.lock().shipped = Some((name.clone(), now_unix()));
        }
        if !missing.is_empty() {
            log::info!(
                "shipped {} WAL file(s) to repo2, through {}",
                missing.len(),
                missing.last().map_or("?", String::as_str)
            );
        }
        Ok(missing.len())
    }

    /// `archive-push` of one file into repo2 (its own configuration, as root,
    /// synchronous).
    fn push_to_offsite(&self, path: &str) -> Result<(), BackupError> {
        self.pgbackrest_on(
            Repos::Offsite,
            "archive-push",
            &["--no-archive-async".into(), path.to_string()],
        )?;
        Ok(())
    }
}

/// The WAL files named in `pgbackrest repo-ls --recurse --output=json` of an archive
/// directory: segments (`<24 hex>` from `<24 hex>-<sha1>.<ext>`) and timeline history
/// files (`<8 hex>.history`). Backup history files and archive.info are left out.
pub fn wal_names(repo_ls_json: &str) -> Result<BTreeSet<String>, serde_json::Error> {
    let listing: serde_json::Map<String, serde_json::Value> = serde_json::from_str(repo_ls_json)?;
    Ok(listing
        .iter()
        .filter(|(_, v)| v["type"] == "file")
        .filter_map(|(path, _)| wal_name(path.rsplit('/').next().unwrap_or(path)))
        .collect())
}

fn wal_name(file: &str) -> Option<String> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tli) = file.strip_suffix(".history") {
        return (tli.len() == 8 && hex(tli)).then(|| file.to_string());
    }
    let segment = file.get(..24)?;
    (hex(segment) && file.as_bytes().get(24) == Some(&b'-')).then(|| segment.to_string())
}

/// What repo2 lacks, in shipping order: history files first (a restore on a later
/// timeline needs them before its segments), then segments oldest first; at most
/// [`MAX_PER_ROUND`].
pub fn to_ship(local: &BTreeSet<String>, remote: &BTreeSet<String>) -> Vec<String> {
    let mut missing: Vec<&String> = local.difference(remote).collect();
    missing.sort_by_key(|n| (!n.ends_with(".history"), n.as_str()));
    missing.into_iter().take(MAX_PER_ROUND).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LS: &str = r#"{
        ".": {"type": "path"},
        "17-1": {"type": "path"},
        "17-1/00000002.history": {"type": "file", "size": 42},
        "17-1/0000000100000000": {"type": "path"},
        "17-1/0000000100000000/000000010000000000000001-1f6a8b3cdd0e4b5f8c6a2d9e0b1c3d4e5f6a7b8c.lz4": {"type": "file"},
        "17-1/0000000100000000/000000010000000000000002.00000028.backup": {"type": "file"},
        "17-1/0000000200000000/000000020000000000000003-2f6a8b3cdd0e4b5f8c6a2d9e0b1c3d4e5f6a7b8c.lz4": {"type": "file"},
        "archive.info": {"type": "file"}
    }"#;

    #[test]
    fn segments_and_history_files_are_read_from_the_listing() {
        let names = wal_names(LS).unwrap();
        let v: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            v,
            [
                "000000010000000000000001",
                "00000002.history",
                "000000020000000000000003"
            ]
        );
        wal_names("[]").unwrap_err();
    }

    #[test]
    fn history_first_then_the_oldest_segment_and_only_what_is_missing() {
        let local = wal_names(LS).unwrap();
        let remote: BTreeSet<String> = ["000000010000000000000001".to_string()].into();
        assert_eq!(
            to_ship(&local, &remote),
            ["00000002.history", "000000020000000000000003"]
        );
        assert!(to_ship(&local, &local).is_empty());
        let many: BTreeSet<String> = (0..200).map(|i| format!("{i:024X}")).collect();
        let first = to_ship(&many, &BTreeSet::new());
        assert_eq!(first.len(), MAX_PER_ROUND);
        assert_eq!(first[0], format!("{:024X}", 0));
    }
}
