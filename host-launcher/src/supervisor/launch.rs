//! The VM's host processes: started in order (each after the previous one's socket
//! exists), watched until they exit, and what an exit means: a failed boot while
//! booting, a stop once up, except gvproxy, which is restarted a few times, and the
//! VMM under `restart = "on-failure"` (see `restart`).

use super::failure::at_launch;
use super::{Flow, Supervisor, FAILED_BOOT_SHUTDOWN};
use crate::console::rotate;
use crate::ipc::{Event, Phase};
use crate::process;
use crate::readiness::{Failure, Readiness};
use crate::rundir::Role;
use std::time::{Duration, Instant};

/// How long a helper may take to create its socket.
const HELPER_READY: Duration = Duration::from_secs(15);
/// How often gvproxy is restarted after the VM was up before the VM is stopped.
const GVPROXY_RESTARTS: u32 = 5;

/// Whether an exit of `role` is answered with a restart: gvproxy's, once up, fewer than
/// [`GVPROXY_RESTARTS`] times (`restarts` so far).
fn restarts(phase: Phase, role: Role, restarts: u32) -> bool {
    phase == Phase::Up && role == Role::Gvproxy && restarts < GVPROXY_RESTARTS
}

/// The pause before restart number `n` (1, 2, ... seconds).
fn restart_delay(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

impl Supervisor {
    /// Starts the processes in order, each after the previous one's socket exists.
    pub(super) async fn launch(&mut self) -> Result<(), Failure> {
        // A new boot: its first connection gets a new session token.
        self.channel.session = None;
        // The clock of the first stage starts now: helpers take a fraction of a second.
        self.readiness = Some(Readiness::new(
            self.spec.cid,
            self.spec.wait_for,
            self.spec.timeouts.clone(),
            Instant::now(),
        ));
        let commands = self.plan.commands.clone();
        for cmd in &commands {
            if let Err(e) = rotate(&cmd.log) {
                log::warn!("cannot move {} aside: {e}", cmd.log.display());
            }
            log::info!("starting {}: {}", cmd.role, cmd.shell_line());
            let mut child = process::spawn(cmd, &self.run)
                .map_err(|e| at_launch(cmd.role.to_string(), e.to_string()))?;
            let pid = child.id().map_or(0, process::as_pid);
            if let Err(e) = process::wait_ready(cmd, &mut child, HELPER_READY).await {
                self.pids.insert(cmd.role, pid);
                self.watch_child(cmd.role, child);
                return Err(at_launch(cmd.role.to_string(), e.to_string()));
            }
            self.pids.insert(cmd.role, pid);
            self.watch_child(cmd.role, child);
            self.events.emit(Event::Launched {
                role: cmd.role,
                pid,
                elapsed_ms: self.elapsed_ms(),
            });
        }
        Ok(())
    }

    /// Reaps `child` in a task of its own and reports its exit to the main loop.
    fn watch_child(&self, role: Role, mut child: tokio::process::Child) {
        let tx = self.exit_tx.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    let _ = tx.send((role, status)).await;
                }
                Err(e) => log::warn!("cannot wait for {role}: {e}"),
            }
        });
    }

    /// A process exited: restart gvproxy, stop an up VM, or fail the boot.
    pub(super) async fn on_exit(&mut self, role: Role, status: std::process::ExitStatus) -> Flow {
        log::warn!("{role} exited: {status}");
        self.pids.remove(&role);
        let _ = std::fs::remove_file(self.run.pid_file(role));
        if restarts(self.phase, role, self.gvproxy_restarts) {
            self.gvproxy_restarts += 1;
            tokio::time::sleep(restart_delay(self.gvproxy_restarts)).await;
            if self.restart_gvproxy() {
                return Flow::Continue;
            }
        }
        if let Some(flow) = self.restart_vm(role, status).await {
            return flow;
        }
        if self.phase == Phase::Up {
            let report = self
                .stop_all(FAILED_BOOT_SHUTDOWN, &format!("{role} exited ({status})"))
                .await;
            log::warn!("stopped after {role} exited: {:?}", report.steps);
            return Flow::Exit(1);
        }
        let now = Instant::now();
        let p = self
            .readiness
            .as_mut()
            .map(|r| r.on_process_exit(role.name(), &status.to_string(), now))
            .unwrap_or_default();
        if p.is_empty() && self.readiness.is_none() {
            return Flow::Continue;
        }
        self.apply(p).await
    }

    /// Starts gvproxy again on fresh sockets; false when it could not be started.
    fn restart_gvproxy(&mut self) -> bool {
        let Some(cmd) = self
            .plan
            .commands
            .iter()
            .find(|c| c.role == Role::Gvproxy)
            .cloned()
        else {
            return false;
        };
        let _ = std::fs::remove_file(self.run.gvproxy_api_socket());
        let _ = std::fs::remove_file(self.run.gvproxy_frames_socket());
        let _ = std::fs::remove_file(self.run.vsock_port_socket(protocol::ports::NETWORK_PORT));
        match process::spawn(&cmd, &self.run) {
            Ok(child) => {
                log::info!("gvproxy restarted (restart {})", self.gvproxy_restarts);
                self.pids
                    .insert(Role::Gvproxy, child.id().map_or(0, process::as_pid));
                self.watch_child(Role::Gvproxy, child);
                true
            }
            Err(e) => {
                log::warn!("cannot restart gvproxy: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gvproxy_is_restarted_only_once_up_and_only_five_times() {
        assert!(restarts(Phase::Up, Role::Gvproxy, 0));
        assert!(restarts(Phase::Up, Role::Gvproxy, 4));
        assert!(!restarts(Phase::Up, Role::Gvproxy, 5));
        assert!(!restarts(Phase::Booting, Role::Gvproxy, 0));
        assert!(!restarts(Phase::Up, Role::Vmm, 0));
        assert!(!restarts(Phase::Up, Role::VhostDeviceVsock, 0));
        assert_eq!(restart_delay(1), Duration::from_secs(1));
        assert_eq!(restart_delay(5), Duration::from_secs(5));
    }
}
