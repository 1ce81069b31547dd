//! Backups on real components: pgBackRest in the guest with its repository on the
//! backup disk, PostgreSQL archiving WAL to it, rows written from a second tailnet node
//! by name, and `sovereign restore` to a point in time taken from the database's own
//! clock. One VM and one lab for the whole drill, in order:
//!
//! 1. the first full backup starts by itself after `ready`, and status shows it; a
//!    full backup killed in the middle never shows as a set, status says it failed,
//!    and the next backup works;
//! 2. rows 1–20, `backup now --type diff`, rows 21–40, time T, rows 41–60, a table
//!    dropped; once the drop is archived, `restore --to T` gives exactly rows 1–40 and
//!    the dropped table back;
//! 3. a time outside the window and a time PostgreSQL cannot read are refused, naming
//!    why, and the database keeps serving;
//! 4. `backup list` shows both sets and the window, `backup verify` reads the
//!    repository back, and the restored server takes writes;
//! 5. with the VM stopped and `postgres.img` deleted, `restore --new-disk` brings the
//!    VM back on a new data disk, under its own tailnet name, with every archived row;
//! 6. `backup export` writes the repository to a file; rows written after it are not
//!    in it; a cut export is refused with nothing changed, and `restore --from-export`
//!    of the whole file gives the rows of the export's time; `backup export SET` after
//!    a new full set leaves the older sets out and restores the same way;
//! 7. `db dump forgejo`, changes, `db restore forgejo` gives the dumped rows back,
//!    owned by the app, the changed database kept under another name; an app the spec
//!    does not name is refused;
//! 8. with a retention of one day and the guest's clock moved two, then four days
//!    ahead, the scheduled full sets expire everything before the newest full set
//!    older than the retention, and the window's start moves with it;
//! 9. a backup disk that is not ours is left alone: postgres serves, status says why.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::lab::Lab;
use sovereign_tests::process::{text, wait_for};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::Vm;
use sovereign_tests::vm_test;
use std::process::Output;
use std::time::Duration;

/// psql from the peer's namespace to `sql-vm`, by name, as the superuser; `sql` on
/// stdin, so each statement commits on its own.
fn psql(peer: &TailNode, password: &str, sql: &str) -> Output {
    psql_as(peer, "user=postgres dbname=postgres", password, sql)
}

/// [`psql`] as the role and database `who` names (`user=... dbname=...`).
fn psql_as(peer: &TailNode, who: &str, password: &str, sql: &str) -> Output {
    let conninfo = format!("host=sql-vm port=5432 {who} connect_timeout=15");
    psql_with(peer, &conninfo, Some(password), sql)
}

/// psql from the peer with a whole connection string (a URI or key/value pairs).
fn psql_with(peer: &TailNode, conninfo: &str, password: Option<&str>, sql: &str) -> Output {
    let env = password.map(|p| ("PGPASSWORD", std::ffi::OsStr::new(p)));
    peer.psql_script(conninfo, env.as_slice(), sql)
        .wait_with_output()
        .unwrap()
}

fn psql_ok(peer: &TailNode, password: &str, sql: &str) -> String {
    let o = psql(peer, password, sql);
    assert!(o.status.success(), "psql {sql:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// One INSERT per transaction (psql reading a script commits each statement).
fn insert_rows(peer: &TailNode, password: &str, from: i32, to: i32) {
    let sql: String = (from..=to)
        .map(|i| format!("insert into rows_written (id) values ({i});\n"))
        .collect();
    psql_ok(peer, password, &sql);
}

/// The labels of every set `backup list --json` shows.
fn backup_sets(vm: &Vm) -> Vec<String> {
    let o = vm.cli("backup list", &["--json"]);
    assert!(o.status.success(), "backup list: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["sets"]
        .as_array()
        .map(|sets| {
            sets.iter()
                .filter_map(|s| s["label"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn backup_status(vm: &Vm) -> serde_json::Value {
    vm.status()["guest"]["backup"].clone()
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn point_in_time_restore_gives_exactly_the_rows_committed_before_the_target() {
    let Some(a) = vm_test("backups") else { return };
    let mut lab = Lab::start(&a.tools, "bk").expect("lab");
    let mut opts = lab.vm_options();
    opts.backup_toml = "archive_timeout_secs = 10".into();
    opts.apps = vec!["forgejo".into(), "vaultwarden".into()];
    let vm = Vm::new(&a, &opts);
    vm.start_ok();
    let password = vm.superuser_password();

    // 1. The first full backup runs by itself after ready.
    let first = wait_for(Duration::from_secs(900), Duration::from_secs(5), || {
        let b = backup_status(&vm);
        b["last_ok"]["label"].as_str().map(str::to_string)
    });
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        first.is_some(),
        "no scheduled full backup: {}\n{status_text}",
        backup_status(&vm)
    );
    let first = first.unwrap();
    assert!(first.ends_with('F'), "a full set: {first}");
    assert!(
        status_text.contains(&format!("backups:  last full {first}")),
        "status shows the backup:\n{status_text}"
    );

    // 1b. A full backup killed in the middle never shows as a set, status says it
    // failed, and the next backup works. A loop inside the guest kills pgBackRest's
    // backup process the moment it appears (as postgres, its owner).
    let sets_before = backup_sets(&vm);
    let killer = {
        let cmd = vm.command("query", &[]);
        std::thread::spawn(move || {
            use std::io::Write;
            let mut cmd = cmd;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(
                    b"copy (select 1) to program 'for i in $(seq 1 600); do pkill -KILL -f \"[p]gbackrest.*--type=full\" && exit 0; sleep 0.02; done; exit 1'",
                )
                .unwrap();
            child.wait_with_output().unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let cut = vm.cli("backup now", &["--type", "full"]);
    let killed = killer.join().unwrap();
    assert!(
        killed.status.success(),
        "the guest-side killer: {}",
        text(&killed)
    );
    assert!(
        !cut.status.success(),
        "a killed backup must fail: {}",
        text(&cut)
    );
    assert_eq!(
        backup_sets(&vm),
        sets_before,
        "an interrupted backup never shows as a set"
    );
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains("✗ last backup (full at"),
        "status says the backup failed:\n{status_text}"
    );
    let after = vm.cli("backup now", &["--type", "incr"]);
    assert!(after.status.success(), "the next backup: {}", text(&after));

    // 2. Rows from the second node, a differential backup, a time T, more rows, a drop.
    let peer = lab.join_peer().expect("second node joins");
    let reachable = wait_for(Duration::from_secs(90), Duration::from_secs(3), || {
        psql(peer, &password, "select 1;\n")
            .status
            .success()
            .then_some(())
    });
    assert!(reachable.is_some(), "psql to sql-vm from the peer");
    psql_ok(
        peer,
        &password,
        "create table rows_written (id int primary key, at timestamptz not null default clock_timestamp());\n\
         create table kept (note text);\ninsert into kept values ('still here');\n",
    );
    insert_rows(peer, &password, 1, 20);
    let diff = vm.cli("backup now", &["--type", "diff"]);
    assert!(diff.status.success(), "backup now: {}", text(&diff));
    assert!(
        text(&diff).contains("diff backup") && text(&diff).contains("in the repository"),
        "{}",
        text(&diff)
    );
    insert_rows(peer, &password, 21, 40);
    let t = psql_ok(
        peer,
        &password,
        "select pg_sleep(1);\nselect to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"');\nselect pg_sleep(1);\n",
    );
    let t = t.lines().last().unwrap().trim().to_string();
    insert_rows(peer, &password, 41, 60);
    psql_ok(peer, &password, "drop table kept;\n");
    let dropped_at: i64 = psql_ok(
        peer,
        &password,
        "select extract(epoch from clock_timestamp())::bigint;\n",
    )
    .parse()
    .unwrap();
    // archive_timeout is 10 s: the segment holding the drop reaches the repository.
    let archived = wait_for(Duration::from_secs(180), Duration::from_secs(5), || {
        let w = backup_status(&vm)["window"]["latest_unix"].as_i64()?;
        (w > dropped_at).then_some(w)
    });
    assert!(
        archived.is_some(),
        "the drop's WAL was not archived: {}\n{}",
        backup_status(&vm),
        text(&vm.cli("logs", &["pgbackrest"]))
    );

    // 3. Bad targets are refused and nothing stops.
    let early = vm.cli("restore", &["--to", "2000-01-01T00:00:00Z", "--yes"]);
    assert_eq!(early.status.code(), Some(1), "{}", text(&early));
    assert!(
        text(&early).contains("outside the recoverable window"),
        "{}",
        text(&early)
    );
    let nonsense = vm.cli("restore", &["--to", "yesterday-ish", "--yes"]);
    assert_eq!(nonsense.status.code(), Some(1), "{}", text(&nonsense));
    assert!(
        text(&nonsense).contains("is not a time PostgreSQL reads"),
        "{}",
        text(&nonsense)
    );
    let unknown = vm.cli("restore", &["--to", "20000101-000000F", "--yes"]);
    assert!(
        text(&unknown).contains("no backup set is labelled"),
        "{}",
        text(&unknown)
    );
    assert_eq!(
        psql_ok(peer, &password, "select count(*) from rows_written;\n"),
        "60",
        "refused restores leave the database alone"
    );

    // The restore itself.
    let restored = vm.cli("restore", &["--to", &t, "--yes"]);
    assert!(
        restored.status.success(),
        "restore --to {t}: {}\nconsole:\n{}",
        text(&restored),
        vm.console()
    );
    assert!(
        text(&restored).contains("kept as /data/postgres.before-restore-"),
        "{}",
        text(&restored)
    );
    let back = wait_for(Duration::from_secs(120), Duration::from_secs(3), || {
        let o = psql(
            peer,
            &password,
            "select count(*), max(id) from rows_written;\nselect note from kept;\n",
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    assert_eq!(
        back.as_deref(),
        Some("40|40\nstill here"),
        "exactly the rows committed before {t}, and the dropped table"
    );

    // 4. The catalog, and writes after the restore.
    let list = vm.cli("backup list", &["--json"]);
    assert!(list.status.success(), "{}", text(&list));
    let catalog: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let kinds: Vec<&str> = catalog["sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"full") && kinds.contains(&"diff"),
        "{catalog:#}"
    );
    assert!(
        catalog["window"]["earliest_unix"].as_i64().is_some(),
        "{catalog:#}"
    );
    let table = text(&vm.cli("backup list", &[]));
    assert!(table.contains("restorable to any time from"), "{table}");
    assert!(table.contains(&first), "{table}");
    let verified = vm.cli("backup verify", &[]);
    assert!(
        verified.status.success(),
        "backup verify: {}",
        text(&verified)
    );
    insert_rows(peer, &password, 100, 110);
    assert_eq!(
        psql_ok(peer, &password, "select count(*) from rows_written;\n"),
        "51"
    );
    let last_insert: i64 = psql_ok(
        peer,
        &password,
        "select extract(epoch from clock_timestamp())::bigint;\n",
    )
    .parse()
    .unwrap();
    let archived = wait_for(Duration::from_secs(180), Duration::from_secs(5), || {
        let w = backup_status(&vm)["window"]["latest_unix"].as_i64()?;
        (w > last_insert).then_some(w)
    });
    if archived.is_none() {
        let probe = vm.query(
            "select name, setting from pg_settings where name in ('archive_mode', 'archive_timeout', 'archive_command');\n\
             select pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn();\n\
             select * from pg_ls_archive_statusdir() order by 1;\n\
             select pid, backend_type, wait_event_type, wait_event from pg_stat_activity where backend_type in ('archiver', 'checkpointer');\n\
             select * from pg_stat_archiver;",
        );
        panic!(
            "the last rows' WAL was not archived: {}\n{probe:?}\n{}\n{}",
            backup_status(&vm),
            text(&vm.cli("logs", &["pgbackrest"])),
            text(&vm.cli("logs", &["postgres"]))
        );
    }

    // 5. Disaster: the data disk is gone. --new-disk refuses a running VM, then, with
    // the VM stopped, restores onto a new disk from the backup disk; the node comes
    // back under its own tailnet name with every archived row.
    let running = vm.cli("restore", &["--new-disk", "--to", "latest", "--yes"]);
    assert_eq!(running.status.code(), Some(2), "{}", text(&running));
    assert!(
        text(&running).contains("stop it first"),
        "{}",
        text(&running)
    );
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    std::fs::remove_file(vm.home.path().join("postgres.img")).unwrap();
    let recovered = vm.cli("restore", &["--new-disk", "--to", "latest", "--yes"]);
    assert!(
        recovered.status.success(),
        "restore --new-disk: {}\nconsole:\n{}",
        text(&recovered),
        vm.console()
    );
    let back = wait_for(Duration::from_secs(180), Duration::from_secs(3), || {
        let o = psql(
            peer,
            &password,
            "select count(*), max(id) from rows_written;\n",
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    assert_eq!(
        back.as_deref(),
        Some("51|110"),
        "every archived row, by name from the second node"
    );

    export_round_trip(&vm, peer, &password);
    app_dump_round_trip(&vm, peer);
    retention_expires_what_the_window_no_longer_needs(&vm, peer, &password);

    // 9. A backup disk that is not ours (here: its superblock overwritten) is never
    // formatted; postgres serves without archiving and status says why.
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    {
        use std::io::Write;
        let mut img = std::fs::OpenOptions::new()
            .write(true)
            .open(vm.home.path().join("backup.img"))
            .unwrap();
        img.write_all(&[0xab; 4096]).unwrap();
    }
    vm.start_ok();
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains("✗ backups are not running: backup disk: /dev/vdc is not blank and not a sovereign-backup filesystem"),
        "{status_text}"
    );
    let served = wait_for(Duration::from_secs(120), Duration::from_secs(3), || {
        let o = psql(peer, &password, "select count(*) from rows_written;\n");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    assert_eq!(
        served.as_deref(),
        Some("51"),
        "postgres serves without backups"
    );
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}

/// A backup set as `backup list --json` gives it: label, type, start.
fn catalog_sets(vm: &Vm) -> Vec<(String, String, i64)> {
    let o = vm.cli("backup list", &["--json"]);
    assert!(o.status.success(), "backup list: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["started_unix"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The newest full set of `sets` (label, start).
fn newest_full(sets: &[(String, String, i64)]) -> (String, i64) {
    sets.iter()
        .filter(|s| s.1 == "full")
        .max_by_key(|s| s.2)
        .map(|s| (s.0.clone(), s.2))
        .expect("a full set")
}

/// Boots the VM with its clock `days` ahead and waits for the full set the schedule
/// takes by itself (a full is due every day); returns the sets after it.
fn boot_days_ahead_until_a_new_full(vm: &Vm, days: i64) -> Vec<(String, String, i64)> {
    let before = catalog_sets(vm);
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    let out = vm.start_ok_days_ahead(days);
    assert!(out.contains("the guest's clock will be"), "{out}");
    let newest_before = newest_full(&before).0;
    let taken = wait_for(Duration::from_secs(600), Duration::from_secs(5), || {
        let sets = catalog_sets(vm);
        (newest_full(&sets).0 != newest_before).then_some(sets)
    });
    taken.unwrap_or_else(|| {
        panic!(
            "no scheduled full backup {days} days ahead: {}\n{}",
            backup_status(vm),
            text(&vm.cli("logs", &["pgbackrest"]))
        )
    })
}

/// Step 8: time-based retention (here one day, a full set due every day), with days passing
/// by booting the guest with its clock moved ahead. pgBackRest keeps the newest full set
/// older than the retention (the window needs it) and expires everything before it, and
/// the recovery window's start moves with it. Rows are untouched.
fn retention_expires_what_the_window_no_longer_needs(vm: &Vm, peer: &TailNode, password: &str) {
    let spec = std::fs::read_to_string(&vm.spec).unwrap();
    let spec = spec.replacen("[backup]\n", "[backup]\nretention_days = 1\n", 1)
        + "[backup.schedule]\nfull_every_days = 1\n";
    std::fs::write(&vm.spec, spec).unwrap();
    // One more full set today, so that one set is older than the newest full.
    let full = vm.cli("backup now", &["--type", "full"]);
    assert!(full.status.success(), "backup now: {}", text(&full));
    let today = catalog_sets(vm);
    let (full_today, full_today_start) = newest_full(&today);
    assert!(
        today.iter().any(|s| s.2 < full_today_start),
        "the drill has sets older than its newest full one to expire: {today:?}"
    );

    // Two days ahead: today's newest full is now older than the retention and is kept
    // (it covers the window's start); every set before it is expired.
    let ahead2 = boot_days_ahead_until_a_new_full(vm, 2);
    assert!(
        ahead2.iter().all(|s| s.2 >= full_today_start),
        "sets before {full_today} are expired: {ahead2:?}"
    );
    assert!(
        ahead2.iter().any(|s| s.0 == full_today),
        "{full_today} is kept, the window needs it: {ahead2:?}"
    );
    let (full_2, full_2_start) = newest_full(&ahead2);

    // Four days ahead: the full set of two days ahead is the newest past the
    // retention; today's sets go, and the window starts at that set.
    let ahead4 = boot_days_ahead_until_a_new_full(vm, 4);
    assert!(
        ahead4.iter().all(|s| s.2 >= full_2_start),
        "sets before {full_2} are expired: {ahead4:?}"
    );
    assert_eq!(
        ahead4.iter().filter(|s| s.1 == "full").count(),
        2,
        "{full_2} and the one just taken: {ahead4:?}"
    );
    let earliest = backup_status(vm)["window"]["earliest_unix"].as_i64();
    assert!(
        earliest.is_some_and(|e| e >= full_2_start),
        "the window starts at {full_2}: {}",
        backup_status(vm)
    );
    assert_eq!(count_rows(peer, password).as_deref(), Some("51|110"));
    eprintln!(
        "retention: today {today:?}\n  two days ahead {ahead2:?}\n  four days ahead {ahead4:?}, window from {earliest:?}"
    );
}

fn count_rows(peer: &TailNode, password: &str) -> Option<String> {
    wait_for(Duration::from_secs(180), Duration::from_secs(3), || {
        let o = psql(
            peer,
            password,
            "select count(*), max(id) from rows_written;\n",
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    })
}

/// `restore --from-export FILE --to latest --yes`.
fn restore_latest_from_export(vm: &Vm, file: &std::path::Path) -> Output {
    vm.cli(
        "restore",
        &[
            "--from-export",
            file.to_str().unwrap(),
            "--to",
            "latest",
            "--yes",
        ],
    )
}

/// 6. The repository out to a file and back; the database holds `51|110` before.
fn export_round_trip(vm: &Vm, peer: &TailNode, password: &str) {
    let file = vm.home.path().join("repo.tar");
    let out = vm.cli("backup export", &["--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "backup export: {}", text(&out));
    assert!(text(&out).contains("sha256"), "{}", text(&out));
    let size = std::fs::metadata(&file).expect("the export file").len();
    assert!(size > 1 << 20, "an export of {size} bytes");
    assert!(!vm.home.path().join("repo.tar.partial").exists());
    insert_rows(peer, password, 200, 205);

    // A cut file (an interrupted `adb pull`) is refused and nothing changes.
    let cut = vm.home.path().join("cut.tar");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let refused = restore_latest_from_export(vm, &cut);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert_eq!(count_rows(peer, password).as_deref(), Some("57|205"));

    let restored = restore_latest_from_export(vm, &file);
    assert!(
        restored.status.success(),
        "restore --from-export: {}\nconsole:\n{}",
        text(&restored),
        vm.console()
    );
    assert!(
        text(&restored)
            .contains("previous repository is kept as /backup/pgbackrest.before-import-"),
        "{}",
        text(&restored)
    );
    assert_eq!(
        count_rows(peer, password).as_deref(),
        Some("51|110"),
        "the rows of the export's time, not the ones written after it"
    );
    export_from_one_set_round_trip(vm, peer, password, size);
}

/// 6b. `backup export SET` after a new full set: the file holds that set and what
/// follows, none of the older sets, and is smaller than the whole export (`whole`
/// bytes); restoring from it gives the rows of its time, and the imported repository
/// lists only the sets it holds.
fn export_from_one_set_round_trip(vm: &Vm, peer: &TailNode, password: &str, whole: u64) {
    let full = vm.cli("backup now", &["--type", "full"]);
    assert!(full.status.success(), "backup now: {}", text(&full));
    let sets = catalog_sets(vm);
    let (newest, newest_start) = newest_full(&sets);
    let older: Vec<&String> = sets
        .iter()
        .filter(|s| s.2 < newest_start)
        .map(|s| &s.0)
        .collect();
    assert!(!older.is_empty(), "older sets to leave out: {sets:?}");

    let file = vm.home.path().join("from-set.tar");
    let out = vm.cli(
        "backup export",
        &[newest.as_str(), "--output", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "backup export SET: {}", text(&out));
    let size = std::fs::metadata(&file).expect("the export file").len();
    assert!(size < whole, "{size} bytes from one set on, {whole} whole");
    let listing =
        sovereign_tests::process::run(std::process::Command::new("tar").arg("-tf").arg(&file));
    let names = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(
        names.contains(&format!("/{newest}/backup.manifest")),
        "{names}"
    );
    for label in &older {
        assert!(
            !names.contains(label.as_str()),
            "{label} is left out:\n{names}"
        );
    }
    let unknown = vm.cli(
        "backup export",
        &["20000101-000000F", "--output", "/dev/null"],
    );
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no complete backup set \"20000101-000000F\""),
        "{}",
        text(&unknown)
    );

    insert_rows(peer, password, 300, 302);
    let restored = restore_latest_from_export(vm, &file);
    assert!(
        restored.status.success(),
        "restore --from-export of one set: {}\nconsole:\n{}",
        text(&restored),
        vm.console()
    );
    assert_eq!(count_rows(peer, password).as_deref(), Some("51|110"));
    let after: Vec<String> = catalog_sets(vm).into_iter().map(|s| s.0).collect();
    assert_eq!(
        after.first(),
        Some(&newest),
        "the older sets are expired: {after:?}"
    );
    eprintln!(
        "export from {newest} on: {size} bytes (whole: {whole}); sets after its import: {after:?}"
    );
}

/// 7. One app's database out to a file and back.
fn app_dump_round_trip(vm: &Vm, peer: &TailNode) {
    // The app connects with what `db url` prints, by name from the second node.
    let url = vm.cli("db url", &["forgejo"]);
    assert!(url.status.success(), "db url: {}", text(&url));
    let uri = String::from_utf8_lossy(&url.stdout).trim().to_string();
    assert!(
        uri.starts_with("postgresql://forgejo:") && uri.ends_with("@sql-vm:5432/forgejo"),
        "{uri}"
    );
    let forgejo = |sql: &str| {
        let o = psql_with(peer, &uri, None, sql);
        assert!(o.status.success(), "psql as forgejo {sql:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(forgejo("select current_user;\n"), "forgejo");
    // Isolation: another app's role cannot even connect to forgejo's database.
    let vaultwarden = vm.cli("db url", &["vaultwarden", "--format", "keyvalue"]);
    assert!(vaultwarden.status.success(), "{}", text(&vaultwarden));
    let intruder = String::from_utf8_lossy(&vaultwarden.stdout)
        .trim()
        .replace("dbname='vaultwarden'", "dbname='forgejo'");
    let refused = psql_with(peer, &intruder, None, "select 1;\n");
    assert!(
        !refused.status.success() && text(&refused).contains("permission denied for database"),
        "vaultwarden reached forgejo's database: {}",
        text(&refused)
    );

    // TLS: verify-full against the CA `db ca` prints; another CA is refused.
    let ca = vm.cli("db ca", &[]);
    assert!(ca.status.success(), "db ca: {}", text(&ca));
    let ca_file = vm.home.path().join("sovereign-ca.crt");
    std::fs::write(&ca_file, &ca.stdout).unwrap();
    let tls_url = vm.cli(
        "db url",
        &["forgejo", "--verify-full", ca_file.to_str().unwrap()],
    );
    assert!(
        tls_url.status.success(),
        "db url --verify-full: {}",
        text(&tls_url)
    );
    let tls_uri = String::from_utf8_lossy(&tls_url.stdout).trim().to_string();
    let ssl = psql_with(
        peer,
        &tls_uri,
        None,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid();\n",
    );
    assert_eq!(
        (
            ssl.status.success(),
            String::from_utf8_lossy(&ssl.stdout).trim()
        ),
        (true, "t"),
        "sslmode=verify-full with the launcher's CA: {}",
        text(&ssl)
    );
    let wrong_ca = tls_uri.replace(
        &percent_path(&ca_file),
        &percent_path(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt")),
    );
    assert_ne!(wrong_ca, tls_uri);
    let refused = psql_with(peer, &wrong_ca, None, "select 1;\n");
    assert!(
        !refused.status.success() && text(&refused).contains("certificate verify failed"),
        "a server not signed by the given CA must be refused: {}",
        text(&refused)
    );
    forgejo(
        "create table issue (id int primary key, title text not null);\n\
         insert into issue select g, 'issue ' || g from generate_series(1, 300) g;\n",
    );
    let dump = vm.home.path().join("forgejo.dump");
    let out = vm.cli("db dump", &["forgejo", "--output", dump.to_str().unwrap()]);
    assert!(out.status.success(), "db dump: {}", text(&out));
    let unknown = vm.cli("db dump", &["gitea", "--output", dump.to_str().unwrap()]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("not in the spec"),
        "{}",
        text(&unknown)
    );

    forgejo("delete from issue where id > 100;\ncreate table junk (x int);\n");
    let restored = vm.cli("db restore", &["forgejo", dump.to_str().unwrap(), "--yes"]);
    assert!(restored.status.success(), "db restore: {}", text(&restored));
    assert!(
        text(&restored).contains("kept as forgejo_before_restore_"),
        "{}",
        text(&restored)
    );
    assert_eq!(
        forgejo(
            "select count(*) from issue;\n\
             select count(*) from pg_tables where tablename = 'junk';\n\
             select tableowner from pg_tables where tablename = 'issue';\n"
        ),
        "300\n0\nforgejo",
        "the dumped rows, owned by the app, and nothing of the later changes"
    );
    let list = vm.cli("db list", &["--json"]);
    assert!(list.status.success(), "db list: {}", text(&list));
    let dbs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let find = |name: &str| {
        dbs.as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .cloned()
            .unwrap_or_default()
    };
    let app = find("forgejo");
    assert_eq!(
        (&app["kind"], &app["owner"], &app["connection_limit"]),
        (
            &serde_json::json!("app"),
            &serde_json::json!("forgejo"),
            &serde_json::json!(20)
        ),
        "{dbs:#}"
    );
    assert_eq!(
        find("forgejo_before_restore_")["kind"],
        "kept_by_restore",
        "{dbs:#}"
    );
    // The status view: the server's role, connections, and each database.
    let status = vm.status();
    assert_eq!(status["database"]["role"], "primary", "{status:#}");
    assert_eq!(status["database"]["max_connections"], 50, "{status:#}");
    let table = text(&vm.cli("status", &[]));
    assert!(
        table.contains("  database: primary, up ") && table.contains("/50 connections"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("forgejo ") && l.contains("/20 connections")),
        "{table}"
    );

    // `db drop`: never an app the spec names, never without a yes, always after a dump.
    let kept = find("forgejo_before_restore_")["name"]
        .as_str()
        .unwrap()
        .to_string();
    let unasked = vm.cli("db drop", &[&kept]);
    assert!(
        !unasked.status.success() && text(&unasked).contains("pass --yes"),
        "{}",
        text(&unasked)
    );
    let app_drop = vm.cli("db drop", &["forgejo", "--yes"]);
    assert!(
        !app_drop.status.success() && text(&app_drop).contains("is an app in the spec"),
        "{}",
        text(&app_drop)
    );
    let kept_dump = vm.home.path().join("kept.dump");
    let dropped = vm.cli(
        "db drop",
        &[&kept, "--yes", "-o", kept_dump.to_str().unwrap()],
    );
    assert!(dropped.status.success(), "db drop: {}", text(&dropped));
    assert!(std::fs::metadata(&kept_dump).unwrap().len() > 0);
    let after = text(&vm.cli("db list", &[]));
    assert!(!after.contains(&kept), "{after}");
}

/// A path as `db url` percent-encodes it in a URI.
fn percent_path(p: &std::path::Path) -> String {
    p.to_str()
        .unwrap()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
