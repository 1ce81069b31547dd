//! The shipped binaries are static musl builds for the right machine, proven from their
//! ELF headers: `sovereign-init` runs as PID 1 on a root image with no loader of ours,
//! and `sovereign` runs on Android, whose bionic loader cannot start a glibc or musl
//! dynamic binary.
//!
//! Reads `target/<triple>/release/` as `scripts/build-images.sh` and
//! `scripts/check-aarch64.sh` leave it; a missing build is a printed skip (a failure
//! with `SOVEREIGN_REQUIRE_VM_TESTS=1`, as in CI).

use object::elf::{EM_AARCH64, EM_X86_64};
use sovereign_tests::artifacts::{require_or_skip, workspace_target_dir};
use xtask::elf::inspect;

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn musl_builds_are_static_and_for_their_machine() {
    for (triple, machine) in [
        ("x86_64-unknown-linux-musl", EM_X86_64),
        ("aarch64-unknown-linux-musl", EM_AARCH64),
    ] {
        for bin in ["sovereign-init", "sovereign"] {
            let path = workspace_target_dir()
                .join(triple)
                .join("release")
                .join(bin);
            let name = format!("static-builds ({triple}/{bin})");
            let found = if path.is_file() {
                Ok(path.clone())
            } else {
                Err(format!(
                    "{} is not built (cargo build --release --target {triple} -p {bin})",
                    path.display()
                ))
            };
            let Some(path) = require_or_skip(&name, found) else {
                continue;
            };
            let facts = inspect(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(facts.machine, machine, "{}: {facts:?}", path.display());
            assert_eq!(
                facts.interpreter,
                None,
                "{} asks for a dynamic loader",
                path.display()
            );
            assert_eq!(facts.needed, 0, "{} needs shared libraries", path.display());
            println!("{triple}/{bin}: static, e_machine {machine:?}");
        }
    }
}
