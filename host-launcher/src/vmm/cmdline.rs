//! The guest kernel command line. It carries boot arguments and the `sovereign.*` keys
//! the init reads, never secrets (those travel only on the control channel).

use crate::spec::{Backend, Spec};
use kernel_config::Arch;

/// The serial console device the guest's kernel should log to.
pub fn console_device(spec: &Spec) -> &'static str {
    match (spec.vmm.backend, spec.arch) {
        // qemu -M virt exposes a PL011; crosvm's serial is an 8250 on both arches.
        (Backend::Qemu, Arch::Arm64) => "ttyAMA0",
        _ => "ttyS0",
    }
}

/// The full kernel command line for `spec`.
///
/// crosvm adds `root=/dev/vda rw` itself for the `--block ...,root=true` disk, so those
/// two are left out of its line; with an initrd there is no `root=` at all.
pub fn kernel_cmdline(spec: &Spec) -> String {
    let mut args: Vec<String> = vec![format!("console={}", console_device(spec))];
    if spec.initrd.is_none() {
        if spec.vmm.backend == Backend::Qemu {
            args.push("root=/dev/vda".into());
            args.push("rw".into());
        }
        args.push("rootfstype=ext4".into());
    }
    args.push("init=/sbin/init".into());
    args.push("panic=-1".into());
    args.push(format!("sovereign.log={}", spec.guest.log_level));
    args.push(format!(
        "sovereign.device_wait={}",
        spec.guest.device_wait_secs
    ));
    args.extend(spec.guest.cmdline_extra.iter().cloned());
    args.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::tests::phone_spec;

    #[test]
    fn lines_per_backend_and_arch() {
        let mut s = phone_spec();
        s.arch = Arch::Arm64;
        assert_eq!(
            kernel_cmdline(&s),
            "console=ttyS0 rootfstype=ext4 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10"
        );
        s.vmm.backend = Backend::Qemu;
        s.guest.cmdline_extra = vec!["quiet".into()];
        assert_eq!(
            kernel_cmdline(&s),
            "console=ttyAMA0 root=/dev/vda rw rootfstype=ext4 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10 quiet"
        );
        s.initrd = Some("/i.cpio.gz".into());
        s.arch = Arch::X86_64;
        assert_eq!(
            kernel_cmdline(&s),
            "console=ttyS0 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10 quiet"
        );
    }
}
