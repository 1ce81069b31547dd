//! The tailnet laboratory shared by the end-to-end test and the demo: a network
//! namespace with a veth to the host, a local headscale on the host end of the veth, a
//! pre-auth key for the VM, and (on request) a second tailnet node inside the namespace.
//! Nothing leaves the namespace but packets for the host end ([`EgressWatch`]).

use crate::egress::EgressWatch;
use crate::headscale::Headscale;
use crate::netns::NetNs;
use crate::tailnode::TailNode;
use crate::vm::VmOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The labs' addresses come from 10.77.0.0/16, one /30 per lab: headscale on `.1` (the
/// host end of the veth), the second node on `.2`.
const SUBNET_PREFIX: &str = "10.77";
/// headscale's port.
pub const HEADSCALE_PORT: u16 = 8080;

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    /// The second node, once joined (dropped before the namespace).
    pub peer: Option<TailNode>,
    /// headscale (dropped before the namespace it listens on).
    pub headscale: Headscale,
    /// What leaves the namespace: only packets for its host end pass.
    pub egress: EgressWatch,
    /// The namespace.
    pub ns: NetNs,
    /// File holding the VM's auth key (0600).
    pub vm_key_file: PathBuf,
    tools: PathBuf,
    /// State of headscale and the peer.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Creates namespace `sov-<tag>`, starts headscale, creates a user and a key.
    pub fn start(tools: &Path, tag: &str) -> Result<Lab, String> {
        let dir = tempfile::Builder::new()
            .prefix("sov-lab-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let name = format!("sov-{tag}");
        // A same-named leftover of an interrupted run goes first, so its /30 is free.
        NetNs::remove(&name);
        let (host_ip, peer_ip) = free_subnet(tag)?;
        let ns = NetNs::create(&name, &host_ip, &peer_ip)?;
        let egress = EgressWatch::start(&ns, crate::tailnode::PORT)?;
        let headscale = Headscale::start(
            &tools.join("headscale"),
            &dir.path().join("headscale"),
            &host_ip,
            HEADSCALE_PORT,
        )?;
        let user = headscale.create_user("sovereign")?;
        let key = headscale.preauth_key(user, "4h")?;
        let vm_key_file = dir.path().join("vm-auth-key");
        std::fs::write(&vm_key_file, &key).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&vm_key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        Ok(Lab {
            peer: None,
            headscale,
            egress,
            ns,
            vm_key_file,
            tools: tools.to_path_buf(),
            dir,
        })
    }

    /// VM options that put the VM on this lab's tailnet.
    pub fn vm_options(&self) -> VmOptions {
        VmOptions {
            login_server: Some(self.headscale.url.clone()),
            auth_key_file: Some(self.vm_key_file.clone()),
            ..VmOptions::default()
        }
    }

    /// Starts the second node in the namespace (once) and returns it.
    pub fn join_peer(&mut self) -> Result<&TailNode, String> {
        if self.peer.is_none() {
            self.peer = Some(self.join_node("peer")?);
        }
        self.peer.as_ref().ok_or_else(|| "peer missing".to_string())
    }

    /// Joins another node under `hostname` (e.g. one that takes the VM's name first);
    /// the caller keeps it, and drops it before the lab.
    pub fn join_node(&self, hostname: &str) -> Result<TailNode, String> {
        let key = std::fs::read_to_string(&self.vm_key_file).map_err(|e| e.to_string())?;
        TailNode::start(
            &self.ns,
            &self.tools,
            &self.dir.path().join(hostname),
            &self.headscale.url,
            key.trim(),
            hostname,
        )
    }
}

/// A /30 under [`SUBNET_PREFIX`] that no interface on the host uses, starting from one
/// derived from `tag`: two labs (or a lab and the leftover of a killed run) on the same
/// /30 would route the peer's replies into the wrong namespace, and its `tailscale up`
/// would time out with nothing saying why.
fn free_subnet(tag: &str) -> Result<(String, String), String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map_err(|e| format!("ip -o -4 addr show: {e}"))?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = tag
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..250u32)
        .map(|i| (start + i) % 250 + 1)
        .map(|third| {
            (
                format!("{SUBNET_PREFIX}.{third}.1"),
                format!("{SUBNET_PREFIX}.{third}.2"),
            )
        })
        .find(|(host, _)| !used.contains(&format!(" {host}/")))
        .ok_or_else(|| format!("no free /30 left under {SUBNET_PREFIX}.0.0/16"))
}
