//! Backups on real components, as a drill in steps (see `drill.rs`): pgBackRest in the
//! guest with repo1 on the backup disk and repo2 on OpenSSH's SFTP server on the second
//! tailnet node (reached by tailnet name, its host key pinned), PostgreSQL archiving WAL
//! to repo1 and shipping it on to repo2, rows written from the second node by name, and
//! `sovereign restore` to a point in time taken from the database's own clock. One VM
//! and one lab for the whole drill; the steps, in order, each a test of its own:
//!
//! 1. the first full backup lands in both repositories by itself after `ready`, status
//!    shows both, and no alert was raised meanwhile;
//! 2. (heavy) a full backup killed in the middle never shows as a set, status says it failed,
//!    and the next backup works;
//! 3. (heavy) with the SFTP server down, `backup now` still makes its set on the backup disk,
//!    fails for repo2 naming why, status says so, and the database serves; with the
//!    server back, both repositories take the next set;
//! 4. another host key for the server (another machine answering as it): repo2 is
//!    refused and status names the key; with the backup disk filled past 80% as well,
//!    the webhook (a real HTTP server on loopback) gets each condition raised, repeated
//!    while it holds and cleared once key and space are back, in that order, and
//!    `status` lists both with since when;
//! 5. rows 1–20, `backup now --type diff`, rows 21–40, time T, rows 41–60, a table
//!    dropped; the drop's WAL is archived;
//! 6. a time outside the window and a time PostgreSQL cannot read are refused, naming
//!    why, and the database keeps serving;
//! 7. a power cut during `restore --to T`: the next boot puts the data from before it
//!    back, and says so;
//! 8. `restore --to T` gives exactly rows 1–40 and the dropped table back;
//! 9. `backup list` shows the sets and the window, `backup verify` reads the repository
//!    back, and the restored server takes writes that are archived;
//! 10. with the VM stopped and `postgres.img` deleted, `restore --new-disk` (cut by a
//!     power cut first, finished by the next plain start) brings the VM back on a new
//!     data disk, under its own tailnet name, with every archived row;
//! 11. `backup export` writes the repository to a file (0600; a link planted at its
//!     path is refused); rows written after it are not in it; a cut export is refused
//!     with nothing changed; a power cut during the import puts data and repository
//!     back; `restore --from-export` gives the export's rows;
//! 12. `backup export SET` after a new full set leaves the older sets out and restores
//!     the same way;
//! 13. an app reaches its own database and no other (not `postgres`, not `template1`),
//!     over TLS verified by the CA;
//! 14. `db dump forgejo` (0600, no planted link followed), changes, `db restore
//!     forgejo` (cut by a power cut first: the app's database is left as it was) gives
//!     the dumped rows back, owned by the app, the changed database kept under another
//!     name; status shows each database;
//! 15. a dump crafted to `RESET ROLE` and make the app a superuser fails to load: it
//!     runs in the app's own session; the app's database is as it was;
//! 16. `db drop` never drops an app of the spec, asks first, and dumps before it drops;
//! 17. (heavy) with the backup disk full, WAL archiving fails, status says why, the
//!     database takes writes, and with the space back archiving catches up;
//! 18. disaster: the data disk and the backup disk are both gone; `restore --new-disk`
//!     brings every archived row back from repo2 alone;
//! 19. (heavy) only the backup disk is lost: `start` says what that means, every row is
//!     served, and a new full backup fills the new backup disk;
//! 20. (heavy) with a retention of one day and the guest's clock moved two, then four days
//!     ahead, the scheduled full sets expire everything on the backup disk before the
//!     newest full set older than the retention, and the window still covers it;
//! 21. a backup disk that is not ours is left alone: postgres serves, status says why;
//! 22. a new phone with only the export of step 11 and the passphrase (`backup key
//!     --set`): `restore --new-disk --from-export` brings the export's rows back in
//!     one command.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use protocol::backup::{BackupCatalog, BackupKind, BackupSet, BackupStatus, REPO_LOCAL};
use protocol::status::{DbEntry, DbKind};
use sovereign_tests::drill::Fixture;
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{text, wait_for};
use sovereign_tests::sftp::{SftpServer, SFTP_PORT, SSHD};
use sovereign_tests::tailnode::{Login, TailNode};
use sovereign_tests::vm::Vm;
use sovereign_tests::webhook::WebhookReceiver;
use sovereign_tests::{heavy_variant, vm_test};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// The drill's fixture. Fields drop in order: the VM and the SFTP server before their
/// lab.
struct Backups {
    vm: Vm,
    sftp: SftpServer,
    password: String,
    /// The first full set (step 1).
    first_full: String,
    /// The time step 8 restores to, and when the table was dropped after it (step 5).
    target: String,
    dropped_at: i64,
    /// The size of the whole repository's export (step 11).
    whole_export_bytes: u64,
    /// What `db url forgejo` prints (step 13).
    forgejo_uri: String,
    /// The backup passphrase's file (made by the first start).
    passphrase_file: std::path::PathBuf,
    /// Where the supervisor's alerts go.
    alerts: WebhookReceiver,
    lab: Lab,
}

impl Fixture for Backups {
    fn on_failure(&self) {
        self.vm.print_failure_evidence();
        println!("--- sshd:\n{}", self.sftp.log());
        println!(
            "--- pgbackrest:\n{}",
            text(&self.vm.cli("logs", &["pgbackrest"]))
        );
    }
}

sovereign_tests::drill! {
    static DRILL: Drill<Backups> = setup;
    s01_the_first_full_backup_reaches_both_repositories_by_itself => first_full_backup,
    s02_a_killed_full_backup_never_shows_as_a_set => killed_full_backup,
    s03_with_the_sftp_server_away_repo1_still_takes_its_set => sftp_server_away,
    s04_another_host_key_and_a_full_backup_disk_are_refused_and_alerted => another_host_key,
    s05_rows_a_diff_backup_a_time_and_a_drop_are_archived => rows_and_a_drop,
    s06_bad_restore_targets_are_refused => bad_targets_refused,
    s07_a_power_cut_during_a_restore_puts_the_data_back => restore_power_cut,
    s08_restore_to_a_time_gives_exactly_the_rows_before_it => restore_to_a_time,
    s09_the_catalog_lists_the_sets_and_verify_reads_them => catalog_and_verify,
    s10_restore_onto_a_new_disk_survives_a_power_cut => restore_onto_a_new_disk,
    s11_an_export_round_trip_survives_a_power_cut => export_round_trip,
    s12_an_export_from_one_set_leaves_the_older_sets_out => export_from_one_set,
    s13_an_app_reaches_only_its_database_over_verified_tls => app_isolation_and_tls,
    s14_db_restore_of_a_dump_survives_a_power_cut => app_dump_round_trip,
    s15_a_crafted_dump_cannot_reach_past_the_apps_role => crafted_dump,
    s16_db_drop_asks_and_dumps_first => db_drop,
    s17_a_full_backup_disk_stops_archiving_until_space_is_back => full_backup_disk,
    s18_both_disks_lost_repo2_alone_brings_every_row_back => both_disks_lost,
    s19_only_the_backup_disk_lost => only_the_backup_disk_lost,
    s20_retention_expires_what_the_window_no_longer_needs => retention,
    s21_a_backup_disk_that_is_not_ours_is_left_alone => foreign_backup_disk,
    s22_a_new_phone_with_only_an_export_and_its_passphrase => new_phone_from_an_export,
}

fn setup() -> Option<Backups> {
    let a = vm_test("backups")?;
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: scripts/ci-deps.sh installs openssh-server"
    );
    let mut lab = Lab::start(&a.tools, "bk").expect("lab");
    let lab_dir = lab.dir.path().to_path_buf();
    let peer = lab.join_peer().expect("second node joins");
    let mut sftp = SftpServer::prepare(&lab_dir.join("sftp"), peer);
    sftp.start();
    let mut opts = lab.vm_options();
    opts.apps = vec!["forgejo".into(), "vaultwarden".into()];
    opts.backup_toml = format!(
        "archive_timeout_secs = 10\n[backup.offsite]\nhost = \"peer\"\nport = {SFTP_PORT}\n\
         user = \"root\"\npath = \"{repo}\"\nhost_key = \"{key}\"\nprivate_key_file = \"{client}\"\n",
        repo = sftp.dir.join("repo").display(),
        key = sftp.host_key(),
        client = sftp.dir.join("client_key").display(),
    );
    let alerts = WebhookReceiver::start();
    opts.extra_toml = format!(
        "[alerts]\nwebhook = \"{}\"\ncheck_secs = 2\nrepeat_secs = {ALERT_REPEAT_SECS}\n",
        alerts.url
    );
    let vm = Vm::new(&a, &opts);
    let vm_home = vm.home.path().to_path_buf();
    Some(Backups {
        alerts,
        vm,
        sftp,
        password: String::new(),
        first_full: String::new(),
        target: String::new(),
        dropped_at: 0,
        whole_export_bytes: 0,
        forgejo_uri: String::new(),
        passphrase_file: vm_home.join("secrets/sql-backup.passphrase"),
        lab,
    })
}

impl Backups {
    fn peer(&self) -> &TailNode {
        self.lab.peer.as_ref().expect("the second node joined")
    }

    /// psql on the second node to `sql-vm`, by name, as the superuser; each statement
    /// of `sql` commits on its own.
    fn psql(&self, sql: &str) -> Result<String, String> {
        self.peer().psql(&Login::superuser(&self.password), sql)
    }

    fn psql_ok(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// psql on the second node with what `db url` printed (or any connection string).
    fn psql_url(&self, url: &str, sql: &str) -> Output {
        self.peer()
            .psql_script(&Login::conninfo(url), sql)
            .wait_with_output()
            .unwrap()
    }

    /// One INSERT per transaction.
    fn insert_rows(&self, from: i32, to: i32) {
        let sql: String = (from..=to)
            .map(|i| format!("insert into rows_written (id) values ({i});\n"))
            .collect();
        self.psql_ok(&sql);
    }

    /// `count|max` of the rows, once the server answers again.
    fn count_rows(&self) -> Option<String> {
        wait_for(Duration::from_secs(180), Duration::from_secs(1), || {
            self.psql("select count(*), max(id) from rows_written;\n")
                .ok()
        })
    }

    /// The database's clock now, in seconds.
    fn now_unix(&self) -> i64 {
        self.psql_ok("select extract(epoch from clock_timestamp())::bigint;\n")
            .parse()
            .unwrap()
    }

    /// Waits until the window reaches past `unix`: everything before it is archived.
    fn wait_archived_past(&self, unix: i64, what: &str) {
        let archived = wait_for(Duration::from_secs(180), Duration::from_secs(1), || {
            let w = window_latest(&self.vm)?;
            (w > unix).then_some(w)
        });
        if archived.is_none() {
            let probe = self.vm.query(
                "select name, setting from pg_settings where name in ('archive_mode', 'archive_timeout', 'archive_command');\n\
                 select pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn();\n\
                 select * from pg_ls_archive_statusdir() order by 1;\n\
                 select * from pg_stat_archiver;",
            );
            panic!(
                "{what}: not archived: {:?}\n{probe:?}\n{}",
                backup_status(&self.vm),
                text(&self.vm.cli("logs", &["postgres"]))
            );
        }
    }
}

/// `backup list --json`, read as the launcher's own type.
fn catalog(vm: &Vm) -> BackupCatalog {
    let o = vm.cli("backup list", &["--json"]);
    assert!(o.status.success(), "backup list: {}", text(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("backup list --json is not a catalog ({e}): {}", text(&o)))
}

/// The sets in repo1 (the backup disk), oldest first.
fn repo1_sets(vm: &Vm) -> Vec<BackupSet> {
    catalog(vm)
        .sets
        .into_iter()
        .filter(|s| s.repo == REPO_LOCAL)
        .collect()
}

/// The labels of repo1's sets.
fn repo1_labels(vm: &Vm) -> Vec<String> {
    repo1_sets(vm).into_iter().map(|s| s.label).collect()
}

/// The newest full set of `sets`.
fn newest_full(sets: &[BackupSet]) -> BackupSet {
    sets.iter()
        .filter(|s| s.kind == BackupKind::Full)
        .max_by_key(|s| s.started_unix)
        .cloned()
        .expect("a full set")
}

fn backup_status(vm: &Vm) -> BackupStatus {
    vm.guest_status()
        .backup
        .map(|b| *b)
        .expect("backups in the guest's status")
}

/// The newest change a restore can reach now, as the guest reports it.
fn window_latest(vm: &Vm) -> Option<i64> {
    backup_status(vm).window.map(|w| w.latest_unix)
}

/// Runs `verb ARGS` in the background and cuts the power as soon as the console
/// shows `line` (the step has begun); then starts the VM again and returns what
/// `start` printed, which must name what the boot finished or undid (`said`).
fn cut_and_start(vm: &Vm, verb: &str, args: &[&str], line: &str, said: &str) -> String {
    let mark = vm.console_mark();
    let child = vm
        .command(verb, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = vm.wait_console_since(&mark, line, Duration::from_secs(300));
    vm.power_cut();
    let o = child.wait_with_output().unwrap();
    assert!(
        seen,
        "{verb} never logged {line:?}: {}\nconsole:\n{}",
        text(&o),
        vm.console()
    );
    assert!(
        !o.status.success(),
        "{verb} cut by a power cut: {}",
        text(&o)
    );
    let out = vm.start_ok();
    assert!(
        out.contains(said),
        "the boot after a power cut during {verb} says {said:?}:\n{out}"
    );
    println!("{verb} cut by a power cut; the next start: {said}");
    out
}

/// `restore`'s arguments for the latest point of the export in `file`.
fn from_export(file: &Path) -> [&str; 5] {
    [
        "--from-export",
        file.to_str().unwrap(),
        "--to",
        "latest",
        "--yes",
    ]
}

/// `restore --from-export FILE --to latest --yes`.
fn restore_latest_from_export(vm: &Vm, file: &Path) -> Output {
    vm.cli("restore", &from_export(file))
}

/// Asserts that `verb` made its set in repo1 and failed for repo2, and that status says
/// repo2's last backup failed.
fn assert_repo2_failed(vm: &Vm, o: &Output) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    assert!(
        text(o).contains("to repo1 (backup disk) done")
            && text(o).contains("to repo2 (offsite) failed"),
        "{}",
        text(o)
    );
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains("✗ last offsite backup (incr at"),
        "{status_text}"
    );
}

/// A row that must never be readable off the phone.
const MARKER: &str = "sovereign-marker-7d1e9c40";

/// Every file below `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An export leaves the phone sealed: the age format, and no row in the clear.
fn assert_sealed(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    assert!(
        bytes.starts_with(b"age-encryption.org/v1"),
        "{} is not sealed",
        file.display()
    );
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "{} holds a row in the clear",
        file.display()
    );
}

/// The tar inside the sealed export `file`, opened with the passphrase in
/// `passphrase_file` by the age crate itself, not by the launcher under test.
fn opened(file: &Path, passphrase_file: &Path) -> Vec<u8> {
    use std::io::Read;
    let passphrase = std::fs::read_to_string(passphrase_file).unwrap();
    let identity = age::scrypt::Identity::new(passphrase.trim().to_string().into());
    let sealed = std::io::BufReader::new(std::fs::File::open(file).unwrap());
    let mut reader = age::Decryptor::new(sealed)
        .unwrap()
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap_or_else(|e| panic!("{} does not open: {e}", file.display()));
    let mut tar = Vec::new();
    reader.read_to_end(&mut tar).unwrap();
    tar
}

/// The names in the tar archive `tar`.
fn tar_names(tar: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("tar")
        .arg("-tf")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tar");
    child.stdin.take().unwrap().write_all(tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tar -t of an opened export failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The whole database is in `file`: only its owner (root) may read it.
fn assert_private(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is mode {mode:o}", file.display());
}

/// `verb ARGS --output LINK` where LINK (and LINK.partial) is a symbolic link planted
/// to another file: refused naming the link, the file it points at untouched.
fn refuses_a_planted_link(vm: &Vm, verb: &str, args: &[&str]) {
    let victim = vm.home.path().join("victim");
    std::fs::write(&victim, "not yours to truncate").unwrap();
    for (link, output) in [("planted", "planted"), ("planted2.partial", "planted2")] {
        let link = vm.home.path().join(link);
        let output = vm.home.path().join(output);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let mut all = args.to_vec();
        all.extend(["--output", output.to_str().unwrap()]);
        let o = vm.cli(verb, &all);
        assert!(
            !o.status.success() && text(&o).contains("is a symbolic link"),
            "{verb} through a planted link at {}: {}",
            link.display(),
            text(&o)
        );
        std::fs::remove_file(&link).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "not yours to truncate"
    );
}

/// A path as `db url` percent-encodes it in a URI.
fn percent_path(p: &Path) -> String {
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

/// Step 1: The first full backup runs by itself after ready and reaches both repositories.
fn first_full_backup(f: &mut Backups) {
    let vm = &f.vm;
    vm.start_ok();
    f.password = vm.superuser_password();
    let both = wait_for(Duration::from_secs(900), Duration::from_secs(1), || {
        let b = backup_status(vm);
        let local = b.last_ok?.label?;
        let offsite = b.offsite?.last_ok?.label?;
        Some((local, offsite))
    });
    let status_text = text(&vm.cli("status", &[]));
    let (first, _) = both.unwrap_or_else(|| {
        panic!(
            "no full backup in both repositories: {:?}\n{status_text}",
            backup_status(vm)
        )
    });
    assert!(first.ends_with('F'), "a full set: {first}");
    assert!(
        status_text.contains(&format!("backups:  last full {first}")),
        "status shows the backup:\n{status_text}"
    );
    assert!(
        status_text.contains(&format!(
            "offsite:  root@peer:{}",
            f.sftp.dir.join("repo").display()
        )),
        "status shows repo2:\n{status_text}"
    );
    assert!(
        f.sftp.log().contains("Accepted publickey for root"),
        "the guest logged in with its key:\n{}",
        f.sftp.log()
    );
    // A healthy first boot and its first backups (the supervisor judged them every
    // 2 s all along) raise nothing.
    assert_eq!(f.alerts.received(), [], "no alert on a healthy first boot");
    f.first_full = first;
}

/// Step 2: A full backup killed in the middle never shows as a set, status says it failed,
/// and the next backup works. A loop inside the guest kills pgBackRest's backup process
/// the moment it appears (as postgres, its owner).
fn killed_full_backup(f: &mut Backups) {
    if !heavy_variant("backups: a full backup killed in the middle") {
        return;
    }
    let vm = &f.vm;
    let sets_before = repo1_labels(vm);
    const KILLER: &str = "copy (select 1) to program 'for i in $(seq 1 600); do pkill -KILL -f \"[p]gbackrest.*--type=full\" && exit 0; sleep 0.02; done; exit 1'";
    let killer = vm.spawn_query(KILLER);
    let watching = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        vm.query("select count(*) from pg_stat_activity where query like 'copy (select 1) to program%' and pid <> pg_backend_pid()")
            .ok()
            .filter(|n| n.trim() == "1")
    });
    assert!(watching.is_some(), "the guest-side killer runs");
    let cut = vm.cli("backup now", &["--type", "full"]);
    let killed = killer.wait_with_output().unwrap();
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
        repo1_labels(vm),
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
}

/// Step 3: The server goes away: repo1 still takes its set, repo2's failure is named, the
/// database serves; back again, both repositories take the next set.
fn sftp_server_away(f: &mut Backups) {
    if !heavy_variant("backups: the SFTP server away and back (repo2's timeouts)") {
        return;
    }
    f.sftp.stop();
    let partial = f.vm.cli("backup now", &["--type", "incr"]);
    assert_repo2_failed(&f.vm, &partial);
    assert_eq!(
        f.psql("select 1;\n").as_deref(),
        Ok("1"),
        "the database serves while repo2 is away"
    );
    f.sftp.start();
    let again = f.vm.cli("backup now", &["--type", "diff"]);
    assert!(
        again.status.success(),
        "{}\nsshd:\n{}",
        text(&again),
        f.sftp.log()
    );
}

/// How often the drill's supervisor repeats an alert that still holds.
const ALERT_REPEAT_SECS: u64 = 10;

/// Step 4: Another machine answers as the server (a new host key): repo2 is refused and
/// status names it; repo1 and the database go on. With the backup disk past 80% too, the
/// webhook gets both conditions raised, repeated and cleared, in order.
fn another_host_key(f: &mut Backups) {
    f.sftp.change_host_key(false);
    let impostor = f.vm.cli("backup now", &["--type", "incr"]);
    assert_repo2_failed(&f.vm, &impostor);
    let status_text = text(&f.vm.cli("status", &[]));
    assert!(
        status_text.contains("mismatch in known hosts"),
        "status names the host key: {status_text}"
    );
    let wait = Duration::from_secs(60);
    assert!(
        f.alerts.wait("offsite-refused", "raised", wait).is_some(),
        "the refused off-device copy reaches the webhook: {:?}",
        f.alerts.received()
    );
    f.vm.query(
        "copy (select 1) to program 'cd /backup/pgbackrest && fallocate -l $(( $(df --output=size -B1 . | tail -n 1) * 86 / 100 - $(df --output=used -B1 . | tail -n 1) )) alert-filler'",
    )
    .expect("fill the backup disk past 80%");
    assert!(
        f.alerts.wait("backup-disk-full", "raised", wait).is_some(),
        "the filling backup disk reaches the webhook: {:?}",
        f.alerts.received()
    );
    let listed: Vec<String> =
        f.vm.status()
            .alerts
            .iter()
            .filter(|a| a.since_unix > 0)
            .map(|a| a.condition.to_string())
            .collect();
    assert!(
        listed.contains(&"offsite-refused".to_string())
            && listed.contains(&"backup-disk-full".to_string()),
        "status lists both with since when: {listed:?}"
    );
    let repeat = Duration::from_secs(ALERT_REPEAT_SECS + 30);
    for condition in ["offsite-refused", "backup-disk-full"] {
        assert!(
            f.alerts.wait(condition, "repeated", repeat).is_some(),
            "{condition} is said again while it holds: {:?}",
            f.alerts.received()
        );
    }
    f.sftp.change_host_key(true);
    f.vm.query("copy (select 1) to program 'rm -f /backup/pgbackrest/alert-filler'")
        .expect("free the backup disk");
    let again = f.vm.cli("backup now", &["--type", "incr"]);
    assert!(
        again.status.success(),
        "with the key back: {}",
        text(&again)
    );
    for condition in ["offsite-refused", "backup-disk-full"] {
        let cleared = f.alerts.wait(condition, "cleared", wait);
        let got = f.alerts.received();
        let at = |state: &str| {
            got.iter()
                .position(|r| r.condition == condition && r.state == state)
        };
        assert!(
            cleared.is_some() && at("raised") < at("repeated") && at("repeated") < cleared,
            "{condition}: raised, repeated, cleared, in that order: {got:?}"
        );
    }
    assert!(
        f.vm.status().alerts.is_empty(),
        "nothing holds: {:?}",
        f.vm.status().alerts
    );
}

/// Step 5: Rows from the second node, a differential backup, a time T, more rows, a drop,
/// all archived.
fn rows_and_a_drop(f: &mut Backups) {
    f.psql_ok(
        &format!(
            "create table rows_written (id int primary key, at timestamptz not null default clock_timestamp());\n\
             create table kept (note text);\ninsert into kept values ('still here');\n\
             create table marker (m text);\ninsert into marker values ('{MARKER}');\n"
        ),
    );
    f.insert_rows(1, 20);
    let diff = f.vm.cli("backup now", &["--type", "diff"]);
    assert!(diff.status.success(), "backup now: {}", text(&diff));
    assert!(
        text(&diff).contains("diff backup") && text(&diff).contains("in the repository"),
        "{}",
        text(&diff)
    );
    f.insert_rows(21, 40);
    let t = f.psql_ok(
        "select pg_sleep(1);\nselect to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"');\nselect pg_sleep(1);\n",
    );
    f.target = t.lines().last().unwrap().trim().to_string();
    f.insert_rows(41, 60);
    f.psql_ok("drop table kept;\n");
    f.dropped_at = f.now_unix();
    // archive_timeout is 10 s: the segment holding the drop reaches the repository.
    f.wait_archived_past(f.dropped_at, "the drop");
}

/// Step 6: Bad targets are refused and nothing stops.
fn bad_targets_refused(f: &mut Backups) {
    let vm = &f.vm;
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
        f.psql_ok("select count(*) from rows_written;\n"),
        "60",
        "refused restores leave the database alone"
    );
}

/// Step 7: A power cut during the restore: the next boot puts the data from before it back.
fn restore_power_cut(f: &mut Backups) {
    cut_and_start(
        &f.vm,
        "restore",
        &["--to", &f.target, "--yes"],
        "pgbackrest restore --",
        "this boot put the data from before it back in place",
    );
    let undone = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        f.psql("select count(*), max(id) from rows_written;\nselect count(*) from pg_tables where tablename = 'kept';\n")
            .ok()
    });
    assert_eq!(
        undone.as_deref(),
        Some("60|60\n0"),
        "the database as it was before the interrupted restore"
    );
    // The archiver's statistics did not survive the power cut, so the window reaches
    // only the newest set until the next segment is archived: a write, and its segment.
    f.psql_ok("create table after_the_cut (x int);\nselect pg_switch_wal();\n");
    f.wait_archived_past(f.dropped_at, "the window reaching past the drop again");
}

/// Step 8: The restore itself: exactly the rows committed before T, and the dropped table.
fn restore_to_a_time(f: &mut Backups) {
    let t = &f.target;
    let restored = f.vm.cli("restore", &["--to", t, "--yes"]);
    assert!(
        restored.status.success(),
        "restore --to {t}: {}\nconsole:\n{}",
        text(&restored),
        f.vm.console()
    );
    assert!(
        text(&restored).contains("kept as /data/postgres.before-restore-"),
        "{}",
        text(&restored)
    );
    let back = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        f.psql("select count(*), max(id) from rows_written;\nselect note from kept;\n")
            .ok()
    });
    assert_eq!(
        back.as_deref(),
        Some("40|40\nstill here"),
        "exactly the rows committed before {t}, and the dropped table"
    );
}

/// Step 9: The catalog, `backup verify`, and writes after the restore reaching the archive.
fn catalog_and_verify(f: &mut Backups) {
    let vm = &f.vm;
    let listed = catalog(vm);
    let kinds: Vec<BackupKind> = listed.sets.iter().map(|s| s.kind).collect();
    assert!(
        kinds.contains(&BackupKind::Full) && kinds.contains(&BackupKind::Diff),
        "{listed:?}"
    );
    assert!(listed.window.is_some(), "{listed:?}");
    let table = text(&vm.cli("backup list", &[]));
    assert!(table.contains("restorable to any time from"), "{table}");
    assert!(table.contains(&f.first_full), "{table}");
    let verified = vm.cli("backup verify", &[]);
    assert!(
        verified.status.success(),
        "backup verify: {}",
        text(&verified)
    );
    f.insert_rows(100, 110);
    assert_eq!(f.psql_ok("select count(*) from rows_written;\n"), "51");
    f.wait_archived_past(f.now_unix(), "the rows written after the restore");
}

/// Step 10: Disaster: the data disk is gone. `--new-disk` refuses a running VM, then, with
/// the VM stopped, restores onto a new disk from the backup disk; the node comes back
/// under its own tailnet name with every archived row.
fn restore_onto_a_new_disk(f: &mut Backups) {
    let vm = &f.vm;
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
    // Cut by a power cut while it restores, the restore onto the new disk is finished
    // by the next plain start, which carries no request (a crash restart used to fail
    // with "the data disk already holds a database cluster").
    cut_and_start(
        vm,
        "restore",
        &["--new-disk", "--to", "latest", "--yes"],
        "new data disk: restoring",
        "a restore onto the new data disk was interrupted",
    );
    assert_eq!(
        f.count_rows().as_deref(),
        Some("51|110"),
        "every archived row, by name from the second node"
    );
}

/// Step 11: The repository out to a file and back; the database holds `51|110` before.
fn export_round_trip(f: &mut Backups) {
    let vm = &f.vm;
    let file = vm.home.path().join("repo.tar");
    let out = vm.cli("backup export", &["--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "backup export: {}", text(&out));
    assert!(text(&out).contains("sha256"), "{}", text(&out));
    let size = std::fs::metadata(&file).expect("the export file").len();
    assert!(size > 1 << 20, "an export of {size} bytes");
    assert!(!vm.home.path().join("repo.tar.partial").exists());
    assert_private(&file);
    assert_sealed(&file);
    refuses_a_planted_link(vm, "backup export", &[]);
    f.insert_rows(200, 205);

    // Another passphrase does not open it, and nothing changes.
    let right = std::fs::read(&f.passphrase_file).unwrap();
    std::fs::write(&f.passphrase_file, "another-passphrase-0123456789\n").unwrap();
    let refused = restore_latest_from_export(vm, &file);
    std::fs::write(&f.passphrase_file, &right).unwrap();
    assert!(
        !refused.status.success() && text(&refused).contains("does not open"),
        "{}",
        text(&refused)
    );
    assert_eq!(f.count_rows().as_deref(), Some("57|205"));

    // A cut file (an interrupted `adb pull`) is refused and nothing changes.
    let cut = vm.home.path().join("cut.tar");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let refused = restore_latest_from_export(vm, &cut);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert_eq!(f.count_rows().as_deref(), Some("57|205"));

    // A power cut once the export became the repository: the next boot puts the data
    // and the repository from before the import back.
    cut_and_start(
        vm,
        "restore",
        &from_export(&file),
        "the export is now the repository",
        "the backup repository from before the import is back too",
    );
    assert_eq!(
        f.count_rows().as_deref(),
        Some("57|205"),
        "the database as it was before the interrupted import"
    );

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
        f.count_rows().as_deref(),
        Some("51|110"),
        "the rows of the export's time, not the ones written after it"
    );
    assert_eq!(f.psql_ok("select m from marker;\n"), MARKER);
    f.whole_export_bytes = size;
}

/// Step 12: `backup export SET` after a new full set: the file holds that set and what
/// follows, none of the older sets, and is smaller than the whole export; restoring
/// from it gives the rows of its time, and the imported repository lists only the sets
/// it holds.
fn export_from_one_set(f: &mut Backups) {
    let vm = &f.vm;
    let whole = f.whole_export_bytes;
    let full = vm.cli("backup now", &["--type", "full"]);
    assert!(full.status.success(), "backup now: {}", text(&full));
    let sets = repo1_sets(vm);
    let newest = newest_full(&sets);
    let older: Vec<&String> = sets
        .iter()
        .filter(|s| s.started_unix < newest.started_unix)
        .map(|s| &s.label)
        .collect();
    assert!(!older.is_empty(), "older sets to leave out: {sets:?}");

    let file = vm.home.path().join("from-set.tar");
    let out = vm.cli(
        "backup export",
        &[newest.label.as_str(), "--output", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "backup export SET: {}", text(&out));
    let size = std::fs::metadata(&file).expect("the export file").len();
    assert!(size < whole, "{size} bytes from one set on, {whole} whole");
    let names = tar_names(&opened(&file, &f.passphrase_file));
    assert!(
        names.contains(&format!("/{}/backup.manifest", newest.label)),
        "{names}"
    );
    for label in &older {
        assert!(
            !names.contains(label.as_str()),
            "{label} is left out:\n{names}"
        );
    }
    let nowhere = vm.home.path().join("unknown-set.tar");
    let unknown = vm.cli(
        "backup export",
        &["20000101-000000F", "--output", nowhere.to_str().unwrap()],
    );
    assert!(!unknown.status.success());
    assert!(!nowhere.exists(), "nothing is left of a refused export");
    assert!(
        text(&unknown).contains("no complete backup set \"20000101-000000F\""),
        "{}",
        text(&unknown)
    );

    f.insert_rows(300, 302);
    let restored = restore_latest_from_export(vm, &file);
    assert!(
        restored.status.success(),
        "restore --from-export of one set: {}\nconsole:\n{}",
        text(&restored),
        vm.console()
    );
    assert_eq!(f.count_rows().as_deref(), Some("51|110"));
    let after = repo1_labels(vm);
    assert_eq!(
        after.first(),
        Some(&newest.label),
        "the older sets are expired: {after:?}"
    );
    println!(
        "export from {} on: {size} bytes (whole: {whole}); sets after its import: {after:?}",
        newest.label
    );
}

/// Step 13: The app connects with what `db url` prints, by name from the second node; another
/// app's role cannot even connect to its database; TLS verify-full works against the CA
/// `db ca` prints, and another CA is refused.
fn app_isolation_and_tls(f: &mut Backups) {
    let vm = &f.vm;
    let url = vm.cli("db url", &["forgejo"]);
    assert!(url.status.success(), "db url: {}", text(&url));
    let uri = String::from_utf8_lossy(&url.stdout).trim().to_string();
    assert!(
        uri.starts_with("postgresql://forgejo:") && uri.ends_with("@sql-vm:5432/forgejo"),
        "{uri}"
    );
    let me = f.psql_url(&uri, "select current_user;\n");
    assert_eq!(
        String::from_utf8_lossy(&me.stdout).trim(),
        "forgejo",
        "{}",
        text(&me)
    );
    let vaultwarden = vm.cli("db url", &["vaultwarden", "--format", "keyvalue"]);
    assert!(vaultwarden.status.success(), "{}", text(&vaultwarden));
    let intruder = String::from_utf8_lossy(&vaultwarden.stdout)
        .trim()
        .replace("dbname='vaultwarden'", "dbname='forgejo'");
    let refused = f.psql_url(&intruder, "select 1;\n");
    assert!(
        !refused.status.success() && text(&refused).contains("permission denied for database"),
        "vaultwarden reached forgejo's database: {}",
        text(&refused)
    );
    // Nor the maintenance and template databases: CONNECT is the superuser's alone.
    for db in ["postgres", "template1"] {
        let elsewhere = intruder.replace("dbname='forgejo'", &format!("dbname='{db}'"));
        let refused = f.psql_url(&elsewhere, "select 1;\n");
        assert!(
            !refused.status.success()
                && text(&refused).contains(&format!("permission denied for database \"{db}\"")),
            "an app's role connected to {db}: {}",
            text(&refused)
        );
    }

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
    let ssl = f.psql_url(
        &tls_uri,
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
        &percent_path(Path::new("/etc/ssl/certs/ca-certificates.crt")),
    );
    assert_ne!(wrong_ca, tls_uri);
    let refused = f.psql_url(&wrong_ca, "select 1;\n");
    assert!(
        !refused.status.success() && text(&refused).contains("certificate verify failed"),
        "a server not signed by the given CA must be refused: {}",
        text(&refused)
    );
    f.forgejo_uri = uri;
}

/// As the app: `sql`'s output, failing the step when psql fails.
fn as_forgejo(f: &Backups, sql: &str) -> String {
    let o = f.psql_url(&f.forgejo_uri, sql);
    assert!(o.status.success(), "psql as forgejo {sql:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Step 14: One app's database out to a file and back, a power cut during the load first;
/// status and `db list` show each database.
fn app_dump_round_trip(f: &mut Backups) {
    let vm = &f.vm;
    as_forgejo(
        f,
        "create table issue (id int primary key, title text not null);\n\
         insert into issue select g, 'issue ' || g from generate_series(1, 300) g;\n",
    );
    let dump = vm.home.path().join("forgejo.dump");
    let out = vm.cli("db dump", &["forgejo", "--output", dump.to_str().unwrap()]);
    assert!(out.status.success(), "db dump: {}", text(&out));
    assert_private(&dump);
    refuses_a_planted_link(vm, "db dump", &["forgejo"]);
    let unknown = vm.cli("db dump", &["gitea", "--output", dump.to_str().unwrap()]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("not in the spec"),
        "{}",
        text(&unknown)
    );

    as_forgejo(
        f,
        "delete from issue where id > 100;\ncreate table junk (x int);\n",
    );
    // A power cut while the dump loads: the app's database is untouched and takes
    // connections, the half-loaded copy is dropped by the next boot.
    cut_and_start(
        vm,
        "db restore",
        &["forgejo", dump.to_str().unwrap(), "--yes"],
        "db restore forgejo: loading the dump",
        "a db restore of forgejo was interrupted",
    );
    let intact = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        let o = f.psql_url(
            &f.forgejo_uri,
            "select count(*) from issue;\nselect count(*) from pg_tables where tablename = 'junk';\n",
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    assert_eq!(
        intact.as_deref(),
        Some("100\n1"),
        "forgejo's database as it was before the interrupted restore"
    );
    let leftovers = vm
        .query("select count(*) from pg_database where datname like 'forgejo_restoring_%'")
        .unwrap();
    assert_eq!(
        leftovers.trim(),
        "0",
        "the half-loaded database was dropped"
    );

    let restored = vm.cli("db restore", &["forgejo", dump.to_str().unwrap(), "--yes"]);
    assert!(restored.status.success(), "db restore: {}", text(&restored));
    assert!(
        text(&restored).contains("kept as forgejo_before_restore_"),
        "{}",
        text(&restored)
    );
    assert_eq!(
        as_forgejo(
            f,
            "select count(*) from issue;\n\
             select count(*) from pg_tables where tablename = 'junk';\n\
             select tableowner from pg_tables where tablename = 'issue';\n"
        ),
        "300\n0\nforgejo",
        "the dumped rows, owned by the app, and nothing of the later changes"
    );
    let dbs = db_list(vm);
    let app = find_db(&dbs, "forgejo");
    assert_eq!(
        (app.kind, app.owner.as_str(), app.connection_limit),
        (DbKind::App, "forgejo", Some(20)),
        "{dbs:?}"
    );
    assert_eq!(
        find_db(&dbs, "forgejo_before_restore_").kind,
        DbKind::KeptByRestore,
        "{dbs:?}"
    );
    // The status view: the server's role, connections, and each database.
    let database = vm.status().database.expect("the database view in status");
    assert_eq!(
        (database.role.as_str(), database.max_connections),
        ("primary", 50),
        "{database:?}"
    );
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
}

/// Step 15: a dump is the app's data and may hold any SQL. One crafted to `RESET ROLE`
/// and make the app a superuser (its comment's text replaced, byte for byte, in the
/// archive's table of contents) fails to load, since the load runs in the app's own
/// session; the app stays an ordinary role and its database is as it was.
fn crafted_dump(f: &mut Backups) {
    let vm = &f.vm;
    let filler = "A".repeat(120);
    as_forgejo(f, &format!("COMMENT ON TABLE issue IS '{filler}';\n"));
    let dump = vm.home.path().join("crafted.dump");
    let out = vm.cli("db dump", &["forgejo", "--output", dump.to_str().unwrap()]);
    assert!(out.status.success(), "db dump: {}", text(&out));
    let mut bytes = std::fs::read(&dump).unwrap();
    let at = bytes
        .windows(filler.len())
        .position(|w| w == filler.as_bytes())
        .expect("the comment's text in the archive's table of contents");
    let payload = format!(
        "{:<width$}",
        "x'; RESET ROLE; ALTER ROLE forgejo SUPERUSER; SELECT '",
        width = filler.len()
    );
    bytes[at..at + filler.len()].copy_from_slice(payload.as_bytes());
    std::fs::write(&dump, &bytes).unwrap();

    let o = vm.cli("db restore", &["forgejo", dump.to_str().unwrap(), "--yes"]);
    println!("db restore of the crafted dump: {}", text(&o));
    assert!(
        !o.status.success() && text(&o).contains("permission denied"),
        "the crafted dump loads only with the app's rights: {}",
        text(&o)
    );
    assert_eq!(
        vm.query("select rolsuper from pg_roles where rolname = 'forgejo'")
            .unwrap()
            .trim(),
        "f",
        "forgejo is still an ordinary role"
    );
    assert_eq!(as_forgejo(f, "select count(*) from issue;\n"), "300");
}

/// `db list --json`, read as the protocol's type.
fn db_list(vm: &Vm) -> Vec<DbEntry> {
    let list = vm.cli("db list", &["--json"]);
    assert!(list.status.success(), "db list: {}", text(&list));
    serde_json::from_slice(&list.stdout).unwrap()
}

/// The first database whose name starts with `name`.
fn find_db(dbs: &[DbEntry], name: &str) -> DbEntry {
    dbs.iter()
        .find(|d| d.name.starts_with(name))
        .cloned()
        .unwrap_or_else(|| panic!("no database {name}*: {dbs:?}"))
}

/// Step 16: `db drop`: never an app the spec names, never without a yes, always after a dump.
fn db_drop(f: &mut Backups) {
    let vm = &f.vm;
    let kept = find_db(&db_list(vm), "forgejo_before_restore_").name;
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

/// Step 17: The backup disk fills up (all of it: a compressed segment of a few rows fits in
/// a mebibyte): archiving fails and status says why; the database takes writes; with
/// the space back, archiving catches up and nothing is lost.
fn full_backup_disk(f: &mut Backups) {
    if !heavy_variant(
        "backups: WAL archiving on a full backup disk (waits out the 120 s archive-timeout)",
    ) {
        return;
    }
    let vm = &f.vm;
    vm.query(
        "copy (select 1) to program 'cd /backup/pgbackrest && fallocate -l $(( $(df --output=avail -B1 . | tail -n 1) - 1048576 )) filler && (dd if=/dev/zero of=filler2 bs=64k 2>/dev/null; true)'",
    )
    .expect("fill the backup disk");
    vm.query("create table while_full (id int); insert into while_full select generate_series(1, 5); select pg_switch_wal()")
        .expect("the database takes writes while the backup disk is full");
    // The async push's foreground waits archive-timeout (120 s) before it gives up.
    let failing = wait_for(Duration::from_secs(300), Duration::from_secs(1), || {
        let a = backup_status(vm).archive;
        let failed = a.last_failed_unix?;
        (failed >= a.last_archived_unix.unwrap_or(0)).then_some(())
    });
    assert!(
        failing.is_some(),
        "archiving fails on a full disk: {:?}",
        backup_status(vm)
    );
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains("✗ WAL archiving is failing") && status_text.contains("✗ FULL"),
        "{status_text}"
    );
    vm.query(
        "copy (select 1) to program 'rm -f /backup/pgbackrest/filler /backup/pgbackrest/filler2'",
    )
    .expect("free the backup disk");
    let caught_up = wait_for(Duration::from_secs(180), Duration::from_secs(1), || {
        let a = backup_status(vm).archive;
        (a.last_archived_unix? > a.last_failed_unix?).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "archiving catches up: {:?}",
        backup_status(vm)
    );
}

/// Step 18: Both disks are lost; repo2 alone brings every archived row back. The last rows
/// reach repo2 only as WAL shipped from repo1 (every 10 s), after the last set.
fn both_disks_lost(f: &mut Backups) {
    let incr = f.vm.cli("backup now", &["--type", "incr"]);
    assert!(incr.status.success(), "backup now: {}", text(&incr));
    f.insert_rows(400, 409);
    f.wait_archived_past(f.now_unix(), "rows 400-409");
    let vm = &f.vm;
    let shipped = wait_for(Duration::from_secs(180), Duration::from_secs(1), || {
        let b = backup_status(vm);
        let archived = b.archive.last_archived_wal?;
        let shipped = b.offsite?.shipped_wal?;
        (shipped >= archived).then_some(shipped)
    });
    assert!(
        shipped.is_some(),
        "not shipped to repo2: {:?}",
        backup_status(vm)
    );
    // The server holds only ciphertext: no row in the clear, no readable catalog.
    let repo2 = f.sftp.dir.join("repo");
    let files = files_under(&repo2);
    assert!(
        files.len() > 10,
        "repo2 holds the sets and the WAL: {files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} holds a row in the clear",
            file.display()
        );
        assert!(
            !bytes.starts_with(b"[backrest]"),
            "{} is a catalog in the clear",
            file.display()
        );
    }
    println!(
        "repo2: {} files, none readable without the passphrase",
        files.len()
    );
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    std::fs::remove_file(vm.home.path().join("postgres.img")).unwrap();
    std::fs::remove_file(vm.home.path().join("backup.img")).unwrap();
    // As the README says for a lost phone: its node leaves the tailnet first, or the
    // new VM is named sql-vm-1 and its tailscale stage fails saying so.
    f.lab
        .headscale
        .delete_node("sql-vm")
        .expect("remove the lost node");
    // On the new phone, another passphrase reads nothing of repo2 and says so.
    let right = std::fs::read(&f.passphrase_file).unwrap();
    std::fs::write(&f.passphrase_file, "another-passphrase-0123456789\n").unwrap();
    let refused = vm.cli("restore", &["--new-disk", "--to", "latest", "--yes"]);
    std::fs::write(&f.passphrase_file, &right).unwrap();
    assert!(
        !refused.status.success() && text(&refused).contains("does not decrypt"),
        "{}",
        text(&refused)
    );
    let _ = vm.stop();
    f.lab
        .headscale
        .delete_node("sql-vm")
        .expect("remove the refused start's node");
    let recovered = vm.cli("restore", &["--new-disk", "--to", "latest", "--yes"]);
    assert!(
        recovered.status.success(),
        "restore --new-disk from repo2: {}\nconsole:\n{}\nsshd:\n{}",
        text(&recovered),
        vm.console(),
        f.sftp.log()
    );
    assert_eq!(
        f.count_rows().as_deref(),
        Some("61|409"),
        "every archived row, from the off-device copy"
    );
    assert_eq!(f.psql_ok("select m from marker;\n"), MARKER);
}

/// Step 19: Only the backup disk is lost: start says what that means, the database serves
/// every row, and a new full backup fills the new repo1.
fn only_the_backup_disk_lost(f: &mut Backups) {
    if !heavy_variant("backups: a lost backup disk refilled by a new full backup") {
        return;
    }
    let vm = &f.vm;
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    std::fs::remove_file(vm.home.path().join("backup.img")).unwrap();
    let out = vm.start_ok();
    assert!(
        out.contains("the backup disk was missing while the data disk exists")
            && out.contains("repo2 keeps its own"),
        "{out}"
    );
    assert_eq!(f.count_rows().as_deref(), Some("61|409"));
}

/// Boots the VM with its clock `days` ahead and waits for the full set the schedule
/// takes by itself (a full is due every day); returns repo1's sets after it.
fn boot_days_ahead_until_a_new_full(vm: &Vm, days: i64) -> Vec<BackupSet> {
    let newest_before = newest_full(&repo1_sets(vm)).label;
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    let out = vm.start_ok_days_ahead(days);
    assert!(out.contains("the guest's clock will be"), "{out}");
    let taken = wait_for(Duration::from_secs(600), Duration::from_secs(1), || {
        let sets = repo1_sets(vm);
        (newest_full(&sets).label != newest_before).then_some(sets)
    });
    taken.unwrap_or_else(|| {
        panic!(
            "no scheduled full backup {days} days ahead: {:?}\n{}",
            backup_status(vm),
            text(&vm.cli("logs", &["pgbackrest"]))
        )
    })
}

/// Step 20: Time-based retention (here one day, a full set due every day), with days passing
/// by booting the guest with its clock moved ahead. pgBackRest keeps the newest full set
/// older than the retention (the window needs it) and expires everything before it on the
/// backup disk, and the recovery window still covers what it keeps. Rows are untouched.
fn retention(f: &mut Backups) {
    if !heavy_variant("backups: retention with the guest's clock two and four days ahead") {
        return;
    }
    let vm = &f.vm;
    // The backup disk is new since step 18: its first full set is taken after ready.
    let first = wait_for(Duration::from_secs(600), Duration::from_secs(1), || {
        repo1_sets(vm)
            .iter()
            .any(|s| s.kind == BackupKind::Full)
            .then_some(())
    });
    assert!(
        first.is_some(),
        "a full set on the new backup disk: {:?}",
        backup_status(vm)
    );
    let spec = std::fs::read_to_string(&vm.spec).unwrap();
    let spec = spec.replacen("[backup]\n", "[backup]\nretention_days = 1\n", 1)
        + "[backup.schedule]\nfull_every_days = 1\n";
    std::fs::write(&vm.spec, spec).unwrap();
    // One more full set today, so that one set is older than the newest full.
    let full = vm.cli("backup now", &["--type", "full"]);
    assert!(full.status.success(), "backup now: {}", text(&full));
    let today = repo1_sets(vm);
    let full_today = newest_full(&today);
    assert!(
        today
            .iter()
            .any(|s| s.started_unix < full_today.started_unix),
        "the drill has sets older than its newest full one to expire: {today:?}"
    );

    // Two days ahead: today's newest full is now older than the retention and is kept
    // (it covers the window's start); every set before it is expired.
    let ahead2 = boot_days_ahead_until_a_new_full(vm, 2);
    assert!(
        ahead2
            .iter()
            .all(|s| s.started_unix >= full_today.started_unix),
        "sets before {} are expired: {ahead2:?}",
        full_today.label
    );
    assert!(
        ahead2.iter().any(|s| s.label == full_today.label),
        "{} is kept, the window needs it: {ahead2:?}",
        full_today.label
    );
    let full_2 = newest_full(&ahead2);

    // Four days ahead: the full set of two days ahead is the newest past the
    // retention; today's sets go, and the window starts at that set.
    let ahead4 = boot_days_ahead_until_a_new_full(vm, 4);
    assert!(
        ahead4.iter().all(|s| s.started_unix >= full_2.started_unix),
        "sets before {} are expired: {ahead4:?}",
        full_2.label
    );
    assert_eq!(
        ahead4.iter().filter(|s| s.kind == BackupKind::Full).count(),
        2,
        "{} and the one just taken: {ahead4:?}",
        full_2.label
    );
    // The window still covers every set repo1 keeps. It may start earlier: repo2 keeps
    // its own sets (and their WAL) until its next backup expires them.
    let earliest = backup_status(vm).window.map(|w| w.earliest_unix);
    assert!(
        earliest.is_some_and(|e| e <= full_2.started_unix),
        "the window reaches back to {}: {:?}",
        full_2.label,
        backup_status(vm)
    );
    assert_eq!(f.count_rows().as_deref(), Some("61|409"));
    let labels = |sets: &[BackupSet]| sets.iter().map(|s| s.label.clone()).collect::<Vec<_>>();
    println!(
        "retention: today {:?}\n  two days ahead {:?}\n  four days ahead {:?}, window from {earliest:?}",
        labels(&today),
        labels(&ahead2),
        labels(&ahead4)
    );
}

/// Step 21: A backup disk that is not ours (here: its superblock overwritten) is never
/// formatted; postgres serves without archiving and status says why.
fn foreign_backup_disk(f: &mut Backups) {
    let vm = &f.vm;
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
    assert_eq!(
        f.count_rows().as_deref(),
        Some("61|409"),
        "postgres serves without backups"
    );
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}

/// Step 22: both disks and the passphrase file are gone; the user has the export of
/// step 11 and the passphrase they kept. `backup key --set` takes it, and one
/// `restore --new-disk --from-export` brings the export's rows back.
fn new_phone_from_an_export(f: &mut Backups) {
    let vm = &f.vm;
    // Stopped by the step before; a stop of a stopped VM changes nothing.
    let _ = vm.stop();
    let kept = std::fs::read_to_string(&f.passphrase_file).unwrap();
    for img in ["postgres.img", "backup.img"] {
        std::fs::remove_file(vm.home.path().join(img)).unwrap();
    }
    std::fs::remove_file(&f.passphrase_file).unwrap();
    f.lab
        .headscale
        .delete_node("sql-vm")
        .expect("remove the lost phone's node");

    let mut set = vm
        .command("backup key", &["--set"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        set.stdin
            .take()
            .unwrap()
            .write_all(kept.as_bytes())
            .unwrap();
    }
    let set = set.wait_with_output().unwrap();
    assert!(set.status.success(), "backup key --set: {}", text(&set));

    let export = vm.home.path().join("repo.tar");
    let restored = vm.cli(
        "restore",
        &[
            "--new-disk",
            "--from-export",
            export.to_str().unwrap(),
            "--to",
            "latest",
            "--yes",
        ],
    );
    assert!(
        restored.status.success(),
        "restore --new-disk --from-export: {}\nconsole:\n{}",
        text(&restored),
        vm.console()
    );
    assert!(
        text(&restored).contains("the export is now the backup disk's repository"),
        "{}",
        text(&restored)
    );
    assert_eq!(
        f.count_rows().as_deref(),
        Some("51|110"),
        "the rows of the export's time"
    );
    assert_eq!(f.psql_ok("select m from marker;\n"), MARKER);
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}
