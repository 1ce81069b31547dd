//! Streaming replication with the peer VMs, before the server starts: the password
//! file the replication tools read, which peer is the primary to stream from, and what
//! the data directory becomes: a copy of the primary ([`copy`], an empty disk on a
//! replica), its replica again ([`rejoin`], on `sovereign rejoin`), or a primary that
//! has first checked that no peer was promoted past it ([`fence`]). PostgreSQL's own
//! `standby.signal` says which role the node is in; nothing else records it.

pub mod copy;
pub mod fence;
mod follow;
pub mod peer;
pub mod promote;
pub mod rejoin;

use super::{cluster, Account, CLUSTER_DIR};
use crate::command::CommandError;
use crate::owned_files::{self, OwnedFileError};
use fence::Verdict;
use peer::{Peer, PeerSeen};
use protocol::replication::{
    slot_name, synchronous_standby_names, Fence, ReplicationConfig, Role, REPLICATION_ROLE,
};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// The libpq password file for [`REPLICATION_ROLE`], on tmpfs beside the socket (the
/// password never reaches a disk or an argument).
pub const PASSFILE: &str = "/run/postgresql/replication.pgpass";

/// Why replication kept the server from starting.
#[derive(Debug, Error)]
pub enum ReplicationError {
    #[error("{0}")]
    Files(#[from] OwnedFileError),
    #[error("the peer {0:?} is not on the tailnet (tailscale ip -4 {0} found no address); a replica needs it to {1}")]
    PeerUnknown(String, &'static str),
    #[error("copying the primary {peer} ({ip}) with pg_basebackup failed for {waited:?}; last error: {error}")]
    Bootstrap {
        peer: String,
        ip: Ipv4Addr,
        waited: Duration,
        error: String,
    },
    #[error("pg_rewind onto {peer} ({ip}) failed: {error}. The next start finishes the rejoin with a new copy of {peer} (the host kept a copy of this data disk)")]
    Rewind {
        peer: String,
        ip: Ipv4Addr,
        error: String,
    },
    #[error("refusing to start as a primary: {0}")]
    Fenced(String),
    #[error("{0}")]
    Durable(#[from] crate::durable::DurableError),
    #[error("{0}")]
    Cluster(Box<super::PgError>),
    #[error(transparent)]
    Tool(#[from] CommandError),
}

/// What happened to the data directory before the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparation {
    /// Nothing to do: an existing replica, or a primary whose peer is not ahead.
    AsItWas,
    /// Copied from the peer: a new replica.
    Copied,
    /// Rewound onto the peer's timeline: a replica again.
    Rewound,
    /// No cluster yet on a primary: initdb follows.
    Fresh,
}

/// What [`prepare`] did and found, for the server's configuration and status.
#[derive(Debug)]
pub struct Prepared {
    /// What happened to the data directory.
    pub how: Preparation,
    /// postgresql.conf lines for replication with the peer.
    pub conf: String,
    /// The fence's verdict at boot, for a primary.
    pub fence: Option<Fence>,
    /// What this boot finished of a rejoin an earlier one began.
    pub recovered: Option<String>,
}

impl From<super::PgError> for ReplicationError {
    fn from(e: super::PgError) -> Self {
        ReplicationError::Cluster(Box::new(e))
    }
}

/// Writes [`PASSFILE`] (0600, postgres's) from the configuration.
pub(crate) fn write_passfile(
    cfg: &ReplicationConfig,
    account: Account,
) -> Result<(), OwnedFileError> {
    let escaped = cfg
        .password
        .expose()
        .replace('\\', "\\\\")
        .replace(':', "\\:");
    owned_files::write_file(
        Path::new(PASSFILE),
        format!("*:*:*:{REPLICATION_ROLE}:{escaped}\n").as_bytes(),
        0o600,
        account.owner(),
    )
}

/// True when the data directory holds a cluster that starts as a replica.
pub fn is_standby() -> bool {
    Path::new(CLUSTER_DIR).join("standby.signal").exists()
}

/// How long the peer's tailnet address may take to appear when this start cannot go on
/// without it (a replica's first copy, a rejoin).
const PEER_LOOKUP_PATIENCE: Duration = Duration::from_secs(60);

/// How often a primary that must see its peer before it starts asks again.
const PEER_WAIT_INTERVAL: Duration = Duration::from_secs(5);

/// Makes the data directory what the configuration and this boot's request ask for,
/// before the server starts. `rejoin` is the host's request for this boot (`Some(fresh)`).
pub(crate) fn prepare(
    bin: &Path,
    account: Account,
    cfg: &ReplicationConfig,
    rejoin: Option<bool>,
    port: u16,
    own_hostname: &str,
) -> Result<Prepared, ReplicationError> {
    let rejoin = rejoin::plan(rejoin)?;
    let needs_peer = rejoin.is_some() || (cfg.role == Role::Replica && !cluster::exists());
    let patience = if needs_peer {
        PEER_LOOKUP_PATIENCE
    } else {
        Duration::ZERO
    };
    let upstream = || peer::upstream(&cfg.peers, port, patience, bin, account);
    let mut recovered = None;
    let mut fence = None;
    let (how, primary) = match (rejoin, cluster::exists(), cfg.role) {
        (Some(plan), _, _) => {
            let primary = upstream();
            let (how, said) = rejoin::run(plan, bin, account, &primary, own_hostname)?;
            recovered = said;
            (how, primary)
        }
        (None, false, Role::Replica) => {
            let primary = upstream();
            copy::from_peer(bin, account, &primary, own_hostname)?;
            (Preparation::Copied, primary)
        }
        (None, true, _) if is_standby() => (Preparation::AsItWas, upstream()),
        (None, exists, _) => {
            if exists {
                fence = Some(fence_at_boot(bin, account, cfg, port, own_hostname)?);
            }
            // A primary streams from no one; its conninfo waits for a `rejoin`.
            let how = if exists {
                Preparation::AsItWas
            } else {
                Preparation::Fresh
            };
            (how, Peer::first_of(&cfg.peers, port))
        }
    };
    Ok(Prepared {
        how,
        conf: conf_lines(cfg, &primary, own_hostname),
        fence,
        recovered,
    })
}

/// postgresql.conf lines: how a replica reaches its primary `upstream` (harmless on a
/// primary, which ignores them until it is made a replica), and quorum commit over the
/// peers when asked (a replica keeps the line for the day it is promoted).
pub fn conf_lines(cfg: &ReplicationConfig, upstream: &Peer, own_hostname: &str) -> String {
    let own = slot_name(own_hostname);
    // Either end notices a peer that went silent (a power cut) within 15 s instead of
    // the default minute: a replica's receiver stops claiming to stream, a primary's
    // sender lets its slot go inactive.
    let mut s = String::from(
        "# Streaming replication with the peer\nhot_standby = on\nwal_receiver_timeout = 15s\nwal_sender_timeout = 15s\n",
    );
    if let Some(ip) = upstream.ip {
        s.push_str(&format!(
            "primary_conninfo = '{} application_name={own}'\nprimary_slot_name = '{own}'\n",
            upstream.conninfo(ip, "")
        ));
    }
    if cfg.synchronous {
        s.push_str(&format!(
            "synchronous_standby_names = '{}'\n",
            synchronous_standby_names(&cfg.peers)
        ));
    }
    s
}

/// Asks every peer what it is.
pub(crate) fn ask_all(
    names: &[String],
    port: u16,
    bin: &Path,
    account: Account,
) -> Vec<(String, PeerSeen)> {
    names
        .iter()
        .map(|n| {
            (
                n.clone(),
                Peer::find(n, port, Duration::ZERO).ask(bin, account),
            )
        })
        .collect()
}

/// `standby.signal` in the cluster at `dir`, durably: the server starts as a replica.
pub(crate) fn standby_signal(dir: &Path, account: Account) -> Result<(), ReplicationError> {
    owned_files::write_file(&dir.join("standby.signal"), b"", 0o600, account.owner())?;
    crate::durable::sync_dir(dir)?;
    Ok(())
}

/// Before a primary first opens for writes: refuses when a peer is the primary by the
/// fence's rules. Peers that do not answer do not stop the start (they may be down,
/// which is why this node is primary) unless the spec asks for it
/// (`require_peer_at_boot`): then, while none answers, the start waits for one, for as
/// long as the host's stage deadline allows.
fn fence_at_boot(
    bin: &Path,
    account: Account,
    cfg: &ReplicationConfig,
    port: u16,
    own_hostname: &str,
) -> Result<Fence, ReplicationError> {
    let own = peer::own_identity_offline(bin, account).ok_or_else(|| {
        ReplicationError::Fenced(format!(
            "pg_controldata cannot read this node's cluster in {CLUSTER_DIR}, so the fence cannot compare it with {}",
            cfg.peers.join(", ")
        ))
    })?;
    let now = crate::clock::now_unix;
    loop {
        let seen = ask_all(&cfg.peers, port, bin, account);
        let none_answered = seen.iter().all(|(_, s)| matches!(s, PeerSeen::Silent(_)));
        match fence::judge_all(&own, own_hostname, &seen) {
            Verdict::Primary => {
                log::info!("replication: fence: the peers are {seen:?}, this node at {own:?}; starting as primary");
                return Ok(Fence::Clear {
                    peer_seen_unix: now(),
                });
            }
            Verdict::Fenced(why) => return Err(ReplicationError::Fenced(why)),
            Verdict::Unconfirmed(why) if !cfg.require_peer_at_boot || !none_answered => {
                log::warn!("replication: fence: {why}; starting as primary");
                return Ok(Fence::Unconfirmed {
                    reason: why,
                    since_unix: now(),
                });
            }
            Verdict::Unconfirmed(why) => {
                if crate::lifecycle::stop::requested() {
                    return Err(ReplicationError::Fenced(why));
                }
                log::warn!(
                    "replication: fence: {why}; waiting for a peer (replication.require_peer_at_boot)"
                );
                std::thread::sleep(PEER_WAIT_INTERVAL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::Secret;

    fn cfg(synchronous: bool) -> ReplicationConfig {
        ReplicationConfig {
            role: Role::Replica,
            peers: vec!["sql-vm".into(), "sql-r2".into()],
            password: Secret::new("pw"),
            synchronous,
            require_peer_at_boot: false,
        }
    }

    #[test]
    fn conf_lines_name_the_peer_by_address_and_this_node_by_slot() {
        let peer = Peer {
            name: "sql-vm".into(),
            ip: Some(Ipv4Addr::new(100, 64, 0, 1)),
            port: 5432,
        };
        let s = conf_lines(&cfg(false), &peer, "sql-replica");
        assert!(s.contains("primary_conninfo = 'host=100.64.0.1 port=5432 user=replicator dbname=postgres passfile=/run/postgresql/replication.pgpass connect_timeout=10 application_name=sql_replica'"), "{s}");
        assert!(s.contains("primary_slot_name = 'sql_replica'"));
        assert!(!s.contains("synchronous_standby_names"));
        assert!(!s.contains("pw"));
        let sync = conf_lines(&cfg(true), &Peer { ip: None, ..peer }, "sql-replica");
        assert!(
            sync.contains("synchronous_standby_names = 'ANY 1 (\"sql_vm\", \"sql_r2\")'"),
            "{sync}"
        );
        assert!(!sync.contains("primary_conninfo"));
    }
}
