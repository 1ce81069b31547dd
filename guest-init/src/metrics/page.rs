//! The page itself: the guest's status, what psql read, and the supervisor's active
//! alerts, as the series `docs/prometheus/README.md` lists. Pure, so every series is
//! unit-tested.

use super::text::{flag, Kind, Page, Sample};
use protocol::alerts::ActiveAlert;
use protocol::backup::{BackupRun, BackupStatus};
use protocol::messages::{DiskUsage, GuestStatus, ServerState};
use protocol::metrics::{PgDeadTuples, PgMetrics};
use protocol::replication::Fence;

/// What one scrape read from the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgScrape {
    /// The server's figures.
    pub server: PgMetrics,
    /// Dead rows per database.
    pub dead_tuples: Vec<PgDeadTuples>,
}

/// What one scrape renders.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// PID 1's status, as the host gets it.
    pub status: &'a GuestStatus,
    /// What psql read, or why it read nothing (then `pg_up` is 0).
    pub pg: Result<PgScrape, String>,
    /// The supervisor's active alerts, once it told any.
    pub alerts: Option<&'a [ActiveAlert]>,
    /// The longest the backup schedule leaves between two runs, seconds.
    pub backup_schedule_secs: Option<u64>,
}

fn one(label: &'static str, value: impl Into<String>, v: f64) -> Sample {
    (vec![(label, value.into())], v)
}

/// Writes the page.
pub fn render(i: &Inputs<'_>) -> String {
    let mut p = Page::default();
    postgres(&mut p, i);
    backups(&mut p, i);
    disks(&mut p, i.status);
    pid1(&mut p, i.status);
    alerts(&mut p, i.alerts);
    p.finish()
}

fn postgres(p: &mut Page, i: &Inputs<'_>) {
    let up = i.pg.is_ok()
        && i.status
            .postgres
            .as_ref()
            .is_some_and(|pg| pg.state == ServerState::Ready);
    p.single(
        "pg_up",
        Kind::Gauge,
        "1 when PostgreSQL answered this scrape.",
        flag(up),
    );
    let Ok(scrape) = &i.pg else { return };
    let s = &scrape.server;
    let dbs = &s.databases;
    p.single(
        "pg_settings_max_connections",
        Kind::Gauge,
        "max_connections.",
        f64::from(s.max_connections),
    );
    let per_db = |f: &dyn Fn(&protocol::metrics::PgDatabase) -> f64| -> Vec<Sample> {
        dbs.iter()
            .map(|d| one("datname", &d.datname, f(d)))
            .collect()
    };
    p.family(
        "pg_stat_database_numbackends",
        Kind::Gauge,
        "Connections now.",
        per_db(&|d| f64::from(d.numbackends)),
    );
    p.family(
        "pg_database_connection_limit",
        Kind::Gauge,
        "The database's CONNECTION LIMIT (-1: none).",
        per_db(&|d| f64::from(d.connection_limit)),
    );
    p.family(
        "sovereign_pg_owner_connection_limit",
        Kind::Gauge,
        "The CONNECTION LIMIT of the database's owner, the app's role (-1: none).",
        per_db(&|d| f64::from(d.owner_connection_limit)),
    );
    p.family(
        "pg_database_size_bytes",
        Kind::Gauge,
        "Size on disk.",
        per_db(&|d| d.size_bytes as f64),
    );
    p.family(
        "pg_stat_database_xact_commit_total",
        Kind::Counter,
        "Transactions committed.",
        per_db(&|d| d.xact_commit as f64),
    );
    p.family(
        "pg_stat_database_xact_rollback_total",
        Kind::Counter,
        "Transactions rolled back.",
        per_db(&|d| d.xact_rollback as f64),
    );
    p.family(
        "sovereign_pg_dead_tuples",
        Kind::Gauge,
        "Dead rows over the database's tables.",
        scrape
            .dead_tuples
            .iter()
            .map(|d| one("datname", &d.datname, d.dead as f64)),
    );
    p.single(
        "pg_replication_is_replica",
        Kind::Gauge,
        "1 on a replica (in recovery).",
        flag(s.in_recovery),
    );
    p.single(
        "sovereign_pg_timeline",
        Kind::Gauge,
        "The timeline of the latest checkpoint.",
        f64::from(s.timeline),
    );
    if let Some(lag) = s.replay_lag_s {
        p.single(
            "pg_replication_lag_seconds",
            Kind::Gauge,
            "A replica: seconds since the last replayed commit, 0 when all received WAL is replayed.",
            lag,
        );
        p.single(
            "sovereign_pg_wal_receiver_connected",
            Kind::Gauge,
            "A replica: 1 while it streams from its primary.",
            flag(s.wal_receiver_connected),
        );
    }
    let name = |r: &protocol::metrics::PgReplica| r.application_name.clone();
    p.family(
        "sovereign_pg_replica_lag_bytes",
        Kind::Gauge,
        "A primary: WAL a connected replica has not replayed.",
        s.replicas
            .iter()
            .map(|r| one("application_name", name(r), r.lag_bytes)),
    );
    p.family(
        "sovereign_pg_replica_lag_seconds",
        Kind::Gauge,
        "A primary: the replica's replay_lag.",
        s.replicas
            .iter()
            .map(|r| one("application_name", name(r), r.lag_s)),
    );
    p.family(
        "sovereign_pg_replication_slot_retained_bytes",
        Kind::Gauge,
        "WAL a replication slot keeps on the data disk.",
        s.slots
            .iter()
            .map(|sl| one("slot_name", &sl.slot_name, sl.retained_bytes)),
    );
    p.family(
        "sovereign_pg_replication_slot_active",
        Kind::Gauge,
        "1 while a replica uses the slot.",
        s.slots
            .iter()
            .map(|sl| one("slot_name", &sl.slot_name, flag(sl.active))),
    );
    let a = &s.archiver;
    p.single(
        "pg_stat_archiver_archived_total",
        Kind::Counter,
        "WAL segments archived.",
        a.archived_count as f64,
    );
    p.single(
        "pg_stat_archiver_failed_total",
        Kind::Counter,
        "Failed WAL archive attempts.",
        a.failed_count as f64,
    );
    if let Some(t) = a.last_archived_unix {
        p.single(
            "sovereign_wal_last_archived_timestamp_seconds",
            Kind::Gauge,
            "When the newest WAL segment was archived.",
            t,
        );
    }
    let failing = protocol::backup::archive_failing(a.last_failed_unix, a.last_archived_unix);
    p.single(
        "sovereign_wal_archive_failing",
        Kind::Gauge,
        "1 when the last WAL archive attempt failed and none succeeded since.",
        flag(failing),
    );
    p.single(
        "sovereign_pg_archive_timeout_seconds",
        Kind::Gauge,
        "archive_timeout.",
        s.archive_timeout_s,
    );
}

fn backups(p: &mut Page, i: &Inputs<'_>) {
    let Some(b) = i.status.backup.as_deref() else {
        return;
    };
    p.single(
        "sovereign_backups_available",
        Kind::Gauge,
        "0 when backups cannot run at all (no backup disk, no stanza).",
        flag(b.problem.is_none()),
    );
    let repos = repos(b);
    p.family(
        "sovereign_backup_last_success_timestamp_seconds",
        Kind::Gauge,
        "Start of the newest backup run that made a set.",
        repos.iter().filter_map(|(repo, _, ok, _)| {
            ok.map(|r| one("repo", repo.to_string(), r.started_unix as f64))
        }),
    );
    p.family(
        "sovereign_backup_last_run_failed",
        Kind::Gauge,
        "1 when the newest backup run failed.",
        repos.iter().map(|(repo, last, _, _)| {
            one(
                "repo",
                repo.to_string(),
                flag(last.is_some_and(|r| !r.ok())),
            )
        }),
    );
    p.family(
        "sovereign_backup_sets",
        Kind::Gauge,
        "Backup sets in the repository.",
        repos
            .iter()
            .map(|(repo, _, _, sets)| one("repo", repo.to_string(), *sets as f64)),
    );
    if let Some(secs) = i.backup_schedule_secs {
        p.single(
            "sovereign_backup_schedule_seconds",
            Kind::Gauge,
            "The longest the backup schedule leaves between two runs.",
            secs as f64,
        );
    }
    if let Some(o) = &b.offsite {
        p.single(
            "sovereign_offsite_problem",
            Kind::Gauge,
            "1 when the off-device server refuses or cannot be reached.",
            flag(o.problem.is_some()),
        );
        if let Some(t) = o.shipped_unix {
            p.single(
                "sovereign_wal_shipped_timestamp_seconds",
                Kind::Gauge,
                "When WAL last went to the off-device server.",
                t as f64,
            );
        }
    }
}

/// Each repository: its number, newest run, newest good run and sets.
fn repos(b: &BackupStatus) -> Vec<(u8, Option<&BackupRun>, Option<&BackupRun>, usize)> {
    let mut out = vec![(
        protocol::backup::REPO_LOCAL,
        b.last_run.as_ref(),
        b.last_ok.as_ref(),
        b.sets,
    )];
    if let Some(o) = &b.offsite {
        out.push((
            protocol::backup::REPO_OFFSITE,
            o.last_run.as_ref(),
            o.last_ok.as_ref(),
            o.sets,
        ));
    }
    out
}

fn disks(p: &mut Page, s: &GuestStatus) {
    let backup = s.backup.as_deref().and_then(|b| b.disk);
    let both: Vec<(&str, DiskUsage)> = [("data", s.data_disk), ("backup", backup)]
        .into_iter()
        .filter_map(|(name, d)| d.map(|d| (name, d)))
        .collect();
    p.family(
        "sovereign_disk_size_bytes",
        Kind::Gauge,
        "The filesystem's size.",
        both.iter()
            .map(|(n, d)| one("disk", *n, d.total_bytes as f64)),
    );
    p.family(
        "sovereign_disk_available_bytes",
        Kind::Gauge,
        "Bytes PostgreSQL can still write.",
        both.iter()
            .map(|(n, d)| one("disk", *n, d.available_bytes as f64)),
    );
    if let Some(d) = s.data_disk {
        p.single(
            "sovereign_disk_reserve_released",
            Kind::Gauge,
            "1 when the data disk filled and its reserve was released.",
            flag(d.reserve_released),
        );
    }
    if let Some(f) = &s.fence {
        let state = match f {
            Fence::Clear { .. } => "clear",
            Fence::Unconfirmed { .. } => "unconfirmed",
            Fence::Fenced { .. } => "fenced",
        };
        p.family(
            "sovereign_fence",
            Kind::Gauge,
            "1 for the fence's verdict on a primary with a peer.",
            ["clear", "unconfirmed", "fenced"]
                .into_iter()
                .map(|st| one("state", st, flag(st == state))),
        );
    }
}

fn pid1(p: &mut Page, s: &GuestStatus) {
    if let Some(m) = s.init_memory {
        p.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "PID 1's resident memory.",
            (m.rss_kib * 1024) as f64,
        );
    }
    p.single(
        "sovereign_guest_uptime_seconds",
        Kind::Gauge,
        "Since the guest kernel booted.",
        s.uptime_ms as f64 / 1000.0,
    );
    p.family(
        "sovereign_service_up",
        Kind::Gauge,
        "1 while the supervised service runs.",
        s.services
            .iter()
            .map(|sv| one("service", &sv.name, flag(sv.pid.is_some()))),
    );
    p.family(
        "sovereign_service_restarts_total",
        Kind::Counter,
        "Restarts after the service died.",
        s.services
            .iter()
            .map(|sv| one("service", &sv.name, f64::from(sv.restarts))),
    );
    let Some(n) = s.network else { return };
    p.single(
        "sovereign_forwarder_connected",
        Kind::Gauge,
        "1 while the link to gvproxy is up.",
        flag(n.connected),
    );
    for (name, help, out, into) in [
        (
            "sovereign_forwarder_frames_total",
            "Ethernet frames forwarded (out: to gvproxy).",
            n.frames_out,
            n.frames_in,
        ),
        (
            "sovereign_forwarder_bytes_total",
            "Bytes of the frames forwarded.",
            n.bytes_out,
            n.bytes_in,
        ),
    ] {
        let by_direction = [
            one("direction", "out", out as f64),
            one("direction", "in", into as f64),
        ];
        p.family(name, Kind::Counter, help, by_direction);
    }
    p.single(
        "sovereign_forwarder_dropped_frames_total",
        Kind::Counter,
        "Frames dropped (link down, oversize, tap write failed).",
        n.drops as f64,
    );
    p.single(
        "sovereign_forwarder_reconnects_total",
        Kind::Counter,
        "Reconnects to gvproxy after the first connection.",
        n.reconnects as f64,
    );
}

fn alerts(p: &mut Page, active: Option<&[ActiveAlert]>) {
    let Some(active) = active else { return };
    p.single(
        "sovereign_alerts_active",
        Kind::Gauge,
        "Conditions the host's supervisor holds active now.",
        active.len() as f64,
    );
    p.family(
        "sovereign_alert_active",
        Kind::Gauge,
        "1 for each condition the host's supervisor holds active.",
        active.iter().map(|a| {
            (
                vec![
                    ("condition", a.condition.name().to_string()),
                    ("severity", a.severity.to_string()),
                ],
                1.0,
            )
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::alerts::{Condition, Severity};
    use protocol::messages::{NetworkCounters, PostgresInfo, ServiceStatus};
    use protocol::metrics::{parse_dead_tuples, parse_server};

    const PRIMARY: &str = r#"{"max_connections" : 40, "archive_timeout_s" : 60, "in_recovery" : false, "timeline" : 1, "databases" : [{"datname" : "forgejo", "numbackends" : 3, "connection_limit" : -1, "owner_connection_limit" : 20, "size_bytes" : 7901711, "xact_commit" : 1200, "xact_rollback" : 4}], "replay_lag_s" : null, "wal_receiver_connected" : false, "replicas" : [], "slots" : [], "archiver" : {"archived_count" : 12, "failed_count" : 1, "last_archived_unix" : 1800000100, "last_failed_unix" : 1800000000}}
{"datname" : "forgejo", "dead" : 17}"#;

    fn status() -> GuestStatus {
        GuestStatus {
            uptime_ms: 61_500,
            postgres: Some(PostgresInfo {
                state: ServerState::Ready,
                ..PostgresInfo::default()
            }),
            services: vec![ServiceStatus {
                name: "postgres".into(),
                pid: Some(300),
                restarts: 2,
            }],
            network: Some(NetworkCounters {
                connected: true,
                frames_out: 10,
                bytes_out: 1000,
                ..NetworkCounters::default()
            }),
            data_disk: Some(DiskUsage {
                total_bytes: 4 << 30,
                available_bytes: 1 << 30,
                reserve_released: false,
            }),
            backup: Some(Box::new(BackupStatus {
                last_ok: Some(BackupRun {
                    kind: protocol::backup::BackupKind::Full,
                    repo: 1,
                    started_unix: 1_800_000_000,
                    duration_ms: 1,
                    label: Some("x".into()),
                    repo_bytes: None,
                    error: None,
                }),
                sets: 1,
                ..BackupStatus::default()
            })),
            ..GuestStatus::default()
        }
    }

    #[test]
    fn a_healthy_primary_page() {
        let s = status();
        let alerts = [ActiveAlert {
            condition: Condition::BackupDiskFull,
            severity: Severity::Warning,
            summary: "backup disk 85% used".into(),
            since_unix: 1,
            notified_unix: 1,
        }];
        let page = render(&Inputs {
            status: &s,
            pg: parse_server(PRIMARY)
                .map(|server| PgScrape {
                    server,
                    dead_tuples: parse_dead_tuples(PRIMARY),
                })
                .map_err(|e| e.to_string()),
            alerts: Some(&alerts),
            backup_schedule_secs: Some(86_400),
        });
        for line in [
            "pg_up 1\n",
            "pg_stat_database_numbackends{datname=\"forgejo\"} 3\n",
            "pg_database_connection_limit{datname=\"forgejo\"} -1\n",
            "sovereign_pg_owner_connection_limit{datname=\"forgejo\"} 20\n",
            "pg_stat_database_xact_commit_total{datname=\"forgejo\"} 1200\n",
            "sovereign_pg_dead_tuples{datname=\"forgejo\"} 17\n",
            "pg_replication_is_replica 0\n",
            "sovereign_wal_archive_failing 0\n",
            "sovereign_backup_last_success_timestamp_seconds{repo=\"1\"} 1800000000\n",
            "sovereign_backup_last_run_failed{repo=\"1\"} 0\n",
            "sovereign_disk_size_bytes{disk=\"data\"} 4294967296\n",
            "sovereign_service_restarts_total{service=\"postgres\"} 2\n",
            "sovereign_forwarder_frames_total{direction=\"out\"} 10\n",
            "sovereign_guest_uptime_seconds 61.5\n",
            "sovereign_alerts_active 1\n",
            "sovereign_alert_active{condition=\"backup-disk-full\",severity=\"warning\"} 1\n",
            "# TYPE pg_stat_database_xact_commit_total counter\n",
        ] {
            assert!(page.contains(line), "{line:?} missing from\n{page}");
        }
        // A primary has no replica lag series; no fence without a peer.
        assert!(!page.contains("pg_replication_lag_seconds"), "{page}");
        assert!(!page.contains("sovereign_fence"), "{page}");
    }

    #[test]
    fn a_server_that_did_not_answer_is_down_and_the_rest_still_shows() {
        let s = status();
        let page = render(&Inputs {
            status: &s,
            pg: Err("connection refused".into()),
            alerts: None,
            backup_schedule_secs: None,
        });
        assert!(page.contains("pg_up 0\n"), "{page}");
        assert!(!page.contains("pg_database_size_bytes"), "{page}");
        assert!(page.contains("sovereign_forwarder_connected 1\n"), "{page}");
        assert!(!page.contains("sovereign_alerts_active"), "{page}");
    }
}
