//! The boot sequence PID 1 runs after the system filesystems are up, one stage after
//! another, each worked through [`Reporter::run`]:
//!
//! | stage       | work                                                    |
//! |-------------|---------------------------------------------------------|
//! | `init`      | the mounts `main` made, and the kernel command line     |
//! | `devices`   | modules, the census, the running kernel's options       |
//! | `control`   | dial the host, say Hello, wait for the configuration    |
//! | `network`   | input policy; tap0 ↔ vsock to gvproxy, gateway answers  |
//! | `tailscale` | the data and backup disks, then tailscaled and the join |
//! | `postgres`  | this boot's request, initdb or reuse, start, provision, listen on the tailnet |
//! | `ready`     | every stage above holds                                 |
//!
//! Two threads share the work: this one serves the host ([`crate::host_requests`])
//! from the moment the control channel exists, while a bring-up thread runs the slow
//! stages and then keeps postgres listening on the tailnet ([`crate::upkeep`]). So the
//! host can always ask for status or stop the guest, even in the middle of a stage.
//! Their shared state is [`crate::guest::Guest`]; nothing imports this module: it is
//! the sequence, and only `main` starts it.

use crate::backup::Backups;
use crate::clock::uptime_ms;
use crate::cmdline::BootConfig;
use crate::control::ControlLink;
use crate::disks::{Disk, DiskError, DATA_MOUNT};
use crate::guest::{Event, Guest};
use crate::mounts::MountError;
use crate::net::{NetError, Network};
use crate::postgres::{PgError, Postgres};
use crate::stages::Reporter;
use crate::tailscale::{Tailscale, TailscaleError};
use crate::{devices, host_requests};
use protocol::config::BootRequest;
use protocol::evidence::{ControlEvidence, DevicesEvidence, InitEvidence, NetworkEvidence};
use protocol::messages::{Hello, HostMessage, PostgresInfo, TailnetInfo};
use protocol::{GuestConfig, Stage, StageReport, StageState};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why a stage after `control` does not hold.
#[derive(Debug, Error)]
pub enum StageError {
    #[error(transparent)]
    Firewall(#[from] crate::net::firewall::FirewallError),
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("data disk: {0}")]
    Disk(Arc<DiskError>),
    #[error(transparent)]
    Tailscale(#[from] TailscaleError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("restore onto the new data disk: {0}")]
    Restore(#[from] crate::backup::restore::RestoreError),
    #[error("running on localhost only: no tailnet address to listen on")]
    NoTailnet,
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
    let guest = Arc::new(Guest::new(reporter, Disk::data(DATA_MOUNT), link));
    let (config_tx, config_rx) = std::sync::mpsc::channel::<GuestConfig>();
    let bringer = Arc::clone(&guest);
    let spawned = std::thread::Builder::new()
        .name("bring-up".into())
        .spawn(move || {
            if let Ok(config) = config_rx.recv() {
                bring_up(&boot, &config, &bringer);
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    crate::upkeep::grow_disks(&bringer);
                    crate::upkeep::watch_space(&bringer);
                    crate::upkeep::follow_tailnet(&bringer);
                    crate::upkeep::watch_slots(&bringer);
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
        session: None,
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

/// Whether the stages may go on: not once power-off was asked for (a stage begun after
/// it would be cut off midway, as a first boot's initdb once was); said once.
fn may_go_on(stage: Stage) -> bool {
    if crate::lifecycle::stop::requested() {
        log::warn!("not starting the {stage} stage: shutdown was requested");
        return false;
    }
    true
}

/// The stages that need the host's configuration, in order; none begins once shutdown
/// was requested.
fn bring_up(boot: &BootConfig, config: &GuestConfig, guest: &Arc<Guest>) {
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
    if !may_go_on(Stage::Network) {
        return;
    }
    r.run(Stage::Network, || start_network(boot, config, guest));
    if !may_go_on(Stage::Tailscale) {
        return;
    }
    let mut disk = Ok(());
    let tailnet = r.run(Stage::Tailscale, || {
        disk = mount_disks(boot, config, guest);
        disk.clone().map_err(StageError::Disk)?;
        // The node's identity is kept on the backup disk too, so a lost data disk
        // does not make the VM a new node under a taken name.
        let keeps_identity = guest.backups.get().is_some_and(|b| b.usable());
        if keeps_identity {
            crate::backup::identity::restore_if_missing();
        }
        let info = join_tailnet(config, guest)?;
        if keeps_identity {
            crate::backup::identity::save();
        }
        Ok::<_, StageError>(info)
    });
    if !may_go_on(Stage::Postgres) {
        return;
    }
    if let Some(m) = config.metrics {
        crate::metrics::spawn(Arc::clone(guest), m.port);
    }
    r.run(Stage::Postgres, || {
        disk.clone().map_err(StageError::Disk)?;
        start_postgres(config, tailnet.as_ref(), guest)
    });
    if config.postgres.replication.is_some() {
        crate::fence_guard::spawn(Arc::clone(guest));
    }
    r.report_ready();
    if r.state(Stage::Postgres) == Some(StageState::Ready) {
        if let Some(b) = guest.backups.get() {
            if let Some(ip) = tailnet
                .as_ref()
                .and_then(|t| t.ips.iter().find(|ip| !ip.contains(':')))
            {
                b.serve_peers(ip);
            }
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
    let input_policy = crate::net::firewall::apply(
        &crate::net::firewall::Ports {
            postgres: config.postgres.port,
            wireguard: crate::tailscale::TAILSCALE_PORT,
            metrics: config.metrics.map(|m| m.port),
            backup_server: (config.postgres.replication.is_some() && config.backup.is_some())
                .then_some(crate::backup::cluster::SERVER_PORT),
        },
        &config.network,
    )?;
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
/// both stages (each gets the error). The backup disk follows it (when backups are
/// on); its own troubles only turn backups off, which status says.
fn mount_disks(
    boot: &BootConfig,
    config: &GuestConfig,
    guest: &Guest,
) -> Result<(), Arc<DiskError>> {
    let info = guest.disk.mount(&boot.data_disk).map_err(Arc::new)?;
    log::info!("data disk: {info}");
    if let Some(b) = &config.backup {
        let data_bytes = guest.disk.usage().map_or(0, |u| u.total_bytes);
        let cluster =
            config
                .postgres
                .replication
                .as_ref()
                .map(|r| crate::backup::cluster::ClusterRepo {
                    peers: r.peers.clone(),
                });
        let backups = Backups::prepare(b, config.postgres.port, data_bytes, cluster);
        let _ = guest.backups.set(Arc::new(backups));
    }
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
/// `guest`), but the stage holds only when it answers on the tailnet addresses. This
/// boot's request (a rejoin, a restore onto a new disk) is carried out first, and what
/// an interrupted earlier boot left is finished or undone.
fn start_postgres(
    config: &GuestConfig,
    tailnet: Option<&TailnetInfo>,
    guest: &Guest,
) -> Result<PostgresInfo, StageError> {
    let listen = tailnet.map(|t| t.ips.clone()).unwrap_or_default();
    let backups = guest.backups.get();
    let (restore, rejoin) = match &config.request {
        Some(BootRequest::RestoreOntoNewDisk { target }) => (
            Some(crate::backup::new_disk::Request {
                target,
                from_export: false,
            }),
            None,
        ),
        Some(BootRequest::ImportOntoNewDisk { target }) => (
            Some(crate::backup::new_disk::Request {
                target,
                from_export: true,
            }),
            None,
        ),
        Some(BootRequest::Rejoin { fresh }) => (None, Some(*fresh)),
        None => (None, None),
    };
    let on_boot = crate::backup::new_disk::on_boot(backups.map(|b| &**b), restore)?;
    let archive = backups.and_then(|b| b.archive_settings());
    let pg = Postgres::start(&config.postgres, &config.hostname, &listen, archive, rejoin)?
        .with_recovered(on_boot.recovered);
    let pg = Arc::new(pg);
    guest.running().postgres = Some(Arc::clone(&pg));
    if let Some(fence) = pg.boot_fence() {
        if let Ok(mut f) = guest.fence.lock() {
            *f = Some(fence);
        }
    }
    if let Some(what) = on_boot.restored {
        log::warn!("{what}; waiting for recovery to finish");
        let promoted = pg.wait_promoted(Duration::from_secs(3600));
        if let Some(b) = backups {
            b.recovery_finished();
        }
        promoted?;
        crate::backup::unfinished::marker()
            .clear()
            .map_err(PgError::Durable)?;
    }
    pg.bring_up(&config.postgres)?;
    if tailnet.is_none() {
        return Err(StageError::NoTailnet);
    }
    Ok(pg.info())
}
