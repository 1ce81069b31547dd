//! Messages on the control channel. Each direction is one tagged JSON enum
//! (`{"type": "hello", ...}`); an unknown `type` is a decode error and closes the
//! connection rather than being guessed at.

use crate::config::GuestConfig;
use crate::stage::StageReport;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this message set, carried in [`Hello`]. Bump on incompatible changes.
/// 2: stage evidence is typed ([`crate::evidence::StageDetail`]), device kinds and
/// transports are enums.
pub const PROTOCOL_VERSION: u32 = 2;

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// First message on every connection.
    Hello(Hello),
    /// Which virtio devices exist and which drivers bound (second message).
    DeviceReport(DeviceReport),
    /// A stage changed state.
    Stage(StageReport),
    /// Answer to [`HostMessage::StatusRequest`].
    Status(GuestStatus),
    /// Answer to [`HostMessage::Query`].
    QueryResult(QueryResult),
    /// Answer to [`HostMessage::Probe`].
    ProbeResult(QueryResult),
    /// Answer to [`HostMessage::ReadLog`]: the end of that log.
    LogContents(QueryResult),
    /// Answer to [`HostMessage::Ping`].
    Pong,
    /// Sent every [`crate::control::HEARTBEAT_INTERVAL`]: the guest is alive.
    Heartbeat,
    /// The guest accepted a shutdown request and is stopping its services.
    ShuttingDown {
        /// Why (e.g. "requested by host", "SIGTERM").
        reason: String,
    },
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// The guest's configuration, sent after Hello.
    Config(GuestConfig),
    /// Stop services in order and power off; services get `deadline_secs` in total.
    Shutdown {
        /// Seconds the guest may take before it forces the power-off.
        deadline_secs: u32,
    },
    /// Ask for a [`GuestStatus`].
    StatusRequest,
    /// Run SQL as the `postgres` superuser over the guest's unix socket. Only the
    /// host's root can reach the control channel, and it owns the VM anyway.
    Query {
        /// Echoed in the result.
        id: u64,
        /// The statement(s), run by `psql -c`.
        sql: String,
    },
    /// A network check run from inside the guest (DNS, outbound TCP, inbound TCP), so
    /// the host can prove each direction of the gvproxy path. Answered by
    /// [`GuestMessage::ProbeResult`] with the same `id`.
    Probe {
        /// Echoed in the result.
        id: u64,
        /// What to check.
        probe: Probe,
    },
    /// Send the end of one of the guest's own logs (answered by
    /// [`GuestMessage::LogContents`]). The logs live on the data disk, readable only by
    /// root in the guest; this is how an operator (or a test) reads them from the host.
    ReadLog {
        /// Echoed in the answer.
        id: u64,
        /// Which log.
        log: GuestLog,
    },
    /// Liveness check, answered by [`GuestMessage::Pong`] (measures a round trip).
    Ping,
    /// Sent every [`crate::control::HEARTBEAT_INTERVAL`]: the host is alive.
    Heartbeat,
}

/// The guest logs the host can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestLog {
    /// PostgreSQL's server log (newest file) and its startup output.
    Postgres,
    /// tailscaled's log.
    Tailscaled,
    /// The kernel ring buffer.
    Kernel,
}

/// A network check the guest runs on the host's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// Resolve a name with the guest's resolver (/etc/resolv.conf → gvproxy's DNS).
    Dns {
        /// Host name to resolve.
        name: String,
    },
    /// Connect to `address` (`host:port`), send `send`, return what comes back (up to
    /// 16 KiB) until the peer closes or `timeout_ms` passes.
    Tcp {
        /// Where to connect.
        address: String,
        /// Bytes to send first (may be empty).
        send: String,
        /// Overall deadline.
        timeout_ms: u64,
    },
    /// Listen on the guest's network address at `port`, accept one connection within
    /// `timeout_ms`, answer `reply`, close. Proves the inbound path (gvproxy's expose).
    Serve {
        /// TCP port to listen on.
        port: u16,
        /// What to send to the client.
        reply: String,
        /// How long to wait for the client.
        timeout_ms: u64,
    },
}

/// Who the guest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] the guest speaks.
    pub version: u32,
    /// The guest's own vsock CID, as its kernel reports it.
    pub cid: u32,
    /// `uname -r`.
    pub kernel_release: String,
    /// Milliseconds since the guest kernel booted.
    pub boot_time_ms: u64,
}

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

/// Frame counters of the tap0 ↔ gvproxy forwarder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCounters {
    /// True while the vsock link to gvproxy is up.
    pub connected: bool,
    /// Frames sent from tap0 to gvproxy.
    pub frames_out: u64,
    /// Bytes (Ethernet frames, without length prefix) sent to gvproxy.
    pub bytes_out: u64,
    /// Frames received from gvproxy and written to tap0.
    pub frames_in: u64,
    /// Bytes received from gvproxy.
    pub bytes_in: u64,
    /// Frames dropped (link down, oversize, tap write failures).
    pub drops: u64,
    /// Successful reconnects after the first connection.
    pub reconnects: u64,
}

/// The node's tailnet identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailnetInfo {
    /// MagicDNS name (e.g. `sql-vm.tail.example.`) or the host name.
    pub name: String,
    /// Tailnet addresses (100.x and fd7a:115c:a1e0::/48).
    pub ips: Vec<String>,
}

/// Whether the supervised server process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// The server process runs.
    Ready,
    /// It died and PID 1 is bringing it back.
    #[default]
    Restarting,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerState::Ready => "ready",
            ServerState::Restarting => "restarting",
        })
    }
}

/// PostgreSQL as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresInfo {
    /// Whether the server process runs.
    pub state: ServerState,
    /// Server version string.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
}

/// A supervised guest process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `postgres` or `tailscaled`.
    pub name: String,
    /// Current pid, if running.
    pub pid: Option<u32>,
    /// Times it was restarted after dying.
    pub restarts: u32,
}

/// Answer to a status request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
    /// The latest report of every stage reached.
    pub stages: Vec<StageReportSummary>,
    /// Forwarder counters, once networking started.
    pub network: Option<NetworkCounters>,
    /// Tailnet identity, once joined.
    pub tailnet: Option<TailnetInfo>,
    /// PostgreSQL, once started.
    pub postgres: Option<PostgresInfo>,
    /// Supervised services.
    pub services: Vec<ServiceStatus>,
}

/// A stage's latest state, without the bulky detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReportSummary {
    /// Stage name.
    pub stage: crate::Stage,
    /// Its state.
    pub state: crate::StageState,
}

/// Result of a [`HostMessage::Query`] or [`HostMessage::Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The request's id.
    pub id: u64,
    /// True when the query or probe succeeded.
    pub ok: bool,
    /// psql's output (unaligned, tuples only), the probe's result, or the error text.
    pub output: String,
    /// True when `output` was cut: the guest caps what it reads and what fits in one
    /// control frame.
    #[serde(default)]
    pub truncated: bool,
}

impl QueryResult {
    /// Cuts `output` (at a character boundary, keeping its start) until the result,
    /// wrapped as `wrap` makes it, encodes within one control frame; marks it truncated
    /// when anything was cut. JSON escaping can make a text up to six times longer, so
    /// the cut is measured on the encoded frame, not guessed.
    pub fn fit_to_frame(mut self, wrap: fn(QueryResult) -> GuestMessage) -> GuestMessage {
        loop {
            let msg = wrap(self.clone());
            if crate::control::encode_frame(&msg).is_ok() {
                return msg;
            }
            let mut cut = self.output.len() / 2;
            while cut > 0 && !self.output.is_char_boundary(cut) {
                cut -= 1;
            }
            self.output.truncate(cut);
            self.truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_json_shape() {
        let v = serde_json::to_value(HostMessage::Shutdown { deadline_secs: 30 }).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "shutdown", "deadline_secs": 30})
        );
        let v = serde_json::to_value(GuestMessage::Pong).unwrap();
        assert_eq!(v, serde_json::json!({"type": "pong"}));
    }

    #[test]
    fn oversize_results_are_cut_to_fit_one_frame() {
        let big = QueryResult {
            id: 7,
            ok: true,
            output: "\u{1}".repeat(200 * 1024),
            truncated: false,
        };
        let msg = big.fit_to_frame(GuestMessage::QueryResult);
        let frame = crate::control::encode_frame(&msg).unwrap();
        assert!(frame.len() <= crate::control::MAX_CONTROL_FRAME + 4);
        let GuestMessage::QueryResult(r) = msg else {
            panic!("{msg:?}")
        };
        assert!(r.truncated && r.id == 7 && !r.output.is_empty());
        let small = QueryResult {
            id: 1,
            ok: true,
            output: "é1".into(),
            truncated: false,
        };
        assert_eq!(
            small.clone().fit_to_frame(GuestMessage::LogContents),
            GuestMessage::LogContents(small)
        );
    }

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
