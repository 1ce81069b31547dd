//! Which conditions hold, read off one status: pure, so every threshold is unit-tested.

use crate::spec::BackupSpec;
use protocol::alerts::{Condition, Severity};
use protocol::backup::BackupStatus;
use protocol::messages::DiskUsage;
use protocol::replication::Fence;
use protocol::status::{Phase, StageStatus, VmStatus};

/// A disk this full (percent) warns.
pub const DISK_WARNING_PERCENT: u64 = 80;
/// A disk this full (percent) is critical.
pub const DISK_CRITICAL_PERCENT: u64 = 90;
/// Slack on top of the backup schedule before a backup counts as overdue.
const OVERDUE_GRACE_SECS: i64 = 6 * 3600;
/// WAL archived locally but not on the off-device server for this long (at least) lags.
const SHIPPING_LAG_MIN_SECS: i64 = 300;

/// A condition that holds now, with how urgent it is and what it is in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Which.
    pub condition: Condition,
    /// How urgent.
    pub severity: Severity,
    /// What holds.
    pub summary: String,
}

impl Found {
    /// A condition that holds.
    pub fn new(condition: Condition, severity: Severity, summary: impl Into<String>) -> Found {
        Found {
            condition,
            severity,
            summary: summary.into(),
        }
    }
}

fn found(condition: Condition, severity: Severity, summary: impl Into<String>) -> Found {
    Found::new(condition, severity, summary)
}

/// Every condition that holds in `status` at `now` (seconds since the epoch), for a VM
/// whose backups are configured as `backup`.
pub fn evaluate(status: &VmStatus, backup: &BackupSpec, now: i64) -> Vec<Found> {
    let mut out = Vec::new();
    if status.phase == Phase::Failed {
        let why = status
            .stages
            .iter()
            .find(|s| s.status == StageStatus::Failed)
            .map(|s| format!("stage {} failed: {}", s.stage, s.summary))
            .unwrap_or_else(|| "the VM failed".into());
        out.push(found(Condition::VmDown, Severity::Critical, why));
    }
    let Some(guest) = &status.guest else {
        return out;
    };
    if let Some(d) = &guest.data_disk {
        disk(&mut out, Condition::DataDiskFull, "data disk", d);
        if d.reserve_released {
            out.push(found(
                Condition::ReserveReleased,
                Severity::Critical,
                "the data disk filled up: its emergency reserve is released so the server can delete; free space or grow the disk (sovereign disk grow --data SIZE)",
            ));
        }
    }
    if let Some(b) = &guest.backup {
        backups(&mut out, b, backup, now);
    }
    match &guest.fence {
        Some(Fence::Fenced { reason, .. }) => {
            out.push(found(Condition::Fenced, Severity::Critical, reason.clone()))
        }
        Some(Fence::Unconfirmed { reason, .. }) => out.push(found(
            Condition::PeerUnconfirmed,
            Severity::Warning,
            format!("cannot rule out a newer primary: {reason}"),
        )),
        _ => {}
    }
    if let Some(f) = restarting(&guest.services) {
        out.push(f);
    }
    out
}

/// Restarts in one boot from which a guest service counts as one that keeps
/// restarting (a single crash, brought back by PID 1, is not worth a notification).
pub const SERVICE_RESTARTS_WARNING: u32 = 3;
/// Restarts in one boot from which that is critical (as is being down at the check).
pub const SERVICE_RESTARTS_CRITICAL: u32 = 10;

/// `service-restarting`: the services PID 1 restarted [`SERVICE_RESTARTS_WARNING`] times
/// or more this boot, in one notice; critical when one of them is down now or reached
/// [`SERVICE_RESTARTS_CRITICAL`].
fn restarting(services: &[protocol::messages::ServiceStatus]) -> Option<Found> {
    let many: Vec<_> = services
        .iter()
        .filter(|s| s.restarts >= SERVICE_RESTARTS_WARNING)
        .collect();
    if many.is_empty() {
        return None;
    }
    let critical = many
        .iter()
        .any(|s| s.pid.is_none() || s.restarts >= SERVICE_RESTARTS_CRITICAL);
    let said: Vec<String> = many
        .iter()
        .map(|s| match s.pid {
            Some(pid) => format!(
                "{} restarted {} times this boot (running again, pid {pid})",
                s.name, s.restarts
            ),
            None => format!(
                "{} restarted {} times this boot and is down now",
                s.name, s.restarts
            ),
        })
        .collect();
    Some(found(
        Condition::ServiceRestarting,
        if critical {
            Severity::Critical
        } else {
            Severity::Warning
        },
        format!("{}: see `sovereign logs {}`", said.join("; "), many[0].name),
    ))
}

/// A disk at or past [`DISK_WARNING_PERCENT`].
fn disk(out: &mut Vec<Found>, condition: Condition, what: &str, d: &DiskUsage) {
    if d.total_bytes == 0 {
        return;
    }
    let used = d.total_bytes.saturating_sub(d.available_bytes);
    let percent = used.saturating_mul(100) / d.total_bytes;
    if percent < DISK_WARNING_PERCENT {
        return;
    }
    let severity = if percent >= DISK_CRITICAL_PERCENT {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    out.push(found(
        condition,
        severity,
        format!(
            "{what} {percent}% used ({:.1} of {:.1} GiB)",
            gib(used),
            gib(d.total_bytes)
        ),
    ));
}

/// The backup conditions: a failed or overdue run, archiving, the off-device copy, the
/// backup disk.
fn backups(out: &mut Vec<Found>, b: &BackupStatus, spec: &BackupSpec, now: i64) {
    if let Some(problem) = &b.problem {
        out.push(found(
            Condition::BackupsUnavailable,
            Severity::Critical,
            problem.clone(),
        ));
    }
    if let Some(run) = b.last_run.as_ref().filter(|r| !r.ok()) {
        out.push(found(
            Condition::BackupFailed,
            Severity::Critical,
            format!(
                "the {} backup to repo{} failed: {}",
                run.kind,
                run.repo,
                run.error.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    let every_days = protocol::backup::schedule_gap_days(
        spec.schedule.full_every_days,
        spec.schedule.diff_every_days,
    );
    let allowed = i64::from(every_days) * 86_400 + OVERDUE_GRACE_SECS;
    if let Some(ok) = &b.last_ok {
        let age = now - ok.started_unix;
        if age > allowed {
            let severity = if age > 2 * allowed {
                Severity::Critical
            } else {
                Severity::Warning
            };
            out.push(found(
                Condition::BackupOverdue,
                severity,
                format!(
                    "the last good backup is {} hours old (the schedule allows {})",
                    age / 3600,
                    allowed / 3600
                ),
            ));
        }
    }
    let a = &b.archive;
    if let Some(failed) = a.last_failed_unix {
        let last_ok = a.last_archived_unix.unwrap_or(0);
        let limit = 2 * i64::from(spec.archive_timeout_secs.max(1));
        if failed >= last_ok && now - last_ok.max(failed - limit) >= limit {
            out.push(found(
                Condition::WalNotArchived,
                Severity::Critical,
                format!(
                    "WAL archiving is failing ({} last failed){}",
                    a.last_failed_wal.as_deref().unwrap_or("a segment"),
                    a.last_archived_unix
                        .map(|t| format!("; nothing archived for {} min", (now - t) / 60))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(o) = &b.offsite {
        let refused = o.problem.clone().or_else(|| {
            o.last_run.as_ref().filter(|r| !r.ok()).map(|r| {
                r.error
                    .clone()
                    .unwrap_or_else(|| "the last run failed".into())
            })
        });
        if let Some(why) = refused {
            out.push(found(
                Condition::OffsiteRefused,
                Severity::Critical,
                format!("the off-device copy at {} is refused: {why}", o.target),
            ));
        }
        let lag_limit = SHIPPING_LAG_MIN_SECS.max(2 * i64::from(spec.archive_timeout_secs));
        if let (Some(archived), Some(archived_at)) = (&a.last_archived_wal, a.last_archived_unix) {
            let behind = o.shipped_wal.as_ref().is_none_or(|s| s < archived);
            // Since the last segment went out; before the first, since the newest
            // archived one (a steady stream keeps moving that, so it counts only then).
            let waited = now - o.shipped_unix.unwrap_or(archived_at);
            if behind && waited >= lag_limit {
                out.push(found(
                    Condition::OffsiteLagging,
                    Severity::Warning,
                    format!(
                        "WAL up to {archived} is archived on the backup disk but not yet on the off-device server{}",
                        o.shipping_problem
                            .as_deref()
                            .map(|p| format!(": {p}"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
    }
    if let Some(d) = &b.disk {
        disk(out, Condition::BackupDiskFull, "backup disk", d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::backup::{ArchiveState, BackupKind, BackupRun};
    use protocol::messages::GuestStatus;
    use protocol::offsite::OffsiteStatus;

    const NOW: i64 = 1_800_000_000;

    fn phone_spec() -> crate::spec::Spec {
        let env = crate::spec::tests::env_in(std::path::Path::new("/data/sovereign"), true);
        crate::spec::Spec::builtin_sql(&env).unwrap()
    }

    fn spec() -> BackupSpec {
        phone_spec().backup
    }

    fn base() -> VmStatus {
        crate::ipc::base_status(&phone_spec(), Phase::Up)
    }

    fn status_with(backup: BackupStatus) -> VmStatus {
        let mut s = base();
        s.guest = Some(GuestStatus {
            backup: Some(Box::new(backup)),
            ..GuestStatus::default()
        });
        s
    }

    fn run(ok: bool, at: i64) -> BackupRun {
        BackupRun {
            kind: BackupKind::Incr,
            repo: 2,
            started_unix: at,
            duration_ms: 1,
            label: ok.then(|| "x".into()),
            repo_bytes: None,
            error: (!ok).then(|| "host key mismatch".into()),
        }
    }

    fn conditions(f: &[Found]) -> Vec<(Condition, Severity)> {
        f.iter().map(|f| (f.condition, f.severity)).collect()
    }

    fn usage(total: u64, available: u64) -> DiskUsage {
        DiskUsage {
            total_bytes: total,
            available_bytes: available,
            reserve_released: false,
        }
    }

    #[test]
    fn a_healthy_status_raises_nothing() {
        let b = BackupStatus {
            last_run: Some(run(true, NOW - 60)),
            last_ok: Some(run(true, NOW - 60)),
            disk: Some(usage(100, 50)),
            ..BackupStatus::default()
        };
        assert_eq!(evaluate(&status_with(b), &spec(), NOW), []);
    }

    #[test]
    fn a_service_that_keeps_restarting_is_raised_and_one_crash_is_not() {
        let service =
            |name: &str, pid: Option<u32>, restarts: u32| protocol::messages::ServiceStatus {
                name: name.into(),
                pid,
                restarts,
            };
        let with = |services| {
            let mut s = base();
            s.guest = Some(GuestStatus {
                services,
                ..GuestStatus::default()
            });
            evaluate(&s, &spec(), NOW)
        };
        assert_eq!(
            with(vec![
                service("postgres", None, 1),
                service("tailscaled", Some(9), 2)
            ]),
            []
        );
        let warned = with(vec![service("postgres", Some(42), 3)]);
        assert_eq!(
            conditions(&warned),
            [(Condition::ServiceRestarting, Severity::Warning)]
        );
        assert_eq!(
            warned[0].summary,
            "postgres restarted 3 times this boot (running again, pid 42): see `sovereign logs postgres`"
        );
        let down = with(vec![
            service("tailscaled", None, 4),
            service("postgres", Some(1), 0),
        ]);
        assert_eq!(
            conditions(&down),
            [(Condition::ServiceRestarting, Severity::Critical)]
        );
        assert!(down[0]
            .summary
            .contains("tailscaled restarted 4 times this boot and is down now"));
        let many = with(vec![service("postgres", Some(7), 10)]);
        assert_eq!(many[0].severity, Severity::Critical);
    }

    #[test]
    fn disks_warn_at_80_and_are_critical_at_90_percent() {
        for (available, expect) in [
            (21, vec![]),
            (20, vec![(Condition::BackupDiskFull, Severity::Warning)]),
            (10, vec![(Condition::BackupDiskFull, Severity::Critical)]),
        ] {
            let b = BackupStatus {
                disk: Some(usage(100, available)),
                ..BackupStatus::default()
            };
            assert_eq!(conditions(&evaluate(&status_with(b), &spec(), NOW)), expect);
        }
    }

    #[test]
    fn a_refused_offsite_run_and_an_overdue_backup_are_named() {
        let b = BackupStatus {
            last_ok: Some(run(true, NOW - 10 * 86_400)),
            offsite: Some(OffsiteStatus {
                target: "root@box:/repo".into(),
                problem: None,
                last_run: Some(run(false, NOW - 5)),
                last_ok: None,
                sets: 0,
                shipped_wal: None,
                shipped_unix: None,
                shipping_problem: None,
            }),
            ..BackupStatus::default()
        };
        let f = evaluate(&status_with(b), &spec(), NOW);
        assert_eq!(
            conditions(&f),
            [
                (Condition::BackupOverdue, Severity::Critical),
                (Condition::OffsiteRefused, Severity::Critical)
            ]
        );
        assert!(f[1].summary.contains("host key mismatch"), "{f:?}");
    }

    #[test]
    fn archiving_counts_as_stopped_only_after_twice_the_timeout() {
        let limit = 2 * i64::from(spec().archive_timeout_secs);
        let archive = |failed_ago: i64| ArchiveState {
            last_archived_wal: Some("000000010000000000000003".into()),
            last_archived_unix: Some(NOW - failed_ago - 1),
            last_failed_wal: Some("000000010000000000000004".into()),
            last_failed_unix: Some(NOW - failed_ago),
        };
        for (ago, raised) in [(limit / 2, false), (limit, true)] {
            let b = BackupStatus {
                archive: archive(ago),
                ..BackupStatus::default()
            };
            let f = evaluate(&status_with(b), &spec(), NOW);
            assert_eq!(!f.is_empty(), raised, "failing for {ago} s: {f:?}");
        }
    }

    #[test]
    fn shipping_lags_only_once_nothing_went_out_for_the_limit() {
        let b = |shipped_unix: Option<i64>, archived_ago: i64| BackupStatus {
            archive: ArchiveState {
                last_archived_wal: Some("000000010000000000000009".into()),
                last_archived_unix: Some(NOW - archived_ago),
                ..ArchiveState::default()
            },
            offsite: Some(OffsiteStatus {
                target: "root@box:/repo".into(),
                problem: None,
                last_run: None,
                last_ok: None,
                sets: 1,
                shipped_wal: shipped_unix.map(|_| "000000010000000000000005".into()),
                shipped_unix,
                shipping_problem: None,
            }),
            ..BackupStatus::default()
        };
        let lagging = |s: BackupStatus| {
            conditions(&evaluate(&status_with(s), &spec(), NOW))
                .contains(&(Condition::OffsiteLagging, Severity::Warning))
        };
        assert!(!lagging(b(None, 5)), "the first segment, just archived");
        assert!(!lagging(b(Some(NOW - 20), 5)), "shipping keeps up");
        assert!(lagging(b(Some(NOW - 900), 5)), "nothing shipped for 15 min");
        assert!(lagging(b(None, 900)), "the first segment never shipped");
    }

    #[test]
    fn without_the_guest_only_the_vm_itself_is_judged() {
        let mut s = base();
        assert_eq!(evaluate(&s, &spec(), NOW), []);
        s.phase = Phase::Failed;
        assert_eq!(
            conditions(&evaluate(&s, &spec(), NOW)),
            [(Condition::VmDown, Severity::Critical)]
        );
    }
}
