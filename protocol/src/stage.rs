//! Boot stages. Their names appear on the console, on the control channel and in the
//! launcher's output, so they are part of the interface: do not rename them.

use crate::evidence::StageDetail;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One step of the guest's boot, in the order the guest proves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// PID 1 runs, the system filesystems are mounted, logging works.
    Init,
    /// Kernel modules loaded (if any) and the virtio drivers bound.
    Devices,
    /// The control channel to the host is connected and the guest configured.
    Control,
    /// tap0 forwards frames to gvproxy and the gateway answers.
    Network,
    /// tailscaled runs and the node has its tailnet name and addresses.
    Tailscale,
    /// PostgreSQL accepts connections on its tailnet addresses.
    Postgres,
    /// Every stage above holds.
    Ready,
}

impl Stage {
    /// All stages in boot order.
    pub const ALL: [Stage; 7] = [
        Stage::Init,
        Stage::Devices,
        Stage::Control,
        Stage::Network,
        Stage::Tailscale,
        Stage::Postgres,
        Stage::Ready,
    ];

    /// The stage's interface name (`init`, `devices`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Init => "init",
            Stage::Devices => "devices",
            Stage::Control => "control",
            Stage::Network => "network",
            Stage::Tailscale => "tailscale",
            Stage::Postgres => "postgres",
            Stage::Ready => "ready",
        }
    }

    /// Parses an interface name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    /// Work on the stage has begun.
    Started,
    /// The stage holds.
    Ready,
    /// The stage held but is currently impaired (e.g. gvproxy went away); the guest is
    /// recovering by itself.
    Degraded,
    /// The stage cannot be reached; `detail` says why.
    Failed,
}

impl fmt::Display for StageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageState::Started => "started",
            StageState::Ready => "ready",
            StageState::Degraded => "degraded",
            StageState::Failed => "failed",
        })
    }
}

/// A stage transition with its evidence, sent on the control channel and printed as a
/// console marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Which stage.
    pub stage: Stage,
    /// Its new state.
    pub state: StageState,
    /// Stage-specific evidence, or the problem when failed or degraded.
    #[serde(default)]
    pub detail: StageDetail,
    /// Milliseconds from the guest kernel's start to this transition, as the guest's
    /// clock says (the host's clock only sees when the report arrived): where boot
    /// time goes inside the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

impl StageReport {
    /// `stage` has started; `detail` says with what (often nothing).
    pub fn started(stage: Stage, detail: impl Into<StageDetail>) -> StageReport {
        StageReport {
            stage,
            state: StageState::Started,
            detail: detail.into(),
            at_ms: None,
        }
    }

    /// `stage` holds, proven by `detail`.
    pub fn ready(stage: Stage, detail: impl Into<StageDetail>) -> StageReport {
        StageReport {
            stage,
            state: StageState::Ready,
            detail: detail.into(),
            at_ms: None,
        }
    }

    /// `stage` cannot be reached, because of `why`.
    pub fn failed(stage: Stage, why: impl Into<String>) -> StageReport {
        StageReport {
            stage,
            state: StageState::Failed,
            detail: StageDetail::problem(why),
            at_ms: None,
        }
    }

    /// `stage` held and is impaired now, because of `why`.
    pub fn degraded(stage: Stage, why: impl Into<String>) -> StageReport {
        StageReport {
            stage,
            state: StageState::Degraded,
            detail: StageDetail::problem(why),
            at_ms: None,
        }
    }

    /// This report, stamped `at_ms` after the guest kernel's start.
    pub fn at(mut self, at_ms: u64) -> StageReport {
        self.at_ms = Some(at_ms);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.name()), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.name()))
            );
        }
        assert_eq!(Stage::from_name("vsock"), None);
    }
}
