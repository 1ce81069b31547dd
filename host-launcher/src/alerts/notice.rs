//! One message to the user about a condition: raised, said again while it holds,
//! cleared, or a test. Every sink renders it from here, so the phone and the webhook
//! say the same thing.

use protocol::alerts::{Condition, Severity};
use std::fmt;

/// Where a condition stands in a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// It began to hold (or grew more severe).
    Raised,
    /// It still holds, [`crate::spec::AlertsSpec::repeat_secs`] after it was last said.
    Repeated,
    /// It no longer holds.
    Cleared,
    /// `sovereign alerts test`.
    Test,
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoticeKind::Raised => "raised",
            NoticeKind::Repeated => "repeated",
            NoticeKind::Cleared => "cleared",
            NoticeKind::Test => "test",
        })
    }
}

/// A notice for the sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Raised, repeated, cleared or a test.
    pub kind: NoticeKind,
    /// The VM's name.
    pub vm: String,
    /// Which condition.
    pub condition: Condition,
    /// How urgent (a cleared one keeps the severity it had).
    pub severity: Severity,
    /// What holds (or held).
    pub summary: String,
    /// Since when it held (seconds since the epoch).
    pub since_unix: u64,
    /// When this notice was made.
    pub at_unix: u64,
}

impl Notice {
    /// One line, ASCII (it goes into HTTP headers): `sql: backup-disk-full (critical)`.
    pub fn title(&self) -> String {
        match self.kind {
            NoticeKind::Raised | NoticeKind::Repeated => {
                format!("{}: {} ({})", self.vm, self.condition, self.severity)
            }
            NoticeKind::Cleared => format!("{}: {} cleared", self.vm, self.condition),
            NoticeKind::Test => format!("{}: test alert", self.vm),
        }
    }

    /// The text: what holds and for how long.
    pub fn message(&self) -> String {
        let held =
            crate::terminal::human_duration(self.at_unix.saturating_sub(self.since_unix) * 1000);
        match self.kind {
            NoticeKind::Raised => self.summary.clone(),
            NoticeKind::Repeated => format!("{} (for {held} now)", self.summary),
            NoticeKind::Cleared => format!("no longer holds after {held}: {}", self.summary),
            NoticeKind::Test => format!(
                "{}: alerts from the Sovereign VM '{}' reach you here",
                self.summary, self.vm
            ),
        }
    }

    /// ntfy's priority name (1 min … 5 urgent, by name).
    pub fn ntfy_priority(&self) -> &'static str {
        match (self.kind, self.severity) {
            (NoticeKind::Cleared | NoticeKind::Test, _) => "default",
            (_, Severity::Critical) => "urgent",
            (_, Severity::Warning) => "high",
        }
    }

    /// Gotify's priority number (0 … 10; 8 and up alert on Android).
    pub fn gotify_priority(&self) -> u8 {
        match (self.kind, self.severity) {
            (NoticeKind::Cleared | NoticeKind::Test, _) => 4,
            (_, Severity::Critical) => 9,
            (_, Severity::Warning) => 7,
        }
    }

    /// A tag that stays the same for one condition of one VM: the phone replaces the
    /// notification instead of stacking repeats.
    pub fn tag(&self) -> String {
        format!("sovereign-{}-{}", self.vm, self.condition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: NoticeKind) -> Notice {
        Notice {
            kind,
            vm: "sql".into(),
            condition: Condition::BackupDiskFull,
            severity: Severity::Critical,
            summary: "backup disk 93% used (7.4 of 8.0 GiB)".into(),
            since_unix: 1000,
            at_unix: 1000 + 7200,
        }
    }

    #[test]
    fn each_kind_says_where_the_condition_stands() {
        assert_eq!(
            notice(NoticeKind::Raised).title(),
            "sql: backup-disk-full (critical)"
        );
        assert_eq!(
            notice(NoticeKind::Cleared).title(),
            "sql: backup-disk-full cleared"
        );
        assert!(notice(NoticeKind::Repeated)
            .message()
            .ends_with("(for 2h00m now)"));
        assert!(notice(NoticeKind::Cleared)
            .message()
            .starts_with("no longer holds after 2h00m: backup disk 93%"));
        assert_eq!(notice(NoticeKind::Raised).ntfy_priority(), "urgent");
        assert_eq!(notice(NoticeKind::Cleared).gotify_priority(), 4);
        assert_eq!(
            notice(NoticeKind::Raised).tag(),
            "sovereign-sql-backup-disk-full"
        );
    }
}
