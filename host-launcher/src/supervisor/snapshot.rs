//! The supervisor's side of `status`: phase, processes, stages, Hello and devices. The
//! guest's own status is asked for separately by the client task (see `clients`).

use super::Supervisor;
use crate::ipc::{base_status, ProcessInfo, VmStatus};
use crate::rundir::{pid_alive, Role, RunDir};
use crate::spec::Backend;
use std::collections::HashMap;

impl Supervisor {
    /// Current status without the guest's part.
    pub(super) fn snapshot(&self) -> VmStatus {
        let readiness = self.readiness.as_ref();
        VmStatus {
            elapsed_ms: Some(self.elapsed_ms()),
            processes: processes(self.spec.vmm.backend, &self.pids, &self.run),
            stages: readiness.map(|r| r.lines().to_vec()).unwrap_or_default(),
            control_connected: self.channel.current.is_some(),
            hello: readiness.and_then(|r| r.hello().cloned()),
            devices: readiness.and_then(|r| r.device_report().cloned()),
            restarts: self.restarts.clone(),
            control_refused: self.channel.refused.clone(),
            alerts: self
                .alerting
                .active
                .lock()
                .map(|a| a.clone())
                .unwrap_or_default(),
            ..base_status(&self.spec, self.phase)
        }
    }
}

/// Every process role of `backend` (vhost-device-vsock only under QEMU) with its pid
/// and whether it still runs; the supervisor is this process.
fn processes(backend: Backend, pids: &HashMap<Role, i32>, run: &RunDir) -> Vec<ProcessInfo> {
    Role::ALL
        .iter()
        .filter(|r| **r != Role::VhostDeviceVsock || backend == Backend::Qemu)
        .map(|&role| {
            let pid = if role == Role::Supervisor {
                Some(crate::process::as_pid(std::process::id()))
            } else {
                pids.get(&role).copied()
            };
            ProcessInfo {
                role,
                pid,
                alive: pid.is_some_and(|p| pid_alive(p, run.root())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(list: &[ProcessInfo]) -> Vec<Role> {
        list.iter().map(|p| p.role).collect()
    }

    #[test]
    fn vhost_device_vsock_is_listed_only_under_qemu() {
        let run = RunDir::new("/nonexistent/run/sql");
        let pids = HashMap::from([(Role::Vmm, 4242)]);
        let crosvm = processes(Backend::Crosvm, &pids, &run);
        assert_eq!(roles(&crosvm), [Role::Supervisor, Role::Gvproxy, Role::Vmm]);
        let qemu = processes(Backend::Qemu, &pids, &run);
        assert_eq!(
            roles(&qemu),
            [
                Role::Supervisor,
                Role::VhostDeviceVsock,
                Role::Gvproxy,
                Role::Vmm
            ]
        );
        assert_eq!(
            qemu[0].pid,
            Some(crate::process::as_pid(std::process::id()))
        );
        assert_eq!(qemu[1].pid, None);
        assert!(!qemu[1].alive, "no pid, not alive");
        assert_eq!(qemu[3].pid, Some(4242));
        assert!(
            !qemu[3].alive,
            "a pid whose command line does not name the run dir is not ours"
        );
    }
}
