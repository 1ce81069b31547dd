//! `sovereign cluster`: a primary and its replicas, each a VM on a host of its own (or
//! several on one), brought up and shown by one command run on one host. The cluster
//! file names each node's VM spec and the way to its host ([`transport`]); the nodes'
//! own specs say who is the primary and who its peers are, and must agree. Everything
//! a node does it does through its own `sovereign`, so a cluster is nothing but the
//! steps a user would type on each host, in the right order, checked.

pub mod node;
pub mod status;
pub mod transport;
pub mod up;

use node::{Node, NodeError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a cluster file cannot be used.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot read the cluster file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cluster file {path}: {cause}")]
    Parse {
        path: PathBuf,
        cause: toml::de::Error,
    },
    #[error("cluster file {path}: {field}: {why}")]
    Invalid {
        path: PathBuf,
        field: String,
        why: String,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// The cluster file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    node: Vec<NodeEntry>,
}

/// One `[[node]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Its VM spec on its host (relative paths: against the cluster file's directory,
    /// for nodes on this host).
    pub spec: String,
    /// `local`, `adb:SERIAL` or `ssh:HOST`.
    #[serde(default = "local")]
    pub via: String,
    /// The `sovereign` program on that host.
    pub sovereign: Option<String>,
    /// Its `SOVEREIGN_HOME` on that host, when not the default.
    pub home: Option<String>,
}

fn local() -> String {
    "local".to_string()
}

/// A cluster whose nodes' specs were read and agree.
#[derive(Debug)]
pub struct Cluster {
    /// Every node, the primary first.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Reads the cluster file at `path` and every node's spec (through its transport),
    /// and checks they describe one cluster.
    pub fn load(path: &Path) -> Result<Cluster, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ClusterError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let file: ClusterFile = toml::from_str(&text).map_err(|cause| ClusterError::Parse {
            path: path.to_path_buf(),
            cause,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut nodes = Vec::new();
        for (i, entry) in file.node.iter().enumerate() {
            nodes.push(Node::read(i, entry, dir)?);
        }
        let invalid = |field: String, why: String| ClusterError::Invalid {
            path: path.to_path_buf(),
            field,
            why,
        };
        check(&nodes).map_err(|(field, why)| invalid(field, why))?;
        nodes.sort_by_key(|n| !n.is_primary());
        Ok(Cluster { nodes })
    }

    /// The primary (by its spec).
    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }

    /// The replicas (by their specs).
    pub fn replicas(&self) -> &[Node] {
        &self.nodes[1..]
    }
}

/// Whether the nodes' specs describe one cluster: two nodes or more, one primary,
/// distinct names, each node's peers exactly the others. `Err((field, why))`.
fn check(nodes: &[Node]) -> Result<(), (String, String)> {
    if nodes.len() < 2 {
        return Err((
            "node".into(),
            format!(
                "names {} node(s); a cluster has a primary and at least one replica",
                nodes.len()
            ),
        ));
    }
    let primaries: Vec<&str> = nodes
        .iter()
        .filter(|n| n.is_primary())
        .map(|n| n.hostname.as_str())
        .collect();
    if primaries.len() != 1 {
        return Err((
            "node[*].spec".into(),
            format!(
                "exactly one node's spec must say replication.role = \"primary\"; these do: [{}]",
                primaries.join(", ")
            ),
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        if nodes[..i].iter().any(|m| m.hostname == n.hostname) {
            return Err((
                format!("node[{i}].spec"),
                format!(
                    "{} names hostname {:?}, as an earlier node does",
                    n.spec, n.hostname
                ),
            ));
        }
        let mut others: Vec<&str> = nodes
            .iter()
            .filter(|m| m.hostname != n.hostname)
            .map(|m| m.hostname.as_str())
            .collect();
        let mut peers: Vec<&str> = n.peers.iter().map(String::as_str).collect();
        others.sort_unstable();
        peers.sort_unstable();
        if others != peers {
            return Err((
                format!("node[{i}].spec"),
                format!(
                    "{} ({}) names replication.peers [{}]; the cluster's other nodes are [{}]",
                    n.spec,
                    n.hostname,
                    peers.join(", "),
                    others.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn spec(host: &str, role: &str, peers: &[&str]) -> String {
        let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        format!(
            "hostname = {host:?}\n[replication]\nrole = {role:?}\npeers = [{}]\ncredentials_file = \"c\"\n",
            peers.join(", ")
        )
    }

    #[test]
    fn a_three_node_file_loads_with_the_primary_first() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "r1.toml",
            &spec("sql-r1", "replica", &["sql-vm", "sql-r2"]),
        );
        write(
            d.path(),
            "vm.toml",
            &spec("sql-vm", "primary", &["sql-r1", "sql-r2"]),
        );
        write(
            d.path(),
            "r2.toml",
            &spec("sql-r2", "replica", &["sql-r1", "sql-vm"]),
        );
        write(
            d.path(),
            "cluster.toml",
            "[[node]]\nspec = \"r1.toml\"\n[[node]]\nspec = \"vm.toml\"\n[[node]]\nspec = \"r2.toml\"\nhome = \"/var/lib/r2\"\n",
        );
        let c = Cluster::load(&d.path().join("cluster.toml")).unwrap();
        assert_eq!(c.primary().hostname, "sql-vm");
        let names: Vec<&str> = c.replicas().iter().map(|n| n.hostname.as_str()).collect();
        assert_eq!(names, ["sql-r1", "sql-r2"]);
        assert_eq!(
            c.replicas()[0].credentials_file.as_deref(),
            Some(d.path().join("c").display().to_string().as_str())
        );
    }

    #[test]
    fn specs_that_disagree_are_refused_naming_the_node() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.toml", &spec("sql-vm", "primary", &["sql-r1"]));
        write(
            d.path(),
            "b.toml",
            &spec("sql-r1", "replica", &["sql-vm", "sql-r2"]),
        );
        write(
            d.path(),
            "c.toml",
            &spec("sql-r2", "primary", &["sql-vm", "sql-r1"]),
        );
        let file = |specs: &[&str]| {
            let text: String = specs
                .iter()
                .map(|s| format!("[[node]]\nspec = {s:?}\n"))
                .collect();
            write(d.path(), "cluster.toml", &text);
            Cluster::load(&d.path().join("cluster.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = file(&["a.toml"]);
        assert!(e.contains("node: names 1 node(s)"), "{e}");
        let e = file(&["a.toml", "b.toml", "c.toml"]);
        assert!(
            e.contains("exactly one node") && e.contains("[sql-vm, sql-r2]"),
            "{e}"
        );
        let e = file(&["a.toml", "b.toml"]);
        assert!(
            e.contains("node[1].spec")
                && e.contains("peers [sql-r2, sql-vm]; the cluster's other nodes are [sql-vm]"),
            "{e}"
        );
        write(
            d.path(),
            "cluster.toml",
            "[[node]]\nspec = \"a.toml\"\nvia = \"telnet:x\"\n",
        );
        let e = Cluster::load(&d.path().join("cluster.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"telnet:x\""), "{e}");
    }
}
