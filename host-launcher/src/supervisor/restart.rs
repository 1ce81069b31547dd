//! `restart = "on-failure"`: when the VMM of an up VM exits without being asked to, the
//! supervisor logs its exit status and the console's last lines, stops what is left of
//! the VM's processes, waits a growing pause and launches the VM again; the guest then
//! proves every stage anew. At most [`PER_HOUR`] restarts an hour; past that, or with
//! the policy `no`, the VM is stopped and reported as before. `stop` never restarts
//! anything: it ends the supervisor.

use super::{Flow, Supervisor, FAILED_BOOT_SHUTDOWN};
use crate::ipc::{Phase, VmRestart};
use crate::rundir::Role;
use crate::spec::RestartPolicy;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Restarts allowed within one hour.
pub const PER_HOUR: usize = 5;
/// The window [`PER_HOUR`] counts in.
const WINDOW: Duration = Duration::from_secs(3600);

/// The restarts of the last hour, and the pause before the next one.
#[derive(Debug, Default)]
pub(super) struct RestartBudget {
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// Takes a restart at `now`: the pause before it (1, 2, 4, 8, 16 s for the first to
    /// the fifth within the hour), or `None` when the hour's restarts are spent.
    pub(super) fn take(&mut self, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= PER_HOUR {
            return None;
        }
        let pause = Duration::from_secs(1 << self.recent.len());
        self.recent.push_back(now);
        Some(pause)
    }
}

/// Whether the exit of `role` in `phase` is one `policy` answers with a new boot: the
/// VMM's (or, under QEMU, its vsock device's) while the VM is up.
pub(super) fn wants_restart(policy: RestartPolicy, phase: Phase, role: Role) -> bool {
    policy == RestartPolicy::OnFailure
        && phase == Phase::Up
        && matches!(role, Role::Vmm | Role::VhostDeviceVsock)
}

impl Supervisor {
    /// The VMM died while the VM was up: boot it again if the policy and the hour's
    /// budget allow; `None` when they do not (the caller stops the VM).
    pub(super) async fn restart_vm(
        &mut self,
        role: Role,
        status: std::process::ExitStatus,
    ) -> Option<Flow> {
        if !wants_restart(self.spec.restart, self.phase, role) {
            return None;
        }
        let Some(pause) = self.restart_budget.take(Instant::now()) else {
            log::error!(
                "{role} exited ({status}): {PER_HOUR} restarts within the hour already; stopping the VM"
            );
            return None;
        };
        // Under QEMU the vsock device may notice first; the VMM's own exit is the news.
        let mut exited = format!("{role}: {status}");
        if role != Role::Vmm {
            if let Some(vmm) = self.wait_exit(Role::Vmm, Duration::from_secs(3)).await {
                exited = format!("vmm: {vmm} ({exited})");
            }
        }
        let _ = self.console.poll();
        let tail = self.console.last_lines();
        log::warn!(
            "{exited} on its own; booting the VM again in {}s (restart policy on-failure). Console before it ended:\n{}",
            pause.as_secs(),
            tail.join("\n")
        );
        self.restarts.push(VmRestart {
            at_unix: super::now_unix(),
            exited,
            console_tail: tail,
        });
        // What is left of the old VM goes first, as `stop` would take it down.
        self.phase = Phase::Booting;
        let report = self.stop_all(FAILED_BOOT_SHUTDOWN, "the VMM died").await;
        self.phase = Phase::Booting;
        log::info!("before the restart: {}", report.steps.join("; "));
        if !report.nothing_left {
            log::error!("cannot restart: {}", report.steps.join("; "));
            return None;
        }
        tokio::time::sleep(pause).await;
        if let Err(e) = crate::console::rotate(&self.spec.console_log) {
            log::warn!("cannot move the old console log aside: {e}");
        }
        self.console =
            crate::console::ConsoleTail::new(&self.spec.console_log, super::CONSOLE_TAIL);
        Some(match self.launch().await {
            Ok(()) => Flow::Continue,
            Err(failure) => Flow::Exit(self.fail(failure).await),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_the_hour_allows_five() {
        let mut b = RestartBudget::default();
        let t0 = Instant::now();
        let pauses: Vec<_> = (0..6)
            .map(|i| b.take(t0 + Duration::from_secs(i * 60)))
            .collect();
        assert_eq!(
            pauses,
            [1, 2, 4, 8, 16]
                .map(|s| Some(Duration::from_secs(s)))
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        // An hour after the first, one slot is free again, with the longest pause.
        assert_eq!(
            b.take(t0 + WINDOW + Duration::from_secs(1)),
            Some(Duration::from_secs(16))
        );
    }

    #[test]
    fn only_the_vmm_of_an_up_vm_under_on_failure_is_restarted() {
        use RestartPolicy::*;
        assert!(wants_restart(OnFailure, Phase::Up, Role::Vmm));
        assert!(wants_restart(OnFailure, Phase::Up, Role::VhostDeviceVsock));
        assert!(!wants_restart(No, Phase::Up, Role::Vmm));
        assert!(!wants_restart(OnFailure, Phase::Booting, Role::Vmm));
        assert!(!wants_restart(OnFailure, Phase::Stopping, Role::Vmm));
        assert!(!wants_restart(OnFailure, Phase::Up, Role::Gvproxy));
    }
}
