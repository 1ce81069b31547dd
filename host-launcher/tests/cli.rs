//! The `sovereign` binary without a VM: `--dry-run` output, spec validation and
//! preflight exit codes, `status`/`stop` of a VM that is not running.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed step is a failed test

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sovereign");

fn run(home: &Path, path: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SOVEREIGN_HOME", home)
        .env("SOVEREIGN_CACHE", home.join("cache"))
        .env("PATH", path)
        .env_remove("ANDROID_ROOT")
        .output()
        .unwrap()
}

use sovereign_tests::process::text;

fn bzimage() -> Vec<u8> {
    kernel_config::sample_image(kernel_config::Arch::X86_64)
}

#[test]
fn dry_run_prints_three_commands_and_starts_nothing() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bzImage"), bzimage()).unwrap();
    std::fs::write(dir.path().join("root.img"), b"").unwrap();
    let o = run(dir.path(), "/nonexistent", &["start", "--sql", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("vhost-device-vsock --vm 'guest-cid=10,"),
        "{out}"
    );
    assert!(lines[1].starts_with("gvproxy -listen unix://"), "{out}");
    assert!(
        lines[2].starts_with("qemu-system-x86_64 -name sovereign-sql -accel tcg"),
        "{out}"
    );
    assert!(
        !dir.path().join("run").exists(),
        "dry-run created the run dir"
    );
    assert!(
        !dir.path().join("postgres.img").exists(),
        "dry-run created the data disk"
    );
    assert!(
        !dir.path().join("secrets").exists(),
        "dry-run created secrets"
    );
}

#[test]
fn a_bad_spec_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(
        &spec,
        "cid = 1\nmemory_mib = 1\nhostname = \"Not A Label\"\n[data_disk]\nsize_gib = 0\n",
    )
    .unwrap();
    let o = run(
        dir.path(),
        "/nonexistent",
        &["start", "--spec", spec.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    for field in [
        "cid = \"1\"",
        "memory_mib = \"1\"",
        "hostname = \"Not A Label\"",
        "kernel = ",
        "root_image = ",
        "data_disk.size_gib = \"0\"",
    ] {
        assert!(t.contains(field), "{field} missing: {t}");
    }
    let o = run(
        dir.path(),
        "/nonexistent",
        &["start", "--spec", "/nonexistent/x.toml"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("cannot read VM spec /nonexistent/x.toml"),
        "{}",
        text(&o)
    );
    std::fs::write(&spec, "cid = 11\nmemroy_mib = 512\n").unwrap();
    let o = run(
        dir.path(),
        "/nonexistent",
        &["start", "--spec", spec.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("unknown field `memroy_mib`"),
        "{}",
        text(&o)
    );
}

#[test]
fn preflight_without_tools_exits_2_and_says_what_to_do() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bzImage"), bzimage()).unwrap();
    std::fs::write(dir.path().join("root.img"), b"").unwrap();
    let o = run(dir.path(), "/nonexistent", &["start", "--sql"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("✗ vsock              vhost-device-vsock not found"),
        "{t}"
    );
    assert!(
        t.contains("→ install it: cargo install --locked vhost-device-vsock"),
        "{t}"
    );
    assert!(t.contains("✗ qemu"), "{t}");
    assert!(t.contains("✗ gvproxy"), "{t}");
    assert!(!dir.path().join("run/sql/supervisor.pid").exists());
}

#[test]
fn status_and_stop_of_a_vm_that_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), "/nonexistent", &["status", "--sql", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["phase"], "not_running");
    assert!(v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["alive"] == false));
    let o = run(dir.path(), "/nonexistent", &["stop", "--sql"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("VM sql is not running"), "{}", text(&o));
    let o = run(dir.path(), "/nonexistent", &["query", "--sql", "select 1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("VM sql is not running"), "{}", text(&o));
}

#[test]
fn a_second_start_while_one_holds_the_lock_is_refused_before_preflight() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bzImage"), bzimage()).unwrap();
    std::fs::write(dir.path().join("root.img"), b"").unwrap();
    let held = sovereign::startlock::StartLock::acquire(&dir.path().join("run/sql"), "sql")
        .expect("the test takes the lock first");
    let o = run(dir.path(), "/nonexistent", &["start", "--sql"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("VM sql is being started or is running")
            && err.contains(&format!("(pid {})", std::process::id())),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("preflight"),
        "refused before preflight: {}",
        text(&o)
    );
    assert!(
        !dir.path().join("postgres.img").exists(),
        "nothing prepared"
    );
    drop(held);
}
