//! OpenSSH's SFTP server on the second tailnet node: where the off-device copy (repo2)
//! goes in the tests, reached by the guest's pgBackRest by tailnet name with a pinned
//! host key.

use crate::process::{run, text, Daemon};
use crate::tailnode::TailNode;
use std::path::{Path, PathBuf};
use std::process::Command;

/// OpenSSH's server (Debian's openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";
/// The port it serves SFTP on, in the second node's namespace.
pub const SFTP_PORT: u16 = 2222;

/// OpenSSH's sshd in the peer's namespace, serving SFTP only, to one key.
#[derive(Debug)]
pub struct SftpServer {
    /// Its keys, config, log and the repository directory (`repo`).
    pub dir: PathBuf,
    daemon: Option<Daemon>,
    peer_ns: String,
}

impl SftpServer {
    /// Host key, client key (for the VM) and config in `dir`; not started yet.
    pub fn prepare(dir: &Path, peer: &TailNode) -> SftpServer {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        keygen(&dir.join("host_key"), "sftp-host");
        keygen(&dir.join("client_key"), "sql-vm");
        // As the README tells users to restrict the VM's key: SFTP and nothing else.
        let public = std::fs::read_to_string(dir.join("client_key.pub")).unwrap();
        std::fs::write(
            dir.join("authorized_keys"),
            format!("restrict,command=\"internal-sftp\" {}", public.trim_end()) + "\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("repo")).unwrap();
        let config = format!(
            "Port {SFTP_PORT}\nListenAddress 0.0.0.0\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nSubsystem sftp internal-sftp\n\
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

    /// Starts sshd (again).
    pub fn start(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.peer_ns, SSHD, "-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"));
        self.daemon = Some(Daemon::spawn("sshd", &mut cmd, &self.dir.join("sshd.log")));
    }

    /// Stops sshd: the server is away.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    /// Its public host key, as the spec pins it.
    pub fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("host_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Another host key for the same name and port: what the guest sees when another
    /// machine answers as the server. `back` puts the original key back.
    pub fn change_host_key(&mut self, back: bool) {
        self.stop();
        let (key, kept) = (self.dir.join("host_key"), self.dir.join("host_key.orig"));
        if back {
            std::fs::rename(&kept, &key).unwrap();
            std::fs::rename(kept.with_extension("orig.pub"), key.with_extension("pub")).unwrap();
        } else {
            std::fs::rename(&key, &kept).unwrap();
            std::fs::rename(key.with_extension("pub"), kept.with_extension("orig.pub")).unwrap();
            keygen(&key, "impostor");
        }
        self.start();
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new ed25519 key pair at `path` (and `path.pub`), without a passphrase.
fn keygen(path: &Path, comment: &str) {
    let o = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
    assert!(o.status.success(), "ssh-keygen: {}", text(&o));
}
