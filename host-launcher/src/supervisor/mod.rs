//! The detached supervisor (`sovereign supervise --run-dir DIR`, started by `start`).
//! It owns everything of one VM: it listens on the control channel before anything
//! starts, launches vhost-device-vsock (QEMU), gvproxy and the VMM, follows the stages
//! (control messages + console markers, see [`crate::readiness`]), serves
//! `<run>/supervisor.sock` ([`crate::ipc`]), and on failure or `stop` shuts the guest
//! down and stops every process it started.
//!
//! This module is the entry point [`run`] and the main loop, which owns the VM's state
//! and routes each input to the module of its duty: `clients` (the supervisor socket),
//! `events` (history and broadcast), `requests` (guest requests in flight), `guest` (the
//! control channel), `progress` (stages and the GuestConfig), `launch` (processes and
//! their exits), `restart` (booting again after the VMM died), `teardown` (stopping),
//! `failure` (the failure report), `snapshot` (the status) and `alerting` (the watch over
//! the VM's conditions).

mod alerting;
mod clients;
mod events;
mod failure;
mod guest;
mod launch;
mod netrelay;
mod progress;
mod requests;
mod restart;
mod snapshot;
mod teardown;
mod transfers;

pub use requests::GuestRequestError;
pub use teardown::GUEST_SHUTDOWN_MARGIN;

use self::clients::{serve_clients, Command};
use self::events::Events;
use self::requests::PendingRequests;
use crate::console::{rotate, ConsoleTail};
use crate::control::{ControlEvent, ControlListener};
use crate::ipc::Phase;
use crate::process;
use crate::readiness::Readiness;
use crate::run_files;
use crate::rundir::{Role, RunDir};
use crate::spec::{Backend, Spec};
use crate::vmm::LaunchPlan;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Lines of console kept as evidence.
const CONSOLE_TAIL: usize = 30;
/// Guest shutdown deadline when a boot failed with the control channel up.
const FAILED_BOOT_SHUTDOWN: u32 = 10;

/// Why the supervisor could not run at all (failures of the VM are reported as events).
#[derive(Debug, Error)]
pub enum SuperviseError {
    #[error(transparent)]
    RunFile(#[from] crate::run_files::RunFileError),
    #[error(transparent)]
    PidFile(#[from] process::ProcessError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the supervisor of the VM whose run directory is `run`; returns the exit code.
pub async fn run(run: RunDir) -> Result<i32, SuperviseError> {
    let spec = run_files::spec(&run).read_present()?;
    let plan = run_files::launch_plan(&run).read_present()?;
    // Taken (and removed) before anything is launched: it belongs to the first boot.
    let boot_request = run_files::boot_request(&run).take().unwrap_or_else(|e| {
        log::error!("{e}; booting without this start's request");
        None
    });
    if let Some(r) = &boot_request {
        log::info!("this start's first boot carries the request {r:?}");
    }
    process::write_pid_file(&run, Role::Supervisor, std::process::id())?;
    if let Err(e) = run_files::failure(&run).remove() {
        log::warn!("{e}");
    }

    let events = Arc::new(Events::new());
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let _ = std::fs::remove_file(run.supervisor_socket());
    let ipc = UnixListener::bind(run.supervisor_socket()).map_err(|source| {
        crate::control::ControlError::Bind {
            what: run.supervisor_socket().display().to_string(),
            source,
        }
    })?;
    let waiting = transfers::Waiting::default();
    tokio::spawn(serve_clients(
        ipc,
        events.clone(),
        cmd_tx.clone(),
        waiting.clone(),
    ));

    // The control listener exists before any process that could connect to it.
    let control = match spec.vmm.backend {
        Backend::Crosvm => ControlListener::vsock(protocol::ports::CONTROL_PORT),
        Backend::Qemu => {
            ControlListener::unix(&run.vsock_port_socket(protocol::ports::CONTROL_PORT))
        }
    };
    let control = match control {
        Ok(c) => c,
        Err(e) => {
            // Nothing was started yet: report and leave.
            let report = failure::report(
                &spec,
                failure::at_launch("control listener", e.to_string()),
                failure::Evidence::default(),
                failure::nothing_started(),
            );
            log::error!("{e}");
            failure::publish(&run, &events, report).await;
            teardown::remove_own_files(&run);
            return Ok(1);
        }
    };
    if spec.vmm.backend == Backend::Crosvm {
        match ControlListener::vsock(protocol::ports::NETWORK_PORT) {
            Ok(l) => {
                tokio::spawn(netrelay::serve(l, spec.cid, run.gvproxy_frames_socket()));
            }
            Err(e) => log::error!("{e}; the guest will have no network"),
        }
    }
    let data = match spec.vmm.backend {
        Backend::Crosvm => ControlListener::vsock(protocol::ports::DATA_PORT),
        Backend::Qemu => ControlListener::unix(&run.vsock_port_socket(protocol::ports::DATA_PORT)),
    };
    match data {
        Ok(l) => {
            tokio::spawn(transfers::serve_data_port(l, spec.cid, waiting));
        }
        Err(e) => log::error!("{e}; exports and dumps will not work"),
    }
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    tokio::spawn(guest::accept_guests(control, spec.cid, ctl_tx.clone()));

    let alerting = alerting::start(&spec, cmd_tx.clone());
    let (exit_tx, exit_rx) = mpsc::channel(8);
    let mut sup = Supervisor {
        console: ConsoleTail::new(&spec.console_log, CONSOLE_TAIL),
        spec,
        run,
        plan,
        started: Instant::now(),
        events,
        readiness: None,
        phase: Phase::Booting,
        pids: HashMap::new(),
        exit_tx,
        exit_rx,
        ctl_rx,
        cmd_rx,
        channel: guest::Channel::default(),
        pending: PendingRequests::default(),
        guest_shutting_down: false,
        gvproxy_restarts: 0,
        restart_budget: restart::RestartBudget::default(),
        restarts: Vec::new(),
        boot_request,
        alerting,
    };
    sup.main().await
}

/// Everything the supervisor knows about its VM; only the main loop touches it.
#[derive(Debug)]
struct Supervisor {
    spec: Spec,
    run: RunDir,
    plan: LaunchPlan,
    started: Instant,
    events: Arc<Events>,
    readiness: Option<Readiness>,
    phase: Phase,
    pids: HashMap<Role, i32>,
    exit_tx: mpsc::Sender<(Role, std::process::ExitStatus)>,
    exit_rx: mpsc::Receiver<(Role, std::process::ExitStatus)>,
    ctl_rx: mpsc::Receiver<ControlEvent>,
    cmd_rx: mpsc::Receiver<Command>,
    channel: guest::Channel,
    pending: PendingRequests,
    guest_shutting_down: bool,
    gvproxy_restarts: u32,
    restart_budget: restart::RestartBudget,
    restarts: Vec<crate::ipc::VmRestart>,
    console: ConsoleTail,
    /// This start's one-boot request, until the first boot's configuration carried it.
    boot_request: Option<protocol::config::BootRequest>,
    /// The watch over the VM's conditions and the alerts' sender.
    alerting: alerting::Alerting,
}

/// Seconds since the epoch, for what the status records.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the main loop goes on after an input.
enum Flow {
    Continue,
    Exit(i32),
}

impl Supervisor {
    fn elapsed_ms(&self) -> u64 {
        process::millis(self.started.elapsed())
    }

    /// Launches the VM, then routes inputs until it stops; returns the exit code.
    async fn main(&mut self) -> Result<i32, SuperviseError> {
        let mut term = signal(SignalKind::terminate()).map_err(SuperviseError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(SuperviseError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(SuperviseError::Signals)?;

        if let Err(e) = rotate(&self.spec.console_log) {
            log::warn!("cannot move the old console log aside: {e}");
        }
        if let Err(failure) = self.launch().await {
            let code = self.fail(failure).await;
            self.finish().await;
            return Ok(code);
        }

        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let flow = tokio::select! {
                Some(ev) = self.ctl_rx.recv() => self.on_control(ev).await,
                Some((role, status)) = self.exit_rx.recv() => self.on_exit(role, status).await,
                Some(cmd) = self.cmd_rx.recv() => self.on_command(cmd).await,
                _ = tick.tick() => self.on_tick().await,
                _ = term.recv() => self.on_signal("SIGTERM").await,
                _ = int.recv() => self.on_signal("SIGINT").await,
                _ = hup.recv() => { log::info!("SIGHUP ignored"); Flow::Continue }
            };
            if let Flow::Exit(code) = flow {
                self.finish().await;
                return Ok(code);
            }
        }
    }

    /// A client's command: a snapshot, a request relayed to the guest, or a stop.
    async fn on_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
                Flow::Continue
            }
            Command::Guest {
                mut msg,
                expect,
                timeout,
                reply,
            } => {
                let Some(conn) = self.channel.current.clone() else {
                    let _ = reply.send(Err(GuestRequestError::NotConnected));
                    return Flow::Continue;
                };
                let expect = self.pending.assign_id(&mut msg, expect);
                match conn.send(*msg).await {
                    Ok(()) => self.pending.wait(expect, Instant::now() + timeout, reply),
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
                Flow::Continue
            }
            Command::Stop {
                deadline_secs,
                reply,
            } => {
                let deadline = deadline_secs.unwrap_or(self.spec.timeouts.shutdown);
                let report = self.stop_all(deadline, "stop requested").await;
                let code = if report.nothing_left { 0 } else { 1 };
                let _ = reply.send(report);
                Flow::Exit(code)
            }
        }
    }

    /// Every 200 ms: expired guest requests, new console lines, stage deadlines.
    async fn on_tick(&mut self) -> Flow {
        let now = Instant::now();
        self.pending.expire(now);
        self.keep_alive(now);
        let progress = self.console_progress(now);
        self.apply(progress).await
    }

    /// SIGTERM or SIGINT: stop the VM and exit.
    async fn on_signal(&mut self, name: &str) -> Flow {
        log::info!("{name}: stopping");
        let report = self
            .stop_all(self.spec.timeouts.shutdown, &format!("{name} received"))
            .await;
        Flow::Exit(if report.nothing_left { 0 } else { 1 })
    }
}
