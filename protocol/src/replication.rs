//! Streaming replication between two VMs over the tailnet: what the host tells the
//! guest (its role, its peer, the replication password), the names both ends derive
//! from host names (the replication slot, `application_name`), and the status query
//! with its parser, so the host and the guest read the same columns.

use crate::config::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The role that connects for streaming replication and `pg_rewind`.
pub const REPLICATION_ROLE: &str = "replicator";

/// A node's place in a two-node cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes; its peer streams from it.
    Primary,
    /// Streams from its peer, answers reads.
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// What the guest needs to replicate. The spec's role decides only what an empty data
/// disk becomes (a fresh cluster, or a copy of the peer); afterwards the data directory
/// itself says which one the node is (`standby.signal`), because `promote` and
/// `rejoin` change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    /// The role an empty data disk starts in.
    pub role: Role,
    /// The other node's tailnet name.
    pub peer: String,
    /// [`REPLICATION_ROLE`]'s password (the same on both nodes).
    pub password: Secret,
    /// Commits wait until the peer has the WAL on disk (`synchronous_standby_names`).
    #[serde(default)]
    pub synchronous: bool,
    /// Rewind this node's data onto the peer's timeline (`pg_rewind`) and start it as
    /// the peer's replica: `sovereign rejoin`.
    #[serde(default)]
    pub rejoin: bool,
}

/// The replication slot (and `application_name`) of the node called `hostname`: its
/// name in PostgreSQL's identifier alphabet (`sql-replica` → `sql_replica`).
pub fn slot_name(hostname: &str) -> String {
    hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates (or updates) [`REPLICATION_ROLE`] with `password` as a SCRAM verifier and
/// lets it read what `pg_rewind` reads from a source server (the grants PostgreSQL's
/// documentation lists, instead of a superuser over the network); then
/// [`slot_sql`] for the peer. Run by the primary's superuser; psql input (`\gexec`).
pub fn role_sql(password: &Secret, salt: &[u8; 16], peer: &str) -> String {
    let r = REPLICATION_ROLE;
    format!(
        "SET log_statement = 'none';\n\
         SELECT 'CREATE ROLE {r} REPLICATION LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}')\\gexec\n\
         ALTER ROLE {r} REPLICATION LOGIN PASSWORD '{}';\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {r};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {r};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {r};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {r};\n{}",
        crate::scram::verifier(password.expose(), salt),
        slot_sql(peer)
    )
}

/// Creates the peer's physical replication slot unless it exists, reserving WAL from
/// now on: what the primary keeps for a replica that is away. Safe to run again.
pub fn slot_sql(peer: &str) -> String {
    let slot = slot_name(peer);
    format!(
        "SELECT 'slot ' || slot_name FROM pg_create_physical_replication_slot('{slot}', true) \
         WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{slot}');\n"
    )
}

/// One line, `|`-separated, that [`ReplicationStatus::parse`] reads; psql runs it with
/// `-A -t`. The `\if` keeps functions that fail during recovery off the replica.
pub const STATUS_SQL: &str = r"select pg_is_in_recovery() as standby \gset
\if :standby
select 'replica',
  coalesce((select received_tli from pg_stat_wal_receiver), (select timeline_id from pg_control_checkpoint())),
  coalesce((select status from pg_stat_wal_receiver), 'not streaming'),
  coalesce((select sender_host from pg_stat_wal_receiver), ''),
  coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, 0),
  coalesce(extract(epoch from now() - pg_last_xact_replay_timestamp())::bigint, -1),
  '', -1;
\else
select 'primary',
  ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,
  coalesce((select state || coalesce(' ' || sync_state, '') from pg_stat_replication limit 1), 'no replica connected'),
  coalesce((select application_name from pg_stat_replication limit 1), ''),
  coalesce((select pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint from pg_stat_replication limit 1), -1),
  coalesce((select extract(epoch from replay_lag)::bigint from pg_stat_replication limit 1), 0),
  coalesce((select string_agg(slot_name || case when active then '' else ' (inactive)' end, ',') from pg_replication_slots where slot_type = 'physical'), ''),
  coalesce((select max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn))::bigint from pg_replication_slots where slot_type = 'physical'), -1);
\endif
";

/// Replication as one node sees it (`sovereign status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// What the server is now (not what the spec started it as).
    pub role: Role,
    /// Its timeline (a promotion starts a new one).
    pub timeline: u32,
    /// On a primary the replica's `state sync_state`; on a replica the WAL receiver's
    /// status.
    pub state: String,
    /// On a primary the replica's `application_name`, on a replica the primary's
    /// address.
    pub peer: String,
    /// WAL the replica has not replayed yet; `None` when no replica is connected.
    pub lag_bytes: Option<u64>,
    /// On a primary the replica's replay lag, on a replica the age of the last
    /// replayed transaction (grows when the primary is idle); `None` when unknown.
    pub lag_seconds: Option<u64>,
    /// The primary's physical replication slots.
    pub slots: String,
    /// WAL the slots hold back on the primary's disk; `None` without slots.
    pub slot_retained_bytes: Option<u64>,
}

impl ReplicationStatus {
    /// Reads [`STATUS_SQL`]'s line; `None` when it is not one.
    pub fn parse(line: &str) -> Option<ReplicationStatus> {
        let f: Vec<&str> = line.trim().split('|').collect();
        let [role, timeline, state, peer, lag_bytes, lag_seconds, slots, retained] = f.as_slice()
        else {
            return None;
        };
        let opt = |s: &str| -> Option<Option<u64>> {
            let v: i64 = s.parse().ok()?;
            Some(u64::try_from(v).ok())
        };
        Some(ReplicationStatus {
            role: match *role {
                "primary" => Role::Primary,
                "replica" => Role::Replica,
                _ => return None,
            },
            timeline: timeline.parse().ok()?,
            state: state.to_string(),
            peer: peer.to_string(),
            lag_bytes: opt(lag_bytes)?,
            lag_seconds: opt(lag_seconds)?,
            slots: slots.to_string(),
            slot_retained_bytes: opt(retained)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_identifiers() {
        assert_eq!(slot_name("sql-replica"), "sql_replica");
        assert_eq!(slot_name("SQL.vm"), "sql_vm");
    }

    #[test]
    fn the_role_sql_holds_a_verifier_and_the_peers_slot() {
        let sql = role_sql(&Secret::new("replicate-me-please"), &[5; 16], "sql-replica");
        assert!(sql.starts_with("SET log_statement = 'none';\n"));
        assert!(!sql.contains("replicate-me"));
        let stored = sql
            .split('\'')
            .find(|s| s.starts_with("SCRAM-SHA-256$"))
            .unwrap();
        assert!(crate::scram::matches(stored, "replicate-me-please"));
        assert!(sql.contains("pg_create_physical_replication_slot('sql_replica', true)"));
        assert!(sql.contains("WHERE rolname = 'replicator')\\gexec"));
    }

    #[test]
    fn both_sides_status_lines_read() {
        let p = ReplicationStatus::parse(
            "primary|2|streaming async|sql_replica|1024|0|sql_replica|33554432\n",
        )
        .unwrap();
        assert_eq!(p.role, Role::Primary);
        assert_eq!(p.timeline, 2);
        assert_eq!(p.lag_bytes, Some(1024));
        assert_eq!(p.slot_retained_bytes, Some(32 << 20));
        let r = ReplicationStatus::parse("replica|1|streaming|100.64.0.1|0|-1||-1").unwrap();
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.lag_seconds, None);
        assert_eq!(r.slot_retained_bytes, None);
        assert!(ReplicationStatus::parse("standby|1|x|y|0|0||0").is_none());
        assert!(ReplicationStatus::parse("primary|1|x").is_none());
    }

    #[test]
    fn the_config_round_trips_without_showing_the_password() {
        let c = ReplicationConfig {
            role: Role::Replica,
            peer: "sql-vm".into(),
            password: Secret::new("replicate-me"),
            synchronous: false,
            rejoin: false,
        };
        assert!(!format!("{c:?}").contains("replicate-me"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ReplicationConfig>(&json).unwrap(), c);
    }
}
