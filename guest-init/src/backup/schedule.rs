//! When PID 1 takes a backup by itself: a full one when there is none yet (right after
//! the first `ready`) or the newest full set is `full_every_days` old, a differential
//! one when the newest set of any type is `diff_every_days` old. No cron: the backup
//! thread asks [`due`] every minute.

use protocol::backup::{BackupConfig, BackupKind, BackupSet};

const DAY: i64 = 24 * 60 * 60;

/// After a failed run, the schedule waits this long before trying again (a full disk
/// or an unreachable repository should not be hammered every minute).
pub const RETRY_AFTER_FAILURE_SECS: i64 = 15 * 60;

/// The backup due at `now`, given the complete sets (any order) and when the last
/// failed attempt was, if any.
pub fn due(
    now: i64,
    sets: &[BackupSet],
    cfg: &BackupConfig,
    last_failure: Option<i64>,
) -> Option<BackupKind> {
    if last_failure.is_some_and(|t| now - t < RETRY_AFTER_FAILURE_SECS) {
        return None;
    }
    let newest_full = sets
        .iter()
        .filter(|s| s.kind == BackupKind::Full)
        .map(|s| s.started_unix)
        .max();
    let Some(full) = newest_full else {
        return Some(BackupKind::Full);
    };
    if now - full >= i64::from(cfg.full_every_days) * DAY {
        return Some(BackupKind::Full);
    }
    let newest = sets.iter().map(|s| s.started_unix).max().unwrap_or(full);
    (cfg.diff_every_days > 0 && now - newest >= i64::from(cfg.diff_every_days) * DAY)
        .then_some(BackupKind::Diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackupConfig {
        BackupConfig::with_defaults("/dev/vdc")
    }

    fn set(kind: BackupKind, started: i64) -> BackupSet {
        BackupSet {
            label: format!("{started}"),
            kind,
            started_unix: started,
            stopped_unix: started + 60,
            database_bytes: 1,
            repo_bytes: 1,
            repo: 1,
        }
    }

    #[test]
    fn first_a_full_then_daily_diffs_then_a_weekly_full() {
        let t0 = 1_000_000_000;
        assert_eq!(due(t0, &[], &cfg(), None), Some(BackupKind::Full));
        let mut sets = vec![set(BackupKind::Full, t0)];
        assert_eq!(due(t0 + DAY - 1, &sets, &cfg(), None), None);
        assert_eq!(due(t0 + DAY, &sets, &cfg(), None), Some(BackupKind::Diff));
        sets.push(set(BackupKind::Diff, t0 + DAY));
        assert_eq!(due(t0 + DAY + 10, &sets, &cfg(), None), None);
        assert_eq!(
            due(t0 + 7 * DAY, &sets, &cfg(), None),
            Some(BackupKind::Full)
        );
    }

    #[test]
    fn no_diffs_when_turned_off_and_a_pause_after_a_failure() {
        let t0 = 1_000_000_000;
        let mut c = cfg();
        c.diff_every_days = 0;
        let sets = [set(BackupKind::Full, t0)];
        assert_eq!(due(t0 + 3 * DAY, &sets, &c, None), None);
        assert_eq!(due(t0, &[], &c, Some(t0 - 60)), None);
        assert_eq!(
            due(t0, &[], &c, Some(t0 - RETRY_AFTER_FAILURE_SECS)),
            Some(BackupKind::Full)
        );
    }
}
