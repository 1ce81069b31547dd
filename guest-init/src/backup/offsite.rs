//! repo2, off the device: pgBackRest's SFTP repository on a server reached over the
//! tailnet by name. PID 1 writes the private key (from the control channel) and the
//! one host key the server may present into /run (tmpfs), renders the `repo2-*`
//! options, and makes the server's tailnet name resolvable for pgBackRest by asking
//! tailscaled (the guest's resolver is gvproxy's, which knows no tailnet names).

use crate::owned_files::{self, OwnedFileError, Owner};
use protocol::backup::OffsiteConfig;
use std::net::Ipv4Addr;
use std::path::Path;

/// The client's private key, readable by root only: code running as postgres (a
/// superuser's `COPY ... TO PROGRAM`) must not be able to log in to the server and
/// delete the off-device copies.
pub const KEY_FILE: &str = "/run/pgbackrest-root/offsite.key";

/// The known-hosts file: the server's host key and nothing else.
pub const KNOWN_HOSTS: &str = "/run/pgbackrest-root/offsite-known-hosts";

/// The hosts file, where the server's tailnet name is pinned to its tailnet address.
const HOSTS_FILE: &str = "/etc/hosts";

/// Marks the line of [`HOSTS_FILE`] this module owns.
const HOSTS_MARK: &str = "# sovereign: backup.offsite";

/// Writes the key and the known-hosts file, root's alone.
pub fn write_credentials(cfg: &OffsiteConfig) -> Result<(), OwnedFileError> {
    write_key_and_host(cfg, Owner { uid: 0, gid: 0 }, KEY_FILE, KNOWN_HOSTS)
}

/// Writes the private key and the server's host key to `key_file` and `hosts_file`,
/// owned by `owner`, readable by it alone.
fn write_key_and_host(
    cfg: &OffsiteConfig,
    owner: Owner,
    key_file: &str,
    hosts_file: &str,
) -> Result<(), OwnedFileError> {
    let mut key = cfg.private_key.expose().trim().to_string();
    key.push('\n');
    owned_files::write_file(Path::new(key_file), key.as_bytes(), 0o600, owner)?;
    owned_files::write_file(
        Path::new(hosts_file),
        known_hosts(cfg).as_bytes(),
        0o600,
        owner,
    )
}

/// The known-hosts lines for the server: under its name as pgBackRest asks for it
/// (`[name]:port` off port 22).
fn known_hosts(cfg: &OffsiteConfig) -> String {
    let key = cfg.host_key.split_whitespace().take(2).collect::<Vec<_>>();
    let key = key.join(" ");
    if cfg.port == 22 {
        format!("{} {key}\n", cfg.host)
    } else {
        format!("[{}]:{} {key}\n", cfg.host, cfg.port)
    }
}

/// A copy of the key postgres may read, only while a server restored from repo2
/// replays WAL from it (see [`super::Backups::recovery_finished`]).
pub const RECOVERY_KEY_FILE: &str = "/run/pgbackrest/recovery-offsite.key";

/// The server's host key where postgres's `restore_command` can read it during that
/// recovery ([`KNOWN_HOSTS`] is in root's directory).
pub const RECOVERY_KNOWN_HOSTS: &str = "/run/pgbackrest/recovery-known-hosts";

/// Writes the copies of the key and the known-hosts file for a recovery from repo2,
/// postgres's.
pub fn write_recovery_key(cfg: &OffsiteConfig, owner: Owner) -> Result<(), OwnedFileError> {
    write_key_and_host(cfg, owner, RECOVERY_KEY_FILE, RECOVERY_KNOWN_HOSTS)
}

/// How long a connection to the server may stay silent (pgBackRest's default, 60 s,
/// is how long every attempt waits when the server is out of reach: a backup and each
/// read of repo2's catalog). Nothing on a working tailnet stalls for this long.
const IO_TIMEOUT_SECS: u32 = 20;

/// The pgbackrest.conf lines for repo2 (in `[global]`), with the key at `key_file`.
pub fn config_lines(
    cfg: &OffsiteConfig,
    retention_days: u32,
    key_file: &str,
    known_hosts_file: &str,
) -> String {
    format!(
        "repo2-type=sftp\n\
         repo2-path={path}\n\
         repo2-sftp-host={host}\n\
         repo2-sftp-host-port={port}\n\
         repo2-sftp-host-user={user}\n\
         repo2-sftp-private-key-file={key_file}\n\
         repo2-sftp-host-key-check-type=strict\n\
         repo2-sftp-host-key-hash-type=sha256\n\
         repo2-sftp-known-host={known_hosts_file}\n\
         repo2-bundle=y\n\
         repo2-retention-full-type=time\n\
         repo2-retention-full={retention_days}\n\
         repo2-cipher-type=aes-256-cbc\n\
         repo2-cipher-pass={passphrase}\n\
         io-timeout={IO_TIMEOUT_SECS}\n",
        passphrase = cfg.passphrase.expose(),
        path = cfg.path,
        host = cfg.host,
        port = cfg.port,
        user = cfg.user,
    )
}

/// `user@host:path`, for status and logs.
pub fn target(cfg: &OffsiteConfig) -> String {
    format!("{}@{}:{}", cfg.user, cfg.host, cfg.path)
}

/// Why repo2's server has no address now.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("'{0}' is not a node of this tailnet (tailscale ip found no address)")]
    NotInTailnet(String),
    #[error("cannot pin the server's address in the hosts file: {0}")]
    Pin(#[source] crate::owned_files::OwnedFileError),
}

/// Looks the server's name up in the tailnet and pins it in the hosts file; `Err` says
/// why it could not (the name is not a node of the tailnet, tailscaled is down).
pub fn resolve(cfg: &OffsiteConfig) -> Result<Ipv4Addr, ResolveError> {
    let ip = crate::tailscale::peer_ipv4(&cfg.host)
        .ok_or_else(|| ResolveError::NotInTailnet(cfg.host.clone()))?;
    let current = std::fs::read_to_string(HOSTS_FILE).unwrap_or_default();
    let wanted = with_pinned(&current, &cfg.host, ip);
    if wanted != current {
        owned_files::write_file(
            Path::new(HOSTS_FILE),
            wanted.as_bytes(),
            0o644,
            Owner { uid: 0, gid: 0 },
        )
        .map_err(ResolveError::Pin)?;
        log::info!("offsite backups: {} is {ip} in the tailnet", cfg.host);
    }
    Ok(ip)
}

/// `hosts` with this module's line replaced by one pinning `name` to `ip`.
fn with_pinned(hosts: &str, name: &str, ip: Ipv4Addr) -> String {
    let mut out: String = hosts
        .lines()
        .filter(|l| !l.ends_with(HOSTS_MARK))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{ip}\t{name}\t{HOSTS_MARK}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::Secret;

    fn cfg(port: u16) -> OffsiteConfig {
        OffsiteConfig {
            host: "backup-box".into(),
            port,
            user: "sovereign".into(),
            path: "/srv/sovereign".into(),
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost root@box".into(),
            private_key: Secret::new(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nk\n-----END OPENSSH PRIVATE KEY-----",
            ),
            passphrase: Secret::new("a-long-backup-passphrase-1234"),
        }
    }

    #[test]
    fn the_server_is_known_by_its_name_and_port_and_nothing_else() {
        assert_eq!(
            known_hosts(&cfg(22)),
            "backup-box ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost\n"
        );
        assert_eq!(
            known_hosts(&cfg(2222)),
            "[backup-box]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost\n"
        );
        let conf = config_lines(&cfg(2222), 7, KEY_FILE, KNOWN_HOSTS);
        for line in [
            "repo2-type=sftp",
            "repo2-sftp-private-key-file=/run/pgbackrest-root/offsite.key",
            "repo2-cipher-type=aes-256-cbc",
            "repo2-cipher-pass=a-long-backup-passphrase-1234",
            "repo2-sftp-host=backup-box",
            "repo2-sftp-host-port=2222",
            "repo2-sftp-host-key-check-type=strict",
            "repo2-sftp-known-host=/run/pgbackrest-root/offsite-known-hosts",
            "repo2-retention-full=7",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in {conf}");
        }
        assert!(!conf.contains("PRIVATE KEY"), "the key stays in its file");
    }

    #[test]
    fn the_pinned_line_is_replaced_not_repeated() {
        let base = "127.0.0.1\tlocalhost\n";
        let once = with_pinned(base, "backup-box", Ipv4Addr::new(100, 64, 0, 2));
        let twice = with_pinned(&once, "backup-box", Ipv4Addr::new(100, 64, 0, 3));
        assert!(twice.starts_with(base));
        assert_eq!(twice.matches(HOSTS_MARK).count(), 1);
        assert!(twice.contains("100.64.0.3\tbackup-box"));
    }
}
