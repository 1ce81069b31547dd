//! Stage acceptance: turns what the guest says (console markers, control messages) and
//! what the host sees (process exits, the clock) into accepted or failed stages, by
//! DESIGN.md's table. Pure: no I/O, time is passed in, so every rule is unit-tested.
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

use crate::spec::Timeouts;
use protocol::marker::{Marker, MarkerBody};
use protocol::messages::{DeviceKind, DeviceReport, Hello, TailnetInfo};
use protocol::{Stage, StageReport, StageState, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
        now.saturating_duration_since(self.origin).as_millis() as u64
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
        let wrong = if hello.version != PROTOCOL_VERSION {
            Some(format!(
                "the guest speaks control protocol version {}, this launcher {PROTOCOL_VERSION}: rebuild the image and the launcher from one tree",
                hello.version
            ))
        } else if hello.cid != self.cid {
            Some(format!(
                "the guest says its CID is {}, the spec gives {}",
                hello.cid, self.cid
            ))
        } else {
            match peer_cid {
                Some(p) if p != self.cid => Some(format!(
                    "a connection from CID {p} claimed to be the guest (spec CID {}): refused",
                    self.cid
                )),
                _ => None,
            }
        };
        if let Some(reason) = wrong {
            return self.fail(Stage::Control, reason, now);
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
        let idx = stage_index(r.stage);
        let summary = r.detail.summary();
        if let Some(t) = r.detail.tailnet() {
            self.tailnet = Some(t.clone());
        }
        match r.state {
            StageState::Failed => {
                if self.finished.is_some() {
                    self.lines[idx].status = StageStatus::Failed;
                    self.lines[idx].summary = summary;
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
                if self.lines[idx].status == StageStatus::Pending {
                    self.lines[idx].status = StageStatus::Started;
                    if !summary.is_empty() {
                        self.lines[idx].summary = summary;
                    }
                }
                self.advance(now)
            }
            StageState::Degraded => {
                if self.lines[idx].status == StageStatus::Accepted {
                    self.lines[idx].status = StageStatus::Degraded;
                }
                self.lines[idx].summary = summary;
                self.advance(now)
            }
            StageState::Ready => {
                if r.stage == Stage::Init && !summary.is_empty() {
                    self.lines[idx].summary = summary.clone();
                }
                if source == Source::Control && idx >= stage_index(Stage::Network) {
                    if !self.guest_ready.contains(&r.stage) {
                        self.guest_ready.push(r.stage);
                    }
                    if !summary.is_empty() {
                        self.lines[idx].summary = summary;
                    }
                    if self.lines[idx].status == StageStatus::Degraded {
                        self.lines[idx].status = StageStatus::Accepted;
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
        let reason = self.timeout_reason(stage, limit);
        self.fail(stage, reason, now)
    }

    fn timeout_reason(&self, stage: Stage, limit: Duration) -> String {
        let secs = limit.as_secs();
        match stage {
            Stage::Init => format!(
                "no `SOVEREIGN init` marker on the console within {secs}s: the kernel did not reach the init (see the console lines)"
            ),
            Stage::Devices => format!(
                "no device report within {secs}s (neither the `SOVEREIGN devices` console marker nor the control channel)"
            ),
            Stage::Control => {
                let vsock = match &self.devices {
                    Some(d) if d.of_kind(DeviceKind::Socket).any(|s| s.is_bound()) => {
                        " although its vsock device is bound (check the host listener: under QEMU, vhost-device-vsock's log)"
                    }
                    Some(_) => " and its vsock device is not bound",
                    None => "",
                };
                format!(
                    "the guest did not say Hello on vsock port {} within {secs}s{vsock}",
                    protocol::ports::CONTROL_PORT
                )
            }
            _ => {
                let line = self.line(stage);
                let last = match line.status {
                    StageStatus::Started if line.summary.is_empty() => " (it reported started)".to_string(),
                    StageStatus::Started => format!(" (it reported started: {})", line.summary),
                    _ => String::new(),
                };
                format!("no `ready` report for {stage} from the guest within {secs}s{last}")
            }
        }
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
        let idx = stage_index(stage);
        self.lines[idx].status = StageStatus::Failed;
        self.lines[idx].elapsed_ms = Some(self.elapsed_ms(now));
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
            let line = &mut self.lines[self.next];
            line.status = StageStatus::Accepted;
            line.elapsed_ms = Some(elapsed);
            // The host's own evidence for the stages it judges itself.
            match (stage, &self.hello) {
                (Stage::Control, Some(h)) => {
                    line.summary = format!(
                        "hello from CID {} (kernel {}), config sent",
                        h.cid, h.kernel_release
                    );
                }
                (Stage::Init, _) if line.summary.is_empty() => {
                    line.summary = "init running".to_string();
                }
                _ => {}
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

/// Applies the `devices` rule; `Ok` carries the progress summary, `Err` every reason.
pub fn assess_devices(r: &DeviceReport) -> Result<String, Vec<String>> {
    let mut reasons = Vec::new();
    let sockets: Vec<_> = r.of_kind(DeviceKind::Socket).collect();
    let blocks: Vec<_> = r.of_kind(DeviceKind::Block).collect();
    if sockets.is_empty() {
        reasons.push("no virtio socket (vsock) device found: the VMM attached none".to_string());
    }
    if blocks.len() < 2 {
        reasons.push(format!(
            "{} virtio block device(s) found, 2 needed (root and data)",
            blocks.len()
        ));
    }
    for d in r.devices.iter().filter(|d| !d.is_bound()) {
        reasons.push(format!(
            "{} device {} (virtio id {}) has driver {}, expected {}",
            d.kind.label(),
            d.address,
            d.device_id,
            d.driver.as_deref().unwrap_or("none"),
            d.expected_driver().unwrap_or("any")
        ));
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let mut parts = Vec::new();
    for s in &sockets {
        parts.push(format!("vsock→{}", s.driver.as_deref().unwrap_or("?")));
    }
    parts.push(format!(
        "{}×{}",
        blocks.len(),
        blocks
            .first()
            .and_then(|b| b.driver.as_deref())
            .unwrap_or("?")
    ));
    for d in r
        .devices
        .iter()
        .filter(|d| !matches!(d.kind, DeviceKind::Socket | DeviceKind::Block))
    {
        parts.push(format!("{}→{}", d.kind, d.driver.as_deref().unwrap_or("?")));
    }
    Ok(parts.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use protocol::evidence::{InitEvidence, NetworkEvidence, StageDetail};
    use protocol::messages::{Transport, VirtioDevice};

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
    fn device_rule_counts_disks_and_sockets() {
        let mut r = good_report();
        r.devices.remove(2);
        r.devices.remove(0);
        let e = assess_devices(&r).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("no virtio socket"));
        assert!(e[1].contains("1 virtio block device(s) found, 2 needed"));
        let mut r = good_report();
        r.devices
            .push(dev(DeviceKind::Console, 3, Some("virtio_console")));
        assert_eq!(
            assess_devices(&r).unwrap(),
            "vsock→vmw_vsock_virtio_transport, 2×virtio_blk, console→virtio_console"
        );
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
