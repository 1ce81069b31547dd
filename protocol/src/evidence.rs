//! What each stage report proves. One type per stage, so the host never digs into a
//! JSON blob by string and the guest never reads back what it wrote: the evidence is
//! built once, typed, and read by name on both sides.

use crate::messages::{DeviceReport, PostgresInfo, TailnetInfo};
use crate::stage::Stage;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// The evidence a stage report carries: one variant per kind of proof, plus
/// [`StageDetail::Problem`] for a stage that failed or is impaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageDetail {
    /// Nothing to show (e.g. a stage that just started).
    #[default]
    None,
    /// `init`: PID 1 runs and the system filesystems are mounted.
    Init(InitEvidence),
    /// `devices`: the census, summarised (the full report travels on its own).
    Devices(DevicesEvidence),
    /// `control`: who the guest is on the control channel.
    Control(ControlEvidence),
    /// `network`: tap0's address and the gateway's answer.
    Network(NetworkEvidence),
    /// `tailscale`: the node's tailnet name and addresses.
    Tailscale(TailnetInfo),
    /// `postgres`: the server, where it listens.
    Postgres(PostgresInfo),
    /// `ready`: every stage holds.
    Ready(ReadyEvidence),
    /// Why a stage failed or is impaired.
    Problem(Problem),
}

impl StageDetail {
    /// A [`StageDetail::Problem`] with `message`.
    pub fn problem(message: impl Into<String>) -> StageDetail {
        StageDetail::Problem(Problem {
            message: message.into(),
        })
    }

    /// The tailnet identity, when this is `tailscale` evidence.
    pub fn tailnet(&self) -> Option<&TailnetInfo> {
        match self {
            StageDetail::Tailscale(t) => Some(t),
            _ => None,
        }
    }

    /// The problem text, when this is a problem.
    pub fn problem_message(&self) -> Option<&str> {
        match self {
            StageDetail::Problem(p) => Some(&p.message),
            _ => None,
        }
    }

    /// One line for a stage table: what the evidence shows, at most 160 characters.
    pub fn summary(&self) -> String {
        let s = match self {
            StageDetail::None => String::new(),
            StageDetail::Init(i) => i.to_string(),
            StageDetail::Devices(d) => d.to_string(),
            StageDetail::Control(c) => c.to_string(),
            StageDetail::Network(n) => n.to_string(),
            StageDetail::Tailscale(t) => format!("{} {}", t.name, t.ips.join(",")),
            StageDetail::Postgres(p) => {
                let s = format!(
                    "{} {}, listening on {}",
                    p.state,
                    p.version,
                    p.listen.join(",")
                );
                if !p.recovered.is_empty() {
                    return format!("{}; {}", shorten(&s, 160), p.recovered.join("; "));
                }
                s
            }
            StageDetail::Ready(r) => r.to_string(),
            StageDetail::Problem(p) => p.message.clone(),
        };
        shorten(&s, 160)
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `...`.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

macro_rules! into_detail {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for StageDetail {
            fn from(v: $ty) -> StageDetail {
                StageDetail::$variant(v)
            }
        })*
    };
}

into_detail! {
    InitEvidence => Init,
    DevicesEvidence => Devices,
    ControlEvidence => Control,
    NetworkEvidence => Network,
    TailnetInfo => Tailscale,
    PostgresInfo => Postgres,
    ReadyEvidence => Ready,
    Problem => Problem,
}

impl From<()> for StageDetail {
    fn from(_: ()) -> StageDetail {
        StageDetail::None
    }
}

/// `init`: the init's version and the kernel it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitEvidence {
    /// sovereign-init's version.
    pub version: String,
    /// `uname -r`.
    pub kernel: String,
    /// Kernel command-line keys that were ignored, and why.
    #[serde(default)]
    pub cmdline_warnings: Vec<String>,
    /// When the kernel handed over to PID 1, in milliseconds since its start: where
    /// PID 1's own share of the boot begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_ms: Option<u64>,
}

impl fmt::Display for InitEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID 1 up, kernel {}", self.kernel)?;
        if !self.cmdline_warnings.is_empty() {
            write!(
                f,
                " ({} kernel command-line warning(s))",
                self.cmdline_warnings.len()
            )?;
        }
        Ok(())
    }
}

/// `devices`: the census in numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesEvidence {
    /// Virtio devices found.
    pub devices: usize,
    /// Devices without their driver.
    pub unbound: usize,
    /// How long the init waited for drivers to bind.
    pub waited_ms: u64,
    /// One line per unbound device saying why.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Required kernel options the running kernel lacks.
    #[serde(default)]
    pub missing_kernel_options: Vec<String>,
    /// PID 1's resident memory at the census (KiB).
    #[serde(default)]
    pub init_rss_kib: Option<u64>,
}

impl From<&DeviceReport> for DevicesEvidence {
    fn from(r: &DeviceReport) -> DevicesEvidence {
        DevicesEvidence {
            devices: r.devices.len(),
            unbound: r.devices.iter().filter(|d| !d.is_bound()).count(),
            waited_ms: r.waited_ms,
            problems: r.problems.clone(),
            missing_kernel_options: r.missing_kernel_options.clone(),
            init_rss_kib: r.init_rss_kib,
        }
    }
}

impl fmt::Display for DevicesEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device(s), {} unbound, waited {} ms",
            self.devices, self.unbound, self.waited_ms
        )?;
        if let Some(p) = self.problems.first() {
            write!(f, ": {p}")?;
        }
        Ok(())
    }
}

/// `control`: the guest's side of the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEvidence {
    /// The guest's own CID.
    pub cid: u32,
    /// The host port it dials (reported when it starts).
    #[serde(default)]
    pub port: Option<u32>,
    /// The host name it took from the configuration (reported when ready).
    #[serde(default)]
    pub hostname: Option<String>,
}

impl fmt::Display for ControlEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CID {}", self.cid)?;
        if let Some(p) = self.port {
            write!(f, ", dialling host port {p}")?;
        }
        if let Some(h) = &self.hostname {
            write!(f, ", host name {h}")?;
        }
        Ok(())
    }
}

/// `network`: tap0 on gvproxy's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEvidence {
    /// The guest's address with its prefix (`192.168.127.2/24`).
    pub address: String,
    /// The gateway (gvproxy).
    pub gateway: Ipv4Addr,
    /// Link MTU.
    pub mtu: u16,
    /// How long the gateway took to answer the first DNS query; `None` when this
    /// report is a recovery after gvproxy came back.
    #[serde(default)]
    pub gateway_answered_ms: Option<u64>,
    /// True when the link came back after gvproxy went away.
    #[serde(default)]
    pub recovered: bool,
    /// Whether the guest's input policy (nftables) is in force.
    #[serde(default)]
    pub input_policy: InputPolicy,
}

/// The guest's nftables input policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputPolicy {
    /// Loaded: only tailscaled's traffic and postgres on the tailnet get in.
    Loaded,
    /// The image has no `nft` (the boot-only test initramfs): no policy, nothing to
    /// protect either (no postgres, no tailscaled). The full root image always has it.
    #[default]
    Absent,
}

impl fmt::Display for NetworkEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}, mtu {}", self.address, self.gateway, self.mtu)?;
        if let Some(ms) = self.gateway_answered_ms {
            write!(f, ", gateway answered in {ms} ms")?;
        }
        if self.recovered {
            f.write_str(", link recovered")?;
        }
        if self.input_policy == InputPolicy::Absent {
            f.write_str(", no input policy (nft not in the image)")?;
        }
        Ok(())
    }
}

/// `ready`: when the guest got there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyEvidence {
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
}

impl fmt::Display for ReadyEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every stage holds, {} ms after kernel start",
            self.uptime_ms
        )
    }
}

/// Why a stage failed or is impaired: one sentence, with the values involved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What went wrong.
    pub message: String,
}

/// The stage whose evidence `detail` is, when it is stage-specific.
pub fn evidence_stage(detail: &StageDetail) -> Option<Stage> {
    Some(match detail {
        StageDetail::Init(_) => Stage::Init,
        StageDetail::Devices(_) => Stage::Devices,
        StageDetail::Control(_) => Stage::Control,
        StageDetail::Network(_) => Stage::Network,
        StageDetail::Tailscale(_) => Stage::Tailscale,
        StageDetail::Postgres(_) => Stage::Postgres,
        StageDetail::Ready(_) => Stage::Ready,
        StageDetail::None | StageDetail::Problem(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ServerState;

    #[test]
    fn details_are_tagged_by_kind() {
        let d = StageDetail::from(TailnetInfo {
            name: "sql-vm.tail.example".into(),
            ips: vec!["100.64.0.2".into()],
        });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["kind"], "tailscale");
        assert_eq!(v["ips"][0], "100.64.0.2");
        let back: StageDetail = serde_json::from_value(v).unwrap();
        assert_eq!(back.tailnet().unwrap().name, "sql-vm.tail.example");
        assert_eq!(evidence_stage(&back), Some(Stage::Tailscale));
        assert_eq!(
            serde_json::to_value(StageDetail::None).unwrap(),
            serde_json::json!({"kind": "none"})
        );
        let bad = serde_json::json!({"kind": "launch_missiles"});
        serde_json::from_value::<StageDetail>(bad).unwrap_err();
    }

    #[test]
    fn summaries_are_one_short_line() {
        let pg = StageDetail::from(PostgresInfo {
            state: ServerState::Ready,
            version: "postgres (PostgreSQL) 17.12".into(),
            data_dir: "/data/postgres".into(),
            listen: vec!["localhost".into(), "100.64.0.2".into()],
            recovered: vec![],
        });
        assert_eq!(
            pg.summary(),
            "ready postgres (PostgreSQL) 17.12, listening on localhost,100.64.0.2"
        );
        // What a boot finished or undid is never cut: it is why the user looks.
        let note = format!(
            "the first boot's initdb was interrupted{}",
            "; more".repeat(40)
        );
        let recovered = StageDetail::from(PostgresInfo {
            state: ServerState::Ready,
            version: "postgres (PostgreSQL) 17.12".into(),
            data_dir: "/data/postgres".into(),
            listen: vec!["localhost".into()],
            recovered: vec![note.clone()],
        });
        assert!(
            recovered.summary().ends_with(&note),
            "{}",
            recovered.summary()
        );
        let long = StageDetail::problem("x".repeat(500));
        assert_eq!(long.summary().chars().count(), 160);
        assert!(long.summary().ends_with("..."));
        assert_eq!(long.problem_message().map(str::len), Some(500));
        let init = StageDetail::from(InitEvidence {
            version: "0.1.0".into(),
            kernel: "6.12.48-sovereign".into(),
            cmdline_warnings: vec![],
            handed_over_ms: None,
        });
        assert_eq!(init.summary(), "PID 1 up, kernel 6.12.48-sovereign");
    }
}
