//! The second tailnet node: tailscaled inside a network namespace the test created,
//! with its own TUN, socket, state and port, logged in to the local headscale. From
//! here the tests (and the demo's user) reach the VM exactly as another machine on the
//! tailnet would: by the name `sql-vm`, through Tailscale.

use crate::netns::NetNs;
use crate::process::{run, text, wait_for, Daemon};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The UDP port a lab node's tailscaled sends and listens on.
pub const PORT: u16 = 41642;

/// A tailscaled + CLI pair in a namespace.
#[derive(Debug)]
pub struct TailNode {
    ns_name: String,
    socket: PathBuf,
    tailscale: PathBuf,
    _daemon: Daemon,
}

impl TailNode {
    /// Starts tailscaled in `ns` and logs in to `login_server` with `auth_key`. The
    /// namespace's resolv.conf points at Tailscale's MagicDNS resolver (100.100.100.100)
    /// so `sql-vm` resolves by name; tailscaled itself leaves DNS and netfilter alone.
    pub fn start(
        ns: &NetNs,
        tools: &Path,
        dir: &Path,
        login_server: &str,
        auth_key: &str,
        hostname: &str,
    ) -> Result<TailNode, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(ns.etc_dir()).map_err(|e| e.to_string())?;
        std::fs::write(
            ns.etc_dir().join("resolv.conf"),
            format!(
                "nameserver 100.100.100.100\nsearch {}\n",
                crate::headscale::BASE_DOMAIN
            ),
        )
        .map_err(|e| e.to_string())?;
        let socket = dir.join("tailscaled.sock");
        let mut cmd = ns.command(&tools.join("tailscaled").display().to_string());
        cmd.arg(format!(
            "--state={}",
            dir.join("tailscaled.state").display()
        ))
        .arg(format!("--statedir={}", dir.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--port={PORT}"))
        .args(["--tun=ts-peer", "--no-logs-no-support"])
        .env("TS_DEBUG_USE_DERP_HTTP", "1")
        // No port-mapping probes (NAT-PMP, PCP, SSDP) from the lab's node either: they
        // would go to the host, its gateway, and multicast is nobody's here.
        .env("TS_DISABLE_PORTMAPPER", "1");
        let daemon = Daemon::spawn("tailscaled (peer)", &mut cmd, &dir.join("tailscaled.log"));
        let node = TailNode {
            ns_name: ns.name.clone(),
            socket,
            tailscale: tools.join("tailscale"),
            _daemon: daemon,
        };
        wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
            node.socket.exists().then_some(())
        })
        .ok_or("the peer's tailscaled did not create its socket")?;
        let key_file = dir.join("auth-key");
        std::fs::write(&key_file, auth_key).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let up_args = [
            "up".to_string(),
            format!("--login-server={login_server}"),
            format!("--auth-key=file:{}", key_file.display()),
            format!("--hostname={hostname}"),
            "--accept-dns=false".to_string(),
            "--netfilter-mode=off".to_string(),
            "--timeout=120s".to_string(),
        ];
        let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
        let mut up = node.cli(&up_args);
        if !up.status.success() {
            // The second node is the test's instrument, not the system under test: one
            // more try, with what the first one saw on record.
            eprintln!(
                "tailscale up (peer) failed once; trying again. {}\n--- tailscaled.log ---\n{}\n--- status ---\n{}",
                text(&up),
                log_tail(&dir.join("tailscaled.log"), 40),
                node.status_text()
            );
            up = node.cli(&up_args);
        }
        let _ = std::fs::remove_file(&key_file);
        if !up.status.success() {
            return Err(format!(
                "tailscale up (peer): {}\n--- the peer's tailscaled.log, last lines ---\n{}\n--- tailscale status ---\n{}",
                text(&up),
                log_tail(&dir.join("tailscaled.log"), 40),
                node.status_text()
            ));
        }
        Ok(node)
    }

    /// Runs the tailscale CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns_name])
            .arg(&self.tailscale)
            .arg(format!("--socket={}", self.socket.display()))
            .args(args))
    }

    /// `tailscale status` as text.
    pub fn status_text(&self) -> String {
        text(&self.cli(&["status"]))
    }

    /// The tailnet IPv4 of peer `name`, resolved by tailscale (`tailscale ip -4 NAME`).
    pub fn ip_of(&self, name: &str) -> Option<String> {
        let o = self.cli(&["ip", "-4", name]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The namespace the node lives in.
    pub fn ns_name(&self) -> &str {
        &self.ns_name
    }

    /// A command run inside the node's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_name, program]);
        c
    }

    /// psql in the node's namespace logged in as `login`, with `sql` written to its
    /// stdin (unaligned, tuples only, quiet, stopping at the first error; each
    /// statement commits on its own). Stdin stays open, so a caller can hold the
    /// session; `wait_with_output` closes it and collects the result.
    pub fn psql_script(&self, login: &Login, sql: &str) -> Child {
        let mut child = self
            .command("psql")
            .args([
                login.conninfo.as_str(),
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                "-",
            ])
            .envs(login.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql in the peer's namespace");
        child
            .stdin
            .as_mut()
            .expect("psql's stdin is piped")
            .write_all(sql.as_bytes())
            .expect("the script reaches psql");
        child
    }

    /// [`TailNode::psql_script`] to its end: what psql printed (trimmed), or its exit
    /// status and error output.
    pub fn psql(&self, login: &Login, sql: &str) -> Result<String, String> {
        let o = self
            .psql_script(login, sql)
            .wait_with_output()
            .expect("psql runs");
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(text(&o))
        }
    }
}

/// Whom psql logs in as and where: a libpq connection string and the variables libpq
/// reads a password from.
#[derive(Debug, Clone)]
pub struct Login {
    conninfo: String,
    env: Vec<(&'static str, OsString)>,
}

impl Login {
    /// `who` (`user=... dbname=...`) at `sql-vm`, reached by name over the tailnet.
    pub fn sql_vm(who: &str) -> Login {
        Login::conninfo(&format!("host=sql-vm port=5432 {who} connect_timeout=15"))
    }

    /// The superuser at `sql-vm` with its password.
    pub fn superuser(password: &str) -> Login {
        Login::sql_vm("user=postgres dbname=postgres").password(password)
    }

    /// Any connection string (a URI or key/value pairs), with what it carries.
    pub fn conninfo(conninfo: &str) -> Login {
        Login {
            conninfo: conninfo.to_string(),
            env: Vec::new(),
        }
    }

    /// With `password` (`PGPASSWORD`).
    pub fn password(mut self, password: &str) -> Login {
        self.env.push(("PGPASSWORD", password.into()));
        self
    }

    /// With the password file at `path` (`PGPASSFILE`).
    pub fn passfile(mut self, path: &Path) -> Login {
        self.env.push(("PGPASSFILE", path.into()));
        self
    }
}

/// The last `lines` lines of a log file, or a note that it could not be read: what a
/// failed join prints so that the next failure says why.
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let all: Vec<&str> = t.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
