//! What must be installed and how the host is set up: the VMM and gvproxy programs,
//! the guest kernel's required options, and the SELinux mode (reported only).

use super::Check;
use crate::kernel;
use crate::paths::HostEnv;
use crate::spec::{Backend, Spec};

/// The VMM program (crosvm or qemu-system-*) is found.
pub(super) fn vmm_binary(spec: &Spec, env: &HostEnv) -> Option<Check> {
    let (name, configured, hint): (&'static str, &str, &str) = match spec.vmm.backend {
        Backend::Crosvm => (
            "crosvm",
            &spec.vmm.crosvm,
            "Android ships crosvm in the virtualization APEX (/apex/com.android.virt/bin/crosvm); without that APEX the phone has no AVF. If crosvm lives elsewhere, pass --crosvm PATH or set vmm.crosvm",
        ),
        Backend::Qemu => (
            "qemu",
            &spec.vmm.qemu,
            "install QEMU 10 (qemu-system-x86 / qemu-system-arm from bookworm-backports), or set vmm.qemu",
        ),
    };
    Some(match env.find_trusted_tool(configured) {
        Ok(Some(p)) => Check::pass(name, p.display().to_string()),
        Ok(None) => Check::fail(name, format!("{configured} not found"), hint),
        Err(e) => untrusted(name, &e),
    })
}

/// The failure for a helper that root must not run.
pub(super) fn untrusted(name: &'static str, e: &crate::trust::Untrusted) -> Check {
    Check::fail(
        name,
        e.to_string(),
        "install it where only root can write (e.g. chown root and chmod go-w it and its directories)",
    )
}

/// The gvproxy program is found.
pub(super) fn gvproxy(spec: &Spec, env: &HostEnv) -> Option<Check> {
    Some(match env.find_trusted_tool(&spec.vmm.gvproxy) {
        Ok(Some(p)) => Check::pass("gvproxy", p.display().to_string()),
        Err(e) => untrusted("gvproxy", &e),
        Ok(None) => Check::fail(
            "gvproxy",
            format!(
                "{} not found (searched PATH, beside sovereign, the tool cache)",
                spec.vmm.gvproxy
            ),
            "build it with scripts/build-go-tools.sh (gvisor-tap-vsock v0.8.9), or set vmm.gvproxy",
        ),
    })
}

/// The guest kernel has every option its architecture's fragments require (a warning:
/// the guest names missing ones itself).
pub(super) fn kernel_options(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    const NAME: &str = "kernel options";
    if !spec.kernel.is_file() {
        return None; // validation already said so
    }
    Some(match kernel::missing_options(&spec.kernel, spec.arch) {
        Ok(missing) if missing.is_empty() => Check::pass(
            NAME,
            format!("every option of the {} fragments present", spec.arch),
        ),
        Ok(missing) => Check::warn(
            NAME,
            format!(
                "{} required option(s) missing: {}",
                missing.len(),
                missing
                    .iter()
                    .map(|m| m.option.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "the boot will likely fail at `devices`; build the kernel with scripts/build-kernel.sh",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot check: {e}"),
            "the guest reports missing options itself at `devices`",
        ),
    })
}

/// Reports the SELinux mode; never fails (crosvm started through su runs in su's
/// domain, and a denial names itself in the kernel log).
pub(super) fn selinux(_spec: &Spec, env: &HostEnv) -> Option<Check> {
    let mode = match std::fs::read_to_string(env.selinux_fs.join("enforce")) {
        Ok(s) if s.trim() == "1" => {
            "enforcing (if crosvm or gvproxy is denied: `dmesg | grep avc:`)"
        }
        Ok(_) => "permissive",
        Err(_) => "disabled or not visible",
    };
    Some(Check::pass("selinux", mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::run;
    use crate::preflight::tests::{android_crosvm, check};
    use crate::preflight::Status;

    #[test]
    fn a_helper_others_can_replace_is_refused_as_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let gv = bin.join("gvproxy");
        std::fs::write(&gv, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&gv, std::fs::Permissions::from_mode(0o757)).unwrap();
        let mut env = crate::spec::tests::env_in(dir.path(), false);
        env.search_dirs = vec![bin.clone()];
        let spec = crate::spec::Spec::builtin_sql(&env).unwrap();
        let c = gvproxy(&spec, &env).unwrap();
        assert_eq!(c.status, crate::preflight::Status::Fail, "{c:?}");
        assert!(
            c.detail.contains("writable by group or others (mode 0757)"),
            "{c:?}"
        );
        std::fs::set_permissions(&gv, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            gvproxy(&spec, &env).unwrap().status,
            crate::preflight::Status::Pass
        );
    }

    #[test]
    fn selinux_mode_is_reported_never_fatal() {
        let (_d, spec, env) = android_crosvm();
        assert_eq!(
            check(&run(&spec, &env), "selinux").detail,
            "disabled or not visible"
        );
        std::fs::create_dir_all(&env.selinux_fs).unwrap();
        for (value, mode) in [("1", "enforcing"), ("0", "permissive")] {
            std::fs::write(env.selinux_fs.join("enforce"), value).unwrap();
            let c = selinux(&spec, &env).unwrap();
            assert_eq!(c.status, Status::Pass);
            assert!(c.detail.starts_with(mode), "{c:?}");
        }
    }
}
