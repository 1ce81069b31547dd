//! Ordered power-off: postgres (fast shutdown), tailscaled, every other process, sync,
//! unmount /data, remount / read-only, power off. Every step has a share of the host's
//! deadline ([`ShutdownPlan`]), SIGKILL waits included, so the guest's worst case fits
//! inside the deadline and the host never kills the VMM while the guest still syncs.
//! PID 1 never returns from here.

use super::reaper;
use super::running::Running;
use super::stop::StopBudget;
use crate::disks::Disk;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};
use std::io::Write;
use std::time::{Duration, Instant};

/// The console line that says the guest stopped cleanly (the host looks for it).
pub const CLEAN_SHUTDOWN_LINE: &str = "sovereign-init: clean shutdown complete, powering off";

/// How a deadline is shared out. Sync, unmounts and the power-off get `finish`; the
/// rest is split between postgres (half: it must checkpoint), tailscaled and the other
/// processes (a quarter each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownPlan {
    /// PostgreSQL's fast shutdown.
    pub postgres: StopBudget,
    /// tailscaled.
    pub tailscaled: StopBudget,
    /// Every other process (helpers, orphans).
    pub others: StopBudget,
    /// Reserved for sync, unmounting /data, remounting / and powering off.
    pub finish: Duration,
}

impl ShutdownPlan {
    /// The shortest deadline the plan honours; shorter ones are raised to it.
    pub const MIN_DEADLINE: Duration = Duration::from_secs(4);

    /// Shares `deadline` out.
    pub fn for_deadline(deadline: Duration) -> ShutdownPlan {
        let d = deadline.max(Self::MIN_DEADLINE);
        let finish = (d / 5).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let work = d - finish;
        let after_kill = (work / 16).min(Duration::from_secs(2));
        let share = |part: u32| StopBudget {
            grace: (work / part).saturating_sub(after_kill),
            after_kill,
        };
        ShutdownPlan {
            postgres: share(2),
            tailscaled: share(4),
            others: share(4),
            finish,
        }
    }

    /// The longest the stopping steps can take, `finish` included.
    pub fn worst_case(&self) -> Duration {
        self.postgres.worst_case()
            + self.tailscaled.worst_case()
            + self.others.worst_case()
            + self.finish
    }
}

/// True while any process other than PID 1 and kernel threads exists (kernel threads
/// have an empty command line). Zombies awaiting the reaper count as gone.
fn user_processes_left() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        if pid == 1 {
            return false;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        !zombie && !cmdline.is_empty()
    })
}

/// Reaps until no user process is left or `limit` passes.
fn reap_until_gone(limit: Duration) {
    let start = Instant::now();
    loop {
        reaper::reap_all();
        if !user_processes_left() || start.elapsed() >= limit {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops everything in order and powers off.
pub fn run(reason: &str, deadline: Duration, services: &mut Running, disks: &[&Disk]) -> ! {
    let plan = ShutdownPlan::for_deadline(deadline);
    log::info!("shutting down: {reason} (deadline {deadline:?}, plan {plan:?})");
    let start = Instant::now();
    if let Some(pg) = services.postgres.take() {
        log::info!("stopping postgres (fast shutdown)");
        pg.stop(plan.postgres);
    }
    if let Some(ts) = services.tailscale.take() {
        log::info!("stopping tailscaled");
        ts.stop(plan.tailscaled);
    }
    // Anything else still running (helpers, a mkfs or e2fsck of a boot in progress,
    // orphans): TERM, its share of the deadline, then KILL, then reap what died.
    if user_processes_left() {
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        reap_until_gone(plan.others.grace);
        if user_processes_left() {
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            reap_until_gone(plan.others.after_kill);
        }
    }
    reaper::reap_all();
    sync();
    // After every process is gone, so no mount can start behind our back.
    for disk in disks {
        disk.close_and_unmount();
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        log::warn!("remounting / read-only failed: {e}");
    }
    sync();
    log::info!("clean shutdown complete after {:?}", start.elapsed());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{CLEAN_SHUTDOWN_LINE}");
    let _ = out.flush();
    drop(out);
    let err = reboot(RebootMode::RB_POWER_OFF);
    // Only reached if the kernel refused; PID 1 must not exit, so wait for ever.
    log::error!("power-off failed: {err:?}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_fits_every_deadline_the_host_can_give() {
        for secs in 0..=3600u64 {
            let d = Duration::from_secs(secs);
            let plan = ShutdownPlan::for_deadline(d);
            let allowed = d.max(ShutdownPlan::MIN_DEADLINE);
            assert!(
                plan.worst_case() <= allowed,
                "{secs}s: {plan:?} takes up to {:?}",
                plan.worst_case()
            );
            assert!(plan.finish >= Duration::from_secs(1), "{secs}s: {plan:?}");
            assert!(
                plan.postgres.grace >= plan.tailscaled.grace,
                "{secs}s: {plan:?}"
            );
        }
        let plan = ShutdownPlan::for_deadline(Duration::from_secs(30));
        assert_eq!(plan.finish, Duration::from_secs(6));
        assert_eq!(plan.postgres.after_kill, Duration::from_millis(1500));
        assert_eq!(plan.postgres.grace, Duration::from_millis(10_500));
    }
}
