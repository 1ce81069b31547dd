//! The catalog: which backup sets each repository holds, read from `pgbackrest info`
//! one repository at a time (repo2 can be slow or away, and repo1 must not wait for
//! it), kept for status, and what to say when none can be read.

use super::{archiving, pgbackrest, BackupError, Backups, OFFSITE_REFRESH, REPO_OFFSITE};
use crate::command;
use crate::postgres::find_bin_dir;
use protocol::backup::{BackupCatalog, BackupSet};
use std::path::Path;

impl Backups {
    /// Re-reads the sets of every repository.
    pub(super) fn refresh_catalog(&self) -> Result<Vec<BackupSet>, BackupError> {
        let repos = self.repos();
        let mut failed = Vec::new();
        for &repo in &repos {
            if let Err(e) = self.refresh_repo(repo) {
                failed.push(e);
            }
        }
        // One repository that cannot be read (a new backup disk after both disks were
        // lost, with repo2 to restore from) leaves the other's sets usable; only when
        // none can be read is the catalog an error, naming each.
        if failed.len() == repos.len() {
            if let Some(first) = failed.into_iter().next() {
                return Err(match self.unreadable_repos() {
                    Some(why) => BackupError::Unavailable(why),
                    None => first,
                });
            }
        }
        Ok(self.lock().sets.clone())
    }

    /// Re-reads one repository's sets (each as its own user: repo2 can be slow to
    /// answer, or not answer, and repo1 must not wait for it). repo2 when it cannot be
    /// read keeps the sets last read and is listed as broken.
    pub(super) fn refresh_repo(&self, repo: u8) -> Result<(), BackupError> {
        let read = self
            .pgbackrest(
                "info",
                &["--output=json".to_string(), format!("--repo={repo}")],
            )
            .and_then(|json| Ok(pgbackrest::parse_info(&json)?));
        let mut st = self.lock();
        if repo == REPO_OFFSITE {
            st.offsite_refreshed = Some(std::time::Instant::now());
        }
        st.broken_repos.retain(|(r, _)| *r != repo);
        match read {
            Ok(info) => {
                st.sets.retain(|s| s.repo != repo);
                st.sets
                    .extend(info.sets.into_iter().filter(|s| s.repo == repo));
                st.sets.sort_by_key(|s| s.stopped_unix);
                st.broken_repos
                    .extend(info.broken_repos.into_iter().filter(|(r, _)| *r == repo));
                Ok(())
            }
            Err(e) if repo == REPO_OFFSITE => {
                st.broken_repos.push((repo, e.to_string()));
                Ok(())
            }
            Err(e) => {
                st.broken_repos.push((repo, e.to_string()));
                Err(e)
            }
        }
    }

    /// Re-reads repo2's sets when the last read is older than [`OFFSITE_REFRESH`]: the
    /// schedule needs them, but a server out of reach costs a connection timeout each
    /// time.
    pub(super) fn refresh_offsite_now_and_then(&self) {
        if self.cfg.offsite.is_none() {
            return;
        }
        let stale = self
            .lock()
            .offsite_refreshed
            .is_none_or(|t| t.elapsed() >= OFFSITE_REFRESH);
        if stale {
            let _ = self.refresh_repo(REPO_OFFSITE);
        }
    }

    /// Re-reads `pg_stat_archiver`: what reached the repository, and what failed.
    pub(super) fn refresh_archive(&self) -> Result<(), BackupError> {
        let account = self
            .account
            .ok_or_else(|| BackupError::Unavailable("user 'postgres' not found".into()))?;
        let bin = find_bin_dir(Path::new("/")).ok_or(crate::postgres::PgError::NotInstalled)?;
        let out = command::run_with_input(
            &mut account.psql(&bin, self.pg_port, &["-A", "-t", "-f", "-"]),
            archiving::ARCHIVER_SQL.as_bytes(),
            &[],
        )?;
        self.lock().archive = archiving::parse_archiver(&out.stdout);
        Ok(())
    }

    /// The catalog for `backup list`: the sets and the window.
    pub fn catalog(&self) -> Result<BackupCatalog, BackupError> {
        if let Some(why) = self.unavailable() {
            return Err(BackupError::Unavailable(why));
        }
        let sets = self.refresh_catalog()?;
        let _ = self.refresh_archive();
        let window = archiving::window(&sets, &self.lock().archive);
        Ok(BackupCatalog { sets, window })
    }

    /// The catalog of a repository unpacked at `repo` (an import not yet swapped in).
    pub(crate) fn catalog_at(&self, repo: &Path) -> Result<BackupCatalog, BackupError> {
        let extra = [
            "--output=json".to_string(),
            "--repo=1".to_string(),
            format!("--repo1-path={}", repo.display()),
        ];
        let sets = pgbackrest::parse_info(&self.pgbackrest("info", &extra)?)?.sets;
        let window = archiving::window(&sets, &self.lock().archive);
        Ok(BackupCatalog { sets, window })
    }

    /// The repository's sets, read now (no server needed).
    pub(crate) fn sets_now(&self) -> Result<Vec<BackupSet>, BackupError> {
        if let Some(why) = self.unavailable() {
            return Err(BackupError::Unavailable(why));
        }
        let sets = self.refresh_catalog()?;
        if sets.is_empty() {
            if let Some(why) = self.unreadable_repos() {
                return Err(BackupError::Unavailable(why));
            }
        }
        Ok(sets)
    }

    /// What `pgbackrest info` said of the repositories it could not read, with a hint
    /// when it reads like repo2 was sealed with another passphrase.
    pub(super) fn unreadable_repos(&self) -> Option<String> {
        let st = self.lock();
        let said: Vec<String> = st
            .broken_repos
            .iter()
            .map(|(repo, why)| {
                let undecryptable = *repo == REPO_OFFSITE
                    && ["FormatError", "CryptoError", "cipher"]
                        .iter()
                        .any(|w| why.contains(w));
                if undecryptable {
                    // pgBackRest quotes the noise it decrypted on the lines after the
                    // first: the first says which file.
                    let first = why.lines().next().unwrap_or_default().trim();
                    format!("repo{repo}: {first} (this backup passphrase does not decrypt it: is it the one repo2 was made with? `sovereign backup key --set` puts that one in place)")
                } else {
                    format!("repo{repo}: {}", why.trim())
                }
            })
            .collect();
        (!said.is_empty()).then(|| format!("no backup set can be read: {}", said.join("; ")))
    }
}
