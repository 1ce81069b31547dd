//! Streaming replication between VMs over the tailnet (a primary and one or more
//! replicas): what the host tells the guest (its role, its peers, the replication
//! password), the names every node derives from host names (the replication slot,
//! `application_name`, the synchronous quorum), and the status query with its parser,
//! so the host and the guest read the same columns.

use crate::config::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The role that connects for streaming replication and `pg_rewind`.
pub const REPLICATION_ROLE: &str = "replicator";

/// A node's place in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes; its peers stream from it.
    Primary,
    /// Streams from the primary among its peers, answers reads.
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
/// disk becomes (a fresh cluster, or a copy of the primary among its peers); afterwards
/// the data directory
/// itself says which one the node is (`standby.signal`), because `promote` and
/// `rejoin` change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    /// The role an empty data disk starts in.
    pub role: Role,
    /// The other nodes' tailnet names (at least one).
    pub peers: Vec<String>,
    /// [`REPLICATION_ROLE`]'s password (the same on every node).
    pub password: Secret,
    /// Commits wait until one of the peers has the WAL on disk: quorum commit,
    /// [`synchronous_standby_names`].
    #[serde(default)]
    pub synchronous: bool,
    /// A primary none of whose peers answers at boot waits for one instead of
    /// starting: nothing can then rule out that a peer was promoted meanwhile (safety
    /// over availability).
    #[serde(default)]
    pub require_peer_at_boot: bool,
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

/// Creates (or updates) [`REPLICATION_ROLE`] with `password` as a SCRAM verifier, lets
/// it into `postgres` (where the peer's fence asks for [`IDENTITY_SQL`]), has the server
/// drop its connections within ~20 s once the other end is gone (a replica or a copy cut
/// by a power cut would otherwise hold its slot for the minutes TCP takes to give up,
/// and the replica could not stream again until then), and lets it read what
/// `pg_rewind` reads from a source server (the grants PostgreSQL's
/// documentation lists, instead of a superuser over the network); then
/// [`slot_sql`] for every peer. Run by the primary's superuser; psql input (`\gexec`).
pub fn role_sql(password: &Secret, salt: &[u8; 16], peers: &[String]) -> String {
    let r = REPLICATION_ROLE;
    format!(
        "SET log_statement = 'none';\n\
         SELECT 'CREATE ROLE {r} REPLICATION LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}')\\gexec\n\
         ALTER ROLE {r} REPLICATION LOGIN PASSWORD '{}';\n\
         GRANT CONNECT ON DATABASE postgres TO {r};\n\
         ALTER ROLE {r} SET tcp_user_timeout = 15000;\n\
         ALTER ROLE {r} SET tcp_keepalives_idle = 5;\n\
         ALTER ROLE {r} SET tcp_keepalives_interval = 5;\n\
         ALTER ROLE {r} SET tcp_keepalives_count = 3;\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {r};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {r};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {r};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {r};\n{}",
        crate::scram::verifier(password.expose(), salt),
        peers.iter().map(|p| slot_sql(p)).collect::<String>()
    )
}

/// `synchronous_standby_names` for a primary whose replicas are `peers`: quorum
/// commit, a commit returns once any one of them has its WAL on disk
/// (`ANY 1 ("a", "b")`; one peer is named alone, the same promise, and PostgreSQL
/// then calls it `sync` rather than `quorum`). With two replicas, a primary cut off
/// from both can acknowledge nothing: PostgreSQL's own quorum is the fence against a
/// lost primary that keeps writing alone.
pub fn synchronous_standby_names(peers: &[String]) -> String {
    let names: Vec<String> = peers
        .iter()
        .map(|p| format!("\"{}\"", slot_name(p)))
        .collect();
    match names.as_slice() {
        [one] => one.clone(),
        _ => format!("ANY 1 ({})", names.join(", ")),
    }
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

/// The status query: one JSON object that [`ReplicationStatus`] reads; psql runs it
/// with `-A -t`. The `\if` keeps functions that fail during recovery off the replica.
/// A replica's lag is never below zero: its clock may run behind the primary's (each
/// guest's clock is its own), which made the age of the last replayed commit negative
/// and the whole object unreadable.
pub const STATUS_SQL: &str = r"select pg_is_in_recovery() as standby \gset
\if :standby
select json_build_object(
  'role', 'replica',
  'timeline', coalesce((select received_tli from pg_stat_wal_receiver), (select timeline_id from pg_control_checkpoint())),
  'state', coalesce((select status from pg_stat_wal_receiver), 'not streaming'),
  'peer', coalesce((select sender_host from pg_stat_wal_receiver), ''),
  'lag_bytes', greatest(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::bigint,
  'lag_seconds', greatest(0, extract(epoch from now() - pg_last_xact_replay_timestamp()))::bigint,
  'slots', '[]'::json,
  'replicas', '[]'::json);
\else
with replicas as (
  -- The one sender to show: a replica before a copy still running or cut off
  -- (pg_basebackup's own senders), a streaming one first.
  select * from pg_stat_replication
  order by application_name = 'pg_basebackup', state <> 'streaming', backend_start desc
  limit 1)
select json_build_object(
  'role', 'primary',
  'timeline', ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,
  'state', coalesce((select state || coalesce(' ' || sync_state, '') from replicas), 'no replica connected'),
  'peer', coalesce((select application_name from replicas), ''),
  'lag_bytes', (select pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint from replicas),
  'lag_seconds', (select coalesce(extract(epoch from replay_lag)::bigint, 0) from replicas),
  'slots', coalesce((select json_agg(json_build_object(
      'name', slot_name,
      'active', active,
      'wal_status', coalesce(wal_status, ''),
      'inactive_secs', extract(epoch from now() - inactive_since)::bigint,
      'retained_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint) order by slot_name)
    from pg_replication_slots where slot_type = 'physical'), '[]'::json),
  'replicas', coalesce((select json_agg(json_build_object(
      'name', application_name,
      'state', state || coalesce(' ' || sync_state, ''),
      'lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
      'lag_seconds', coalesce(extract(epoch from replay_lag)::bigint, 0)) order by application_name)
    from pg_stat_replication where application_name <> 'pg_basebackup'), '[]'::json));
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
    #[serde(default)]
    pub slots: Vec<SlotStatus>,
    /// On a primary, every replica streaming from it now (a cluster has several).
    #[serde(default)]
    pub replicas: Vec<ReplicaLink>,
}

/// One replica as its primary sees it (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLink {
    /// Its `application_name` (the replica's [`slot_name`]).
    pub name: String,
    /// `state sync_state`, e.g. `streaming quorum`.
    pub state: String,
    /// WAL it has not replayed yet.
    pub lag_bytes: Option<u64>,
    /// Its replay lag in seconds.
    pub lag_seconds: Option<u64>,
}

/// One physical replication slot on a primary: the WAL it holds back for its replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// The slot (the replica's [`slot_name`]).
    pub name: String,
    /// Whether its replica streams through it now.
    pub active: bool,
    /// PostgreSQL's `wal_status`: `reserved`, `extended`, `unreserved` (past
    /// `max_slot_wal_keep_size`: invalidated at the next checkpoint) or `lost` (the
    /// replica must be copied anew).
    pub wal_status: String,
    /// WAL it holds back on this node's disk; `None` when it holds none (lost).
    pub retained_bytes: Option<u64>,
    /// Seconds since its replica last used it; `None` while in use.
    #[serde(default)]
    pub inactive_secs: Option<u64>,
}

impl SlotStatus {
    /// True when PostgreSQL gave up the WAL this slot's replica still needed.
    pub fn lost(&self) -> bool {
        self.wal_status == "lost"
    }

    /// The percent of a `disk_bytes` data disk the slot holds in WAL (0 for an empty
    /// or unknown disk).
    pub fn share_of(&self, disk_bytes: u64) -> u64 {
        match (self.retained_bytes, disk_bytes) {
            (Some(b), d) if d > 0 => b.saturating_mul(100) / d,
            _ => 0,
        }
    }
}

impl ReplicationStatus {
    /// Reads [`STATUS_SQL`]'s output (psql's, the JSON object on one line); `None` when
    /// there is none.
    pub fn parse(output: &str) -> Option<ReplicationStatus> {
        output
            .lines()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
    }
}

/// One node's identity as it reports it: which cluster, on which timeline, and whether
/// it is a replica. What the fence compares; [`IDENTITY_SQL`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// `pg_control_system()`'s system identifier: the same on every node of a cluster.
    pub system_identifier: String,
    /// The timeline it writes (a primary) or last recovered (a replica).
    pub timeline: u32,
    /// True on a replica.
    pub in_recovery: bool,
    /// The end of the WAL it has (written on a primary, received or replayed on a
    /// replica) in bytes from the start: which replica is furthest ahead.
    #[serde(default)]
    pub wal_end: Option<u64>,
}

impl NodeIdentity {
    /// Reads [`IDENTITY_SQL`]'s output; `None` when there is none.
    pub fn parse(output: &str) -> Option<NodeIdentity> {
        output
            .lines()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
    }
}

/// A node's identity as one JSON object; any role that may log in can run it (the
/// functions are PUBLIC's), so a node asks its peer as [`REPLICATION_ROLE`].
pub const IDENTITY_SQL: &str = "select json_build_object(\
'system_identifier', (select system_identifier::text from pg_control_system()), \
'timeline', case when pg_is_in_recovery() then (select timeline_id from pg_control_checkpoint()) \
else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end, \
'in_recovery', pg_is_in_recovery(), \
'wal_end', pg_wal_lsn_diff(case when pg_is_in_recovery() \
then greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) else pg_current_wal_lsn() end, '0/0')::bigint)";

/// Whether a primary with a peer may take writes, as its guard last judged it (shown by
/// `sovereign status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Fence {
    /// The peer answered and is no newer primary of this cluster.
    Clear {
        /// When the peer last answered (seconds since the epoch, the guest's clock).
        peer_seen_unix: i64,
    },
    /// The peer has not answered since this node became a primary: nothing rules out
    /// that it was promoted meanwhile.
    Unconfirmed {
        /// What was tried.
        reason: String,
        /// Since when.
        since_unix: i64,
    },
    /// This node stopped taking writes (postgres is stopped, its data kept) because the
    /// peer is the primary by the fence's rules.
    Fenced {
        /// Why, and what to do.
        reason: String,
        /// Since when.
        since_unix: i64,
    },
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
        let sql = role_sql(
            &Secret::new("replicate-me-please"),
            &[5; 16],
            &["sql-replica".into(), "sql-r2".into()],
        );
        assert!(sql.starts_with("SET log_statement = 'none';\n"));
        assert!(!sql.contains("replicate-me"));
        let stored = sql
            .split('\'')
            .find(|s| s.starts_with("SCRAM-SHA-256$"))
            .unwrap();
        assert!(crate::scram::matches(stored, "replicate-me-please"));
        assert!(sql.contains("pg_create_physical_replication_slot('sql_replica', true)"));
        assert!(sql.contains("pg_create_physical_replication_slot('sql_r2', true)"));
        assert!(sql.contains("WHERE rolname = 'replicator')\\gexec"));
    }

    #[test]
    fn the_quorum_names_every_peer_by_slot() {
        assert_eq!(
            synchronous_standby_names(&["sql-r1".into(), "sql-r2".into()]),
            "ANY 1 (\"sql_r1\", \"sql_r2\")"
        );
        assert_eq!(synchronous_standby_names(&["sql-vm".into()]), "\"sql_vm\"");
    }

    #[test]
    fn a_replica_behind_the_primarys_clock_still_reads() {
        // What a replica whose clock runs 1 s behind printed before the clamp.
        assert!(ReplicationStatus::parse(
            "{\"role\" : \"replica\", \"timeline\" : 1, \"state\" : \"streaming\", \"peer\" : \"100.64.0.1\", \"lag_bytes\" : 0, \"lag_seconds\" : -1, \"slots\" : []}"
        )
        .is_none());
        assert!(STATUS_SQL.contains(
            "'lag_seconds', greatest(0, extract(epoch from now() - pg_last_xact_replay_timestamp()))::bigint"
        ));
        assert!(STATUS_SQL.contains("'lag_bytes', greatest(0, pg_wal_lsn_diff("));
    }

    #[test]
    fn both_sides_status_objects_read() {
        let p = ReplicationStatus::parse(
            "{\"role\" : \"primary\", \"timeline\" : 2, \"state\" : \"streaming async\", \"peer\" : \"sql_replica\", \"lag_bytes\" : 1024, \"lag_seconds\" : 0, \"slots\" : [{\"name\" : \"sql_replica\", \"active\" : true, \"wal_status\" : \"reserved\", \"retained_bytes\" : 33554432}]}\n",
        )
        .unwrap();
        assert_eq!(p.role, Role::Primary);
        assert_eq!(p.timeline, 2);
        assert_eq!(p.lag_bytes, Some(1024));
        assert_eq!(p.slots[0].retained_bytes, Some(32 << 20));
        assert!(!p.slots[0].lost());
        let r = ReplicationStatus::parse(
            "{\"role\" : \"replica\", \"timeline\" : 1, \"state\" : \"streaming\", \"peer\" : \"100.64.0.1\", \"lag_bytes\" : 0, \"lag_seconds\" : null, \"slots\" : []}",
        )
        .unwrap();
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.lag_seconds, None);
        assert!(r.slots.is_empty());
        assert!(ReplicationStatus::parse("{\"role\": \"standby\"}").is_none());
        assert!(ReplicationStatus::parse("psql: error").is_none());
    }

    #[test]
    fn identities_read_from_json() {
        let id = NodeIdentity::parse(
            "{\"system_identifier\" : \"7441234567890123456\", \"timeline\" : 2, \"in_recovery\" : false}",
        )
        .unwrap();
        assert_eq!(id.system_identifier, "7441234567890123456");
        assert_eq!((id.timeline, id.in_recovery), (2, false));
        assert!(NodeIdentity::parse("").is_none());
    }

    #[test]
    fn the_config_round_trips_without_showing_the_password() {
        let c = ReplicationConfig {
            role: Role::Replica,
            peers: vec!["sql-vm".into(), "sql-r2".into()],
            password: Secret::new("replicate-me"),
            synchronous: false,
            require_peer_at_boot: false,
        };
        assert!(!format!("{c:?}").contains("replicate-me"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ReplicationConfig>(&json).unwrap(), c);
    }
}
