//! Stage reporting: every stage transition is logged, printed as a console marker and
//! sent on the control channel, and remembered so a reconnecting host gets the stages
//! so far in the greeting. [`Reporter::run`] is the one way a stage is worked: started,
//! then ready with its evidence or failed with its error.

use crate::control::ControlLink;
use protocol::evidence::ReadyEvidence;
use protocol::marker::Marker;
use protocol::messages::{DeviceReport, GuestMessage, Hello, StageReportSummary};
use protocol::{Stage, StageDetail, StageReport, StageState};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Mutex, OnceLock};

/// The stages reached so far and the way to tell the host about them.
#[derive(Debug, Default)]
pub struct Reporter {
    stages: Mutex<BTreeMap<Stage, StageReport>>,
    devices: Mutex<Option<DeviceReport>>,
    hello: Mutex<Option<Hello>>,
    link: OnceLock<ControlLink>,
}

impl Reporter {
    /// A reporter with nothing reported yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the reporter to the control channel once it exists.
    pub fn attach(&self, link: ControlLink) {
        let _ = self.link.set(link);
    }

    /// Records a stage transition and tells the console, the log and the host.
    pub fn report(&self, mut report: StageReport) {
        report.at_ms.get_or_insert_with(crate::clock::uptime_ms);
        let (stage, state) = (report.stage, report.state);
        let summary = report.detail.summary();
        match state {
            StageState::Failed => log::error!("stage {stage}: {state} {summary}"),
            StageState::Degraded => log::warn!("stage {stage}: {state} {summary}"),
            _ => log::info!("stage {stage}: {state} {summary}"),
        }
        crate::console::marker(&Marker::from_report(&report));
        if let Some(link) = self.link.get() {
            link.send(&GuestMessage::Stage(report.clone()));
        }
        if let Ok(mut stages) = self.stages.lock() {
            stages.insert(stage, report);
        }
    }

    /// Reports `ready` when every stage before it holds, or once why not.
    pub fn report_ready(&self) {
        let pending: Vec<String> = Stage::ALL
            .into_iter()
            .filter(|s| !matches!(s, Stage::Init | Stage::Ready))
            .filter_map(|s| match self.state(s) {
                Some(StageState::Ready) => None,
                Some(state) => Some(format!("{s} {state}")),
                None => Some(format!("{s} not reached")),
            })
            .collect();
        if pending.is_empty() {
            self.report(StageReport::ready(
                Stage::Ready,
                ReadyEvidence {
                    uptime_ms: crate::clock::uptime_ms(),
                },
            ));
        } else if self.state(Stage::Ready).is_none() {
            self.report(StageReport::failed(
                Stage::Ready,
                format!("not every stage holds: {}", pending.join(", ")),
            ));
        }
    }

    /// Reports `stage` as started with `detail`.
    pub fn started(&self, stage: Stage, detail: impl Into<StageDetail>) {
        self.report(StageReport::started(stage, detail));
    }

    /// Works one stage: reports it started (unless it already is), runs `work`, and
    /// reports it ready with the evidence `work` returned, or failed with its error.
    /// Returns the evidence for the stages that build on it.
    pub fn run<T, E>(&self, stage: Stage, work: impl FnOnce() -> Result<T, E>) -> Option<T>
    where
        T: Clone + Into<StageDetail>,
        E: Display,
    {
        if self.state(stage) != Some(StageState::Started) {
            self.started(stage, StageDetail::None);
        }
        self.settle(stage, work())
    }

    /// Reports `stage` ready with the evidence in `outcome`, or failed with its error;
    /// returns the evidence.
    pub fn settle<T, E>(&self, stage: Stage, outcome: Result<T, E>) -> Option<T>
    where
        T: Clone + Into<StageDetail>,
        E: Display,
    {
        match outcome {
            Ok(evidence) => {
                self.report(StageReport::ready(stage, evidence.clone()));
                Some(evidence)
            }
            Err(e) => {
                self.report(StageReport::failed(stage, e.to_string()));
                None
            }
        }
    }

    /// Records the device census (printed and sent by the caller's stage report too).
    pub fn set_devices(&self, report: DeviceReport) {
        crate::console::marker(&Marker::device_report(&report));
        if let Ok(mut d) = self.devices.lock() {
            *d = Some(report);
        }
    }

    /// Records who we are, for the greeting.
    pub fn set_hello(&self, hello: Hello) {
        if let Ok(mut h) = self.hello.lock() {
            *h = Some(hello);
        }
    }

    /// The CID our Hello announced (0 before it is known).
    pub fn hello_cid(&self) -> u32 {
        self.hello
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.cid))
            .unwrap_or(0)
    }

    /// The state of `stage`, if reported.
    pub fn state(&self, stage: Stage) -> Option<StageState> {
        self.stages.lock().ok()?.get(&stage).map(|r| r.state)
    }

    /// Latest state of every stage reported.
    pub fn summary(&self) -> Vec<StageReportSummary> {
        self.stages
            .lock()
            .map(|s| {
                s.values()
                    .map(|r| StageReportSummary {
                        stage: r.stage,
                        state: r.state,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hello, the device report and every stage so far: what a new connection gets.
    pub fn greeting(&self) -> Vec<GuestMessage> {
        let mut out = Vec::new();
        if let Some(h) = self.hello.lock().ok().and_then(|h| h.clone()) {
            out.push(GuestMessage::Hello(h));
        }
        if let Some(d) = self.devices.lock().ok().and_then(|d| d.clone()) {
            out.push(GuestMessage::DeviceReport(d));
        }
        if let Ok(stages) = self.stages.lock() {
            out.extend(stages.values().cloned().map(GuestMessage::Stage));
        }
        out
    }
}
