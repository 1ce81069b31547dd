//! What the readiness tracker reports: each stage's line as `start` and `status` show
//! it, the progress an input made, and a failed boot with its evidence.

use protocol::messages::DeviceReport;
use protocol::Stage;
use serde::{Deserialize, Serialize};

/// Where a boot failed: a stage, or launching a host process before the guest ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePoint {
    /// A guest stage.
    Stage(Stage),
    /// Starting a host process (named).
    Launch(String),
}

impl std::fmt::Display for FailurePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailurePoint::Stage(s) => write!(f, "{s}"),
            FailurePoint::Launch(p) => write!(f, "launch {p}"),
        }
    }
}

/// A failed boot with its evidence (the supervisor adds console lines and cleanup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Where it failed.
    pub at: FailurePoint,
    /// What went wrong, one sentence.
    pub reason: String,
    /// The guest's device report, if one arrived.
    pub devices: Option<DeviceReport>,
    /// Required kernel options the guest's kernel lacks (from its report).
    pub missing_kernel_options: Vec<String>,
    /// The guest's per-device problems (from its report).
    pub problems: Vec<String>,
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

/// What an input changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A stage was accepted.
    Accepted(StageLine),
    /// The boot failed; nothing more will be accepted.
    Failed(Box<Failure>),
    /// The spec's `wait_for` stage was accepted: the VM is up.
    Up,
}
