//! `sovereign status`: the supervisor's view (processes, stages, the guest's own status)
//! as a table or JSON; without a supervisor, what the pid files say.

use super::running_spec;
use crate::ipc::{Client, Phase, ProcessInfo, Reply, Request, VmStatus};
use crate::report::{human_duration, mark};
use crate::rundir::{Role, RunDir};
use crate::spec::{Backend, Spec};

/// Gathers the status of `spec`'s VM.
pub async fn gather(spec: &Spec) -> VmStatus {
    let spec = running_spec(spec);
    let run = RunDir::new(&spec.run_dir);
    if let Ok(mut c) = Client::connect(&run).await {
        match c.call(&Request::Status).await {
            Ok(Reply::Status(s)) => return *s,
            Ok(other) => log::warn!("unexpected status answer {other:?}"),
            Err(e) => log::warn!("status request failed: {e}"),
        }
    }
    VmStatus {
        name: spec.name.clone(),
        cid: spec.cid,
        backend: spec.vmm.backend.to_string(),
        phase: Phase::NotRunning,
        elapsed_ms: None,
        processes: Role::ALL
            .iter()
            .filter(|r| **r != Role::VhostDeviceVsock || spec.vmm.backend == Backend::Qemu)
            .map(|&role| ProcessInfo {
                role,
                pid: run.recorded_pid(role),
                alive: run.live_pid(role).is_some(),
            })
            .collect(),
        stages: vec![],
        control_connected: false,
        hello: None,
        devices: None,
        guest: None,
        guest_error: Some("no supervisor is running".into()),
        console_log: spec.console_log.clone(),
        supervisor_log: spec.log_file("supervisor"),
    }
}

/// Runs `status`; exit 0 when the VM is up, 1 otherwise.
pub async fn run(spec: &Spec, json: bool) -> anyhow::Result<i32> {
    let s = gather(spec).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(if s.phase == Phase::Up { 0 } else { 1 })
}

/// The human table.
pub fn render(s: &VmStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let phase = match s.phase {
        Phase::Booting => "booting",
        Phase::Up => "up",
        Phase::Failed => "failed",
        Phase::Stopping => "stopping",
        Phase::NotRunning => "not running",
    };
    let age = s
        .elapsed_ms
        .map(|m| format!(", for {}", human_duration(m)))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "VM {} (CID {}, {}): {phase}{age}",
        s.name, s.cid, s.backend
    );
    let vmm_alive = s.processes.iter().any(|p| p.role == Role::Vmm && p.alive);
    if s.phase == Phase::NotRunning && vmm_alive {
        let _ = writeln!(
            o,
            "  ✗ the supervisor is gone but the VM runs: postgres may still serve, but nothing watches it; `sovereign stop` shuts the guest down cleanly"
        );
    }
    let _ = writeln!(o, "  processes:");
    for p in &s.processes {
        let pid = p.pid.map_or("-".to_string(), |p| p.to_string());
        let _ = writeln!(
            o,
            "    {:<19} pid {:<8} {}",
            p.role.name(),
            pid,
            if p.alive { "alive" } else { "not running" }
        );
    }
    if !s.stages.is_empty() {
        let _ = writeln!(o, "  stages:");
        for l in &s.stages {
            let at = l.elapsed_ms.map(human_duration).unwrap_or_default();
            let _ = writeln!(
                o,
                "    {:<9} {} {:>7}  {}",
                l.stage.name(),
                mark(l.status),
                at,
                l.summary
            );
        }
    }
    let _ = writeln!(
        o,
        "  control channel: {}",
        if s.control_connected {
            "connected"
        } else {
            "not connected"
        }
    );
    match &s.guest {
        Some(g) => {
            let _ = writeln!(o, "  guest: up {}", human_duration(g.uptime_ms));
            if let Some(t) = &g.tailnet {
                let _ = writeln!(o, "    tailnet:  {} {}", t.name, t.ips.join(" "));
            }
            if let Some(p) = &g.postgres {
                let _ = writeln!(
                    o,
                    "    postgres: {} {} listening on {}",
                    p.state,
                    p.version,
                    p.listen.join(" ")
                );
            }
            if let Some(d) = &g.data_disk {
                let _ = writeln!(
                    o,
                    "    data disk: {} MiB free of {} MiB{}",
                    d.available_bytes >> 20,
                    d.total_bytes >> 20,
                    if d.reserve_released {
                        " ✗ FULL: the emergency reserve is released; delete data or grow the disk"
                    } else {
                        ""
                    }
                );
            }
            if let Some(n) = &g.network {
                let _ = writeln!(
                    o,
                    "    network:  {} out {} frames/{} B, in {} frames/{} B, {} drops, {} reconnects",
                    if n.connected { "connected" } else { "disconnected" },
                    n.frames_out,
                    n.bytes_out,
                    n.frames_in,
                    n.bytes_in,
                    n.drops,
                    n.reconnects
                );
            }
            for svc in &g.services {
                let pid = svc.pid.map_or("-".to_string(), |p| p.to_string());
                let _ = writeln!(
                    o,
                    "    service:  {} pid {pid}, {} restart(s)",
                    svc.name, svc.restarts
                );
            }
        }
        None => {
            let _ = writeln!(
                o,
                "  guest: {}",
                s.guest_error.as_deref().unwrap_or("unknown")
            );
        }
    }
    let _ = writeln!(o, "  console: {}", s.console_log.display());
    let _ = writeln!(o, "  log:     {}", s.supervisor_log.display());
    o
}
