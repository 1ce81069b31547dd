//! The replication conditions, read off the replication status query
//! ([`protocol::replication::STATUS_SQL`]) the watch runs when the spec has a peer: a
//! primary's replica gone, a replica behind, a slot holding too much of the disk. Pure,
//! like [`super::conditions`].

use super::conditions::Found;
use protocol::alerts::{Condition, Severity};
use protocol::replication::{ReplicationStatus, Role};

/// A slot holding this percent of the data disk warns.
pub const SLOT_WARNING_PERCENT: u64 = 25;
/// A slot holding this percent of the data disk is critical.
pub const SLOT_CRITICAL_PERCENT: u64 = 50;

/// The thresholds the spec sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A slot unused this long (two checks) means its replica is gone.
    pub disconnected_after_secs: u64,
    /// A replica further behind than this lags.
    pub lag_secs: u64,
    /// The data disk's size, for a slot's share of it.
    pub disk_bytes: u64,
}

/// Every replication condition that holds in `s`.
pub fn evaluate(s: &ReplicationStatus, limits: &Limits) -> Vec<Found> {
    let mut out = Vec::new();
    match s.role {
        Role::Primary => {
            for slot in &s.slots {
                let gone = slot
                    .inactive_secs
                    .is_some_and(|secs| secs >= limits.disconnected_after_secs);
                if slot.lost() {
                    out.push(Found::new(
                        Condition::ReplicaDisconnected,
                        Severity::Critical,
                        format!("the replica of slot {} fell further behind than this node keeps WAL for: on its host, `sovereign rejoin --fresh`", slot.name),
                    ));
                } else if gone {
                    out.push(Found::new(
                        Condition::ReplicaDisconnected,
                        Severity::Warning,
                        format!(
                            "the replica of slot {} has not streamed for {} s; its slot keeps WAL for it meanwhile",
                            slot.name,
                            slot.inactive_secs.unwrap_or(0)
                        ),
                    ));
                }
                let share = slot.share_of(limits.disk_bytes);
                if share >= SLOT_WARNING_PERCENT {
                    let severity = if share >= SLOT_CRITICAL_PERCENT {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    };
                    out.push(Found::new(
                        Condition::SlotRetainsTooMuch,
                        severity,
                        format!("slot {} holds {share}% of the data disk in WAL: bring its replica back, or drop the slot", slot.name),
                    ));
                }
            }
            if s.replicas.is_empty() {
                if let Some(secs) = s.lag_seconds.filter(|secs| *secs > limits.lag_secs) {
                    out.push(lagging(&s.peer, secs, limits));
                }
            }
            for r in &s.replicas {
                if let Some(secs) = r.lag_seconds.filter(|secs| *secs > limits.lag_secs) {
                    out.push(lagging(&r.name, secs, limits));
                }
            }
        }
        // A replica's lag in seconds is the age of the last replayed commit, which
        // grows while the primary is idle: it lags only with WAL still to replay.
        Role::Replica => {
            let behind = s.lag_bytes.is_some_and(|b| b > 0);
            if let Some(secs) = s
                .lag_seconds
                .filter(|secs| behind && *secs > limits.lag_secs)
            {
                out.push(lagging("this replica", secs, limits));
            }
        }
    }
    out
}

fn lagging(who: &str, secs: u64, limits: &Limits) -> Found {
    Found::new(
        Condition::ReplicaLagging,
        Severity::Warning,
        format!(
            "{who} is {secs} s behind its primary (the spec allows {} s)",
            limits.lag_secs
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::replication::SlotStatus;

    const GIB: u64 = 1 << 30;
    const LIMITS: Limits = Limits {
        disconnected_after_secs: 60,
        lag_secs: 300,
        disk_bytes: 4 * GIB,
    };

    fn primary(slot: SlotStatus, lag_seconds: Option<u64>) -> ReplicationStatus {
        ReplicationStatus {
            role: Role::Primary,
            timeline: 1,
            state: "streaming async".into(),
            peer: "sql_replica".into(),
            lag_bytes: Some(0),
            lag_seconds,
            slots: vec![slot],
            replicas: vec![],
        }
    }

    fn slot(retained: u64, inactive_secs: Option<u64>, wal_status: &str) -> SlotStatus {
        SlotStatus {
            name: "sql_replica".into(),
            active: inactive_secs.is_none(),
            wal_status: wal_status.into(),
            retained_bytes: (wal_status != "lost").then_some(retained),
            inactive_secs,
        }
    }

    fn found(s: &ReplicationStatus) -> Vec<(Condition, Severity)> {
        evaluate(s, &LIMITS)
            .into_iter()
            .map(|f| (f.condition, f.severity))
            .collect()
    }

    #[test]
    fn a_streaming_replica_holds_nothing() {
        assert_eq!(
            found(&primary(slot(GIB / 8, None, "reserved"), Some(0))),
            []
        );
    }

    #[test]
    fn a_replica_gone_for_two_checks_and_one_whose_wal_was_lost() {
        let brief = primary(slot(GIB / 8, Some(59), "reserved"), None);
        assert_eq!(found(&brief), []);
        let gone = primary(slot(GIB / 8, Some(60), "reserved"), None);
        assert_eq!(
            found(&gone),
            [(Condition::ReplicaDisconnected, Severity::Warning)]
        );
        let lost = primary(slot(0, Some(3600), "lost"), None);
        assert_eq!(
            found(&lost),
            [(Condition::ReplicaDisconnected, Severity::Critical)]
        );
    }

    #[test]
    fn a_slot_warns_at_a_quarter_of_the_disk_and_is_critical_at_half() {
        let quarter = primary(slot(GIB, None, "reserved"), None);
        assert_eq!(
            found(&quarter),
            [(Condition::SlotRetainsTooMuch, Severity::Warning)]
        );
        let half = primary(slot(2 * GIB, None, "extended"), None);
        assert_eq!(
            found(&half),
            [(Condition::SlotRetainsTooMuch, Severity::Critical)]
        );
    }

    #[test]
    fn lag_counts_on_a_replica_only_with_wal_left_to_replay() {
        let mut r = primary(slot(0, None, "reserved"), Some(301));
        assert_eq!(found(&r), [(Condition::ReplicaLagging, Severity::Warning)]);
        r.role = Role::Replica;
        r.slots.clear();
        r.lag_bytes = Some(0);
        assert_eq!(
            found(&r),
            [],
            "an idle primary: old commits, nothing to replay"
        );
        r.lag_bytes = Some(8192);
        assert_eq!(found(&r), [(Condition::ReplicaLagging, Severity::Warning)]);
    }
}
