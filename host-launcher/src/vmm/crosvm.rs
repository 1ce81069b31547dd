//! crosvm's command line (Android's `/apex/com.android.virt/bin/crosvm`), with only the
//! flags current crosvm accepts: `--vsock cid=` (not the deprecated `--cid`) and
//! `--block` (not `--rwdisk`). `--swiotlb` exists only in aarch64 builds; validation
//! refuses it elsewhere.

use crate::rundir::RunDir;
use crate::spec::Spec;

/// `crosvm run ...` arguments (without the program).
pub fn args(spec: &Spec, run: &RunDir, cmdline: &str) -> Vec<String> {
    let root_flag = if spec.initrd.is_none() {
        ",root=true"
    } else {
        ""
    };
    let mut a: Vec<String> = vec![
        "run".into(),
        "--disable-sandbox".into(),
        "--vsock".into(),
        format!("cid={}", spec.cid),
        "--mem".into(),
        spec.memory_mib.to_string(),
        "--cpus".into(),
        spec.cpus.to_string(),
        "--block".into(),
        format!("path={},ro=false{root_flag}", spec.root_image.display()),
    ];
    for (_, disk) in spec.extra_disks() {
        a.push("--block".into());
        a.push(format!("path={},ro=false", disk.path.display()));
    }
    a.extend([
        "--serial".into(),
        format!("type=file,path={},console=true", spec.console_log.display()),
        "-s".into(),
        run.crosvm_socket().display().to_string(),
        "--params".into(),
        cmdline.to_string(),
    ]);
    if spec.vmm.protected_vm_without_firmware {
        a.push("--protected-vm-without-firmware".into());
    }
    if let Some(n) = spec.vmm.swiotlb_mib {
        a.push("--swiotlb".into());
        a.push(n.to_string());
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
    fn line(spec: &Spec) -> String {
        let run = RunDir::new(&spec.run_dir);
        let mut v = vec![spec.vmm.crosvm.clone()];
        v.extend(args(spec, &run, &kernel_cmdline(spec)));
        v.join(" ")
    }

    #[test]
    fn golden_phone_rendering() {
        let spec = phone_spec();
        assert_eq!(
            line(&spec),
            "/apex/com.android.virt/bin/crosvm run --disable-sandbox --vsock cid=10 --mem 1024 --cpus 2 \
             --block path=/data/sovereign/root.img,ro=false,root=true \
             --block path=/data/sovereign/postgres.img,ro=false \
             --block path=/data/sovereign/backup.img,ro=false \
             --serial type=file,path=/data/sovereign/sql-console.log,console=true \
             -s /data/sovereign/run/sql/crosvm.sock \
             --params console=ttyS0 rootfstype=ext4 init=/sbin/init panic=-1 sovereign.log=info sovereign.device_wait=10 \
             /data/sovereign/Image"
        );
    }

    #[test]
    fn golden_protected_with_swiotlb_and_initrd() {
        let mut spec = phone_spec();
        spec.vmm.protected_vm_without_firmware = true;
        spec.vmm.swiotlb_mib = Some(64);
        spec.initrd = Some("/data/sovereign/initrd.cpio.gz".into());
        let l = line(&spec);
        assert!(
            l.contains("--block path=/data/sovereign/root.img,ro=false --block"),
            "{l}"
        );
        assert!(
            l.ends_with(
                "--protected-vm-without-firmware --swiotlb 64 --initrd /data/sovereign/initrd.cpio.gz /data/sovereign/Image"
            ),
            "{l}"
        );
        for deprecated in ["--cid", "--rwdisk", "--root ", " -d "] {
            assert!(!l.contains(deprecated), "{deprecated} in {l}");
        }
    }

    #[test]
    fn without_backups_there_is_no_backup_disk() {
        let mut spec = phone_spec();
        spec.backup.enabled = false;
        let l = line(&spec);
        assert!(!l.contains("backup.img"), "{l}");
        assert!(
            l.contains("--block path=/data/sovereign/postgres.img,ro=false --serial"),
            "{l}"
        );
    }
}
