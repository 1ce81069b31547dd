//! A replica that follows a new primary while it runs: its replication lines of
//! postgresql.conf replaced and reloaded (`primary_conninfo` is reloadable; the WAL
//! receiver restarts toward the new primary), and whether its receiver streams now.
//! [`crate::fence_guard`] decides when.

use crate::postgres::files::write_config;
use crate::postgres::{PgError, Postgres};

impl Postgres {
    /// Replaces the replication lines of postgresql.conf with `conf` and has the server
    /// reload them (`primary_conninfo` is reloadable: the WAL receiver restarts toward
    /// the new primary). False when they were already these.
    pub fn repoint(&self, conf: String) -> Result<bool, PgError> {
        let settings = {
            let mut s = match self.settings.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if s.replication.as_deref() == Some(conf.as_str()) {
                return Ok(false);
            }
            s.replication = Some(conf);
            s.clone()
        };
        write_config(self.account, &settings, &self.listen())?;
        self.sql("select pg_reload_conf()")?;
        Ok(true)
    }

    /// True while this replica's WAL receiver streams from its primary.
    pub fn streaming(&self) -> bool {
        self.sql("select count(*) from pg_stat_wal_receiver where status = 'streaming'")
            .is_ok_and(|o| o.trim() == "1")
    }
}
