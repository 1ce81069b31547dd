//! The stanza: pgBackRest's record of this cluster in each repository, made once per
//! boot after postgres is up, per repository and each as its own user, so repo2 out
//! of reach leaves repo1 ready.

use super::{pgbackrest, BackupError, Backups, Repos, REPO_OFFSITE};

/// How often stanza-create is tried again while another pgBackRest process holds the
/// stanza's lock (2 s apart).
const STANZA_LOCK_RETRIES: u32 = 15;

impl Backups {
    /// Creates the stanza (idempotent; needs the running server), once per boot after
    /// postgres is up. Until it exists, WAL pushes fail and status says so. True once
    /// it exists. A node of a cluster tries again at every tick while it fails (a
    /// replica's stanza needs the primary, which may be down or not yet known).
    pub fn create_stanza(&self) -> bool {
        {
            let mut st = self.lock();
            if st.stanza_failed {
                st.stanza_failed = false;
                st.problem = None;
            }
            if st.problem.is_some() {
                return false;
            }
        }
        // stanza-create acts on every repository of its configuration and knows no
        // --repo: once per repository, each as its own user, so that repo2 out of reach
        // leaves repo1 ready (repo2's stanza is made when it answers, by a later boot).
        // An archive-push of the restored server may hold the stanza's archive lock for
        // a moment (pgBackRest's LockAcquireError, [050]): wait that out.
        self.refresh_peers();
        let mut made = self.pgbackrest_on(Repos::Local, "stanza-create", &[]);
        for _ in 0..STANZA_LOCK_RETRIES {
            match &made {
                Err(e) if e.to_string().contains("[050]") => {
                    log::info!("pgbackrest stanza-create: the stanza is locked; trying again");
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    made = self.pgbackrest_on(Repos::Local, "stanza-create", &[]);
                }
                _ => break,
            }
        }
        if let Err(e) = made {
            log::error!("pgbackrest stanza-create failed: {e}");
            let mut st = self.lock();
            st.problem = Some(format!("stanza-create failed: {e}"));
            st.stanza_failed = self.cluster.is_some();
            return false;
        }
        log::info!("pgbackrest: stanza {} ready on repo1", pgbackrest::STANZA);
        if self.cfg.offsite.is_some() {
            if let Err(e) = self.offsite_stanza() {
                log::warn!("{e}; repo2's stanza is made once it answers");
            }
        }
        true
    }

    /// Makes repo2's stanza unless this boot already did (idempotent in pgBackRest, so
    /// a repository that has one is fine): before anything is sent there, since repo2
    /// may have been out of reach when postgres came up.
    pub(super) fn offsite_stanza(&self) -> Result<(), BackupError> {
        if self.lock().offsite_stanza {
            return Ok(());
        }
        if let Some(why) = self.unreachable(REPO_OFFSITE) {
            return Err(BackupError::Unavailable(why));
        }
        self.pgbackrest_on(Repos::Offsite, "stanza-create", &[])?;
        log::info!("pgbackrest: stanza {} ready on repo2", pgbackrest::STANZA);
        self.lock().offsite_stanza = true;
        Ok(())
    }
}
