//! crosvm's command line (Android's `/apex/com.android.virt/bin/crosvm`), shaped like
//! the one Android's virtualization service passes for its own VMs: no balloon and no
//! USB (a database VM needs neither, and both are attack surface), and for a protected
//! VM `--unmap-guest-memory-on-fork` and a swiotlb sized per device on top of the
//! guest's memory. Every optional flag is rendered only when this crosvm lists it
//! ([`CrosvmFlags`]); a build without `--vsock`/`--block` gets `--cid`/`--rwdisk`.

use crate::rundir::RunDir;
use crate::spec::{Protection, Spec};
use crate::vmm::crosvm_flags::CrosvmFlags;

/// MiB of swiotlb per virtio device of a protected VM: Android's virtualization service
/// gives each 2 MiB (a 256-entry queue of two pages per entry).
const SWIOTLB_MIB_PER_DEVICE: u32 = 2;

/// The virtio devices crosvm gives this VM: its disks, vsock, the entropy device, and the
/// balloon unless `--no-balloon` removes it (the console is a plain serial port).
pub fn virtio_devices(spec: &Spec, flags: &CrosvmFlags) -> u32 {
    let disks = 1 + u32::try_from(spec.extra_disks().len()).unwrap_or(u32::MAX - 8);
    let balloon = u32::from(!flags.no_balloon);
    disks + 1 + 1 + balloon
}

/// The swiotlb of a protected VM in MiB (the spec's `swiotlb_mib`, else sized from the
/// device count), or `None` for an ordinary VM.
pub fn swiotlb_mib(spec: &Spec, flags: &CrosvmFlags) -> Option<u32> {
    match spec.vmm.protection {
        Protection::None => None,
        Protection::WithoutFirmware => Some(
            spec.vmm
                .swiotlb_mib
                .unwrap_or(SWIOTLB_MIB_PER_DEVICE * virtio_devices(spec, flags)),
        ),
    }
}

/// `crosvm run ...` arguments (without the program) for a crosvm that accepts `flags`.
pub fn args(spec: &Spec, run: &RunDir, cmdline: &str, flags: &CrosvmFlags) -> Vec<String> {
    let swiotlb = swiotlb_mib(spec, flags).filter(|_| flags.swiotlb);
    // The guest keeps all of memory_mib; the bounce buffers come on top of it.
    let mem = spec.memory_mib + swiotlb.unwrap_or(0);
    let mut a: Vec<String> = vec!["run".into(), "--disable-sandbox".into()];
    if flags.vsock {
        a.extend(["--vsock".into(), format!("cid={}", spec.cid)]);
    } else {
        a.extend(["--cid".into(), spec.cid.to_string()]);
    }
    a.extend([
        "--mem".into(),
        mem.to_string(),
        "--cpus".into(),
        spec.cpus.to_string(),
    ]);
    let root = spec.root_image.display().to_string();
    let is_root = spec.initrd.is_none();
    match (flags.block, is_root) {
        (true, true) => a.extend(["--block".into(), format!("path={root},ro=false,root=true")]),
        (true, false) => a.extend(["--block".into(), format!("path={root},ro=false")]),
        (false, true) => a.extend(["--rwroot".into(), root]),
        (false, false) => a.extend(["--rwdisk".into(), root]),
    }
    for (_, disk) in spec.extra_disks() {
        let path = disk.path.display().to_string();
        if flags.block {
            a.extend(["--block".into(), format!("path={path},ro=false")]);
        } else {
            a.extend(["--rwdisk".into(), path]);
        }
    }
    if flags.no_balloon {
        a.push("--no-balloon".into());
    }
    if flags.no_usb {
        a.push("--no-usb".into());
    }
    a.extend([
        "--serial".into(),
        format!("type=file,path={},console=true", spec.console_log.display()),
        "-s".into(),
        run.crosvm_socket().display().to_string(),
        "--params".into(),
        cmdline.to_string(),
    ]);
    if spec.vmm.protection == Protection::WithoutFirmware {
        a.push("--protected-vm-without-firmware".into());
        if flags.unmap_guest_memory_on_fork {
            a.push("--unmap-guest-memory-on-fork".into());
        }
        if let Some(n) = swiotlb {
            a.extend(["--swiotlb".into(), n.to_string()]);
        }
    }
    if let Some(initrd) = &spec.initrd {
        a.push("--initrd".into());
        a.push(initrd.display().to_string());
    }
    a.push(spec.kernel.display().to_string());
    a
}

/// `crosvm stop <socket>`: asks a running crosvm to exit (after the guest's shutdown).
pub fn stop_args(run: &RunDir) -> Vec<String> {
    vec!["stop".into(), run.crosvm_socket().display().to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::cmdline::kernel_cmdline;
    use crate::vmm::tests::phone_spec;

    /// The exact argv, space-joined (quoting is tested with the dry-run lines).
    fn line(spec: &Spec, flags: &CrosvmFlags) -> String {
        let run = RunDir::new(&spec.run_dir);
        let mut v = vec![spec.vmm.crosvm.clone()];
        v.extend(args(spec, &run, &kernel_cmdline(spec), flags));
        v.join(" ")
    }

    const TAIL: &str = "--serial type=file,path=/data/sovereign/sql-console.log,console=true \
             -s /data/sovereign/run/sql/crosvm.sock \
             --params console=ttyS0 rootfstype=ext4 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10";

    #[test]
    fn golden_phone_rendering() {
        let spec = phone_spec();
        assert_eq!(
            line(&spec, &CrosvmFlags::CURRENT),
            format!(
                "/apex/com.android.virt/bin/crosvm run --disable-sandbox --vsock cid=10 --mem 1024 --cpus 2 \
                 --block path=/data/sovereign/root.img,ro=false,root=true \
                 --block path=/data/sovereign/postgres.img,ro=false \
                 --block path=/data/sovereign/backup.img,ro=false \
                 --no-balloon --no-usb {TAIL} /data/sovereign/Image"
            )
        );
    }

    #[test]
    fn golden_x86_64_rendering() {
        // crosvm on an x86_64 host (a Chromebook-like box): same shape, bzImage kernel.
        let mut spec = phone_spec();
        spec.arch = kernel_config::Arch::X86_64;
        spec.kernel = "/data/sovereign/bzImage".into();
        assert_eq!(
            line(&spec, &CrosvmFlags::CURRENT),
            format!(
                "/apex/com.android.virt/bin/crosvm run --disable-sandbox --vsock cid=10 --mem 1024 --cpus 2 \
                 --block path=/data/sovereign/root.img,ro=false,root=true \
                 --block path=/data/sovereign/postgres.img,ro=false \
                 --block path=/data/sovereign/backup.img,ro=false \
                 --no-balloon --no-usb {TAIL} /data/sovereign/bzImage"
            )
        );
    }

    #[test]
    fn golden_protected_rendering() {
        let mut spec = phone_spec();
        spec.vmm.protection = Protection::WithoutFirmware;
        // 3 disks, vsock, rng: 5 devices × 2 MiB, on top of the guest's 1024 MiB.
        assert_eq!(
            line(&spec, &CrosvmFlags::CURRENT),
            format!(
                "/apex/com.android.virt/bin/crosvm run --disable-sandbox --vsock cid=10 --mem 1034 --cpus 2 \
                 --block path=/data/sovereign/root.img,ro=false,root=true \
                 --block path=/data/sovereign/postgres.img,ro=false \
                 --block path=/data/sovereign/backup.img,ro=false \
                 --no-balloon --no-usb {TAIL} \
                 --protected-vm-without-firmware --unmap-guest-memory-on-fork --swiotlb 10 /data/sovereign/Image"
            )
        );
        spec.vmm.swiotlb_mib = Some(64);
        spec.initrd = Some("/data/sovereign/initrd.cpio.gz".into());
        let l = line(&spec, &CrosvmFlags::CURRENT);
        assert!(l.contains("--mem 1088 "), "{l}");
        assert!(
            l.contains("--block path=/data/sovereign/root.img,ro=false --block"),
            "{l}"
        );
        assert!(
            l.ends_with(
                "--swiotlb 64 --initrd /data/sovereign/initrd.cpio.gz /data/sovereign/Image"
            ),
            "{l}"
        );
    }

    #[test]
    fn golden_older_crosvm_falls_back_to_cid_and_rwdisk() {
        let mut spec = phone_spec();
        let old = CrosvmFlags {
            vsock: false,
            block: false,
            no_balloon: false,
            no_usb: false,
            unmap_guest_memory_on_fork: false,
            swiotlb: false,
            protected_vm_without_firmware: true,
        };
        assert_eq!(
            line(&spec, &old),
            format!(
                "/apex/com.android.virt/bin/crosvm run --disable-sandbox --cid 10 --mem 1024 --cpus 2 \
                 --rwroot /data/sovereign/root.img \
                 --rwdisk /data/sovereign/postgres.img \
                 --rwdisk /data/sovereign/backup.img \
                 {TAIL} /data/sovereign/Image"
            )
        );
        // Protected on a crosvm without --swiotlb: no bounce buffer to add to --mem,
        // and none of the flags it does not list.
        spec.vmm.protection = Protection::WithoutFirmware;
        let l = line(&spec, &old);
        assert!(l.contains("--mem 1024 "), "{l}");
        assert!(
            l.ends_with("--protected-vm-without-firmware /data/sovereign/Image"),
            "{l}"
        );
    }

    #[test]
    fn without_the_balloon_feature_there_is_no_no_balloon() {
        let spec = phone_spec();
        let flags = CrosvmFlags {
            no_balloon: false,
            ..CrosvmFlags::CURRENT
        };
        let l = line(&spec, &flags);
        assert!(!l.contains("--no-balloon"), "{l}");
        assert!(l.contains("--no-usb"), "{l}");
        // The balloon then is one more device to bounce for.
        let mut spec = spec;
        spec.vmm.protection = Protection::WithoutFirmware;
        assert_eq!(swiotlb_mib(&spec, &flags), Some(12));
    }

    #[test]
    fn without_backups_there_is_no_backup_disk() {
        let mut spec = phone_spec();
        spec.backup.enabled = false;
        let l = line(&spec, &CrosvmFlags::CURRENT);
        assert!(!l.contains("backup.img"), "{l}");
        assert!(
            l.contains("--block path=/data/sovereign/postgres.img,ro=false --no-balloon"),
            "{l}"
        );
    }
}
