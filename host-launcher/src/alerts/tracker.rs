//! Raise once, say again at an interval while it holds, clear with a message: the state
//! of every active condition between two checks.

use super::conditions::Found;
use super::notice::{Notice, NoticeKind};
use protocol::alerts::{ActiveAlert, Condition};
use std::collections::BTreeMap;

/// The active conditions of one VM and when each was last said.
#[derive(Debug)]
pub struct Tracker {
    vm: String,
    repeat_secs: u64,
    active: BTreeMap<Condition, ActiveAlert>,
}

impl Tracker {
    /// Nothing active yet; a condition that holds is said again every `repeat_secs`.
    pub fn new(vm: &str, repeat_secs: u64) -> Tracker {
        Tracker {
            vm: vm.to_string(),
            repeat_secs,
            active: BTreeMap::new(),
        }
    }

    /// What holds now (`found`, at `now`) against what held: the notices to send.
    /// Conditions read off the guest's status stay as they were when the guest did not
    /// answer (`guest_answered` false): a missed status is not a recovery.
    pub fn update(&mut self, now: u64, found: Vec<Found>, guest_answered: bool) -> Vec<Notice> {
        let mut notices = Vec::new();
        let holding: Vec<Condition> = found.iter().map(|f| f.condition).collect();
        let gone: Vec<Condition> = self
            .active
            .keys()
            .filter(|c| !holding.contains(c))
            .filter(|c| guest_answered || **c == Condition::VmDown)
            .copied()
            .collect();
        for c in gone {
            if let Some(a) = self.active.remove(&c) {
                notices.push(self.notice(NoticeKind::Cleared, &a, now));
            }
        }
        for f in found {
            let kind = match self.active.get_mut(&f.condition) {
                None => {
                    self.active.insert(
                        f.condition,
                        ActiveAlert {
                            condition: f.condition,
                            severity: f.severity,
                            summary: f.summary,
                            since_unix: now,
                            notified_unix: 0,
                        },
                    );
                    Some(NoticeKind::Raised)
                }
                Some(a) => {
                    let graver = f.severity > a.severity;
                    a.severity = f.severity;
                    a.summary = f.summary;
                    if graver {
                        Some(NoticeKind::Raised)
                    } else if now.saturating_sub(a.notified_unix) >= self.repeat_secs {
                        Some(NoticeKind::Repeated)
                    } else {
                        None
                    }
                }
            };
            if let (Some(kind), Some(a)) = (kind, self.active.get_mut(&f.condition)) {
                a.notified_unix = now;
                let a = a.clone();
                notices.push(self.notice(kind, &a, now));
            }
        }
        notices
    }

    fn notice(&self, kind: NoticeKind, a: &ActiveAlert, now: u64) -> Notice {
        Notice {
            kind,
            vm: self.vm.clone(),
            condition: a.condition,
            severity: a.severity,
            summary: a.summary.clone(),
            since_unix: a.since_unix,
            at_unix: now,
        }
    }

    /// The active conditions, oldest first, as `status` lists them.
    pub fn active(&self) -> Vec<ActiveAlert> {
        let mut v: Vec<ActiveAlert> = self.active.values().cloned().collect();
        v.sort_by_key(|a| (a.since_unix, a.condition));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::alerts::Severity;

    fn disk(severity: Severity) -> Found {
        Found {
            condition: Condition::BackupDiskFull,
            severity,
            summary: format!("backup disk ({severity})"),
        }
    }

    fn kinds(n: &[Notice]) -> Vec<(NoticeKind, Condition)> {
        n.iter().map(|n| (n.kind, n.condition)).collect()
    }

    #[test]
    fn raised_once_repeated_at_the_interval_cleared_once() {
        let mut t = Tracker::new("sql", 60);
        let raise = t.update(100, vec![disk(Severity::Warning)], true);
        assert_eq!(
            kinds(&raise),
            [(NoticeKind::Raised, Condition::BackupDiskFull)]
        );
        assert!(t
            .update(130, vec![disk(Severity::Warning)], true)
            .is_empty());
        let again = t.update(160, vec![disk(Severity::Warning)], true);
        assert_eq!(
            kinds(&again),
            [(NoticeKind::Repeated, Condition::BackupDiskFull)]
        );
        assert_eq!(t.active()[0].since_unix, 100);
        assert_eq!(t.active()[0].notified_unix, 160);
        let clear = t.update(170, vec![], true);
        assert_eq!(
            kinds(&clear),
            [(NoticeKind::Cleared, Condition::BackupDiskFull)]
        );
        assert_eq!(clear[0].since_unix, 100);
        assert!(t.update(180, vec![], true).is_empty());
        assert!(t.active().is_empty());
    }

    #[test]
    fn growing_graver_is_said_at_once_and_a_silent_guest_clears_nothing() {
        let mut t = Tracker::new("sql", 3600);
        t.update(0, vec![disk(Severity::Warning)], true);
        let graver = t.update(5, vec![disk(Severity::Critical)], true);
        assert_eq!(
            kinds(&graver),
            [(NoticeKind::Raised, Condition::BackupDiskFull)]
        );
        assert_eq!(graver[0].severity, Severity::Critical);
        assert!(
            t.update(10, vec![], false).is_empty(),
            "no answer is no recovery"
        );
        assert_eq!(t.active().len(), 1);
    }
}
