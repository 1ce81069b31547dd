//! Stopping: the guest is asked to shut down over the control channel (then `crosvm
//! stop`, then signals), the helpers are stopped, and what is left is reported. Also
//! the supervisor's own last duties before it exits.

use super::requests::GuestRequestError;
use super::Supervisor;
use crate::control::{Connection, ControlEvent};
use crate::ipc::{Phase, StopReport};
use crate::paths::HostEnv;
use crate::process;
use crate::rundir::{pid_alive, Role, RunDir};
use crate::spec::Backend;
use crate::vmm;
use protocol::{GuestMessage, HostMessage};
use std::time::{Duration, Instant};

/// How much longer than the guest's shutdown deadline the supervisor waits for the VMM
/// to exit. The guest fits its whole shutdown, SIGKILL waits included, inside the
/// deadline (sovereign-init's `ShutdownPlan`); this covers the power-off itself.
pub const GUEST_SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// How long a stop waits for a guest that is between two control connections (it dials
/// again within a few seconds) before it falls back to stopping the VMM by force.
const RECONNECT_WAIT: Duration = Duration::from_secs(12);

/// Removes the supervisor's own socket and pid file.
pub fn remove_own_files(run: &RunDir) {
    let _ = std::fs::remove_file(run.supervisor_socket());
    let _ = std::fs::remove_file(run.pid_file(Role::Supervisor));
}

impl Supervisor {
    /// Waits for `role` to exit (reaped by its watcher), up to `limit`.
    pub(super) async fn wait_exit(
        &mut self,
        role: Role,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        if !self.pids.contains_key(&role) {
            return None;
        }
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::select! {
                Some((r, status)) = self.exit_rx.recv() => {
                    self.pids.remove(&r);
                    let _ = std::fs::remove_file(self.run.pid_file(r));
                    log::info!("{r} exited: {status}");
                    if r == role {
                        return Some(status);
                    }
                }
                Some(ev) = self.ctl_rx.recv() => {
                    if let ControlEvent::Message { msg, .. } = ev {
                        if let GuestMessage::ShuttingDown { reason } = *msg {
                            log::info!("guest is shutting down: {reason}");
                            self.guest_shutting_down = true;
                        }
                    }
                }
                _ = tokio::time::sleep(left) => return None,
            }
        }
    }

    /// The current control connection, or the first verified one to arrive within
    /// `limit` (only a Hello that passes the Hello rule makes one current).
    async fn await_connection(&mut self, limit: Duration) -> Option<Connection> {
        let until = Instant::now() + limit;
        loop {
            if let Some(c) = self.channel.current.clone() {
                return Some(c);
            }
            if !self.pids.contains_key(&Role::Vmm) {
                return None;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::select! {
                Some(ev) = self.ctl_rx.recv() => self.channel.on_event_while_stopping(ev, self.spec.cid),
                _ = tokio::time::sleep(left) => return None,
            }
        }
    }

    /// Shuts the guest down (control channel, then crosvm stop, then signals) and stops
    /// the helpers. Returns what happened; `nothing_left` only if every process is gone.
    pub(super) async fn stop_all(&mut self, deadline_secs: u32, why: &str) -> StopReport {
        log::info!("stopping everything: {why}");
        if self.phase != Phase::Failed {
            self.phase = Phase::Stopping;
        }
        let mut steps = Vec::new();
        let mut clean = true;
        self.pending.fail_all(|| GuestRequestError::Stopping);
        if self.pids.contains_key(&Role::Vmm) {
            let mut exited = None;
            if let Some(conn) = self.await_connection(RECONNECT_WAIT).await {
                match conn.send(HostMessage::Shutdown { deadline_secs }).await {
                    Ok(()) => {
                        steps.push(format!(
                            "asked the guest to shut down (deadline {deadline_secs}s)"
                        ));
                        exited = self
                            .wait_exit(
                                Role::Vmm,
                                Duration::from_secs(u64::from(deadline_secs))
                                    + GUEST_SHUTDOWN_MARGIN,
                            )
                            .await;
                        if self.guest_shutting_down {
                            steps.push("the guest acknowledged the shutdown".into());
                        }
                    }
                    Err(e) => steps.push(format!("cannot ask the guest to shut down: {e}")),
                }
            } else {
                steps.push("no control connection: the guest cannot be asked to shut down".into());
                clean = false;
            }
            if exited.is_none()
                && self.spec.vmm.backend == Backend::Crosvm
                && self.pids.contains_key(&Role::Vmm)
            {
                let crosvm = vmm::program(&HostEnv::detect(), &self.spec.vmm.crosvm);
                let out = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::process::Command::new(&crosvm)
                        .args(vmm::crosvm::stop_args(&self.run))
                        .output(),
                )
                .await;
                steps.push(match out {
                    Ok(Ok(o)) => format!("crosvm stop: {}", o.status),
                    Ok(Err(e)) => format!("crosvm stop failed: {e}"),
                    Err(_) => "crosvm stop timed out".into(),
                });
                exited = self.wait_exit(Role::Vmm, Duration::from_secs(5)).await;
            }
            match exited {
                Some(status) => {
                    steps.push(format!("vmm exited ({status})"));
                    clean &= status.success() && self.guest_shutting_down;
                }
                None => {
                    clean = false;
                    if let Some(&pid) = self.pids.get(&Role::Vmm) {
                        let how = self.stop_pid(Role::Vmm, pid).await;
                        steps.push(format!("vmm did not exit by itself: {how:?}"));
                    }
                }
            }
        }
        for role in [Role::Gvproxy, Role::VhostDeviceVsock] {
            if let Some(&pid) = self.pids.get(&role) {
                let how = self.stop_pid(role, pid).await;
                steps.push(format!("{role}: {how:?}"));
            }
        }
        let mut left = Vec::new();
        for role in [Role::Vmm, Role::Gvproxy, Role::VhostDeviceVsock] {
            if let Some(pid) = self
                .run
                .recorded_pid(role)
                .or_else(|| self.pids.get(&role).copied())
            {
                if pid_alive(pid, self.run.root()) {
                    left.push(format!("{role} ({pid})"));
                    continue;
                }
            }
            let _ = std::fs::remove_file(self.run.pid_file(role));
        }
        let nothing_left = left.is_empty();
        if nothing_left {
            for f in [
                self.run.vhost_socket(),
                self.run.vsock_uds(),
                self.run.vsock_port_socket(protocol::ports::NETWORK_PORT),
                self.run.gvproxy_api_socket(),
                self.run.gvproxy_frames_socket(),
                self.run.crosvm_socket(),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        steps.push(if nothing_left {
            "nothing left running".to_string()
        } else {
            format!("still running: {}", left.join(", "))
        });
        if let Some(c) = self.channel.current.take() {
            c.close();
        }
        StopReport {
            clean: clean && nothing_left,
            nothing_left,
            steps,
        }
    }

    /// Stops one process: SIGTERM, then SIGKILL; says which one ended it.
    async fn stop_pid(&mut self, role: Role, pid: i32) -> process::Stopped {
        process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(role, Duration::from_secs(5)).await.is_some() {
            return process::Stopped::Terminated;
        }
        process::signal(pid, nix::sys::signal::Signal::SIGKILL);
        if self.wait_exit(role, Duration::from_secs(3)).await.is_some() {
            process::Stopped::Killed
        } else if pid_alive(pid, self.run.root()) {
            process::Stopped::Survived
        } else {
            process::Stopped::Killed
        }
    }

    /// Last duties before the process exits: its own pid file and socket.
    pub(super) async fn finish(&mut self) {
        // Let a client read its reply (stop) before the socket disappears.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.last_notices().await;
        remove_own_files(&self.run);
        let _ = std::fs::remove_file(self.run.vsock_port_socket(protocol::ports::CONTROL_PORT));
    }
}
