//! `sovereign.*` keys on the kernel command line, parsed into a typed [`BootConfig`].
//!
//! The command line is written by the launcher but read by PID 1, so a typo or a bad
//! value must never stop the boot: unknown keys and malformed values produce a warning
//! and the default. Secrets never travel here (they come over the control channel).

use std::path::PathBuf;
use std::time::Duration;

/// Settings PID 1 needs before the control channel exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Log level for the init's own messages (`sovereign.log=debug`).
    pub log_level: log::LevelFilter,
    /// How long to wait for virtio drivers to bind (`sovereign.device_wait=<secs>`).
    pub device_wait: Duration,
    /// Block device holding /data (`sovereign.data_disk=/dev/vdb`).
    pub data_disk: PathBuf,
    /// Host vsock port of the control channel (`sovereign.control_port`).
    pub control_port: u32,
    /// Host vsock port of gvproxy (`sovereign.net_port`).
    pub network_port: u32,
    /// Extra kernel modules to load by name (`sovereign.modules=a,b`).
    pub extra_modules: Vec<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            log_level: log::LevelFilter::Info,
            device_wait: Duration::from_secs(10),
            data_disk: PathBuf::from("/dev/vdb"),
            control_port: protocol::ports::CONTROL_PORT,
            network_port: protocol::ports::NETWORK_PORT,
            extra_modules: Vec::new(),
        }
    }
}

/// Parses the `sovereign.*` keys of a kernel command line. Returns the config and one
/// warning per key that was ignored (unknown, malformed, or out of range).
pub fn parse(cmdline: &str) -> (BootConfig, Vec<String>) {
    let mut config = BootConfig::default();
    let mut warnings = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        let Some(rest) = word.strip_prefix("sovereign.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        if let Err(why) = apply(&mut config, key, value) {
            warnings.push(format!(
                "ignoring kernel command line 'sovereign.{key}={value}': {why}; using the default"
            ));
        }
    }
    (config, warnings)
}

/// Why one `sovereign.key=value` word was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum KeyRefused {
    #[error("unknown key")]
    Unknown,
    #[error("{0}")]
    Invalid(&'static str),
}

fn apply(config: &mut BootConfig, key: &str, value: &str) -> Result<(), KeyRefused> {
    match key {
        "log" => {
            config.log_level = value.parse().map_err(|_| {
                KeyRefused::Invalid("expected off, error, warn, info, debug or trace")
            })?;
        }
        "device_wait" => {
            let secs: u64 = value
                .parse()
                .map_err(|_| KeyRefused::Invalid("expected whole seconds"))?;
            if !(1..=600).contains(&secs) {
                return Err(KeyRefused::Invalid("must be 1..=600 seconds"));
            }
            config.device_wait = Duration::from_secs(secs);
        }
        "data_disk" => {
            if !value.starts_with("/dev/") || value.len() <= "/dev/".len() || value.contains("..") {
                return Err(KeyRefused::Invalid("expected a /dev/ path"));
            }
            config.data_disk = PathBuf::from(value);
        }
        "control_port" | "net_port" => {
            let port: u32 = value
                .parse()
                .map_err(|_| KeyRefused::Invalid("expected a port number"))?;
            if port == 0 || port == u32::MAX {
                return Err(KeyRefused::Invalid("port 0 and u32::MAX are reserved"));
            }
            if key == "control_port" {
                config.control_port = port;
            } else {
                config.network_port = port;
            }
        }
        "modules" => {
            let names: Vec<String> = value
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if names.iter().any(|n| {
                !n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            }) {
                return Err(KeyRefused::Invalid("expected comma-separated module names"));
            }
            config.extra_modules = names;
        }
        _ => return Err(KeyRefused::Unknown),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_keys() {
        let (c, w) = parse("console=ttyS0 root=/dev/vda rw panic=-1");
        assert_eq!(c, BootConfig::default());
        assert!(w.is_empty());
    }

    #[test]
    fn all_keys() {
        let (c, w) = parse(
            "sovereign.log=debug sovereign.device_wait=3 sovereign.data_disk=/dev/vdc \
             sovereign.control_port=2000 sovereign.net_port=2001 sovereign.modules=tun,ext4",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!(c.device_wait, Duration::from_secs(3));
        assert_eq!(c.data_disk, PathBuf::from("/dev/vdc"));
        assert_eq!((c.control_port, c.network_port), (2000, 2001));
        assert_eq!(c.extra_modules, vec!["tun", "ext4"]);
    }

    #[test]
    fn garbage_warns_and_keeps_defaults() {
        let garbage = "sovereign.log=loud sovereign.device_wait=-1 sovereign.device_wait=99999 \
             sovereign.data_disk=/etc/passwd sovereign.data_disk=/dev/../x sovereign.control_port=0 \
             sovereign.net_port=abc sovereign.modules=a;rm sovereign.nope=1 sovereign. sovereign.= \
             sovereign.log sovereign.\u{1F4A9}=\u{0}";
        let (c, w) = parse(garbage);
        assert_eq!(c, BootConfig::default());
        assert_eq!(w.len(), 13, "{w:#?}");
        assert!(w
            .iter()
            .any(|m| m.contains("sovereign.nope=1") && m.contains("unknown key")));
        assert!(w.iter().all(|m| m.ends_with("using the default")));
    }

    #[test]
    fn later_valid_value_wins() {
        let (c, w) = parse("sovereign.log=bogus sovereign.log=warn");
        assert_eq!(c.log_level, log::LevelFilter::Warn);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let s: String = (0..40)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    [
                        "sovereign.",
                        "=",
                        " ",
                        "log",
                        "device_wait",
                        "9",
                        "/dev/",
                        "\u{0}",
                        "é",
                    ][(seed % 9) as usize]
                })
                .collect();
            let _ = parse(&s);
        }
    }
}
