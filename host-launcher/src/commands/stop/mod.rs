//! `sovereign stop`: asks the supervisor to shut the guest down cleanly and stop every
//! process; without a supervisor, stops whatever the pid files still name. Exit 0 only
//! when nothing of the VM is left running.

pub mod orphans;

use super::running_spec;
use crate::ipc::{Client, Reply, Request};
use crate::process::{terminate, wait_gone};
use crate::rundir::{Role, RunDir};
use crate::spec::Spec;
use std::time::Duration;

/// Runs `stop`; returns the exit code.
pub async fn run(spec: &Spec, deadline_secs: Option<u32>) -> anyhow::Result<i32> {
    let spec = running_spec(spec);
    let run = RunDir::new(&spec.run_dir);
    let supervisor = run.live_pid(Role::Supervisor);
    match Client::connect(&run).await {
        Ok(mut c) => {
            println!(
                "stopping VM {} (guest shutdown deadline {}s)…",
                spec.name,
                deadline_secs.unwrap_or(spec.timeouts.shutdown)
            );
            let wait = Duration::from_secs(
                u64::from(deadline_secs.unwrap_or(spec.timeouts.shutdown)) + 60,
            );
            match tokio::time::timeout(wait, c.call(&Request::Stop { deadline_secs })).await {
                Ok(Ok(Reply::Stopped(r))) => {
                    for s in &r.steps {
                        println!("  {s}");
                    }
                    println!(
                        "  guest shutdown: {}",
                        if r.clean { "clean" } else { "not clean" }
                    );
                }
                Ok(Ok(other)) => println!("  unexpected answer: {other:?}"),
                Ok(Err(e)) => println!("  the supervisor did not answer: {e}"),
                Err(_) => println!("  the supervisor did not finish within {}s", wait.as_secs()),
            }
            if let Some(pid) = supervisor {
                if !wait_gone(pid, run.root(), Duration::from_secs(10)).await {
                    println!("  supervisor (pid {pid}) still running");
                }
            }
        }
        Err(_) => {
            if Role::ALL.iter().all(|r| run.live_pid(*r).is_none()) {
                println!("VM {} is not running", spec.name);
                cleanup_files(&run);
                return Ok(0);
            }
            if let Some(vmm) = orphans::orphaned_vmm(&run) {
                let deadline = deadline_secs.unwrap_or(spec.timeouts.shutdown);
                println!(
                    "VM {}: its supervisor is gone but the VM runs (vmm pid {vmm}); shutting the guest down through the control channel (waiting up to {}s for it to reconnect)…",
                    spec.name,
                    orphans::RECONNECT_WAIT.as_secs()
                );
                match orphans::shutdown(&spec, &run, vmm, deadline).await {
                    Ok(steps) => {
                        for s in &steps {
                            println!("  {s}");
                        }
                        println!("  guest shutdown: clean");
                    }
                    Err((steps, e)) => {
                        for s in &steps {
                            println!("  {s}");
                        }
                        println!("  ✗ {e}; stopping what the pid files name");
                    }
                }
            } else {
                println!(
                    "VM {}: no supervisor answers; stopping what its pid files name",
                    spec.name
                );
            }
        }
    }
    stop_leftovers(&spec, &run).await;
    let left: Vec<String> = Role::ALL
        .iter()
        .filter_map(|r| run.live_pid(*r).map(|p| format!("{r} (pid {p})")))
        .collect();
    if left.is_empty() {
        cleanup_files(&run);
        println!("stopped: nothing of VM {} is running", spec.name);
        Ok(0)
    } else {
        println!("✗ still running: {}", left.join(", "));
        Ok(1)
    }
}

/// SIGTERM, then SIGKILL after a grace period, to every live process the run dir names.
pub async fn stop_leftovers(spec: &Spec, run: &RunDir) {
    for role in [
        Role::Supervisor,
        Role::Vmm,
        Role::Gvproxy,
        Role::VhostDeviceVsock,
    ] {
        if let Some(pid) = run.live_pid(role) {
            let grace = if role == Role::Vmm {
                spec.timeouts.shutdown.min(10)
            } else {
                5
            };
            let how = terminate(pid, run.root(), Duration::from_secs(u64::from(grace))).await;
            println!("  {role} (pid {pid}): {how:?}");
        }
    }
}

fn cleanup_files(run: &RunDir) {
    for role in Role::ALL {
        if run.live_pid(role).is_none() {
            let _ = std::fs::remove_file(run.pid_file(role));
        }
    }
    if run.live_pid(Role::Supervisor).is_none() {
        let _ = std::fs::remove_file(run.supervisor_socket());
    }
}
