//! The boot chain on real components: our kernel under QEMU (TCG), vhost-device-vsock,
//! the boot-only initramfs with the real sovereign-init, two virtio-blk disks, driven
//! through `sovereign start`/`status`/`stop`. And the failures the launcher must
//! diagnose: a kernel without vsock (Debian's cloud kernel with its modules left out of
//! the image) and a guest that never reaches the control channel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::process::text;
use sovereign_tests::vm::{Vm, VmOptions};
use sovereign_tests::vm_test;

#[test]
fn boots_to_control_proves_drivers_and_powers_off_cleanly() {
    let Some(a) = vm_test("boot") else { return };
    let vm = Vm::new(
        &a,
        &VmOptions {
            initramfs: true,
            wait_for: "control",
            ..VmOptions::default()
        },
    );
    let started = vm.start();
    let out = text(&started);
    assert!(
        started.status.success(),
        "start failed:\n{out}\nconsole:\n{}",
        vm.console()
    );
    for stage in ["init", "devices", "control"] {
        assert!(out.contains(stage), "start did not report {stage}:\n{out}");
    }
    assert!(out.contains("up"), "start did not say up:\n{out}");

    let status = vm.status();
    assert_eq!(status["hello"]["cid"], 10, "{status:#}");
    assert_eq!(status["hello"]["version"], 1);
    let devices = status["devices"]["devices"]
        .as_array()
        .expect("device census in status");
    let socket: Vec<_> = devices.iter().filter(|d| d["kind"] == "socket").collect();
    assert_eq!(socket.len(), 1, "{devices:#?}");
    assert_eq!(socket[0]["driver"], "vmw_vsock_virtio_transport");
    let blocks: Vec<_> = devices.iter().filter(|d| d["kind"] == "block").collect();
    assert_eq!(blocks.len(), 2, "{devices:#?}");
    assert!(
        blocks.iter().all(|b| b["driver"] == "virtio_blk"),
        "{blocks:#?}"
    );
    assert!(status["devices"]["problems"]
        .as_array()
        .is_some_and(Vec::is_empty));
    assert_eq!(
        status["devices"]["missing_kernel_options"],
        serde_json::json!([]),
        "our kernel satisfies the fragments"
    );

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
fn kernel_without_vsock_fails_at_devices_and_says_why() {
    let Some(a) = vm_test("vsock-missing") else {
        return;
    };
    let Some(cloud) = a.cloud_kernel.clone() else {
        if std::env::var("SOVEREIGN_REQUIRE_VM_TESTS").as_deref() == Ok("1") {
            panic!("SOVEREIGN_CLOUD_KERNEL is required (scripts/fetch-cloud-kernel.sh)");
        }
        eprintln!("SKIPPED vsock-missing: SOVEREIGN_CLOUD_KERNEL not set");
        return;
    };
    let vm = Vm::new(
        &a,
        &VmOptions {
            initramfs: true,
            kernel: Some(cloud),
            wait_for: "control",
            ..VmOptions::default()
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
    let report = console
        .lines()
        .find_map(|l| {
            l.find("SOVEREIGN devices {\"devices\"")
                .map(|i| &l[i + "SOVEREIGN devices ".len()..])
        })
        .unwrap_or_else(|| panic!("no device report on the console:\n{console}"));
    let report: serde_json::Value =
        serde_json::from_str(report.trim()).expect("device report is JSON");
    let vsock = report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "socket")
        .cloned()
        .expect("vsock device enumerated");
    assert_eq!(vsock["driver"], serde_json::Value::Null);
    assert!(
        vm.leftover_processes().is_empty(),
        "left behind: {:?}",
        vm.leftover_processes()
    );
}

#[test]
fn guest_that_never_dials_the_host_fails_at_control_with_console_evidence() {
    let Some(a) = vm_test("control-silent") else {
        return;
    };
    let mut opts = VmOptions {
        initramfs: true,
        wait_for: "control",
        ..VmOptions::default()
    };
    // A guest told to dial a port nobody listens on never reaches the control channel.
    opts.cmdline_extra = vec!["sovereign.control_port=4000".into()];
    opts.stage_timeout_secs = 20;
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
