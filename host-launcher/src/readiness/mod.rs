//! Stage acceptance: turns what the guest says (console markers, control messages) and
//! what the host sees (process exits, the clock) into accepted or failed stages, by
//! the table below. Pure: no I/O, time is passed in, so every rule is unit-tested.
//!
//! | stage     | accepted when                                                        |
//! |-----------|----------------------------------------------------------------------|
//! | init      | the `SOVEREIGN init` marker (or any later evidence)                  |
//! | devices   | a device report where every device has its expected driver, with ≥1 |
//! |           | socket device and ≥2 block devices (console marker or control)      |
//! | control   | Hello with our protocol version and CID (and peer CID on AF_VSOCK),  |
//! |           | and the GuestConfig sent                                             |
//! | network.. | the guest's `Stage{stage, state: ready}` report on the control channel|
//!
//! A device report that fails the rule, a `failed` stage report (console or control) or
//! a wrong Hello fails at once; otherwise each stage has a deadline counted from the
//! previous stage's acceptance (init: from the VMM's start).
//!
//! This module is the state machine; the device rule is in `devices`, the Hello rule in
//! `hello`, the words for a missed deadline in `deadlines`, the types it reports in
//! `outcome`.

mod deadlines;
mod devices;
mod hello;
mod outcome;

pub use devices::assess_devices;
pub use hello::{assess_hello, HelloRefused};
pub use outcome::{Failure, FailurePoint, Progress, StageLine, StageStatus};

use crate::spec::Timeouts;
use protocol::marker::{Marker, MarkerBody};
use protocol::messages::{DeviceReport, Hello, TailnetInfo};
use protocol::{Stage, StageReport, StageState};
use std::time::Instant;

/// The acceptance state machine of one boot.
#[derive(Debug)]
pub struct Readiness {
    cid: u32,
    wait_for: Stage,
    timeouts: Timeouts,
    origin: Instant,
    stage_clock: Instant,
    next: usize,
    lines: Vec<StageLine>,
    init_seen: bool,
    devices: Option<DeviceReport>,
    devices_ok: bool,
    hello: Option<Hello>,
    config_sent: bool,
    guest_ready: Vec<Stage>,
    tailnet: Option<TailnetInfo>,
    finished: Option<Result<(), Failure>>,
}

impl Readiness {
    /// A boot whose VMM started at `origin`, for a guest of CID `cid`.
    pub fn new(cid: u32, wait_for: Stage, timeouts: Timeouts, origin: Instant) -> Readiness {
        Readiness {
            cid,
            wait_for,
            timeouts,
            origin,
            stage_clock: origin,
            next: 0,
            lines: Stage::ALL
                .iter()
                .map(|&stage| StageLine {
                    stage,
                    status: StageStatus::Pending,
                    elapsed_ms: None,
                    summary: String::new(),
                    guest_started_ms: None,
                    guest_ready_ms: None,
                })
                .collect(),
            init_seen: false,
            devices: None,
            devices_ok: false,
            hello: None,
            config_sent: false,
            guest_ready: Vec::new(),
            tailnet: None,
            finished: None,
        }
    }

    /// Every stage's line, in boot order.
    pub fn lines(&self) -> &[StageLine] {
        &self.lines
    }

    /// The line of `stage`.
    pub fn line(&self, stage: Stage) -> &StageLine {
        &self.lines[stage_index(stage)]
    }

    fn line_mut(&mut self, stage: Stage) -> &mut StageLine {
        &mut self.lines[stage_index(stage)]
    }

    /// Where `stage` stands.
    pub fn status_of(&self, stage: Stage) -> StageStatus {
        self.line(stage).status
    }

    /// True once `wait_for` was accepted.
    pub fn is_up(&self) -> bool {
        matches!(self.finished, Some(Ok(())))
    }

    /// The failure, once failed.
    pub fn failure(&self) -> Option<&Failure> {
        match &self.finished {
            Some(Err(f)) => Some(f),
            _ => None,
        }
    }

    /// The stage waiting for evidence, while booting.
    pub fn current(&self) -> Option<Stage> {
        if self.finished.is_some() {
            return None;
        }
        Stage::ALL.get(self.next).copied()
    }

    /// The latest device report.
    pub fn device_report(&self) -> Option<&DeviceReport> {
        self.devices.as_ref()
    }

    /// The guest's Hello, once a valid one arrived.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// The tailnet identity from the `tailscale` stage's detail.
    pub fn tailnet(&self) -> Option<&TailnetInfo> {
        self.tailnet.as_ref()
    }

    /// Whether the GuestConfig may be sent: a valid Hello arrived and it was not sent yet.
    pub fn config_due(&self) -> bool {
        self.hello.is_some() && !self.config_sent && self.failure().is_none()
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        crate::process::millis(now.saturating_duration_since(self.origin))
    }

    /// A console marker.
    pub fn on_marker(&mut self, m: &Marker, now: Instant) -> Vec<Progress> {
        self.init_seen = true;
        match &m.body {
            MarkerBody::DeviceReport(dr) => self.on_device_report(dr.clone(), now),
            MarkerBody::Stage { .. } => match m.stage_report() {
                Some(r) => self.on_report(&r, now, Source::Console),
                None => self.advance(now),
            },
        }
    }

    /// The guest's Hello; `peer_cid` is the connection's source CID on AF_VSOCK.
    pub fn on_hello(&mut self, hello: Hello, peer_cid: Option<u32>, now: Instant) -> Vec<Progress> {
        self.init_seen = true;
        if let Err(refused) = hello::assess_hello(&hello, self.cid, peer_cid) {
            return self.fail(Stage::Control, refused.to_string(), now);
        }
        self.hello = Some(hello);
        self.advance(now)
    }

    /// A device report (control channel, or parsed from the console marker).
    pub fn on_device_report(&mut self, report: DeviceReport, now: Instant) -> Vec<Progress> {
        self.init_seen = true;
        let verdict = assess_devices(&report);
        self.devices = Some(report);
        match verdict {
            Ok(summary) => {
                self.devices_ok = true;
                self.line_mut(Stage::Devices).summary = summary;
                self.advance(now)
            }
            Err(reasons)
                if self.is_up() || self.status_of(Stage::Devices) == StageStatus::Accepted =>
            {
                log::warn!("a later device report has problems: {}", reasons.join("; "));
                vec![]
            }
            Err(reasons) => self.fail(Stage::Devices, reasons.join("; "), now),
        }
    }

    /// The GuestConfig was written to the control connection.
    pub fn on_config_sent(&mut self, now: Instant) -> Vec<Progress> {
        self.config_sent = true;
        self.advance(now)
    }

    /// A `Stage` message on the control channel.
    pub fn on_stage_report(&mut self, r: &StageReport, now: Instant) -> Vec<Progress> {
        self.on_report(r, now, Source::Control)
    }

    fn on_report(&mut self, r: &StageReport, now: Instant, source: Source) -> Vec<Progress> {
        let summary = r.detail.summary();
        if let protocol::StageDetail::Init(protocol::evidence::InitEvidence {
            handed_over_ms: Some(at),
            ..
        }) = &r.detail
        {
            self.line_mut(Stage::Init)
                .guest_started_ms
                .get_or_insert(*at);
        }
        if let Some(at) = r.at_ms {
            let line = self.line_mut(r.stage);
            match r.state {
                StageState::Started => _ = line.guest_started_ms.get_or_insert(at),
                StageState::Ready => _ = line.guest_ready_ms.get_or_insert(at),
                StageState::Degraded | StageState::Failed => {}
            }
        }
        if let Some(t) = r.detail.tailnet() {
            self.tailnet = Some(t.clone());
        }
        match r.state {
            StageState::Failed => {
                if self.finished.is_some() {
                    let line = self.line_mut(r.stage);
                    line.status = StageStatus::Failed;
                    line.summary = summary;
                    return vec![];
                }
                let why = if summary.is_empty() {
                    "no detail given".to_string()
                } else {
                    summary
                };
                self.fail(
                    r.stage,
                    format!("the guest reports {} failed ({source}): {why}", r.stage),
                    now,
                )
            }
            StageState::Started => {
                let line = self.line_mut(r.stage);
                if line.status == StageStatus::Pending {
                    line.status = StageStatus::Started;
                    if !summary.is_empty() {
                        line.summary = summary;
                    }
                }
                self.advance(now)
            }
            StageState::Degraded => {
                let line = self.line_mut(r.stage);
                if line.status == StageStatus::Accepted {
                    line.status = StageStatus::Degraded;
                }
                line.summary = summary;
                self.advance(now)
            }
            StageState::Ready => {
                // The stages the guest judges itself count only from the control channel.
                let guest_judged = source == Source::Control && r.stage >= Stage::Network;
                if guest_judged && !self.guest_ready.contains(&r.stage) {
                    self.guest_ready.push(r.stage);
                }
                let line = self.line_mut(r.stage);
                if r.stage == Stage::Init && !summary.is_empty() {
                    line.summary = summary.clone();
                }
                if guest_judged {
                    if !summary.is_empty() {
                        line.summary = summary;
                    }
                    if line.status == StageStatus::Degraded {
                        line.status = StageStatus::Accepted;
                    }
                }
                self.advance(now)
            }
        }
    }

    /// A host process exited.
    pub fn on_process_exit(&mut self, what: &str, status: &str, now: Instant) -> Vec<Progress> {
        match self.current() {
            Some(stage) => self.fail(
                stage,
                format!("{what} exited ({status}) before the guest reached {stage}"),
                now,
            ),
            None => vec![],
        }
    }

    /// Checks the current stage's deadline.
    pub fn tick(&mut self, now: Instant) -> Vec<Progress> {
        let Some(stage) = self.current() else {
            return vec![];
        };
        let limit = self.timeouts.for_stage(stage);
        if now.saturating_duration_since(self.stage_clock) <= limit {
            return vec![];
        }
        let reason = deadlines::missed(stage, limit, self.devices.as_ref(), self.line(stage));
        self.fail(stage, reason, now)
    }

    /// Fails `stage` for a reason found outside the guest's reports (e.g. the host
    /// cannot build the configuration).
    pub fn fail_now(&mut self, stage: Stage, reason: String, now: Instant) -> Vec<Progress> {
        self.fail(stage, reason, now)
    }

    fn fail(&mut self, stage: Stage, reason: String, now: Instant) -> Vec<Progress> {
        if self.finished.is_some() {
            return vec![];
        }
        let elapsed = self.elapsed_ms(now);
        let line = self.line_mut(stage);
        line.status = StageStatus::Failed;
        line.elapsed_ms = Some(elapsed);
        let (missing, problems) = match &self.devices {
            Some(d) => (d.missing_kernel_options.clone(), d.problems.clone()),
            None => (vec![], vec![]),
        };
        let failure = Failure {
            at: FailurePoint::Stage(stage),
            reason,
            devices: self.devices.clone(),
            missing_kernel_options: missing,
            problems,
        };
        self.finished = Some(Err(failure.clone()));
        vec![Progress::Failed(Box::new(failure))]
    }

    fn evidence(&self, stage: Stage) -> bool {
        match stage {
            Stage::Init => self.init_seen,
            Stage::Devices => self.devices_ok,
            Stage::Control => self.hello.is_some() && self.config_sent,
            other => self.guest_ready.contains(&other),
        }
    }

    fn advance(&mut self, now: Instant) -> Vec<Progress> {
        let mut out = Vec::new();
        while self.finished.is_none() {
            let Some(&stage) = Stage::ALL.get(self.next) else {
                break;
            };
            if !self.evidence(stage) {
                break;
            }
            let elapsed = self.elapsed_ms(now);
            // The host's own evidence for the stages it judges itself.
            let host_summary = match (stage, &self.hello) {
                (Stage::Control, Some(h)) => Some(format!(
                    "hello from CID {} (kernel {}), config sent",
                    h.cid, h.kernel_release
                )),
                _ => None,
            };
            let line = self.line_mut(stage);
            line.status = StageStatus::Accepted;
            line.elapsed_ms = Some(elapsed);
            match host_summary {
                Some(summary) => line.summary = summary,
                None if stage == Stage::Init && line.summary.is_empty() => {
                    line.summary = "init running".to_string();
                }
                None => {}
            }
            out.push(Progress::Accepted(line.clone()));
            self.next += 1;
            self.stage_clock = now;
            if stage == self.wait_for {
                self.finished = Some(Ok(()));
                out.push(Progress::Up);
            }
        }
        out
    }
}

fn stage_index(s: Stage) -> usize {
    Stage::ALL.iter().position(|&x| x == s).unwrap_or(0)
}

/// Where a stage report came from: the console proves less than the control channel
/// (only `init`, `devices` and failures count from the console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Console,
    Control,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Console => "console",
            Source::Control => "control",
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use protocol::evidence::{InitEvidence, NetworkEvidence, StageDetail};
    use protocol::messages::{DeviceKind, Transport, VirtioDevice};
    use protocol::PROTOCOL_VERSION;
    use std::time::Duration;

    fn parse_marker(line: &str) -> Option<Marker> {
        Marker::parse(line)
    }

    pub(crate) fn dev(kind: DeviceKind, id: u32, driver: Option<&str>) -> VirtioDevice {
        VirtioDevice {
            transport: Transport::Pci,
            address: format!("0000:00:0{id}.0"),
            virtio_name: Some(format!("virtio{id}")),
            pci_id: None,
            device_id: id,
            kind,
            driver: driver.map(Into::into),
        }
    }

    pub(crate) fn good_report() -> DeviceReport {
        DeviceReport {
            devices: vec![
                dev(DeviceKind::Socket, 19, Some("vmw_vsock_virtio_transport")),
                dev(DeviceKind::Block, 2, Some("virtio_blk")),
                dev(DeviceKind::Block, 3, Some("virtio_blk")),
            ],
            kernel_config: "/proc/config.gz".into(),
            ..Default::default()
        }
    }

    fn hello(cid: u32) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            cid,
            kernel_release: "6.12.48-sovereign".into(),
            boot_time_ms: 900,
            session: None,
        }
    }

    fn ready(stage: Stage, detail: impl Into<StageDetail>) -> StageReport {
        StageReport::ready(stage, detail)
    }

    fn marker(report: &StageReport) -> Marker {
        Marker::from_report(report)
    }

    fn accepted(p: &[Progress]) -> Vec<Stage> {
        p.iter()
            .filter_map(|p| match p {
                Progress::Accepted(l) => Some(l.stage),
                _ => None,
            })
            .collect()
    }

    fn failed(p: &[Progress]) -> Option<&Failure> {
        p.iter().find_map(|p| match p {
            Progress::Failed(f) => Some(&**f),
            _ => None,
        })
    }

    #[test]
    fn the_guests_own_clock_is_kept_per_stage_from_the_first_report() {
        let t0 = Instant::now();
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let started = StageReport::started(Stage::Network, StageDetail::None).at(2_400);
        r.on_stage_report(&started, t0);
        r.on_stage_report(&ready(Stage::Network, StageDetail::None).at(2_650), t0);
        // A replay of the same stage (a reconnect's greeting) keeps the first times.
        r.on_stage_report(&ready(Stage::Network, StageDetail::None).at(9_000), t0);
        // The console's markers carry no clock.
        r.on_marker(&marker(&ready(Stage::Init, StageDetail::None)), t0);
        let net = r.line(Stage::Network);
        assert_eq!(
            (net.guest_started_ms, net.guest_ready_ms),
            (Some(2_400), Some(2_650))
        );
        assert_eq!(r.line(Stage::Init).guest_ready_ms, None);
    }

    #[test]
    fn a_full_boot_is_accepted_stage_by_stage() {
        let t0 = Instant::now();
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        let init = marker(&ready(
            Stage::Init,
            InitEvidence {
                version: "0.1.0".into(),
                kernel: "6.12.48-sovereign".into(),
                cmdline_warnings: vec![],
                handed_over_ms: None,
            },
        ));
        let p = r.on_marker(&init, at(2600));
        assert_eq!(accepted(&p), [Stage::Init]);
        assert_eq!(
            r.line(Stage::Init).summary,
            "PID 1 up, kernel 6.12.48-sovereign"
        );
        let devices = Marker::device_report(&good_report());
        let p = r.on_marker(&devices, at(3200));
        assert_eq!(accepted(&p), [Stage::Devices]);
        let Progress::Accepted(line) = &p[0] else {
            panic!()
        };
        assert_eq!(
            line.summary,
            "vsock→vmw_vsock_virtio_transport, 2×virtio_blk"
        );
        assert_eq!(line.elapsed_ms, Some(3200));
        assert!(!r.config_due());
        assert!(r.on_hello(hello(10), None, at(3300)).is_empty());
        assert!(r.config_due());
        assert_eq!(accepted(&r.on_config_sent(at(3310))), [Stage::Control]);
        // Ready reports on the console alone do not count for the later stages.
        let net = parse_marker(
            r#"SOVEREIGN network {"marker":"stage","state":"ready","detail":{"kind":"none"}}"#,
        )
        .unwrap();
        assert!(r.on_marker(&net, at(4000)).is_empty());
        let network = NetworkEvidence {
            address: "192.168.127.2/24".into(),
            gateway: std::net::Ipv4Addr::new(192, 168, 127, 1),
            mtu: 1500,
            gateway_answered_ms: Some(12),
            recovered: false,
            input_policy: protocol::evidence::InputPolicy::Loaded,
        };
        assert_eq!(
            accepted(&r.on_stage_report(&ready(Stage::Network, network), at(4100))),
            [Stage::Network]
        );
        assert_eq!(
            r.line(Stage::Network).summary,
            "192.168.127.2/24 via 192.168.127.1, mtu 1500, gateway answered in 12 ms"
        );
        let ts = TailnetInfo {
            name: "sql-vm.tail.example".into(),
            ips: vec!["100.64.0.2".into(), "fd7a:115c:a1e0::2".into()],
        };
        assert_eq!(
            accepted(&r.on_stage_report(&ready(Stage::Tailscale, ts), at(9000))),
            [Stage::Tailscale]
        );
        assert_eq!(r.tailnet().unwrap().ips.len(), 2);
        assert_eq!(
            accepted(&r.on_stage_report(&ready(Stage::Postgres, ()), at(12000))),
            [Stage::Postgres]
        );
        let p = r.on_stage_report(&ready(Stage::Ready, ()), at(12100));
        assert_eq!(accepted(&p), [Stage::Ready]);
        assert_eq!(p.last(), Some(&Progress::Up));
        assert!(r.is_up());
        assert!(r.tick(at(10_000_000)).is_empty(), "no deadlines once up");
    }

    #[test]
    fn boot_only_images_stop_at_control_and_control_implies_earlier_stages() {
        let t0 = Instant::now();
        let mut r = Readiness::new(10, Stage::Control, Timeouts::default(), t0);
        // The control channel can beat the console tail: Hello + report, no markers yet.
        assert_eq!(accepted(&r.on_hello(hello(10), None, t0)), [Stage::Init]);
        assert_eq!(
            accepted(&r.on_device_report(good_report(), t0)),
            [Stage::Devices]
        );
        let p = r.on_config_sent(t0);
        assert_eq!(accepted(&p), [Stage::Control]);
        assert_eq!(p.last(), Some(&Progress::Up));
    }

    #[test]
    fn an_unbound_vsock_fails_devices_at_once_with_the_evidence() {
        let t0 = Instant::now();
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let mut report = good_report();
        report.devices[0].driver = None;
        report.missing_kernel_options = vec!["CONFIG_VIRTIO_VSOCKETS".into()];
        report.problems =
            vec!["socket device 0000:00:019.0: CONFIG_VIRTIO_VSOCKETS is not set".into()];
        let line = Marker::device_report(&report).to_line();
        let p = r.on_marker(&parse_marker(&line).unwrap(), t0 + Duration::from_secs(3));
        let f = failed(&p).expect("failed");
        assert_eq!(f.at, FailurePoint::Stage(Stage::Devices));
        assert!(f.reason.contains("vsock device"), "{}", f.reason);
        assert!(
            f.reason.contains("expected vmw_vsock_virtio_transport"),
            "{}",
            f.reason
        );
        assert_eq!(f.missing_kernel_options, ["CONFIG_VIRTIO_VSOCKETS"]);
        assert_eq!(f.problems.len(), 1);
        assert!(f.devices.is_some());
        assert_eq!(r.status_of(Stage::Devices), StageStatus::Failed);
        assert!(
            r.on_hello(hello(10), None, t0).is_empty(),
            "nothing after a failure"
        );
        assert!(!r.config_due(), "no secrets to a failed boot");
    }

    #[test]
    fn wrong_cids_and_versions_fail_control() {
        let t0 = Instant::now();
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let f = r.on_hello(hello(11), None, t0);
        assert!(failed(&f)
            .unwrap()
            .reason
            .contains("says its CID is 11, the spec gives 10"));
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let f = r.on_hello(hello(10), Some(12), t0);
        assert!(failed(&f).unwrap().reason.contains("from CID 12"));
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let mut h = hello(10);
        h.version = 99;
        assert!(failed(&r.on_hello(h, Some(10), t0))
            .unwrap()
            .reason
            .contains("version 99"));
    }

    #[test]
    fn deadlines_run_from_the_previous_acceptance() {
        let t0 = Instant::now();
        let timeouts = Timeouts {
            init: 5,
            control: 7,
            ..Timeouts::default()
        };
        let mut r = Readiness::new(10, Stage::Ready, timeouts, t0);
        assert!(r.tick(t0 + Duration::from_secs(5)).is_empty());
        let init = marker(&ready(Stage::Init, ()));
        r.on_marker(&init, t0 + Duration::from_secs(4));
        r.on_device_report(good_report(), t0 + Duration::from_secs(6));
        assert!(r.tick(t0 + Duration::from_secs(13)).is_empty());
        let p = r.tick(t0 + Duration::from_secs(14));
        let f = failed(&p).unwrap();
        assert_eq!(f.at, FailurePoint::Stage(Stage::Control));
        assert!(
            f.reason
                .contains("did not say Hello on vsock port 1025 within 7s"),
            "{}",
            f.reason
        );
        assert!(f.reason.contains("vsock device is bound"), "{}", f.reason);
    }

    #[test]
    fn failed_reports_and_process_exits_fail_the_current_stage() {
        let t0 = Instant::now();
        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let m = parse_marker(
            r#"SOVEREIGN control {"marker":"stage","state":"failed","detail":{"kind":"problem","message":"connect 2:1025: ENODEV"}}"#,
        )
        .unwrap();
        let p = r.on_marker(&m, t0);
        let f = failed(&p).unwrap();
        assert_eq!(f.at, FailurePoint::Stage(Stage::Control));
        assert!(f.reason.contains("ENODEV"), "{}", f.reason);

        let mut r = Readiness::new(10, Stage::Ready, Timeouts::default(), t0);
        let p = r.on_process_exit("vmm", "exit status: 1", t0);
        assert_eq!(failed(&p).unwrap().at, FailurePoint::Stage(Stage::Init));
    }
}
