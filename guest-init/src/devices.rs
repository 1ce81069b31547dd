//! The `devices` stage: load modules if the kernel has them, wait (bounded) for the
//! virtio drivers to bind, check the running kernel's configuration, and report.

use crate::census::{census, KernelFacts, Sysfs};
use crate::modules;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use protocol::messages::DeviceReport;
use std::path::Path;
use std::time::Duration;

/// Reads the kernel log records currently in the ring buffer (message text only).
pub fn kernel_log() -> Vec<String> {
    let Ok(fd) = open(
        "/dev/kmsg",
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // "prio,seq,usec,flags;message\n[ continuation lines ]"
                if let Some((_, msg)) = rec.split_once(';') {
                    lines.push(msg.lines().next().unwrap_or("").to_string());
                }
            }
            // A record was overwritten while we read: keep going from the next one.
            Err(nix::errno::Errno::EPIPE) => continue,
            Err(_) => break,
        }
    }
    let keep = lines.len().saturating_sub(400);
    lines.split_off(keep)
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads /proc/config.gz; `Err` says why it is unavailable.
fn running_config() -> Result<kernel_config::KernelConfig, String> {
    let bytes = std::fs::read("/proc/config.gz").map_err(|e| {
        format!("/proc/config.gz unavailable ({e}): kernel built without CONFIG_IKCONFIG_PROC")
    })?;
    kernel_config::KernelConfig::from_gzip(&bytes)
        .map_err(|e| format!("/proc/config.gz unreadable: {e}"))
}

/// Runs the stage: modules, census, kernel option check.
pub fn run(wait: Duration, extra_modules: &[String]) -> DeviceReport {
    let release = kernel_release();
    let loaded = modules::load_needed(&release, extra_modules);
    let config = running_config();
    let facts = KernelFacts {
        release: release.clone(),
        config: config.as_ref().ok().cloned(),
        has_module_tree: Path::new("/lib/modules").join(&release).is_dir(),
        module_failures: loaded
            .as_ref()
            .map(|l| l.failed.clone())
            .unwrap_or_default(),
        kernel_log: Vec::new(),
    };
    let sys = Sysfs::new("/");
    let mut report = census(&sys, wait, &facts);
    if !report.problems.is_empty() {
        // Only now read the kernel log for probe errors, and explain again with it.
        let facts = KernelFacts {
            kernel_log: kernel_log(),
            ..facts
        };
        let waited_ms = report.waited_ms;
        report = census(&sys, Duration::ZERO, &facts);
        report.waited_ms = waited_ms;
    }
    report.modules_loaded = loaded.map(|l| l.loaded).unwrap_or_default();
    match config {
        Ok(cfg) => {
            report.kernel_config = "/proc/config.gz".into();
            if let Some(arch) = kernel_config::Arch::host() {
                report.missing_kernel_options =
                    kernel_config::check(&cfg, &kernel_config::requirements(arch))
                        .iter()
                        .map(ToString::to_string)
                        .collect();
            }
            for m in &report.missing_kernel_options {
                log::warn!("kernel option not as required: {m}");
            }
        }
        Err(why) => report.kernel_config = why,
    }
    report.init_rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| vm_rss_kib(&status));
    report
}

/// The `VmRSS:` value (KiB) of a /proc/<pid>/status text.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::vm_rss_kib;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status =
            "Name:\tsovereign-init\nVmPeak:\t   9000 kB\nVmRSS:\t    2312 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kib(status), Some(2312));
        assert_eq!(vm_rss_kib("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(vm_rss_kib("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_rss_kib(&status).is_some_and(|k| k > 0), "{status}");
    }
}
