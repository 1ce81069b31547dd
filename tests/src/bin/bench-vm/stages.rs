//! Boot stages as `status --json` reports them, and PID 1's share of the boot.

use protocol::status::VmStatus;

/// One stage of one boot.
#[derive(Debug, Clone)]
pub struct StageTime {
    pub stage: String,
    /// From the VMM's start, by the host's clock.
    pub host_ms: Option<u64>,
    /// From the kernel's start, by the guest's clock.
    pub guest_started_ms: Option<u64>,
    pub guest_ready_ms: Option<u64>,
}

/// The stage lines of `status --json` once up.
pub fn stage_times(status: &VmStatus) -> Vec<StageTime> {
    status
        .stages
        .iter()
        .map(|l| StageTime {
            stage: l.stage.name().to_string(),
            host_ms: l.elapsed_ms,
            guest_started_ms: l.guest_started_ms,
            guest_ready_ms: l.guest_ready_ms,
        })
        .collect()
}

/// The line of `name`, if the boot reported it.
pub fn stage<'a>(times: &'a [StageTime], name: &str) -> Option<&'a StageTime> {
    times.iter().find(|t| t.stage == name)
}

/// PID 1's share split by stage (ms, guest clock): `init` (handover to mounted and
/// configured), `devices` (the census, waiting for drivers to bind included) and
/// `control` (dialling the host, Hello, waiting for its configuration).
pub fn pid1_split_ms(times: &[StageTime]) -> Option<[u64; 3]> {
    let handed_over = stage(times, "init")?.guest_started_ms?;
    let init = stage(times, "init")?.guest_ready_ms?;
    let devices = stage(times, "devices")?.guest_ready_ms?;
    let control = stage(times, "control")?.guest_ready_ms?;
    Some([
        init.checked_sub(handed_over)?,
        devices.checked_sub(init)?,
        control.checked_sub(devices)?,
    ])
}

/// PID 1's own share of the boot: from the kernel handing over until `control` holds.
pub fn pid1_share_ms(times: &[StageTime]) -> Option<u64> {
    let handed_over = stage(times, "init")?.guest_started_ms?;
    let control = stage(times, "control")?.guest_ready_ms?;
    control.checked_sub(handed_over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1s_share_runs_from_the_handover_to_control() {
        let t = |stage: &str, started, ready| StageTime {
            stage: stage.into(),
            host_ms: None,
            guest_started_ms: started,
            guest_ready_ms: ready,
        };
        let times = [
            t("init", Some(610), Some(640)),
            t("control", Some(660), Some(690)),
        ];
        assert_eq!(pid1_share_ms(&times), Some(80));
        assert_eq!(pid1_share_ms(&times[..1]), None);
        let times = [
            t("init", Some(610), Some(640)),
            t("devices", None, Some(655)),
            t("control", Some(656), Some(690)),
        ];
        assert_eq!(pid1_split_ms(&times), Some([30, 15, 35]));
    }
}
