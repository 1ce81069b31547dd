//! The phone's guest, proven as far as a machine without a phone can: the arm64 kernel
//! and the aarch64 `sovereign-init` (from `scripts/build-images.sh --arch arm64`) boot
//! under qemu-system-aarch64 (`-M virt`, TCG) with virtio-pci devices like crosvm's —
//! two virtio-blk disks and vsock through vhost-user-vsock-pci — driven by this host's
//! `sovereign start`/`status`/`stop` up to the `control` stage; and the whole phone
//! guest (the arm64 root image with PostgreSQL and tailscaled) to `ready` in a tailnet
//! lab, answering psql from the second node by name.
//!
//! Needs `$SOVEREIGN_ARM64_ARTIFACTS`; skipped with the reason printed otherwise (a
//! failure instead with `SOVEREIGN_REQUIRE_VM_TESTS=1`).

use sovereign_tests::artifacts::{require_or_skip, vm_test_arm64};
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{text, wait_for};
use sovereign_tests::tailnode::Login;
use sovereign_tests::vm::{assert_boot_devices, Vm, VmOptions};
use std::time::{Duration, Instant};

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
    let missing = &status
        .devices
        .as_ref()
        .expect("the census")
        .missing_kernel_options;
    assert!(
        missing.is_empty(),
        "the arm64 kernel satisfies the fragments: {missing:?}"
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

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn arm64_phone_guest_reaches_ready_in_the_tailnet_and_answers_psql_by_name() {
    let Some(a) = vm_test_arm64("arm64-ready") else {
        return;
    };
    let root = if a.root_image.exists() {
        Ok(())
    } else {
        Err(format!(
            "{} has no root.img (a --boot-only set); scripts/build-images.sh --arch arm64 builds the whole set",
            a.dir.display()
        ))
    };
    if require_or_skip("arm64-ready", root).is_none() {
        return;
    }
    let t0 = Instant::now();
    let mut lab = Lab::start(&a.tools, "arm64").expect("lab");
    let vm = Vm::new(
        &a,
        &VmOptions {
            arch: Some("arm64"),
            boot_timeout_secs: Some(120),
            stage_timeout_secs: 240,
            ..lab.vm_options()
        },
    );
    let out = vm.start_ok();
    let ready = t0.elapsed();
    for stage in ["network", "tailscale", "postgres", "ready"] {
        assert!(out.contains(stage), "start did not report {stage}:\n{out}");
    }
    let password = vm.superuser_password();
    let peer = lab.join_peer().expect("second node joins");
    let version = wait_for(Duration::from_secs(90), Duration::from_secs(3), || {
        peer.psql(&Login::superuser(&password), "select version()")
            .ok()
    });
    let version = version.expect("psql from the second node reaches sql-vm by name");
    assert!(
        version.contains("aarch64"),
        "the phone's build of PostgreSQL answered: {version}"
    );
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop failed: {}", text(&stopped));
    assert!(
        vm.console().contains("clean shutdown complete"),
        "clean shutdown"
    );
    eprintln!(
        "arm64 phone guest: ready {:.1} s after launch; whole test {:.1} s; {version}",
        ready.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
