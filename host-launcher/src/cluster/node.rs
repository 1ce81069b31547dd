//! One node of a cluster as the host running `sovereign cluster` sees it: the way to
//! its host, its own `sovereign` there, and what its VM spec says (hostname, role,
//! peers, where its credentials go, its apps). Every action is that node's own
//! launcher run on its host.

use super::transport::{Transport, TransportError};
use super::NodeEntry;
use protocol::replication::Role;
use protocol::status::VmStatus;
use std::path::Path;
use std::process::Output;
use thiserror::Error;

/// Why a node could not be read or asked.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("node[{index}]: cannot read its spec {spec} on {via}: {why}")]
    Spec {
        index: usize,
        spec: String,
        via: String,
        why: String,
    },
    #[error("{node}: `{command}` failed ({status}): {output}")]
    Failed {
        node: String,
        command: String,
        status: String,
        output: String,
    },
}

/// A node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its VM spec on its host.
    pub spec: String,
    /// The way to its host.
    pub via: Transport,
    /// Its `sovereign` on that host.
    pub launcher: String,
    /// Environment for its launcher (`SOVEREIGN_HOME`).
    pub env: Vec<(String, String)>,
    /// Its tailnet name (the spec's `hostname`).
    pub hostname: String,
    /// What its spec makes an empty data disk: the cluster's primary or a replica.
    pub role: Role,
    /// The other nodes' tailnet names (`replication.peer`/`peers`).
    pub peers: Vec<String>,
    /// Where its spec reads the replica credentials from, resolved on its host.
    pub credentials_file: Option<String>,
    /// Its apps (`[[apps]] name`).
    pub apps: Vec<String>,
}

impl Node {
    /// Reads `[[node]]` number `index` and its spec (through its transport).
    pub fn read(index: usize, entry: &NodeEntry, dir: &Path) -> Result<Node, NodeError> {
        let via = Transport::parse(&format!("node[{index}]"), &entry.via)?;
        let spec = match via {
            Transport::Local => dir.join(&entry.spec).display().to_string(),
            _ => entry.spec.clone(),
        };
        let bad = |why: String| NodeError::Spec {
            index,
            spec: spec.clone(),
            via: via.describe(),
            why,
        };
        let text = match via {
            Transport::Local => std::fs::read_to_string(&spec).map_err(|e| bad(e.to_string()))?,
            _ => {
                let o = via.run(&[], &["cat".to_string(), spec.clone()])?;
                if !o.status.success() {
                    return Err(bad(String::from_utf8_lossy(&o.stderr).trim().to_string()));
                }
                String::from_utf8_lossy(&o.stdout).into_owned()
            }
        };
        let v: toml::Value = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let r = v.get("replication").ok_or_else(|| {
            bad("it has no [replication] table: name this node's role and peers there".into())
        })?;
        let role = match r.get("role").and_then(|x| x.as_str()) {
            Some("primary") => Role::Primary,
            Some("replica") => Role::Replica,
            other => {
                return Err(bad(format!(
                    "replication.role is {other:?}: \"primary\" or \"replica\""
                )))
            }
        };
        let strings = |x: Option<&toml::Value>| -> Vec<String> {
            match x {
                Some(toml::Value::String(s)) => vec![s.clone()],
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let mut peers = strings(r.get("peer"));
        peers.extend(strings(r.get("peers")));
        let spec_dir = Path::new(&spec).parent().unwrap_or(Path::new("/"));
        let credentials_file = r
            .get("credentials_file")
            .and_then(|x| x.as_str())
            .map(|f| spec_dir.join(f).display().to_string());
        let apps = match v.get("apps") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|app| app.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Node {
            launcher: entry
                .sovereign
                .clone()
                .unwrap_or_else(|| via.default_launcher()),
            env: entry
                .home
                .iter()
                .map(|h| ("SOVEREIGN_HOME".to_string(), h.clone()))
                .collect(),
            hostname: v
                .get("hostname")
                .and_then(|h| h.as_str())
                .unwrap_or("sql-vm")
                .to_string(),
            spec,
            via,
            role,
            peers,
            credentials_file,
            apps,
        })
    }

    /// True when its spec makes it the cluster's primary.
    pub fn is_primary(&self) -> bool {
        self.role == Role::Primary
    }

    /// `sovereign VERB... --spec SPEC ARGS...` on its host.
    pub fn sovereign(&self, verb: &str, args: &[&str]) -> Result<Output, NodeError> {
        Ok(self.via.run(&self.env, &self.argv(verb, args))?)
    }

    /// [`Node::sovereign`], with `input` on its standard input.
    pub fn sovereign_with_input(
        &self,
        verb: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<Output, NodeError> {
        Ok(self
            .via
            .run_with_input(&self.env, &self.argv(verb, args), input)?)
    }

    /// [`Node::sovereign`] that must succeed; its standard output.
    pub fn sovereign_ok(&self, verb: &str, args: &[&str]) -> Result<String, NodeError> {
        let o = self.sovereign(verb, args)?;
        self.judge(verb, &o)
    }

    /// Standard output of `o` when it succeeded, else what failed.
    pub fn judge(&self, verb: &str, o: &Output) -> Result<String, NodeError> {
        if o.status.success() {
            return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
        }
        let both = format!(
            "{} {}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Err(NodeError::Failed {
            node: self.hostname.clone(),
            command: format!("sovereign {verb} --spec {}", self.spec),
            status: o
                .status
                .code()
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            output: both.trim().to_string(),
        })
    }

    fn argv(&self, verb: &str, args: &[&str]) -> Vec<String> {
        std::iter::once(self.launcher.clone())
            .chain(verb.split_whitespace().map(String::from))
            .chain(["--spec".to_string(), self.spec.clone()])
            .chain(args.iter().map(|a| a.to_string()))
            .collect()
    }

    /// Its VM's status (`status --json`); `None` when the launcher gave none.
    pub fn status(&self) -> Result<Option<VmStatus>, NodeError> {
        let o = self.sovereign("status", &["--json"])?;
        Ok(serde_json::from_slice(&o.stdout).ok())
    }

    /// The file at `path` on its host, when it can be read.
    pub fn read_file(&self, path: &str) -> Result<Option<String>, NodeError> {
        if self.via == Transport::Local {
            return Ok(std::fs::read_to_string(path).ok());
        }
        let o = self.via.run(&[], &["cat".to_string(), path.to_string()])?;
        Ok(o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned()))
    }

    /// Writes `bytes` to `path` on its host, mode 0600, replacing it whole (a new file
    /// renamed over the old).
    pub fn write_private(&self, path: &str, bytes: &[u8]) -> Result<(), NodeError> {
        if self.via == Transport::Local {
            return crate::secrets::write_private(Path::new(path), bytes).map_err(|e| {
                NodeError::Failed {
                    node: self.hostname.clone(),
                    command: format!("write {path}"),
                    status: "error".into(),
                    output: e.to_string(),
                }
            });
        }
        let script = "umask 077 && cat > \"$1.new\" && mv -f \"$1.new\" \"$1\"";
        let argv: Vec<String> = ["sh", "-c", script, "sh", path]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = self.via.run_with_input(&[], &argv, bytes)?;
        self.judge(&format!("(write {path})"), &o).map(|_| ())
    }
}
