//! A two-node cluster over the tailnet, as a drill in steps (see `drill.rs`): one lab
//! (headscale, the second node) and two VMs under QEMU, `sql-vm` (A, first the primary)
//! and `sql-replica` (B), each run by its own `sovereign` and state directory. The
//! steps, in order, each a test of its own:
//!
//! 1. A's first boot, stopped while it joins the tailnet: no later stage starts after
//!    the stop (before, the postgres stage began initdb after it and was cut off);
//! 2. A's first boot power-cut during initdb; 3. the next one removes the partial
//!    cluster and says so, and is stopped during its own initdb: no server starts
//!    after the stop; 4. the next start comes up on a whole cluster;
//! 5. B's first boot power-cut while it copies A; 6. the next start copies anew and
//!    streams;
//! 7. rows through the multi-host url reach B under a steady load; the commit cost of
//!    the synchronous replica;
//! 8. `promote` on B is refused while A streams to it; 9. `promote --force` while A is
//!    alive ends with exactly one primary within [`SPLIT_LIMIT`] (A fences itself);
//! 10. A's rejoin power-cut during pg_rewind; 11. the next start finishes it with a new
//!     copy of B;
//! 12. B stops, A is promoted, B rejoins A; A, synchronous, is power-cut under the load
//!     and B promoted: no acknowledged row lost, the same string writes again;
//! 13. B's VMM crashes (`restart = "on-failure"`) after that rejoin and promotion: the
//!     restart replays no rewind and loses no row;
//! 14. A boots alone (it cannot rule out a newer primary, and says so), then B boots:
//!     exactly one takes writes within [`SPLIT_LIMIT`], A is fenced with its disk kept;
//! 15. a replica gone for good cannot take B's disk past its WAL budget.
//!
//! Through 9 and 14 the writable nodes are counted every second.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use protocol::alerts::{Condition, Severity};
use protocol::replication::{Fence, ReplicationStatus, Role};
use protocol::Stage;
use sovereign_tests::drill::Fixture;
use sovereign_tests::lab::Lab;
use sovereign_tests::load::{self, WriteLoad};
use sovereign_tests::primaries;
use sovereign_tests::process::{ok, text, wait_for};
use sovereign_tests::tailnode::{Login, TailNode};
use sovereign_tests::vm::{Vm, VmOptions};
use sovereign_tests::{heavy_variant, vm_test};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lag the replica must stay within under the steady load.
const MAX_CATCH_UP: Duration = Duration::from_secs(30);
/// The supervisors check every 5 s, so a replica gone for good is an alert within
/// seconds.
const ALERTS_TOML: &str = "[alerts]\ncheck_secs = 5\n";
/// Samples of the replica's lag under the steady load, one every 2 s.
const LAG_SAMPLES: u64 = 5;

/// The longest two nodes may both take writes once they can see each other: the
/// fence's check interval and a peer's connect timeout, with room for TCG.
const SPLIT_LIMIT: Duration = Duration::from_secs(30);

/// The cluster as the second node reaches it: the primary by role, wherever it is. A
/// session open on a primary that loses power waits on TCP for minutes without
/// `tcp_user_timeout`; with it, unacknowledged data fails the session within 10 s.
const CLUSTER: &str = "host=sql-vm,sql-replica port=5432,5432 user=postgres dbname=postgres connect_timeout=5 tcp_user_timeout=10000 target_session_attrs=read-write";

/// The drill's fixture. Fields drop in order: the VMs before their lab.
struct Cluster {
    a: Vm,
    b: Vm,
    load: Option<WriteLoad>,
    creds: PathBuf,
    pgpass: PathBuf,
    /// Whether the initdb of the boot stopped in step 3 finished before the power-off.
    initdb_finished_before_stop: bool,
    lab: Lab,
}

impl Fixture for Cluster {
    fn on_failure(&self) {
        self.a.print_failure_evidence();
        self.b.print_failure_evidence();
    }
}

fn setup() -> Option<Cluster> {
    let a = vm_test("replica")?;
    let lab = Lab::start(&a.tools, "replica").expect("lab");
    let base = || VmOptions {
        apps: vec!["forgejo".into()],
        backup_toml: "enabled = false".into(),
        ..lab.vm_options()
    };
    let primary = Vm::new(
        &a,
        &VmOptions {
            extra_toml: format!(
                "[replication]\nrole = \"primary\"\npeer = \"sql-replica\"\nsynchronous = true\n{ALERTS_TOML}"
            ),
            ..base()
        },
    );
    let creds = lab.dir.path().join("replica.credentials");
    let replica = Vm::new(
        &a,
        &VmOptions {
            hostname: "sql-replica",
            restart_on_failure: true,
            extra_toml: format!(
                "[replication]\nrole = \"replica\"\npeer = \"sql-vm\"\ncredentials_file = {:?}\n{ALERTS_TOML}",
                creds.display().to_string()
            ),
            ..base()
        },
    );
    let pgpass = lab.dir.path().join("pgpass");
    Some(Cluster {
        a: primary,
        b: replica,
        load: None,
        creds,
        pgpass,
        initdb_finished_before_stop: false,
        lab,
    })
}

sovereign_tests::drill! {
    static DRILL: Drill<Cluster> = setup;
    s01_a_stop_while_joining_starts_no_later_stage => stop_while_joining,
    s02_a_power_cut_during_initdb => power_cut_during_initdb,
    s03_a_stop_during_the_next_initdb => stop_during_initdb,
    s04_the_next_start_makes_the_cluster_anew => first_boot_completes,
    s05_b_power_cut_while_copying_a => power_cut_while_copying,
    s06_the_next_start_copies_anew_and_streams => copy_completes,
    s07_rows_reach_the_replica_under_load => rows_under_load,
    s08_promote_is_refused_while_the_primary_streams => promote_refused,
    s09_forced_promote_leaves_exactly_one_primary => forced_promote,
    s10_a_rejoin_power_cut_during_pg_rewind => rejoin_cut,
    s11_the_next_start_finishes_the_rejoin => rejoin_finished,
    s12_a_synchronous_primary_power_cut_then_promote => failover,
    s13_a_crash_after_rejoin_and_promote_replays_nothing => crash_after_promote,
    s14_the_old_primary_alone_then_both_up => old_primary_alone_then_both,
    s15_a_gone_replica_cannot_fill_the_primary => gone_replica_bounded,
}

/// How long after a step's log line the power goes: just after it, or, with
/// `--heavy`, also at once and well into the step.
fn cut_delays(what: &str) -> Vec<Duration> {
    if heavy_variant(&format!("{what} cut at three points")) {
        vec![
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(4),
        ]
    } else {
        vec![Duration::from_millis(1500)]
    }
}

/// Waits for a background `start` that must fail (the boot was stopped or cut).
fn start_failed(child: std::process::Child, why: &str) -> String {
    let o = child.wait_with_output().unwrap();
    let said = text(&o);
    assert!(!o.status.success(), "start should fail ({why}):\n{said}");
    said
}

/// The number a query printed last.
fn count(vm: &Vm, sql: &str) -> i64 {
    vm.number(sql)
}

/// The fence's verdict in `vm`'s status.
fn fence(vm: &Vm) -> Option<Fence> {
    vm.guest_status().fence
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
    peer.psql(&Login::conninfo(CLUSTER).passfile(pgpass), &sql)
        .expect("timed commits");
    t.elapsed().as_secs_f64()
}

/// Waits until `vm` reports its replication's state as `want_state`.
fn wait_replication(vm: &Vm, want_state: &str) -> ReplicationStatus {
    wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
        vm.status().replication.filter(|r| r.state == want_state)
    })
    .unwrap_or_else(|| {
        panic!(
            "replication never became {want_state}: {:?}",
            vm.replication()
        )
    })
}

fn stop_while_joining(c: &mut Cluster) {
    let child =
        c.a.start_until("running tailscale up", Duration::from_secs(120));
    ok(&c.a.stop(), "stop while joining");
    start_failed(child, "stopped while joining");
    let console = c.a.console();
    let stop_at = console
        .find("shutting down: requested by the host")
        .expect("the guest logged the shutdown");
    // Before, the postgres stage began initdb after the shutdown request and was cut off.
    assert!(
        console
            .find("running initdb")
            .is_none_or(|initdb| initdb < stop_at),
        "a stage began after the shutdown request:\n{console}"
    );
    assert!(
        console.contains("not starting the postgres stage: shutdown was requested"),
        "{console}"
    );
}

fn power_cut_during_initdb(c: &mut Cluster) {
    for delay in cut_delays("initdb") {
        let child =
            c.a.start_until("first boot, running initdb", Duration::from_secs(120));
        std::thread::sleep(delay);
        c.a.power_cut();
        start_failed(child, "power cut during initdb");
        assert!(
            !c.a.console().contains("initdb finished"),
            "the power went after initdb ({delay:?} in): {}",
            c.a.console()
        );
        println!("power cut {delay:?} into initdb");
    }
}

fn stop_during_initdb(c: &mut Cluster) {
    let child =
        c.a.start_until("first boot, running initdb", Duration::from_secs(120));
    ok(&c.a.stop(), "stop during initdb");
    start_failed(child, "stopped during initdb");
    let console = c.a.console();
    assert!(
        console.contains("the first boot's initdb was interrupted"),
        "the boot after the power cut said what it found: {console}"
    );
    // initdb may finish while the shutdown stops tailscaled (its cluster is renamed
    // into place whole), but no server starts after the request.
    let stop_at = console
        .find("shutting down: requested by the host")
        .expect("the guest logged the shutdown");
    assert!(
        !console[stop_at..].contains("postgres: started"),
        "postgres started after the shutdown request: {console}"
    );
    c.initdb_finished_before_stop = console.contains("initdb finished");
}

fn first_boot_completes(c: &mut Cluster) {
    let out = c.a.start_ok();
    println!("A after an initdb cut by a power cut and one by a stop:\n{out}");
    if c.initdb_finished_before_stop {
        assert!(
            c.a.console().contains("reusing the cluster"),
            "the cluster the stopped boot completed is used"
        );
    } else {
        assert!(
            out.contains("the first boot's initdb was interrupted")
                && out.contains("postgres.initdb was removed and the step starts over"),
            "the postgres stage says what it finished: {out}"
        );
    }
    assert_eq!(count(&c.a, "select 1"), 1);
}

fn power_cut_while_copying(c: &mut Cluster) {
    let o =
        c.a.cli("replica credentials", &["--out", c.creds.to_str().unwrap()]);
    ok(&o, "replica credentials");
    let mode = std::fs::metadata(&c.creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the credentials file is private");
    let creds = std::fs::read_to_string(&c.creds).unwrap();
    assert!(creds.contains("primary = \"sql-vm\"") && creds.contains("[ca]"));
    for delay in cut_delays("pg_basebackup") {
        let child =
            c.b.start_until("copying the primary", Duration::from_secs(180));
        std::thread::sleep(delay);
        c.b.power_cut();
        start_failed(child, "power cut while copying");
        println!("power cut {delay:?} into the copy");
    }
}

fn copy_completes(c: &mut Cluster) {
    let t = Instant::now();
    let out = c.b.start_ok();
    println!(
        "B copied A after an interrupted copy and started in {:.1} s:\n{out}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("copying the peer was interrupted"),
        "the postgres stage says it started the copy over: {out}"
    );
    assert_eq!(
        c.b.superuser_password(),
        c.a.superuser_password(),
        "the replica's host took the cluster's password from the credentials file"
    );
    assert_eq!(
        std::fs::read(c.b.home.path().join("secrets/sql-ca.crt")).unwrap(),
        std::fs::read(c.a.home.path().join("secrets/sql-ca.crt")).unwrap(),
        "one CA for both nodes"
    );
    let r = wait_replication(&c.b, "streaming");
    assert_eq!((r.role, r.timeline), (Role::Replica, 1), "{r:?}");
    let p = wait_replication(&c.a, "streaming sync");
    assert_eq!(p.role, Role::Primary, "{p:?}");
    assert_eq!(p.slots[0].name, "sql_replica", "{p:?}");
    let f = wait_for(Duration::from_secs(30), Duration::from_secs(2), || {
        fence(&c.a).filter(|f| matches!(f, Fence::Clear { .. }))
    });
    assert!(
        f.is_some(),
        "A's fence sees B, a replica: {:?}",
        fence(&c.a)
    );
}

fn rows_under_load(c: &mut Cluster) {
    let url = ok(
        &c.a.cli("db url", &["forgejo", "--format", "keyvalue"]),
        "db url",
    )
    .trim()
    .to_string();
    assert!(
        url.starts_with("host=sql-vm,sql-replica port=5432,5432 ")
            && url.ends_with(" target_session_attrs=read-write"),
        "{url}"
    );
    let read_url = ok(
        &c.b.cli(
            "db url",
            &["forgejo", "--format", "keyvalue", "--read-only"],
        ),
        "db url --read-only",
    )
    .trim()
    .to_string();
    c.pgpass = load::pgpass(c.lab.dir.path(), &c.a.superuser_password());
    let pgpass = c.pgpass.clone();
    c.lab.join_peer().expect("second node joins");
    let peer = c.lab.peer.as_ref().expect("the second node");
    assert_eq!(
        peer.psql(&Login::conninfo(&url).passfile(&pgpass), "create table notes (t text); insert into notes values ('via the cluster url'); select pg_is_in_recovery()").as_deref(),
        Ok("f"),
        "the app writes through the multi-host url"
    );
    let on_replica = "select pg_is_in_recovery()::text || ' ' || count(*) from notes";
    let read = wait_for(Duration::from_secs(20), Duration::from_secs(1), || {
        peer.psql(&Login::conninfo(&read_url).passfile(&pgpass), on_replica)
            .ok()
            .filter(|s| s == "true 1")
    });
    assert!(
        read.is_some(),
        "the read-only url reaches the replica: {:?}",
        peer.psql(&Login::conninfo(&read_url).passfile(&pgpass), on_replica)
    );
    let ns = peer.ns_name().to_string();
    c.a.query(load::CREATE_TABLE).expect("the load's table");
    c.a.query("create table commit_cost (mode text, i int)")
        .expect("commit cost table");
    let writes = WriteLoad::start_to(&ns, &pgpass, CLUSTER);
    let mut lags = Vec::new();
    for _ in 0..LAG_SAMPLES {
        std::thread::sleep(Duration::from_secs(2));
        let p = c.a.replication();
        lags.push((p.lag_bytes, p.lag_seconds));
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
            &c.b,
            &format!("select count(*) from {} where n <= {acked}", load::TABLE),
        ) == i64::try_from(acked).unwrap())
        .then(|| t.elapsed())
    });
    println!(
        "steady load: {acked} rows in {} s; the primary's view of the replica's lag (bytes, s) every 2 s: {lags:?}; row {acked} on the replica {caught_up:?} after it was acknowledged",
        LAG_SAMPLES * 2
    );
    assert!(
        caught_up.is_some(),
        "the replica did not catch up within {MAX_CATCH_UP:?}"
    );
    // What a synchronous replica costs a commit is a figure, not a property: measured
    // with --heavy (and by the benchmarks), not on every run.
    if heavy_variant("replica: 100 commits synchronous against local, under the load") {
        let n = 100;
        let local = commit_seconds(peer, &pgpass, "local", n);
        let sync = commit_seconds(peer, &pgpass, "on", n);
        println!(
            "synchronous replica: {n} commits {sync:.2} s against {local:.2} s with synchronous_commit = local ({:.2}x, {:.1} ms more per commit), under the load",
            sync / local,
            (sync - local) * 1000.0 / n as f64
        );
    }
    c.load = Some(writes);
}

fn promote_refused(c: &mut Cluster) {
    let o = c.b.cli("promote", &["--yes"]);
    let said = text(&o);
    assert!(!o.status.success(), "promote while A streams:\n{said}");
    assert!(
        said.contains("refusing to promote")
            && (said.contains("WAL receiver is streaming")
                || said.contains("answers as this cluster's primary")),
        "{said}"
    );
    assert!(said.contains("--force"), "it names the way out: {said}");
    assert_eq!(c.b.replication().role, Role::Replica, "nothing changed");
    let help = ok(&c.b.cli("promote", &["--help"]), "promote --help");
    assert!(help.contains("--force") && help.contains("--yes"), "{help}");
}

fn forced_promote(c: &mut Cluster) {
    let (o, counts) = primaries::watch(&[&c.a, &c.b], SPLIT_LIMIT, || {
        c.b.cli("promote", &["--force", "--yes"])
    });
    let said = ok(&o, "promote --force");
    println!("{said}");
    println!("writable nodes each second: {}", counts.summary());
    counts.assert_one_primary_within(SPLIT_LIMIT);
    let verdict = fence(&c.a);
    assert!(
        matches!(&verdict, Some(Fence::Fenced { reason, .. })
            if reason.contains("promoted to timeline 2") && reason.contains("sovereign rejoin")),
        "{verdict:?}"
    );
    let table = text(&c.a.cli("status", &[]));
    assert!(table.contains("fenced"), "{table}");
    let writes = c.load.as_ref().unwrap();
    let back = writes.first_ack_after(Instant::now(), Duration::from_secs(120));
    assert!(
        back.is_some(),
        "writes resumed on B: {:?}",
        writes.last_failure()
    );
    load::assert_acked_rows_on(&c.b, writes.acked());
    println!(
        "forced promotion: two primaries for at most {:?}; the load writes on B again",
        counts.longest_split()
    );
}

fn rejoin_cut(c: &mut Cluster) {
    ok(&c.a.stop(), "stop the fenced A");
    // Cut as pg_rewind starts: the one point a rewind can be resumed from only by a
    // new copy (later points leave a finished rewind, which the next boot completes).
    let mark = c.a.console_mark();
    let child = c.a.command("rejoin", &["--yes"]).spawn_output();
    if !c
        .a
        .wait_console_since(&mark, "rejoin: rewinding onto", Duration::from_secs(180))
    {
        c.a.power_cut();
        let said = start_failed(child, "no rewind");
        panic!(
            "the rejoin never began pg_rewind:\n{said}\n{}",
            c.a.console()
        );
    }
    c.a.power_cut();
    start_failed(child, "power cut during pg_rewind");
    let kept = std::fs::read_dir(c.a.home.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("postgres.img.before-rejoin-")
        })
        .count();
    assert!(kept >= 1, "rejoin kept a copy of the data disk first");
}

fn rejoin_finished(c: &mut Cluster) {
    let out = c.a.start_ok();
    println!("A after an interrupted rejoin:\n{out}");
    assert!(
        out.contains("a rejoin onto sql-replica was interrupted")
            && out.contains("finished it with a new copy of sql-replica"),
        "{out}"
    );
    let r = wait_replication(&c.a, "streaming");
    assert_eq!((r.role, r.timeline), (Role::Replica, 2), "{r:?}");
    let want = count(&c.b, &format!("select count(*) from {}", load::TABLE));
    let caught_up = wait_for(MAX_CATCH_UP, Duration::from_millis(500), || {
        (count(&c.a, &format!("select count(*) from {}", load::TABLE)) >= want).then_some(())
    });
    assert!(caught_up.is_some(), "A caught up with B");
}

fn failover(c: &mut Cluster) {
    // A becomes the primary again by hand (B stopped cleanly hands A all its WAL first),
    // and B rejoins it, whole, so that B's supervisor starts with the rejoin request:
    // the crash in the next step must not replay it.
    if let Some(writes) = c.load.take() {
        let acked = writes.stop();
        load::assert_acked_rows_on(&c.b, acked);
    }
    ok(&c.b.stop(), "stop B cleanly");
    ok(&c.a.cli("promote", &["--yes"]), "promote A, B stopped");
    let out = ok(&c.b.cli("rejoin", &["--yes"]), "rejoin B onto A");
    assert!(out.contains("up: VM sql"), "{out}");
    wait_replication(&c.a, "streaming sync");
    // A, synchronous, is power-cut under the load; B is promoted: no acknowledged row
    // is lost, and the same connection string writes again.
    let ns = c
        .lab
        .peer
        .as_ref()
        .expect("the second node")
        .ns_name()
        .to_string();
    let writes = WriteLoad::start_warmed(&ns, &c.pgpass, CLUSTER, 20);
    let cut = Instant::now();
    c.a.power_cut();
    let o = c.b.cli("promote", &["--yes"]);
    let promoted = Instant::now();
    let said = ok(&o, "promote after the primary's power cut");
    println!("{said}");
    let first = writes.first_ack_after(promoted, Duration::from_secs(120));
    println!(
        "power cut on A; promote returned {:.1} s after the cut; first write accepted {first:?} after promote returned",
        promoted.duration_since(cut).as_secs_f64()
    );
    assert!(
        first.is_some(),
        "no write after promote: {:?}",
        writes.last_failure()
    );
    // A few more rows on the new primary before counting them all.
    let before = writes.acked();
    let more = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        (writes.acked() >= before + 5).then_some(())
    });
    assert!(more.is_some(), "writes go on: {:?}", writes.last_failure());
    load::assert_acked_rows_on(&c.b, writes.acked());
    let r = c.b.replication();
    assert_eq!((r.role, r.timeline), (Role::Primary, 4), "{r:?}");
    c.load = Some(writes);
}

fn crash_after_promote(c: &mut Cluster) {
    let writes = c.load.take().unwrap();
    let acked = writes.stop();
    c.b.query("\\c forgejo\ninsert into notes values ('after the promotion')")
        .expect("a row on B, the primary");
    let notes = count(&c.b, "\\c forgejo\nselect count(*) from notes");
    let qemu = c.b.pid_of("qemu-system").expect("B's VMM");
    sovereign_tests::process::kill(qemu, nix::sys::signal::Signal::SIGKILL);
    let back = wait_for(Duration::from_secs(180), Duration::from_secs(2), || {
        (c.b.pid_of("qemu-system").is_some_and(|p| p != qemu) && primaries::writable(&c.b))
            .then_some(())
    });
    assert!(
        back.is_some(),
        "the supervisor booted B again and it takes writes: {}",
        c.b.console()
    );
    let console = c.b.console();
    assert!(
        !console.contains("rewinding onto") && !console.contains("pg_rewind"),
        "the restart replayed the rejoin: {console}"
    );
    assert_eq!(
        count(&c.b, "\\c forgejo\nselect count(*) from notes"),
        notes,
        "no row written after the promotion was lost"
    );
    load::assert_acked_rows_on(&c.b, acked);
    let r = c.b.replication();
    assert_eq!((r.role, r.timeline), (Role::Primary, 4), "{r:?}");
}

fn old_primary_alone_then_both(c: &mut Cluster) {
    ok(&c.b.stop(), "stop B, the new primary");
    let out = c.a.start_ok();
    println!("A, the old primary, alone:\n{out}");
    let verdict = fence(&c.a);
    assert!(
        matches!(verdict, Some(Fence::Unconfirmed { .. })),
        "{verdict:?}"
    );
    let table = text(&c.a.cli("status", &[]));
    assert!(table.contains("cannot rule out a newer primary"), "{table}");
    // A's commits would wait for its synchronous replica, which is not there.
    c.a.query("\\c forgejo\nset synchronous_commit = local;\ninsert into notes values ('written on A alone')")
        .expect("A takes writes while alone");
    let (started, counts) = primaries::watch(&[&c.a, &c.b], SPLIT_LIMIT, || c.b.start());
    ok(&started, "B starts while A runs");
    println!(
        "B started while A ran alone: writable nodes each second: {}",
        counts.summary()
    );
    counts.assert_one_primary_within(SPLIT_LIMIT);
    assert!(
        primaries::writable(&c.b),
        "B, on the newer timeline, takes writes"
    );
    let verdict = fence(&c.a);
    assert!(matches!(verdict, Some(Fence::Fenced { .. })), "{verdict:?}");
    assert!(
        c.a.leftover_processes().len() > 1,
        "A's VM stays up, its disk kept, until `rejoin`"
    );
    assert_eq!(
        count(
            &c.b,
            "\\c forgejo\nselect count(*) from notes where t = 'written on A alone'"
        ),
        0,
        "what A took while alone is on A's disk only"
    );
}

fn gone_replica_bounded(c: &mut Cluster) {
    ok(&c.a.stop(), "A goes for good");
    let budget = |name: &str| -> i64 {
        count(
            &c.b,
            &format!("select setting::bigint from pg_settings where name = '{name}'"),
        )
    };
    let slot_keep_mb = budget("max_slot_wal_keep_size");
    let max_wal_mb = budget("max_wal_size");
    let keep_mb = budget("wal_keep_size");
    // Twice the slot's budget of WAL, one segment switch at a time.
    let rounds = (slot_keep_mb * 2) / 16 + 4;
    let mut sql = String::from("create table if not exists wal_filler (i int);\n");
    for i in 0..rounds {
        sql.push_str(&format!(
            "insert into wal_filler values ({i});\nselect pg_switch_wal();\n"
        ));
    }
    sql.push_str("checkpoint;\n");
    c.b.query(&sql).expect("write WAL");
    let slot = wait_for(Duration::from_secs(60), Duration::from_secs(2), || {
        let _ = c.b.query("checkpoint");
        let p = c.b.replication();
        p.slots.iter().any(|s| s.lost()).then_some(p)
    });
    assert!(
        slot.is_some(),
        "the gone replica's slot was invalidated: {:?}",
        c.b.replication()
    );
    let wal_mb = count(
        &c.b,
        "select (sum(size) / 1048576)::bigint from pg_ls_waldir()",
    );
    println!(
        "{} MB of WAL written with the replica gone; pg_wal holds {wal_mb} MB (max_wal_size {max_wal_mb}, wal_keep_size {keep_mb}, max_slot_wal_keep_size {slot_keep_mb})",
        rounds * 16
    );
    assert!(
        wal_mb <= max_wal_mb + keep_mb + 64,
        "pg_wal stays within the budget once the slot is invalidated: {wal_mb} MB"
    );
    let table = text(&c.b.cli("status", &[]));
    assert!(
        table.contains("invalidated") && table.contains("sovereign rejoin --fresh"),
        "{table}"
    );
    // The supervisor's watch names it too: the replica is gone and cannot come back by
    // streaming.
    let alert = wait_for(Duration::from_secs(30), Duration::from_secs(1), || {
        c.b.status().alerts.into_iter().find(|a| {
            a.condition == Condition::ReplicaDisconnected && a.severity == Severity::Critical
        })
    });
    assert!(
        alert
            .as_ref()
            .is_some_and(|a| a.summary.contains("sovereign rejoin --fresh")),
        "replica-disconnected (critical) is active on B: {:?}",
        c.b.status().alerts
    );
    println!(
        "B's supervisor: {}",
        alert.map(|a| a.summary).unwrap_or_default()
    );
    let stage = wait_for(Duration::from_secs(30), Duration::from_secs(2), || {
        let summary = c.b.stage_summary(Stage::Postgres);
        summary
            .contains("slot sql_vm was invalidated")
            .then_some(summary)
    });
    assert!(
        stage.is_some(),
        "the postgres stage says the slot went: {}",
        c.b.stage_summary(Stage::Postgres)
    );
}

/// A command run to completion in the background, its output collected.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::process::Child;
}

impl SpawnOutput for std::process::Command {
    fn spawn_output(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
