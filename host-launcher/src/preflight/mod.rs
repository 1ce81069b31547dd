//! Preflight: can this host run the VM the spec describes? Each check is one line with
//! ✓ (holds), ! (warning: boot may still work) or ✗ (start refuses), and the first
//! failure says what to do.
//!
//! Every check reads the host through [`HostEnv`] (device paths, tool search path, state
//! directory), so tests run them against empty temporary directories. Checks are plain
//! functions, listed in [`checks`]; Android-only ones in [`android_checks`]. This module
//! runs them and renders the report; the checks live by what they look at: `access`
//! (privileges and the VMM's device nodes), `software` (programs, kernel options,
//! SELinux), `hypervisor` (the phone's VM modes and crosvm's flags), `cid` (who holds
//! the guest's CID) and `storage` (state directories and room for the data disk).

mod access;
mod cid;
pub(crate) mod hypervisor;
mod software;
mod storage;

pub use access::DeviceOpenError;
pub use cid::{cid_in_args, processes_claiming_cid};

use crate::paths::HostEnv;
use crate::spec::Spec;
use std::fmt;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The requirement holds.
    Pass,
    /// Not a blocker, but worth knowing (e.g. the kernel lacks an option).
    Warn,
    /// `start` cannot proceed.
    Fail,
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name (`kvm`, `gvproxy`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure or warning.
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// All checks of one preflight run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when nothing failed (warnings allowed).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The first failed check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == Status::Fail)
    }
}

impl fmt::Display for Report {
    /// One line per check; the first failure (and every warning) followed by its hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut explained = false;
        for c in &self.checks {
            let mark = match c.status {
                Status::Pass => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            writeln!(f, "  {mark} {:<18} {}", c.name, c.detail)?;
            let explain = match c.status {
                Status::Fail => !std::mem::replace(&mut explained, true),
                Status::Warn => true,
                Status::Pass => false,
            };
            if let (true, Some(h)) = (explain, &c.hint) {
                writeln!(f, "      → {h}")?;
            }
        }
        Ok(())
    }
}

/// A preflight check.
pub type CheckFn = fn(&Spec, &HostEnv) -> Option<Check>;

/// The generic checks, in order; a check returning `None` does not apply to this spec.
pub fn checks() -> Vec<CheckFn> {
    vec![
        access::privileges,
        storage::state_dirs,
        access::kvm,
        access::vsock_device,
        software::vmm_binary,
        hypervisor::crosvm_flags,
        software::gvproxy,
        cid::cid_free,
        software::kernel_options,
        storage::data_disk_space,
        storage::backup_disk_space,
    ]
}

/// Checks that only mean something on Android: the SELinux mode (reported), the VM
/// modes the phone supports, and VMs the launcher did not start that hold the CID
/// (another app's crosvm).
pub fn android_checks() -> Vec<CheckFn> {
    vec![software::selinux, hypervisor::modes, cid::foreign_cid]
}

/// Runs every applicable check.
pub fn run(spec: &Spec, env: &HostEnv) -> Report {
    let mut list = checks();
    if env.android {
        list.extend(android_checks());
    }
    Report {
        checks: list.into_iter().filter_map(|c| c(spec, env)).collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::tests::env_in;
    use crate::spec::Backend;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    pub(crate) fn exe(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub(crate) fn setup(backend: Backend) -> (tempfile::TempDir, Spec, HostEnv) {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_in(dir.path(), backend == Backend::Crosvm);
        env.search_dirs = vec![dir.path().join("bin")];
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let mut spec = Spec::builtin_sql(&env).unwrap();
        spec.vmm.backend = backend;
        spec.vmm.crosvm = "crosvm".into();
        (dir, spec, env)
    }

    pub(crate) fn status_of(r: &Report, name: &str) -> Option<Status> {
        r.checks.iter().find(|c| c.name == name).map(|c| c.status)
    }

    #[test]
    fn qemu_with_nothing_installed_names_each_missing_piece() {
        let (_d, spec, env) = setup(Backend::Qemu);
        let r = run(&spec, &env);
        assert!(!r.ok());
        assert_eq!(
            status_of(&r, "kvm"),
            Some(Status::Pass),
            "TCG needs no /dev/kvm"
        );
        assert_eq!(status_of(&r, "vsock"), Some(Status::Fail));
        assert_eq!(status_of(&r, "qemu"), Some(Status::Fail));
        assert_eq!(status_of(&r, "gvproxy"), Some(Status::Fail));
        assert_eq!(status_of(&r, "cid"), Some(Status::Pass));
        let text = r.to_string();
        assert!(text.contains("✗ vsock"), "{text}");
        assert_eq!(
            text.matches("→").count(),
            1,
            "only the first failure explains: {text}"
        );
        assert!(
            text.contains("cargo install --locked vhost-device-vsock"),
            "{text}"
        );
    }

    #[test]
    fn qemu_with_tools_present_passes() {
        let (d, spec, env) = setup(Backend::Qemu);
        for t in ["vhost-device-vsock", "gvproxy", &spec.vmm.qemu] {
            exe(&d.path().join("bin"), t);
        }
        let r = run(&spec, &env);
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn crosvm_needs_its_devices() {
        let (d, spec, env) = setup(Backend::Crosvm);
        exe(&d.path().join("bin"), "crosvm");
        exe(&d.path().join("bin"), "gvproxy");
        let r = run(&spec, &env);
        assert_eq!(status_of(&r, "kvm"), Some(Status::Fail));
        assert_eq!(status_of(&r, "vsock"), Some(Status::Fail));
        assert!(r.first_failure().unwrap().detail.contains("dev-kvm"), "{r}");
        assert_eq!(
            status_of(&r, "selinux"),
            Some(Status::Pass),
            "android checks run"
        );
        std::fs::write(&env.kvm_device, b"").unwrap();
        std::fs::write(&env.vhost_vsock_device, b"").unwrap();
        let r = run(&spec, &env);
        assert!(r.ok(), "{r}");
    }

    pub(crate) fn android_crosvm() -> (tempfile::TempDir, Spec, HostEnv) {
        let (d, spec, env) = setup(Backend::Crosvm);
        assert!(env.android);
        exe(&d.path().join("bin"), "crosvm");
        exe(&d.path().join("bin"), "gvproxy");
        (d, spec, env)
    }

    pub(crate) fn check<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {r}"))
    }

    #[test]
    fn android_devices_missing_or_locked_say_pkvm_or_root() {
        let (_d, spec, env) = android_crosvm();
        let r = run(&spec, &env);
        let kvm = check(&r, "kvm");
        assert_eq!(kvm.status, Status::Fail);
        assert!(kvm.hint.as_deref().unwrap().contains("pKVM"), "{kvm:?}");
        let vsock = check(&r, "vsock");
        assert!(
            vsock.hint.as_deref().unwrap().contains("vhost_vsock"),
            "{vsock:?}"
        );
        // Present but not openable: the hint is about root, not about pKVM.
        std::fs::create_dir(&env.kvm_device).unwrap();
        let r = run(&spec, &env);
        let kvm = check(&r, "kvm");
        assert_eq!(kvm.status, Status::Fail);
        assert!(!kvm.hint.as_deref().unwrap().contains("pKVM"), "{kvm:?}");
    }

    #[test]
    fn crosvm_elsewhere_is_named_with_the_flag_to_use() {
        let (_d, mut spec, env) = setup(Backend::Crosvm);
        spec.vmm.crosvm = "/apex/com.android.virt/bin/crosvm-missing".into();
        let r = run(&spec, &env);
        let c = check(&r, "crosvm");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("crosvm-missing not found"), "{c:?}");
        assert!(
            c.hint.as_deref().unwrap().contains("--crosvm PATH"),
            "{c:?}"
        );
    }
}
