//! The spec's `[replication]` table: this VM's role in a two-node cluster, the peer's
//! tailnet name, and (on a replica's host) the credentials file the primary's host
//! wrote with `sovereign replica credentials`.

use super::Problem;
use protocol::replication::Role;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[replication]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplicationFile {
    role: Role,
    peer: String,
    credentials_file: Option<PathBuf>,
    synchronous: Option<bool>,
    require_peer_at_boot: Option<bool>,
}

/// Streaming replication with a peer VM, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSpec {
    /// What an empty data disk becomes: a new cluster, or a copy of the peer.
    pub role: Role,
    /// The other VM's tailnet name.
    pub peer: String,
    /// The replication password on this host (generated on a primary's host, taken
    /// from `credentials_file` on a replica's).
    pub password_file: PathBuf,
    /// What `sovereign replica credentials` wrote on the primary's host: the
    /// replication password and the cluster's own passwords (a replica's roles are the
    /// primary's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Commits wait for the peer's disk (`synchronous_standby_names`).
    #[serde(default)]
    pub synchronous: bool,
    /// A primary whose peer does not answer at boot waits for it instead of starting
    /// (safety over availability): nothing else rules out that the peer was promoted.
    #[serde(default)]
    pub require_peer_at_boot: bool,
}

impl ReplicationFile {
    /// Resolves paths (`in_dir`) and the default password file.
    pub(super) fn resolve(
        self,
        in_dir: impl Fn(PathBuf) -> PathBuf,
        secrets_dir: &Path,
        name: &str,
    ) -> ReplicationSpec {
        ReplicationSpec {
            role: self.role,
            peer: self.peer,
            password_file: secrets_dir.join(format!("{name}-replication.password")),
            credentials_file: self.credentials_file.map(in_dir),
            synchronous: self.synchronous.unwrap_or(false),
            require_peer_at_boot: self.require_peer_at_boot.unwrap_or(false),
        }
    }
}

impl ReplicationSpec {
    /// What is wrong with it for a VM called `hostname`.
    pub fn problems(&self, hostname: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if !protocol::config::is_dns_label(&self.peer) {
            p.push(Problem::new(
                "replication.peer",
                &self.peer,
                "must be the other VM's tailnet name (a DNS label)",
            ));
        } else if self.peer == hostname {
            p.push(Problem::new(
                "replication.peer",
                &self.peer,
                "is this VM's own hostname; name the other VM",
            ));
        }
        match (&self.credentials_file, self.role) {
            (None, Role::Replica) => p.push(Problem::new(
                "replication.credentials_file",
                "",
                "a replica needs the file `sovereign replica credentials --out FILE` writes on the primary's host",
            )),
            (Some(f), _) if !f.is_file() => p.push(Problem::new(
                "replication.credentials_file",
                f.display(),
                "does not exist: run `sovereign replica credentials --out FILE` on the primary's host and copy the file here (mode 0600)",
            )),
            _ => {}
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::tests::env_in;
    use crate::spec::Spec;

    fn parse(text: &str, dir: &std::path::Path) -> Result<Spec, String> {
        Spec::parse(text, dir, &env_in(dir, false), "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_replica_names_another_peer_and_a_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = parse(
            "hostname = \"sql-replica\"\n[replication]\nrole = \"replica\"\npeer = \"sql-replica\"\n",
            dir.path(),
        )
        .unwrap();
        let r = s.replication.as_ref().unwrap();
        assert_eq!(
            r.password_file,
            dir.path().join("secrets/sql-replication.password")
        );
        assert!(!r.synchronous && !r.require_peer_at_boot);
        let fields: Vec<String> = r
            .problems(&s.hostname)
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["replication.peer", "replication.credentials_file"]);

        let creds = dir.path().join("sql-vm.credentials");
        std::fs::write(&creds, "x").unwrap();
        let s = parse(
            "hostname = \"sql-replica\"\n[replication]\nrole = \"replica\"\npeer = \"sql-vm\"\ncredentials_file = \"sql-vm.credentials\"\nsynchronous = true\nrequire_peer_at_boot = true\n",
            dir.path(),
        )
        .unwrap();
        let r = s.replication.as_ref().unwrap();
        assert_eq!(r.credentials_file.as_deref(), Some(creds.as_path()));
        assert!(r.synchronous && r.require_peer_at_boot);
        assert!(r.problems(&s.hostname).is_empty());
    }

    #[test]
    fn a_primary_needs_only_its_peer_and_odd_roles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = parse(
            "[replication]\nrole = \"primary\"\npeer = \"sql-replica\"\n",
            dir.path(),
        )
        .unwrap();
        assert!(s.replication.unwrap().problems("sql-vm").is_empty());
        let e = parse(
            "[replication]\nrole = \"leader\"\npeer = \"x\"\n",
            dir.path(),
        )
        .unwrap_err();
        assert!(e.contains("leader") && e.contains("primary"), "{e}");
        let e = parse("[replication]\nrole = \"primary\"\n", dir.path()).unwrap_err();
        assert!(e.contains("peer"), "{e}");
        let single = parse("", dir.path()).unwrap();
        assert!(single.replication.is_none());
        assert!(!single.to_toml().contains("replication"));
    }
}
