//! The failure report of a boot that did not come up: one builder for both ways a boot
//! fails (the control listener cannot be opened before anything starts, or a stage or
//! launch fails later), written to `failure.json` for a client that connects too late
//! and published as the final event.

use super::events::Events;
use super::{Supervisor, FAILED_BOOT_SHUTDOWN};
use crate::console::ConsoleTail;
use crate::ipc::{Event, FailureReport, Phase, StopReport};
use crate::readiness::{Failure, FailurePoint};
use crate::run_files;
use crate::rundir::RunDir;
use crate::spec::Spec;
use std::path::Path;

/// Console and VMM log lines are cut to this many characters in a report.
const MAX_LINE_CHARS: usize = 2000;
/// Lines of the VMM's own log kept in a report.
const VMM_LOG_TAIL: usize = 12;

/// A failure to start a host process (or the control listener) before the guest ran.
pub fn at_launch(what: impl Into<String>, reason: String) -> Failure {
    Failure {
        at: FailurePoint::Launch(what.into()),
        reason,
        devices: None,
        missing_kernel_options: vec![],
        problems: vec![],
    }
}

/// The cleanup of a supervisor that failed before starting anything.
pub fn nothing_started() -> StopReport {
    StopReport {
        clean: true,
        nothing_left: true,
        steps: vec!["nothing was started".into()],
    }
}

/// What the host read about a failed boot besides the failure itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Required kernel options the image lacks, as the host read them.
    pub host_kernel_missing: Vec<String>,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// The last lines of the VMM's log.
    pub vmm_log_tail: Vec<String>,
}

impl Evidence {
    /// Reads the evidence of `spec`'s boot: its kernel's options, the console lines
    /// `console` kept and the end of the VMM's log.
    pub fn gather(spec: &Spec, console: &ConsoleTail) -> Evidence {
        Evidence {
            // Read only now: inflating the image takes about a second.
            host_kernel_missing: host_kernel_missing(spec),
            console_tail: console
                .last_lines()
                .into_iter()
                .map(|l| l.chars().take(MAX_LINE_CHARS).collect())
                .collect(),
            vmm_log_tail: tail_of(&spec.log_file("vmm"), VMM_LOG_TAIL),
        }
    }
}

/// The report of `spec`'s failed boot: the failure, the evidence, where the logs are
/// and how the cleanup went.
pub fn report(
    spec: &Spec,
    failure: Failure,
    evidence: Evidence,
    cleanup: StopReport,
) -> FailureReport {
    FailureReport {
        failure,
        host_kernel_missing: evidence.host_kernel_missing,
        console_tail: evidence.console_tail,
        console_log: spec.console_log.clone(),
        vmm_log_tail: evidence.vmm_log_tail,
        vmm_log: spec.log_file("vmm"),
        supervisor_log: spec.log_file("supervisor"),
        cleanup,
    }
}

/// Keeps `report` for a client that connects too late (best effort: the event
/// carries it too).
pub fn keep(run: &RunDir, report: &FailureReport) {
    if let Err(e) = run_files::failure(run).write(report) {
        log::warn!("{e}");
    }
}

/// Keeps `report`, publishes it as the final event and gives the starting CLI time to
/// read it.
pub async fn publish(run: &RunDir, events: &Events, report: FailureReport) {
    keep(run, &report);
    events.emit(Event::Failed(Box::new(report)));
    events.wait_delivered().await;
}

impl Supervisor {
    /// Reports a failed boot: stops everything, then publishes the evidence.
    pub(super) async fn fail(&mut self, failure: Failure) -> i32 {
        log::error!("boot failed at {}: {}", failure.at, failure.reason);
        if self.phase == Phase::Up || !self.restarts.is_empty() {
            self.alert_vm_down(&format!("{} failed: {}", failure.at, failure.reason));
        }
        self.phase = Phase::Failed;
        self.events.emit(Event::Stopping {
            reason: format!("{} failed: {}", failure.at, failure.reason),
        });
        let cleanup = self.stop_all(FAILED_BOOT_SHUTDOWN, "boot failed").await;
        // The console may hold the last words of a guest that died while stopping.
        let _ = self.console.poll();
        let evidence = Evidence::gather(&self.spec, &self.console);
        let report = report(&self.spec, failure, evidence, cleanup);
        publish(&self.run, &self.events, report).await;
        1
    }
}

/// The last `n` lines of a log file (empty when unreadable).
fn tail_of(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            crate::console::clean_line(l.as_bytes())
                .chars()
                .take(MAX_LINE_CHARS)
                .collect()
        })
        .collect()
}

/// Required kernel options the spec's kernel lacks (empty when it cannot be read).
fn host_kernel_missing(spec: &Spec) -> Vec<String> {
    match crate::kernel::missing_options(&spec.kernel, spec.arch) {
        Ok(m) => m.into_iter().map(|m| m.to_string()).collect(),
        Err(e) => {
            log::info!("kernel options not checked: {e}");
            vec![]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::env_in;
    use protocol::Stage;

    fn spec_in(dir: &Path) -> Spec {
        Spec::builtin_sql(&env_in(dir, false)).unwrap()
    }

    #[test]
    fn a_report_before_anything_started_names_the_logs_and_an_empty_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let failure = at_launch(
            "control listener",
            "cannot listen on vsock port 1025".into(),
        );
        let r = report(&spec, failure, Evidence::default(), nothing_started());
        assert_eq!(
            r.failure.at,
            FailurePoint::Launch("control listener".into())
        );
        assert_eq!(r.failure.at.to_string(), "launch control listener");
        assert!(r.failure.devices.is_none());
        assert!(r.console_tail.is_empty() && r.vmm_log_tail.is_empty());
        assert!(r.host_kernel_missing.is_empty());
        assert_eq!(r.console_log, spec.console_log);
        assert_eq!(r.vmm_log, dir.path().join("sql-vmm.log"));
        assert_eq!(r.supervisor_log, dir.path().join("sql-supervisor.log"));
        assert!(r.cleanup.clean && r.cleanup.nothing_left);
        assert_eq!(r.cleanup.steps, ["nothing was started"]);
    }

    #[test]
    fn evidence_keeps_the_ends_of_the_console_and_the_vmm_log() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let vmm: String = (1..=20).map(|i| format!("vmm line {i}\n")).collect();
        std::fs::write(spec.log_file("vmm"), vmm).unwrap();
        let long = "x".repeat(3000);
        std::fs::write(&spec.console_log, format!("boot\n{long}\n")).unwrap();
        let mut console = ConsoleTail::new(&spec.console_log, 30);
        console.poll().unwrap();
        let e = Evidence::gather(&spec, &console);
        assert_eq!(e.vmm_log_tail.len(), VMM_LOG_TAIL);
        assert_eq!(e.vmm_log_tail[0], "vmm line 9");
        assert_eq!(e.vmm_log_tail[11], "vmm line 20");
        assert_eq!(e.console_tail.len(), 2);
        assert_eq!(e.console_tail[1].chars().count(), MAX_LINE_CHARS);
        assert!(e.host_kernel_missing.is_empty(), "no kernel: not checked");
        assert!(tail_of(&dir.path().join("absent.log"), 3).is_empty());
    }

    #[tokio::test]
    async fn a_published_report_is_kept_in_failure_json() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let run = RunDir::new(dir.path());
        let mut failure = at_launch("vmm", "exited".into());
        failure.at = FailurePoint::Stage(Stage::Devices);
        let r = report(&spec, failure, Evidence::default(), nothing_started());
        let events = std::sync::Arc::new(Events::new());
        let (mut server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let watch = tokio::spawn({
            let events = events.clone();
            async move { events.watch(&mut server).await }
        });
        publish(&run, &events, r.clone()).await;
        watch.await.unwrap();
        let mut reader = protocol::control::FrameReader::new();
        let got: crate::ipc::Reply = crate::control::read_frame(&mut client, &mut reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            crate::ipc::Reply::Event(Event::Failed(Box::new(r.clone())))
        );
        let kept: FailureReport = run_files::failure(&run).read_present().unwrap();
        assert_eq!(kept, r);
    }
}
