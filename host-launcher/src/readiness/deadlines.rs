//! Why a stage missed its deadline, in words: what evidence was missing and, where the
//! host knows more (the vsock device's driver, a `started` report), what it knows.

use super::{StageLine, StageStatus};
use protocol::messages::{DeviceKind, DeviceReport};
use protocol::Stage;
use std::time::Duration;

/// The failure reason of `stage` when no evidence came within `limit`; `devices` is the
/// latest device report, `line` the stage's line so far.
pub fn missed(
    stage: Stage,
    limit: Duration,
    devices: Option<&DeviceReport>,
    line: &StageLine,
) -> String {
    let secs = limit.as_secs();
    match stage {
        Stage::Init => format!(
            "no `SOVEREIGN init` marker on the console within {secs}s: the kernel did not reach the init (see the console lines)"
        ),
        Stage::Devices => format!(
            "no device report within {secs}s (neither the `SOVEREIGN devices` console marker nor the control channel)"
        ),
        Stage::Control => {
            let vsock = match devices {
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
            let last = match line.status {
                StageStatus::Started if line.summary.is_empty() => {
                    " (it reported started)".to_string()
                }
                StageStatus::Started => format!(" (it reported started: {})", line.summary),
                _ => String::new(),
            };
            format!("no `ready` report for {stage} from the guest within {secs}s{last}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::tests::good_report;

    fn line(stage: Stage, status: StageStatus, summary: &str) -> StageLine {
        StageLine {
            stage,
            status,
            elapsed_ms: None,
            summary: summary.into(),
            guest_started_ms: None,
            guest_ready_ms: None,
        }
    }

    #[test]
    fn a_missed_hello_says_whether_the_vsock_device_is_bound() {
        let limit = Duration::from_secs(7);
        let pending = line(Stage::Control, StageStatus::Pending, "");
        let none = missed(Stage::Control, limit, None, &pending);
        assert_eq!(
            none,
            "the guest did not say Hello on vsock port 1025 within 7s"
        );
        let mut unbound = good_report();
        unbound.devices[0].driver = None;
        let text = missed(Stage::Control, limit, Some(&unbound), &pending);
        assert!(
            text.ends_with("and its vsock device is not bound"),
            "{text}"
        );
        let text = missed(Stage::Control, limit, Some(&good_report()), &pending);
        assert!(
            text.contains("although its vsock device is bound"),
            "{text}"
        );
    }

    #[test]
    fn a_missed_guest_stage_repeats_what_it_reported_when_started() {
        let limit = Duration::from_secs(180);
        let text = missed(
            Stage::Tailscale,
            limit,
            None,
            &line(Stage::Tailscale, StageStatus::Pending, ""),
        );
        assert_eq!(
            text,
            "no `ready` report for tailscale from the guest within 180s"
        );
        let text = missed(
            Stage::Tailscale,
            limit,
            None,
            &line(Stage::Tailscale, StageStatus::Started, "logging in"),
        );
        assert!(
            text.ends_with("within 180s (it reported started: logging in)"),
            "{text}"
        );
        let text = missed(
            Stage::Init,
            Duration::from_secs(60),
            None,
            &line(Stage::Init, StageStatus::Pending, ""),
        );
        assert!(text.starts_with("no `SOVEREIGN init` marker on the console within 60s"));
    }
}
