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
//! - `update` to an image set whose postgres cannot start boots the previous set again
//!   by itself, says which stage failed and why, and every row is there; a set with
//!   another PostgreSQL major is refused before anything stops; a good set boots and
//!   `status` shows its versions (from the guest's own root image); `update
//!   --rollback` goes back to the kept set.
//!
//! A drill in steps (see `drill.rs`): one lab (headscale, the second node) and one VM
//! serve the whole file, one test per step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use protocol::status::Phase;
use sovereign_tests::artifacts::require_or_skip;
use sovereign_tests::artifacts::Artifacts;
use sovereign_tests::drill::Fixture;
use sovereign_tests::image_set::{Changes, ImageSet};
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
    /// The artifact set, whence the update steps derive their image sets.
    artifacts: Artifacts,
    /// The release build of the image the VM first booted.
    first_build: Option<String>,
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
    s06_an_update_whose_postgres_fails_goes_back_with_every_row => a_failing_update_goes_back,
    s07_another_major_is_refused_and_a_good_set_shows_its_versions => a_good_update_shows_its_versions,
    s08_update_rollback_boots_the_kept_set_again => rollback_boots_the_kept_set,
    s09_an_update_cut_by_a_power_cut_is_undone_by_the_next_start => a_cut_update_is_undone,
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
    // A kernel of its own: `update` replaces the VM's set in place.
    opts.own_kernel = true;
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
        artifacts: a,
        first_build: None,
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
}

/// What the update steps must find unchanged: Gitea's user and tables, and the marker
/// rows, in forgejo's database, as one line.
fn rows(vm: &Vm) -> String {
    let out = vm
        .query(
            "\\c forgejo\nselect (select string_agg(lower_name, ',') from \"user\") || '|' || \
             (select count(*) from pg_tables where tableowner = 'forgejo') || '|' || \
             (select count(*) || ':' || sum(id) from update_marker);\n",
        )
        .unwrap_or_else(|e| panic!("reading the rows: {e}"));
    out.trim().lines().last().unwrap_or_default().to_string()
}

/// `sovereign update ARGS`: its exit code and output.
fn update(vm: &Vm, args: &[&str]) -> (Option<i32>, String) {
    let o = vm.cli("update", args);
    let out = text(&o);
    println!("update {}:\n{out}", args.join(" "));
    (o.status.code(), out)
}

/// Gitea's role reaches sql-vm by name from the second node and reads its user.
fn gitea_user_over_the_tailnet(f: &Apps) -> bool {
    let uri = db_url(&f.vm, "forgejo", &[]);
    wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
        let o = f.psql(&uri, "select lower_name from \"user\";\n");
        (String::from_utf8_lossy(&o.stdout).trim() == "sovereign-admin").then_some(())
    })
    .is_some()
}

/// An image set whose root image has no postgres server: `update` boots it, sees the
/// postgres stage fail, switches the files back and boots the set it had, by itself;
/// every row is there and the app reaches it again.
fn a_failing_update_goes_back(f: &mut Apps) {
    let vm = &f.vm;
    vm.query(
        "\\c forgejo\ncreate table update_marker as select g as id from generate_series(1, 10000) g;\n",
    )
    .expect("marker rows");
    let before = rows(vm);
    assert!(
        before.starts_with("sovereign-admin|") && before.ends_with("|10000:50005000"),
        "{before}"
    );
    let first = vm.guest_status().image;
    assert!(
        first.contains_key("postgres")
            && first.contains_key("tailscale")
            && first.contains_key("init"),
        "the guest reports its root image's release file: {first:?}"
    );
    f.first_build = first.get("build").cloned();

    let broken = ImageSet::derived(
        &f.artifacts,
        &Changes {
            build: "update-drill-broken",
            remove: &["/usr/lib/postgresql/17/bin/postgres"],
            ..Changes::default()
        },
    );
    let (code, out) = update(vm, &["--images", broken.path()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("(build update-drill-broken")
            && out.contains(") failed at postgres:")
            && out.contains("no PostgreSQL server"),
        "the failed stage and its reason are said: {out}"
    );
    assert!(out.contains("runs set before-update (build "), "{out}");
    let status = vm.status();
    assert_eq!(status.phase, Phase::Up, "{status:?}");
    assert_eq!(status.images, None, "no set was installed");
    assert_eq!(vm.guest_status().image, first, "the set it had boots again");
    assert_eq!(rows(vm), before);
    for leftover in [
        "root.img.next",
        "root.img.previous",
        "bzImage.next",
        "bzImage.previous",
    ] {
        assert!(
            !vm.home.path().join(leftover).exists(),
            "{leftover} is left"
        );
    }
    assert!(
        gitea_user_over_the_tailnet(f),
        "Gitea's role reads its user after the rollback"
    );
}

/// A set that says PostgreSQL 18 is refused while the VM keeps running; a good set
/// (another build of the same image) boots, and `status` shows its versions as the
/// guest reads them from its root image, with the replaced set kept.
fn a_good_update_shows_its_versions(f: &mut Apps) {
    let vm = &f.vm;
    let before = rows(vm);
    let uptime = vm.guest_status().uptime_ms;
    let major = ImageSet::derived(
        &f.artifacts,
        &Changes {
            build: "update-drill-pg18",
            manifest_postgres: Some("18.1-1"),
            ..Changes::default()
        },
    );
    let (code, out) = update(vm, &["--images", major.path()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("carries PostgreSQL 18")
            && out.contains("runs PostgreSQL 17")
            && out.contains("nothing was changed"),
        "{out}"
    );
    assert!(vm.guest_status().uptime_ms > uptime, "the VM kept running");
    drop(major);

    let newer = ImageSet::derived(
        &f.artifacts,
        &Changes {
            build: "update-drill-2",
            ..Changes::default()
        },
    );
    let (code, out) = update(vm, &["--images", newer.path()]);
    assert_eq!(code, Some(0), "{out}");
    let image = vm.guest_status().image;
    assert_eq!(
        image.get("build").map(String::as_str),
        Some("update-drill-2"),
        "{image:?}"
    );
    assert_eq!(image.get("postgres"), newer.versions.get("postgres"));
    let sets = vm.status().images.expect("the installed sets");
    let current = sets.current.expect("the current set");
    assert_eq!(current.versions, newer.versions);
    assert_eq!(
        sets.previous.map(|p| p.id).as_deref(),
        Some("before-update")
    );
    let shown = text(&vm.cli("status", &[]));
    assert!(
        shown.contains(&format!(
            "image set: set {} (build update-drill-2 · postgres ",
            current.id
        )) && shown.contains("kept for `update --rollback`: set before-update")
            && shown.contains("image:    build update-drill-2"),
        "{shown}"
    );
    assert_eq!(rows(vm), before);
    assert!(
        gitea_user_over_the_tailnet(f),
        "Gitea's role reads its user on the new set"
    );
}

/// `update --rollback` boots the kept set again and keeps the one it replaces.
fn rollback_boots_the_kept_set(f: &mut Apps) {
    let vm = &f.vm;
    let before = rows(vm);
    let (code, out) = update(vm, &["--rollback"]);
    assert_eq!(code, Some(0), "{out}");
    let image = vm.guest_status().image;
    assert_eq!(image.get("build"), f.first_build.as_ref(), "{image:?}");
    let sets = vm.status().images.expect("the installed sets");
    assert_eq!(sets.current.map(|c| c.id).as_deref(), Some("before-update"));
    let kept = sets.previous.expect("the set rolled back from is kept");
    assert_eq!(
        kept.versions.get("build").map(String::as_str),
        Some("update-drill-2")
    );
    assert_eq!(rows(vm), before);
}

/// A power cut while `update` boots the new set (the command dies with the phone): the
/// next `start` puts the files back, says so, and boots the set that was proven.
fn a_cut_update_is_undone(f: &mut Apps) {
    let vm = &f.vm;
    let before = rows(vm);
    let image = vm.guest_status().image;
    let sets = vm.status().images;
    let cut = ImageSet::derived(
        &f.artifacts,
        &Changes {
            build: "update-drill-cut",
            ..Changes::default()
        },
    );
    let mut update = vm
        .command("update", &["--images", cut.path()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start update");
    let journal = vm.run_dir().join("update-journal.json");
    let booting = wait_for(Duration::from_secs(120), Duration::from_millis(200), || {
        let switched = std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"switched\""));
        (switched && vm.pid_of("qemu-system").is_some()).then_some(())
    });
    assert!(booting.is_some(), "the update never switched and booted");
    update.kill().expect("kill update");
    update.wait().ok();
    vm.power_cut();
    assert!(
        vm.home.path().join("root.img.previous").exists(),
        "cut mid-way"
    );

    let out = vm.start_ok();
    println!(
        "{}",
        out.lines()
            .find(|l| l.contains("was interrupted"))
            .unwrap_or("")
    );
    assert!(
        out.contains("an update to set ")
            && out.contains("(build update-drill-cut")
            && out.contains("before the new set was proven: its files were put back"),
        "{out}"
    );
    assert_eq!(vm.guest_status().image, image, "the proven set boots");
    let after = vm.status().images.expect("the installed sets");
    assert_eq!(
        after.current,
        sets.and_then(|s| s.current),
        "the current set is as it was"
    );
    assert_eq!(
        after.previous, None,
        "the spare set was dropped when the new one was staged"
    );
    assert!(!journal.exists());
    assert_eq!(rows(vm), before);
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}
