//! Backup runs: one to each configured repository, each outcome kept for status, and
//! whether repo2 can be reached before one is tried.

use super::{offsite, BackupError, Backups};
use crate::clock::now_unix;
use protocol::backup::{BackupKind, BackupRun, REPO_LOCAL, REPO_OFFSITE};
use std::time::Instant;

impl Backups {
    /// Takes one backup to repo1 and, when configured, one to repo2 (waiting for any
    /// other backup or restore to finish first); records their outcomes.
    pub fn run(&self, kind: BackupKind) -> (BackupRun, Option<BackupRun>) {
        let _work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        let local = self.run_locked(kind, REPO_LOCAL);
        let offsite = self
            .cfg
            .offsite
            .is_some()
            .then(|| self.run_locked(kind, REPO_OFFSITE));
        (local, offsite)
    }

    pub(super) fn run_locked(&self, kind: BackupKind, repo: u8) -> BackupRun {
        let started_unix = now_unix();
        let start = Instant::now();
        log::info!("pgbackrest: {kind} backup to repo{repo} starting");
        self.refresh_peers();
        let stanza = match repo {
            REPO_OFFSITE => self.offsite_stanza().err().map(|e| e.to_string()),
            _ => None,
        };
        let outcome = match self
            .unavailable()
            .or_else(|| self.unreachable(repo))
            .or(stanza)
        {
            Some(why) => Err(BackupError::Unavailable(why)),
            None => self.pgbackrest(
                "backup",
                &[
                    vec![format!("--type={kind}"), format!("--repo={repo}")],
                    self.cluster_args(),
                ]
                .concat(),
            ),
        };
        let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // A failed run adds no set: only a run that made one is read back (a repo2 that
        // did not answer would not answer the read either).
        if outcome.is_ok() {
            let _ = self.refresh_repo(repo);
        }
        let newest = self
            .lock()
            .sets
            .iter()
            .rev()
            .find(|s| s.repo == repo && s.started_unix >= started_unix - 1)
            .cloned();
        let failed = |error: String| BackupRun {
            kind,
            repo,
            started_unix,
            duration_ms,
            label: None,
            repo_bytes: None,
            error: Some(error),
        };
        let run = match (outcome, newest) {
            (Ok(_), Some(set)) => BackupRun {
                kind,
                repo,
                started_unix,
                duration_ms,
                label: Some(set.label),
                repo_bytes: Some(set.repo_bytes),
                error: None,
            },
            (Ok(_), None) => {
                failed("pgbackrest reported success but no new set is in the repository".into())
            }
            (Err(e), _) => failed(e.to_string()),
        };
        match &run.error {
            None => log::info!(
                "pgbackrest: {kind} backup {} to repo{repo} done in {} ms",
                run.label.as_deref().unwrap_or("?"),
                run.duration_ms
            ),
            Some(e) => log::error!("pgbackrest: {kind} backup to repo{repo} failed: {e}"),
        }
        let mut st = self.lock();
        let runs = st.runs(repo);
        runs.last = Some(run.clone());
        if run.ok() {
            runs.last_ok = Some(run.clone());
        }
        run
    }

    /// Why `repo` cannot be reached now: repo2's name is not in the tailnet.
    pub(super) fn unreachable(&self, repo: u8) -> Option<String> {
        let o = self.cfg.offsite.as_ref().filter(|_| repo == REPO_OFFSITE)?;
        let why = offsite::resolve(o).err().map(|e| e.to_string());
        self.lock().offsite_unresolved.clone_from(&why);
        why
    }

    /// The configured repositories.
    pub(super) fn repos(&self) -> Vec<u8> {
        let mut v = vec![REPO_LOCAL];
        if self.cfg.offsite.is_some() {
            v.push(REPO_OFFSITE);
        }
        v
    }
}
