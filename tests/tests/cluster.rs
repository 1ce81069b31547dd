//! A three-node cluster over the tailnet, as a drill in steps (see `drill.rs`): one lab
//! (headscale, the second node) and three VMs under QEMU, `sql-vm` (A, first the
//! primary), `sql-r1` (B) and `sql-r2` (C), each with its own state directory, all on
//! quorum commit (`ANY 1` over the other two). The steps, in order:
//!
//! 1. `sovereign cluster up` through the local transport brings all three up: the
//!    primary first, each replica handed its credentials by the primary's launcher,
//!    both streaming, a row written on A read on B and C, the multi-host url;
//! 2. run again, it changes nothing; `cluster status` shows one primary and two
//!    replicas streaming;
//! 3. rows under a steady load through the multi-host url reach both replicas; their
//!    lag; with `--heavy`, the commit cost of quorum commit;
//! 4. every node backs up the cluster onto its own backup disk (the replicas from their
//!    own disks, archiving the WAL they receive); a row before a moment T, one after;
//! 5. A cut off from both replicas acknowledges no commit; `cluster up` starts the two
//!    again (only them) and the waiting commit returns;
//! 6. A is power-cut under the load; the replica with the most WAL is promoted without
//!    `--force`, the other follows it on its own, no acknowledged row is lost, the same
//!    url writes again;
//! 7. A, started again while the others run, is fenced before it takes a write, its
//!    disk kept; 8. `rejoin` makes A the new primary's replica;
//! 9. a copy of the follower's backup disk alone restores the cluster to T, before the
//!    failover, in a VM of its own (`restore --new-disk`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use protocol::replication::Role;
use sovereign_tests::drill::Fixture;
use sovereign_tests::lab::Lab;
use sovereign_tests::load::{self, WriteLoad};
use sovereign_tests::process::{ok, text, wait_for};
use sovereign_tests::tailnode::{Login, TailNode};
use sovereign_tests::vm::{Vm, VmOptions};
use sovereign_tests::{heavy_variant, vm_test};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The cluster as the second node reaches it: the primary by role, wherever it is.
const CLUSTER: &str = "host=sql-vm,sql-r1,sql-r2 port=5432,5432,5432 user=postgres dbname=postgres connect_timeout=5 tcp_user_timeout=10000 target_session_attrs=read-write";

/// The lag a replica must stay within under the steady load.
const MAX_CATCH_UP: Duration = Duration::from_secs(120);

/// The drill's fixture. Fields drop in order: the VMs before their lab.
struct Three {
    /// A, B, C.
    vms: Vec<Vm>,
    /// The cluster file.
    file: PathBuf,
    sovereign: PathBuf,
    load: Option<WriteLoad>,
    pgpass: PathBuf,
    /// Which of B and C was promoted in step 6.
    promoted: Option<usize>,
    /// The moment of step 4 the restore of step 9 goes back to.
    target: String,
    /// The VM step 9 restores into; before the lab, which it uses.
    restored: Option<Vm>,
    artifacts: sovereign_tests::Artifacts,
    lab: Lab,
}

impl Fixture for Three {
    fn on_failure(&self) {
        for vm in &self.vms {
            vm.print_failure_evidence();
        }
    }
}

const NAMES: [&str; 3] = ["sql-vm", "sql-r1", "sql-r2"];

fn setup() -> Option<Three> {
    // Three VMs under TCG, one boot after another, and a fourth for the restore: about
    // ten minutes on the 2-core CI machine, over the warm run's budget by itself.
    if !heavy_variant("the three-node cluster drill (about 10 min under TCG on 2 cores)") {
        return None;
    }
    let a = vm_test("cluster")?;
    let lab = Lab::start(&a.tools, "cluster").expect("lab");
    let mut vms = Vec::new();
    let mut nodes = String::new();
    for (i, name) in NAMES.iter().enumerate() {
        let peers: Vec<String> = NAMES
            .iter()
            .filter(|n| *n != name)
            .map(|n| format!("{n:?}"))
            .collect();
        let creds = lab.dir.path().join(format!("{name}.credentials"));
        let role = if i == 0 {
            "role = \"primary\"".to_string()
        } else {
            format!(
                "role = \"replica\"\ncredentials_file = {:?}",
                creds.display().to_string()
            )
        };
        let vm = Vm::new(
            &a,
            &VmOptions {
                hostname: name,
                apps: vec!["forgejo".into()],
                // A replica's first copy crosses the tailnet between two TCG guests
                // (WireGuard in emulated CPUs, three guests on two cores): measured at
                // 130 KB/s to 1 MB/s, so 30 MB can take past the usual 240 s.
                stage_timeout_secs: 600,
                extra_toml: format!(
                    "[replication]\n{role}\npeers = [{}]\nsynchronous = true\n",
                    peers.join(", ")
                ),
                ..lab.vm_options()
            },
        );
        nodes.push_str(&format!(
            "[[node]]\nspec = {:?}\nvia = \"local\"\nhome = {:?}\n",
            vm.spec.display().to_string(),
            vm.home.path().display().to_string()
        ));
        vms.push(vm);
    }
    let file = lab.dir.path().join("cluster.toml");
    std::fs::write(&file, nodes).expect("cluster file");
    Some(Three {
        vms,
        file,
        sovereign: a.sovereign.clone(),
        load: None,
        pgpass: PathBuf::new(),
        promoted: None,
        target: String::new(),
        restored: None,
        artifacts: a,
        lab,
    })
}

sovereign_tests::drill! {
    static DRILL: Drill<Three> = setup;
    s01_cluster_up_brings_three_nodes_up => cluster_up,
    s02_cluster_up_again_changes_nothing => cluster_up_again,
    s03_rows_reach_both_replicas_under_load => rows_under_load,
    s04_every_node_backs_up_the_cluster => backups_on_every_node,
    s05_a_primary_cut_off_from_both_replicas_acknowledges_nothing => cut_off,
    s06_power_cut_then_promote_and_the_other_replica_follows => failover,
    s07_the_old_primary_started_again_is_fenced => old_primary_fenced,
    s08_the_old_primary_rejoins_the_new_one => old_primary_rejoins,
    s09_a_followers_backup_disk_restores_to_before_the_failover => restore_from_a_follower,
}

impl Three {
    fn cluster(&self, verb: &str) -> Output {
        Command::new(&self.sovereign)
            .args(["cluster", verb, "--spec"])
            .arg(&self.file)
            .stdin(Stdio::null())
            .output()
            .expect("run sovereign cluster")
    }

    fn peer(&self) -> &TailNode {
        self.lab.peer.as_ref().expect("the second node joined")
    }
}

/// How many of the load's rows 1..=`acked` a replica has replayed; `None` while it
/// cannot say (it has not replayed the table's creation yet, or missed a round).
fn replayed(vm: &Vm, acked: usize) -> Option<usize> {
    let out = vm
        .query(&format!(
            "select count(*) from {} where n <= {acked}",
            load::TABLE
        ))
        .ok()?;
    out.lines().last()?.trim().parse().ok()
}

/// Waits until `primary` sees every one of `replicas` streaming; their states.
fn wait_streaming(primary: &Vm, replicas: &[&str]) -> Vec<String> {
    wait_for(Duration::from_secs(300), Duration::from_secs(2), || {
        let r = primary.status().replication?;
        let states: Vec<String> = replicas
            .iter()
            .map(|n| {
                let slot = protocol::replication::slot_name(n);
                r.replicas
                    .iter()
                    .find(|l| l.name == slot)
                    .map_or_else(String::new, |l| l.state.clone())
            })
            .collect();
        states
            .iter()
            .all(|s| s.starts_with("streaming"))
            .then_some(states)
    })
    .unwrap_or_else(|| {
        panic!(
            "{replicas:?} never all streamed: {:?}",
            primary.replication()
        )
    })
}

fn cluster_up(c: &mut Three) {
    let t = Instant::now();
    let out = ok(&c.cluster("up"), "cluster up");
    println!("cluster up in {:.0} s:\n{out}", t.elapsed().as_secs_f64());
    for line in [
        "+ started sql-vm",
        "+ handed sql-r1 its credentials",
        "+ handed sql-r2 its credentials",
        "+ started sql-r1",
        "+ started sql-r2",
        "✓ sql-r1 streams from sql-vm (streaming quorum)",
        "✓ sql-r2 streams from sql-vm (streaming quorum)",
        "✓ sql-r1 reads it",
        "✓ sql-r2 reads it",
        "forgejo: postgresql://forgejo:",
        "@sql-vm:5432,sql-r1:5432,sql-r2:5432/forgejo?target_session_attrs=read-write",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let password = c.vms[0].superuser_password();
    for vm in &c.vms[1..] {
        assert_eq!(vm.superuser_password(), password, "one cluster's passwords");
        assert_eq!(
            std::fs::read(vm.home.path().join("secrets/sql-ca.crt")).unwrap(),
            std::fs::read(c.vms[0].home.path().join("secrets/sql-ca.crt")).unwrap(),
            "one CA"
        );
        let r = vm.replication();
        assert_eq!((r.role, r.timeline), (Role::Replica, 1), "{r:?}");
    }
    let p = c.vms[0].replication();
    let slots: Vec<&str> = p.slots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(slots, ["sql_r1", "sql_r2"], "a slot for each replica");
}

fn cluster_up_again(c: &mut Three) {
    // Each node takes its first full backup once it is ready (a replica's from its own
    // disk, ~90 s under TCG); under the load of the next steps too, two cores cannot
    // keep the replicas streaming, so the drill waits for all three first.
    let t = Instant::now();
    for (vm, name) in c.vms.iter().zip(NAMES) {
        let first = wait_for(Duration::from_secs(600), Duration::from_secs(10), || {
            let o = vm.cli("backup list", &["--json"]);
            let catalog: protocol::backup::BackupCatalog =
                serde_json::from_slice(&o.stdout).ok()?;
            (!catalog.sets.is_empty()).then_some(catalog.sets.len())
        });
        assert!(
            first.is_some(),
            "{name} never took its first backup: {}",
            text(&vm.cli("backup list", &[]))
        );
    }
    println!(
        "every node holds its first backup after {:.0} s more",
        t.elapsed().as_secs_f64()
    );
    let out = ok(&c.cluster("up"), "cluster up, again");
    println!("{out}");
    for line in [
        "= sql-vm is up",
        "= sql-r1 has them",
        "= sql-r2 is up",
        "  sql-r2: ✓ 1 set(s)",
        "nothing to change",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert!(!out.contains("+ "), "nothing started or written:\n{out}");
    // Each node's server answers `status` through its own launcher; a replica busy
    // with its first backup may miss one round under TCG, so the table is asked again.
    let want = [
        "✓ one primary",
        "sql-vm (this host): up, primary on timeline 1, replicas: sql_r1 streaming quorum",
        "sql-r1 (this host): up, replica on timeline 1, streaming",
        "sql-r2 (this host): up, replica on timeline 1, streaming",
    ];
    let mut last = String::new();
    let whole = wait_for(Duration::from_secs(90), Duration::from_secs(5), || {
        last = text(&c.cluster("status"));
        want.iter().all(|l| last.contains(l)).then(|| last.clone())
    });
    println!("{last}");
    assert!(
        whole.is_some(),
        "cluster status never showed {want:?}:\n{last}"
    );
}

fn rows_under_load(c: &mut Three) {
    c.pgpass = load::pgpass(c.lab.dir.path(), &c.vms[0].superuser_password());
    c.lab.join_peer().expect("second node joins");
    let ns = c.peer().ns_name().to_string();
    c.vms[0]
        .query(load::CREATE_TABLE)
        .expect("the load's table");
    c.vms[0]
        .query("create table commit_cost (mode text, i int)")
        .expect("commit cost table");
    let writes = WriteLoad::start_to(&ns, &c.pgpass, CLUSTER);
    let mut lags = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        let p = c.vms[0].replication();
        lags.push(
            p.replicas
                .iter()
                .map(|l| (l.name.clone(), l.lag_bytes, l.lag_seconds))
                .collect::<Vec<_>>(),
        );
    }
    let acked = writes.acked();
    assert!(
        acked > 10,
        "the load wrote only {acked} rows: {:?}",
        writes.last_failure()
    );
    for vm in &c.vms[1..] {
        let t = Instant::now();
        let caught_up = wait_for(MAX_CATCH_UP, Duration::from_millis(500), || {
            (replayed(vm, acked) == Some(acked)).then(|| t.elapsed())
        });
        assert!(
            caught_up.is_some(),
            "{} did not catch up",
            vm.spec.display()
        );
    }
    println!(
        "steady load through the three-host url: {acked} rows in 10 s; each replica's lag (name, bytes, s) as the primary saw it every 2 s: {lags:?}"
    );
    if heavy_variant("cluster: 100 commits with quorum commit against local, under the load") {
        let n = 100;
        let timed = |mode: &str| {
            let mut sql = format!("set synchronous_commit = {mode};\n");
            for i in 0..n {
                sql.push_str(&format!(
                    "insert into commit_cost (mode, i) values ('{mode}', {i});\n"
                ));
            }
            let t = Instant::now();
            c.peer()
                .psql(&Login::conninfo(CLUSTER).passfile(&c.pgpass), &sql)
                .expect("timed commits");
            t.elapsed().as_secs_f64()
        };
        let local = timed("local");
        let quorum = timed("on");
        println!(
            "quorum commit (ANY 1 of 2): {n} commits {quorum:.2} s against {local:.2} s local ({:.2}x, {:.1} ms more per commit)",
            quorum / local,
            (quorum - local) * 1000.0 / f64::from(n)
        );
    }
    c.load = Some(writes);
}

fn backups_on_every_node(c: &mut Three) {
    let acked = c.load.take().expect("the load").stop();
    for (vm, name) in c.vms.iter().zip(NAMES) {
        let t = Instant::now();
        let out = ok(
            &vm.cli("backup now", &["--type", "incr"]),
            &format!("backup now on {name}"),
        );
        println!(
            "{name}: an incremental backup in {:.0} s: {}",
            t.elapsed().as_secs_f64(),
            out.trim()
        );
    }
    c.vms[0]
        .query("create table pitr_marks (t text)")
        .expect("the marks' table");
    let peer = c.peer();
    let write = |mark: &str| {
        peer.psql(
            &Login::conninfo(CLUSTER).passfile(&c.pgpass),
            &format!("insert into pitr_marks values ('{mark}')"),
        )
        .expect("a mark")
    };
    write("before the target");
    std::thread::sleep(Duration::from_millis(1500));
    let target = c.vms[0]
        .query("select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
        .expect("the primary's clock");
    let target = target.lines().last().unwrap_or("").trim().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    write("after the target");
    c.target = target;
    let switched = c.vms[0]
        .query("select pg_walfile_name(pg_switch_wal())")
        .expect("switch WAL");
    let segment = switched.lines().last().unwrap_or("").trim().to_string();
    for (vm, name) in c.vms.iter().zip(NAMES) {
        let archived = wait_for(Duration::from_secs(120), Duration::from_secs(2), || {
            let last = vm
                .query("select coalesce(last_archived_wal, '') from pg_stat_archiver")
                .ok()?;
            let last = last.lines().last().unwrap_or("").trim().to_string();
            (last.as_str() >= segment.as_str()).then_some(last)
        });
        assert!(
            archived.is_some(),
            "{name} archived {segment} into its own repository"
        );
        let listed = ok(&vm.cli("backup list", &[]), "backup list");
        println!("{name} holds:\n{listed}");
        assert!(
            listed.contains("restorable to any time from"),
            "{name}: {listed}"
        );
    }
    let up = ok(&c.cluster("up"), "cluster up with backups");
    for name in NAMES {
        assert!(
            up.contains(&format!("  {name}: ✓ 1 set(s)")),
            "{name} in:\n{up}"
        );
    }
    c.load = Some(WriteLoad::start_to(c.peer().ns_name(), &c.pgpass, CLUSTER));
    let _ = acked;
}

fn cut_off(c: &mut Three) {
    let acked = c.load.take().expect("the load").stop();
    for vm in &c.vms {
        load::assert_acked_rows_on(vm, acked);
    }
    // Made while the replicas stream: with them gone, even this commit would wait.
    c.vms[0]
        .query("create table notes_cut_off (t text)")
        .expect("a table for the write while cut off");
    ok(&c.vms[1].stop(), "stop B");
    ok(&c.vms[2].stop(), "stop C");
    // A commit on A now waits for a replica that is not there: no acknowledgement.
    let mut waiting = c.peer().psql_script(
        &Login::conninfo(CLUSTER).passfile(&c.pgpass),
        "insert into notes_cut_off values ('written while alone') returning 'acknowledged';\n",
    );
    drop(waiting.stdin.take());
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        waiting.try_wait().expect("psql's state").is_none(),
        "a primary cut off from both replicas acknowledged a commit"
    );
    println!("A cut off from both replicas: the commit waits (15 s, no acknowledgement)");
    let t = Instant::now();
    let out = ok(&c.cluster("up"), "cluster up with both replicas stopped");
    println!("cluster up in {:.0} s:\n{out}", t.elapsed().as_secs_f64());
    assert!(
        out.contains("= sql-vm is up")
            && out.contains("+ started sql-r1")
            && out.contains("+ started sql-r2"),
        "{out}"
    );
    let done = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        waiting.try_wait().ok().flatten()
    });
    let o = waiting.wait_with_output().expect("psql output");
    assert!(
        done.is_some_and(|s| s.success())
            && String::from_utf8_lossy(&o.stdout).contains("acknowledged"),
        "the waiting commit returns once a replica is back: {}",
        text(&o)
    );
}

fn failover(c: &mut Three) {
    let ns = c.peer().ns_name().to_string();
    let writes = WriteLoad::start_warmed(&ns, &c.pgpass, CLUSTER, 20);
    let cut = Instant::now();
    c.vms[0].power_cut();
    // The replica with the most WAL is the one to promote; promote on the other is
    // refused and names it.
    let mut attempts = Vec::new();
    let mut promoted = None;
    for i in [1, 2] {
        let o = c.vms[i].cli("promote", &["--yes"]);
        attempts.push(text(&o));
        if o.status.success() {
            promoted = Some(i);
            break;
        }
    }
    let returned = Instant::now();
    let Some(p) = promoted else {
        panic!("neither replica could be promoted without --force: {attempts:#?}")
    };
    if p == 2 {
        assert!(
            attempts[0].contains("sql-r2 has") && attempts[0].contains("WAL more than this node"),
            "B refused, naming C: {}",
            attempts[0]
        );
    }
    println!("promote: {}", attempts.join("\n---\n"));
    let first = writes.first_ack_after(returned, Duration::from_secs(120));
    println!(
        "power cut on A; {} promoted, returning {:.1} s after the cut; first write accepted {first:?} after that",
        NAMES[p],
        returned.duration_since(cut).as_secs_f64()
    );
    assert!(
        first.is_some(),
        "no write after promote: {:?}",
        writes.last_failure()
    );
    let other = 3 - p;
    let t = Instant::now();
    let states = wait_streaming(&c.vms[p], &[NAMES[other]]);
    println!(
        "{} follows {} on its own after {:.0} s: {states:?}",
        NAMES[other],
        NAMES[p],
        t.elapsed().as_secs_f64()
    );
    let r = c.vms[other].replication();
    assert_eq!((r.role, r.timeline), (Role::Replica, 2), "{r:?}");
    let before = writes.acked();
    let more = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        (writes.acked() >= before + 5).then_some(())
    });
    assert!(more.is_some(), "writes go on: {:?}", writes.last_failure());
    let acked = writes.stop();
    load::assert_acked_rows_on(&c.vms[p], acked);
    let caught_up = wait_for(MAX_CATCH_UP, Duration::from_millis(500), || {
        (replayed(&c.vms[other], acked) == Some(acked)).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the follower has every acknowledged row"
    );
    c.promoted = Some(p);
}

fn old_primary_fenced(c: &mut Three) {
    let p = c.promoted.expect("step 5 promoted a replica");
    let o = c.vms[0].start();
    let said = text(&o);
    println!("A started again while {} is the primary:\n{said}", NAMES[p]);
    assert!(
        !o.status.success(),
        "A must not come up as a primary:\n{said}"
    );
    assert!(
        said.contains("refusing to start as a primary") && said.contains("promoted to timeline 2"),
        "{said}"
    );
    assert!(
        c.vms[0].home.path().join("postgres.img").exists(),
        "A's disk is kept"
    );
    let status = text(&c.cluster("status"));
    assert!(status.contains("✓ one primary"), "{status}");
    c.vms[0].stop();
}

fn old_primary_rejoins(c: &mut Three) {
    let p = c.promoted.expect("step 5 promoted a replica");
    let out = ok(&c.vms[0].cli("rejoin", &["--yes"]), "rejoin A");
    assert!(out.contains("up: VM sql"), "{out}");
    let others: Vec<&str> = (0..3).filter(|i| *i != p).map(|i| NAMES[i]).collect();
    let states = wait_streaming(&c.vms[p], &others);
    println!(
        "{} is the primary, {others:?} stream from it: {states:?}",
        NAMES[p]
    );
    let r = c.vms[0].replication();
    assert_eq!((r.role, r.timeline), (Role::Replica, 2), "{r:?}");
    let status = ok(&c.cluster("status"), "cluster status after the rejoin");
    println!("{status}");
}

fn restore_from_a_follower(c: &mut Three) {
    let p = c.promoted.expect("step 6 promoted a replica");
    let follower = 3 - p;
    ok(&c.vms[follower].stop(), "stop the follower");
    let disk = c.lab.dir.path().join("follower-backup.img");
    let copied = Command::new("cp")
        .args(["--sparse=always"])
        .arg(c.vms[follower].home.path().join("backup.img"))
        .arg(&disk)
        .output()
        .expect("cp");
    assert!(copied.status.success(), "{}", text(&copied));
    let vm = Vm::new(
        &c.artifacts,
        &VmOptions {
            hostname: "sql-pitr",
            apps: vec!["forgejo".into()],
            extra_toml: format!("[backup_disk]\npath = {:?}\n", disk.display().to_string()),
            ..c.lab.vm_options()
        },
    );
    let t = Instant::now();
    let out = ok(
        &vm.cli("restore", &["--new-disk", "--to", &c.target, "--yes"]),
        "restore --new-disk from the follower's backup disk",
    );
    println!(
        "restored sql-pitr from {}'s backup disk to {} in {:.0} s:\n{out}",
        NAMES[follower],
        c.target,
        t.elapsed().as_secs_f64()
    );
    let marks = vm
        .query("select string_agg(t, ',' order by t) from pitr_marks")
        .expect("the marks");
    assert_eq!(
        marks.lines().last().unwrap_or("").trim(),
        "before the target",
        "exactly the rows before {}: {marks}",
        c.target
    );
    c.restored = Some(vm);
}
