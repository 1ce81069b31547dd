//! What PID 1's Prometheus page reads from PostgreSQL: two psql scripts whose every
//! answer is a JSON line (the server's figures, then each database's dead rows, read
//! connected to it), and the types serde reads them into. The guest renders them
//! (with its own state) as Prometheus' text format; the series are listed in
//! `docs/prometheus/README.md`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why psql's answer could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetricsError {
    /// No line of the output was the server's JSON object.
    #[error("psql's answer held no metrics object: {0:?}")]
    NoAnswer(String),
}

/// The server's figures that one query reads from the catalog and statistics views.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgMetrics {
    /// `max_connections`.
    pub max_connections: u32,
    /// `archive_timeout`, seconds.
    pub archive_timeout_s: f64,
    /// True on a replica.
    pub in_recovery: bool,
    /// The timeline of the latest checkpoint.
    pub timeline: u32,
    /// Every database that takes connections.
    pub databases: Vec<PgDatabase>,
    /// A replica: seconds since the last replayed commit, 0 when everything received is
    /// replayed (postgres_exporter's rule); `None` on a primary.
    pub replay_lag_s: Option<f64>,
    /// A replica: whether its WAL receiver streams.
    pub wal_receiver_connected: bool,
    /// A primary: its connected replicas.
    pub replicas: Vec<PgReplica>,
    /// Replication slots.
    pub slots: Vec<PgSlot>,
    /// `pg_stat_archiver`.
    pub archiver: PgArchiver,
}

/// One database's connections, limit, size and transactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgDatabase {
    /// Its name.
    pub datname: String,
    /// Connections now.
    pub numbackends: u32,
    /// The database's `CONNECTION LIMIT`, -1 for none.
    pub connection_limit: i32,
    /// Its owner's (the app role's) `CONNECTION LIMIT`, -1 for none: the limit `db add
    /// --connection-limit` sets.
    pub owner_connection_limit: i32,
    /// Size on disk.
    pub size_bytes: u64,
    /// Commits since the statistics were reset.
    pub xact_commit: u64,
    /// Rollbacks since the statistics were reset.
    pub xact_rollback: u64,
}

/// A replica as its primary sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgReplica {
    /// Its `application_name`.
    pub application_name: String,
    /// WAL it has not replayed.
    pub lag_bytes: f64,
    /// Its `replay_lag`, seconds.
    pub lag_s: f64,
}

/// A replication slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgSlot {
    /// Its name.
    pub slot_name: String,
    /// Whether a replica uses it now.
    pub active: bool,
    /// WAL it keeps on the data disk.
    pub retained_bytes: f64,
}

/// The WAL archiver's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgArchiver {
    /// Segments archived.
    pub archived_count: u64,
    /// Failed attempts.
    pub failed_count: u64,
    /// When the newest segment was archived (seconds since the epoch).
    pub last_archived_unix: Option<f64>,
    /// When the latest attempt failed.
    pub last_failed_unix: Option<f64>,
}

/// Dead rows over one database's tables (read after `\c` to it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgDeadTuples {
    /// The database.
    pub datname: String,
    /// Dead rows, summed over its user tables.
    pub dead: u64,
}

/// The WAL position this node has: written on a primary, received on a replica.
const CURRENT_LSN: &str =
    "case when pg_is_in_recovery() then pg_last_wal_receive_lsn() else pg_current_wal_lsn() end";

/// The query for [`PgMetrics`], one JSON object on one line.
pub fn server_sql() -> String {
    format!(
        "select json_build_object(\
         'max_connections', current_setting('max_connections')::int, \
         'archive_timeout_s', extract(epoch from current_setting('archive_timeout')::interval), \
         'in_recovery', pg_is_in_recovery(), \
         'timeline', (select timeline_id from pg_control_checkpoint()), \
         'databases', coalesce((select json_agg(json_build_object(\
             'datname', d.datname, 'numbackends', s.numbackends, \
             'connection_limit', d.datconnlimit, 'owner_connection_limit', r.rolconnlimit, \
             'size_bytes', pg_database_size(d.oid), \
             'xact_commit', s.xact_commit, 'xact_rollback', s.xact_rollback) order by d.datname) \
           from pg_database d join pg_stat_database s on s.datid = d.oid \
           join pg_roles r on r.oid = d.datdba \
           where d.datallowconn and not d.datistemplate), '[]'::json), \
         'replay_lag_s', case when pg_is_in_recovery() then \
             case when pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() then 0 \
             else coalesce(extract(epoch from now() - pg_last_xact_replay_timestamp()), 0) end end, \
         'wal_receiver_connected', exists (select 1 from pg_stat_wal_receiver where status = 'streaming'), \
         'replicas', coalesce((select json_agg(json_build_object(\
             'application_name', application_name, \
             'lag_bytes', coalesce(pg_wal_lsn_diff({CURRENT_LSN}, replay_lsn), 0), \
             'lag_s', coalesce(extract(epoch from replay_lag), 0))) \
           from pg_stat_replication), '[]'::json), \
         'slots', coalesce((select json_agg(json_build_object(\
             'slot_name', slot_name, 'active', active, \
             'retained_bytes', coalesce(pg_wal_lsn_diff({CURRENT_LSN}, restart_lsn), 0))) \
           from pg_replication_slots), '[]'::json), \
         'archiver', (select json_build_object(\
             'archived_count', archived_count, 'failed_count', failed_count, \
             'last_archived_unix', extract(epoch from last_archived_time), \
             'last_failed_unix', extract(epoch from last_failed_time)) from pg_stat_archiver));\n"
    )
}

/// The dead rows of the database psql is connected to, one JSON object on one line.
pub const DEAD_TUPLES_SQL: &str = "select json_build_object('datname', current_database(), \
     'dead', coalesce(sum(n_dead_tup), 0)) from pg_stat_user_tables;\n";

/// The script for the dead rows of `databases` (the names [`PgMetrics::databases`]
/// lists): psql connects to each in turn, the name quoted as an identifier.
pub fn dead_tuples_script<'a>(databases: impl IntoIterator<Item = &'a str>) -> String {
    let mut script = String::new();
    for db in databases {
        script.push_str(&format!("\\c \"{}\"\n", db.replace('"', "\"\"")));
        script.push_str(DEAD_TUPLES_SQL);
    }
    script
}

/// The first line of `output` that is the server's object ([`server_sql`]'s answer).
pub fn parse_server(output: &str) -> Result<PgMetrics, MetricsError> {
    json_lines(output).next().ok_or_else(|| {
        let mut head: String = output.chars().take(200).collect();
        if head.len() < output.len() {
            head.push('…');
        }
        MetricsError::NoAnswer(head)
    })
}

/// Every dead-rows object in `output` ([`dead_tuples_script`]'s answer; psql's
/// connection notices between them are skipped).
pub fn parse_dead_tuples(output: &str) -> Vec<PgDeadTuples> {
    json_lines(output).collect()
}

fn json_lines<'a, T: serde::de::DeserializeOwned + 'a>(
    output: &'a str,
) -> impl Iterator<Item = T> + 'a {
    output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: &str = r#"{"max_connections" : 40, "archive_timeout_s" : 60.000000, "in_recovery" : false, "timeline" : 2, "databases" : [{"datname" : "forgejo", "numbackends" : 3, "connection_limit" : -1, "owner_connection_limit" : 20, "size_bytes" : 7901711, "xact_commit" : 1200, "xact_rollback" : 4}], "replay_lag_s" : null, "wal_receiver_connected" : false, "replicas" : [{"application_name" : "sql-replica", "lag_bytes" : 0, "lag_s" : 0.001234}], "slots" : [{"slot_name" : "sql_replica", "active" : true, "retained_bytes" : 16777216}], "archiver" : {"archived_count" : 12, "failed_count" : 1, "last_archived_unix" : 1800000000.123456, "last_failed_unix" : null}}"#;

    #[test]
    fn reads_a_primary_as_psql_prints_it() {
        let s = parse_server(&format!("{PRIMARY}\n")).unwrap();
        assert_eq!(s.max_connections, 40);
        assert_eq!(s.timeline, 2);
        assert_eq!(s.databases[0].connection_limit, -1);
        assert_eq!(s.databases[0].owner_connection_limit, 20);
        assert_eq!(s.databases[0].size_bytes, 7_901_711);
        assert_eq!(s.replay_lag_s, None);
        assert_eq!(s.slots[0].retained_bytes, 16_777_216.0);
        assert_eq!(s.archiver.last_failed_unix, None);
    }

    #[test]
    fn reads_the_dead_rows_between_connection_notices() {
        let out = "You are now connected to database \"forgejo\" as user \"postgres\".\n\
                   {\"datname\" : \"forgejo\", \"dead\" : 17}\n{\"datname\" : \"tiny\", \"dead\" : 0}\n";
        let d = parse_dead_tuples(out);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            PgDeadTuples {
                datname: "forgejo".into(),
                dead: 17
            }
        );
    }

    #[test]
    fn output_without_the_server_object_is_an_error_quoting_it() {
        let e = parse_server("psql: error: connection refused\n").unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    #[test]
    fn the_script_connects_to_each_database_quoted() {
        let s = dead_tuples_script(["postgres", "for\"gejo"]);
        assert!(s.starts_with("\\c \"postgres\"\n"), "{s}");
        assert!(s.contains("\\c \"for\"\"gejo\"\n"), "{s}");
        assert_eq!(s.matches("pg_stat_user_tables").count(), 2);
        assert!(server_sql().starts_with("select json_build_object("));
    }
}
