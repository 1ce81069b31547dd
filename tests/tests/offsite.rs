//! The off-device copy on real components: OpenSSH's SFTP server on the second tailnet
//! node, reached by the guest's pgBackRest by tailnet name with a pinned host key.
//! One VM and one lab, in order:
//!
//! 1. the first full backup lands in both repositories by itself, and status shows repo2;
//! 2. with the SFTP server down, `backup now` still makes its set on the backup disk,
//!    fails for repo2 naming why, status says so, and the database serves;
//! 3. with the server back, `backup now` reaches both again;
//! 4. disaster: the data disk and the backup disk are both gone; `restore --new-disk`
//!    brings every archived row back from repo2 alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for, Daemon};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::Vm;
use sovereign_tests::vm_test;
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
    vm.query("insert into rows_written select generate_series(31, 45)")
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
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}
