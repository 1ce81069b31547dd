//! The spec's `[replication]` table: this VM's role in a cluster, the other nodes'
//! tailnet names (`peer` for one, `peers` for several), and (on a replica's host) the
//! credentials file the primary's host wrote with `sovereign replica credentials` (or
//! `sovereign cluster up` handed over).

use super::Problem;
use protocol::replication::Role;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[replication]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplicationFile {
    role: Role,
    peer: Option<String>,
    peers: Option<Vec<String>>,
    credentials_file: Option<PathBuf>,
    synchronous: Option<bool>,
    require_peer_at_boot: Option<bool>,
}

/// Streaming replication with the other VMs of a cluster, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSpec {
    /// What an empty data disk becomes: a new cluster, or a copy of the peer.
    pub role: Role,
    /// The other VMs' tailnet names, in the order a replica tries them (the primary's
    /// first).
    pub peers: Vec<String>,
    /// The replication password on this host (generated on a primary's host, taken
    /// from `credentials_file` on a replica's).
    pub password_file: PathBuf,
    /// What `sovereign replica credentials` wrote on the primary's host: the
    /// replication password and the cluster's own passwords (a replica's roles are the
    /// primary's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Commits wait for one peer's disk: quorum commit, `ANY 1 (...)` over the peers
    /// (`synchronous_standby_names`).
    #[serde(default)]
    pub synchronous: bool,
    /// A primary none of whose peers answers at boot waits for one instead of starting
    /// (safety over availability): nothing else rules out that a peer was promoted.
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
            peers: match (self.peer, self.peers) {
                (Some(one), Some(more)) => std::iter::once(one).chain(more).collect(),
                (one, more) => one.into_iter().chain(more.unwrap_or_default()).collect(),
            },
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
        let field = if self.peers.len() > 1 {
            "replication.peers"
        } else {
            "replication.peer"
        };
        if self.peers.is_empty() {
            p.push(Problem::new(
                "replication.peers",
                "",
                "name the other VMs by tailnet name (`peer = \"sql-replica\"`, or `peers = [...]` for several)",
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if !protocol::config::is_dns_label(peer) {
                p.push(Problem::new(
                    field,
                    peer,
                    "must be another VM's tailnet name (a DNS label)",
                ));
            } else if peer == hostname {
                p.push(Problem::new(
                    field,
                    peer,
                    "is this VM's own hostname; name the other VMs",
                ));
            } else if self.peers[..i].contains(peer) {
                p.push(Problem::new(field, peer, "is named twice"));
            }
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

        let two = parse(
            "hostname = \"sql-r1\"\n[replication]\nrole = \"primary\"\npeer = \"sql-vm\"\npeers = [\"sql-r2\", \"sql-r1\", \"sql-r2\"]\n",
            dir.path(),
        )
        .unwrap();
        let r = two.replication.as_ref().unwrap();
        assert_eq!(r.peers, ["sql-vm", "sql-r2", "sql-r1", "sql-r2"]);
        let said: Vec<String> = r
            .problems(&two.hostname)
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("replication.peers") && said[0].contains("own hostname"));
        assert!(said[1].contains("named twice"), "{said:?}");

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
        let none = parse("[replication]\nrole = \"primary\"\n", dir.path()).unwrap();
        let said = none.replication.unwrap().problems("sql-vm");
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].field, "replication.peers");
        let single = parse("", dir.path()).unwrap();
        assert!(single.replication.is_none());
        assert!(!single.to_toml().contains("replication"));
    }
}
