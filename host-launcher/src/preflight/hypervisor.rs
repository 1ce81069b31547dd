//! What this phone's hypervisor and crosvm can do for the spec's VM: the VM modes
//! Android says it supports (`ro.boot.hypervisor.*` through `getprop`), and the flags
//! the phone's crosvm lists in `run --help` (falling back to older spellings, saying so).

use super::Check;
use crate::paths::HostEnv;
use crate::spec::{Backend, Protection, Spec};
use std::process::Command;

/// Android's property for ordinary (unprotected) VMs.
pub const VM_SUPPORTED: &str = "ro.boot.hypervisor.vm.supported";
/// Android's property for protected VMs.
pub const PROTECTED_VM_SUPPORTED: &str = "ro.boot.hypervisor.protected_vm.supported";

/// One property through `getprop`: `Some("")` when it is unset, `None` when `getprop`
/// cannot be run.
pub(crate) fn getprop(env: &HostEnv, name: &str) -> Option<String> {
    let prog = env.find_tool("getprop")?;
    let out = Command::new(prog).arg(name).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A property's answer in words.
fn said(value: &str) -> &'static str {
    match value {
        "1" | "true" => "yes",
        "" => "not said",
        _ => "no",
    }
}

/// The modes this phone supports, and whether the spec's mode is one of them.
pub(super) fn modes(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "vm modes";
    if spec.vmm.backend != Backend::Crosvm {
        return None;
    }
    let (Some(vm), Some(pvm)) = (
        getprop(env, VM_SUPPORTED),
        getprop(env, PROTECTED_VM_SUPPORTED),
    ) else {
        return Some(Check::warn(
            NAME,
            "cannot run getprop to ask which VM modes this phone supports",
            "run start as root in `adb shell su`, where getprop is on PATH",
        ));
    };
    let detail = format!(
        "ordinary VMs: {} ({VM_SUPPORTED}={vm}), protected VMs: {} ({PROTECTED_VM_SUPPORTED}={pvm}); the spec asks for vmm.protection = \"{}\"",
        said(&vm),
        said(&pvm),
        spec.vmm.protection
    );
    let (wanted, other) = match spec.vmm.protection {
        Protection::None => (&vm, "\"without-firmware\""),
        Protection::WithoutFirmware => (&pvm, "\"none\""),
    };
    Some(match said(wanted) {
        "yes" => Check::pass(NAME, detail),
        "not said" => Check::warn(
            NAME,
            detail,
            "this Android does not say whether it allows this mode; crosvm will tell at start",
        ),
        _ => Check::fail(
            NAME,
            detail,
            format!(
                "this phone does not allow that mode; set vmm.protection = {other} if the other one is supported (docs/phone.md)"
            ),
        ),
    })
}

/// The phone's crosvm: which of the flags the launcher uses it lists, and what the
/// launcher passes instead where it lacks one.
pub(super) fn crosvm_flags(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "crosvm flags";
    if spec.vmm.backend != Backend::Crosvm {
        return None;
    }
    let program = env.find_tool(&spec.vmm.crosvm)?; // the crosvm check says it is missing
    let Some(flags) = env.crosvm_flags(&program) else {
        return Some(Check::warn(
            NAME,
            format!("`{} run --help` gave no option list", program.display()),
            "rendering the flags current crosvm accepts; if crosvm refuses one, it names it",
        ));
    };
    if spec.vmm.protection == Protection::WithoutFirmware && !flags.protected_vm_without_firmware {
        return Some(Check::fail(
            NAME,
            "this crosvm has no --protected-vm-without-firmware",
            "set vmm.protection = \"none\", or use a crosvm that supports protected VMs",
        ));
    }
    let missing = flags.missing();
    Some(if missing.is_empty() {
        Check::pass(NAME, "every flag the launcher uses is listed")
    } else {
        Check::pass(
            NAME,
            format!("this build lacks {}; left out", missing.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::run;
    use crate::preflight::tests::{android_crosvm, check};
    use crate::preflight::Status;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A fake getprop answering the two hypervisor properties.
    fn getprop_says(dir: &Path, vm: &str, pvm: &str) {
        script(
            dir,
            "getprop",
            &format!(
                "case \"$1\" in {VM_SUPPORTED}) echo '{vm}' ;; {PROTECTED_VM_SUPPORTED}) echo '{pvm}' ;; *) echo ;; esac"
            ),
        );
    }

    #[test]
    fn the_phones_modes_are_read_through_getprop() {
        let (d, mut spec, env) = android_crosvm();
        let c = check(&run(&spec, &env), "vm modes").clone();
        assert_eq!(c.status, Status::Warn, "no getprop: {c:?}");

        getprop_says(d.path(), "1", "1");
        let c = modes(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.detail.starts_with("ordinary VMs: yes"), "{c:?}");
        assert!(c.detail.contains("protected VMs: yes"), "{c:?}");

        // A phone that allows only protected VMs refuses an ordinary one, naming the fix.
        getprop_says(d.path(), "0", "1");
        let c = modes(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.hint
                .unwrap()
                .contains("vmm.protection = \"without-firmware\""),
            "the other mode"
        );
        spec.vmm.protection = Protection::WithoutFirmware;
        assert_eq!(modes(&spec, &env).unwrap().status, Status::Pass);

        // Unset properties: not a refusal.
        getprop_says(d.path(), "", "");
        let c = modes(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("protected VMs: not said"), "{c:?}");
    }

    #[test]
    fn crosvm_is_asked_for_its_flags() {
        let (d, mut spec, env) = android_crosvm();
        // The fake crosvm of the fixture prints nothing.
        assert_eq!(
            check(&run(&spec, &env), "crosvm flags").status,
            Status::Warn
        );

        // One start asks once: the answer stays with the HostEnv that got it.
        let fresh = || HostEnv {
            crosvm_help: Default::default(),
            ..env.clone()
        };
        script(
            d.path(),
            "crosvm",
            "echo 'Options:\n  --cid\n  --mem\n  --cpus\n  --rwdisk\n  --rwroot\n  --protected-vm-without-firmware'",
        );
        assert_eq!(crosvm_flags(&spec, &env).unwrap().status, Status::Warn);
        let env = fresh();
        let c = crosvm_flags(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.detail.contains("--vsock (using --cid)"), "{c:?}");
        assert!(
            c.detail
                .contains("--no-balloon (built without the balloon feature)"),
            "{c:?}"
        );

        script(
            d.path(),
            "crosvm",
            "echo 'Options:\n  --mem\n  --cpus\n  --vsock\n  --block'",
        );
        spec.vmm.protection = Protection::WithoutFirmware;
        let c = crosvm_flags(&spec, &fresh()).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.hint.unwrap().contains("vmm.protection = \"none\""));
    }
}
