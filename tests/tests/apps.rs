//! App databases as an app sees them, over the tailnet from the second node:
//! - Gitea (Forgejo's upstream, a real app not written here) runs on the second node
//!   with the connection `sovereign db url forgejo --format env --verify-full CA`
//!   printed, completes its own migrations against `sql-vm` over TLS, and creates a
//!   user with its own admin command; the rows are in the forgejo database and nowhere
//!   else.
//! - `db add` on a running VM makes a role and database at once; its connection limit
//!   holds (the session past it is refused by the server); `db password --rotate`
//!   makes the old password fail and the new `db url` work.
//! - Debian's Prometheus on the second node scrapes PID 1's page by the VM's tailnet
//!   name: the series come back with sane values (the app's database, its connections,
//!   the disk, PID 1's memory, the forwarder, the supervisor's alerts); through
//!   gvproxy the same port answers nothing.
//!
//! A drill in steps (see `drill.rs`): one lab (headscale, the second node) and one VM
//! serve the whole file, one test per step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::artifacts::require_or_skip;
use sovereign_tests::drill::Fixture;
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for};
use sovereign_tests::prometheus::Prometheus;
use sovereign_tests::tailnode::{Login, TailNode};
use sovereign_tests::vm::Vm;
use sovereign_tests::vm_test;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

/// The unprivileged user Gitea runs as (it refuses root).
const NOBODY: &str = "65534";

/// `sovereign db url APP ARGS...`, trimmed; fails the test when it fails.
fn db_url(vm: &Vm, app: &str, args: &[&str]) -> String {
    let mut all = vec![app];
    all.extend_from_slice(args);
    let o = vm.cli("db url", &all);
    assert!(o.status.success(), "db url {app}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs `gitea ARGS -c app.ini` in the peer's namespace as an unprivileged user, with
/// the connection settings `db url --format env` printed in its environment (lib/pq
/// reads the CA file from PGSSLROOTCERT).
fn gitea(peer: &TailNode, binary: &Path, work: &Path, env_file: &Path, args: &str) -> Output {
    let script = format!(
        "set -a; . {env}; set +a; cd {work}; exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups \
         env HOME={work} GITEA_WORK_DIR={work} {bin} {args} -c {work}/app.ini",
        env = env_file.display(),
        work = work.display(),
        bin = binary.display(),
    );
    run(peer.command("sh").args(["-c", &script]))
}

/// Gitea's configuration: only the database (from `db url`'s variables), the install
/// lock and a secret, no web assets; written by the shell from the env file.
fn write_app_ini(peer: &TailNode, work: &Path, env_file: &Path) {
    let script = format!(
        "set -a; . {env}; set +a; cat > {work}/app.ini <<EOF\n\
         APP_NAME = sovereign-apps-test\nRUN_MODE = prod\nWORK_PATH = {work}\n\
         [database]\nDB_TYPE = postgres\nHOST = $PGHOST:$PGPORT\nNAME = $PGDATABASE\nUSER = $PGUSER\n\
         PASSWD = \\`$PGPASSWORD\\`\nSSL_MODE = $PGSSLMODE\n\
         [security]\nINSTALL_LOCK = true\nSECRET_KEY = sovereign-apps-test-secret-key\n\
         [server]\nOFFLINE_MODE = true\n[log]\nMODE = console\nLEVEL = Warn\n\
         EOF\nchown -R {NOBODY}:{NOBODY} {work}",
        env = env_file.display(),
        work = work.display(),
    );
    let o = run(peer.command("sh").args(["-c", &script]));
    assert!(o.status.success(), "writing app.ini: {}", text(&o));
}

/// The drill's fixture. Fields drop in order: the VM before its lab.
struct Apps {
    vm: Vm,
    /// Gitea's work directory (its binary, app.ini, the CA and `db url`'s variables).
    work: tempfile::TempDir,
    gitea: PathBuf,
    ca_file: PathBuf,
    env_file: PathBuf,
    /// `db url tiny` once the role exists.
    tiny: Option<String>,
    lab: Lab,
}

impl Fixture for Apps {
    fn on_failure(&self) {
        self.vm.print_failure_evidence();
    }
}

impl Apps {
    fn peer(&self) -> &TailNode {
        self.lab.peer.as_ref().expect("the second node joined")
    }

    /// psql on the second node as `db url` (or any connection string) says; the output
    /// whether it worked or not.
    fn psql(&self, conninfo: &str, sql: &str) -> Output {
        self.peer()
            .psql_script(&Login::conninfo(conninfo), sql)
            .wait_with_output()
            .unwrap()
    }

    /// psql started with `sql` on its stdin, left running.
    fn psql_held(&self, conninfo: &str, sql: &str) -> Child {
        self.peer().psql_script(&Login::conninfo(conninfo), sql)
    }
}

sovereign_tests::drill! {
    static DRILL: Drill<Apps> = setup;
    s01_gitea_migrates_over_tls_into_its_own_database => gitea_migrates_into_its_own_database,
    s02_verify_full_also_by_the_tailnet_full_name => verify_full_by_the_tailnet_full_name,
    s03_db_add_on_the_running_vm_holds_its_connection_limit => db_add_holds_its_connection_limit,
    s04_prometheus_on_the_second_node_scrapes_sql_vm_by_name => prometheus_scrapes_by_name,
    s05_db_password_rotate_retires_the_old_password => rotation_retires_the_old_password,
}

fn setup() -> Option<Apps> {
    let a = vm_test("apps")?;
    let gitea_bin = a.tool("gitea");
    let gitea_bin = require_or_skip(
        "apps",
        gitea_bin.exists().then_some(gitea_bin).ok_or_else(|| {
            "Gitea is not built: scripts/build-go-tools.sh x86_64 --gitea".to_string()
        }),
    )?;
    let lab = Lab::start(&a.tools, "apps").expect("lab");
    let mut opts = lab.vm_options();
    opts.apps = vec!["forgejo".into(), "vaultwarden".into()];
    // The Prometheus page on, and the supervisor's check every 2 s, so the page carries
    // its (empty) alert list soon after the start.
    opts.extra_toml
        .push_str("[metrics]\nenabled = true\n[alerts]\ncheck_secs = 2\n");
    let vm = Vm::new(&a, &opts);
    let work = tempfile::Builder::new()
        .prefix("sov-gitea-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The cache may sit under root's home, which the unprivileged user cannot enter.
    let gitea = work.path().join("gitea");
    std::fs::copy(&gitea_bin, &gitea).expect("copy gitea");
    std::fs::set_permissions(&gitea, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Apps {
        vm,
        ca_file: work.path().join("sovereign-ca.crt"),
        env_file: work.path().join("db.env"),
        gitea,
        work,
        tiny: None,
        lab,
    })
}

/// Gitea, with the connection settings `db url` printed, over TLS verified by the CA:
/// its migrations and its admin command work, and its tables are in forgejo's database
/// and nowhere else.
fn gitea_migrates_into_its_own_database(f: &mut Apps) {
    f.vm.start_ok();
    f.lab.join_peer().expect("second node joins");
    let vm = &f.vm;
    let ca = vm.cli("db ca", &[]);
    assert!(ca.status.success(), "db ca: {}", text(&ca));
    std::fs::write(&f.ca_file, &ca.stdout).unwrap();
    let env = db_url(
        vm,
        "forgejo",
        &[
            "--format",
            "env",
            "--verify-full",
            f.ca_file.to_str().unwrap(),
        ],
    );
    assert!(env.contains("PGHOST=sql-vm\n"), "{env}");
    std::fs::write(&f.env_file, format!("{env}\n")).unwrap();
    write_app_ini(f.peer(), f.work.path(), &f.env_file);
    let reachable = wait_for(Duration::from_secs(90), Duration::from_secs(3), || {
        let uri = db_url(vm, "forgejo", &[]);
        f.psql(&uri, "select 1;\n").status.success().then_some(())
    });
    assert!(
        reachable.is_some(),
        "forgejo's role reaches sql-vm from the peer"
    );

    let gitea = |args: &str| gitea(f.peer(), &f.gitea, f.work.path(), &f.env_file, args);
    let migrated = gitea("migrate");
    assert!(
        migrated.status.success(),
        "gitea migrate: {}",
        text(&migrated)
    );
    let created = gitea(
        "admin user create --username sovereign-admin --password Sovereign-test-pw-1 \
         --email admin@sql-vm.invalid --admin --must-change-password=false",
    );
    assert!(
        created.status.success(),
        "gitea admin user create: {}",
        text(&created)
    );

    // The user is in forgejo's database, read by the app's own role over the tailnet;
    // Gitea's tables exist nowhere else.
    let uri = db_url(vm, "forgejo", &[]);
    let user = f.psql(&uri, "select lower_name, is_admin from \"user\";\n");
    assert_eq!(
        (
            user.status.success(),
            String::from_utf8_lossy(&user.stdout).trim()
        ),
        (true, "sovereign-admin|t"),
        "{}",
        text(&user)
    );
    let tables = f.psql(
        &uri,
        "select count(*) from pg_tables where schemaname = 'public' and tableowner = 'forgejo';\n",
    );
    let count: u32 = String::from_utf8_lossy(&tables.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(count > 50, "Gitea's migrations made its tables: {count}");
    for db in ["vaultwarden", "postgres"] {
        let elsewhere = vm
            .query(&format!(
                "\\c {db}\nselect count(*) from pg_tables where tablename in ('user', 'repository', 'version');\n"
            ))
            .expect("query");
        // psql first says it connected; the count is the last line.
        assert_eq!(
            elsewhere.trim().lines().last(),
            Some("0"),
            "no Gitea table in {db}: {elsewhere}"
        );
    }
}

/// verify-full also by the tailnet's full name: learned at `up`, it is in the
/// certificate the running server was handed then.
fn verify_full_by_the_tailnet_full_name(f: &mut Apps) {
    let tailnet =
        f.vm.guest_status()
            .tailnet
            .expect("the guest's tailnet identity");
    let fqdn = tailnet.name.trim_end_matches('.').to_string();
    assert!(fqdn.starts_with("sql-vm."), "a MagicDNS name: {tailnet:?}");
    let tls_uri = db_url(
        &f.vm,
        "forgejo",
        &["--verify-full", f.ca_file.to_str().unwrap()],
    );
    let by_fqdn = tls_uri.replace("@sql-vm:", &format!("@{fqdn}:"));
    assert_ne!(by_fqdn, tls_uri);
    let ssl = wait_for(Duration::from_secs(30), Duration::from_secs(2), || {
        let o = f.psql(
            &by_fqdn,
            "select ssl from pg_stat_ssl where pid = pg_backend_pid();\n",
        );
        (String::from_utf8_lossy(&o.stdout).trim() == "t").then_some(())
    });
    assert!(
        ssl.is_some(),
        "verify-full with {fqdn}: {}",
        text(&f.psql(&by_fqdn, "select 1;\n"))
    );
}

/// `db add` on the running VM, with a limit of 2 sessions: the third is refused by the
/// server.
fn db_add_holds_its_connection_limit(f: &mut Apps) {
    let vm = &f.vm;
    let added = vm.cli("db add", &["tiny", "--connection-limit", "2"]);
    assert!(added.status.success(), "db add: {}", text(&added));
    assert!(
        text(&added).contains("made on the running VM"),
        "{}",
        text(&added)
    );
    let again = vm.cli("db add", &["tiny"]);
    assert!(
        !again.status.success() && text(&again).contains("already in"),
        "{}",
        text(&again)
    );
    let bad = vm.cli("db add", &["Bad-Name"]);
    assert!(
        !bad.status.success() && text(&bad).contains("apps.name"),
        "an invalid name is refused naming the field: {}",
        text(&bad)
    );
    let tiny = db_url(vm, "tiny", &[]);
    let mut held: Vec<Child> = (0..2)
        .map(|_| f.psql_held(&tiny, "select pg_sleep(60);\n"))
        .collect();
    let sessions = |n: &str| {
        wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
            vm.query("select count(*) from pg_stat_activity where usename = 'tiny'")
                .ok()
                .filter(|c| c.trim() == n)
        })
    };
    assert!(sessions("2").is_some(), "two sessions of tiny are open");
    let third = f.psql(&tiny, "select 1;\n");
    assert!(
        !third.status.success() && text(&third).contains("too many connections for role \"tiny\""),
        "the third session is refused by the role's limit: {}",
        text(&third)
    );
    for c in &mut held {
        c.kill().ok();
        c.wait().ok();
    }
    // A backend in pg_sleep notices its client is gone only when the sleep ends.
    vm.query("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'tiny'")
        .expect("end tiny's sessions");
    assert!(sessions("0").is_some(), "tiny's sessions ended");
    f.tiny = Some(tiny);
}

/// A PromQL expression, what its value must satisfy, and that in words.
type Check<'a> = (&'a str, &'a dyn Fn(f64) -> bool, &'a str);

/// Prometheus on the second node scrapes `sql-vm:9187` by name: the series hold what
/// the steps before made (Gitea's tables, tiny's role), within sane bounds; the same
/// port through gvproxy, off the tailnet, answers nothing.
fn prometheus_scrapes_by_name(f: &mut Apps) {
    let prom = Prometheus::start(f.peer(), &["sql-vm:9187"]).expect("prometheus");
    let up = prom.wait_value("up{job=\"sovereign\"}", Duration::from_secs(90));
    assert_eq!(
        up,
        Some(1.0),
        "Prometheus scraped sql-vm:9187 by name: {:?}\n{}",
        prom.query("up"),
        prom.log()
    );
    let value = |expr: &str| -> f64 {
        prom.wait_value(expr, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no single value for {expr}: {:?}", prom.query(expr)))
    };
    let gib = f64::from(1u32 << 30);
    let checks: &[Check] = &[
        ("pg_up", &|v| v == 1.0, "1"),
        ("pg_replication_is_replica", &|v| v == 0.0, "0 (a primary)"),
        ("pg_settings_max_connections", &|v| (20.0..=10_000.0).contains(&v), "20..10000"),
        ("pg_database_size_bytes{datname=\"forgejo\"}", &|v| v > 5e6, "over 5 MB (Gitea's tables)"),
        ("sovereign_pg_owner_connection_limit{datname=\"tiny\"}", &|v| v == 2.0, "2 (db add's limit)"),
        ("sovereign_pg_dead_tuples{datname=\"tiny\"}", &|v| v >= 0.0, "0 or more (a database db add made)"),
        ("pg_stat_database_xact_commit_total{datname=\"forgejo\"}", &|v| v > 10.0, "over 10"),
        ("pg_stat_database_numbackends{datname=\"postgres\"}", &|v| (0.0..1000.0).contains(&v), "0..1000"),
        ("sovereign_pg_dead_tuples{datname=\"forgejo\"}", &|v| v >= 0.0, "0 or more"),
        ("sovereign_disk_size_bytes{disk=\"data\"}", &|v| (1.0 * gib..=64.0 * gib).contains(&v), "1..64 GiB"),
        ("sovereign_disk_available_bytes{disk=\"data\"} < sovereign_disk_size_bytes{disk=\"data\"}", &|v| v > 0.0, "less than the size"),
        ("process_resident_memory_bytes", &|v| (1e6..64e6).contains(&v), "1..64 MB (PID 1)"),
        ("sovereign_service_up{service=\"postgres\"}", &|v| v == 1.0, "1"),
        ("sovereign_service_up{service=\"tailscaled\"}", &|v| v == 1.0, "1"),
        ("sovereign_forwarder_connected", &|v| v == 1.0, "1"),
        ("sovereign_forwarder_frames_total{direction=\"in\"}", &|v| v > 100.0, "over 100"),
        ("sovereign_guest_uptime_seconds", &|v| v > 10.0, "over 10 s"),
        ("sovereign_alerts_active", &|v| v == 0.0, "0 (the supervisor told it: none)"),
    ];
    for (expr, sane, expected) in checks {
        let v = value(expr);
        assert!(sane(v), "{expr} = {v}, expected {expected}");
        println!("{expr} = {v}");
    }
    // A counter moves with the app's work.
    let before = value("pg_stat_database_xact_commit_total{datname=\"forgejo\"}");
    let tiny = f.tiny.clone().expect("tiny's url from the step before");
    let wrote = f.psql(&tiny, "select 1;\n");
    assert!(wrote.status.success(), "{}", text(&wrote));
    let forgejo = db_url(&f.vm, "forgejo", &[]);
    for _ in 0..5 {
        let o = f.psql(&forgejo, "select count(*) from pg_tables;\n");
        assert!(o.status.success(), "{}", text(&o));
    }
    let moved = wait_for(Duration::from_secs(30), Duration::from_secs(1), || {
        let now = value("pg_stat_database_xact_commit_total{datname=\"forgejo\"}");
        (now >= before + 5.0).then_some(now)
    });
    assert!(
        moved.is_some(),
        "forgejo's commits stayed at {before} after five sessions"
    );

    // Off the tailnet: the port through gvproxy (the VM's other network) answers nothing.
    let port =
        f.vm.expose_through_gvproxy(9187)
            .expect("expose 9187 through gvproxy");
    let off_tailnet = run(Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics")));
    assert!(
        !off_tailnet.status.success() && !text(&off_tailnet).contains("pg_up"),
        "the page must not answer through gvproxy: {}",
        text(&off_tailnet)
    );
    println!(
        "through gvproxy, off the tailnet: {}",
        text(&off_tailnet).trim()
    );
}

/// Rotation: the old password stops working, the new `db url` works, nothing pending is
/// left in the secrets.
fn rotation_retires_the_old_password(f: &mut Apps) {
    let vm = &f.vm;
    let tiny = f.tiny.clone().expect("tiny's url from the step before");
    let rotated = vm.cli("db password", &["tiny", "--rotate"]);
    assert!(
        rotated.status.success(),
        "db password --rotate: {}",
        text(&rotated)
    );
    let old = f.psql(&tiny, "select 1;\n");
    assert!(
        !old.status.success() && text(&old).contains("password authentication failed"),
        "the old password is refused: {}",
        text(&old)
    );
    let new = db_url(vm, "tiny", &[]);
    assert_ne!(new, tiny);
    let works = f.psql(&new, "select current_user;\n");
    assert_eq!(
        String::from_utf8_lossy(&works.stdout).trim(),
        "tiny",
        "{}",
        text(&works)
    );
    let secrets = vm.home.path().join("secrets");
    let leftovers: Vec<_> = std::fs::read_dir(&secrets)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".new"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no pending password left: {leftovers:?}"
    );
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}
