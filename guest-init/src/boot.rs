//! The boot sequence PID 1 runs after the system filesystems are up, one stage after
//! another, each worked through [`Reporter::run`]:
//!
//! | stage       | work                                                    |
//! |-------------|---------------------------------------------------------|
//! | `init`      | the mounts `main` made, and the kernel command line     |
//! | `devices`   | modules, the census, the running kernel's options       |
//! | `control`   | dial the host, say Hello, wait for the configuration    |
//! | `network`   | input policy; tap0 ↔ vsock to gvproxy, gateway answers  |
//! | `tailscale` | the data disk, then tailscaled and the join             |
//! | `postgres`  | backup disk and pgBackRest (if on); initdb or reuse, start, provision, listen on the tailnet |
//! | `ready`     | every stage above holds                                 |
//!
//! Two threads share the work: this one serves the host ([`crate::host_requests`])
//! from the moment the control channel exists, while a bring-up thread runs the slow
//! stages and then keeps postgres listening on the tailnet. So the host can always ask
//! for status or stop the guest, even in the middle of a stage.

use crate::backup::Backups;
use crate::cmdline::BootConfig;
use crate::control::ControlLink;
use crate::datadisk::{DataDisk, DiskError};
use crate::mounts::MountError;
use crate::net::{NetError, Network};
use crate::postgres::{PgError, Postgres};
use crate::report::Reporter;
use crate::running::Running;
use crate::tailscale::{Tailscale, TailscaleError};
use crate::{devices, host_requests, shutdown};
use protocol::evidence::{
    ControlEvidence, DevicesEvidence, InitEvidence, NetworkEvidence, ReadyEvidence,
};
use protocol::messages::{
    GuestMessage, GuestStatus, Hello, HostMessage, PostgresInfo, TailnetInfo,
};
use protocol::messages::{GuestService, ServiceSignal};
use protocol::{GuestConfig, Stage, StageReport, StageState};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use thiserror::Error;

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

/// Milliseconds since the kernel booted (CLOCK_BOOTTIME, like /proc/uptime but
/// readable before /proc is mounted and to the millisecond).
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        let ms = Duration::from(t).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    })
}

/// Why a stage after `control` does not hold.
#[derive(Debug, Error)]
pub enum StageError {
    #[error(transparent)]
    Firewall(#[from] crate::net::firewall::FirewallError),
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("data disk: {0}")]
    DataDisk(Arc<DiskError>),
    #[error(transparent)]
    Tailscale(#[from] TailscaleError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("restore onto the new data disk: {0}")]
    Restore(#[from] crate::backup::restore::RestoreError),
    #[error("running on localhost only: no tailnet address to listen on")]
    NoTailnet,
    #[error("not every stage holds: {0}")]
    NotReady(String),
}

/// State shared by the serving and bring-up threads.
#[derive(Debug)]
pub struct Guest {
    /// Stage reports, for the host and the console.
    pub reporter: Arc<Reporter>,
    /// What was started, for status and shutdown.
    running: Mutex<Running>,
    /// The data disk's mount.
    pub(crate) disk: DataDisk,
    /// The control channel.
    pub link: ControlLink,
    /// The host's configuration, once accepted.
    pub config: OnceLock<GuestConfig>,
    /// Backups, once the spec's backup settings were applied.
    pub backups: OnceLock<Arc<Backups>>,
}

/// Why a service could not be signalled on the host's request.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{0} is not running")]
    NotRunning(GuestService),
    #[error("{0} has no process right now (restarting)")]
    Restarting(GuestService),
}

impl Guest {
    /// What was started so far (a brief lock; clone the `Arc`s out).
    pub fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest's status for the host.
    pub fn status(&self) -> GuestStatus {
        let s = self.running();
        GuestStatus {
            uptime_ms: uptime_ms(),
            stages: self.reporter.summary(),
            network: s.network.as_ref().map(|n| n.counters()),
            tailnet: s.tailscale.as_ref().and_then(|t| t.current()),
            postgres: s.postgres.as_ref().map(|p| p.info()),
            services: s.statuses(),
            data_disk: self.disk.usage(),
            backup: self.backups.get().map(|b| Box::new(b.status())),
            init_memory: crate::own_memory::read(),
        }
    }

    /// Sends `signal` to a supervised service; its supervisor restarts it after an
    /// unexpected exit, as always. Returns what happened, for the host.
    pub fn signal_service(
        &self,
        service: GuestService,
        signal: ServiceSignal,
    ) -> Result<String, SignalError> {
        let sig = match signal {
            ServiceSignal::Term => nix::sys::signal::Signal::SIGTERM,
            ServiceSignal::Kill => nix::sys::signal::Signal::SIGKILL,
            ServiceSignal::Hup => nix::sys::signal::Signal::SIGHUP,
            ServiceSignal::Int => nix::sys::signal::Signal::SIGINT,
        };
        let running = self.running();
        let supervised = match service {
            GuestService::Postgres => running.postgres.as_ref().map(|p| p.service().clone()),
            GuestService::Tailscaled => running.tailscale.as_ref().map(|t| t.service().clone()),
        };
        drop(running);
        let supervised = supervised.ok_or(SignalError::NotRunning(service))?;
        let pid = supervised
            .send_signal(sig)
            .ok_or(SignalError::Restarting(service))?;
        log::warn!("{service} (pid {pid}): {sig} sent on the host's request");
        Ok(format!("{sig} sent to {service} (pid {pid})"))
    }

    /// Tells the host, then stops everything in order and powers off.
    pub fn shutdown(&self, reason: &str, deadline: Duration) -> ! {
        self.link.send(&GuestMessage::ShuttingDown {
            reason: reason.to_string(),
        });
        let mut disks = vec![&self.disk];
        if let Some(b) = self.backups.get() {
            disks.push(b.disk());
        }
        shutdown::run(reason, deadline, &mut self.running(), &disks)
    }
}

/// Runs the early stages, then serves the host until shutdown; never returns.
pub fn run(
    boot: BootConfig,
    init: Result<InitEvidence, MountError>,
    events: Receiver<Event>,
    event_tx: Sender<Event>,
) -> ! {
    let reporter = Arc::new(Reporter::new());
    reporter.run(Stage::Init, || init);
    reporter.run(Stage::Devices, || {
        let census = devices::take_census(boot.device_wait, &boot.extra_modules);
        let verdict = devices::verdict(&census);
        let evidence = DevicesEvidence::from(&census);
        reporter.set_devices(census);
        verdict.map(|()| evidence)
    });
    let link = dial_host(&boot, &reporter, event_tx);
    let guest = Arc::new(Guest {
        reporter,
        running: Mutex::default(),
        disk: DataDisk::data(DATA_DIR),
        link,
        config: OnceLock::new(),
        backups: OnceLock::new(),
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
                    crate::upkeep::watch_space(&bringer);
                    crate::upkeep::follow_tailnet(&bringer);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the bring-up thread: {e}");
    }
    host_requests::serve(&guest, &events, &config_tx)
}

/// Starts the control channel (`control` begins; it holds once the configuration is
/// applied) and relays the host's messages into the event queue.
fn dial_host(boot: &BootConfig, reporter: &Arc<Reporter>, event_tx: Sender<Event>) -> ControlLink {
    let hello = Hello {
        version: protocol::PROTOCOL_VERSION,
        cid: vsock::get_local_cid().unwrap_or(0),
        kernel_release: devices::kernel::release(),
        boot_time_ms: uptime_ms(),
    };
    let cid = hello.cid;
    reporter.set_hello(hello);
    let (host_tx, host_rx) = std::sync::mpsc::channel::<HostMessage>();
    let greeting_reporter = Arc::clone(reporter);
    let link = ControlLink::start(
        boot.control_port,
        Box::new(move || greeting_reporter.greeting()),
        host_tx,
    );
    reporter.attach(link.clone());
    host_requests::relay(host_rx, event_tx);
    reporter.started(
        Stage::Control,
        ControlEvidence {
            cid,
            port: Some(boot.control_port),
            hostname: None,
        },
    );
    link
}

/// The stages that need the host's configuration, in order.
fn bring_up(boot: &BootConfig, config: &GuestConfig, guest: &Guest) {
    let r = &guest.reporter;
    apply_identity(config);
    r.report(StageReport::ready(
        Stage::Control,
        ControlEvidence {
            cid: r.hello_cid(),
            port: None,
            hostname: Some(config.hostname.clone()),
        },
    ));
    r.run(Stage::Network, || start_network(boot, config, guest));
    let disk = mount_data_disk(boot, guest);
    if let (Ok(()), Some(b)) = (&disk, &config.backup) {
        let data_bytes = guest.disk.usage().map_or(0, |u| u.total_bytes);
        let backups = Backups::prepare(b, config.postgres.port, data_bytes);
        let _ = guest.backups.set(Arc::new(backups));
    }
    let keeps_identity = guest.backups.get().is_some_and(|b| b.usable());
    let tailnet = r.run(Stage::Tailscale, || {
        disk.clone().map_err(StageError::DataDisk)?;
        if keeps_identity {
            crate::backup::identity::restore_if_missing();
        }
        let info = join_tailnet(config, guest)?;
        if keeps_identity {
            crate::backup::identity::save();
        }
        Ok::<_, StageError>(info)
    });
    r.run(Stage::Postgres, || {
        disk.clone().map_err(StageError::DataDisk)?;
        start_postgres(config, tailnet.as_ref(), guest)
    });
    report_ready(r);
    if r.state(Stage::Postgres) == Some(StageState::Ready) {
        if let Some(b) = guest.backups.get() {
            b.start_schedule();
        }
    }
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

/// `network`: the input policy first, then tap0 and the forwarder (kept in `guest`
/// once started), until the gateway answers.
fn start_network(
    boot: &BootConfig,
    config: &GuestConfig,
    guest: &Guest,
) -> Result<NetworkEvidence, StageError> {
    let input_policy =
        crate::net::firewall::apply(config.postgres.port, crate::tailscale::TAILSCALE_PORT)?;
    let net = &config.network;
    let network = Arc::new(Network::start(
        net,
        boot.network_port,
        Arc::clone(&guest.reporter),
    )?);
    guest.running().network = Some(Arc::clone(&network));
    let rtt = network.wait_gateway(Duration::from_secs(60))?;
    Ok(NetworkEvidence {
        address: format!("{}/{}", net.address, net.prefix_len),
        gateway: net.gateway,
        mtu: net.mtu,
        gateway_answered_ms: Some(u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX)),
        recovered: false,
        input_policy,
    })
}

/// The data disk holds both tailscaled's state and the database; its failure fails
/// both stages (each gets the error).
fn mount_data_disk(boot: &BootConfig, guest: &Guest) -> Result<(), Arc<DiskError>> {
    let info = guest.disk.mount(&boot.data_disk).map_err(Arc::new)?;
    log::info!("data disk: {info}");
    Ok(())
}

/// `tailscale`: tailscaled under supervision (kept in `guest` even when the join
/// fails, so shutdown stops it), then the join.
fn join_tailnet(config: &GuestConfig, guest: &Guest) -> Result<TailnetInfo, StageError> {
    let ts = Arc::new(Tailscale::start(&config.tailscale)?);
    guest.running().tailscale = Some(Arc::clone(&ts));
    Ok(ts.join(
        &config.tailscale,
        &config.hostname,
        Duration::from_secs(150),
    )?)
}

/// `postgres`: the server starts even without a tailnet (on localhost, owned by
/// `guest`), but the stage holds only when it answers on the tailnet addresses.
fn start_postgres(
    config: &GuestConfig,
    tailnet: Option<&TailnetInfo>,
    guest: &Guest,
) -> Result<PostgresInfo, StageError> {
    let listen = tailnet.map(|t| t.ips.clone()).unwrap_or_default();
    let backups = guest.backups.get();
    let restored = match backups.and_then(|b| b.restore_on_boot().map(|t| (b, t))) {
        Some((b, target)) => Some(crate::backup::new_disk::onto_new_disk(b, target)?),
        None => None,
    };
    let archive = backups.and_then(|b| b.archive_settings());
    let pg = Arc::new(Postgres::start(
        &config.postgres,
        &config.hostname,
        &listen,
        archive,
    )?);
    guest.running().postgres = Some(Arc::clone(&pg));
    if let Some(what) = restored {
        log::warn!("{what}; waiting for recovery to finish");
        pg.wait_promoted(Duration::from_secs(3600))?;
    }
    pg.bring_up(&config.postgres)?;
    if tailnet.is_none() {
        return Err(StageError::NoTailnet);
    }
    Ok(pg.info())
}

/// Reports `ready` when every earlier stage holds, or why not (once).
pub(crate) fn report_ready(reporter: &Reporter) {
    let pending: Vec<String> = Stage::ALL
        .into_iter()
        .filter(|s| !matches!(s, Stage::Init | Stage::Ready))
        .filter_map(|s| match reporter.state(s) {
            Some(StageState::Ready) => None,
            Some(state) => Some(format!("{s} {state}")),
            None => Some(format!("{s} not reached")),
        })
        .collect();
    if pending.is_empty() {
        reporter.report(StageReport::ready(
            Stage::Ready,
            ReadyEvidence {
                uptime_ms: uptime_ms(),
            },
        ));
    } else if reporter.state(Stage::Ready).is_none() {
        reporter.report(StageReport::failed(
            Stage::Ready,
            StageError::NotReady(pending.join(", ")).to_string(),
        ));
    }
}
