//! Messages on the control channel. Each direction is one tagged JSON enum
//! (`{"type": "hello", ...}`); an unknown `type` is a decode error and closes the
//! connection rather than being guessed at.

use crate::config::GuestConfig;
use crate::stage::StageReport;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::devices::{DeviceKind, DeviceReport, Transport, VirtioDevice};
pub use crate::probe::{
    PgbenchMode, Probe, StreamDirection, PGBENCH_MAX_CLIENTS, PGBENCH_MAX_SECONDS,
    STREAM_MAX_BYTES, STREAM_MAX_MS,
};

/// Version of this message set, carried in [`Hello`]. Bump on incompatible changes.
/// 2: stage evidence is typed ([`crate::evidence::StageDetail`]), device kinds and
/// transports are enums. 3: backups (configuration, requests, status). 4: bulk
/// transfers ([`crate::transfer`]). 5: a new TLS certificate for a running server
/// ([`HostMessage::Tls`]). 6: pgbench inside the guest ([`Probe::Pgbench`]), stage
/// reports stamped by the guest's clock, PID 1's memory in the status. 7: bulk streams
/// through the forwarder and over raw vsock ([`Probe::Stream`], [`Probe::VsockStream`]).
/// 8: streaming replication with a peer ([`crate::replication::ReplicationConfig`]).
/// 9: one-boot requests ([`crate::config::BootRequest`]), the primary's fence in the
/// status, promotion as a guest request, and what a boot finished or undid.
/// 10: a session token for the boot's first connection ([`HostMessage::Session`]),
/// carried by every reconnect's Hello.
pub const PROTOCOL_VERSION: u32 = 10;

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// First message on every connection.
    Hello(Hello),
    /// Which virtio devices exist and which drivers bound (second message).
    DeviceReport(DeviceReport),
    /// A stage changed state.
    Stage(StageReport),
    /// Answer to [`HostMessage::StatusRequest`].
    Status(GuestStatus),
    /// Answer to [`HostMessage::Query`].
    QueryResult(QueryResult),
    /// Answer to [`HostMessage::Probe`].
    ProbeResult(QueryResult),
    /// Answer to [`HostMessage::ReadLog`]: the end of that log.
    LogContents(QueryResult),
    /// Answer to [`HostMessage::SignalService`].
    SignalResult(QueryResult),
    /// Answer to [`HostMessage::Backup`].
    BackupAnswer(crate::backup::BackupAnswer),
    /// Answer to [`HostMessage::Transfer`].
    TransferAnswer(crate::transfer::TransferAnswer),
    /// Answer to [`HostMessage::Promote`].
    PromoteResult(QueryResult),
    /// Answer to [`HostMessage::Ping`].
    Pong,
    /// Sent every [`crate::control::HEARTBEAT_INTERVAL`]: the guest is alive.
    Heartbeat,
    /// The guest accepted a shutdown request and is stopping its services.
    ShuttingDown {
        /// Why (e.g. "requested by host", "SIGTERM").
        reason: String,
    },
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// This boot's session token, sent to the boot's first connection before anything
    /// else; the guest puts it in the Hello of every reconnect (see [`Hello::session`]).
    Session {
        /// Random, made by the host for this boot.
        token: String,
    },
    /// The guest's configuration, sent after Hello.
    Config(Box<GuestConfig>),
    /// Stop services in order and power off; services get `deadline_secs` in total.
    Shutdown {
        /// Seconds the guest may take before it forces the power-off.
        deadline_secs: u32,
    },
    /// Ask for a [`GuestStatus`].
    StatusRequest,
    /// Run SQL as the `postgres` superuser over the guest's unix socket. Only the
    /// host's root can reach the control channel, and it owns the VM anyway.
    Query {
        /// Echoed in the result.
        id: u64,
        /// The statement(s), run by `psql -c`.
        sql: String,
    },
    /// A network check run from inside the guest (DNS, outbound TCP, inbound TCP), so
    /// the host can prove each direction of the gvproxy path. Answered by
    /// [`GuestMessage::ProbeResult`] with the same `id`.
    Probe {
        /// Echoed in the result.
        id: u64,
        /// What to check.
        probe: Probe,
    },
    /// Send the end of one of the guest's own logs (answered by
    /// [`GuestMessage::LogContents`]). The logs live on the data disk, readable only by
    /// root in the guest; this is how an operator (or a test) reads them from the host.
    ReadLog {
        /// Echoed in the answer.
        id: u64,
        /// Which log.
        log: GuestLog,
    },
    /// Send a signal to a supervised guest service (an operator's `systemctl kill`;
    /// how the fault tests kill tailscaled or postgres). Answered by
    /// [`GuestMessage::SignalResult`] with the same `id`; the service's supervisor
    /// restarts it as it would after any unexpected exit.
    SignalService {
        /// Echoed in the answer.
        id: u64,
        /// Which service.
        service: GuestService,
        /// Which signal.
        signal: ServiceSignal,
    },
    /// A backup, the repository's catalog, or a restore (answered by
    /// [`GuestMessage::BackupAnswer`] with the same `id`).
    Backup {
        /// Echoed in the answer.
        id: u64,
        /// What to do.
        request: crate::backup::BackupRequest,
    },
    /// A bulk transfer: the guest opens a data connection
    /// ([`crate::ports::DATA_PORT`]) that starts with `token`, moves the bytes, and
    /// answers with [`GuestMessage::TransferAnswer`] with the same `id`.
    Transfer {
        /// Echoed in the answer.
        id: u64,
        /// Names the data connection (random, made by the host).
        token: String,
        /// What to move.
        transfer: crate::transfer::Transfer,
    },
    /// A new server certificate: the tailnet gave the VM a full name the certificate
    /// of this start lacks. The guest installs it and has postgres reload; nothing is
    /// answered (the next TLS handshake shows it).
    Tls(crate::config::TlsMaterial),
    /// Make this replica the primary (`sovereign promote`), answered by
    /// [`GuestMessage::PromoteResult`] with the same `id`. The guest refuses while its
    /// WAL receiver streams or the peer answers as the cluster's primary, unless
    /// `force`: two nodes that can see each other must never both take writes.
    Promote {
        /// Echoed in the answer.
        id: u64,
        /// Promote even though the old primary still answers (it fences itself once it
        /// sees this node on the newer timeline).
        force: bool,
    },
    /// Liveness check, answered by [`GuestMessage::Pong`] (measures a round trip).
    Ping,
    /// The conditions the supervisor holds active now, sent at every check so PID 1's
    /// Prometheus page carries them; answered by [`GuestMessage::Pong`].
    Alerts {
        /// Every condition that holds, as `status` lists it.
        active: Vec<crate::alerts::ActiveAlert>,
    },
    /// Sent every [`crate::control::HEARTBEAT_INTERVAL`]: the host is alive.
    Heartbeat,
}

/// A service PID 1 supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestService {
    /// The postmaster.
    Postgres,
    /// tailscaled.
    Tailscaled,
}

impl fmt::Display for GuestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestService::Postgres => "postgres",
            GuestService::Tailscaled => "tailscaled",
        })
    }
}

/// The signals the host may send to a guest service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServiceSignal {
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGHUP (postgres reloads its configuration).
    Hup,
    /// SIGINT (postgres: fast shutdown; PID 1 starts it again).
    Int,
}

/// The guest logs the host can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestLog {
    /// PostgreSQL's server log (newest file) and its startup output.
    Postgres,
    /// tailscaled's log.
    Tailscaled,
    /// The kernel ring buffer.
    Kernel,
    /// pgBackRest's logs: WAL archiving (both halves of async push), backups, restores.
    Pgbackrest,
}

/// Who the guest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] the guest speaks.
    pub version: u32,
    /// The guest's own vsock CID, as its kernel reports it.
    pub cid: u32,
    /// `uname -r`.
    pub kernel_release: String,
    /// Milliseconds since the guest kernel booted.
    pub boot_time_ms: u64,
    /// The token the host handed this boot's first connection ([`HostMessage::Session`]):
    /// `None` on that first connection, required on every later one. PID 1 dials before
    /// any other guest process exists and keeps the token in its memory only, so a
    /// reconnect that carries it is PID 1's.
    #[serde(default)]
    pub session: Option<String>,
}

/// Frame counters of the tap0 ↔ gvproxy forwarder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCounters {
    /// True while the vsock link to gvproxy is up.
    pub connected: bool,
    /// Frames sent from tap0 to gvproxy.
    pub frames_out: u64,
    /// Bytes (Ethernet frames, without length prefix) sent to gvproxy.
    pub bytes_out: u64,
    /// Frames received from gvproxy and written to tap0.
    pub frames_in: u64,
    /// Bytes received from gvproxy.
    pub bytes_in: u64,
    /// Frames dropped (link down, oversize, tap write failures).
    pub drops: u64,
    /// Successful reconnects after the first connection.
    pub reconnects: u64,
}

/// The node's tailnet identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailnetInfo {
    /// MagicDNS name (e.g. `sql-vm.tail.example.`) or the host name.
    pub name: String,
    /// Tailnet addresses (100.x and fd7a:115c:a1e0::/48).
    pub ips: Vec<String>,
}

/// Whether the supervised server process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// The server process runs.
    Ready,
    /// It died and PID 1 is bringing it back.
    #[default]
    Restarting,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerState::Ready => "ready",
            ServerState::Restarting => "restarting",
        })
    }
}

/// PostgreSQL as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresInfo {
    /// Whether the server process runs.
    pub state: ServerState,
    /// Server version string.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// What this boot finished or undid of a step that a power cut or a stop
    /// interrupted (an initdb, a copy of the peer, a rewind, a restore), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
}

/// A supervised guest process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `postgres` or `tailscaled`.
    pub name: String,
    /// Current pid, if running.
    pub pid: Option<u32>,
    /// Times it was restarted after dying.
    pub restarts: u32,
}

/// The data disk's space as the guest sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer (postgres) can still use.
    pub available_bytes: u64,
    /// True while the emergency reserve is released because the disk filled up: the
    /// server can delete data again, and the disk needs attention.
    pub reserve_released: bool,
}

/// Answer to a status request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
    /// The latest report of every stage reached.
    pub stages: Vec<StageReportSummary>,
    /// Forwarder counters, once networking started.
    pub network: Option<NetworkCounters>,
    /// Tailnet identity, once joined.
    pub tailnet: Option<TailnetInfo>,
    /// PostgreSQL, once started.
    pub postgres: Option<PostgresInfo>,
    /// Supervised services.
    pub services: Vec<ServiceStatus>,
    /// The data disk, once mounted.
    #[serde(default)]
    pub data_disk: Option<DiskUsage>,
    /// Backups and WAL archiving, when the spec enables them.
    #[serde(default)]
    pub backup: Option<Box<crate::backup::BackupStatus>>,
    /// PID 1's own memory now.
    #[serde(default)]
    pub init_memory: Option<ProcessMemory>,
    /// A primary with a peer: whether it may take writes, by its guard.
    #[serde(default)]
    pub fence: Option<crate::replication::Fence>,
    /// What the running root image is made of ([`crate::release::RELEASE_FILE`]):
    /// after `sovereign update`, the proof that the new set is the one that booted.
    #[serde(default, skip_serializing_if = "crate::release::Versions::is_empty")]
    pub image: crate::release::Versions,
}

/// A process's memory, for footprint figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Resident now (VmRSS, KiB).
    pub rss_kib: u64,
    /// The most it was ever resident (VmHWM, KiB).
    pub peak_kib: u64,
    /// Of `rss_kib`, anonymous memory: heap, stacks (RssAnon, KiB). What a smaller
    /// buffer or fewer threads would save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anon_kib: Option<u64>,
    /// Of `rss_kib`, pages of the binary itself (RssFile, KiB): code that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_kib: Option<u64>,
    /// Threads now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// A stage's latest state, without the bulky detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReportSummary {
    /// Stage name.
    pub stage: crate::Stage,
    /// Its state.
    pub state: crate::StageState,
}

/// Result of a [`HostMessage::Query`] or [`HostMessage::Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The request's id.
    pub id: u64,
    /// True when the query or probe succeeded.
    pub ok: bool,
    /// psql's output (unaligned, tuples only), the probe's result, or the error text.
    pub output: String,
    /// True when `output` was cut: the guest caps what it reads and what fits in one
    /// control frame.
    #[serde(default)]
    pub truncated: bool,
}

impl QueryResult {
    /// Cuts `output` (at a character boundary, keeping its start) until the result,
    /// wrapped as `wrap` makes it, encodes within one control frame; marks it truncated
    /// when anything was cut. JSON escaping can make a text up to six times longer, so
    /// the cut is measured on the encoded frame, not guessed.
    pub fn fit_to_frame(mut self, wrap: fn(QueryResult) -> GuestMessage) -> GuestMessage {
        loop {
            let msg = wrap(self.clone());
            if crate::control::encode_frame(&msg).is_ok() {
                return msg;
            }
            let mut cut = self.output.len() / 2;
            while cut > 0 && !self.output.is_char_boundary(cut) {
                cut -= 1;
            }
            self.output.truncate(cut);
            self.truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_json_shape() {
        let v = serde_json::to_value(HostMessage::Shutdown { deadline_secs: 30 }).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "shutdown", "deadline_secs": 30})
        );
        let v = serde_json::to_value(GuestMessage::Pong).unwrap();
        assert_eq!(v, serde_json::json!({"type": "pong"}));
    }

    /// An internally tagged enum cannot carry a bare sequence: a tuple variant holding
    /// a `Vec` fails at encode time, which only a round trip shows.
    #[test]
    fn the_alerts_message_round_trips_through_a_frame() {
        let msg = HostMessage::Alerts {
            active: vec![crate::alerts::ActiveAlert {
                condition: crate::alerts::Condition::BackupDiskFull,
                severity: crate::alerts::Severity::Warning,
                summary: "backup disk 86% used".into(),
                since_unix: 1_800_000_000,
                notified_unix: 0,
            }],
        };
        let frame = crate::control::encode_frame(&msg).unwrap();
        let back: HostMessage = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(back, msg);
        let empty = HostMessage::Alerts { active: Vec::new() };
        let frame = crate::control::encode_frame(&empty).unwrap();
        assert!(frame.len() > 4);
    }

    #[test]
    fn oversize_results_are_cut_to_fit_one_frame() {
        let big = QueryResult {
            id: 7,
            ok: true,
            output: "\u{1}".repeat(200 * 1024),
            truncated: false,
        };
        let msg = big.fit_to_frame(GuestMessage::QueryResult);
        let frame = crate::control::encode_frame(&msg).unwrap();
        assert!(frame.len() <= crate::control::MAX_CONTROL_FRAME + 4);
        let GuestMessage::QueryResult(r) = msg else {
            panic!("{msg:?}")
        };
        assert!(r.truncated && r.id == 7 && !r.output.is_empty());
        let small = QueryResult {
            id: 1,
            ok: true,
            output: "é1".into(),
            truncated: false,
        };
        assert_eq!(
            small.clone().fit_to_frame(GuestMessage::LogContents),
            GuestMessage::LogContents(small)
        );
    }
}
