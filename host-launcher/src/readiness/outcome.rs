//! What the readiness tracker reports: each stage's line as `start` and `status` show
//! it, the progress an input made, and a failed boot with its evidence.

use protocol::messages::DeviceReport;
pub use protocol::status::{StageLine, StageStatus};
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
