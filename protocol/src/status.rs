//! What `sovereign status` reports, as one typed value: the supervisor's view of the VM
//! (phase, processes, stages), the guest's own status, and the database and replication
//! as the server answers them. `status --json` prints it; the tests and any other
//! reader deserialize it. Also the SQL whose JSON the database part is read from.

use crate::messages::{DeviceReport, GuestStatus, Hello};
use crate::replication::ReplicationStatus;
use crate::stage::Stage;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// The form of [`VmStatus`] this build writes. 1: the first typed form (the
/// supervisor's view, the guest's status, `database`, `replication`); 2: `alerts`;
/// 3: `images` and the guest's `image`.
pub const STATUS_VERSION: u32 = 3;

/// Everything `status` reports (`sovereign status --json` prints it): the
/// supervisor's view, the guest's own status, and the database and replication as the
/// server answers. Fields are added, never renamed; [`STATUS_VERSION`] says which
/// form a reader got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The form of this status ([`STATUS_VERSION`]).
    #[serde(default)]
    pub version: u32,
    /// VM name.
    pub name: String,
    /// Its CID.
    pub cid: u32,
    /// crosvm or qemu.
    pub backend: String,
    /// Where the supervisor stands.
    pub phase: Phase,
    /// Milliseconds since the VMM started, while running.
    pub elapsed_ms: Option<u64>,
    /// Host processes.
    pub processes: Vec<ProcessInfo>,
    /// Stage lines.
    pub stages: Vec<StageLine>,
    /// True while a guest control connection is open.
    pub control_connected: bool,
    /// The guest's Hello (its CID and kernel), once received.
    pub hello: Option<Hello>,
    /// The guest's device census, once received (over control or the console).
    pub devices: Option<DeviceReport>,
    /// The guest's own status, when it answered.
    pub guest: Option<GuestStatus>,
    /// Why there is no guest status.
    pub guest_error: Option<String>,
    /// The console log.
    pub console_log: PathBuf,
    /// The supervisor log.
    pub supervisor_log: PathBuf,
    /// The times the supervisor booted the VM again after its VMM died (`restart =
    /// "on-failure"`), oldest first.
    #[serde(default)]
    pub restarts: Vec<VmRestart>,
    /// The boot script that starts the VM after a reboot, when `enable` installed one.
    #[serde(default)]
    pub autostart: Option<PathBuf>,
    /// The server's role, uptime, connections and databases, when it answered.
    #[serde(default)]
    pub database: Option<DatabaseView>,
    /// Replication, when the spec names a peer and the server answered.
    #[serde(default)]
    pub replication: Option<ReplicationStatus>,
    /// Control connections refused for want of the session token.
    #[serde(default)]
    pub control_refused: ControlRefusals,
    /// The conditions that hold now (a backup overdue, a disk filling up), oldest first.
    #[serde(default)]
    pub alerts: Vec<crate::alerts::ActiveAlert>,
    /// The image sets `sovereign update` installed (the current one and the one kept
    /// for `update --rollback`), when it installed any.
    #[serde(default)]
    pub images: Option<crate::release::ImageSets>,
}

/// Control connections the supervisor refused because their Hello lacked this boot's
/// session token: another guest process tried to speak for the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRefusals {
    /// How many since the supervisor started.
    pub count: u32,
    /// The last one's reason.
    pub last: Option<String>,
    /// When the last one came (seconds since the epoch).
    pub last_unix: u64,
}

/// One boot after the VMM died on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRestart {
    /// When (seconds since the epoch).
    pub at_unix: u64,
    /// Which process exited, and how.
    pub exited: String,
    /// The console's last lines before it ended.
    pub console_tail: Vec<String>,
}

/// Where the supervisor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Processes starting or stages pending.
    Booting,
    /// `wait_for` reached; the supervisor keeps the VM.
    Up,
    /// A stage failed.
    Failed,
    /// Shutting down.
    Stopping,
    /// No supervisor (status built from pid files).
    NotRunning,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Booting => "booting",
            Phase::Up => "up",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::NotRunning => "not running",
        })
    }
}

/// A process of the VM as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Which.
    pub role: ProcessRole,
    /// Its pid, if one is recorded.
    pub pid: Option<i32>,
    /// Alive and ours.
    pub alive: bool,
}

/// A process the launcher starts for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessRole {
    /// The detached `sovereign supervise` process that owns the others.
    Supervisor,
    /// vhost-device-vsock (QEMU backend only).
    VhostDeviceVsock,
    /// gvproxy, the guest's network.
    Gvproxy,
    /// crosvm or qemu-system-*.
    Vmm,
}

impl ProcessRole {
    /// Roles in the order they are started (the supervisor first).
    pub const ALL: [ProcessRole; 4] = [
        ProcessRole::Supervisor,
        ProcessRole::VhostDeviceVsock,
        ProcessRole::Gvproxy,
        ProcessRole::Vmm,
    ];

    /// Name used in pid files, logs and output.
    pub fn name(self) -> &'static str {
        match self {
            ProcessRole::Supervisor => "supervisor",
            ProcessRole::VhostDeviceVsock => "vhost-device-vsock",
            ProcessRole::Gvproxy => "gvproxy",
            ProcessRole::Vmm => "vmm",
        }
    }
}

impl fmt::Display for ProcessRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// State of one stage as shown by `start` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// No evidence yet.
    Pending,
    /// The guest said it started working on it.
    Started,
    /// Accepted by the host.
    Accepted,
    /// Accepted earlier, reported impaired since.
    Degraded,
    /// Failed.
    Failed,
}

/// One stage's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLine {
    /// The stage.
    pub stage: Stage,
    /// Where it stands.
    pub status: StageStatus,
    /// Milliseconds from the VMM's start to its acceptance (or failure).
    pub elapsed_ms: Option<u64>,
    /// Short evidence (`vsock→vmw_vsock_virtio_transport, 2×virtio_blk`).
    pub summary: String,
    /// When the guest started the stage, in milliseconds since its kernel started (by
    /// the guest's clock; for `init`, when the kernel handed over to PID 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_started_ms: Option<u64>,
    /// When the guest first reported the stage ready, by the same clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ready_ms: Option<u64>,
}

/// The database itself, as `status` shows it: the server's role and uptime, its
/// connections against `max_connections`, and every database with its role's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseView {
    /// `primary`, or `replica` while the server is in recovery.
    pub role: String,
    /// Seconds since the postmaster started.
    pub server_uptime_secs: u64,
    /// Client sessions now.
    pub connections: u64,
    /// The server's `max_connections`.
    pub max_connections: u64,
    /// The app databases, kept copies and orphans.
    pub databases: Vec<DbEntry>,
    /// The server's settings that differ from PostgreSQL's built-in defaults (from its
    /// configuration file), by name.
    #[serde(default)]
    pub settings: Vec<crate::pg_settings::SettingView>,
}

/// One database in the guest, as `db list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbEntry {
    /// Its name.
    pub name: String,
    /// The role that owns it.
    pub owner: String,
    /// Its size on disk.
    pub bytes: u64,
    /// Sessions connected to it now.
    pub connections: u64,
    /// Its role's connection limit (`None`: no role of that name, or no limit).
    pub connection_limit: Option<u32>,
    /// What it is to the spec.
    pub kind: DbKind,
}

/// What a database is to the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbKind {
    /// An app the spec names.
    App,
    /// The copy `db restore` kept of an app's previous database.
    KeptByRestore,
    /// A database the spec no longer names: kept, never dropped by the launcher.
    Orphan,
    /// What a `db restore` is loading, before it takes the app's name.
    Loading,
}

/// The server's role, uptime and connections, and every database but `postgres` and
/// the templates with its owner, size, sessions and its role's connection limit: one
/// JSON object ([`ServerFacts`]) that psql prints with `-A -t`.
pub const DATABASE_SQL: &str = "select json_build_object(\
     'role', case when pg_is_in_recovery() then 'replica' else 'primary' end, \
     'server_uptime_secs', extract(epoch from now() - pg_postmaster_start_time())::bigint, \
     'connections', (select count(*) from pg_stat_activity where backend_type = 'client backend'), \
     'max_connections', current_setting('max_connections')::bigint, \
     'databases', coalesce((select json_agg(json_build_object(\
         'name', d.datname, \
         'owner', r.rolname, \
         'bytes', pg_database_size(d.oid), \
         'connections', (select count(*) from pg_stat_activity a where a.datname = d.datname), \
         'connection_limit', nullif(o.rolconnlimit, -1)) order by d.datname) \
       from pg_database d join pg_roles r on r.oid = d.datdba \
       left join pg_roles o on o.rolname = d.datname \
       where not d.datistemplate and d.datname <> 'postgres'), '[]'::json), \
     'settings', coalesce((select json_agg(json_build_object(\
         'name', s.name, 'value', current_setting(s.name)) order by s.name) \
       from pg_settings s \
       where s.source = 'configuration file' and s.setting is distinct from s.boot_val), '[]'::json))";

/// What [`DATABASE_SQL`] answers, before the databases are sorted by what they are to
/// the spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerFacts {
    /// `primary` or `replica`.
    pub role: String,
    /// Seconds since the postmaster started.
    pub server_uptime_secs: u64,
    /// Client sessions now.
    pub connections: u64,
    /// `max_connections`.
    pub max_connections: u64,
    /// Every database but `postgres` and the templates.
    pub databases: Vec<DatabaseFacts>,
    /// The settings the configuration file changed from PostgreSQL's defaults.
    #[serde(default)]
    pub settings: Vec<SettingFacts>,
}

/// One setting as [`DATABASE_SQL`] answers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SettingFacts {
    /// Its name.
    pub name: String,
    /// Its value as `SHOW` prints it.
    pub value: String,
}

/// One database as [`DATABASE_SQL`] answers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DatabaseFacts {
    /// Its name.
    pub name: String,
    /// The role that owns it.
    pub owner: String,
    /// Its size on disk.
    pub bytes: u64,
    /// Sessions connected to it now.
    pub connections: u64,
    /// Its role's connection limit, when it has a role and a limit.
    pub connection_limit: Option<u32>,
}

impl ServerFacts {
    /// Reads [`DATABASE_SQL`]'s output; `None` when it is not that object.
    pub fn parse(output: &str) -> Option<ServerFacts> {
        output
            .lines()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
    }

    /// The view `status` shows, each database sorted by what it is to a spec whose
    /// apps are `spec_apps`, each setting marked when the spec's `[postgres.settings]`
    /// names it (`spec_settings`).
    pub fn view(self, spec_apps: &[&str], spec_settings: &[&str]) -> DatabaseView {
        DatabaseView {
            settings: self
                .settings
                .into_iter()
                .map(|s| crate::pg_settings::SettingView {
                    from_spec: spec_settings.contains(&s.name.as_str()),
                    name: s.name,
                    value: s.value,
                })
                .collect(),
            role: self.role,
            server_uptime_secs: self.server_uptime_secs,
            connections: self.connections,
            max_connections: self.max_connections,
            databases: self
                .databases
                .into_iter()
                .map(|d| DbEntry {
                    kind: DbKind::of(&d.name, spec_apps),
                    name: d.name,
                    owner: d.owner,
                    bytes: d.bytes,
                    connections: d.connections,
                    connection_limit: d.connection_limit,
                })
                .collect(),
        }
    }
}

impl DbKind {
    /// What the database `name` is to a spec whose apps are `spec_apps`.
    pub fn of(name: &str, spec_apps: &[&str]) -> DbKind {
        if spec_apps.contains(&name) {
            DbKind::App
        } else if name.contains("_before_restore_") {
            DbKind::KeptByRestore
        } else if name.contains("_restoring_") {
            DbKind::Loading
        } else {
            DbKind::Orphan
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_facts_read_and_sort_by_the_spec() {
        let out = "{\"role\" : \"primary\", \"server_uptime_secs\" : 50, \"connections\" : 1, \"max_connections\" : 50, \"databases\" : [{\"name\" : \"forgejo\", \"owner\" : \"forgejo\", \"bytes\" : 7654321, \"connections\" : 0, \"connection_limit\" : 20}, {\"name\" : \"forgejo_before_restore_1\", \"owner\" : \"forgejo\", \"bytes\" : 1, \"connections\" : 0, \"connection_limit\" : null}, {\"name\" : \"gone\", \"owner\" : \"postgres\", \"bytes\" : 1, \"connections\" : 2, \"connection_limit\" : null}], \"settings\" : [{\"name\" : \"shared_buffers\", \"value\" : \"128MB\"}, {\"name\" : \"work_mem\", \"value\" : \"8MB\"}]}\n";
        let v = ServerFacts::parse(out)
            .unwrap()
            .view(&["forgejo"], &["work_mem"]);
        assert_eq!((v.role.as_str(), v.max_connections), ("primary", 50));
        let marked: Vec<(&str, bool)> = v
            .settings
            .iter()
            .map(|s| (s.value.as_str(), s.from_spec))
            .collect();
        assert_eq!(marked, [("128MB", false), ("8MB", true)]);
        let kinds: Vec<DbKind> = v.databases.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [DbKind::App, DbKind::KeptByRestore, DbKind::Orphan]);
        assert_eq!(v.databases[0].connection_limit, Some(20));
        assert!(ServerFacts::parse("psql: error").is_none());
    }

    #[test]
    fn a_status_round_trips_and_names_its_form() {
        let s = VmStatus {
            version: STATUS_VERSION,
            name: "sql".into(),
            cid: 10,
            backend: "qemu".into(),
            phase: Phase::Up,
            elapsed_ms: Some(1),
            processes: vec![ProcessInfo {
                role: ProcessRole::Vmm,
                pid: Some(7),
                alive: true,
            }],
            stages: vec![],
            control_connected: true,
            hello: None,
            devices: None,
            guest: None,
            guest_error: None,
            console_log: "/x".into(),
            supervisor_log: "/y".into(),
            restarts: vec![],
            autostart: None,
            database: None,
            replication: None,
            control_refused: ControlRefusals::default(),
            alerts: vec![],
            images: None,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["version"], STATUS_VERSION);
        assert_eq!(json["processes"][0]["role"], "vmm");
        assert_eq!(serde_json::from_value::<VmStatus>(json).unwrap(), s);
    }
}
