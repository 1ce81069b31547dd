//! tailscaled in the guest: state on /data (the node keeps its identity across
//! reboots), socket under /run, a kernel TUN; `tailscale up` with the auth key from a
//! 0600 file that is removed right after, and `--login-server` when one is configured.

use crate::command::{self, CommandError};
use crate::lifecycle::service::{CommandFactory, Service};
use nix::sys::signal::Signal;
use protocol::config::TailscaleConfig;
use protocol::messages::TailnetInfo;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use thiserror::Error;

const TAILSCALED: &str = "/usr/local/bin/tailscaled";
const TAILSCALE: &str = "/usr/local/bin/tailscale";
const STATE_DIR: &str = "/data/tailscale";
const SOCKET: &str = "/run/tailscale/tailscaled.sock";
const AUTH_KEY_FILE: &str = "/run/tailscale/auth-key";
/// tailscaled's output, on the data disk.
pub const LOG: &str = "/data/tailscale/tailscaled.log";
/// tailscaled's UDP port.
pub const TAILSCALE_PORT: u16 = protocol::ports::TAILSCALE_WIREGUARD;

/// What can keep the node off the tailnet.
#[derive(Debug, Error)]
pub enum TailscaleError {
    #[error("{0} is missing from the root image")]
    Missing(&'static str),
    #[error("preparing {path}: {source}")]
    Prepare {
        /// What was being prepared.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    #[error("tailscaled did not come up within {0:?}")]
    DaemonSilent(Duration),
    #[error("the node is not logged in and no auth key was configured (set one in the VM spec or SOVEREIGN_TS_AUTHKEY)")]
    NeedsAuthKey,
    #[error("tailscale up failed: {0}")]
    Up(CommandError),
    #[error("the tailnet named this node {got:?}, not {want:?}: another node holds {want:?} (a stale registration, e.g. of a lost data disk); remove it from the tailnet (headscale: `headscale nodes delete`; Tailscale: the admin console's Machines page) and start again")]
    NameTaken {
        /// The name the tailnet gave (first label of the MagicDNS name).
        got: String,
        /// The spec's hostname.
        want: String,
    },
    #[error("not on the tailnet after {waited:?}: backend state {state}")]
    NotJoined {
        /// How long we waited.
        waited: Duration,
        /// tailscaled's last BackendState.
        state: String,
    },
}

/// The running tailscaled and how to query it.
#[derive(Debug)]
pub struct Tailscale {
    service: Service,
}

/// The fields of `tailscale status --json` we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `Running`, `NeedsLogin`, `Stopped`, `Starting`, ...
    pub backend_state: String,
    /// MagicDNS name, without the trailing dot.
    pub dns_name: String,
    /// Tailnet addresses.
    pub ips: Vec<String>,
}

/// Parses `tailscale status --json` output.
pub fn parse_status(json: &str) -> Option<Status> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let me = &v["Self"];
    Some(Status {
        backend_state: v["BackendState"].as_str().unwrap_or("").to_string(),
        dns_name: me["DNSName"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('.')
            .to_string(),
        ips: me["TailscaleIPs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn cli() -> Command {
    let mut c = Command::new(TAILSCALE);
    c.arg(format!("--socket={SOCKET}"));
    c
}

fn status() -> Option<Status> {
    let out = command::output(cli().args(["status", "--json"])).ok()?;
    parse_status(&out.stdout)
}

/// The tailnet IPv4 address of the node called `name` (MagicDNS or short host name),
/// as tailscaled knows it; `None` when it knows no such node.
pub fn peer_ipv4(name: &str) -> Option<std::net::Ipv4Addr> {
    let out = command::output(cli().args(["ip", "-4", name])).ok()?;
    if !out.exit.success() {
        return None;
    }
    out.stdout.lines().find_map(|l| l.trim().parse().ok())
}

fn prepare(path: &str, mode: u32) -> Result<(), TailscaleError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| TailscaleError::Prepare {
            path: path.into(),
            source,
        })
}

impl Tailscale {
    /// Starts tailscaled under supervision. Joining is [`Tailscale::join`], so a failed
    /// join still leaves the daemon owned by the caller (and stopped at shutdown).
    pub fn start(cfg: &TailscaleConfig) -> Result<Tailscale, TailscaleError> {
        for bin in [TAILSCALED, TAILSCALE] {
            if !Path::new(bin).exists() {
                return Err(TailscaleError::Missing(bin));
            }
        }
        prepare(STATE_DIR, 0o700)?;
        prepare("/run/tailscale", 0o755)?;
        // DERP runs over plain HTTP only when the control server itself is plain HTTP
        // (a local headscale); a real tailnet uses TLS for both.
        let plain_http = cfg
            .login_server
            .as_deref()
            .is_some_and(|u| u.starts_with("http://"));
        let make: CommandFactory = Box::new(move || {
            let mut c = Command::new(TAILSCALED);
            c.args([
                format!("--state={STATE_DIR}/tailscaled.state"),
                format!("--statedir={STATE_DIR}"),
                format!("--socket={SOCKET}"),
                format!("--port={TAILSCALE_PORT}"),
                "--tun=tailscale0".to_string(),
                // No log uploads to Tailscale's servers from a private database VM.
                "--no-logs-no-support".to_string(),
            ])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", STATE_DIR)
            // No port mapping: the only "router" is gvproxy, which maps nothing and
            // sends a NAT-PMP, PCP or SSDP probe out of the host as its own traffic.
            // The packet policy drops them too (net::firewall); this way none is made.
            .env("TS_DISABLE_PORTMAPPER", "1")
            .stdout(std::process::Stdio::null());
            if let Ok(log) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(LOG)
            {
                c.stderr(log);
            }
            if plain_http {
                c.env("TS_DEBUG_USE_DERP_HTTP", "1");
            }
            c
        });
        let service = Service::start("tailscaled", Signal::SIGTERM, make);
        Ok(Tailscale { service })
    }

    /// Waits for tailscaled, runs `tailscale up` when the node needs it, and waits until
    /// it has its tailnet addresses.
    pub fn join(
        &self,
        cfg: &TailscaleConfig,
        hostname: &str,
        timeout: Duration,
    ) -> Result<TailnetInfo, TailscaleError> {
        let start = Instant::now();
        let state = loop {
            if let Some(s) = status() {
                if !s.backend_state.is_empty() && s.backend_state != "NoState" {
                    break s;
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(TailscaleError::DaemonSilent(Duration::from_secs(30)));
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        log::info!("tailscaled is up: backend state {}", state.backend_state);
        if state.backend_state != "Running" {
            self.up(cfg, hostname, state.backend_state == "NeedsLogin")?;
        }
        let joined = self.wait_joined(timeout.saturating_sub(start.elapsed()))?;
        check_name(&joined.name, hostname)?;
        Ok(joined)
    }

    fn up(
        &self,
        cfg: &TailscaleConfig,
        hostname: &str,
        needs_login: bool,
    ) -> Result<(), TailscaleError> {
        let mut cmd = cli();
        cmd.args([
            "up",
            "--reset",
            &format!("--hostname={hostname}"),
            "--accept-dns=false",
            "--netfilter-mode=off",
            "--timeout=120s",
        ]);
        if let Some(server) = &cfg.login_server {
            cmd.arg(format!("--login-server={server}"));
        }
        let key_written = match (&cfg.auth_key, needs_login) {
            (Some(key), _) => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(AUTH_KEY_FILE)
                    .map_err(|source| TailscaleError::Prepare {
                        path: AUTH_KEY_FILE.into(),
                        source,
                    })?;
                std::io::Write::write_all(&mut f, key.expose().as_bytes()).map_err(|source| {
                    TailscaleError::Prepare {
                        path: AUTH_KEY_FILE.into(),
                        source,
                    }
                })?;
                cmd.arg(format!("--auth-key=file:{AUTH_KEY_FILE}"));
                true
            }
            (None, true) => return Err(TailscaleError::NeedsAuthKey),
            (None, false) => false,
        };
        log::info!(
            "running tailscale up (hostname {hostname}, login server {:?})",
            cfg.login_server
        );
        let result = command::run(&mut cmd, &[]);
        if key_written {
            let _ = std::fs::remove_file(AUTH_KEY_FILE);
        }
        result.map(drop).map_err(TailscaleError::Up)
    }

    /// Waits until the node runs and has its tailnet addresses.
    fn wait_joined(&self, timeout: Duration) -> Result<TailnetInfo, TailscaleError> {
        let start = Instant::now();
        let mut last = String::from("unknown");
        while start.elapsed() < timeout {
            if let Some(s) = status() {
                if s.backend_state == "Running" && !s.ips.is_empty() {
                    return Ok(TailnetInfo {
                        name: s.dns_name,
                        ips: s.ips,
                    });
                }
                last = s.backend_state;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(TailscaleError::NotJoined {
            waited: timeout,
            state: last,
        })
    }

    /// The node's tailnet identity now, if it has one.
    pub fn current(&self) -> Option<TailnetInfo> {
        let s = status()?;
        (s.backend_state == "Running" && !s.ips.is_empty()).then_some(TailnetInfo {
            name: s.dns_name,
            ips: s.ips,
        })
    }

    /// Stops tailscaled (SIGTERM, then SIGKILL when the budget's grace is spent).
    pub fn stop(&self, budget: crate::lifecycle::stop::StopBudget) {
        self.service.stop(budget);
    }

    /// The supervised process, for status.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

/// The tailnet must call the node by the spec's hostname: clients connect to that name,
/// and a stale registration makes the tailnet hand out `name-1` instead, silently.
/// An empty MagicDNS name (MagicDNS off) is not checked.
fn check_name(dns_name: &str, hostname: &str) -> Result<(), TailscaleError> {
    let got = dns_name.split('.').next().unwrap_or_default();
    if got.is_empty() || got.eq_ignore_ascii_case(hostname) {
        return Ok(());
    }
    Err(TailscaleError::NameTaken {
        got: got.to_string(),
        want: hostname.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tailnet_name_must_be_the_spec_hostname() {
        check_name("sql-vm.tail.example.", "sql-vm").unwrap();
        check_name("SQL-VM.tail.example.", "sql-vm").unwrap();
        check_name("", "sql-vm").unwrap();
        let e = check_name("sql-vm-1.tail.example.", "sql-vm").unwrap_err();
        assert!(
            e.to_string().contains("\"sql-vm-1\", not \"sql-vm\""),
            "{e}"
        );
        assert!(e.to_string().contains("headscale nodes delete"), "{e}");
    }

    #[test]
    fn parses_status_json() {
        let json = r#"{"BackendState":"Running","Self":{"DNSName":"sql-vm.tail.example.","TailscaleIPs":["100.64.0.2","fd7a:115c:a1e0::2"]}}"#;
        let s = parse_status(json).unwrap();
        assert_eq!(s.backend_state, "Running");
        assert_eq!(s.dns_name, "sql-vm.tail.example");
        assert_eq!(s.ips, vec!["100.64.0.2", "fd7a:115c:a1e0::2"]);
        assert_eq!(
            parse_status(r#"{"BackendState":"NeedsLogin","Self":null}"#)
                .unwrap()
                .ips,
            Vec::<String>::new()
        );
        assert!(parse_status("not json").is_none());
    }
}
