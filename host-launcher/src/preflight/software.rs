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
    Some(match env.find_tool(configured) {
        Some(p) => Check::pass(name, p.display().to_string()),
        None => Check::fail(name, format!("{configured} not found"), hint),
    })
}

/// The gvproxy program is found.
pub(super) fn gvproxy(spec: &Spec, env: &HostEnv) -> Option<Check> {
    Some(match env.find_tool(&spec.vmm.gvproxy) {
        Some(p) => Check::pass("gvproxy", p.display().to_string()),
        None => Check::fail(
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
