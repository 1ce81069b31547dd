//! What leaves a lab: an nftables table inside the lab's network namespace that counts,
//! and drops, every packet leaving the namespace for anywhere but the lab's host end
//! (headscale, its DERP and STUN). Every lab has one, so neither a test nor the demo
//! sends anything off the machine from there. Run the VM's supervisor in that
//! namespace too and every packet gvproxy sends for the guest passes here, so a leak is
//! seen (and stopped) before it could reach the host's uplink. Nothing is sent to prove
//! it: the watch only counts what the guest and the lab's own node send by themselves.
//!
//! One kind of packet is dropped without counting as a leak: the lab's tailnet node
//! trying the VM's address on gvproxy's network (192.168.127.2), which tailscaled in the
//! VM announces among its endpoints and which exists only inside the VM.

use crate::netns::NetNs;
use crate::process::{run, text};
use std::process::Command;

/// The table's name inside the namespace.
const TABLE: &str = "sov_egress_watch";

/// A running watch; the table goes with the namespace.
#[derive(Debug)]
pub struct EgressWatch {
    ns: String,
    allowed: String,
}

/// gvproxy's network, where the VM's own address lives.
const GVPROXY_SUBNET: &str = "192.168.127.0/24";

/// What the watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressReport {
    /// Packets to the allowed address (proof the watch is on the path).
    pub allowed_packets: u64,
    /// The lab's node trying the VM's gvproxy-side address (dropped, not a leak).
    pub node_to_vm_lan: u64,
    /// Packets anywhere else (each was dropped).
    pub leaked_packets: u64,
    /// Where the leaked TCP and UDP packets went: `address . protocol . port` as nft
    /// lists them.
    pub leaked_to: Vec<String>,
}

fn nft(ns: &str, script: Option<&str>, args: &[&str]) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft"]).args(args);
    let o = match script {
        None => run(&mut cmd),
        Some(s) => {
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("nft: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(s.as_bytes())
                    .map_err(|e| format!("nft: {e}"))?;
            }
            child.wait_with_output().map_err(|e| format!("nft: {e}"))?
        }
    };
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("nft {}: {}", args.join(" "), text(&o)))
    }
}

/// The ruleset: packets out of `dev` to `allowed` are counted and pass; the lab node's
/// (from `node_port`) to gvproxy's network are counted apart and dropped; any other
/// IPv4 destination, and any IPv6 one beyond the link, is counted, recorded and dropped.
fn ruleset(dev: &str, allowed: &str, node_port: u16) -> String {
    format!(
        "table inet {TABLE} {{\n\
         \tset leaked {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; }}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{dev}\" ip daddr {allowed} counter accept comment \"allowed\"\n\
         \t\toifname \"{dev}\" udp sport {node_port} ip daddr {GVPROXY_SUBNET} counter drop comment \"node to vm lan\"\n\
         \t\toifname \"{dev}\" meta l4proto {{ tcp, udp }} add @leaked {{ ip daddr . meta l4proto . th dport }} counter drop comment \"leaked\"\n\
         \t\toifname \"{dev}\" meta nfproto ipv4 counter drop comment \"leaked\"\n\
         \t\toifname \"{dev}\" ip6 daddr != {{ fe80::/10, ff02::/16 }} counter drop comment \"leaked\"\n\
         \t}}\n\
         }}\n"
    )
}

/// Sums the `counter packets N` of the rules whose comment is `comment`.
fn packets(listing: &str, comment: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains(&format!("comment \"{comment}\"")))
        .filter_map(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// The elements of the `leaked` set in `nft list set` output.
fn elements(listing: &str) -> Vec<String> {
    let Some(start) = listing.find("elements = {") else {
        return Vec::new();
    };
    let body = &listing[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}

impl EgressWatch {
    /// Starts watching what leaves `ns` by its veth for anywhere but the host end; the
    /// lab's tailnet node sends from `node_port`.
    pub fn start(ns: &NetNs, node_port: u16) -> Result<EgressWatch, String> {
        let dev = format!("{}-n", ns.name);
        nft(
            &ns.name,
            Some(&ruleset(&dev, &ns.host_ip, node_port)),
            &["-f", "-"],
        )?;
        Ok(EgressWatch {
            ns: ns.name.clone(),
            allowed: ns.host_ip.clone(),
        })
    }

    /// What was counted so far.
    pub fn report(&self) -> Result<EgressReport, String> {
        let chain = nft(&self.ns, None, &["list", "chain", "inet", TABLE, "output"])?;
        let set = nft(&self.ns, None, &["list", "set", "inet", TABLE, "leaked"])?;
        Ok(EgressReport {
            allowed_packets: packets(&chain, "allowed"),
            node_to_vm_lan: packets(&chain, "node to vm lan"),
            leaked_packets: packets(&chain, "leaked"),
            leaked_to: elements(&set),
        })
    }

    /// The address packets may go to.
    pub fn allowed(&self) -> &str {
        &self.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_and_elements_from_nft_listings() {
        let chain = "table inet sov_egress_watch {\n\tchain output {\n\
            \t\toifname \"sov-e2e-n\" ip daddr 10.77.3.1 counter packets 812 bytes 90211 accept comment \"allowed\"\n\
            \t\toifname \"sov-e2e-n\" meta l4proto { tcp, udp } add @leaked { ip daddr . meta l4proto . th dport } counter packets 20 bytes 1100 drop comment \"leaked\"\n\
            \t\toifname \"sov-e2e-n\" udp sport 41642 ip daddr 192.168.127.0/24 counter packets 4 bytes 400 drop comment \"node to vm lan\"\n\
            \t\toifname \"sov-e2e-n\" meta nfproto ipv4 counter packets 1 bytes 84 drop comment \"leaked\"\n\
            \t}\n}\n";
        assert_eq!(packets(chain, "allowed"), 812);
        assert_eq!(packets(chain, "leaked"), 21);
        assert_eq!(packets(chain, "node to vm lan"), 4);
        let set = "table inet sov_egress_watch {\n\tset leaked {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\
            \t\tsize 65535\n\t\tflags dynamic\n\
            \t\telements = { 192.168.127.1 . udp . 5351,\n\t\t\t     239.255.255.250 . udp . 1900 }\n\t}\n}\n";
        assert_eq!(
            elements(set),
            ["192.168.127.1 . udp . 5351", "239.255.255.250 . udp . 1900"]
        );
        assert!(elements("table inet x { set leaked { flags dynamic } }").is_empty());
    }

    /// The ruleset is one nft accepts (root and nft only; a check, nothing loaded).
    #[test]
    fn nft_accepts_the_ruleset() {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/sbin/nft").exists() {
            println!("skipped: needs root and /usr/sbin/nft");
            return;
        }
        use std::io::Write;
        let mut child = Command::new("unshare")
            .args(["--net", "nft", "-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset("veth0", "10.77.3.1", 41642).as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
