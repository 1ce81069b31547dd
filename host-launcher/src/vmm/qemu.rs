//! QEMU's command line for CI and dev boxes: TCG by default, guest memory in a shared
//! memfd (vhost-user needs `share=on`; without it QEMU only warns and every vsock
//! connect times out), vsock through vhost-user-vsock-pci and vhost-device-vsock, no
//! NIC (the network is gvproxy over vsock), virtio-blk disks whose flushes reach the
//! disk (`cache=writeback`, never `unsafe`), and the serial console into a file.

use crate::rundir::RunDir;
use crate::spec::Spec;
use crate::vmm::cmdline::console_device;
use kernel_config::Arch;

/// `qemu-system-* ...` arguments (without the program).
pub fn args(spec: &Spec, run: &RunDir, cmdline: &str) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    let machine = match spec.arch {
        Arch::X86_64 => "q35,memory-backend=mem",
        Arch::Arm64 => "virt,memory-backend=mem",
    };
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("sovereign-{}", spec.name),
        "-accel".into(),
        spec.vmm.qemu_accel.clone(),
        "-machine".into(),
        machine.into(),
        "-cpu".into(),
        "max".into(),
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-smp".into(),
        spec.cpus.to_string(),
        "-chardev".into(),
        format!("socket,id=vsock,path={}", run.vhost_socket().display()),
        "-device".into(),
        "vhost-user-vsock-pci,chardev=vsock".into(),
        "-nic".into(),
        "none".into(),
    ];
    let disks = std::iter::once(("root", &spec.root_image))
        .chain(spec.extra_disks().into_iter().map(|(id, d)| (id, &d.path)));
    for (id, path) in disks {
        a.push("-drive".into());
        a.push(format!(
            "file={},if=none,id={id},format=raw,cache=writeback",
            path.display()
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive={id}"));
    }
    a.push("-kernel".into());
    a.push(spec.kernel.display().to_string());
    if let Some(initrd) = &spec.initrd {
        a.push("-initrd".into());
        a.push(initrd.display().to_string());
    }
    a.extend([
        "-append".into(),
        cmdline.to_string(),
        "-serial".into(),
        format!("file:{}", spec.console_log.display()),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-monitor".into(),
        "none".into(),
        // QMP, for `disk grow` on a running VM (block_resize); root-only like the run dir.
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", run.qmp_socket().display()),
    ]);
    // The console device name is implied by the machine; keep the two in step.
    debug_assert!(cmdline.contains(console_device(spec)));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Backend;
    use crate::vmm::cmdline::kernel_cmdline;
    use crate::vmm::tests::phone_spec;

    fn qemu_spec(arch: Arch) -> Spec {
        let mut s = phone_spec();
        s.vmm.backend = Backend::Qemu;
        s.arch = arch;
        s.kernel = match arch {
            Arch::X86_64 => "/data/sovereign/bzImage".into(),
            Arch::Arm64 => "/data/sovereign/Image".into(),
        };
        s
    }

    fn render(s: &Spec) -> String {
        let run = RunDir::new(&s.run_dir);
        args(s, &run, &kernel_cmdline(s)).join(" ")
    }

    #[test]
    fn golden_x86_64() {
        assert_eq!(
            render(&qemu_spec(Arch::X86_64)),
            "-name sovereign-sql -accel tcg -machine q35,memory-backend=mem -cpu max -m 1024M \
             -object memory-backend-memfd,id=mem,size=1024M,share=on -smp 2 \
             -chardev socket,id=vsock,path=/data/sovereign/run/sql/vhost-vsock.sock \
             -device vhost-user-vsock-pci,chardev=vsock -nic none \
             -drive file=/data/sovereign/root.img,if=none,id=root,format=raw,cache=writeback \
             -device virtio-blk-pci,drive=root \
             -drive file=/data/sovereign/postgres.img,if=none,id=data,format=raw,cache=writeback \
             -device virtio-blk-pci,drive=data \
             -drive file=/data/sovereign/backup.img,if=none,id=backup,format=raw,cache=writeback \
             -device virtio-blk-pci,drive=backup \
             -kernel /data/sovereign/bzImage \
             -append console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10 \
             -serial file:/data/sovereign/sql-console.log -display none -no-reboot -monitor none \
             -qmp unix:/data/sovereign/run/sql/qmp.sock,server=on,wait=off"
        );
    }

    #[test]
    fn golden_aarch64_with_initrd() {
        let mut s = qemu_spec(Arch::Arm64);
        s.initrd = Some("/data/sovereign/initrd.cpio.gz".into());
        let r = render(&s);
        assert!(
            r.contains("-machine virt,memory-backend=mem -cpu max"),
            "{r}"
        );
        assert!(
            r.contains(
                "-kernel /data/sovereign/Image -initrd /data/sovereign/initrd.cpio.gz -append console=ttyAMA0 init=/sbin/init"
            ),
            "{r}"
        );
        assert!(!r.contains("cache=unsafe"));
    }
}
