//! The off-device copy on real components: OpenSSH's SFTP server on the second tailnet
//! node, reached by the guest's pgBackRest by tailnet name with a pinned host key.
//! One VM and one lab, in order:
//!
//! 1. the first full backup lands in both repositories by itself, and status shows repo2;
//! 2. with the SFTP server down, `backup now` still makes its set on the backup disk,
//!    fails for repo2 naming why, status says so, and the database serves;
//! 3. with the server back, `backup now` reaches both again; with another host key
//!    for the server, repo2 is refused and status says so; with the backup disk full,
//!    WAL archiving fails, status says why, the database takes writes, and with the
//!    space back archiving catches up;
//! 4. disaster: the data disk and the backup disk are both gone; `restore --new-disk`
//!    brings every archived row back from repo2 alone;
//! 5. only the backup disk is lost: `start` says what that means, every row is served,
//!    and a new full backup fills the new backup disk.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for, Daemon};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::Vm;
use sovereign_tests::{heavy_variant, vm_test};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";
const SFTP_PORT: u16 = 2222;

/// OpenSSH's sshd in the peer's namespace, serving SFTP only, to one key.
struct SftpServer {
    dir: PathBuf,
    daemon: Option<Daemon>,
    peer_ns: String,
}

impl SftpServer {
    /// Host key, client key (for the VM) and config in `dir`; not started yet.
    fn prepare(dir: &Path, peer: &TailNode) -> SftpServer {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        for (key, comment) in [("host_key", "sftp-host"), ("client_key", "sql-vm")] {
            let o = run(Command::new("ssh-keygen").args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
                &dir.join(key).to_string_lossy(),
            ]));
            assert!(o.status.success(), "ssh-keygen: {}", text(&o));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::create_dir_all(dir.join("repo")).unwrap();
        let config = format!(
            "Port {SFTP_PORT}\nListenAddress 0.0.0.0\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nSubsystem sftp internal-sftp\nForceCommand internal-sftp\n\
             PidFile none\nLogLevel VERBOSE\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        SftpServer {
            dir: dir.to_path_buf(),
            daemon: None,
            peer_ns: peer.ns_name().to_string(),
        }
    }

    fn start(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.peer_ns, SSHD, "-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"));
        self.daemon = Some(Daemon::spawn("sshd", &mut cmd, &self.dir.join("sshd.log")));
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("host_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Another host key for the same name and port: what the guest sees when another
    /// machine answers as the server. `back` puts the original key back.
    fn change_host_key(&mut self, back: bool) {
        self.stop();
        let (key, kept) = (self.dir.join("host_key"), self.dir.join("host_key.orig"));
        if back {
            std::fs::rename(&kept, &key).unwrap();
            std::fs::rename(kept.with_extension("orig.pub"), key.with_extension("pub")).unwrap();
        } else {
            std::fs::rename(&key, &kept).unwrap();
            std::fs::rename(key.with_extension("pub"), kept.with_extension("orig.pub")).unwrap();
            let o = run(Command::new("ssh-keygen").args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "impostor",
                "-f",
                &key.to_string_lossy(),
            ]));
            assert!(o.status.success(), "ssh-keygen: {}", text(&o));
        }
        self.start();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn backup_status(vm: &Vm) -> serde_json::Value {
    vm.status()["guest"]["backup"].clone()
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn backups_reach_an_sftp_server_over_the_tailnet_and_restore_from_it_alone() {
    let Some(a) = vm_test("offsite") else { return };
    if !Path::new(SSHD).exists() {
        panic!("{SSHD} is missing: scripts/ci-deps.sh installs openssh-server");
    }
    let mut lab = Lab::start(&a.tools, "off").expect("lab");
    let lab_dir = lab.dir.path().to_path_buf();
    let peer = lab.join_peer().expect("second node joins");
    let mut sftp = SftpServer::prepare(&lab_dir.join("sftp"), peer);
    sftp.start();
    let mut opts = lab.vm_options();
    opts.backup_toml = format!(
        "archive_timeout_secs = 10\n[backup.offsite]\nhost = \"peer\"\nport = {SFTP_PORT}\n\
         user = \"root\"\npath = \"{repo}\"\nhost_key = \"{key}\"\nprivate_key_file = \"{client}\"\n",
        repo = sftp.dir.join("repo").display(),
        key = sftp.host_key(),
        client = sftp.dir.join("client_key").display(),
    );
    let vm = Vm::new(&a, &opts);
    vm.start_ok();

    // 1. The first full backup reaches both repositories by itself.
    let both = wait_for(Duration::from_secs(600), Duration::from_secs(5), || {
        let b = backup_status(&vm);
        let local = b["last_ok"]["label"].as_str()?.to_string();
        let offsite = b["offsite"]["last_ok"]["label"].as_str()?.to_string();
        Some((local, offsite))
    });
    assert!(
        both.is_some(),
        "no full backup in both repositories: {}\n{}\nsshd:\n{}",
        backup_status(&vm),
        text(&vm.cli("logs", &["pgbackrest"])),
        sftp.log()
    );
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains(&format!(
            "offsite:  root@peer:{}",
            sftp.dir.join("repo").display()
        )),
        "{status_text}"
    );
    assert!(
        sftp.log().contains("Accepted publickey for root"),
        "the guest logged in with its key:\n{}",
        sftp.log()
    );
    vm.query("create table rows_written (id int primary key); insert into rows_written select generate_series(1, 30)")
        .expect("rows");

    // 2. The server goes away: repo1 still takes its set, repo2's failure is named.
    sftp.stop();
    let partial = vm.cli("backup now", &["--type", "incr"]);
    assert_eq!(partial.status.code(), Some(1), "{}", text(&partial));
    assert!(
        text(&partial).contains("to repo1 (backup disk) done")
            && text(&partial).contains("to repo2 (offsite) failed"),
        "{}",
        text(&partial)
    );
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains("✗ last offsite backup (incr at"),
        "{status_text}"
    );
    assert_eq!(
        vm.query("select count(*) from rows_written")
            .unwrap()
            .trim(),
        "30",
        "the database serves while repo2 is away"
    );

    // 3. Back again: both repositories take the next set.
    sftp.start();
    let again = vm.cli("backup now", &["--type", "diff"]);
    assert!(
        again.status.success(),
        "{}\nsshd:\n{}",
        text(&again),
        sftp.log()
    );

    // 3b. Another machine answers as the server (a new host key): repo2 is refused and
    // status names it; repo1 and the database go on.
    sftp.change_host_key(false);
    let impostor = vm.cli("backup now", &["--type", "incr"]);
    assert_eq!(impostor.status.code(), Some(1), "{}", text(&impostor));
    assert!(
        text(&impostor).contains("to repo1 (backup disk) done")
            && text(&impostor).contains("to repo2 (offsite) failed"),
        "{}",
        text(&impostor)
    );
    let status_text = text(&vm.cli("status", &[]));
    assert!(
        status_text.contains("✗ last offsite backup (incr at"),
        "{status_text}"
    );
    assert!(
        status_text.contains("mismatch in known hosts"),
        "status names the host key: {status_text}"
    );
    sftp.change_host_key(true);

    // 3c. The backup disk fills up: archiving fails and status says why; the database
    // takes writes; with the space back, archiving catches up and nothing is lost.
    // All of it: a compressed segment of a few rows fits in a mebibyte.
    if heavy_variant(
        "offsite: WAL archiving on a full backup disk (waits out the 120 s archive-timeout)",
    ) {
        vm.query(
            "copy (select 1) to program 'cd /backup/pgbackrest && fallocate -l $(( $(df --output=avail -B1 . | tail -n 1) - 1048576 )) filler && (dd if=/dev/zero of=filler2 bs=64k 2>/dev/null; true)'",
        )
        .expect("fill the backup disk");
        vm.query("insert into rows_written select generate_series(31, 35)")
            .expect("the database takes writes while the backup disk is full");
        vm.query("select pg_switch_wal()").expect("switch");
        // The async push's foreground waits archive-timeout (120 s) before it gives up.
        let failing = wait_for(Duration::from_secs(300), Duration::from_secs(5), || {
            let a = &backup_status(&vm)["archive"];
            let failed = a["last_failed_unix"].as_i64()?;
            (failed >= a["last_archived_unix"].as_i64().unwrap_or(0)).then_some(())
        });
        assert!(
            failing.is_some(),
            "archiving fails on a full disk: {}",
            backup_status(&vm)
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
        let caught_up = wait_for(Duration::from_secs(180), Duration::from_secs(5), || {
            let a = &backup_status(&vm)["archive"];
            (a["last_archived_unix"].as_i64()? > a["last_failed_unix"].as_i64()?).then_some(())
        });
        assert!(
            caught_up.is_some(),
            "archiving catches up: {}",
            backup_status(&vm)
        );
    } else {
        vm.query("insert into rows_written select generate_series(31, 35)")
            .expect("rows 31-35");
    }

    vm.query("insert into rows_written select generate_series(36, 45)")
        .expect("more rows");
    let last_insert: i64 = vm
        .query("select extract(epoch from clock_timestamp())::bigint")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let archived = wait_for(Duration::from_secs(180), Duration::from_secs(5), || {
        let w = backup_status(&vm)["window"]["latest_unix"].as_i64()?;
        (w > last_insert).then_some(w)
    });
    assert!(archived.is_some(), "archived: {}", backup_status(&vm));

    // repo2 gets WAL by shipping from repo1 (every 10 s): the rows are off the device
    // once the segment that holds them is shipped.
    let shipped = wait_for(Duration::from_secs(180), Duration::from_secs(5), || {
        let b = backup_status(&vm);
        let archived = b["archive"]["last_archived_wal"].as_str()?.to_string();
        let shipped = b["offsite"]["shipped_wal"].as_str()?.to_string();
        (shipped >= archived).then_some(shipped)
    });
    assert!(
        shipped.is_some(),
        "not shipped to repo2: {}",
        backup_status(&vm)
    );

    // 4. Both disks are lost; repo2 alone brings the rows back.
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    std::fs::remove_file(vm.home.path().join("postgres.img")).unwrap();
    std::fs::remove_file(vm.home.path().join("backup.img")).unwrap();
    // As the README says for a lost phone: its node leaves the tailnet first, or the
    // new VM is named sql-vm-1 and its tailscale stage fails saying so.
    lab.headscale
        .delete_node("sql-vm")
        .expect("remove the lost node");
    let recovered = vm.cli("restore", &["--new-disk", "--to", "latest", "--yes"]);
    assert!(
        recovered.status.success(),
        "restore --new-disk from repo2: {}\nconsole:\n{}\nsshd:\n{}",
        text(&recovered),
        vm.console(),
        sftp.log()
    );
    let back = wait_for(Duration::from_secs(180), Duration::from_secs(3), || {
        vm.query("select count(*), max(id) from rows_written").ok()
    });
    assert_eq!(
        back.as_deref().map(str::trim),
        Some("45|45"),
        "every archived row, from the off-device copy"
    );

    // 5. Only the backup disk is lost: start says what that means, the database serves
    // every row, and a new full backup fills the new repo1.
    if heavy_variant("offsite: a lost backup disk refilled by a new full backup") {
        let stopped = vm.stop();
        assert!(stopped.status.success(), "stop: {}", text(&stopped));
        std::fs::remove_file(vm.home.path().join("backup.img")).unwrap();
        let out = vm.start_ok();
        assert!(
            out.contains("the backup disk was missing while the data disk exists")
                && out.contains("repo2 keeps its own"),
            "{out}"
        );
        assert_eq!(
            vm.query("select count(*), max(id) from rows_written")
                .unwrap()
                .trim(),
            "45|45"
        );
        let fresh = wait_for(Duration::from_secs(600), Duration::from_secs(5), || {
            backup_status(&vm)["last_ok"]["label"]
                .as_str()
                .map(str::to_string)
        });
        assert!(
            fresh.is_some(),
            "a new full backup on the new disk: {}",
            backup_status(&vm)
        );
    }
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}
