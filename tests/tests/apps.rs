//! App databases as an app sees them, over the tailnet from the second node:
//! - Gitea (Forgejo's upstream, a real app not written here) runs on the second node
//!   with the connection `sovereign db url forgejo --format env --verify-full CA`
//!   printed, completes its own migrations against `sql-vm` over TLS, and creates a
//!   user with its own admin command; the rows are in the forgejo database and nowhere
//!   else.
//! - `db add` on a running VM makes a role and database at once; its connection limit
//!   holds (the session past it is refused by the server); `db password --rotate`
//!   makes the old password fail and the new `db url` work.
//!
//! One lab (headscale, the second node) and one VM serve the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::artifacts::require_or_skip;
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::Vm;
use sovereign_tests::vm_test;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output};
use std::time::Duration;

/// The unprivileged user Gitea runs as (it refuses root).
const NOBODY: &str = "65534";

/// psql on the second node with a connection string, statements on stdin.
fn psql(peer: &TailNode, conninfo: &str, sql: &str) -> Output {
    let mut child = psql_child(peer, conninfo, sql);
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// psql started with `sql` written to its stdin, left running.
fn psql_child(peer: &TailNode, conninfo: &str, sql: &str) -> Child {
    peer.psql_script(conninfo, &[], sql)
}

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

#[test]
#[ignore = "VM test: needs root, QEMU, the artifact set and Gitea; scripts/test.sh runs it"]
fn gitea_migrates_over_the_tailnet_and_app_roles_keep_their_limits() {
    let Some(a) = vm_test("apps") else { return };
    let gitea_bin = a.tool("gitea");
    let Some(gitea_bin) = require_or_skip(
        "apps",
        gitea_bin.exists().then_some(gitea_bin).ok_or_else(|| {
            "Gitea is not built: scripts/build-go-tools.sh x86_64 --gitea".to_string()
        }),
    ) else {
        return;
    };
    let mut lab = Lab::start(&a.tools, "apps").expect("lab");
    let mut opts = lab.vm_options();
    opts.apps = vec!["forgejo".into(), "vaultwarden".into()];
    let vm = Vm::new(&a, &opts);
    vm.start_ok();
    let peer = lab.join_peer().expect("second node joins");

    // Gitea, with the connection settings `db url` printed, over TLS verified by the CA.
    let work = tempfile::Builder::new()
        .prefix("sov-gitea-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The cache may sit under root's home, which the unprivileged user cannot enter.
    let gitea_bin = {
        let copy = work.path().join("gitea");
        std::fs::copy(&gitea_bin, &copy).expect("copy gitea");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    };
    let ca = vm.cli("db ca", &[]);
    assert!(ca.status.success(), "db ca: {}", text(&ca));
    let ca_file = work.path().join("sovereign-ca.crt");
    std::fs::write(&ca_file, &ca.stdout).unwrap();
    let env = db_url(
        &vm,
        "forgejo",
        &[
            "--format",
            "env",
            "--verify-full",
            ca_file.to_str().unwrap(),
        ],
    );
    assert!(env.contains("PGHOST=sql-vm\n"), "{env}");
    let env_file = work.path().join("db.env");
    std::fs::write(&env_file, format!("{env}\n")).unwrap();
    write_app_ini(peer, work.path(), &env_file);
    let reachable = wait_for(Duration::from_secs(90), Duration::from_secs(3), || {
        let uri = db_url(&vm, "forgejo", &[]);
        psql(peer, &uri, "select 1;\n")
            .status
            .success()
            .then_some(())
    });
    assert!(
        reachable.is_some(),
        "forgejo's role reaches sql-vm from the peer"
    );

    let migrated = gitea(peer, &gitea_bin, work.path(), &env_file, "migrate");
    assert!(
        migrated.status.success(),
        "gitea migrate: {}",
        text(&migrated)
    );
    let created = gitea(
        peer,
        &gitea_bin,
        work.path(),
        &env_file,
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
    let uri = db_url(&vm, "forgejo", &[]);
    let user = psql(peer, &uri, "select lower_name, is_admin from \"user\";\n");
    assert_eq!(
        (
            user.status.success(),
            String::from_utf8_lossy(&user.stdout).trim()
        ),
        (true, "sovereign-admin|t"),
        "{}",
        text(&user)
    );
    let tables = psql(
        peer,
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

    // verify-full also by the tailnet's full name: learned at `up`, it is in the
    // certificate the running server was handed then.
    let status = vm.status();
    let fqdn = status["guest"]["tailnet"]["name"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string();
    assert!(fqdn.starts_with("sql-vm."), "a MagicDNS name: {status:#}");
    let tls_uri = db_url(
        &vm,
        "forgejo",
        &["--verify-full", ca_file.to_str().unwrap()],
    );
    let by_fqdn = tls_uri.replace("@sql-vm:", &format!("@{fqdn}:"));
    assert_ne!(by_fqdn, tls_uri);
    let ssl = wait_for(Duration::from_secs(30), Duration::from_secs(2), || {
        let o = psql(
            peer,
            &by_fqdn,
            "select ssl from pg_stat_ssl where pid = pg_backend_pid();\n",
        );
        (String::from_utf8_lossy(&o.stdout).trim() == "t").then_some(())
    });
    assert!(
        ssl.is_some(),
        "verify-full with {fqdn}: {}",
        text(&psql(peer, &by_fqdn, "select 1;\n"))
    );

    // db add on the running VM, with a limit of 2 sessions.
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
    let tiny = db_url(&vm, "tiny", &[]);
    let mut held: Vec<Child> = (0..2)
        .map(|_| psql_child(peer, &tiny, "select pg_sleep(60);\n"))
        .collect();
    let both = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        vm.query("select count(*) from pg_stat_activity where usename = 'tiny'")
            .ok()
            .filter(|n| n.trim() == "2")
    });
    assert!(both.is_some(), "two sessions of tiny are open");
    let third = psql(peer, &tiny, "select 1;\n");
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
    let gone = wait_for(Duration::from_secs(30), Duration::from_secs(1), || {
        vm.query("select count(*) from pg_stat_activity where usename = 'tiny'")
            .ok()
            .filter(|n| n.trim() == "0")
    });
    assert!(gone.is_some(), "tiny's sessions ended");

    // Rotation: the old password stops working, the new `db url` works.
    let rotated = vm.cli("db password", &["tiny", "--rotate"]);
    assert!(
        rotated.status.success(),
        "db password --rotate: {}",
        text(&rotated)
    );
    let old = psql(peer, &tiny, "select 1;\n");
    assert!(
        !old.status.success() && text(&old).contains("password authentication failed"),
        "the old password is refused: {}",
        text(&old)
    );
    let new = db_url(&vm, "tiny", &[]);
    assert_ne!(new, tiny);
    let works = psql(peer, &new, "select current_user;\n");
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
