//! The guest's packet policy, loaded with `nft` (Debian's nftables) from a ruleset on
//! its stdin. In: replies to the guest's own connections, tailscaled's WireGuard port,
//! PostgreSQL (and the Prometheus page, and pgBackRest's server for a cluster's peers,
//! when on) on the tailnet interface, and nothing else. Out on tap0: nothing for
//! gvproxy's own subnet but its resolver and the host alias, and no multicast or
//! broadcast. gvproxy answers only DNS itself and sends everything else out of the
//! host as its own traffic, so a port-mapping probe to the gateway (NAT-PMP, udp 5351)
//! or an SSDP search would leave the machine on the host's uplink. tailscaled runs with
//! `--netfilter-mode=off`, so this table is the whole policy. Inbound probes the host
//! asks for (to prove gvproxy's forwarding) open their port only while they listen.

use crate::command::{self, CommandError};
use protocol::config::NetworkConfig;
use protocol::evidence::InputPolicy;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use thiserror::Error;

/// The nftables table this module owns (replaced whole on every load).
pub const TABLE: &str = "sovereign";

/// Why the policy could not be loaded or changed.
#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("loading the input policy with nft: {0}")]
    Nft(#[from] CommandError),
}

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The ports the policy opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// PostgreSQL, on the tailnet interface.
    pub postgres: u16,
    /// tailscaled's WireGuard socket (UDP, any interface: it is how the tailnet
    /// reaches this node at all).
    pub wireguard: u16,
    /// PID 1's Prometheus page, on the tailnet interface, when the spec turns it on.
    pub metrics: Option<u16>,
    /// pgBackRest's TLS server for the cluster's peers, on the tailnet interface, when
    /// this node backs up as one of a cluster's.
    pub backup_server: Option<u16>,
}

/// The ruleset for `ports` on gvproxy's network `net`.
pub fn ruleset(ports: &Ports, net: &NetworkConfig) -> String {
    let metrics = ports
        .metrics
        .map(|p| format!("\t\tiifname \"tailscale0\" tcp dport {p} accept comment \"the Prometheus page on the tailnet\"\n"))
        .unwrap_or_default();
    let backup_server = ports
        .backup_server
        .map(|p| format!("\t\tiifname \"tailscale0\" tcp dport {p} accept comment \"pgBackRest's server for the cluster's peers (mutual TLS)\"\n"))
        .unwrap_or_default();
    format!(
        "# Written by sovereign-init: the guest's whole packet policy.\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tset probe_ports {{ type inet_service; }}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tiifname \"lo\" accept\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \t\tudp dport {wireguard} accept comment \"tailscaled (WireGuard)\"\n\
         \t\tiifname \"tailscale0\" tcp dport {pg} accept comment \"PostgreSQL on the tailnet\"\n\
         {metrics}\
         {backup_server}\
         \t\tiifname \"{tap}\" tcp dport @probe_ports accept comment \"inbound probes the host asked for\"\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{tap}\" ip daddr {dns} meta l4proto {{ tcp, udp }} th dport 53 accept comment \"gvproxy's resolver\"\n\
         \t\toifname \"{tap}\" ip daddr {host} accept comment \"the host, through gvproxy's NAT\"\n\
         \t\toifname \"{tap}\" ip daddr {subnet} drop comment \"nothing else on gvproxy's subnet: gvproxy would send it out of the host\"\n\
         \t\toifname \"{tap}\" ip daddr {{ 224.0.0.0/4, 255.255.255.255 }} drop comment \"no multicast or broadcast (SSDP)\"\n\
         \t\toifname \"{tap}\" meta nfproto ipv6 drop comment \"gvproxy's network is IPv4\"\n\
         \t}}\n\
         }}\n",
        tap = super::TAP_NAME,
        wireguard = ports.wireguard,
        pg = ports.postgres,
        dns = net.dns,
        host = NetworkConfig::HOST_ALIAS,
        subnet = net.subnet(),
    )
}

/// Where the root image keeps `nft`.
pub const NFT: &str = "/usr/sbin/nft";

/// Loads the policy (atomically: nft applies the whole script or nothing). An image
/// without nft (the boot-only test initramfs, which runs neither postgres nor
/// tailscaled) gets none, and says so; the root image build refuses an image without it.
pub fn apply(ports: &Ports, net: &NetworkConfig) -> Result<InputPolicy, FirewallError> {
    if !std::path::Path::new(NFT).exists() {
        log::warn!("{NFT} is not in this image: no input policy");
        return Ok(InputPolicy::Absent);
    }
    let rules = ruleset(ports, net);
    command::run_with_input(Command::new(NFT).args(["-f", "-"]), rules.as_bytes(), &[])?;
    ACTIVE.store(true, Ordering::SeqCst);
    let metrics = ports
        .metrics
        .map(|p| format!(", the metrics page on {p}"))
        .unwrap_or_default();
    log::info!("packet policy loaded: in, tailnet postgres on {}{metrics} and tailscaled on udp {}; out on {}, nothing for {} but the resolver and the host alias", ports.postgres, ports.wireguard, super::TAP_NAME, net.subnet());
    Ok(InputPolicy::Loaded)
}

/// Whether a policy was loaded in this boot.
pub fn current() -> InputPolicy {
    if ACTIVE.load(Ordering::SeqCst) {
        InputPolicy::Loaded
    } else {
        InputPolicy::Absent
    }
}

/// A probe port opened on tap0 for as long as this value lives.
#[derive(Debug)]
pub struct ProbeOpening {
    port: Option<u16>,
}

fn element(verb: &str, port: u16) -> Result<(), FirewallError> {
    let script = format!("{verb} element inet {TABLE} probe_ports {{ {port} }}\n");
    command::run_with_input(Command::new(NFT).args(["-f", "-"]), script.as_bytes(), &[])?;
    Ok(())
}

/// Opens `port` on tap0 while a host-requested inbound probe listens there (nothing to
/// do when no policy is loaded, e.g. in tool mode).
pub fn open_probe_port(port: u16) -> Result<ProbeOpening, FirewallError> {
    if !ACTIVE.load(Ordering::SeqCst) {
        return Ok(ProbeOpening { port: None });
    }
    element("add", port)?;
    Ok(ProbeOpening { port: Some(port) })
}

impl Drop for ProbeOpening {
    fn drop(&mut self) {
        if let Some(port) = self.port {
            if let Err(e) = element("delete", port) {
                log::warn!("closing probe port {port}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Ports = Ports {
        postgres: 5432,
        wireguard: 41641,
        metrics: None,
        backup_server: None,
    };

    #[test]
    fn the_metrics_port_opens_on_the_tailnet_only() {
        let r = ruleset(
            &Ports {
                metrics: Some(9187),
                ..PORTS
            },
            &NetworkConfig::default(),
        );
        assert!(
            r.contains("iifname \"tailscale0\" tcp dport 9187 accept"),
            "{r}"
        );
        assert_eq!(r.matches("9187").count(), 1, "{r}");
        assert!(!ruleset(&PORTS, &NetworkConfig::default()).contains("9187"));
        let cluster = ruleset(
            &Ports {
                backup_server: Some(8432),
                ..PORTS
            },
            &NetworkConfig::default(),
        );
        assert!(
            cluster.contains("iifname \"tailscale0\" tcp dport 8432 accept"),
            "{cluster}"
        );
        assert!(!ruleset(&PORTS, &NetworkConfig::default()).contains("8432"));
    }

    #[test]
    fn the_policy_drops_everything_it_does_not_name() {
        let r = ruleset(&PORTS, &NetworkConfig::default());
        assert!(r.contains("policy drop;"), "{r}");
        let input = &r[r.find("chain input").unwrap()..r.find("chain output").unwrap()];
        let accepts: Vec<&str> = input.lines().filter(|l| l.contains("accept")).collect();
        assert_eq!(accepts.len(), 6, "{accepts:#?}");
        assert!(r.contains("iifname \"tailscale0\" tcp dport 5432 accept"));
        assert!(r.contains("udp dport 41641 accept"));
        assert!(
            !r.contains("iifname \"tap0\" tcp dport 5432"),
            "postgres is never open on the gvproxy side"
        );
        // Loaded as one script: the old table goes with the new one, atomically.
        assert!(r.find("delete table").unwrap() < r.find("policy drop").unwrap());
    }

    #[test]
    fn nothing_leaves_for_gvproxys_subnet_but_the_resolver_and_the_host() {
        let r = ruleset(&PORTS, &NetworkConfig::default());
        let output = &r[r.find("chain output").unwrap()..];
        let rules: Vec<&str> = output
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("oifname"))
            .collect();
        assert_eq!(
            rules,
            [
                "oifname \"tap0\" ip daddr 192.168.127.1 meta l4proto { tcp, udp } th dport 53 accept comment \"gvproxy's resolver\"",
                "oifname \"tap0\" ip daddr 192.168.127.254 accept comment \"the host, through gvproxy's NAT\"",
                "oifname \"tap0\" ip daddr 192.168.127.0/24 drop comment \"nothing else on gvproxy's subnet: gvproxy would send it out of the host\"",
                "oifname \"tap0\" ip daddr { 224.0.0.0/4, 255.255.255.255 } drop comment \"no multicast or broadcast (SSDP)\"",
                "oifname \"tap0\" meta nfproto ipv6 drop comment \"gvproxy's network is IPv4\"",
            ],
            "{output}"
        );
        // The accepts come before the drop of the subnet they are part of.
        assert!(output.find("th dport 53 accept").unwrap() < output.find("/24 drop").unwrap());
    }

    /// Loads the ruleset into a throwaway network namespace when `nft` and root are
    /// available here, proving the script is one nft accepts.
    #[test]
    fn nft_accepts_the_ruleset() {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/sbin/nft").exists() {
            println!("skipped: needs root and /usr/sbin/nft");
            return;
        }
        let out = std::process::Command::new("unshare")
            .args(["--net", "nft", "-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                let mut stdin = c.stdin.take().unwrap();
                // `delete table` of a table that does not exist fails a check: test
                // the table itself.
                let ports = Ports {
                    metrics: Some(9187),
                    ..PORTS
                };
                let r = ruleset(&ports, &NetworkConfig::default());
                let body: String = r
                    .lines()
                    .filter(|l| !l.starts_with("delete") && *l != format!("table inet {TABLE}"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                stdin.write_all(body.as_bytes())?;
                drop(stdin);
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
