//! repo2 on the control channel: where the off-device copy of the backups lives (part
//! of the [`crate::backup::BackupConfig`], with the private key), and how it is doing
//! (part of the [`crate::backup::BackupStatus`]).

use crate::backup::BackupRun;
use crate::config::ConfigError;
use serde::{Deserialize, Serialize};

/// repo2: a copy of every backup set and of the archived WAL on an SFTP server reached
/// over the tailnet, so the backups outlive the phone. The private key travels only in
/// the [`crate::GuestConfig`] over the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsiteConfig {
    /// The server's tailnet name (MagicDNS or its short host name), never an address.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// The account the repository belongs to.
    pub user: String,
    /// The repository's absolute path on the server.
    pub path: String,
    /// The server's public host key, `<type> <base64>` as in its `ssh_host_*_key.pub`:
    /// the only key the guest accepts from it.
    pub host_key: String,
    /// The client's private key (OpenSSH format).
    pub private_key: crate::config::Secret,
    /// The passphrase repo2 is encrypted with (pgBackRest's `aes-256-cbc`): the server
    /// holds only ciphertext. The same passphrase encrypts exports on the host.
    pub passphrase: crate::config::Secret,
}

impl OffsiteConfig {
    /// Checks every field; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_target()?;
        if !self.private_key.expose().contains("PRIVATE KEY-----") {
            return Err(ConfigError::Invalid {
                field: "backup.offsite.private_key",
                value: "(not shown)".into(),
                why: "must be a private key in OpenSSH or PEM format (ssh-keygen -t ed25519)",
            });
        }
        if !is_passphrase(self.passphrase.expose()) {
            return Err(ConfigError::Invalid {
                field: "backup.passphrase",
                value: "(not shown)".into(),
                why: "must be 20-256 printable ASCII characters without spaces",
            });
        }
        Ok(())
    }

    /// Checks the fields that say where the server is and who it is (all but the
    /// private key): what a spec can be checked for without reading secrets.
    pub fn validate_target(&self) -> Result<(), ConfigError> {
        let invalid = |field, value: String, why| ConfigError::Invalid { field, value, why };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        };
        let is_name = self.host.split('.').all(label_ok)
            && self.host.parse::<std::net::IpAddr>().is_err()
            && !self.host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !is_name {
            return Err(invalid(
                "backup.offsite.host",
                self.host.clone(),
                "must be the server's tailnet name (letters, digits, '-' and '.'), not an address",
            ));
        }
        if self.port == 0 {
            return Err(invalid(
                "backup.offsite.port",
                "0".into(),
                "must be a TCP port (1-65535)",
            ));
        }
        let user_ok = !self.user.is_empty()
            && self.user.len() <= 32
            && self
                .user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !user_ok {
            return Err(invalid(
                "backup.offsite.user",
                self.user.clone(),
                "must be an account name (letters, digits, '-', '_', '.')",
            ));
        }
        let path_ok = self.path.starts_with('/')
            && self.path.len() > 1
            && !self.path.split('/').any(|c| c == "..")
            && !self
                .path
                .bytes()
                .any(|b| b.is_ascii_control() || b == b'"' || b == b'\\');
        if !path_ok {
            return Err(invalid(
                "backup.offsite.path",
                self.path.clone(),
                "must be an absolute path on the server, without '..'",
            ));
        }
        let mut parts = self.host_key.split_whitespace();
        let key_ok = matches!(
            (parts.next(), parts.next()),
            (Some(kind), Some(b64))
                if (kind.starts_with("ssh-") || kind.starts_with("ecdsa-"))
                    && b64.len() >= 16
                    && b64.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        );
        if !key_ok {
            return Err(invalid(
                "backup.offsite.host_key",
                self.host_key.chars().take(40).collect(),
                "must be the server's public host key, '<type> <base64>' as in its ssh_host_ed25519_key.pub",
            ));
        }
        Ok(())
    }
}

/// True for a backup passphrase we accept: 20-256 printable ASCII characters without
/// spaces (it goes into pgbackrest.conf as one value).
pub fn is_passphrase(s: &str) -> bool {
    (20..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// repo2 in the guest's status: where it is and how its backups went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsiteStatus {
    /// `user@host:path`.
    pub target: String,
    /// Why repo2 cannot be used now (pgBackRest's message: unreachable, host key
    /// refused, authentication failed), when it cannot.
    pub problem: Option<String>,
    /// The newest run to repo2, whatever its outcome.
    pub last_run: Option<BackupRun>,
    /// The newest run to repo2 that made a set.
    pub last_ok: Option<BackupRun>,
    /// Number of sets in repo2.
    pub sets: usize,
    /// The newest WAL file shipped from repo1 to repo2.
    #[serde(default)]
    pub shipped_wal: Option<String>,
    /// When it was shipped.
    #[serde(default)]
    pub shipped_unix: Option<i64>,
    /// Why shipping WAL to repo2 stopped short in its last round, when it did.
    #[serde(default)]
    pub shipping_problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsite() -> OffsiteConfig {
        OffsiteConfig {
            host: "backup-box".into(),
            port: 22,
            user: "sovereign".into(),
            path: "/srv/sovereign".into(),
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKnownHostKey".into(),
            private_key: crate::config::Secret::new(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
            ),
            passphrase: crate::config::Secret::new("a-long-backup-passphrase-1234"),
        }
    }

    #[test]
    fn offsite_errors_name_the_field_and_addresses_are_refused() {
        let mut c = crate::backup::BackupConfig::with_defaults("/dev/vdc");
        c.offsite = Some(offsite());
        assert_eq!(c.validate(), Ok(()));
        type Spoil = fn(&mut OffsiteConfig);
        let cases: [(Spoil, &str); 9] = [
            (|o| o.host = "100.64.0.2".into(), "backup.offsite.host"),
            (
                |o| o.host = "fd7a:115c:a1e0::2".into(),
                "backup.offsite.host",
            ),
            (|o| o.host = "box;rm".into(), "backup.offsite.host"),
            (|o| o.port = 0, "backup.offsite.port"),
            (|o| o.user = "a b".into(), "backup.offsite.user"),
            (|o| o.path = "/srv/../etc".into(), "backup.offsite.path"),
            (|o| o.host_key = "AAAA".into(), "backup.offsite.host_key"),
            (
                |o| o.private_key = crate::config::Secret::new("hunter2hunter2"),
                "backup.offsite.private_key",
            ),
            (
                |o| o.passphrase = crate::config::Secret::new("too short"),
                "backup.passphrase",
            ),
        ];
        for (spoil, field) in cases {
            let mut o = offsite();
            spoil(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
            assert!(!e.contains("hunter2"), "the key is never shown: {e}");
        }
    }
}
