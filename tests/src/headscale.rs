//! A local headscale: the embedded default tailnet for people without a Tailscale
//! account, and the control server of every test that puts the VM on a tailnet. It runs
//! with its embedded DERP server over plain HTTP on a veth address both the host and
//! gvproxy's NAT can reach (never 127.0.0.1: the VM would dial itself).

use crate::process::{run, text, wait_for, Daemon};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// MagicDNS suffix of the local tailnet.
pub const BASE_DOMAIN: &str = "sovereign.internal";

/// A running headscale.
#[derive(Debug)]
pub struct Headscale {
    /// `http://<ip>:<port>`, the login server for nodes.
    pub url: String,
    config: PathBuf,
    binary: PathBuf,
    _daemon: Daemon,
}

fn config_yaml(dir: &Path, ip: &str, port: u16) -> String {
    let d = dir.display();
    format!(
        "server_url: http://{ip}:{port}\n\
         listen_addr: {ip}:{port}\n\
         metrics_listen_addr: 127.0.0.1:0\n\
         grpc_listen_addr: 127.0.0.1:0\n\
         grpc_allow_insecure: false\n\
         noise:\n  private_key_path: {d}/noise_private.key\n\
         prefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\n  allocation: sequential\n\
         derp:\n  server:\n    enabled: true\n    region_id: 999\n    region_code: sovereign\n    region_name: Sovereign local DERP\n\
         \x20   verify_clients: true\n    stun_listen_addr: {ip}:3478\n    private_key_path: {d}/derp_server_private.key\n\
         \x20   automatically_add_embedded_derp_region: true\n    ipv4: {ip}\n\
         \x20 urls: []\n  paths: []\n  auto_update_enabled: false\n  update_frequency: 24h\n\
         disable_check_updates: true\n\
         database:\n  type: sqlite\n  sqlite:\n    path: {d}/db.sqlite\n    write_ahead_log: true\n\
         log:\n  level: info\n  format: text\n\
         policy:\n  mode: file\n  path: \"\"\n\
         dns:\n  magic_dns: true\n  base_domain: {BASE_DOMAIN}\n  override_local_dns: false\n  nameservers:\n    global: []\n\
         unix_socket: {d}/headscale.sock\n\
         unix_socket_permission: \"0770\"\n\
         logtail:\n  enabled: false\n\
         taildrop:\n  enabled: false\n"
    )
}

impl Headscale {
    /// Starts headscale on `ip:port` with its state in `dir`, and waits until it answers.
    pub fn start(binary: &Path, dir: &Path, ip: &str, port: u16) -> Result<Headscale, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = dir.join("config.yaml");
        std::fs::write(&config, config_yaml(dir, ip, port)).map_err(|e| e.to_string())?;
        let daemon = Daemon::spawn(
            "headscale",
            Command::new(binary).arg("serve").arg("-c").arg(&config),
            &dir.join("headscale.log"),
        );
        let hs = Headscale {
            url: format!("http://{ip}:{port}"),
            config,
            binary: binary.to_path_buf(),
            _daemon: daemon,
        };
        let healthy = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
            run(Command::new(&hs.binary)
                .args(["health", "-c"])
                .arg(&hs.config))
            .status
            .success()
            .then_some(())
        });
        match healthy {
            Some(()) => Ok(hs),
            None => Err(format!(
                "headscale did not become healthy: {}",
                std::fs::read_to_string(dir.join("headscale.log")).unwrap_or_default()
            )),
        }
    }

    fn cli(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let o = run(Command::new(&self.binary)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .args(["-o", "json"]));
        if !o.status.success() {
            return Err(format!("headscale {}: {}", args.join(" "), text(&o)));
        }
        serde_json::from_slice(&o.stdout)
            .map_err(|e| format!("headscale {}: not JSON ({e}): {}", args.join(" "), text(&o)))
    }

    /// Creates a user and returns its id.
    pub fn create_user(&self, name: &str) -> Result<u64, String> {
        let v = self.cli(&["users", "create", name])?;
        v["id"]
            .as_u64()
            .or_else(|| v["id"].as_str()?.parse().ok())
            .ok_or_else(|| format!("no user id in {v}"))
    }

    /// A reusable pre-auth key for `user`, valid for `expiration` (e.g. "2h").
    pub fn preauth_key(&self, user: u64, expiration: &str) -> Result<String, String> {
        let v = self.cli(&[
            "preauthkeys",
            "create",
            "--user",
            &user.to_string(),
            "--reusable",
            "--expiration",
            expiration,
        ])?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no key in {v}"))
    }

    /// Removes the node called `name` (what a user does for a phone that is lost, so
    /// its replacement can take the name). Errors when no node has that name.
    pub fn delete_node(&self, name: &str) -> Result<(), String> {
        let v = self.cli(&["nodes", "list"])?;
        let id = v
            .as_array()
            .and_then(|a| {
                a.iter().find(|n| {
                    n["given_name"].as_str() == Some(name) || n["name"].as_str() == Some(name)
                })
            })
            .and_then(|n| n["id"].as_u64().or_else(|| n["id"].as_str()?.parse().ok()))
            .ok_or_else(|| format!("headscale has no node {name:?}: {v}"))?;
        self.cli(&[
            "nodes",
            "delete",
            "--identifier",
            &id.to_string(),
            "--force",
        ])
        .map(|_| ())
    }

    /// Node names headscale knows.
    pub fn node_names(&self) -> Result<Vec<String>, String> {
        let v = self.cli(&["nodes", "list"])?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        n["given_name"]
                            .as_str()
                            .or(n["name"].as_str())
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}
