//! What the commands print and ask at the terminal: durations and sizes, stage lines,
//! the device table, the failure block `start` prints, and a yes/no question.

use crate::ipc::FailureReport;
use crate::readiness::{StageLine, StageStatus};
use protocol::messages::DeviceReport;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// `[  3.2s]`-style elapsed time.
pub fn stamp(d: Duration) -> String {
    format!("[{:>6.1}s]", d.as_secs_f64())
}

/// `2m13s`-style duration.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The mark of a stage status.
pub fn mark(s: StageStatus) -> &'static str {
    match s {
        StageStatus::Pending => "·",
        StageStatus::Started => "…",
        StageStatus::Accepted => "✓",
        StageStatus::Degraded => "!",
        StageStatus::Failed => "✗",
    }
}

/// `devices   ✓ vsock→vmw_vsock_virtio_transport, 2×virtio_blk`.
pub fn stage_line(l: &StageLine) -> String {
    format!("{:<9} {} {}", l.stage.name(), mark(l.status), l.summary)
        .trim_end()
        .to_string()
}

/// The guest's device table, one device per line.
pub fn device_table(r: &DeviceReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "    {:<9} {:<14} {:<8} {:>3}  {:<28} expected",
        "transport", "address", "kind", "id", "driver"
    );
    for d in &r.devices {
        let _ = writeln!(
            out,
            "    {:<9} {:<14} {:<8} {:>3}  {:<28} {}{}",
            d.transport,
            d.address,
            d.kind,
            d.device_id,
            d.driver.as_deref().unwrap_or("-"),
            d.expected_driver().unwrap_or("-"),
            if d.is_bound() { "" } else { "   ✗ unbound" }
        );
    }
    if r.devices.is_empty() {
        let _ = writeln!(out, "    (no virtio devices found)");
    }
    let _ = writeln!(
        out,
        "    registered virtio drivers: {}",
        list_or_none(&r.registered_drivers)
    );
    if !r.modules_loaded.is_empty() {
        let _ = writeln!(out, "    modules loaded: {}", r.modules_loaded.join(", "));
    }
    let _ = writeln!(
        out,
        "    kernel config: {}; waited {} ms",
        r.kernel_config, r.waited_ms
    );
    if let Some(kib) = r.init_rss_kib {
        let _ = writeln!(out, "    sovereign-init resident memory: {kib} KiB");
    }
    out
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// The block printed when a boot fails.
pub fn failure_block(name: &str, r: &FailureReport) -> String {
    let f = &r.failure;
    let mut out = String::new();
    let _ = writeln!(out, "✗ VM {name} failed at `{}`", f.at);
    let _ = writeln!(out, "  reason: {}", f.reason);
    if let Some(d) = &f.devices {
        let _ = writeln!(out, "  devices:");
        out.push_str(&device_table(d));
    }
    if !f.missing_kernel_options.is_empty() {
        let _ = writeln!(
            out,
            "  missing kernel options (guest): {}",
            f.missing_kernel_options.join(", ")
        );
    }
    if !r.host_kernel_missing.is_empty() {
        let _ = writeln!(out, "  missing kernel options (image's IKCONFIG):");
        for m in &r.host_kernel_missing {
            let _ = writeln!(out, "    {m}");
        }
    }
    if !f.problems.is_empty() {
        let _ = writeln!(out, "  problems:");
        for p in &f.problems {
            let _ = writeln!(out, "    - {p}");
        }
    }
    let _ = writeln!(out, "  last console lines ({}):", r.console_log.display());
    if r.console_tail.is_empty() {
        let _ = writeln!(
            out,
            "    (the console is empty: the VMM never started the kernel, see its log)"
        );
    }
    for l in &r.console_tail {
        let _ = writeln!(out, "    | {l}");
    }
    if !r.vmm_log_tail.is_empty() {
        let _ = writeln!(out, "  vmm output ({}):", r.vmm_log.display());
        for l in &r.vmm_log_tail {
            let _ = writeln!(out, "    | {l}");
        }
    }
    let _ = writeln!(out, "  cleanup: {}", r.cleanup.steps.join("; "));
    let _ = writeln!(out, "  supervisor log: {}", r.supervisor_log.display());
    out
}

/// A yes/no question on the terminal (anything but yes means no); without a terminal,
/// says to pass --yes.
pub fn ask_yes(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question}\nNot at a terminal: pass --yes to confirm.");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Bytes as MiB/GiB with one decimal.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::tests::good_report;

    #[test]
    fn formats() {
        assert_eq!(stamp(Duration::from_millis(3200)), "[   3.2s]");
        assert_eq!(human_duration(133_000), "2m13s");
        let mut r = good_report();
        r.devices[0].driver = None;
        let t = device_table(&r);
        assert!(t.contains("socket"), "{t}");
        assert!(t.contains("✗ unbound"), "{t}");
    }
}
