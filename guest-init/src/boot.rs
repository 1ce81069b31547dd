//! The boot sequence PID 1 runs after the system filesystems are up: one stage after
//! another (devices, control, network, tailscale, postgres, ready), each reported.
//!
//! Two threads share the work: this one serves the host (status, queries, probes,
//! shutdown) from the moment the control channel exists, while a bring-up thread runs
//! the slow stages and then keeps postgres listening on the tailnet. So the host can
//! always ask for status or stop the guest, even in the middle of a stage.

use crate::cmdline::BootConfig;
use crate::control::ControlLink;
use crate::report::Reporter;
use crate::services::Services;
use crate::{datadisk, devices, net, postgres, shutdown, tailscale};
use protocol::messages::{GuestMessage, GuestStatus, Hello, HostMessage, QueryResult, TailnetInfo};
use protocol::{GuestConfig, Stage, StageState};
use serde_json::json;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// What the serving thread reacts to.
#[derive(Debug)]
pub enum Event {
    /// A message from the host.
    Host(HostMessage),
    /// A signal asked for power-off (SIGTERM, SIGINT, SIGPWR).
    PowerOff(String),
}

/// Where the data disk is mounted.
pub const DATA_DIR: &str = "/data";

/// How long services get to stop when a signal (not the host) asks for power-off.
const SIGNAL_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Milliseconds since the kernel booted (from /proc/uptime).
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|f| f.parse::<f64>().ok())
        })
        .map_or(0, |secs| (secs * 1000.0) as u64)
}

/// State shared by the serving and bring-up threads.
#[derive(Debug)]
struct Guest {
    reporter: Arc<Reporter>,
    services: Mutex<Services>,
    link: ControlLink,
    config: OnceLock<GuestConfig>,
}

impl Guest {
    fn services(&self) -> MutexGuard<'_, Services> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> GuestStatus {
        let s = self.services();
        GuestStatus {
            uptime_ms: uptime_ms(),
            stages: self.reporter.summary(),
            network: s.network.as_ref().map(|n| n.counters()),
            tailnet: s.tailscale.as_ref().and_then(|t| t.current()),
            postgres: s.postgres.as_ref().map(|p| p.info()),
            services: s.statuses(),
        }
    }

    fn shutdown(&self, reason: &str, deadline: Duration) -> ! {
        self.link.send(&GuestMessage::ShuttingDown {
            reason: reason.to_string(),
        });
        shutdown::run(reason, deadline, &mut self.services())
    }
}

/// Runs the early stages, then serves the host until shutdown; never returns.
pub fn run(
    boot: BootConfig,
    init_detail: serde_json::Value,
    events: Receiver<Event>,
    event_tx: Sender<Event>,
) -> ! {
    let reporter = Arc::new(Reporter::new());
    let init_ok = init_detail
        .get("mount_error")
        .is_none_or(serde_json::Value::is_null);
    reporter.stage(
        Stage::Init,
        if init_ok {
            StageState::Ready
        } else {
            StageState::Failed
        },
        init_detail,
    );

    devices_stage(&boot, &reporter);

    let hello = Hello {
        version: protocol::PROTOCOL_VERSION,
        cid: vsock::get_local_cid().unwrap_or(0),
        kernel_release: devices::kernel_release(),
        boot_time_ms: uptime_ms(),
    };
    reporter.set_hello(hello.clone());
    let (host_tx, host_rx) = std::sync::mpsc::channel::<HostMessage>();
    let greeting_reporter = Arc::clone(&reporter);
    let link = ControlLink::start(
        boot.control_port,
        Box::new(move || greeting_reporter.greeting()),
        host_tx,
    );
    reporter.attach(link.clone());
    forward_host_messages(host_rx, event_tx);
    reporter.stage(
        Stage::Control,
        StageState::Started,
        json!({ "cid": hello.cid, "port": boot.control_port }),
    );

    let guest = Arc::new(Guest {
        reporter,
        services: Mutex::default(),
        link,
        config: OnceLock::new(),
    });
    let (config_tx, config_rx) = std::sync::mpsc::channel::<GuestConfig>();
    let bringer = Arc::clone(&guest);
    let spawned = std::thread::Builder::new()
        .name("bring-up".into())
        .spawn(move || {
            if let Ok(config) = config_rx.recv() {
                bring_up(&boot, &config, &bringer);
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    reconcile(&bringer);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the bring-up thread: {e}");
    }
    serve(&guest, &events, &config_tx)
}

/// The `devices` stage: modules, census, kernel options; reported with the census.
fn devices_stage(boot: &BootConfig, reporter: &Reporter) {
    reporter.stage(Stage::Devices, StageState::Started, json!(null));
    let report = devices::run(boot.device_wait, &boot.extra_modules);
    let sockets_ok = report.of_kind("socket").any(|d| d.is_bound());
    let state = if sockets_ok && report.all_bound() {
        StageState::Ready
    } else {
        StageState::Failed
    };
    let summary = json!({
        "devices": report.devices.len(),
        "unbound": report.problems.len(),
        "waited_ms": report.waited_ms,
        "problems": report.problems,
        "missing_kernel_options": report.missing_kernel_options,
        "init_rss_kib": report.init_rss_kib,
    });
    reporter.set_devices(report);
    reporter.stage(Stage::Devices, state, summary);
}

/// Sets the clock and host name from the host's configuration.
fn apply_identity(config: &GuestConfig) {
    if let Some(ms) = config.host_time_unix_ms {
        let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
        let nanos = i64::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
        match nix::time::clock_settime(
            nix::time::ClockId::CLOCK_REALTIME,
            nix::sys::time::TimeSpec::new(secs, nanos),
        ) {
            Ok(()) => log::info!("clock set from the host ({ms} ms since the epoch)"),
            Err(e) => log::warn!("cannot set the clock: {e}"),
        }
    }
    if let Err(e) = nix::unistd::sethostname(&config.hostname) {
        log::warn!("cannot set host name {}: {e}", config.hostname);
    }
    let _ = std::fs::write("/etc/hostname", format!("{}\n", config.hostname));
}

/// Network, data disk, tailscale, postgres, in that order; each reports its own stage.
fn bring_up(boot: &BootConfig, config: &GuestConfig, guest: &Guest) {
    let reporter = &guest.reporter;
    apply_identity(config);
    reporter.stage(
        Stage::Control,
        StageState::Ready,
        json!({ "cid": reporter.hello_cid(), "hostname": config.hostname }),
    );

    // network
    reporter.stage(
        Stage::Network,
        StageState::Started,
        json!({ "address": config.network.address.to_string() }),
    );
    match net::Network::start(&config.network, boot.network_port, Arc::clone(reporter)) {
        Ok(network) => {
            let network = Arc::new(network);
            guest.services().network = Some(Arc::clone(&network));
            match network.wait_gateway(Duration::from_secs(60)) {
                Ok(rtt) => reporter.stage(
                    Stage::Network,
                    StageState::Ready,
                    json!({
                        "address": format!("{}/{}", config.network.address, config.network.prefix_len),
                        "gateway": config.network.gateway.to_string(),
                        "gateway_answered_ms": rtt.as_millis(),
                        "mtu": config.network.mtu,
                    }),
                ),
                Err(e) => reporter.stage(
                    Stage::Network,
                    StageState::Failed,
                    json!({ "error": e.to_string(), "counters": network.counters() }),
                ),
            }
        }
        Err(e) => reporter.stage(
            Stage::Network,
            StageState::Failed,
            json!({ "error": e.to_string() }),
        ),
    }

    // data disk: holds both tailscaled's state and the database
    match datadisk::prepare(&boot.data_disk, Path::new(DATA_DIR)) {
        Ok(info) => {
            log::info!("data disk: {info}");
            guest.services().data_mounted = true;
        }
        Err(e) => {
            let detail = json!({ "error": format!("data disk: {e}") });
            reporter.stage(Stage::Tailscale, StageState::Failed, detail.clone());
            reporter.stage(Stage::Postgres, StageState::Failed, detail);
            return;
        }
    }

    // tailscale
    reporter.stage(
        Stage::Tailscale,
        StageState::Started,
        json!({ "hostname": config.hostname }),
    );
    let tailnet = match join_tailnet(config, guest) {
        Ok(info) => {
            reporter.stage(
                Stage::Tailscale,
                StageState::Ready,
                json!({ "name": info.name, "ips": info.ips }),
            );
            Some(info)
        }
        Err(e) => {
            reporter.stage(
                Stage::Tailscale,
                StageState::Failed,
                json!({ "error": e.to_string() }),
            );
            None
        }
    };

    // postgres
    reporter.stage(Stage::Postgres, StageState::Started, json!(null));
    let listen = tailnet.as_ref().map(|t| t.ips.clone()).unwrap_or_default();
    match postgres::Postgres::start(&config.postgres, &listen) {
        Ok(pg) => {
            let pg = Arc::new(pg);
            guest.services().postgres = Some(Arc::clone(&pg));
            match (pg.bring_up(&config.postgres), tailnet.is_some()) {
                (Ok(()), true) => reporter.stage(Stage::Postgres, StageState::Ready, json!(pg.info())),
                (Ok(()), false) => reporter.stage(
                    Stage::Postgres,
                    StageState::Failed,
                    json!({ "error": "running on localhost only: no tailnet address to listen on", "info": pg.info() }),
                ),
                (Err(e), _) => reporter.stage(Stage::Postgres, StageState::Failed, json!({ "error": e.to_string() })),
            }
        }
        Err(e) => reporter.stage(
            Stage::Postgres,
            StageState::Failed,
            json!({ "error": e.to_string() }),
        ),
    }
    report_ready(reporter);
}

/// Reports `ready` (or why not) from the other stages' states.
/// Starts tailscaled under supervision (kept in `guest` even when the join fails, so
/// shutdown stops it) and joins the tailnet.
fn join_tailnet(
    config: &GuestConfig,
    guest: &Guest,
) -> Result<TailnetInfo, tailscale::TailscaleError> {
    let ts = Arc::new(tailscale::Tailscale::start(&config.tailscale)?);
    guest.services().tailscale = Some(Arc::clone(&ts));
    ts.join(
        &config.tailscale,
        &config.hostname,
        Duration::from_secs(150),
    )
}

fn report_ready(reporter: &Reporter) {
    let before_ready = [
        Stage::Devices,
        Stage::Control,
        Stage::Network,
        Stage::Tailscale,
        Stage::Postgres,
    ];
    if before_ready
        .iter()
        .all(|s| reporter.state(*s) == Some(StageState::Ready))
    {
        reporter.stage(
            Stage::Ready,
            StageState::Ready,
            json!({ "uptime_ms": uptime_ms() }),
        );
    } else if reporter.state(Stage::Ready).is_none() {
        reporter.stage(
            Stage::Ready,
            StageState::Failed,
            json!({ "stages": reporter.summary() }),
        );
    }
}

/// Relays host messages into the serving thread's event queue.
fn forward_host_messages(rx: Receiver<HostMessage>, tx: Sender<Event>) {
    std::thread::spawn(move || {
        for msg in rx {
            if tx.send(Event::Host(msg)).is_err() {
                return;
            }
        }
    });
}

/// Runs `work` on its own thread and sends its result, so slow psql runs or probes
/// never hold up the serving thread.
fn answer_later(link: &ControlLink, work: impl FnOnce() -> GuestMessage + Send + 'static) {
    let link = link.clone();
    std::thread::spawn(move || {
        link.send(&work());
    });
}

/// Serves the host for ever: configuration, status, queries, probes, shutdown.
fn serve(guest: &Guest, events: &Receiver<Event>, config_tx: &Sender<GuestConfig>) -> ! {
    let link = &guest.link;
    loop {
        let msg = match events.recv() {
            Ok(Event::Host(msg)) => msg,
            Ok(Event::PowerOff(reason)) => guest.shutdown(&reason, SIGNAL_SHUTDOWN_DEADLINE),
            Err(_) => guest.shutdown("event channel closed", Duration::from_secs(5)),
        };
        match msg {
            HostMessage::Config(config) => {
                if guest.config.get().is_some() {
                    log::info!("control: configuration already applied; ignoring the new one");
                } else if let Err(e) = config.validate() {
                    guest.reporter.stage(
                        Stage::Control,
                        StageState::Failed,
                        json!({ "error": format!("configuration rejected: {e}") }),
                    );
                } else if guest.config.set(config.clone()).is_ok() {
                    let _ = config_tx.send(config);
                }
            }
            HostMessage::Ping => {
                link.send(&GuestMessage::Pong);
            }
            HostMessage::StatusRequest => {
                link.send(&GuestMessage::Status(guest.status()));
            }
            HostMessage::Shutdown { deadline_secs } => guest.shutdown(
                "requested by the host",
                Duration::from_secs(u64::from(deadline_secs)),
            ),
            HostMessage::Query { id, sql } => match guest.config.get() {
                Some(config) => {
                    let port = config.postgres.port;
                    answer_later(link, move || {
                        GuestMessage::QueryResult(postgres::query(id, &sql, port))
                    });
                }
                None => {
                    link.send(&GuestMessage::QueryResult(QueryResult {
                        id,
                        ok: false,
                        output: "the guest is not configured yet".into(),
                    }));
                }
            },
            HostMessage::ReadLog { id, log } => answer_later(link, move || {
                let (ok, output) = match crate::logs::read_tail(log) {
                    Ok(text) => (true, text),
                    Err(e) => (false, e),
                };
                GuestMessage::LogContents(QueryResult { id, ok, output })
            }),
            HostMessage::Probe { id, probe } => match guest.config.get() {
                Some(config) => {
                    let (address, dns) = (config.network.address, config.network.dns);
                    answer_later(link, move || {
                        let (ok, output) = match net::probe::run(&probe, address, dns) {
                            Ok(o) => (true, o),
                            Err(e) => (false, e),
                        };
                        GuestMessage::ProbeResult(QueryResult { id, ok, output })
                    });
                }
                None => {
                    link.send(&GuestMessage::ProbeResult(QueryResult {
                        id,
                        ok: false,
                        output: "the network is not configured yet".into(),
                    }));
                }
            },
        }
    }
}

/// Follows the tailnet address: when it appears or changes, postgres is reconfigured to
/// listen there (localhost stays), and the stages are reported again.
fn reconcile(guest: &Guest) {
    let (ts, pg) = {
        let s = guest.services();
        (s.tailscale.clone(), s.postgres.clone())
    };
    let (Some(ts), Some(pg)) = (ts, pg) else {
        return;
    };
    let Some(info) = ts.current() else { return };
    if info.ips.is_empty() || pg.listening_on(&info.ips) {
        return;
    }
    let reporter = &guest.reporter;
    log::info!(
        "tailnet addresses now {:?}: reconfiguring postgres",
        info.ips
    );
    if reporter.state(Stage::Tailscale) != Some(StageState::Ready) {
        reporter.stage(
            Stage::Tailscale,
            StageState::Ready,
            json!({ "name": info.name, "ips": info.ips }),
        );
    }
    match pg.relisten(&info.ips) {
        Ok(()) => {
            reporter.stage(Stage::Postgres, StageState::Ready, json!(pg.info()));
            report_ready(reporter);
        }
        Err(e) => reporter.stage(
            Stage::Postgres,
            StageState::Failed,
            json!({ "error": e.to_string() }),
        ),
    }
}
