//! The device census: which virtio devices exist (on PCI and MMIO), what kind each is,
//! and which Linux driver bound it. This is the evidence that was missing when an
//! earlier attempt's vsock device enumerated but never bound: the report names every
//! device and, for an unbound one, says why as far as the kernel can tell.

use protocol::messages::{DeviceKind, DeviceReport, Transport, VirtioDevice};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use virtio_drivers::transport::pci::bus::{DeviceFunctionInfo, HeaderType};
use virtio_drivers::transport::pci::virtio_device_type;
use virtio_drivers::transport::DeviceType;

/// PCI vendor id of virtio devices (Red Hat, Inc.).
const VIRTIO_PCI_VENDOR: u16 = 0x1af4;

/// Name of the PCI driver that creates virtio devices from PCI functions.
pub const VIRTIO_PCI_DRIVER: &str = "virtio-pci";

/// The kind of a virtio device type, as reports name it.
pub fn kind_of(t: DeviceType) -> DeviceKind {
    match t {
        DeviceType::Network => DeviceKind::Network,
        DeviceType::Block => DeviceKind::Block,
        DeviceType::Console => DeviceKind::Console,
        DeviceType::EntropySource => DeviceKind::Entropy,
        DeviceType::MemoryBalloon | DeviceType::MemoryBallooning => DeviceKind::Balloon,
        DeviceType::ScsiHost => DeviceKind::Scsi,
        DeviceType::_9P => DeviceKind::NineP,
        DeviceType::GPU => DeviceKind::Gpu,
        DeviceType::Input => DeviceKind::Input,
        DeviceType::Socket => DeviceKind::Socket,
        DeviceType::Crypto => DeviceKind::Crypto,
        DeviceType::IOMMU => DeviceKind::Iommu,
        DeviceType::Memory => DeviceKind::Memory,
        DeviceType::Sound => DeviceKind::Sound,
        _ => DeviceKind::Other,
    }
}

/// A sysfs tree to read: `/` in the guest, a fixture directory in tests.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// A tree rooted at `root` (which contains `sys/`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read_hex(path: &Path) -> Option<u32> {
        let text = fs::read_to_string(path).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    }

    /// The basename of a `driver` symlink, if present.
    fn driver_of(dev: &Path) -> Option<String> {
        let target = fs::read_link(dev.join("driver")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    fn list(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Drivers registered on a bus (`virtio` or `pci`).
    pub fn registered_drivers(&self, bus: &str) -> Vec<String> {
        Self::list(&self.path(&format!("sys/bus/{bus}/drivers")))
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    /// Every virtio device visible now.
    pub fn scan(&self) -> Vec<VirtioDevice> {
        let mut devices = Vec::new();
        let mut pci_with_virtio = Vec::new();
        // Devices a transport has already created on the virtio bus.
        for dev in Self::list(&self.path("sys/bus/virtio/devices")) {
            let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
            let device_id = Self::read_hex(&dev.join("device")).unwrap_or(0);
            let kind = DeviceType::try_from(device_id)
                .ok()
                .map_or(DeviceKind::Unknown, kind_of);
            // The symlink points into /sys/devices/...; its parent is the transport.
            let parent = fs::canonicalize(&dev)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let is_pci = parent.matches(':').count() == 2 && parent.contains('.');
            let pci_id = is_pci.then(|| {
                let pdev = self.path(&format!("sys/bus/pci/devices/{parent}"));
                format!(
                    "{:04x}:{:04x}",
                    Self::read_hex(&pdev.join("vendor")).unwrap_or(0),
                    Self::read_hex(&pdev.join("device")).unwrap_or(0)
                )
            });
            if is_pci {
                pci_with_virtio.push(parent.clone());
            }
            devices.push(VirtioDevice {
                transport: if is_pci {
                    Transport::Pci
                } else {
                    Transport::Mmio
                },
                address: parent,
                virtio_name: name,
                pci_id,
                device_id,
                kind,
                driver: Self::driver_of(&dev),
            });
        }
        // PCI functions of virtio type that no transport has claimed (virtio-pci absent).
        for pdev in Self::list(&self.path("sys/bus/pci/devices")) {
            let Some(addr) = pdev.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if pci_with_virtio.contains(&addr) {
                continue;
            }
            let vendor = Self::read_hex(&pdev.join("vendor")).unwrap_or(0);
            let device = Self::read_hex(&pdev.join("device")).unwrap_or(0);
            let (Ok(vendor_id), Ok(device_id16)) = (u16::try_from(vendor), u16::try_from(device))
            else {
                continue;
            };
            if vendor_id != VIRTIO_PCI_VENDOR {
                continue;
            }
            let info = DeviceFunctionInfo {
                vendor_id,
                device_id: device_id16,
                class: 0,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                header_type: HeaderType::Standard,
            };
            let Some(kind) = virtio_device_type(&info) else {
                continue;
            };
            devices.push(VirtioDevice {
                transport: Transport::Pci,
                address: addr,
                virtio_name: None,
                pci_id: Some(format!("{vendor_id:04x}:{device_id16:04x}")),
                device_id: kind as u32,
                kind: kind_of(kind),
                // The PCI-level driver, if any; the virtio driver cannot bind yet.
                driver: None,
            });
        }
        devices
    }
}

/// What is known about the kernel, for explaining an unbound device.
#[derive(Debug, Clone, Default)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// The running kernel's configuration, if /proc/config.gz exists.
    pub config: Option<kernel_config::KernelConfig>,
    /// True when /lib/modules/<release> exists.
    pub has_module_tree: bool,
    /// Modules that failed to load, with the error.
    pub module_failures: Vec<(String, String)>,
    /// Kernel log lines (most recent last).
    pub kernel_log: Vec<String>,
}

/// One line saying why `dev` has no driver, as far as the kernel can tell.
pub fn explain_unbound(
    dev: &VirtioDevice,
    registered: &[String],
    pci_drivers: &[String],
    facts: &KernelFacts,
) -> String {
    let what = format!(
        "{} device {} at {}{}",
        dev.kind,
        dev.pci_id.as_deref().unwrap_or(""),
        dev.address,
        dev.virtio_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    let mut why = Vec::new();
    if dev.virtio_name.is_none() && dev.transport == Transport::Pci {
        if pci_drivers.iter().any(|d| d == VIRTIO_PCI_DRIVER) {
            why.push("the virtio-pci transport did not claim it".to_string());
        } else {
            why.push(
                "the virtio-pci transport driver is not registered (CONFIG_VIRTIO_PCI)".to_string(),
            );
        }
    }
    let expected = dev.expected_driver().unwrap_or("an unknown driver");
    match (&dev.driver, registered.iter().any(|d| d == expected)) {
        (Some(wrong), _) => why.push(format!("bound to {wrong} instead of {expected}")),
        (None, true) => why.push(format!(
            "{expected} is registered but did not bind (probe failed?)"
        )),
        (None, false) => {
            why.push(format!(
                "no driver: {expected} is not registered on the virtio bus"
            ));
            let option = dev.kind.kernel_option();
            match (&facts.config, option) {
                (Some(cfg), Some(opt)) => {
                    let v = cfg.get(opt);
                    why.push(format!("{opt}={v} in /proc/config.gz"));
                }
                (None, Some(opt)) => why.push(format!(
                    "kernel config unavailable (no /proc/config.gz, CONFIG_IKCONFIG_PROC off) so {opt} cannot be checked"
                )),
                _ => {}
            }
            if facts.has_module_tree {
                if let Some((_, err)) = facts.module_failures.iter().find(|(m, _)| m == expected) {
                    why.push(format!("loading module {expected} failed: {err}"));
                } else {
                    why.push(format!(
                        "no module {expected} found in /lib/modules/{}",
                        facts.release
                    ));
                }
            } else {
                why.push(format!(
                    "it is not built in and /lib/modules/{} does not exist, so no module can provide it",
                    facts.release
                ));
            }
        }
    }
    let needles: Vec<&str> = [
        Some(dev.address.as_str()),
        dev.virtio_name.as_deref(),
        Some(expected),
    ]
    .into_iter()
    .flatten()
    .collect();
    let probe_lines: Vec<&String> = facts
        .kernel_log
        .iter()
        .filter(|l| {
            needles.iter().any(|n| l.contains(n))
                && (l.contains("fail") || l.contains("error") || l.contains("probe"))
        })
        .rev()
        .take(3)
        .collect();
    for l in probe_lines {
        why.push(format!("kernel log: {l}"));
    }
    format!("{what}: {}", why.join("; "))
}

/// Scans until every device is bound or `wait` passes. Stops early when no unbound
/// device can ever bind (its driver is not registered anywhere).
pub fn census(sys: &Sysfs, wait: Duration, facts: &KernelFacts) -> DeviceReport {
    let start = Instant::now();
    let mut devices;
    loop {
        devices = sys.scan();
        let registered = sys.registered_drivers("virtio");
        let pending = devices.iter().filter(|d| !d.is_bound());
        let can_still_bind = pending.clone().any(|d| {
            d.driver.is_none()
                && (d.virtio_name.is_none()
                    || d.expected_driver()
                        .is_some_and(|e| registered.iter().any(|r| r == e)))
        });
        if pending.count() == 0 || !can_still_bind || start.elapsed() >= wait {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let registered = sys.registered_drivers("virtio");
    let pci_drivers = sys.registered_drivers("pci");
    let problems = devices
        .iter()
        .filter(|d| !d.is_bound())
        .map(|d| explain_unbound(d, &registered, &pci_drivers, facts))
        .collect();
    DeviceReport {
        devices,
        registered_drivers: registered,
        waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        problems,
        ..DeviceReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Builds a sysfs tree the way the kernel lays it out: devices under
    /// sys/devices/..., bus views as symlinks, `driver` links into sys/bus/*/drivers.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let f = Fixture {
                dir: tempfile::tempdir().unwrap(),
            };
            for d in [
                "sys/bus/virtio/devices",
                "sys/bus/virtio/drivers",
                "sys/bus/pci/devices",
                "sys/bus/pci/drivers",
            ] {
                fs::create_dir_all(f.dir.path().join(d)).unwrap();
            }
            f
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn register(&self, bus: &str, driver: &str) {
            fs::create_dir_all(self.root().join(format!("sys/bus/{bus}/drivers/{driver}")))
                .unwrap();
        }

        /// A virtio PCI function at `addr`; with `virtio` = Some((name, id, driver)) the
        /// virtio-pci transport has created its virtio device.
        fn pci(&self, addr: &str, pci_device: u16, virtio: Option<(&str, u32, Option<&str>)>) {
            let dev = self.root().join(format!("sys/devices/pci0000:00/{addr}"));
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
            fs::write(dev.join("device"), format!("0x{pci_device:04x}\n")).unwrap();
            symlink(
                format!("../../../devices/pci0000:00/{addr}"),
                self.root().join(format!("sys/bus/pci/devices/{addr}")),
            )
            .unwrap();
            if let Some((name, id, driver)) = virtio {
                self.register("pci", VIRTIO_PCI_DRIVER);
                let vdev = dev.join(name);
                fs::create_dir_all(&vdev).unwrap();
                fs::write(vdev.join("device"), format!("0x{id:04x}\n")).unwrap();
                fs::write(vdev.join("vendor"), "0x1af4\n").unwrap();
                symlink(
                    format!("../../../devices/pci0000:00/{addr}/{name}"),
                    self.root().join(format!("sys/bus/virtio/devices/{name}")),
                )
                .unwrap();
                if let Some(d) = driver {
                    self.register("virtio", d);
                    symlink(
                        format!("../../../../bus/virtio/drivers/{d}"),
                        vdev.join("driver"),
                    )
                    .unwrap();
                }
            }
        }
    }

    fn quick(f: &Fixture, facts: &KernelFacts) -> DeviceReport {
        census(&Sysfs::new(f.root()), Duration::from_millis(200), facts)
    }

    #[test]
    fn all_bound() {
        let f = Fixture::new();
        f.pci(
            "0000:00:02.0",
            0x1042,
            Some(("virtio0", 2, Some("virtio_blk"))),
        );
        f.pci(
            "0000:00:03.0",
            0x1042,
            Some(("virtio1", 2, Some("virtio_blk"))),
        );
        f.pci(
            "0000:00:04.0",
            0x1053,
            Some(("virtio2", 19, Some("vmw_vsock_virtio_transport"))),
        );
        let r = quick(&f, &KernelFacts::default());
        assert!(r.all_bound(), "{r:#?}");
        assert!(r.problems.is_empty());
        assert_eq!(r.of_kind(DeviceKind::Block).count(), 2);
        let vsock = r.of_kind(DeviceKind::Socket).next().unwrap();
        assert_eq!(vsock.driver.as_deref(), Some("vmw_vsock_virtio_transport"));
        assert_eq!(vsock.pci_id.as_deref(), Some("1af4:1053"));
        assert_eq!(vsock.address, "0000:00:04.0");
        assert_eq!(vsock.virtio_name.as_deref(), Some("virtio2"));
    }

    #[test]
    fn vsock_unbound_with_config_saying_why() {
        let f = Fixture::new();
        f.pci(
            "0000:00:02.0",
            0x1042,
            Some(("virtio0", 2, Some("virtio_blk"))),
        );
        f.pci("0000:00:04.0", 0x1053, Some(("virtio1", 19, None)));
        let facts = KernelFacts {
            release: "6.12.0-test".into(),
            config: Some(kernel_config::KernelConfig::parse(
                "CONFIG_VSOCKETS=y\n# CONFIG_VIRTIO_VSOCKETS is not set\n",
            )),
            has_module_tree: false,
            kernel_log: vec!["virtio_blk virtio0: 1/0/0 default/read/poll queues".into()],
            ..Default::default()
        };
        let start = Instant::now();
        let r = census(&Sysfs::new(f.root()), Duration::from_secs(30), &facts);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "must not wait for a driver that does not exist"
        );
        assert!(!r.all_bound());
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        let p = &r.problems[0];
        assert!(
            p.starts_with("socket device 1af4:1053 at 0000:00:04.0 (virtio1)"),
            "{p}"
        );
        assert!(
            p.contains("vmw_vsock_virtio_transport is not registered"),
            "{p}"
        );
        assert!(p.contains("CONFIG_VIRTIO_VSOCKETS"), "{p}");
        assert!(p.contains("/lib/modules/6.12.0-test does not exist"), "{p}");
    }

    #[test]
    fn module_only_kernel_before_loading() {
        // A distro kernel with everything as modules and none loaded: the PCI
        // functions exist but virtio-pci has not created virtio devices.
        let f = Fixture::new();
        f.pci("0000:00:02.0", 0x1001, None);
        f.pci("0000:00:04.0", 0x1053, None);
        let facts = KernelFacts {
            release: "6.12.0-cloud".into(),
            has_module_tree: true,
            ..Default::default()
        };
        let r = quick(&f, &facts);
        assert_eq!(r.devices.len(), 2);
        let kinds: Vec<&str> = r.devices.iter().map(|d| d.kind.name()).collect();
        assert_eq!(
            kinds,
            ["block", "socket"],
            "transitional 0x1001 is block, modern 0x1053 is socket"
        );
        assert!(r
            .devices
            .iter()
            .all(|d| d.virtio_name.is_none() && d.driver.is_none()));
        assert!(
            r.problems
                .iter()
                .all(|p| p.contains("virtio-pci transport driver is not registered")),
            "{:#?}",
            r.problems
        );
        assert!(
            r.problems[1].contains(
                "no module vmw_vsock_virtio_transport found in /lib/modules/6.12.0-cloud"
            ),
            "{}",
            r.problems[1]
        );
        assert!(
            r.problems[1].contains("kernel config unavailable"),
            "{}",
            r.problems[1]
        );
    }

    #[test]
    fn registered_driver_that_did_not_bind_cites_the_kernel_log() {
        let f = Fixture::new();
        f.pci("0000:00:04.0", 0x1053, Some(("virtio3", 19, None)));
        f.register("virtio", "vmw_vsock_virtio_transport");
        let facts = KernelFacts {
            kernel_log: vec![
                "vmw_vsock_virtio_transport virtio3: probe with driver failed with error -12"
                    .into(),
            ],
            ..Default::default()
        };
        let r = quick(&f, &facts);
        assert!(
            r.waited_ms >= 150,
            "a registered driver may still bind: wait for it"
        );
        let p = &r.problems[0];
        assert!(p.contains("is registered but did not bind"), "{p}");
        assert!(
            p.contains("kernel log: vmw_vsock_virtio_transport virtio3: probe with driver failed"),
            "{p}"
        );
    }

    #[test]
    fn empty_or_missing_sysfs_is_not_an_error() {
        let r = census(
            &Sysfs::new("/nonexistent-root"),
            Duration::from_millis(10),
            &KernelFacts::default(),
        );
        assert!(r.devices.is_empty() && r.problems.is_empty());
    }
}
