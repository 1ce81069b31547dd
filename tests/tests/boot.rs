//! The boot chain on real components: our kernel under QEMU (TCG), vhost-device-vsock,
//! the boot-only initramfs with the real sovereign-init, two virtio-blk disks, driven
//! through `sovereign start`/`status`/`stop`. A distro kernel whose drivers are all
//! modules (Debian's cloud kernel) boots too, with PID 1 loading its modules. And the
//! failures the launcher must diagnose: that kernel without its modules (no vsock),
//! and a guest that never reaches the control channel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::artifacts::cloud_kernel;
use sovereign_tests::process::{run, text};
use sovereign_tests::vm::{assert_boot_devices, Vm, VmOptions};
use sovereign_tests::vm_test;
use std::process::Command;

fn boot_only() -> VmOptions {
    VmOptions {
        initramfs: true,
        wait_for: "control",
        ..VmOptions::default()
    }
}

/// `stop` succeeds, the guest says it shut down cleanly, the kernel powered off, and
/// no host process of the VM is left.
fn assert_clean_stop(vm: &Vm) {
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop failed: {}", text(&stopped));
    let console = vm.console();
    assert!(
        console.contains("sovereign-init: clean shutdown complete, powering off"),
        "{console}"
    );
    assert!(
        console.contains("reboot: Power down"),
        "the kernel powered off:\n{console}"
    );
    assert!(
        vm.leftover_processes().is_empty(),
        "left behind: {:?}",
        vm.leftover_processes()
    );
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn boots_to_control_proves_drivers_and_powers_off_cleanly() {
    let Some(a) = vm_test("boot") else { return };
    let vm = Vm::new(&a, &boot_only());
    let out = vm.start_ok();
    for stage in ["init", "devices", "control"] {
        assert!(out.contains(stage), "start did not report {stage}:\n{out}");
    }
    assert!(
        out.lines().any(|l| l.contains("up: VM sql (CID 10)")),
        "start did not end with its up: line:\n{out}"
    );
    let status = vm.status();
    assert_boot_devices(&status);
    let report = status.devices.as_ref().expect("the device census");
    assert!(report.problems.is_empty(), "{report:#?}");
    assert!(
        report.missing_kernel_options.is_empty(),
        "our kernel satisfies the fragments: {report:#?}"
    );
    assert_clean_stop(&vm);
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn kernel_without_vsock_fails_at_devices_and_says_why() {
    let Some(a) = vm_test("vsock-missing") else {
        return;
    };
    let Some(cloud) = cloud_kernel(&a, "vsock-missing") else {
        return;
    };
    let vm = Vm::new(
        &a,
        &VmOptions {
            kernel: Some(cloud),
            ..boot_only()
        },
    );
    let started = vm.start();
    let out = text(&started);
    assert!(!started.status.success(), "start must fail:\n{out}");
    assert!(out.contains("devices"), "names the failing stage:\n{out}");
    assert!(
        out.contains("vmw_vsock_virtio_transport"),
        "names vsock's driver:\n{out}"
    );
    assert!(
        out.contains("not registered"),
        "says the driver is absent:\n{out}"
    );
    assert!(
        out.contains("/lib/modules/"),
        "says no module can provide it:\n{out}"
    );
    // The guest's own report, as printed on its console.
    let console = vm.console();
    let marker = console
        .lines()
        .find_map(|l| {
            l.find("SOVEREIGN devices {\"marker\":\"device_report\"")
                .and_then(|i| protocol::marker::Marker::parse(&l[i..]))
        })
        .unwrap_or_else(|| panic!("no device report on the console:\n{console}"));
    let protocol::marker::MarkerBody::DeviceReport(report) = marker.body else {
        panic!("not a device report: {marker:?}");
    };
    let vsock = report
        .of_kind(protocol::messages::DeviceKind::Socket)
        .next()
        .expect("vsock device enumerated");
    assert_eq!(vsock.driver, None, "{report:?}");
    assert!(
        vm.leftover_processes().is_empty(),
        "left behind: {:?}",
        vm.leftover_processes()
    );
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn distro_kernel_boots_with_its_modules_loaded_by_pid1() {
    let Some(a) = vm_test("distro-kernel-modules") else {
        return;
    };
    let Some(cloud) = cloud_kernel(&a, "distro-kernel-modules") else {
        return;
    };
    // The module tree that belongs to the cloud kernel sits beside it.
    let tree = std::fs::read_dir(cloud.parent().unwrap().join("modules"))
        .expect("module tree")
        .flatten()
        .next()
        .expect("one release")
        .path();
    let work = tempfile::tempdir().unwrap();
    let initrd = work.path().join("with-modules.cpio.gz");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-initramfs.sh");
    let built = run(Command::new(script)
        .arg("--init")
        .arg(a.dir.join("sovereign-init"))
        .arg("--modules-from")
        .arg(&tree)
        .arg("--out")
        .arg(&initrd));
    assert!(built.status.success(), "{}", text(&built));
    let vm = Vm::new(
        &a,
        &VmOptions {
            initrd: Some(initrd),
            kernel: Some(cloud),
            ..boot_only()
        },
    );
    vm.start_ok();
    let status = vm.status();
    let loaded = &status.devices.as_ref().expect("the census").modules_loaded;
    for m in ["vsock", "vmw_vsock_virtio_transport", "virtio_blk"] {
        assert!(
            loaded.iter().any(|l| l == m),
            "PID 1 loaded {m}: {loaded:?}"
        );
    }
    assert_boot_devices(&status);
    assert_clean_stop(&vm);
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn guest_that_never_dials_the_host_fails_at_control_with_console_evidence() {
    let Some(a) = vm_test("control-silent") else {
        return;
    };
    // A guest told to dial a port nobody listens on never reaches the control channel.
    let opts = VmOptions {
        cmdline_extra: vec!["sovereign.control_port=4000".into()],
        stage_timeout_secs: 20,
        ..boot_only()
    };
    let vm = Vm::new(&a, &opts);
    let started = vm.start();
    let out = text(&started);
    assert!(!started.status.success(), "start must fail:\n{out}");
    assert!(out.contains("control"), "names the failing stage:\n{out}");
    assert!(
        out.contains("connect to vsock 2:4000 failed"),
        "shows the guest's own console lines:\n{out}"
    );
    assert!(
        vm.leftover_processes().is_empty(),
        "left behind: {:?}",
        vm.leftover_processes()
    );
}
