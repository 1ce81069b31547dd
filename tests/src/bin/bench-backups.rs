//! The backup benchmark behind `scripts/bench-backups.sh`: one VM under QEMU on a local
//! tailnet, a pgbench database of about 1 GiB (scale 64, generated in the server),
//! then, measured in the same run against what a user would otherwise do from another
//! machine (pg_dump / pg_restore over the tailnet):
//!
//! - a full pgBackRest backup: time and size in the repository, against `pg_dump -Fc`;
//! - a restore to the latest change (in place), against `pg_restore` into a new
//!   database;
//! - the WAL archive lag under a steady write load from the second node
//!   (`pgbench -R`): how old the newest archived change is, sampled every 5 s
//!   (p50, p99, max), against `backup.archive_timeout_secs`.
//!
//! Prints a table with the ratios. Not a test: numbers, not assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a failed step ends it

use sovereign_tests::artifacts::{missing_prerequisite, Artifacts};
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::Vm;
use std::time::{Duration, Instant};

fn fail(msg: &str) -> ! {
    eprintln!("bench-backups: {msg}");
    std::process::exit(1);
}

/// A client program in the peer's namespace, with the superuser's password.
fn client(peer: &TailNode, program: &str, password: &str, args: &[&str]) -> std::process::Output {
    run(peer
        .command(program)
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "15"))
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    eprintln!("==> {what}");
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    eprintln!("    {:.1} s", took.as_secs_f64());
    (out, took)
}

/// The `pct`th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[i64], pct: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) * pct).div_ceil(100);
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        fail("usage: bench-backups ARTIFACT_DIR (scripts/bench-backups.sh passes it)")
    });
    if let Some(why) = missing_prerequisite() {
        fail(&why);
    }
    let scale: u32 = std::env::var("SOVEREIGN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let load_secs: u64 = std::env::var("SOVEREIGN_BENCH_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let a = Artifacts::in_dir(std::path::Path::new(&dir), "bzImage").unwrap_or_else(|e| fail(&e));
    let mut lab = Lab::start(&a.tools, "bench").unwrap_or_else(|e| fail(&e));
    let mut opts = lab.vm_options();
    opts.data_disk_gib = 8;
    opts.stage_timeout_secs = 600;
    let vm = Vm::new(&a, &opts);
    let (started, boot) = timed("booting the VM", || vm.start());
    if !started.status.success() {
        fail(&format!("start failed:\n{}", text(&started)));
    }
    let password = vm.superuser_password();
    let dump_file = lab.dir.path().join("bench.dump");
    let dump_path = dump_file.display().to_string();
    let peer = lab.join_peer().unwrap_or_else(|e| fail(&e));
    let dsn = "host=sql-vm port=5432 user=postgres dbname=postgres";
    wait_for(Duration::from_secs(120), Duration::from_secs(3), || {
        client(peer, "psql", &password, &[dsn, "-c", "select 1"])
            .status
            .success()
            .then_some(())
    })
    .unwrap_or_else(|| fail("psql from the peer never worked"));

    let (init, _) = timed(
        &format!("pgbench -i -s {scale} (generated in the server)"),
        || {
            client(
                peer,
                "pgbench",
                &password,
                &["-i", "-s", &scale.to_string(), "-I", "dtGvp", dsn],
            )
        },
    );
    if !init.status.success() {
        fail(&format!("pgbench -i: {}", text(&init)));
    }
    let db_size = vm
        .query("select pg_database_size('postgres')")
        .unwrap_or_default()
        .trim()
        .parse::<u64>()
        .unwrap_or(0);

    // The peer: a logical dump over the tailnet, and its restore into a new database.
    // A pg_dump older than the server refuses it (Debian 12's client is 15, the guest's
    // server 17): the peer is then not measured, and the table says why.
    let pg_bin = std::env::var("SOVEREIGN_BENCH_PG_BIN").ok();
    let pg_tool = |name: &str| {
        pg_bin
            .as_ref()
            .map_or(name.to_string(), |d| format!("{d}/{name}"))
    };
    let (dump, dump_time) = timed("pg_dump -Fc over the tailnet", || {
        client(
            peer,
            &pg_tool("pg_dump"),
            &password,
            &["-Fc", "-f", &dump_path, dsn],
        )
    });
    let peer_missing = (!dump.status.success()).then(|| {
        let why = text(&dump);
        if !why.contains("server version mismatch") {
            fail(&format!("pg_dump: {why}"));
        }
        eprintln!("peer not measured: {}", why.trim());
        "not measured: this pg_dump is older than the server (SOVEREIGN_BENCH_PG_BIN names a newer one)".to_string()
    });
    let dump_bytes = std::fs::metadata(&dump_file).map(|m| m.len()).unwrap_or(0);

    // Ours: a full backup into repo1.
    let (full, full_time) = timed("sovereign backup now --type full", || {
        vm.cli("backup now", &["--type", "full"])
    });
    if !full.status.success() {
        fail(&format!("backup now: {}", text(&full)));
    }
    let list = vm.cli("backup list", &["--json"]);
    let catalog: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
    let full_bytes = catalog["sets"]
        .as_array()
        .and_then(|s| s.iter().rev().find(|s| s["kind"] == "full"))
        .and_then(|s| s["repo_bytes"].as_u64())
        .unwrap_or(0);

    // The archive lag under a steady write load from the second node.
    eprintln!(
        "==> pgbench -R 20 for {load_secs} s from the second node; sampling the archive every 5 s"
    );
    let mut load = peer
        .command("pgbench")
        .args([
            "-R",
            "20",
            "-c",
            "2",
            "-T",
            &load_secs.to_string(),
            "-n",
            dsn,
        ])
        .env("PGPASSWORD", &password)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench in the peer's namespace");
    let mut lags = Vec::new();
    let until = Instant::now() + Duration::from_secs(load_secs);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(5));
        let s = vm.status();
        let now = s.guest.as_ref().map(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                .unwrap_or(0)
        });
        let archived = s
            .guest
            .and_then(|g| g.backup)
            .and_then(|b| b.archive.last_archived_unix);
        if let (Some(now), Some(at)) = (now, archived) {
            lags.push((now - at).max(0));
        }
    }
    let _ = load.wait();
    lags.sort_unstable();

    // Restores: ours in place to the latest change; the peer's pg_restore into a new db.
    let (restored, restore_time) = timed("sovereign restore --to latest", || {
        vm.cli("restore", &["--to", "latest", "--yes"])
    });
    if !restored.status.success() {
        fail(&format!("restore: {}", text(&restored)));
    }
    let ready = wait_for(Duration::from_secs(300), Duration::from_secs(2), || {
        client(peer, "psql", &password, &[dsn, "-c", "select 1"])
            .status
            .success()
            .then_some(())
    });
    if ready.is_none() {
        fail("psql after the restore never worked");
    }
    let pg_restore_time = if peer_missing.is_none() {
        let created = client(
            peer,
            "createdb",
            &password,
            &["-h", "sql-vm", "-U", "postgres", "bench_restore"],
        );
        if !created.status.success() {
            fail(&format!("createdb: {}", text(&created)));
        }
        let (pg_restore, pg_restore_time) =
            timed("pg_restore over the tailnet into a new database", || {
                client(
                    peer,
                    &pg_tool("pg_restore"),
                    &password,
                    &[
                        "-h",
                        "sql-vm",
                        "-U",
                        "postgres",
                        "-d",
                        "bench_restore",
                        &dump_path,
                    ],
                )
            });
        if !pg_restore.status.success() {
            fail(&format!("pg_restore: {}", text(&pg_restore)));
        }
        pg_restore_time
    } else {
        Duration::ZERO
    };
    let _ = vm.stop();

    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    println!();
    println!(
        "backup benchmark: pgbench scale {scale}, database {:.0} MiB, QEMU TCG, boot {:.0} s",
        mib(db_size),
        boot.as_secs_f64()
    );
    println!("| what | ours (pgBackRest, repo1) | peer (pg_dump/pg_restore over the tailnet) | ratio ours/peer |");
    println!("|---|---|---|---|");
    let peer_said = |value: String, ratio: f64| match &peer_missing {
        Some(why) => (why.clone(), "-".to_string()),
        None => (value, format!("{ratio:.2}")),
    };
    let (peer, ratio) = peer_said(
        format!("{:.1} s", dump_time.as_secs_f64()),
        full_time.as_secs_f64() / dump_time.as_secs_f64().max(0.001),
    );
    println!(
        "| full backup time | {:.1} s | {peer} | {ratio} |",
        full_time.as_secs_f64()
    );
    let (peer, ratio) = peer_said(
        format!("{:.1} MiB", mib(dump_bytes)),
        mib(full_bytes) / mib(dump_bytes).max(0.001),
    );
    println!(
        "| backup size | {:.1} MiB | {peer} | {ratio} |",
        mib(full_bytes)
    );
    let (peer, ratio) = peer_said(
        format!(
            "{:.1} s (pg_restore, new db)",
            pg_restore_time.as_secs_f64()
        ),
        restore_time.as_secs_f64() / pg_restore_time.as_secs_f64().max(0.001),
    );
    println!(
        "| restore time | {:.1} s (to latest, in place) | {peer} | {ratio} |",
        restore_time.as_secs_f64()
    );
    println!(
        "| WAL archive lag under pgbench -R 20 ({} samples) | p50 {} s, p99 {} s, max {} s | a dump is as old as its last run | - |",
        lags.len(),
        percentile(&lags, 50),
        percentile(&lags, 99),
        lags.last().copied().unwrap_or(0)
    );
}
