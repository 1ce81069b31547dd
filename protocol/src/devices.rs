//! The device census the guest sends after Hello (and prints on the console): every
//! virtio device, its kind and transport, and the driver Linux bound to it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a virtio device is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// virtio-pci (QEMU, crosvm on x86 and arm64).
    Pci,
    /// virtio-mmio (platform devices).
    Mmio,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Pci => "pci",
            Transport::Mmio => "mmio",
        })
    }
}

/// The kind of a virtio device, by its virtio device id (the guest maps it from
/// `virtio-drivers`' `DeviceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// virtio-net (id 1).
    Network,
    /// virtio-blk (id 2).
    Block,
    /// virtio-console (id 3).
    Console,
    /// virtio-rng (id 4).
    Entropy,
    /// virtio-balloon (ids 5 and 13).
    Balloon,
    /// virtio-scsi (id 8).
    Scsi,
    /// virtio-9p (id 9).
    #[serde(rename = "9p")]
    NineP,
    /// virtio-gpu (id 16).
    Gpu,
    /// virtio-input (id 18).
    Input,
    /// virtio-vsock (id 19).
    Socket,
    /// virtio-crypto (id 20).
    Crypto,
    /// virtio-iommu (id 23).
    Iommu,
    /// virtio-mem (id 24).
    Memory,
    /// virtio-sound (id 25).
    Sound,
    /// A known id this project has no name for.
    Other,
    /// An id the guest could not read or map.
    Unknown,
}

impl DeviceKind {
    /// Our name for the kind, as in reports (`block`, `socket`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Network => "network",
            DeviceKind::Block => "block",
            DeviceKind::Console => "console",
            DeviceKind::Entropy => "entropy",
            DeviceKind::Balloon => "balloon",
            DeviceKind::Scsi => "scsi",
            DeviceKind::NineP => "9p",
            DeviceKind::Gpu => "gpu",
            DeviceKind::Input => "input",
            DeviceKind::Socket => "socket",
            DeviceKind::Crypto => "crypto",
            DeviceKind::Iommu => "iommu",
            DeviceKind::Memory => "memory",
            DeviceKind::Sound => "sound",
            DeviceKind::Other => "other",
            DeviceKind::Unknown => "unknown",
        }
    }

    /// The Linux driver that binds a device of this kind. There is no driver called
    /// `virtio_vsock`: vsock's is `vmw_vsock_virtio_transport`.
    pub fn linux_driver(self) -> Option<&'static str> {
        Some(match self {
            DeviceKind::Block => "virtio_blk",
            DeviceKind::Socket => "vmw_vsock_virtio_transport",
            DeviceKind::Console => "virtio_console",
            DeviceKind::Entropy => "virtio_rng",
            DeviceKind::Balloon => "virtio_balloon",
            DeviceKind::Network => "virtio_net",
            DeviceKind::Scsi => "virtio_scsi",
            DeviceKind::NineP => "9pnet_virtio",
            DeviceKind::Gpu => "virtio_gpu",
            DeviceKind::Input => "virtio_input",
            DeviceKind::Iommu => "virtio_iommu",
            DeviceKind::Memory => "virtio_mem",
            DeviceKind::Sound => "virtio_snd",
            DeviceKind::Crypto => "virtio_crypto",
            DeviceKind::Other | DeviceKind::Unknown => return None,
        })
    }

    /// The kernel option that provides the driver, for diagnosis.
    pub fn kernel_option(self) -> Option<&'static str> {
        Some(match self {
            DeviceKind::Block => "CONFIG_VIRTIO_BLK",
            DeviceKind::Socket => "CONFIG_VIRTIO_VSOCKETS",
            DeviceKind::Console => "CONFIG_VIRTIO_CONSOLE",
            DeviceKind::Entropy => "CONFIG_HW_RANDOM_VIRTIO",
            DeviceKind::Balloon => "CONFIG_VIRTIO_BALLOON",
            DeviceKind::Network => "CONFIG_VIRTIO_NET",
            _ => return None,
        })
    }

    /// How people call it in messages (`vsock` rather than `socket`).
    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::Socket => "vsock",
            other => other.name(),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One virtio device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDevice {
    /// How it is attached.
    pub transport: Transport,
    /// Where it sits: PCI address (`0000:00:04.0`) or the platform device name.
    pub address: String,
    /// The virtio bus name (`virtio0`), when the transport created one.
    pub virtio_name: Option<String>,
    /// PCI vendor:device (`1af4:1053`), for PCI devices.
    pub pci_id: Option<String>,
    /// Virtio device id (2 = block, 19 = socket, ...).
    pub device_id: u32,
    /// Kind of device.
    pub kind: DeviceKind,
    /// The Linux driver bound to it, if any.
    pub driver: Option<String>,
}

impl VirtioDevice {
    /// The driver Linux uses for this kind (`vmw_vsock_virtio_transport` for socket).
    pub fn expected_driver(&self) -> Option<&'static str> {
        self.kind.linux_driver()
    }

    /// True when the device has a driver (the expected one, if we know it).
    pub fn is_bound(&self) -> bool {
        match (&self.driver, self.expected_driver()) {
            (Some(d), Some(e)) => d == e,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The device census: printed as `SOVEREIGN devices {json}` and sent after Hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Every virtio device found.
    pub devices: Vec<VirtioDevice>,
    /// Virtio drivers the kernel has registered (`/sys/bus/virtio/drivers`).
    pub registered_drivers: Vec<String>,
    /// Kernel modules loaded by the init (empty for a kernel with everything built in).
    pub modules_loaded: Vec<String>,
    /// Required kernel options the running kernel lacks (from /proc/config.gz).
    pub missing_kernel_options: Vec<String>,
    /// Where the kernel configuration was read from, or why it could not be.
    pub kernel_config: String,
    /// How long the init waited for drivers to bind.
    pub waited_ms: u64,
    /// One line per unbound device saying why, as far as the kernel can tell.
    pub problems: Vec<String>,
    /// PID 1's resident memory when the census was taken (VmRSS, KiB), so the init's
    /// own footprint is visible on every boot; `None` when /proc could not tell.
    #[serde(default)]
    pub init_rss_kib: Option<u64>,
}

impl DeviceReport {
    /// Devices of `kind`.
    pub fn of_kind(&self, kind: DeviceKind) -> impl Iterator<Item = &VirtioDevice> + '_ {
        self.devices.iter().filter(move |d| d.kind == kind)
    }

    /// True when every device found has its driver.
    pub fn all_bound(&self) -> bool {
        self.devices.iter().all(VirtioDevice::is_bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_rules() {
        let mut d = VirtioDevice {
            transport: Transport::Pci,
            address: "0000:00:04.0".into(),
            virtio_name: Some("virtio2".into()),
            pci_id: Some("1af4:1053".into()),
            device_id: 19,
            kind: DeviceKind::Socket,
            driver: None,
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap()["kind"],
            serde_json::json!("socket")
        );
        assert!(!d.is_bound());
        d.driver = Some("virtio_vsock".into());
        assert!(
            !d.is_bound(),
            "a wrongly named driver is not the expected one"
        );
        d.driver = Some("vmw_vsock_virtio_transport".into());
        assert!(d.is_bound());
        assert_eq!(
            serde_json::from_value::<DeviceKind>(serde_json::json!("9p")).unwrap(),
            DeviceKind::NineP
        );
        assert_eq!(DeviceKind::Socket.label(), "vsock");
    }
}
