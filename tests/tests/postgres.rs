//! PostgreSQL on its own data disk, run and supervised by PID 1, on the full root image
//! (joined to a local headscale so tailscaled never reaches beyond this machine):
//! rows written through the control channel survive a crash of the postmaster, a clean
//! stop and boot (no re-initialisation), and a power cut right after COMMIT; and no
//! secret appears in the console, the host's logs or the guest's logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::lab::Lab;
use sovereign_tests::process::{text, wait_for};
use sovereign_tests::vm::Vm;
use sovereign_tests::vm_test;
use std::time::Duration;

fn count(vm: &Vm) -> Result<i64, String> {
    let out = vm.query("select count(*) from durability")?;
    out.trim().parse().map_err(|e| format!("{out:?}: {e}"))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn rows_survive_crash_restart_and_power_cut_and_no_secret_is_logged() {
    let Some(a) = vm_test("postgres") else { return };
    let lab = Lab::start(&a.tools, "pg").expect("lab");
    let mut opts = lab.vm_options();
    opts.apps = vec!["vaultwarden".into()];
    let vm = Vm::new(&a, &opts);
    vm.start_ok(); // first boot
    assert!(
        vm.console().contains("first boot, running initdb"),
        "first boot initialises the cluster"
    );

    vm.query(
        "create table durability (id int primary key, note text); \
              insert into durability select g, 'row ' || g from generate_series(1, 100) g",
    )
    .expect("create and fill");
    assert_eq!(count(&vm), Ok(100));

    // An answer bigger than a control frame comes back cut and flagged, at once (it
    // used to be dropped while the host waited its 120 s).
    let t = std::time::Instant::now();
    let o = vm.cli("query", &["select repeat('x', 300000)"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        (1000..64 * 1024).contains(&o.stdout.len()),
        "{} bytes",
        o.stdout.len()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("output truncated"),
        "{}",
        text(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(
        vm.query("show data_directory").expect("show").trim(),
        "/data/postgres"
    );
    assert_eq!(
        vm.query("select datname from pg_database where datname = 'vaultwarden'")
            .expect("app db")
            .trim(),
        "vaultwarden",
        "the app database was provisioned"
    );

    // Crash: SIGKILL the postmaster from inside the guest. PID 1 restarts it.
    let started_at = vm
        .query("select pg_postmaster_start_time()")
        .expect("start time");
    let _ =
        vm.query("copy (select 1) to program 'kill -9 $(head -n1 /data/postgres/postmaster.pid)'");
    let restarted = wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
        vm.query("select pg_postmaster_start_time()")
            .ok()
            .filter(|t| *t != started_at)
    });
    assert!(
        restarted.is_some(),
        "postgres came back after SIGKILL:\n{}",
        tail(&vm.console(), 40)
    );
    assert_eq!(count(&vm), Ok(100), "no committed row lost in the crash");
    let status = vm.status();
    let pg = status["guest"]["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "postgres").cloned());
    assert!(
        pg.is_some_and(|p| p["restarts"].as_u64().unwrap_or(0) >= 1),
        "the restart is counted: {status:#}"
    );

    // Clean stop and a second boot: same data, no initdb.
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    assert!(vm.console().contains("clean shutdown complete"));
    vm.start_ok(); // second boot
    assert!(
        !vm.console().contains("first boot, running initdb"),
        "second boot reuses the cluster"
    );
    assert_eq!(count(&vm), Ok(100));

    // An answer bigger than a control frame comes back cut and flagged, at once (it
    // used to be dropped while the host waited its 120 s).
    let t = std::time::Instant::now();
    let o = vm.cli("query", &["select repeat('x', 300000)"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        (1000..64 * 1024).contains(&o.stdout.len()),
        "{} bytes",
        o.stdout.len()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("output truncated"),
        "{}",
        text(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    // Power cut: SIGKILL QEMU right after the client saw COMMIT.
    vm.query("insert into durability select g, 'before the cut' from generate_series(101, 150) g")
        .expect("insert");
    let qemu = vm.pid_of("qemu-system").expect("qemu runs");
    sovereign_tests::process::kill(qemu, nix::sys::signal::Signal::SIGKILL);
    let cleaned = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        vm.leftover_processes().is_empty().then_some(())
    });
    if cleaned.is_none() {
        let _ = vm.stop();
    }
    vm.start_ok(); // after the power cut
    assert_eq!(
        count(&vm),
        Ok(150),
        "every row committed before the cut is there"
    );

    // No secret in any log: console, the host's logs, and the guest's own logs.
    let password = vm.superuser_password();
    let app_password =
        std::fs::read_to_string(vm.home.path().join("secrets/sql-app-vaultwarden.password"))
            .expect("the launcher writes the app's password on start");
    let auth_key = std::fs::read_to_string(&lab.vm_key_file)
        .expect("key")
        .trim()
        .to_string();
    let mut guest_logs = vm
        .query(
            // Binary reads: a log cut short by the power cut may end in zeros.
            "select string_agg(encode(pg_read_binary_file('log/' || f), 'escape'), '') from pg_ls_dir('log') f \
             union all select encode(pg_read_binary_file('startup.log'), 'escape')",
        )
        .expect("read postgres' logs");
    for log in ["tailscaled", "kernel"] {
        let o = vm.cli("logs", &[log]);
        assert!(o.status.success(), "sovereign logs {log}: {}", text(&o));
        guest_logs.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    assert!(
        guest_logs.contains("connection authorized")
            || guest_logs.contains("database system is ready")
    );
    let mut host_logs = vm.console();
    for entry in std::fs::read_dir(vm.home.path())
        .expect("state dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(".log") {
            host_logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    for (what, secret) in [
        ("superuser password", password.as_str()),
        ("app password", app_password.trim()),
        ("auth key", auth_key.as_str()),
    ] {
        assert!(secret.len() >= 8, "{what} is a real secret");
        assert!(
            !host_logs.contains(secret),
            "{what} appears in a host log or the console"
        );
        assert!(
            !guest_logs.contains(secret),
            "{what} appears in a guest log"
        );
    }
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    assert!(vm.leftover_processes().is_empty());
}
