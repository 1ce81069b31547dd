//! Can this user run the VMM: root (or the device access crosvm needs), `/dev/kvm`
//! where it is needed, and the vsock device (`/dev/vhost-vsock` for crosvm,
//! vhost-device-vsock for QEMU).

use super::Check;
use crate::paths::HostEnv;
use crate::spec::{Backend, Spec};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A device node the VMM needs that cannot be opened for reading and writing.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct DeviceOpenError {
    /// The device node (`/dev/kvm`, `/dev/vhost-vsock`).
    pub path: PathBuf,
    /// Why the open failed.
    #[source]
    pub source: std::io::Error,
}

/// Opens `path` read-write and closes it again: can the VMM use this device?
fn open_rw(path: &Path) -> Result<(), DeviceOpenError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| DeviceOpenError {
            path: path.to_path_buf(),
            source,
        })
}

/// What to do when a device crosvm needs cannot be opened, by why.
fn crosvm_device_hint(e: &DeviceOpenError, missing: &str) -> String {
    let device = &e.path;
    match e.source.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist: {missing}", device.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "only root may open {}: run the launcher through su, e.g. `su -c '/data/sovereign/sovereign start --sql'`",
            device.display()
        ),
        _ => format!("{} cannot be opened; check `ls -lZ {}` as root", device.display(), device.display()),
    }
}

/// Root, or (crosvm) a user who may open both device nodes; QEMU needs no privilege.
pub(super) fn privileges(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "privileges";
    if env.euid == 0 {
        return Some(Check::pass(NAME, "running as root"));
    }
    let caps = caps::read(None, caps::CapSet::Effective)
        .map(|set| {
            let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
            v.sort();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        })
        .unwrap_or_else(|e| format!("unknown ({e})"));
    Some(match spec.vmm.backend {
        // QEMU under TCG needs no privilege: only the state files (checked next).
        Backend::Qemu => Check::pass(
            NAME,
            format!(
                "uid {} (QEMU needs no capabilities; effective: {caps})",
                env.euid
            ),
        ),
        Backend::Crosvm => {
            let devices_ok =
                open_rw(&env.kvm_device).is_ok() && open_rw(&env.vhost_vsock_device).is_ok();
            if devices_ok {
                Check::pass(
                    NAME,
                    format!(
                        "uid {}, {} and {} usable",
                        env.euid,
                        env.kvm_device.display(),
                        env.vhost_vsock_device.display()
                    ),
                )
            } else {
                Check::fail(
                    NAME,
                    format!(
                        "uid {} without access to {} (effective capabilities: {caps})",
                        env.euid,
                        env.kvm_device.display()
                    ),
                    "crosvm needs root on the phone: run it as `su -c 'sovereign start --sql'`",
                )
            }
        }
    })
}

/// `/dev/kvm` opens read-write where it is needed (crosvm, QEMU with `kvm`).
pub(super) fn kvm(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "kvm";
    let needed = spec.vmm.backend == Backend::Crosvm || spec.vmm.qemu_accel == "kvm";
    if !needed {
        return Some(Check::pass(NAME, "not needed (QEMU with TCG)"));
    }
    Some(match open_rw(&env.kvm_device) {
        Ok(()) => Check::pass(NAME, format!("{} usable", env.kvm_device.display())),
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            match spec.vmm.backend {
                Backend::Crosvm => crosvm_device_hint(
                    &e,
                    "this phone's kernel offers no KVM; it needs pKVM (Android Virtualization Framework, e.g. Pixel 7 or later on Android 14+)",
                ),
                Backend::Qemu => "set vmm.qemu_accel = \"tcg\" in the spec, or load kvm and get access to /dev/kvm".to_string(),
            },
        ),
    })
}

/// The vsock device: `/dev/vhost-vsock` for crosvm, the vhost-device-vsock program
/// for QEMU.
pub(super) fn vsock_device(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "vsock";
    Some(match spec.vmm.backend {
        Backend::Crosvm => match open_rw(&env.vhost_vsock_device) {
            Ok(()) => Check::pass(NAME, format!("{} usable", env.vhost_vsock_device.display())),
            Err(e) => Check::fail(
                NAME,
                e.to_string(),
                crosvm_device_hint(
                    &e,
                    "crosvm's --vsock needs the host kernel's vhost_vsock (present wherever AVF is; on other kernels load vhost_vsock.ko)",
                ),
            ),
        },
        Backend::Qemu => match env.find_trusted_tool(&spec.vmm.vhost_device_vsock) {
            Ok(Some(p)) => Check::pass(NAME, format!("vhost-device-vsock at {}", p.display())),
            Err(e) => super::software::untrusted(NAME, &e),
            Ok(None) => Check::fail(
                NAME,
                format!("{} not found (searched PATH, beside sovereign, the tool cache)", spec.vmm.vhost_device_vsock),
                "install it: cargo install --locked vhost-device-vsock --version 0.3.0 (scripts/ci-deps.sh does), or set vmm.vhost_device_vsock",
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unopenable_device_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-kvm");
        let e = open_rw(&path).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
        assert!(crosvm_device_hint(&e, "no KVM").ends_with("does not exist: no KVM"));
    }
}
