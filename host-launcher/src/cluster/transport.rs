//! How `sovereign cluster` reaches a node's host: this host, a phone over `adb -s
//! SERIAL` with `su`, or another machine over `ssh HOST`. Every remote call is the
//! same `sovereign` command line the user would type on that host, quoted once for
//! its shell; files (a replica's credentials) travel on standard input, never in an
//! argument.

use crate::deploy::remote::{quote, su, QuoteError};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use thiserror::Error;

/// Why a call to a node's host failed before the remote command could answer.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("node {node}: `via = {via:?}` is not a way to reach a host: use \"local\", \"adb:SERIAL\" or \"ssh:HOST\"")]
    Unknown { node: String, via: String },
    #[error("cannot run {program} for {via}: {cause}")]
    Spawn {
        program: String,
        via: String,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Quote(#[from] QuoteError),
}

/// The way to a node's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// This host: the command runs here.
    Local,
    /// A rooted phone: `adb -s SERIAL shell "su -c '...'"`.
    Adb {
        /// The device's serial (`adb devices`).
        serial: String,
    },
    /// Another machine: `ssh -o BatchMode=yes HOST -- '...'`, as a user that may run
    /// `sovereign` (root).
    Ssh {
        /// The `ssh` destination (`user@host`, or a name from ssh's own config).
        host: String,
    },
}

impl Transport {
    /// Reads `via` (`local`, `adb:SERIAL`, `ssh:HOST`) of node `node`.
    pub fn parse(node: &str, via: &str) -> Result<Transport, TransportError> {
        let unknown = || TransportError::Unknown {
            node: node.to_string(),
            via: via.to_string(),
        };
        match via.split_once(':') {
            None if via == "local" => Ok(Transport::Local),
            Some(("adb", serial)) if !serial.is_empty() => Ok(Transport::Adb {
                serial: serial.to_string(),
            }),
            Some(("ssh", host)) if !host.is_empty() && !host.starts_with('-') => {
                Ok(Transport::Ssh {
                    host: host.to_string(),
                })
            }
            _ => Err(unknown()),
        }
    }

    /// The launcher on that host when the cluster file names none: this very binary
    /// here, where `deploy` puts it on a phone, `sovereign` from PATH over ssh.
    pub fn default_launcher(&self) -> String {
        match self {
            Transport::Local => std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("sovereign"))
                .display()
                .to_string(),
            Transport::Adb { .. } => "/data/sovereign/sovereign".to_string(),
            Transport::Ssh { .. } => "sovereign".to_string(),
        }
    }

    /// How it is shown in messages.
    pub fn describe(&self) -> String {
        match self {
            Transport::Local => "this host".to_string(),
            Transport::Adb { serial } => format!("adb -s {serial}"),
            Transport::Ssh { host } => format!("ssh {host}"),
        }
    }

    /// The command that runs `argv` on that host with `env` set.
    pub fn command(
        &self,
        env: &[(String, String)],
        argv: &[String],
    ) -> Result<Command, TransportError> {
        let line = || -> Result<String, TransportError> {
            let mut words = Vec::new();
            for (k, v) in env {
                words.push(format!("{k}={}", quote(v)?));
            }
            for a in argv {
                words.push(quote(a)?);
            }
            Ok(words.join(" "))
        };
        Ok(match self {
            Transport::Local => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v)));
                c
            }
            Transport::Adb { serial } => {
                let mut c = Command::new(program("SOVEREIGN_ADB", "adb"));
                c.args(["-s", serial, "shell", &su(&line()?)?]);
                c
            }
            Transport::Ssh { host } => {
                let mut c = Command::new(program("SOVEREIGN_SSH", "ssh"));
                c.args(["-o", "BatchMode=yes", host, "--", &line()?]);
                c
            }
        })
    }

    /// Runs `argv` there; its output, whatever its exit status.
    pub fn run(&self, env: &[(String, String)], argv: &[String]) -> Result<Output, TransportError> {
        let mut c = self.command(env, argv)?;
        c.stdin(Stdio::null());
        c.output().map_err(|cause| self.spawn_error(&c, cause))
    }

    /// Runs `argv` there with `input` on its standard input.
    pub fn run_with_input(
        &self,
        env: &[(String, String)],
        argv: &[String],
        input: &[u8],
    ) -> Result<Output, TransportError> {
        let mut c = self.command(env, argv)?;
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|cause| self.spawn_error(&c, cause))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that exits without reading is judged by its status.
            let _ = stdin.write_all(input);
        }
        child
            .wait_with_output()
            .map_err(|cause| self.spawn_error(&c, cause))
    }

    fn spawn_error(&self, c: &Command, cause: std::io::Error) -> TransportError {
        TransportError::Spawn {
            program: c.get_program().to_string_lossy().into_owned(),
            via: self.describe(),
            cause,
        }
    }
}

/// The program for a remote transport: `$VAR` when set (a particular build, or a
/// stand-in under test), else `default` from PATH.
fn program(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(c: &Command) -> Vec<String> {
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn via_names_the_three_ways_and_refuses_others() {
        assert_eq!(Transport::parse("a", "local").unwrap(), Transport::Local);
        assert_eq!(
            Transport::parse("a", "adb:R58M").unwrap(),
            Transport::Adb {
                serial: "R58M".into()
            }
        );
        assert_eq!(
            Transport::parse("a", "ssh:root@box").unwrap(),
            Transport::Ssh {
                host: "root@box".into()
            }
        );
        for bad in ["", "adb:", "ssh:-oProxyCommand=x", "telnet:x", "LOCAL"] {
            let e = Transport::parse("sql-r1", bad).unwrap_err().to_string();
            assert!(
                e.contains("sql-r1") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn remote_lines_are_quoted_once_for_the_shell_and_once_for_su() {
        let env = vec![("SOVEREIGN_HOME".to_string(), "/data/my vm".to_string())];
        let words: Vec<String> = [
            "/data/sovereign/sovereign",
            "status",
            "--json",
            "--spec",
            "/data/sovereign/it's.toml",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let adb = Transport::Adb {
            serial: "R58M".into(),
        }
        .command(&env, &words)
        .unwrap();
        let a = argv(&adb);
        assert_eq!(&a[1..4], ["-s", "R58M", "shell"]);
        assert!(a[4].starts_with("su -c "), "{a:?}");
        let ssh = Transport::Ssh {
            host: "root@box".into(),
        }
        .command(&env, &words)
        .unwrap();
        let s = argv(&ssh);
        assert_eq!(&s[1..5], ["-o", "BatchMode=yes", "root@box", "--"]);
        // What the remote shell reads back is exactly the words.
        let back = shlex::split(&s[5]).unwrap();
        assert_eq!(back[0], "SOVEREIGN_HOME=/data/my vm");
        assert_eq!(&back[1..], &words[..]);
        let su_inner = shlex::split(&a[4]).unwrap();
        assert_eq!(su_inner[..2], ["su", "-c"]);
        assert_eq!(shlex::split(&su_inner[2]).unwrap()[1..], words[..]);
    }
}
