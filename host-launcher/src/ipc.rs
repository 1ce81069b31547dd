//! The supervisor's own socket (`<run>/supervisor.sock`): how `start`, `status`,
//! `stop`, `test` and `query` talk to the detached supervisor. Same framing as the
//! control channel (u32 big-endian length + one JSON message), its own messages:
//! the client sends one [`Request`], the supervisor answers with [`Reply`]s (a stream of
//! [`Event`]s for `watch`, exactly one reply otherwise).

use crate::control::{read_frame, write_frame, ControlError};
use crate::readiness::{Failure, StageLine};
use crate::rundir::{Role, RunDir};
use crate::spec::Spec;
use protocol::control::FrameReader;
use protocol::messages::{GuestLog, GuestService, Probe, QueryResult, ServiceSignal, TailnetInfo};
pub use protocol::status::{Phase, ProcessInfo, VmRestart, VmStatus};
use protocol::Stage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio::net::UnixStream;

/// Client → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Stream every event so far and then live ones, until up or failed.
    Watch,
    /// A [`VmStatus`], including the guest's own status when reachable.
    Status,
    /// Ping the guest over the control channel.
    Ping,
    /// Run SQL in the guest as the postgres superuser.
    Query {
        /// The statement(s).
        sql: String,
    },
    /// Run a network check inside the guest (DNS, outbound or inbound TCP).
    Probe {
        /// What to check.
        probe: Probe,
    },
    /// Read the end of one of the guest's logs.
    ReadLog {
        /// Which log.
        log: GuestLog,
    },
    /// Send a signal to a supervised guest service.
    SignalService {
        /// Which service.
        service: GuestService,
        /// Which signal.
        signal: ServiceSignal,
    },
    /// Make this replica the primary (refused while the old primary is plainly alive,
    /// unless `force`).
    Promote {
        /// Promote even though the old primary still answers.
        force: bool,
    },
    /// Take a backup, list the repository, or restore (long: minutes to hours).
    Backup {
        /// What to do.
        request: protocol::backup::BackupRequest,
    },
    /// Move bulk data to or from the guest (an export, a dump, a restore from a
    /// file). After [`Reply::TransferStarted`] the connection carries the chunked
    /// stream ([`protocol::bulk`]), then one last reply.
    Transfer {
        /// What to move.
        transfer: protocol::transfer::Transfer,
    },
    /// Shut the guest down cleanly and stop everything; the supervisor exits after.
    Stop {
        /// Seconds the guest may take (default: the spec's `timeouts.shutdown`).
        deadline_secs: Option<u32>,
    },
}

/// Supervisor → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// One boot event (answers `watch`).
    Event(Event),
    /// Answers `status`.
    Status(Box<VmStatus>),
    /// Answers `ping`.
    Pong {
        /// Round trip to the guest.
        rtt_ms: u64,
    },
    /// Answers `query`.
    QueryResult(QueryResult),
    /// Answers `probe`.
    ProbeResult(QueryResult),
    /// Answers `read_log`.
    LogContents(QueryResult),
    /// Answers `signal_service`.
    SignalResult(QueryResult),
    /// Answers `promote`.
    PromoteResult(QueryResult),
    /// Answers `backup`.
    Backup(protocol::backup::BackupAnswer),
    /// The guest opened the data connection: the chunked stream starts now.
    TransferStarted,
    /// The guest's word once a transfer is over.
    Transfer(protocol::transfer::TransferAnswer),
    /// Answers `stop`, once everything is stopped.
    Stopped(StopReport),
    /// The request could not be served.
    Error {
        /// Why.
        message: String,
    },
}

/// Something that happened during a boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A host process was started.
    Launched {
        /// Which.
        role: Role,
        /// Its pid.
        pid: i32,
        /// Milliseconds since the supervisor started.
        elapsed_ms: u64,
    },
    /// A stage was accepted.
    Stage(StageLine),
    /// The `wait_for` stage was accepted.
    Up(UpInfo),
    /// The boot failed; cleanup is under way.
    Stopping {
        /// Why.
        reason: String,
    },
    /// The boot failed and everything started was stopped.
    Failed(Box<FailureReport>),
}

/// What `start` prints when the VM is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpInfo {
    /// Milliseconds from the VMM's start.
    pub elapsed_ms: u64,
    /// The stage waited for.
    pub wait_for: Stage,
    /// The guest's host name.
    pub hostname: String,
    /// Its tailnet identity, once reported.
    pub tailnet: Option<TailnetInfo>,
    /// PostgreSQL port.
    pub postgres_port: u16,
    /// File with the postgres superuser password.
    pub password_file: PathBuf,
    /// The console log.
    pub console_log: PathBuf,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
}

/// A failed boot with everything needed to diagnose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    /// The failing stage, reason and device evidence.
    pub failure: Failure,
    /// Required kernel options the image lacks, as the host read them (IKCONFIG).
    pub host_kernel_missing: Vec<String>,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// The console log file.
    pub console_log: PathBuf,
    /// The last lines of the VMM's own output (e.g. QEMU refusing the kernel).
    pub vmm_log_tail: Vec<String>,
    /// The VMM's log file.
    pub vmm_log: PathBuf,
    /// The supervisor log file.
    pub supervisor_log: PathBuf,
    /// How the cleanup went.
    pub cleanup: StopReport,
}

/// How a stop went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    /// True when the guest shut down on request and every process is gone.
    pub clean: bool,
    /// True when no process of the VM is left running.
    pub nothing_left: bool,
    /// What happened, one line per step.
    pub steps: Vec<String>,
}

/// The status of `spec`'s VM with nothing known yet but its spec and `phase`: the one
/// place a [`VmStatus`] is made. The supervisor fills in its processes and stages,
/// `status` without a supervisor what the pid files say, and both the guest's part.
pub fn base_status(spec: &Spec, phase: Phase) -> VmStatus {
    VmStatus {
        version: protocol::status::STATUS_VERSION,
        name: spec.name.clone(),
        cid: spec.cid,
        backend: spec.vmm.backend.to_string(),
        phase,
        elapsed_ms: None,
        processes: Vec::new(),
        stages: Vec::new(),
        control_connected: false,
        hello: None,
        devices: None,
        guest: None,
        guest_error: None,
        console_log: spec.console_log.clone(),
        supervisor_log: spec.log_file("supervisor"),
        restarts: Vec::new(),
        autostart: None,
        database: None,
        replication: None,
        control_refused: Default::default(),
        alerts: Vec::new(),
        images: None,
    }
}

/// A connection to a supervisor.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    reader: FrameReader,
}

impl Client {
    /// Connects to the supervisor of `run`.
    pub async fn connect(run: &RunDir) -> Result<Client, ControlError> {
        let stream = UnixStream::connect(run.supervisor_socket()).await?;
        Ok(Client {
            stream,
            reader: FrameReader::new(),
        })
    }

    /// Sends a request.
    pub async fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        write_frame(&mut self.stream, req).await
    }

    /// Receives the next reply; `None` when the supervisor closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Reply>, ControlError> {
        read_frame(&mut self.stream, &mut self.reader).await
    }

    /// Sends a request and waits for its single reply.
    pub async fn call(&mut self, req: &Request) -> Result<Reply, ControlError> {
        self.send(req).await?;
        self.recv().await?.ok_or(ControlError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let v = serde_json::to_value(Request::Stop {
            deadline_secs: Some(5),
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"type": "stop", "deadline_secs": 5}));
        let v = serde_json::to_value(Reply::Event(Event::Launched {
            role: Role::VhostDeviceVsock,
            pid: 9,
            elapsed_ms: 1,
        }))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "event", "event": "launched", "role": "vhost-device-vsock", "pid": 9, "elapsed_ms": 1})
        );
    }
}
