//! The run directory of one VM (`<state>/run/<name>`): the names of its sockets and pid
//! files, and whether the processes they name are still ours and alive. `stop` and the
//! CID check rely on it even when the supervisor itself is gone.

pub use protocol::status::ProcessRole as Role;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Paths inside a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The resolved spec the supervisor runs (JSON; typed in [`crate::run_files`]),
    /// also read by the CID check.
    pub fn spec_json(&self) -> PathBuf {
        self.root.join("spec.json")
    }

    /// The supervisor's socket for `start`, `status`, `stop`, `test`, `query`.
    pub fn supervisor_socket(&self) -> PathBuf {
        self.root.join("supervisor.sock")
    }

    /// Where QEMU and vhost-device-vsock meet (vhost-user control path).
    pub fn vhost_socket(&self) -> PathBuf {
        self.root.join("vhost-vsock.sock")
    }

    /// vhost-device-vsock's `uds-path`: guest port P arrives at `<this>_P`.
    pub fn vsock_uds(&self) -> PathBuf {
        self.root.join("vsock.sock")
    }

    /// `<uds>_<port>` for a guest→host vsock port under vhost-device-vsock.
    pub fn vsock_port_socket(&self, port: u32) -> PathBuf {
        crate::paths::with_suffix(&self.vsock_uds(), &format!("_{port}"))
    }

    /// Where gvproxy takes frame connections on crosvm, relayed by the supervisor from
    /// vsock port 1024 after checking the peer's CID.
    pub fn gvproxy_frames_socket(&self) -> PathBuf {
        self.root.join("gvproxy-net.sock")
    }

    /// gvproxy's HTTP API (expose/unexpose) socket.
    pub fn gvproxy_api_socket(&self) -> PathBuf {
        self.root.join("gvproxy-api.sock")
    }

    /// QEMU's QMP socket, which `disk grow` uses to resize a disk of a running VM.
    pub fn qmp_socket(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }

    /// crosvm's control socket (`-s`), used by `crosvm stop` and `crosvm disk resize`.
    pub fn crosvm_socket(&self) -> PathBuf {
        self.root.join("crosvm.sock")
    }

    /// The pid file of `role`.
    pub fn pid_file(&self, role: Role) -> PathBuf {
        self.root.join(format!("{}.pid", role.name()))
    }

    /// Every unix socket path the VM uses (for the `sun_path` length check).
    pub fn sockets(&self) -> Vec<PathBuf> {
        vec![
            self.supervisor_socket(),
            self.vhost_socket(),
            self.vsock_port_socket(protocol::ports::CONTROL_PORT),
            self.vsock_port_socket(protocol::ports::NETWORK_PORT),
            self.gvproxy_api_socket(),
            self.gvproxy_frames_socket(),
            self.crosvm_socket(),
            self.qmp_socket(),
        ]
    }

    /// The pid recorded for `role`, if its file holds one.
    pub fn recorded_pid(&self, role: Role) -> Option<i32> {
        read_pid(&self.pid_file(role))
    }

    /// The pid of `role` if that process is alive and is ours (its command line names
    /// this run directory, so a recycled pid is never mistaken for it).
    pub fn live_pid(&self, role: Role) -> Option<i32> {
        self.recorded_pid(role)
            .filter(|&pid| pid_alive(pid, &self.root))
    }

    /// Removes sockets and pid files left by an earlier run (call only when none of the
    /// processes is alive).
    pub fn remove_stale(&self) {
        let mut files = self.sockets();
        files.push(self.vsock_uds());
        files.extend(Role::ALL.iter().map(|r| self.pid_file(*r)));
        for f in files {
            match std::fs::remove_file(&f) {
                Ok(()) => log::debug!("removed stale {}", f.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cannot remove stale {}: {e}", f.display()),
            }
        }
    }
}

/// Reads a pid file (decimal pid, surrounding whitespace ignored).
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&p: &i32| p > 0)
}

/// True when `pid` runs (not a zombie) and its command line contains `needle`.
pub fn pid_alive(pid: i32, needle: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // Field 3, after the parenthesised command name, is the state.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// A VM of ours found running under `<state>/run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVm {
    /// Its run directory.
    pub run_dir: PathBuf,
    /// Its name (the directory name).
    pub name: String,
    /// Its CID, from the spec it runs.
    pub cid: Option<u32>,
    /// The live process that proves it runs (supervisor, else VMM).
    pub pid: i32,
}

/// The one field of a run's spec.json that [`running_vms`] needs (the rest of the
/// spec is not read, so a run started by another version still shows).
#[derive(Debug, Deserialize)]
struct SpecCid {
    cid: u32,
}

/// Every VM with a live supervisor or VMM under `runs` (normally `<state>/run`).
pub fn running_vms(runs: &Path) -> Vec<RunningVm> {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir = RunDir::new(e.path());
        let Some(pid) = dir
            .live_pid(Role::Supervisor)
            .or_else(|| dir.live_pid(Role::Vmm))
        else {
            continue;
        };
        let cid = std::fs::read(dir.spec_json())
            .ok()
            .and_then(|b| serde_json::from_slice::<SpecCid>(&b).ok())
            .map(|s| s.cid);
        out.push(RunningVm {
            name: e.file_name().to_string_lossy().into_owned(),
            run_dir: e.path(),
            cid,
            pid,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Waits until a just-spawned child has its new command line: `spawn` can return
    /// while the kernel is still inside execve (empty /proc/PID/cmdline).
    pub(crate) fn wait_for_exec(pid: u32) {
        for _ in 0..200 {
            if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn layout() {
        let r = RunDir::new("/data/sovereign/run/sql");
        assert_eq!(
            r.vsock_port_socket(1025),
            PathBuf::from("/data/sovereign/run/sql/vsock.sock_1025")
        );
        assert_eq!(
            r.pid_file(Role::VhostDeviceVsock),
            PathBuf::from("/data/sovereign/run/sql/vhost-device-vsock.pid")
        );
        assert!(r
            .sockets()
            .iter()
            .all(|s| crate::paths::socket_path_fits(s)));
    }

    #[test]
    fn liveness_requires_our_command_line() {
        let runs = tempfile::tempdir().unwrap();
        let vm_dir = runs.path().join("vm");
        std::fs::create_dir(&vm_dir).unwrap();
        let run = RunDir::new(&vm_dir);
        let me = crate::process::as_pid(std::process::id());
        std::fs::write(run.pid_file(Role::Vmm), format!("{me}\n")).unwrap();
        assert_eq!(run.recorded_pid(Role::Vmm), Some(me));
        // This test process's command line does not name the temp dir.
        assert_eq!(run.live_pid(Role::Vmm), None);
        // `sh -c CMD ARG0`: the run dir is in the shell's argv; `; true` keeps the shell.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(&vm_dir)
            .spawn()
            .unwrap();
        let pid = crate::process::as_pid(child.id());
        wait_for_exec(child.id());
        std::fs::write(run.pid_file(Role::Vmm), pid.to_string()).unwrap();
        assert_eq!(run.live_pid(Role::Vmm), Some(pid));
        std::fs::write(run.spec_json(), r#"{"cid": 10}"#).unwrap();
        let vms = running_vms(runs.path());
        assert!(
            vms.iter().any(|v| v.cid == Some(10) && v.pid == pid),
            "{vms:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(run.live_pid(Role::Vmm), None);
    }
}
