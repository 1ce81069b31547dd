//! The phone's guest, proven as far as a machine without a phone can: the arm64 kernel
//! and the aarch64 `sovereign-init` (from `scripts/build-images.sh --arch arm64`) boot
//! under qemu-system-aarch64 (`-M virt`, TCG) with virtio-pci devices like crosvm's —
//! two virtio-blk disks and vsock through vhost-user-vsock-pci — driven by this host's
//! `sovereign start`/`status`/`stop` up to the `control` stage.
//!
//! Needs `$SOVEREIGN_ARM64_ARTIFACTS`; skipped with the reason printed otherwise (a
//! failure instead with `SOVEREIGN_REQUIRE_VM_TESTS=1`).

use sovereign_tests::artifacts::vm_test_arm64;
use sovereign_tests::process::text;
use sovereign_tests::vm::{assert_boot_devices, Vm, VmOptions};
use std::time::Instant;

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn arm64_guest_boots_to_control_under_qemu_aarch64_and_powers_off_cleanly() {
    let Some(a) = vm_test_arm64("arm64-boot") else {
        return;
    };
    eprintln!(
        "arm64 set {}, launcher {}",
        a.dir.display(),
        a.sovereign.display()
    );
    let t0 = Instant::now();
    // Emulating aarch64 under TCG on two shared cores is several times slower than an
    // x86_64 guest: generous deadlines, so a slow machine is not a failure.
    let vm = Vm::new(
        &a,
        &VmOptions {
            initramfs: true,
            wait_for: "control",
            arch: Some("arm64"),
            boot_timeout_secs: Some(120),
            stage_timeout_secs: 120,
            ..VmOptions::default()
        },
    );
    let dry = text(&vm.cli("start", &["--dry-run"]));
    assert!(dry.contains("qemu-system-aarch64 "), "{dry}");
    assert!(dry.contains("virt,memory-backend=mem"), "{dry}");
    assert!(dry.contains("vhost-user-vsock-pci"), "{dry}");
    assert!(dry.contains("console=ttyAMA0"), "{dry}");

    let out = vm.start_ok();
    let boot = t0.elapsed();
    for stage in ["init", "devices", "control"] {
        assert!(out.contains(stage), "start did not report {stage}:\n{out}");
    }
    assert!(
        out.contains("up: VM sql (CID 10)"),
        "start did not say up:\n{out}"
    );
    let console = vm.console();
    assert!(
        console.contains("Machine model: linux,dummy-virt"),
        "an arm64 virt machine booted:\n{console}"
    );

    let status = vm.status();
    assert_boot_devices(&status);
    assert_eq!(
        status["devices"]["missing_kernel_options"],
        serde_json::json!([]),
        "the arm64 kernel satisfies the fragments"
    );

    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop failed: {}", text(&stopped));
    let console = vm.console();
    assert!(console.contains("clean shutdown complete"), "{console}");
    assert!(
        vm.leftover_processes().is_empty(),
        "left behind: {:?}",
        vm.leftover_processes()
    );
    eprintln!(
        "arm64 boot to control: {:.1} s; whole test: {:.1} s",
        boot.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
