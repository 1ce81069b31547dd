//! Guest networking over vsock, compatible with gvproxy (what upstream `gvforwarder`
//! does, in-process): tap0 configured from the host's network config, frames pumped to
//! gvproxy on host port 1024, and readiness proven by the gateway answering.

pub mod firewall;
pub mod forwarder;
pub mod liveness;
pub mod netlink;
pub mod probe;
pub mod stream;
pub mod tap;

use crate::stages::Reporter;
use forwarder::{Dialer, Forwarder, LinkEvent};
use protocol::config::NetworkConfig;
use protocol::evidence::NetworkEvidence;
use protocol::hyperkit::CONNECT_REQUEST;
use protocol::messages::NetworkCounters;
use protocol::{Stage, StageReport, StageState};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The TAP interface's name.
pub const TAP_NAME: &str = "tap0";

/// How long to wait after `POST /connect` before the first frame: gvproxy hijacks the
/// connection and may drop bytes that arrive together with the request.
pub const HANDSHAKE_PAUSE: Duration = Duration::from_millis(100);

/// How long the liveness watchdog waits for the gateway to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong bringing the network up.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("tap {name}: {op} failed: {source}")]
    Tap {
        /// Interface name.
        name: String,
        /// What was attempted.
        op: &'static str,
        /// The errno.
        source: nix::Error,
    },
    #[error("netlink: {op} on {link} failed: {detail}")]
    Netlink {
        /// What was attempted.
        op: &'static str,
        /// Interface name.
        link: String,
        /// The kernel's answer.
        detail: String,
    },
    #[error("writing /etc/resolv.conf failed: {0}")]
    Resolv(std::io::Error),
    #[error("starting the forwarder failed: {0}")]
    Threads(std::io::Error),
    #[error("gateway {gateway} did not answer a DNS query within {waited:?} (gvproxy link {link}): {last}")]
    GatewaySilent {
        /// The gateway/DNS address.
        gateway: String,
        /// How long we tried.
        waited: Duration,
        /// "up" or "down".
        link: &'static str,
        /// The last resolver error.
        last: String,
    },
}

/// Where gvproxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// AF_VSOCK (the guest's normal case).
    Vsock {
        /// Host CID (2).
        cid: u32,
        /// Port (1024).
        port: u32,
    },
    /// A unix socket (for running the forwarder on a host, in tests and benchmarks).
    Unix(PathBuf),
}

/// Sends gvproxy's `POST /connect` and waits the handshake pause.
fn handshake(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    let mut f = std::fs::File::from(fd);
    f.write_all(CONNECT_REQUEST)?;
    std::thread::sleep(HANDSHAKE_PAUSE);
    Ok(OwnedFd::from(f))
}

/// A dialer for `endpoint`, handshake included.
pub fn dialer(endpoint: Endpoint) -> Dialer {
    Box::new(move || match &endpoint {
        Endpoint::Vsock { cid, port } => {
            handshake(OwnedFd::from(crate::vsock_dial::dial(*cid, *port)?))
        }
        Endpoint::Unix(path) => handshake(OwnedFd::from(std::os::unix::net::UnixStream::connect(
            path,
        )?)),
    })
}

/// Writes /etc/resolv.conf pointing at gvproxy's resolver.
pub fn write_resolv_conf(cfg: &NetworkConfig) -> Result<(), NetError> {
    let path = "/etc/resolv.conf";
    // A dangling symlink (e.g. into /run/systemd) would make the write fail.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(path);
    }
    std::fs::write(
        path,
        format!("nameserver {}\noptions timeout:1 attempts:2\n", cfg.dns),
    )
    .map_err(NetError::Resolv)
}

/// tap0 plus its forwarder.
#[derive(Debug)]
pub struct Network {
    forwarder: Forwarder,
    cfg: NetworkConfig,
}

impl Network {
    /// Creates and configures tap0, writes resolv.conf, starts the forwarder to gvproxy
    /// at vsock host:`port` and its liveness watchdog. Link changes are reported as the
    /// network stage.
    pub fn start(
        cfg: &NetworkConfig,
        port: u32,
        reporter: Arc<Reporter>,
    ) -> Result<Network, NetError> {
        let endpoint = Endpoint::Vsock {
            cid: protocol::ports::HOST_CID,
            port,
        };
        let network = Network::start_with(cfg, TAP_NAME, endpoint, Some(reporter))?;
        write_resolv_conf(cfg)?;
        // The probe resolves through /etc/resolv.conf, which now names gvproxy.
        let watched = network.forwarder.clone();
        let dns = cfg.dns;
        let probe: liveness::Probe = Box::new(move || {
            probe::resolve_via(dns, probe::GATEWAY_NAME, PROBE_TIMEOUT)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        std::thread::Builder::new()
            .name("net-liveness".into())
            .spawn(move || liveness::watch(watched, probe))
            .map_err(NetError::Threads)?;
        Ok(network)
    }

    /// [`Network::start`] with an explicit interface name and endpoint, leaving
    /// /etc/resolv.conf alone (for running on a host, in a network namespace).
    pub fn start_with(
        cfg: &NetworkConfig,
        tap_name: &str,
        endpoint: Endpoint,
        reporter: Option<Arc<Reporter>>,
    ) -> Result<Network, NetError> {
        let tap = tap::open_tap(tap_name)?;
        netlink::configure(&tap.name, cfg)?;
        log::info!(
            "net: {} up: {}/{} via {}, mtu {}, mac {}",
            tap.name,
            cfg.address,
            cfg.prefix_len,
            cfg.gateway,
            cfg.mtu,
            cfg.mac
        );
        let recovered = NetworkEvidence {
            address: format!("{}/{}", cfg.address, cfg.prefix_len),
            gateway: cfg.gateway,
            mtu: cfg.mtu,
            gateway_answered_ms: None,
            recovered: true,
            input_policy: firewall::current(),
        };
        let on_event = Box::new(move |ev: LinkEvent| {
            let Some(r) = reporter.as_ref() else { return };
            match ev {
                LinkEvent::Up { reconnect: true } => {
                    r.report(StageReport::ready(Stage::Network, recovered.clone()));
                }
                LinkEvent::Up { reconnect: false } => {}
                LinkEvent::Down(why) => {
                    if r.state(Stage::Network) == Some(StageState::Ready) {
                        r.report(StageReport::degraded(Stage::Network, why));
                    }
                }
            }
        });
        let forwarder = Forwarder::start(tap.file, cfg.mtu, dialer(endpoint), on_event)
            .map_err(NetError::Threads)?;
        Ok(Network {
            forwarder,
            cfg: cfg.clone(),
        })
    }

    /// Waits until the gateway answers a DNS query (proving tap0, the pump, gvproxy and
    /// its resolver all work); returns how long that took.
    pub fn wait_gateway(&self, timeout: Duration) -> Result<Duration, NetError> {
        let start = Instant::now();
        let mut last = String::from("no attempt");
        while start.elapsed() < timeout {
            if self.forwarder.is_connected() {
                match probe::resolve_via(self.cfg.dns, probe::GATEWAY_NAME, Duration::from_secs(1))
                {
                    Ok(_) => return Ok(start.elapsed()),
                    Err(e) => last = e.to_string(),
                }
            } else {
                last = "not connected to gvproxy".into();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Err(NetError::GatewaySilent {
            gateway: self.cfg.dns.to_string(),
            waited: timeout,
            link: if self.forwarder.is_connected() {
                "up"
            } else {
                "down"
            },
            last,
        })
    }

    /// The forwarder's counters.
    pub fn counters(&self) -> NetworkCounters {
        self.forwarder.counters()
    }
}
