//! The conditions the supervisor watches for and tells its user about (a backup that
//! stopped, a disk filling up, the off-device copy refused ...): their names, which are
//! part of the interface (webhook headers, `status --json`, the Prometheus rules that
//! mirror them), and an active one as `status` lists it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A condition the supervisor raises and clears. The kebab-case names are stable: a
/// user's filters and rules match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// The newest backup run failed.
    BackupFailed,
    /// No backup succeeded for longer than the schedule allows.
    BackupOverdue,
    /// Backups cannot run at all (no repository, no stanza, a foreign backup disk).
    BackupsUnavailable,
    /// WAL archiving has failed for longer than twice `archive_timeout_secs`.
    WalNotArchived,
    /// The off-device server refuses or cannot be reached.
    OffsiteRefused,
    /// WAL stopped reaching the off-device server.
    OffsiteLagging,
    /// The data disk is 80% full or more.
    DataDiskFull,
    /// The backup disk is 80% full or more.
    BackupDiskFull,
    /// The data disk filled up and its emergency reserve was released.
    ReserveReleased,
    /// This primary stopped taking writes: its peer is the primary.
    Fenced,
    /// This primary cannot rule out that its peer was promoted.
    PeerUnconfirmed,
    /// The VM failed (a stage, or the VMM died past its restart budget).
    VmDown,
    /// A supervised service in the guest keeps restarting.
    ServiceRestarting,
    /// A primary's replica has not streamed for longer than two checks (critical once
    /// its slot lost WAL the replica still needed).
    ReplicaDisconnected,
    /// A replica is further behind than `[alerts] replica_lag_secs`.
    ReplicaLagging,
    /// A replication slot holds 25% of the data disk or more (critical from 50%).
    SlotRetainsTooMuch,
    /// The VM's CA or server certificate expires within 30 days (critical within 7).
    CertificateExpiring,
    /// Only sent by `sovereign alerts test`: proves a sink works.
    Test,
}

impl Condition {
    /// The stable name (`backup-disk-full`).
    pub fn name(self) -> &'static str {
        match self {
            Condition::BackupFailed => "backup-failed",
            Condition::BackupOverdue => "backup-overdue",
            Condition::BackupsUnavailable => "backups-unavailable",
            Condition::WalNotArchived => "wal-not-archived",
            Condition::OffsiteRefused => "offsite-refused",
            Condition::OffsiteLagging => "offsite-lagging",
            Condition::DataDiskFull => "data-disk-full",
            Condition::BackupDiskFull => "backup-disk-full",
            Condition::ReserveReleased => "reserve-released",
            Condition::Fenced => "fenced",
            Condition::PeerUnconfirmed => "peer-unconfirmed",
            Condition::VmDown => "vm-down",
            Condition::ServiceRestarting => "service-restarting",
            Condition::ReplicaDisconnected => "replica-disconnected",
            Condition::ReplicaLagging => "replica-lagging",
            Condition::SlotRetainsTooMuch => "slot-retains-too-much",
            Condition::CertificateExpiring => "certificate-expiring",
            Condition::Test => "test",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How urgent a condition is now (a disk at 85% warns, at 95% it is critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Needs attention soon.
    Warning,
    /// Data is at risk now.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// A condition that holds now, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveAlert {
    /// Which condition.
    pub condition: Condition,
    /// How urgent, as last seen.
    pub severity: Severity,
    /// What holds, in words, as last seen ("backup disk 86% used: 3.4 of 3.9 GiB").
    pub summary: String,
    /// Since when it holds (seconds since the epoch, the host's clock).
    pub since_unix: u64,
    /// When a sink was last told (seconds since the epoch); 0 before the first time.
    #[serde(default)]
    pub notified_unix: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for c in [
            Condition::BackupFailed,
            Condition::BackupDiskFull,
            Condition::OffsiteRefused,
            Condition::VmDown,
            Condition::ReplicaDisconnected,
            Condition::ReplicaLagging,
            Condition::SlotRetainsTooMuch,
            Condition::CertificateExpiring,
            Condition::Test,
        ] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
    }
}
