//! The peer VMs as this node reaches them: each one's tailnet address (tailscaled's
//! map), a libpq connection string as [`REPLICATION_ROLE`], what it says it is
//! ([`NodeIdentity`]), and which of them is the primary to stream from
//! ([`upstream`]). Also this node's own identity while its server is down, read from
//! the data directory, for the fence that runs before the server first starts.

use super::{ReplicationError, PASSFILE};
use crate::command;
use crate::postgres::{Account, CLUSTER_DIR};
use protocol::replication::{NodeIdentity, IDENTITY_SQL, REPLICATION_ROLE};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The peer, by name, and its address when tailscaled knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its tailnet name.
    pub name: String,
    /// Its tailnet IPv4 address, when tailscaled knows it.
    pub ip: Option<Ipv4Addr>,
    /// PostgreSQL's port (the same on every node).
    pub port: u16,
}

/// What asking the peer gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSeen {
    /// It answered.
    Answered(NodeIdentity),
    /// It did not (no tailnet address, not listening, refused): why.
    Silent(String),
}

impl Peer {
    /// Looks `name` up in tailscaled's map, for up to `patience` (it can take a while
    /// after a join); once when `patience` is zero.
    pub fn find(name: &str, port: u16, patience: Duration) -> Peer {
        let start = Instant::now();
        let ip = loop {
            if let Some(ip) = crate::tailscale::peer_ipv4(name) {
                crate::peer_hosts::remember(name, ip);
                break Some(ip);
            }
            if start.elapsed() >= patience {
                log::warn!("replication: the peer {name} is not on the tailnet");
                break None;
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        Peer {
            name: name.to_string(),
            ip,
            port,
        }
    }

    /// The first of `names` as tailscaled knows it now (no address when it knows none,
    /// an empty name when `names` is empty).
    pub fn first_of(names: &[String], port: u16) -> Peer {
        match names.first() {
            Some(name) => Peer::find(name, port, Duration::ZERO),
            None => Peer {
                name: String::new(),
                ip: None,
                port,
            },
        }
    }

    /// A libpq connection string to the peer at `ip` as [`REPLICATION_ROLE`] (`extra`
    /// adds keywords, e.g. `application_name=...`).
    pub fn conninfo(&self, ip: Ipv4Addr, extra: &str) -> String {
        format!(
            "host={ip} port={} user={REPLICATION_ROLE} dbname=postgres passfile={PASSFILE} connect_timeout=10 {extra}",
            self.port
        )
        .trim_end()
        .to_string()
    }

    /// Its address, or why `purpose` cannot be done without one.
    pub fn ip_for(&self, purpose: &'static str) -> Result<Ipv4Addr, ReplicationError> {
        self.ip
            .ok_or_else(|| ReplicationError::PeerUnknown(self.name.clone(), purpose))
    }

    /// Asks the peer what it is: which cluster, which timeline, whether a replica.
    pub(crate) fn ask(&self, bin: &Path, account: Account) -> PeerSeen {
        let ip = match self.ip.or_else(|| crate::tailscale::peer_ipv4(&self.name)) {
            Some(ip) => ip,
            None => {
                return PeerSeen::Silent(format!("{} has no tailnet address", self.name));
            }
        };
        let mut cmd = account.command(bin.join("psql"));
        cmd.arg(self.conninfo(ip, ""))
            .args(["-X", "-A", "-t", "-c", IDENTITY_SQL]);
        match command::output(&mut cmd) {
            Ok(o) if o.exit.success() => match NodeIdentity::parse(&o.stdout) {
                Some(id) => {
                    crate::peer_hosts::answered(&self.name);
                    PeerSeen::Answered(id)
                }
                None => PeerSeen::Silent(format!(
                    "{} ({ip}) answered {:?}",
                    self.name,
                    o.stdout.trim()
                )),
            },
            Ok(o) => PeerSeen::Silent(format!("{} ({ip}): {}", self.name, o.stderr.trim())),
            Err(e) => PeerSeen::Silent(e.to_string()),
        }
    }
}

/// The peer among `names` answering as a primary on the newest timeline, with what it
/// said; `None` when none does. Asks each once.
pub(crate) fn find_primary(
    names: &[String],
    port: u16,
    bin: &Path,
    account: Account,
) -> Option<(Peer, NodeIdentity)> {
    names
        .iter()
        .map(|n| Peer::find(n, port, Duration::ZERO))
        .filter_map(|p| match p.ask(bin, account) {
            PeerSeen::Answered(id) if !id.in_recovery => Some((p, id)),
            _ => None,
        })
        .max_by_key(|(_, id)| id.timeline)
}

/// The peer to stream from, out of `names` (in the spec's order): [`find_primary`],
/// asked again every 2 s for up to `patience` while none answers as one (the primary
/// may be booting); then the first peer tailscaled knows, else the first one named,
/// whose server says what it is when the replica connects.
pub(crate) fn upstream(
    names: &[String],
    port: u16,
    patience: Duration,
    bin: &Path,
    account: Account,
) -> Peer {
    let start = Instant::now();
    loop {
        if let Some((p, id)) = find_primary(names, port, bin, account) {
            log::info!(
                "replication: {} is the primary (timeline {})",
                p.name,
                id.timeline
            );
            return p;
        }
        if start.elapsed() >= patience || crate::lifecycle::stop::requested() {
            let fallback = names
                .iter()
                .map(|n| Peer::find(n, port, Duration::ZERO))
                .find(|p| p.ip.is_some())
                .unwrap_or_else(|| Peer::first_of(names, port));
            log::warn!(
                "replication: no peer answers as the primary; streaming from {} until one does",
                fallback.name
            );
            return fallback;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// This node's identity while its server is down: the system identifier and the
/// newest timeline the data directory knows. The checkpoint's timeline alone can be
/// stale: a node promoted moments before a power cut has written its new timeline's
/// history file but no checkpoint on that timeline yet; so the highest
/// `<timeline>.history` in `pg_wal` counts too.
pub(crate) fn own_identity_offline(bin: &Path, account: Account) -> Option<NodeIdentity> {
    let o = command::output(
        account
            .command(bin.join("pg_controldata"))
            .args(["-D", CLUSTER_DIR]),
    )
    .ok()?;
    let (system_identifier, checkpoint_timeline) = parse_controldata(&o.stdout)?;
    let newest_history = newest_history_timeline(&Path::new(CLUSTER_DIR).join("pg_wal"));
    Some(NodeIdentity {
        system_identifier,
        timeline: checkpoint_timeline.max(newest_history.unwrap_or(0)),
        in_recovery: Path::new(CLUSTER_DIR).join("standby.signal").exists(),
        wal_end: None,
    })
}

/// `Database system identifier` and `Latest checkpoint's TimeLineID` of
/// `pg_controldata`'s output (a report for people, not a format: read by its labels).
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

/// The highest timeline with a history file (`0000000N.history`, hexadecimal) in
/// `pg_wal`.
fn newest_history_timeline(pg_wal: &Path) -> Option<u32> {
    std::fs::read_dir(pg_wal)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let hex = name.to_str()?.strip_suffix(".history")?;
            (hex.len() == 8)
                .then(|| u32::from_str_radix(hex, 16).ok())
                .flatten()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offline_identity_reads_control_data_and_history_files() {
        let controldata = "pg_control version number:            1700\n\
            Database system identifier:           7441234567890123456\n\
            Latest checkpoint's TimeLineID:       1\n\
            Latest checkpoint's PrevTimeLineID:   1\n";
        assert_eq!(
            parse_controldata(controldata),
            Some(("7441234567890123456".into(), 1))
        );
        assert_eq!(parse_controldata("nothing"), None);
        let wal = tempfile::tempdir().unwrap();
        assert_eq!(newest_history_timeline(wal.path()), None);
        for f in [
            "00000002.history",
            "0000000A.history",
            "000000020000000000000003",
            "x.history",
        ] {
            std::fs::write(wal.path().join(f), "").unwrap();
        }
        assert_eq!(newest_history_timeline(wal.path()), Some(10));
    }

    #[test]
    fn the_connection_string_names_the_role_and_the_password_file() {
        let peer = Peer {
            name: "sql-vm".into(),
            ip: Some(Ipv4Addr::new(100, 64, 0, 1)),
            port: 5432,
        };
        assert_eq!(
            peer.conninfo(Ipv4Addr::new(100, 64, 0, 1), "application_name=sql_replica"),
            "host=100.64.0.1 port=5432 user=replicator dbname=postgres passfile=/run/postgresql/replication.pgpass connect_timeout=10 application_name=sql_replica"
        );
    }
}
