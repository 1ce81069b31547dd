//! A two-node cluster over the tailnet, in one lab (headscale, the second node) with two
//! VMs under QEMU, each run by its own `sovereign` and state directory:
//! - `sql-vm` starts as the primary with a synchronous replica named; `sql-replica`,
//!   given the credentials file `replica credentials` wrote, copies it over the tailnet
//!   (pg_basebackup through its slot) and streams; rows the second node writes through
//!   the multi-host `db url` are read on the replica within a stated lag; the commit
//!   cost of the synchronous replica is measured against `synchronous_commit = local`.
//! - The primary is power-cut under that write load; `promote` on the replica; the load,
//!   with the same connection string, writes again; every acknowledged row is there.
//! - The old primary, started again, refuses to be a second primary; `rejoin` keeps a
//!   copy of its disk, rewinds it onto the new primary and it catches up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::lab::Lab;
use sovereign_tests::load::{self, WriteLoad};
use sovereign_tests::process::{kill, run, text, wait_for};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::{Vm, VmOptions};
use sovereign_tests::vm_test;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The lag the replica must stay within under the steady load.
const MAX_CATCH_UP: Duration = Duration::from_secs(30);

/// The cluster as the second node reaches it: the primary by role, wherever it is. A
/// session open on a primary that loses power waits on TCP for minutes without
/// `tcp_user_timeout`; with it, unacknowledged data fails the session within 10 s.
const CLUSTER: &str = "host=sql-vm,sql-replica port=5432,5432 user=postgres dbname=postgres connect_timeout=5 tcp_user_timeout=10000 target_session_attrs=read-write";

/// psql on the second node, statements on stdin, password from `pgpass`.
fn peer_psql(peer: &TailNode, pgpass: &Path, conninfo: &str, sql: &str) -> Result<String, String> {
    let env = [("PGPASSFILE", pgpass.as_os_str())];
    let o = peer
        .psql_script(conninfo, &env, sql)
        .wait_with_output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(text(&o))
    }
}

/// The number a query printed last (after any `\\c` notice).
fn count(vm: &Vm, sql: &str) -> i64 {
    let out = vm.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
}

/// `status --json`'s replication object.
fn replication(vm: &Vm) -> serde_json::Value {
    vm.status()["replication"].clone()
}

/// Seconds for `n` single-row commits from the second node with `synchronous_commit`
/// set to `mode` (each insert its own transaction).
fn commit_seconds(peer: &TailNode, pgpass: &Path, mode: &str, n: usize) -> f64 {
    let mut sql = format!("set synchronous_commit = {mode};\n");
    for i in 0..n {
        sql.push_str(&format!(
            "insert into commit_cost (mode, i) values ('{mode}', {i});\n"
        ));
    }
    let t = Instant::now();
    peer_psql(peer, pgpass, CLUSTER, &sql).expect("timed commits");
    t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn a_replica_follows_takes_over_and_the_old_primary_rejoins() {
    let Some(a) = vm_test("replica") else { return };
    let mut lab = Lab::start(&a.tools, "replica").expect("lab");
    let base = || VmOptions {
        apps: vec!["forgejo".into()],
        backup_toml: "enabled = false".into(),
        ..lab.vm_options()
    };
    let primary = Vm::new(
        &a,
        &VmOptions {
            extra_toml:
                "[replication]\nrole = \"primary\"\npeer = \"sql-replica\"\nsynchronous = true\n"
                    .into(),
            ..base()
        },
    );
    let out = primary.start_ok();
    println!("primary started:\n{out}");

    // The credentials file, written 0600, names the primary and holds no stray value.
    let creds = lab.dir.path().join("replica.credentials");
    let o = primary.cli("replica credentials", &["--out", creds.to_str().unwrap()]);
    assert!(o.status.success(), "replica credentials: {}", text(&o));
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the credentials file is private");
    assert!(std::fs::read_to_string(&creds)
        .unwrap()
        .contains("primary = \"sql-vm\""));

    let replica = Vm::new(
        &a,
        &VmOptions {
            hostname: "sql-replica",
            extra_toml: format!(
                "[replication]\nrole = \"replica\"\npeer = \"sql-vm\"\ncredentials_file = {:?}\n",
                creds.display().to_string()
            ),
            ..base()
        },
    );
    let t = Instant::now();
    let out = replica.start_ok();
    println!(
        "replica copied the primary and started in {:.1} s:\n{out}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        replica.superuser_password(),
        primary.superuser_password(),
        "the replica's host took the cluster's password from the credentials file"
    );
    let r = wait_for(Duration::from_secs(60), Duration::from_secs(2), || {
        let r = replication(&replica);
        (r["state"] == "streaming").then_some(r)
    })
    .unwrap_or_else(|| panic!("the replica never streamed: {:#}", replication(&replica)));
    assert_eq!(r["role"], "replica", "{r:#}");
    assert_eq!(r["timeline"], 1, "{r:#}");
    let p = wait_for(Duration::from_secs(60), Duration::from_secs(2), || {
        let p = replication(&primary);
        (p["state"] == "streaming sync").then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "the primary never saw a sync replica: {:#}",
            replication(&primary)
        )
    });
    assert_eq!(p["role"], "primary", "{p:#}");
    assert_eq!(p["slots"], "sql_replica", "{p:#}");
    let status = run(&mut primary.command("status", &[]));
    println!("{}", text(&status));

    // The clients' connection string names both VMs and asks for the writable one.
    let url = String::from_utf8_lossy(
        &primary
            .cli("db url", &["forgejo", "--format", "keyvalue"])
            .stdout,
    )
    .trim()
    .to_string();
    assert!(
        url.starts_with("host=sql-vm,sql-replica port=5432,5432 ")
            && url.ends_with(" target_session_attrs=read-write"),
        "{url}"
    );
    let read_url = String::from_utf8_lossy(
        &replica
            .cli(
                "db url",
                &["forgejo", "--format", "keyvalue", "--read-only"],
            )
            .stdout,
    )
    .trim()
    .to_string();

    let pgpass = load::pgpass(lab.dir.path(), &primary.superuser_password());
    let peer = lab.join_peer().expect("second node joins");
    assert_eq!(
        peer_psql(peer, &pgpass, &url, "create table notes (t text); insert into notes values ('via the cluster url'); select pg_is_in_recovery()").as_deref(),
        Ok("f"),
        "the app writes through the multi-host url"
    );
    // A synchronous commit is on the replica's disk, not necessarily replayed yet.
    let on_replica = "select pg_is_in_recovery()::text || ' ' || count(*) from notes";
    let read = wait_for(Duration::from_secs(20), Duration::from_secs(1), || {
        peer_psql(peer, &pgpass, &read_url, on_replica)
            .ok()
            .filter(|s| s == "true 1")
    });
    assert!(
        read.is_some(),
        "the read-only url reaches the replica, with the app's password from the credentials file: {:?}",
        peer_psql(peer, &pgpass, &read_url, on_replica)
    );

    // Steady load through the cluster string; the replica keeps up within MAX_CATCH_UP.
    primary.query(load::CREATE_TABLE).expect("the load's table");
    primary
        .query("create table commit_cost (mode text, i int)")
        .expect("commit cost table");
    let writes = WriteLoad::start_to(peer.ns_name(), &pgpass, CLUSTER);
    let mut lags = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(3));
        let p = replication(&primary);
        lags.push((p["lag_bytes"].as_u64(), p["lag_seconds"].as_u64()));
    }
    let acked = writes.acked();
    assert!(
        acked > 10,
        "the load wrote only {acked} rows: {:?}",
        writes.last_failure()
    );
    let t = Instant::now();
    let caught_up = wait_for(MAX_CATCH_UP, Duration::from_millis(500), || {
        (count(
            &replica,
            &format!("select count(*) from {} where n <= {acked}", load::TABLE),
        ) == i64::try_from(acked).unwrap())
        .then(|| t.elapsed())
    });
    println!(
        "steady load: {acked} rows in 30 s; primary's view of the replica's lag (bytes, s) every 3 s: {lags:?}; row {acked} on the replica {caught_up:?} after it was acknowledged"
    );
    assert!(
        caught_up.is_some(),
        "the replica did not catch up within {MAX_CATCH_UP:?}"
    );

    // What the synchronous replica costs a commit, measured against local commits.
    let n = 100;
    let local = commit_seconds(peer, &pgpass, "local", n);
    let sync = commit_seconds(peer, &pgpass, "on", n);
    println!(
        "synchronous replica: {n} commits {sync:.2} s against {local:.2} s with synchronous_commit = local ({:.2}x, {:.1} ms more per commit), under the load",
        sync / local,
        (sync - local) * 1000.0 / n as f64
    );

    // Power cut on the primary under the load, then promotion.
    let acked_before_cut = writes.acked();
    kill(
        primary.pid_of("qemu-system").expect("primary's qemu"),
        nix::sys::signal::Signal::SIGKILL,
    );
    let cut = Instant::now();
    wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        primary.leftover_processes().is_empty().then_some(())
    });
    let o = replica.cli("promote", &[]);
    let promoted = Instant::now();
    assert!(o.status.success(), "promote: {}", text(&o));
    println!("{}", text(&o));
    let first = writes.first_ack_after(promoted, Duration::from_secs(120));
    println!(
        "power cut at {acked_before_cut} rows; promote returned {:.1} s after the cut; first write accepted {first:?} after promote returned",
        promoted.duration_since(cut).as_secs_f64()
    );
    assert!(
        first.is_some(),
        "no write after promote: {:?}",
        writes.last_failure()
    );
    std::thread::sleep(Duration::from_secs(5));
    let total = writes.stop();
    let present = count(
        &replica,
        &format!("select count(*) from {} where n <= {total}", load::TABLE),
    );
    assert_eq!(
        present,
        i64::try_from(total).unwrap(),
        "every acknowledged row is on the new primary ({total} acknowledged, {acked_before_cut} before the cut)"
    );
    let r = replication(&replica);
    assert_eq!(r["role"], "primary", "{r:#}");
    assert_eq!(r["timeline"], 2, "{r:#}");

    // The old primary refuses to be a second primary, and says what to do.
    let o = primary.start();
    let said = text(&o);
    assert!(
        !o.status.success(),
        "the old primary started as a second primary:\n{said}"
    );
    assert!(
        said.contains("refusing to start as a primary") && said.contains("sovereign rejoin"),
        "{said}"
    );
    let refusal = said
        .lines()
        .find(|l| l.contains("refusing to start as a primary"))
        .unwrap_or_default();
    println!("the old primary, started again: {}", refusal.trim());
    // The power cut left the dead server's postmaster.pid; its PID may belong to any
    // process of the new boot, so the guest must clear it or pg_rewind's crash recovery
    // refuses the directory.
    let console = primary.console();
    let cleared = console
        .lines()
        .find(|l| l.contains("removed postmaster.pid of a server that did not stop"));
    let Some(cleared) = cleared else {
        panic!("the stale lock file of the power-cut server was not cleared:\n{console}");
    };
    println!("{}", cleared.trim());
    let _ = primary.stop();
    wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        primary.leftover_processes().is_empty().then_some(())
    });

    // rejoin: a copy of the disk first, then a replica of the new primary that catches up.
    let o = primary.cli("rejoin", &["--yes"]);
    assert!(o.status.success(), "rejoin: {}", text(&o));
    let kept = std::fs::read_dir(primary.home.path())
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("postgres.img.before-rejoin-")
        });
    assert!(kept, "rejoin kept a copy of the data disk");
    replica
        .query("\\c forgejo\ninsert into notes values ('after the rejoin')")
        .expect("write on the new primary");
    let want = count(&replica, &format!("select count(*) from {}", load::TABLE));
    let t = Instant::now();
    let caught_up = wait_for(MAX_CATCH_UP, Duration::from_millis(500), || {
        (count(&primary, "\\c forgejo\nselect count(*) from notes") == 2
            && count(&primary, &format!("select count(*) from {}", load::TABLE)) == want)
            .then(|| t.elapsed())
    });
    assert!(
        caught_up.is_some(),
        "the rejoined node did not catch up: {:#}",
        replication(&primary)
    );
    let r = replication(&primary);
    assert_eq!(r["role"], "replica", "{r:#}");
    assert_eq!(r["timeline"], 2, "{r:#}");
    assert_eq!(r["state"], "streaming", "{r:#}");
    let o = run(&mut replica.command("status", &[]));
    println!("{}", text(&o));
    println!("the old primary rejoined and caught up in {caught_up:?}");
}
