//! Streaming replication with the peer VM, before the server starts: the password file
//! the replication tools read, the peer's tailnet address, and what the data directory
//! becomes: a copy of the peer (`pg_basebackup`, an empty disk on a replica), the
//! peer's replica again (`pg_rewind`, on `sovereign rejoin`), or a primary that has
//! first checked the peer was not promoted past it (the fence). PostgreSQL's own
//! `standby.signal` says which role the node is in; nothing else records it.

use super::{Account, DATA_DIR};
use crate::command::{self, CommandError};
use crate::owned_files::{self, OwnedFileError};
use protocol::replication::{slot_name, ReplicationConfig, Role, REPLICATION_ROLE};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The libpq password file for [`REPLICATION_ROLE`], on tmpfs beside the socket (the
/// password never reaches a disk or an argument).
pub const PASSFILE: &str = "/run/postgresql/replication.pgpass";

/// How long a replica's first boot waits for its primary to hand over a copy.
const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(300);

/// How long the peer's tailnet address may take to appear in tailscaled's map.
const PEER_LOOKUP_PATIENCE: Duration = Duration::from_secs(60);

/// Why replication kept the server from starting.
#[derive(Debug, Error)]
pub enum ReplicationError {
    #[error("writing the replication password file: {0}")]
    Passfile(#[from] OwnedFileError),
    #[error("the peer {0:?} is not on the tailnet (tailscale ip -4 {0} found no address); a replica needs it to {1}")]
    PeerUnknown(String, &'static str),
    #[error("copying the primary {peer} ({ip}) with pg_basebackup failed for {waited:?}; last error: {error}")]
    Bootstrap {
        peer: String,
        ip: Ipv4Addr,
        waited: Duration,
        error: String,
    },
    #[error("pg_rewind onto {peer} ({ip}) failed; the data directory is unchanged or as pg_rewind left it (the host kept a copy of the disk): {error}")]
    Rewind {
        peer: String,
        ip: Ipv4Addr,
        error: String,
    },
    #[error("refusing to start as a primary: the peer {peer} was promoted to timeline {peer_timeline}, past this node's timeline {own_timeline}, and a second primary would split the data. Run `sovereign rejoin` to make this node a replica of {peer} (the host keeps a copy of this data disk first)")]
    Fenced {
        peer: String,
        peer_timeline: u32,
        own_timeline: u32,
    },
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

/// The peer as this node reaches it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its tailnet name.
    pub name: String,
    /// Its tailnet IPv4 address, when tailscaled knows it.
    pub ip: Option<Ipv4Addr>,
    /// PostgreSQL's port (the same on both nodes).
    pub port: u16,
}

impl Peer {
    /// Looks the peer up in tailscaled's map (it can take a while after a join), for
    /// up to [`PEER_LOOKUP_PATIENCE`] when this start cannot go on without it (a
    /// replica's first copy, a rejoin), once otherwise (a primary whose replica may not
    /// exist yet).
    pub fn find(cfg: &ReplicationConfig, port: u16) -> Peer {
        let needed = cfg.rejoin
            || (cfg.role == Role::Replica && !Path::new(DATA_DIR).join("PG_VERSION").exists());
        let start = Instant::now();
        let ip = loop {
            if let Some(ip) = crate::tailscale::peer_ipv4(&cfg.peer) {
                break Some(ip);
            }
            if !needed || start.elapsed() > PEER_LOOKUP_PATIENCE {
                log::warn!("replication: the peer {} is not on the tailnet", cfg.peer);
                break None;
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        Peer {
            name: cfg.peer.clone(),
            ip,
            port,
        }
    }

    /// A libpq connection string to the peer as [`REPLICATION_ROLE`] (`extra` adds
    /// keywords, e.g. `replication=database`).
    fn conninfo(&self, ip: Ipv4Addr, extra: &str) -> String {
        format!(
            "host={ip} port={} user={REPLICATION_ROLE} dbname=postgres passfile={PASSFILE} connect_timeout=10 {extra}",
            self.port
        )
        .trim_end()
        .to_string()
    }

    fn ip_for(&self, purpose: &'static str) -> Result<Ipv4Addr, ReplicationError> {
        self.ip
            .ok_or_else(|| ReplicationError::PeerUnknown(self.name.clone(), purpose))
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
    Path::new(DATA_DIR).join("standby.signal").exists()
}

/// Makes the data directory what the configuration asks for, before the server starts.
pub(crate) fn prepare(
    bin: &Path,
    account: Account,
    cfg: &ReplicationConfig,
    peer: &Peer,
    own_hostname: &str,
) -> Result<Preparation, ReplicationError> {
    let has_cluster = Path::new(DATA_DIR).join("PG_VERSION").exists();
    match (has_cluster, cfg.role) {
        (false, Role::Replica) => {
            bootstrap(bin, account, peer, own_hostname)?;
            mark_standby(account)?;
            Ok(Preparation::Copied)
        }
        (false, Role::Primary) => Ok(Preparation::Fresh),
        (true, _) if cfg.rejoin => {
            rewind(bin, account, peer)?;
            mark_standby(account)?;
            Ok(Preparation::Rewound)
        }
        (true, _) if is_standby() => Ok(Preparation::AsItWas),
        (true, _) => {
            fence(bin, account, peer)?;
            Ok(Preparation::AsItWas)
        }
    }
}

/// postgresql.conf lines: how a replica reaches its primary (harmless on a primary,
/// which ignores them until it is made a replica), and a synchronous standby when asked.
pub fn conf_lines(cfg: &ReplicationConfig, peer: &Peer, own_hostname: &str) -> String {
    let own = slot_name(own_hostname);
    let mut s = String::from(
        "# Streaming replication with the peer\nhot_standby = on\nwal_keep_size = 128MB\n",
    );
    if let Some(ip) = peer.ip {
        s.push_str(&format!(
            "primary_conninfo = '{} application_name={own}'\nprimary_slot_name = '{own}'\n",
            peer.conninfo(ip, "")
        ));
    }
    if cfg.synchronous {
        s.push_str(&format!(
            "synchronous_standby_names = '\"{}\"'\n",
            slot_name(&peer.name)
        ));
    }
    s
}

/// `standby.signal`: the server starts as a replica.
fn mark_standby(account: Account) -> Result<(), OwnedFileError> {
    owned_files::write_file(
        &Path::new(DATA_DIR).join("standby.signal"),
        b"",
        0o600,
        account.owner(),
    )
}

/// Copies the peer into the empty data directory over the tailnet, through this node's
/// slot on the peer; retried while the peer is not up yet.
fn bootstrap(
    bin: &Path,
    account: Account,
    peer: &Peer,
    own_hostname: &str,
) -> Result<(), ReplicationError> {
    let ip = peer.ip_for("copy its data")?;
    let slot = slot_name(own_hostname);
    let start = Instant::now();
    log::info!(
        "replication: copying the primary {} ({ip}) with pg_basebackup",
        peer.name
    );
    loop {
        let mut cmd = account.command(bin.join("pg_basebackup"));
        cmd.arg("-d").arg(peer.conninfo(ip, "")).args([
            "-D",
            DATA_DIR,
            "-X",
            "stream",
            "-S",
            &slot,
            "--checkpoint=fast",
            "-w",
        ]);
        match command::output(&mut cmd) {
            Ok(o) if o.exit.success() => {
                log::info!("replication: copied the primary in {:?}", start.elapsed());
                return Ok(());
            }
            Ok(o) if start.elapsed() < BOOTSTRAP_PATIENCE => {
                log::warn!(
                    "replication: pg_basebackup: {} (trying again)",
                    o.stderr.trim()
                );
            }
            Ok(o) => {
                return Err(ReplicationError::Bootstrap {
                    peer: peer.name.clone(),
                    ip,
                    waited: start.elapsed(),
                    error: o.stderr.trim().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Rewinds this node's data onto the peer's timeline (pg_rewind first finishes crash
/// recovery itself when the node was cut off without a clean shutdown).
fn rewind(bin: &Path, account: Account, peer: &Peer) -> Result<(), ReplicationError> {
    let ip = peer.ip_for("rewind onto it")?;
    log::info!(
        "replication: rewinding onto {} ({ip}) with pg_rewind",
        peer.name
    );
    let mut cmd = account.command(bin.join("pg_rewind"));
    cmd.args(["-D", DATA_DIR, "--source-server"])
        .arg(peer.conninfo(ip, ""));
    let o = command::output(&mut cmd)?;
    if !o.exit.success() {
        return Err(ReplicationError::Rewind {
            peer: peer.name.clone(),
            ip,
            error: format!("{} {}", o.stdout.trim(), o.stderr.trim()),
        });
    }
    log::info!("replication: {}", o.stdout.trim().replace('\n', "; "));
    Ok(())
}

/// Before a primary opens for writes: refuses when the peer is the same cluster on a
/// newer timeline (it was promoted while this node was away). A peer that cannot be
/// asked does not stop the start (it may be down, which is why this node is primary);
/// that is logged.
fn fence(bin: &Path, account: Account, peer: &Peer) -> Result<(), ReplicationError> {
    let Some(ip) = peer.ip else {
        log::warn!(
            "replication: fence: the peer {} has no tailnet address; starting as primary",
            peer.name
        );
        return Ok(());
    };
    let own = own_identity(bin, account)?;
    let mut cmd = account.command(bin.join("psql"));
    cmd.arg(peer.conninfo(ip, "replication=database")).args([
        "-X",
        "-A",
        "-t",
        "-c",
        "IDENTIFY_SYSTEM",
    ]);
    let o = command::output(&mut cmd)?;
    let theirs = o
        .exit
        .success()
        .then(|| parse_identify_system(&o.stdout))
        .flatten();
    match (own, theirs) {
        (Some((own_id, own_timeline)), Some((peer_id, peer_timeline)))
            if own_id == peer_id && peer_timeline > own_timeline =>
        {
            Err(ReplicationError::Fenced {
                peer: peer.name.clone(),
                peer_timeline,
                own_timeline,
            })
        }
        (own, Some(theirs)) => {
            log::info!("replication: fence: the peer is at {theirs:?}, this node at {own:?}; starting as primary");
            Ok(())
        }
        (_, None) => {
            log::warn!(
                "replication: fence: could not ask the peer {} ({ip}): {}; starting as primary",
                peer.name,
                o.stderr.trim()
            );
            Ok(())
        }
    }
}

/// This cluster's system identifier and timeline, from `pg_controldata`.
fn own_identity(bin: &Path, account: Account) -> Result<Option<(String, u32)>, ReplicationError> {
    let o = command::output(
        account
            .command(bin.join("pg_controldata"))
            .args(["-D", DATA_DIR]),
    )?;
    Ok(parse_controldata(&o.stdout))
}

/// `Database system identifier` and `Latest checkpoint's TimeLineID` of
/// `pg_controldata`'s output.
fn parse_controldata(text: &str) -> Option<(String, u32)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    Some((
        field("Database system identifier")?,
        field("Latest checkpoint's TimeLineID")?.parse().ok()?,
    ))
}

/// `systemid|timeline|xlogpos|dbname` of `IDENTIFY_SYSTEM` under `psql -A -t`.
fn parse_identify_system(text: &str) -> Option<(String, u32)> {
    let line = text.lines().find(|l| l.contains('|'))?;
    let mut f = line.split('|');
    let id = f.next()?.trim().to_string();
    let timeline = f.next()?.trim().parse().ok()?;
    Some((id, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::Secret;

    fn cfg(synchronous: bool) -> ReplicationConfig {
        ReplicationConfig {
            role: Role::Replica,
            peer: "sql-vm".into(),
            password: Secret::new("pw"),
            synchronous,
            rejoin: false,
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
            sync.contains("synchronous_standby_names = '\"sql_vm\"'"),
            "{sync}"
        );
        assert!(!sync.contains("primary_conninfo"));
    }

    #[test]
    fn identities_read_from_both_tools() {
        let controldata = "pg_control version number:            1700\n\
            Database system identifier:           7441234567890123456\n\
            Latest checkpoint's TimeLineID:       1\n\
            Latest checkpoint's PrevTimeLineID:   1\n";
        assert_eq!(
            parse_controldata(controldata),
            Some(("7441234567890123456".into(), 1))
        );
        assert_eq!(
            parse_identify_system("7441234567890123456|2|0/3000148|postgres\n"),
            Some(("7441234567890123456".into(), 2))
        );
        assert_eq!(parse_identify_system("psql: error"), None);
        assert_eq!(parse_controldata("nothing"), None);
    }

    #[test]
    fn the_fence_names_the_fix() {
        let e = ReplicationError::Fenced {
            peer: "sql-replica".into(),
            peer_timeline: 2,
            own_timeline: 1,
        }
        .to_string();
        assert!(
            e.contains("timeline 2") && e.contains("sovereign rejoin"),
            "{e}"
        );
    }
}
