//! Console markers: `SOVEREIGN <stage> <json>` lines the guest prints on its serial
//! console, so the host can follow (and diagnose) a boot even when vsock never comes up.
//! The JSON is a [`MarkerBody`]: a stage transition, or the full device census.

use crate::evidence::StageDetail;
use crate::messages::DeviceReport;
use crate::stage::{Stage, StageReport, StageState};
use serde::{Deserialize, Serialize};

/// Every marker line starts with this word and a space.
pub const PREFIX: &str = "SOVEREIGN ";

/// What a marker line carries after its stage name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "marker", rename_all = "snake_case")]
pub enum MarkerBody {
    /// A stage changed state (the stage is the marker's own).
    Stage {
        /// Its new state.
        state: StageState,
        /// Its evidence.
        #[serde(default)]
        detail: StageDetail,
    },
    /// The device census (printed under the `devices` stage, before its verdict).
    DeviceReport(DeviceReport),
}

/// A marker: a stage name and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The stage named by the line.
    pub stage: Stage,
    /// What it says.
    pub body: MarkerBody,
}

impl Marker {
    /// The marker for a stage report.
    pub fn from_report(report: &StageReport) -> Marker {
        Marker {
            stage: report.stage,
            body: MarkerBody::Stage {
                state: report.state,
                detail: report.detail.clone(),
            },
        }
    }

    /// The marker for the device census.
    pub fn device_report(report: &DeviceReport) -> Marker {
        Marker {
            stage: Stage::Devices,
            body: MarkerBody::DeviceReport(report.clone()),
        }
    }

    /// The stage report this marker carries, if it is one.
    pub fn stage_report(&self) -> Option<StageReport> {
        match &self.body {
            MarkerBody::Stage { state, detail } => Some(StageReport {
                stage: self.stage,
                state: *state,
                detail: detail.clone(),
                // The console carries no clock: the control channel's report does.
                at_ms: None,
            }),
            MarkerBody::DeviceReport(_) => None,
        }
    }

    /// The line to print (no trailing newline). The JSON is compact and single-line.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(&self.body).unwrap_or_else(|e| {
            // Not reachable for these types (string keys, no maps of non-strings), but
            // the console must get a well-formed line whatever happens.
            let fallback = MarkerBody::Stage {
                state: StageState::Failed,
                detail: StageDetail::problem(format!("unserialisable marker: {e}")),
            };
            serde_json::to_string(&fallback).unwrap_or_default()
        });
        format!("{PREFIX}{} {json}", self.stage)
    }

    /// Finds a marker in a console line. Kernel log prefixes before `SOVEREIGN` (e.g.
    /// `[    1.23] `) are tolerated; anything malformed yields `None`.
    pub fn parse(line: &str) -> Option<Marker> {
        let start = line.find(PREFIX)?;
        let rest = &line[start + PREFIX.len()..];
        let (name, json) = rest.split_once(' ')?;
        let stage = Stage::from_name(name)?;
        let body = serde_json::from_str(json.trim_end()).ok()?;
        Some(Marker { stage, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::InitEvidence;

    #[test]
    fn round_trip_and_prefix_tolerance() {
        let report = StageReport::ready(
            Stage::Init,
            InitEvidence {
                version: "0.1.0".into(),
                kernel: "6.12".into(),
                cmdline_warnings: vec![],
                handed_over_ms: None,
            },
        );
        let line = Marker::from_report(&report).to_line();
        assert!(
            line.starts_with(
                r#"SOVEREIGN init {"marker":"stage","state":"ready","detail":{"kind":"init""#
            ),
            "{line}"
        );
        let m = Marker::parse(&format!("[    1.234567] {line}\r")).unwrap();
        assert_eq!(m.stage_report(), Some(report));

        let census = Marker::device_report(&DeviceReport::default()).to_line();
        assert!(
            census.starts_with(r#"SOVEREIGN devices {"marker":"device_report","devices":[]"#),
            "{census}"
        );
        let m = Marker::parse(&census).unwrap();
        assert!(matches!(m.body, MarkerBody::DeviceReport(_)));
        assert_eq!(m.stage_report(), None);
    }

    #[test]
    fn garbage_is_ignored() {
        for line in [
            "",
            "SOVEREIGN",
            "SOVEREIGN devices",
            "SOVEREIGN nope {}",
            "SOVEREIGN init {",
            "SOVEREIGN init {}",
            r#"SOVEREIGN init {"marker":"launch"}"#,
            "hello",
        ] {
            assert_eq!(Marker::parse(line), None, "{line:?}");
        }
    }
}
