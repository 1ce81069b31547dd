//! The `devices` stage: load modules if the kernel has them, wait (bounded) for the
//! virtio drivers to bind, check the running kernel's configuration, and report.
//!
//! - [`census`]: which virtio devices exist and which driver bound each, and why not.
//! - [`modules`]: finding and loading the kernel modules the devices need.
//! - [`kernel`]: the running kernel's release and configuration check.

pub mod census;
pub mod kernel;
pub mod modules;

use census::{census, KernelFacts, Sysfs};
use protocol::messages::{DeviceKind, DeviceReport};
use std::path::Path;
use std::time::Duration;

/// Runs the census: modules, drivers, kernel options, PID 1's own footprint.
pub fn take_census(wait: Duration, extra_modules: &[String]) -> DeviceReport {
    let release = kernel::release();
    let loaded = modules::load_needed(&release, extra_modules);
    let config = kernel::running_config();
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
            kernel_log: crate::kmsg::read_ring(),
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
            report.missing_kernel_options = kernel::missing_options(&cfg);
            for m in &report.missing_kernel_options {
                log::warn!("kernel option not as required: {m}");
            }
        }
        Err(why) => report.kernel_config = why.to_string(),
    }
    report.init_rss_kib = crate::own_memory::read().map(|m| m.rss_kib);
    report
}

/// Why the devices stage does not hold.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("no bound vsock device: the control channel and the network cannot work")]
    NoVsock,
    #[error("{0} device(s) without their driver: {1}")]
    Unbound(usize, String),
}

/// The stage's verdict on a census: at least one bound vsock device and every device
/// bound.
pub fn verdict(report: &DeviceReport) -> Result<(), DevicesError> {
    if !report.of_kind(DeviceKind::Socket).any(|d| d.is_bound()) {
        return Err(DevicesError::NoVsock);
    }
    let unbound = report.devices.iter().filter(|d| !d.is_bound()).count();
    if unbound > 0 {
        return Err(DevicesError::Unbound(unbound, report.problems.join("; ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::{Transport, VirtioDevice};

    #[test]
    fn the_verdict_needs_a_bound_vsock_and_every_driver() {
        let dev = |kind, driver: Option<&str>| VirtioDevice {
            transport: Transport::Pci,
            address: "0000:00:04.0".into(),
            virtio_name: Some("virtio0".into()),
            pci_id: None,
            device_id: 0,
            kind,
            driver: driver.map(Into::into),
        };
        let mut r = DeviceReport {
            devices: vec![dev(DeviceKind::Block, Some("virtio_blk"))],
            ..DeviceReport::default()
        };
        assert!(matches!(verdict(&r), Err(DevicesError::NoVsock)));
        r.devices
            .push(dev(DeviceKind::Socket, Some("vmw_vsock_virtio_transport")));
        verdict(&r).unwrap();
        r.devices.push(dev(DeviceKind::Console, None));
        r.problems = vec!["console device: no driver".into()];
        let e = verdict(&r).unwrap_err().to_string();
        assert_eq!(
            e,
            "1 device(s) without their driver: console device: no driver"
        );
    }
}
