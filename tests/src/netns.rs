//! Network namespaces the tests create for their tailnet peers: one veth pair, the host
//! end and the namespace end on a private /30, so test traffic never leaves the
//! machine. Removed on drop.

use std::process::Command;

/// A network namespace with a veth link to the host.
#[derive(Debug)]
pub struct NetNs {
    /// Namespace name (also used for the veth names).
    pub name: String,
    /// The host end's address (reachable from inside and from gvproxy's NAT).
    pub host_ip: String,
    /// The namespace end's address.
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates namespace `name` with veth `<name>-h` (host, `host_ip/30`) and `<name>-n`
    /// (inside, `ns_ip/30`), loopback up, default route via the host end. Any leftover
    /// namespace of the same name (an interrupted run) is removed first.
    pub fn create(name: &str, host_ip: &str, ns_ip: &str) -> Result<NetNs, String> {
        NetNs::remove(name);
        let ns = NetNs {
            name: name.into(),
            host_ip: host_ip.into(),
            ns_ip: ns_ip.into(),
        };
        let (h, n) = (format!("{name}-h"), format!("{name}-n"));
        ip(&["netns", "add", name])?;
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &n])?;
        ip(&["link", "set", &n, "netns", name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &h])?;
        ip(&["link", "set", &h, "up"])?;
        ip(&["-n", name, "addr", "add", &format!("{ns_ip}/30"), "dev", &n])?;
        ip(&["-n", name, "link", "set", &n, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&["-n", name, "route", "add", "default", "via", host_ip])?;
        Ok(ns)
    }

    /// Creates namespace `name` with only loopback (up) and no link to the host: for
    /// code that brings its own interfaces (the forwarder's tap0). Any leftover of the
    /// same name is removed first.
    pub fn isolated(name: &str) -> Result<NetNs, String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(NetNs {
            name: name.into(),
            host_ip: String::new(),
            ns_ip: String::new(),
        })
    }

    /// Removes namespace `name` and the host end of its veth, if they exist: the
    /// leftovers of an interrupted run.
    pub fn remove(name: &str) {
        let _ = ip(&["netns", "del", name]);
        let _ = ip(&["link", "del", &format!("{name}-h")]);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The directory whose files `ip netns exec` bind-mounts over /etc (resolv.conf).
    pub fn etc_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        NetNs::remove(&self.name);
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}
