//! The processes that make a running VM, rendered from the spec: vhost-device-vsock
//! (QEMU only), gvproxy and the VMM, in start order. Rendering is pure, so `--dry-run`
//! prints exactly what `start` runs and golden tests pin both backends.

pub mod cmdline;
pub mod crosvm;
pub mod crosvm_flags;
pub mod helpers;
pub mod qemu;
pub mod resize;

use crate::paths::HostEnv;
use crate::rundir::{Role, RunDir};
use crate::spec::{Backend, Spec};
use crate::vmm::crosvm_flags::CrosvmFlags;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCommand {
    /// What it is.
    pub role: Role,
    /// Program path (resolved when found, else the configured name).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// A socket that appears once it is ready to serve; the next process waits for it.
    pub ready_socket: Option<PathBuf>,
}

impl ProcessCommand {
    /// The command as one shell-quoted line.
    pub fn shell_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(|w| shlex::try_quote(w).map_or_else(|_| format!("{w:?}"), |q| q.into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Everything `start` launches, in order: rendered once by `start`, checked by
/// preflight, kept in the run directory and launched as is by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    /// Processes in start order (the VMM last).
    pub commands: Vec<ProcessCommand>,
}

/// Resolves a configured program through the host's search path; keeps the configured
/// value when nothing is found (preflight reports that).
pub fn program(env: &HostEnv, configured: &str) -> String {
    env.find_tool(configured)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| configured.to_string())
}

/// What the crosvm `spec` names accepts: asked from the binary itself (once per
/// [`HostEnv`]), or (when it cannot be run here, as in a dry run on another machine)
/// what current crosvm accepts.
pub fn crosvm_flags(spec: &Spec, env: &HostEnv) -> CrosvmFlags {
    env.crosvm_flags(Path::new(&program(env, &spec.vmm.crosvm)))
        .unwrap_or(CrosvmFlags::CURRENT)
}

/// Renders the launch plan of `spec`, asking crosvm (for that backend) which flags it
/// knows.
pub fn plan(spec: &Spec, env: &HostEnv) -> LaunchPlan {
    let flags = match spec.vmm.backend {
        Backend::Crosvm => crosvm_flags(spec, env),
        Backend::Qemu => CrosvmFlags::CURRENT,
    };
    plan_with(spec, env, &flags)
}

/// Renders the launch plan of `spec` for a crosvm that accepts `flags` (pure).
pub fn plan_with(spec: &Spec, env: &HostEnv, flags: &CrosvmFlags) -> LaunchPlan {
    let run = RunDir::new(&spec.run_dir);
    let cmdline = cmdline::kernel_cmdline(spec);
    let mut commands = Vec::new();
    if spec.vmm.backend == Backend::Qemu {
        commands.push(ProcessCommand {
            role: Role::VhostDeviceVsock,
            program: program(env, &spec.vmm.vhost_device_vsock),
            args: helpers::vhost_device_vsock_args(spec, &run),
            log: spec.log_file("vhost-device-vsock"),
            ready_socket: Some(run.vhost_socket()),
        });
    }
    commands.push(ProcessCommand {
        role: Role::Gvproxy,
        program: program(env, &spec.vmm.gvproxy),
        args: helpers::gvproxy_args(spec, &run),
        log: spec.log_file("gvproxy-stderr"),
        ready_socket: Some(run.gvproxy_api_socket()),
    });
    let (vmm_program, args) = match spec.vmm.backend {
        Backend::Crosvm => (
            program(env, &spec.vmm.crosvm),
            crosvm::args(spec, &run, &cmdline, flags),
        ),
        Backend::Qemu => (
            program(env, &spec.vmm.qemu),
            qemu::args(spec, &run, &cmdline),
        ),
    };
    commands.push(ProcessCommand {
        role: Role::Vmm,
        program: vmm_program,
        args,
        log: spec.log_file("vmm"),
        ready_socket: None,
    });
    LaunchPlan { commands }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::tests::env_in;
    use std::path::Path;

    /// The built-in spec as on the phone, for golden renderings.
    pub(crate) fn phone_spec() -> Spec {
        let mut s = Spec::builtin_sql(&env_in(Path::new("/data/sovereign"), true)).unwrap();
        s.arch = kernel_config::Arch::Arm64;
        s.kernel = "/data/sovereign/Image".into();
        s
    }

    #[test]
    fn dry_run_lines_are_shell_quoted() {
        let mut spec = phone_spec();
        spec.vmm.backend = Backend::Qemu;
        spec.arch = kernel_config::Arch::X86_64;
        spec.kernel = "/data/sovereign/bzImage".into();
        spec.vmm.qemu = "qemu-system-x86_64".into();
        let env = env_in(Path::new("/nonexistent"), false);
        let lines: Vec<String> = plan(&spec, &env)
            .commands
            .iter()
            .map(ProcessCommand::shell_line)
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "vhost-device-vsock --vm 'guest-cid=10,socket=/data/sovereign/run/sql/vhost-vsock.sock,uds-path=/data/sovereign/run/sql/vsock.sock'"
        );
        assert_eq!(
            lines[1],
            "gvproxy -listen unix:///data/sovereign/run/sql/vsock.sock_1024 -services unix:///data/sovereign/run/sql/gvproxy-api.sock -mtu 1500 -ssh-port -1 -pid-file /data/sovereign/run/sql/gvproxy.pid -log-file /data/sovereign/sql-gvproxy.log"
        );
        assert!(
            lines[2].starts_with("qemu-system-x86_64 -name sovereign-sql "),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].contains(" -append 'console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10' "),
            "{}",
            lines[2]
        );
    }
}
