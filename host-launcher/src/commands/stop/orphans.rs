//! Stopping a VM whose supervisor is gone (killed, crashed): the VMM still runs and the
//! guest keeps dialling the control port. `stop` takes the supervisor's place for one
//! exchange: it listens where the supervisor did, waits for the guest to reconnect and
//! prove itself with a Hello that passes the Hello rule, asks it to shut down, and
//! waits for the VMM to exit. Only when that fails does it fall back to signals.

use crate::control::{spawn_connection, ControlEvent, ControlListener};
use crate::readiness::assess_hello;
use crate::rundir::{pid_alive, Role, RunDir};
use crate::spec::{Backend, Spec};
use crate::supervisor::GUEST_SHUTDOWN_MARGIN;
use protocol::{GuestMessage, HostMessage};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

/// How long to wait for the guest to dial in: it notices a vanished host within its
/// silence limit (15 s) and then dials every few seconds.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// Why the guest could not be shut down through the control channel.
#[derive(Debug, Error)]
pub enum OrphanStopError {
    #[error("cannot listen on the control port: {0}")]
    Listen(#[from] crate::control::ControlError),
    #[error("the guest did not reconnect within {0:?}")]
    NoReconnect(Duration),
    #[error("cannot ask the guest to shut down: {0}")]
    Send(crate::control::ControlError),
    #[error("the VMM (pid {pid}) did not exit within {waited:?} of the shutdown request")]
    StillRunning { pid: i32, waited: Duration },
}

/// What happened, one line per step, for the user.
pub type Steps = Vec<String>;

/// Shuts the guest of `spec` down cleanly with the supervisor gone; `vmm` is the live
/// VMM's pid. Returns the steps taken.
pub async fn shutdown(
    spec: &Spec,
    run: &RunDir,
    vmm: i32,
    deadline_secs: u32,
) -> Result<Steps, (Steps, OrphanStopError)> {
    let mut steps = Vec::new();
    let listener = match spec.vmm.backend {
        Backend::Crosvm => ControlListener::vsock(protocol::ports::CONTROL_PORT),
        Backend::Qemu => {
            ControlListener::unix(&run.vsock_port_socket(protocol::ports::CONTROL_PORT))
        }
    };
    let mut listener = listener.map_err(|e| (steps.clone(), e.into()))?;
    // Only PID 1's reconnect carries the boot's session token (see `supervisor::guest`).
    let session = crate::run_files::session(run).read().ok().flatten();
    steps.push("listening on the control port in the supervisor's place".to_string());
    let (tx, mut rx) = mpsc::channel(16);
    let until = Instant::now() + RECONNECT_WAIT;
    let mut candidates = Vec::new();
    let conn = loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !pid_alive(vmm, run.root()) {
            return Err((steps, OrphanStopError::NoReconnect(RECONNECT_WAIT)));
        }
        tokio::select! {
            accepted = listener.accept_from(spec.cid, "control") => match accepted {
                Ok((stream, peer)) => candidates.push(spawn_connection(
                    u64::try_from(candidates.len()).unwrap_or(0) + 1,
                    stream,
                    peer,
                    tx.clone(),
                )),
                Err(e) => log::warn!("control accept failed: {e}"),
            },
            Some(ev) = rx.recv() => {
                if let ControlEvent::Message { conn, msg } = ev {
                    let Some(c) = candidates.iter().find(|c| c.id == conn).cloned() else { continue };
                    match *msg {
                        GuestMessage::Hello(h)
                            if assess_hello(&h, spec.cid, c.peer_cid).is_ok()
                                && (session.is_none() || h.session == session) =>
                        {
                            break c
                        }
                        _ => c.close(),
                    }
                }
            }
            _ = tokio::time::sleep(left.min(Duration::from_millis(500))) => {}
        }
    };
    steps.push("the guest reconnected and said Hello".to_string());
    conn.send(HostMessage::Shutdown { deadline_secs })
        .await
        .map_err(|e| (steps.clone(), OrphanStopError::Send(e)))?;
    steps.push(format!(
        "asked the guest to shut down (deadline {deadline_secs}s)"
    ));
    let waited = Duration::from_secs(u64::from(deadline_secs)) + GUEST_SHUTDOWN_MARGIN;
    if !crate::process::wait_gone(vmm, run.root(), waited).await {
        return Err((steps, OrphanStopError::StillRunning { pid: vmm, waited }));
    }
    steps.push(format!("vmm (pid {vmm}) exited"));
    drop(listener);
    Ok(steps)
}

/// The live VMM of `run`, when its supervisor is gone.
pub fn orphaned_vmm(run: &RunDir) -> Option<i32> {
    if run.live_pid(Role::Supervisor).is_some() {
        return None;
    }
    run.live_pid(Role::Vmm)
}
