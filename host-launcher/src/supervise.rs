//! The detached supervisor (`sovereign supervise --run-dir DIR`, started by `start`).
//! It owns everything of one VM: it listens on the control channel before anything
//! starts, launches vhost-device-vsock (QEMU), gvproxy and the VMM, follows the stages
//! (control messages + console markers, see [`crate::readiness`]), serves
//! `<run>/supervisor.sock` ([`crate::ipc`]), and on failure or `stop` shuts the guest
//! down and stops every process it started.

use crate::console::{rotate, ConsoleTail};
use crate::control::{spawn_connection, Connection, ControlEvent, ControlListener};
use crate::ipc::{
    Event, FailureReport, Phase, ProcessInfo, Reply, Request, StopReport, UpInfo, VmStatus,
};
use crate::paths::HostEnv;
use crate::readiness::{Failure, FailurePoint, Progress, Readiness};
use crate::rundir::{pid_alive, Role, RunDir};
use crate::spec::{Backend, Spec};
use crate::vmm::{self, LaunchPlan};
use crate::{process, secrets};
use protocol::control::FrameReader;
use protocol::{GuestMessage, HostMessage, Stage};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Lines of console kept as evidence.
const CONSOLE_TAIL: usize = 30;
/// How long a helper may take to create its socket.
const HELPER_READY: Duration = Duration::from_secs(15);
/// How long a guest request (status, ping) may take.
const GUEST_REQUEST: Duration = Duration::from_secs(10);
/// How long a query may take.
const GUEST_QUERY: Duration = Duration::from_secs(120);
/// Guest shutdown deadline when a boot failed with the control channel up.
const FAILED_BOOT_SHUTDOWN: u32 = 10;

/// Why the supervisor could not run at all (failures of the VM are reported as events).
#[derive(Debug, Error)]
pub enum SuperviseError {
    /// spec.json is missing or unreadable.
    #[error("cannot read the run spec {path}: {message}")]
    Spec {
        /// spec.json.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A socket could not be bound.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Reads the resolved spec `start` wrote into the run directory.
pub fn read_run_spec(run: &RunDir) -> Result<Spec, SuperviseError> {
    let path = run.spec_json();
    let bytes = std::fs::read(&path).map_err(|e| SuperviseError::Spec {
        path: path.clone(),
        message: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| SuperviseError::Spec {
        path,
        message: e.to_string(),
    })
}

/// Where the final failure report is kept for a client that connects too late.
pub fn result_file(run: &RunDir) -> PathBuf {
    run.root().join("failure.json")
}

/// Why a request relayed to the guest (status, ping, query, probe, log) got no answer.
#[derive(Debug, Error)]
pub enum GuestRequestError {
    /// No guest is connected on the control channel.
    #[error("the control channel is not connected")]
    NotConnected,
    /// The guest did not answer before the request's deadline.
    #[error("the guest did not answer in time")]
    Timeout,
    /// The control connection ended with the request unanswered.
    #[error("the control connection closed: {0}")]
    ConnectionClosed(String),
    /// The VM is being stopped; pending requests are dropped.
    #[error("the VM is stopping")]
    Stopping,
    /// The supervisor's main loop is gone.
    #[error("the supervisor is shutting down")]
    SupervisorGone,
    /// The request could not be written to the control connection.
    #[error(transparent)]
    Send(#[from] crate::control::ControlError),
    /// The guest answered with a message that does not answer this request.
    #[error("unexpected answer {0:?}")]
    UnexpectedAnswer(Box<GuestMessage>),
}

/// The guest's answer to a relayed request, or why there is none.
type GuestAnswer = Result<GuestMessage, GuestRequestError>;

/// What the supervisor expects back from the guest for a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status,
    Pong,
    Query(u64),
    Probe(u64),
    Log(u64),
}

/// A request from a client task to the main loop.
#[derive(Debug)]
enum Command {
    Snapshot(oneshot::Sender<VmStatus>),
    Guest {
        msg: HostMessage,
        expect: Expect,
        timeout: Duration,
        reply: oneshot::Sender<GuestAnswer>,
    },
    Stop {
        deadline_secs: Option<u32>,
        reply: oneshot::Sender<StopReport>,
    },
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    deadline: Instant,
    reply: oneshot::Sender<GuestAnswer>,
}

/// Event history shared with client tasks: `watch` replays it, then follows live.
#[derive(Debug)]
struct Events {
    history: Mutex<Vec<Event>>,
    live: broadcast::Sender<Event>,
    finals_delivered: AtomicUsize,
}

impl Events {
    fn emit(&self, ev: Event) {
        log::info!("event: {}", serde_json::to_string(&ev).unwrap_or_default());
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.push(ev.clone());
        let _ = self.live.send(ev);
    }

    /// Sends `ev` to a watcher. `false` ends the watch: the client left, or `ev` was
    /// the final event (then counted as delivered, which lets the supervisor know the
    /// starting CLI has heard the outcome).
    async fn deliver(&self, stream: &mut tokio::net::UnixStream, ev: Event) -> bool {
        let fin = is_final(&ev);
        if crate::control::write_frame(stream, &Reply::Event(ev))
            .await
            .is_err()
        {
            return false;
        }
        if fin {
            self.finals_delivered.fetch_add(1, Ordering::SeqCst);
        }
        !fin
    }
}

fn is_final(ev: &Event) -> bool {
    matches!(ev, Event::Up(_) | Event::Failed(_))
}

/// Runs the supervisor of the VM whose run directory is `run`; returns the exit code.
pub async fn run(run: RunDir) -> Result<i32, SuperviseError> {
    let spec = read_run_spec(&run)?;
    let env = HostEnv::detect();
    let plan = vmm::plan(&spec, &env);
    process::write_pid_file(&run, Role::Supervisor, std::process::id()).map_err(|e| {
        SuperviseError::Control(crate::control::ControlError::Io(std::io::Error::other(e)))
    })?;
    let _ = std::fs::remove_file(result_file(&run));

    let (live, _) = broadcast::channel(64);
    let events = Arc::new(Events {
        history: Mutex::new(Vec::new()),
        live,
        finals_delivered: AtomicUsize::new(0),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let _ = std::fs::remove_file(run.supervisor_socket());
    let ipc = UnixListener::bind(run.supervisor_socket()).map_err(|source| {
        crate::control::ControlError::Bind {
            what: run.supervisor_socket().display().to_string(),
            source,
        }
    })?;
    tokio::spawn(serve_clients(ipc, events.clone(), cmd_tx));

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
            let report = FailureReport {
                failure: Failure {
                    at: FailurePoint::Launch("control listener".into()),
                    reason: e.to_string(),
                    devices: None,
                    missing_kernel_options: vec![],
                    problems: vec![],
                },
                host_kernel_missing: vec![],
                console_tail: vec![],
                console_log: spec.console_log.clone(),
                vmm_log_tail: vec![],
                vmm_log: spec.log_file("vmm"),
                supervisor_log: spec.log_file("supervisor"),
                cleanup: StopReport {
                    clean: true,
                    nothing_left: true,
                    steps: vec!["nothing was started".into()],
                },
            };
            log::error!("{e}");
            if let Ok(json) = serde_json::to_vec_pretty(&report) {
                let _ = std::fs::write(result_file(&run), json);
            }
            events.emit(Event::Failed(Box::new(report)));
            wait_delivered(&events).await;
            let _ = std::fs::remove_file(run.supervisor_socket());
            let _ = std::fs::remove_file(run.pid_file(Role::Supervisor));
            return Ok(1);
        }
    };
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    tokio::spawn(accept_guests(control, ctl_tx.clone()));

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
        control: None,
        pending: Vec::new(),
        next_query: 1,
        guest_shutting_down: false,
        gvproxy_restarts: 0,
    };
    sup.main().await
}

/// Gives a watching `start` (possibly still connecting) up to 5 s to read the final event.
async fn wait_delivered(events: &Events) {
    let until = Instant::now() + Duration::from_secs(5);
    while events.finals_delivered.load(Ordering::SeqCst) == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of a log file (empty when unreadable).
fn tail_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            crate::console::clean_line(l.as_bytes())
                .chars()
                .take(2000)
                .collect()
        })
        .collect()
}

fn host_kernel_missing(spec: &Spec) -> Vec<String> {
    match crate::kernel::missing_options(&spec.kernel, spec.arch) {
        Ok(m) => m.into_iter().map(|m| m.to_string()).collect(),
        Err(e) => {
            log::info!("kernel options not checked: {e}");
            vec![]
        }
    }
}

async fn accept_guests(mut listener: ControlListener, tx: mpsc::Sender<ControlEvent>) {
    let mut id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                id += 1;
                log::info!(
                    "control connection {id} from {}",
                    peer.map_or("vhost-device-vsock".to_string(), |c| format!("CID {c}"))
                );
                let conn = spawn_connection(id, stream, peer, tx.clone());
                if tx.send(ControlEvent::Opened(conn)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!("control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn serve_clients(listener: UnixListener, events: Arc<Events>, cmd: mpsc::Sender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, events.clone(), cmd.clone()));
            }
            Err(e) => {
                log::warn!("supervisor socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn serve_client(
    mut stream: tokio::net::UnixStream,
    events: Arc<Events>,
    cmd: mpsc::Sender<Command>,
) {
    use crate::control::{read_frame, write_frame};
    let mut reader = FrameReader::new();
    let req: Request = match read_frame(&mut stream, &mut reader).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            let _ = write_frame(
                &mut stream,
                &Reply::Error {
                    message: e.to_string(),
                },
            )
            .await;
            return;
        }
    };
    let reply = match req {
        Request::Watch => {
            let (past, mut rx) = {
                let h = events.history.lock().unwrap_or_else(|p| p.into_inner());
                (h.clone(), events.live.subscribe())
            };
            for ev in past {
                if !events.deliver(&mut stream, ev).await {
                    return;
                }
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if !events.deliver(&mut stream, ev).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        log::warn!("watcher lagged {n} events")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
        Request::Status => {
            let (tx, rx) = oneshot::channel();
            if cmd.send(Command::Snapshot(tx)).await.is_err() {
                return;
            }
            let Ok(mut status) = rx.await else { return };
            if status.control_connected {
                match guest(
                    &cmd,
                    HostMessage::StatusRequest,
                    Expect::Status,
                    GUEST_REQUEST,
                )
                .await
                {
                    Ok(GuestMessage::Status(s)) => status.guest = Some(s),
                    Ok(other) => {
                        status.guest_error =
                            Some(GuestRequestError::UnexpectedAnswer(Box::new(other)).to_string())
                    }
                    Err(e) => status.guest_error = Some(e.to_string()),
                }
            } else {
                status.guest_error = Some(GuestRequestError::NotConnected.to_string());
            }
            Reply::Status(Box::new(status))
        }
        Request::Ping => {
            let t = Instant::now();
            match guest(&cmd, HostMessage::Ping, Expect::Pong, GUEST_REQUEST).await {
                Ok(_) => Reply::Pong {
                    rtt_ms: t.elapsed().as_millis() as u64,
                },
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            }
        }
        Request::Query { sql } => {
            let msg = HostMessage::Query { id: 0, sql };
            guest_result(&cmd, msg, Expect::Query(0)).await
        }
        Request::Probe { probe } => {
            let msg = HostMessage::Probe { id: 0, probe };
            guest_result(&cmd, msg, Expect::Probe(0)).await
        }
        Request::ReadLog { log } => {
            let msg = HostMessage::ReadLog { id: 0, log };
            guest_result(&cmd, msg, Expect::Log(0)).await
        }
        Request::Stop { deadline_secs } => {
            let (tx, rx) = oneshot::channel();
            if cmd
                .send(Command::Stop {
                    deadline_secs,
                    reply: tx,
                })
                .await
                .is_err()
            {
                return;
            }
            match rx.await {
                Ok(report) => Reply::Stopped(report),
                Err(_) => return,
            }
        }
    };
    if let Err(e) = write_frame(&mut stream, &reply).await {
        log::warn!("cannot answer a client: {e}");
    }
}

/// Relays a query, probe or log request to the guest and turns its answer into the reply.
async fn guest_result(cmd: &mpsc::Sender<Command>, msg: HostMessage, expect: Expect) -> Reply {
    match guest(cmd, msg, expect, GUEST_QUERY).await {
        Ok(GuestMessage::QueryResult(r)) => Reply::QueryResult(r),
        Ok(GuestMessage::ProbeResult(r)) => Reply::ProbeResult(r),
        Ok(GuestMessage::LogContents(r)) => Reply::LogContents(r),
        Ok(other) => Reply::Error {
            message: GuestRequestError::UnexpectedAnswer(Box::new(other)).to_string(),
        },
        Err(e) => Reply::Error {
            message: e.to_string(),
        },
    }
}

async fn guest(
    cmd: &mpsc::Sender<Command>,
    msg: HostMessage,
    expect: Expect,
    timeout: Duration,
) -> GuestAnswer {
    let (tx, rx) = oneshot::channel();
    cmd.send(Command::Guest {
        msg,
        expect,
        timeout,
        reply: tx,
    })
    .await
    .map_err(|_| GuestRequestError::SupervisorGone)?;
    rx.await.map_err(|_| GuestRequestError::SupervisorGone)?
}

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
    control: Option<Connection>,
    pending: Vec<Pending>,
    next_query: u64,
    guest_shutting_down: bool,
    gvproxy_restarts: u32,
    console: ConsoleTail,
}

enum Flow {
    Continue,
    Exit(i32),
}

impl Supervisor {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

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

    /// Starts the processes in order, each after the previous one's socket exists.
    async fn launch(&mut self) -> Result<(), Failure> {
        // The clock of the first stage starts now: helpers take a fraction of a second.
        self.readiness = Some(Readiness::new(
            self.spec.cid,
            self.spec.wait_for,
            self.spec.timeouts.clone(),
            Instant::now(),
        ));
        let commands = self.plan.commands.clone();
        for cmd in &commands {
            if let Err(e) = rotate(&cmd.log) {
                log::warn!("cannot move {} aside: {e}", cmd.log.display());
            }
            log::info!("starting {}: {}", cmd.role, cmd.shell_line());
            let launch_failure = |reason: String| Failure {
                at: FailurePoint::Launch(cmd.role.to_string()),
                reason,
                devices: None,
                missing_kernel_options: vec![],
                problems: vec![],
            };
            let mut child =
                process::spawn(cmd, &self.run).map_err(|e| launch_failure(e.to_string()))?;
            let pid = child.id().map_or(0, |p| p as i32);
            if let Err(e) = process::wait_ready(cmd, &mut child, HELPER_READY).await {
                self.pids.insert(cmd.role, pid);
                self.watch_child(cmd.role, child);
                return Err(launch_failure(e.to_string()));
            }
            self.pids.insert(cmd.role, pid);
            self.watch_child(cmd.role, child);
            self.events.emit(Event::Launched {
                role: cmd.role,
                pid,
                elapsed_ms: self.elapsed_ms(),
            });
        }
        Ok(())
    }

    fn watch_child(&self, role: Role, mut child: tokio::process::Child) {
        let tx = self.exit_tx.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    let _ = tx.send((role, status)).await;
                }
                Err(e) => log::warn!("cannot wait for {role}: {e}"),
            }
        });
    }

    /// Publishes progress; sends the GuestConfig when it becomes due (which may accept
    /// `control` and reach `wait_for`).
    async fn apply(&mut self, mut progress: Vec<Progress>) -> Flow {
        loop {
            for p in std::mem::take(&mut progress) {
                match p {
                    Progress::Accepted(line) => self.events.emit(Event::Stage(line)),
                    Progress::Up => {
                        self.phase = Phase::Up;
                        let r = self.readiness.as_ref();
                        self.events.emit(Event::Up(UpInfo {
                            elapsed_ms: self.elapsed_ms(),
                            wait_for: self.spec.wait_for,
                            hostname: self.spec.hostname.clone(),
                            tailnet: r.and_then(|r| r.tailnet().cloned()),
                            postgres_port: self.spec.postgres.port,
                            password_file: self.spec.postgres.superuser_password_file.clone(),
                            console_log: self.spec.console_log.clone(),
                            supervisor_pid: std::process::id(),
                        }));
                    }
                    Progress::Failed(f) => return Flow::Exit(self.fail(*f).await),
                }
            }
            match self.send_config_if_due().await {
                Some(p) if !p.is_empty() => progress = p,
                _ => return Flow::Continue,
            }
        }
    }

    /// Sends the GuestConfig once Hello was valid and the devices were accepted; returns
    /// the progress that caused.
    async fn send_config_if_due(&mut self) -> Option<Vec<Progress>> {
        let r = self.readiness.as_ref()?;
        let devices_accepted =
            r.status_of(Stage::Devices) == crate::readiness::StageStatus::Accepted;
        if !(r.config_due() && devices_accepted) {
            return None;
        }
        let conn = self.control.clone()?;
        let now = Instant::now();
        let config = match secrets::guest_config(&self.spec) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot build the guest configuration: {e}");
                return self
                    .readiness
                    .as_mut()
                    .map(|r| r.fail_now(Stage::Control, reason, now));
            }
        };
        match conn.send(HostMessage::Config(config)).await {
            Ok(()) => {
                log::info!("GuestConfig sent on connection {}", conn.id);
                self.readiness
                    .as_mut()
                    .map(|r| r.on_config_sent(Instant::now()))
            }
            Err(e) => {
                log::warn!("cannot send GuestConfig: {e}");
                None
            }
        }
    }

    async fn on_control(&mut self, ev: ControlEvent) -> Flow {
        let now = Instant::now();
        match ev {
            ControlEvent::Opened(conn) => {
                if let Some(old) = &self.control {
                    log::info!(
                        "guest reconnected: connection {} replaces {}",
                        conn.id,
                        old.id
                    );
                }
                self.control = Some(conn);
                Flow::Continue
            }
            ControlEvent::Closed { conn, reason } => {
                if self.control.as_ref().is_some_and(|c| c.id == conn) {
                    log::info!("control connection {conn} closed: {reason}");
                    self.control = None;
                    for p in self.pending.drain(..) {
                        let _ = p
                            .reply
                            .send(Err(GuestRequestError::ConnectionClosed(reason.clone())));
                    }
                }
                Flow::Continue
            }
            ControlEvent::Message { conn, msg } => {
                if self.control.as_ref().is_none_or(|c| c.id != conn) {
                    log::debug!("message on stale connection {conn} ignored");
                    return Flow::Continue;
                }
                self.on_guest_message(*msg, now).await
            }
        }
    }

    async fn on_guest_message(&mut self, msg: GuestMessage, now: Instant) -> Flow {
        let peer = self.control.as_ref().and_then(|c| c.peer_cid);
        match msg {
            GuestMessage::Hello(h) => {
                log::info!(
                    "hello: cid {} version {} kernel {}",
                    h.cid,
                    h.version,
                    h.kernel_release
                );
                let already = self.readiness.as_ref().is_some_and(|r| r.hello().is_some());
                if already {
                    // A reconnect after the boot: check it and hand the config over again.
                    let ok = h.cid == self.spec.cid && peer.is_none_or(|p| p == self.spec.cid);
                    if ok {
                        if let (Some(conn), Ok(config)) =
                            (self.control.clone(), secrets::guest_config(&self.spec))
                        {
                            if let Err(e) = conn.send(HostMessage::Config(config)).await {
                                log::warn!("cannot resend GuestConfig: {e}");
                            }
                        }
                    } else {
                        log::warn!("reconnect with wrong CID {} (peer {peer:?}) refused", h.cid);
                        self.control = None;
                    }
                    return Flow::Continue;
                }
                let p = self
                    .readiness
                    .as_mut()
                    .map(|r| r.on_hello(h, peer, now))
                    .unwrap_or_default();
                self.apply(p).await
            }
            GuestMessage::DeviceReport(d) => {
                let p = self
                    .readiness
                    .as_mut()
                    .map(|r| r.on_device_report(d, now))
                    .unwrap_or_default();
                self.apply(p).await
            }
            GuestMessage::Stage(s) => {
                log::info!(
                    "guest stage {} {}: {}",
                    s.stage,
                    s.state,
                    s.detail.summary()
                );
                let p = self
                    .readiness
                    .as_mut()
                    .map(|r| r.on_stage_report(&s, now))
                    .unwrap_or_default();
                self.apply(p).await
            }
            GuestMessage::ShuttingDown { reason } => {
                log::info!("guest is shutting down: {reason}");
                self.guest_shutting_down = true;
                Flow::Continue
            }
            other => {
                let expect = match &other {
                    GuestMessage::Status(_) => Some(Expect::Status),
                    GuestMessage::Pong => Some(Expect::Pong),
                    GuestMessage::QueryResult(q) => Some(Expect::Query(q.id)),
                    GuestMessage::ProbeResult(q) => Some(Expect::Probe(q.id)),
                    GuestMessage::LogContents(q) => Some(Expect::Log(q.id)),
                    _ => None,
                };
                match self.pending.iter().position(|p| Some(p.expect) == expect) {
                    Some(i) => {
                        let p = self.pending.remove(i);
                        let _ = p.reply.send(Ok(other));
                    }
                    None => log::debug!("unsolicited guest message {other:?}"),
                }
                Flow::Continue
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
                Flow::Continue
            }
            Command::Guest {
                mut msg,
                mut expect,
                timeout,
                reply,
            } => {
                let Some(conn) = self.control.clone() else {
                    let _ = reply.send(Err(GuestRequestError::NotConnected));
                    return Flow::Continue;
                };
                match &mut msg {
                    HostMessage::Query { id, .. } => {
                        *id = self.next_query;
                        expect = Expect::Query(self.next_query);
                        self.next_query += 1;
                    }
                    HostMessage::Probe { id, .. } => {
                        *id = self.next_query;
                        expect = Expect::Probe(self.next_query);
                        self.next_query += 1;
                    }
                    HostMessage::ReadLog { id, .. } => {
                        *id = self.next_query;
                        expect = Expect::Log(self.next_query);
                        self.next_query += 1;
                    }
                    _ => {}
                }
                match conn.send(msg).await {
                    Ok(()) => self.pending.push(Pending {
                        expect,
                        deadline: Instant::now() + timeout,
                        reply,
                    }),
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

    async fn on_tick(&mut self) -> Flow {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(i, _)| i)
            .collect();
        for i in expired.into_iter().rev() {
            let p = self.pending.remove(i);
            let _ = p.reply.send(Err(GuestRequestError::Timeout));
        }
        let lines = match self.console.poll() {
            Ok(l) => l,
            Err(e) => {
                log::warn!("cannot read {}: {e}", self.console.path().display());
                vec![]
            }
        };
        let mut progress = Vec::new();
        if let Some(r) = self.readiness.as_mut() {
            for line in &lines {
                if let Some(m) = protocol::marker::Marker::parse(line) {
                    log::debug!("console marker {}", m.stage);
                    progress.extend(r.on_marker(&m, now));
                }
            }
            progress.extend(r.tick(now));
        }
        self.apply(progress).await
    }

    async fn on_exit(&mut self, role: Role, status: std::process::ExitStatus) -> Flow {
        log::warn!("{role} exited: {status}");
        self.pids.remove(&role);
        let _ = std::fs::remove_file(self.run.pid_file(role));
        if self.phase == Phase::Up && role == Role::Gvproxy && self.gvproxy_restarts < 5 {
            self.gvproxy_restarts += 1;
            tokio::time::sleep(Duration::from_secs(u64::from(self.gvproxy_restarts))).await;
            if let Some(cmd) = self
                .plan
                .commands
                .iter()
                .find(|c| c.role == Role::Gvproxy)
                .cloned()
            {
                let _ = std::fs::remove_file(self.run.gvproxy_api_socket());
                let _ =
                    std::fs::remove_file(self.run.vsock_port_socket(protocol::ports::NETWORK_PORT));
                match process::spawn(&cmd, &self.run) {
                    Ok(child) => {
                        log::info!("gvproxy restarted (restart {})", self.gvproxy_restarts);
                        self.pids.insert(role, child.id().map_or(0, |p| p as i32));
                        self.watch_child(role, child);
                        return Flow::Continue;
                    }
                    Err(e) => log::warn!("cannot restart gvproxy: {e}"),
                }
            }
        }
        if self.phase == Phase::Up {
            let report = self
                .stop_all(FAILED_BOOT_SHUTDOWN, &format!("{role} exited ({status})"))
                .await;
            log::warn!("stopped after {role} exited: {:?}", report.steps);
            return Flow::Exit(1);
        }
        let now = Instant::now();
        let p = self
            .readiness
            .as_mut()
            .map(|r| r.on_process_exit(role.name(), &status.to_string(), now))
            .unwrap_or_default();
        if p.is_empty() && self.readiness.is_none() {
            return Flow::Continue;
        }
        self.apply(p).await
    }

    async fn on_signal(&mut self, name: &str) -> Flow {
        log::info!("{name}: stopping");
        let report = self
            .stop_all(self.spec.timeouts.shutdown, &format!("{name} received"))
            .await;
        Flow::Exit(if report.nothing_left { 0 } else { 1 })
    }

    /// Reports a failed boot: stops everything, then publishes the evidence.
    async fn fail(&mut self, failure: Failure) -> i32 {
        log::error!("boot failed at {}: {}", failure.at, failure.reason);
        self.phase = Phase::Failed;
        self.events.emit(Event::Stopping {
            reason: format!("{} failed: {}", failure.at, failure.reason),
        });
        let cleanup = self.stop_all(FAILED_BOOT_SHUTDOWN, "boot failed").await;
        // The console may hold the last words of a guest that died while stopping.
        let _ = self.console.poll();
        let report = FailureReport {
            failure,
            // Read only now: inflating the image takes about a second.
            host_kernel_missing: host_kernel_missing(&self.spec),
            console_tail: self
                .console
                .last_lines()
                .into_iter()
                .map(|l| l.chars().take(2000).collect())
                .collect(),
            console_log: self.spec.console_log.clone(),
            vmm_log_tail: tail_of(&self.spec.log_file("vmm"), 12),
            vmm_log: self.spec.log_file("vmm"),
            supervisor_log: self.spec.log_file("supervisor"),
            cleanup,
        };
        if let Ok(json) = serde_json::to_vec_pretty(&report) {
            let _ = std::fs::write(result_file(&self.run), json);
        }
        self.events.emit(Event::Failed(Box::new(report)));
        wait_delivered(&self.events).await;
        1
    }

    /// Current status without the guest's part.
    fn snapshot(&self) -> VmStatus {
        let processes = Role::ALL
            .iter()
            .filter(|r| **r != Role::VhostDeviceVsock || self.spec.vmm.backend == Backend::Qemu)
            .map(|&role| {
                let pid = if role == Role::Supervisor {
                    Some(std::process::id() as i32)
                } else {
                    self.pids.get(&role).copied()
                };
                ProcessInfo {
                    role,
                    pid,
                    alive: pid.is_some_and(|p| pid_alive(p, self.run.root())),
                }
            })
            .collect();
        VmStatus {
            name: self.spec.name.clone(),
            cid: self.spec.cid,
            backend: self.spec.vmm.backend.to_string(),
            phase: self.phase,
            elapsed_ms: Some(self.elapsed_ms()),
            processes,
            stages: self
                .readiness
                .as_ref()
                .map(|r| r.lines().to_vec())
                .unwrap_or_default(),
            control_connected: self.control.is_some(),
            hello: self.readiness.as_ref().and_then(|r| r.hello().cloned()),
            devices: self
                .readiness
                .as_ref()
                .and_then(|r| r.device_report().cloned()),
            guest: None,
            guest_error: None,
            console_log: self.spec.console_log.clone(),
            supervisor_log: self.spec.log_file("supervisor"),
        }
    }

    /// Waits for `role` to exit (reaped by its watcher), up to `limit`.
    async fn wait_exit(&mut self, role: Role, limit: Duration) -> Option<std::process::ExitStatus> {
        if !self.pids.contains_key(&role) {
            return None;
        }
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::select! {
                Some((r, status)) = self.exit_rx.recv() => {
                    self.pids.remove(&r);
                    let _ = std::fs::remove_file(self.run.pid_file(r));
                    log::info!("{r} exited: {status}");
                    if r == role {
                        return Some(status);
                    }
                }
                Some(ev) = self.ctl_rx.recv() => {
                    if let ControlEvent::Message { msg, .. } = ev {
                        if let GuestMessage::ShuttingDown { reason } = *msg {
                            log::info!("guest is shutting down: {reason}");
                            self.guest_shutting_down = true;
                        }
                    }
                }
                _ = tokio::time::sleep(left) => return None,
            }
        }
    }

    /// Shuts the guest down (control channel, then crosvm stop, then signals) and stops
    /// the helpers. Returns what happened; `nothing_left` only if every process is gone.
    async fn stop_all(&mut self, deadline_secs: u32, why: &str) -> StopReport {
        log::info!("stopping everything: {why}");
        if self.phase != Phase::Failed {
            self.phase = Phase::Stopping;
        }
        let mut steps = Vec::new();
        let mut clean = true;
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(GuestRequestError::Stopping));
        }
        if self.pids.contains_key(&Role::Vmm) {
            let mut exited = None;
            if let Some(conn) = self.control.clone() {
                match conn.send(HostMessage::Shutdown { deadline_secs }).await {
                    Ok(()) => {
                        steps.push(format!(
                            "asked the guest to shut down (deadline {deadline_secs}s)"
                        ));
                        exited = self
                            .wait_exit(Role::Vmm, Duration::from_secs(u64::from(deadline_secs) + 5))
                            .await;
                        if self.guest_shutting_down {
                            steps.push("the guest acknowledged the shutdown".into());
                        }
                    }
                    Err(e) => steps.push(format!("cannot ask the guest to shut down: {e}")),
                }
            } else {
                steps.push("no control connection: the guest cannot be asked to shut down".into());
                clean = false;
            }
            if exited.is_none()
                && self.spec.vmm.backend == Backend::Crosvm
                && self.pids.contains_key(&Role::Vmm)
            {
                let crosvm = vmm::program(&HostEnv::detect(), &self.spec.vmm.crosvm);
                let out = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::process::Command::new(&crosvm)
                        .args(vmm::crosvm::stop_args(&self.run))
                        .output(),
                )
                .await;
                steps.push(match out {
                    Ok(Ok(o)) => format!("crosvm stop: {}", o.status),
                    Ok(Err(e)) => format!("crosvm stop failed: {e}"),
                    Err(_) => "crosvm stop timed out".into(),
                });
                exited = self.wait_exit(Role::Vmm, Duration::from_secs(5)).await;
            }
            match exited {
                Some(status) => {
                    steps.push(format!("vmm exited ({status})"));
                    clean &= status.success() && self.guest_shutting_down;
                }
                None => {
                    clean = false;
                    if let Some(&pid) = self.pids.get(&Role::Vmm) {
                        let how = self.stop_pid(Role::Vmm, pid).await;
                        steps.push(format!("vmm did not exit by itself: {how:?}"));
                    }
                }
            }
        }
        for role in [Role::Gvproxy, Role::VhostDeviceVsock] {
            if let Some(&pid) = self.pids.get(&role) {
                let how = self.stop_pid(role, pid).await;
                steps.push(format!("{role}: {how:?}"));
            }
        }
        let mut left = Vec::new();
        for role in [Role::Vmm, Role::Gvproxy, Role::VhostDeviceVsock] {
            if let Some(pid) = self
                .run
                .recorded_pid(role)
                .or_else(|| self.pids.get(&role).copied())
            {
                if pid_alive(pid, self.run.root()) {
                    left.push(format!("{role} ({pid})"));
                    continue;
                }
            }
            let _ = std::fs::remove_file(self.run.pid_file(role));
        }
        let nothing_left = left.is_empty();
        if nothing_left {
            for f in [
                self.run.vhost_socket(),
                self.run.vsock_uds(),
                self.run.vsock_port_socket(protocol::ports::NETWORK_PORT),
                self.run.gvproxy_api_socket(),
                self.run.crosvm_socket(),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        steps.push(if nothing_left {
            "nothing left running".to_string()
        } else {
            format!("still running: {}", left.join(", "))
        });
        self.control = None;
        StopReport {
            clean: clean && nothing_left,
            nothing_left,
            steps,
        }
    }

    async fn stop_pid(&mut self, role: Role, pid: i32) -> process::Stopped {
        process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(role, Duration::from_secs(5)).await.is_some() {
            return process::Stopped::Terminated;
        }
        process::signal(pid, nix::sys::signal::Signal::SIGKILL);
        if self.wait_exit(role, Duration::from_secs(3)).await.is_some() {
            process::Stopped::Killed
        } else if pid_alive(pid, self.run.root()) {
            process::Stopped::Survived
        } else {
            process::Stopped::Killed
        }
    }

    /// Last duties before the process exits: its own pid file and socket.
    async fn finish(&mut self) {
        // Let a client read its reply (stop) before the socket disappears.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = std::fs::remove_file(self.run.supervisor_socket());
        let _ = std::fs::remove_file(self.run.pid_file(Role::Supervisor));
        let _ = std::fs::remove_file(self.run.vsock_port_socket(protocol::ports::CONTROL_PORT));
    }
}
