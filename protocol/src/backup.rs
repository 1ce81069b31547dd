//! Backups on the control channel: how PID 1 is to run pgBackRest (part of the
//! [`crate::GuestConfig`]), the host's backup and restore requests, and what the guest
//! answers and reports in its status. Times are whole seconds since the Unix epoch (the
//! guest's clock is set from the host's); the host renders them.

use crate::config::ConfigError;
pub use crate::offsite::{OffsiteConfig, OffsiteStatus};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How PID 1 runs pgBackRest. Present when the spec enables backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupConfig {
    /// Block device of the backup disk (repo1), e.g. `/dev/vdc`.
    pub device: String,
    /// PostgreSQL's `archive_timeout`: the longest a committed change waits before its
    /// WAL segment is archived (the data at risk when the phone dies).
    pub archive_timeout_secs: u32,
    /// Backup sets older than this many days are expired (time-based retention).
    pub retention_days: u32,
    /// A full backup when the newest full set is this many days old.
    pub full_every_days: u32,
    /// A differential backup when the newest set is this many days old (0: none).
    pub diff_every_days: u32,
    /// repo2, off the device: an SFTP server reached over the tailnet by name.
    #[serde(default)]
    pub offsite: Option<OffsiteConfig>,
}

/// The repository a backup set lives in.
pub const REPO_LOCAL: u8 = 1;
/// repo2, when [`OffsiteConfig`] is set.
pub const REPO_OFFSITE: u8 = 2;

impl BackupConfig {
    /// The spec's defaults (archive_timeout 60 s, 7 days' retention, weekly full, daily
    /// differential) for the backup disk at `device`: one place for what the launcher
    /// fills in and what tests start from.
    pub fn with_defaults(device: &str) -> BackupConfig {
        BackupConfig {
            device: device.to_string(),
            archive_timeout_secs: 60,
            retention_days: 7,
            full_every_days: 7,
            diff_every_days: 1,
            offsite: None,
        }
    }

    /// Checks every field; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, value: String, why| ConfigError::Invalid { field, value, why };
        let dev = self.device.strip_prefix("/dev/").unwrap_or_default();
        if dev.is_empty() || !dev.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(
                "backup.device",
                self.device.clone(),
                "must be a block device like /dev/vdc",
            ));
        }
        if !(10..=3600).contains(&self.archive_timeout_secs) {
            return Err(invalid(
                "backup.archive_timeout_secs",
                self.archive_timeout_secs.to_string(),
                "must be 10-3600 seconds",
            ));
        }
        if !(1..=3650).contains(&self.retention_days) {
            return Err(invalid(
                "backup.retention_days",
                self.retention_days.to_string(),
                "must be 1-3650 days",
            ));
        }
        if !(1..=self.retention_days).contains(&self.full_every_days) {
            return Err(invalid(
                "backup.schedule.full_every_days",
                self.full_every_days.to_string(),
                "must be at least 1 and at most retention_days (a full set must exist inside the window)",
            ));
        }
        if self.diff_every_days > self.full_every_days {
            return Err(invalid(
                "backup.schedule.diff_every_days",
                self.diff_every_days.to_string(),
                "must be 0 (none) or at most full_every_days",
            ));
        }
        match &self.offsite {
            Some(o) => o.validate(),
            None => Ok(()),
        }
    }
}

/// pgBackRest's backup types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Every file.
    Full,
    /// Files changed since the last full set.
    Diff,
    /// Files changed since the last set of any type.
    Incr,
}

impl BackupKind {
    /// pgBackRest's name, for `--type`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a restore goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestoreTarget {
    /// The end of the archived WAL: every change that reached the repository.
    Latest,
    /// A point in time, in any form PostgreSQL reads as a `timestamptz`
    /// (`2026-12-02T16:04:05Z`, `2026-12-02 17:04:05+01`).
    Time {
        /// The time as the user wrote it.
        time: String,
    },
    /// The consistent end of one backup set, without replaying later WAL.
    Set {
        /// The set's label, as `backup list` shows it.
        label: String,
    },
}

impl fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreTarget::Latest => f.write_str("latest"),
            RestoreTarget::Time { time } => write!(f, "time {time}"),
            RestoreTarget::Set { label } => write!(f, "set {label}"),
        }
    }
}

/// What the host asks of the guest's backups ([`crate::HostMessage::Backup`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum BackupRequest {
    /// Take a backup now; answered when it is done.
    Now {
        /// Full, differential or incremental.
        kind: BackupKind,
    },
    /// The sets in the repository and the recoverable window.
    List,
    /// Check every file of every set and the archived WAL against their checksums
    /// (`pgbackrest verify`).
    Verify,
    /// Stop postgres, restore into a new data directory (the current one is kept aside
    /// until the restored server is up and checked), start postgres.
    Restore {
        /// Where to.
        target: RestoreTarget,
    },
}

/// One backup set in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSet {
    /// pgBackRest's label, e.g. `20261202-160405F`.
    pub label: String,
    /// Its type.
    pub kind: BackupKind,
    /// When it started.
    pub started_unix: i64,
    /// When it was complete (the earliest point it can restore to).
    pub stopped_unix: i64,
    /// Size of the database it copied.
    pub database_bytes: u64,
    /// What it takes in the repository (compressed; for diff/incr, only its delta).
    pub repo_bytes: u64,
    /// The repository it is in: [`REPO_LOCAL`] or [`REPO_OFFSITE`].
    #[serde(default = "repo_local")]
    pub repo: u8,
}

fn repo_local() -> u8 {
    REPO_LOCAL
}

/// The span of time a restore can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryWindow {
    /// The end of the oldest set: nothing earlier can be restored.
    pub earliest_unix: i64,
    /// The newest change known to be archived (the last archived WAL segment's time).
    pub latest_unix: i64,
}

/// The repository's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCatalog {
    /// Sets, oldest first.
    pub sets: Vec<BackupSet>,
    /// What a restore can reach; `None` before the first set.
    pub window: Option<RecoveryWindow>,
}

/// One backup run, scheduled or requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRun {
    /// Its type.
    pub kind: BackupKind,
    /// The repository it went to.
    #[serde(default = "repo_local")]
    pub repo: u8,
    /// When it started.
    pub started_unix: i64,
    /// How long it took.
    pub duration_ms: u64,
    /// The set it made, when it succeeded.
    pub label: Option<String>,
    /// The set's size in the repository, when it succeeded.
    pub repo_bytes: Option<u64>,
    /// Why it failed (pgBackRest's own message), when it did.
    pub error: Option<String>,
}

impl BackupRun {
    /// True when it made a set.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// PostgreSQL's WAL archiver, as `pg_stat_archiver` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveState {
    /// The newest segment in the repository.
    pub last_archived_wal: Option<String>,
    /// When it got there: changes committed after this are not yet safe.
    pub last_archived_unix: Option<i64>,
    /// The segment whose push last failed.
    pub last_failed_wal: Option<String>,
    /// When that failure happened.
    pub last_failed_unix: Option<i64>,
}

impl ArchiveState {
    /// True when the last push failed and none succeeded since: point-in-time recovery
    /// is broken from the last archived segment on.
    pub fn failing(&self) -> bool {
        archive_failing(self.last_failed_unix, self.last_archived_unix)
    }
}

/// The longest the schedule leaves between two backup runs, in days (at least one):
/// the diff interval when diffs run, capped by the full interval; else the full one.
/// What the host's `backup-overdue` alert and the guest's metrics both measure against.
pub fn schedule_gap_days(full_every_days: u32, diff_every_days: u32) -> u32 {
    let days = match diff_every_days {
        0 => full_every_days,
        d => d.min(full_every_days.max(1)),
    };
    days.max(1)
}

/// True when the archiver's last attempt (`last_failed`) is no older than its last
/// success (`last_ok`): nothing was archived since it failed.
pub fn archive_failing<T: PartialOrd>(last_failed: Option<T>, last_ok: Option<T>) -> bool {
    match (last_failed, last_ok) {
        (Some(failed), Some(ok)) => failed >= ok,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The backups part of the guest's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// Why backups do not work at all (the backup disk, the stanza), when they don't.
    pub problem: Option<String>,
    /// The newest run, whatever its outcome.
    pub last_run: Option<BackupRun>,
    /// The newest run that made a set.
    pub last_ok: Option<BackupRun>,
    /// WAL archiving.
    pub archive: ArchiveState,
    /// What a restore can reach.
    pub window: Option<RecoveryWindow>,
    /// Number of sets in the repository.
    pub sets: usize,
    /// The backup disk's space.
    pub disk: Option<crate::messages::DiskUsage>,
    /// repo2, when configured.
    #[serde(default)]
    pub offsite: Option<OffsiteStatus>,
}

/// The guest's answer to a [`BackupRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupAnswer {
    /// The request's id.
    pub id: u64,
    /// True when the request was carried out.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
    /// The run, for [`BackupRequest::Now`] (to repo1).
    #[serde(default)]
    pub run: Option<BackupRun>,
    /// The run to repo2, for [`BackupRequest::Now`] when repo2 is configured.
    #[serde(default)]
    pub offsite_run: Option<BackupRun>,
    /// The repository, for [`BackupRequest::List`].
    #[serde(default)]
    pub catalog: Option<BackupCatalog>,
}

impl BackupAnswer {
    /// A refusal or failure.
    pub fn failed(id: u64, message: impl Into<String>) -> BackupAnswer {
        BackupAnswer {
            ok: false,
            ..BackupAnswer::done(id, message)
        }
    }

    /// A request carried out, with nothing more than `message` to say.
    pub fn done(id: u64, message: impl Into<String>) -> BackupAnswer {
        BackupAnswer {
            id,
            ok: true,
            message: message.into(),
            run: None,
            offsite_run: None,
            catalog: None,
        }
    }
}

/// `unix` seconds as UTC text, `2026-12-02T16:04:05Z`: how the guest names times in
/// its messages and the host prints them, in a form `restore --to` reads back.
pub fn utc_text(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedules_gap_is_the_diff_interval_capped_by_the_full_one() {
        assert_eq!(schedule_gap_days(7, 1), 1);
        assert_eq!(schedule_gap_days(7, 0), 7);
        assert_eq!(schedule_gap_days(2, 5), 2);
        assert_eq!(schedule_gap_days(0, 0), 1);
    }

    #[test]
    fn utc_text_is_rfc3339() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_text(1_796_227_445), "2026-12-02T16:04:05Z");
        assert_eq!(utc_text(-1), "1969-12-31T23:59:59Z");
    }

    fn good() -> BackupConfig {
        BackupConfig::with_defaults("/dev/vdc")
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(good().validate(), Ok(()));
        type Spoil = fn(&mut BackupConfig);
        let cases: [(Spoil, &str); 5] = [
            (|c| c.device = "/etc/passwd".into(), "backup.device"),
            (
                |c| c.archive_timeout_secs = 0,
                "backup.archive_timeout_secs",
            ),
            (|c| c.retention_days = 0, "backup.retention_days"),
            (|c| c.full_every_days = 8, "backup.schedule.full_every_days"),
            (|c| c.diff_every_days = 9, "backup.schedule.diff_every_days"),
        ];
        for (spoil, field) in cases {
            let mut c = good();
            spoil(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn archiving_fails_only_when_the_last_push_failed() {
        let mut a = ArchiveState::default();
        assert!(!a.failing());
        a.last_archived_unix = Some(100);
        a.last_failed_unix = Some(90);
        assert!(!a.failing());
        a.last_failed_unix = Some(120);
        assert!(a.failing());
    }

    #[test]
    fn requests_are_tagged_json() {
        let r = BackupRequest::Restore {
            target: RestoreTarget::Time {
                time: "2026-12-02T16:04:05Z".into(),
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"request": "restore", "target": {"kind": "time", "time": "2026-12-02T16:04:05Z"}})
        );
        assert_eq!(serde_json::from_value::<BackupRequest>(v).unwrap(), r);
    }
}
