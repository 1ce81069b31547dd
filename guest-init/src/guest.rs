//! The guest's state, shared by the thread that serves the host and the one that brings
//! the stages up: the stage reporter, what was started, the data disk, the control
//! channel, the host's configuration, backups and the fence's verdict; and what that
//! state answers: the status, a signal to a service, the power-off.

use crate::backup::Backups;
use crate::control::ControlLink;
use crate::disks::Disk;
use crate::lifecycle::running::Running;
use crate::stages::Reporter;
use protocol::alerts::ActiveAlert;
use protocol::messages::{GuestMessage, GuestService, GuestStatus, HostMessage, ServiceSignal};
use protocol::GuestConfig;
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

/// State shared by the serving and bring-up threads.
#[derive(Debug)]
pub struct Guest {
    /// Stage reports, for the host and the console.
    pub reporter: Arc<Reporter>,
    /// What was started, for status and shutdown.
    running: Mutex<Running>,
    /// The data disk's mount.
    pub(crate) disk: Disk,
    /// The control channel.
    pub link: ControlLink,
    /// The host's configuration, once accepted.
    pub config: OnceLock<GuestConfig>,
    /// Backups, once the spec's backup settings were applied.
    pub backups: OnceLock<Arc<Backups>>,
    /// A primary with a peer: its fence's last verdict ([`crate::fence_guard`]).
    pub fence: Mutex<Option<protocol::replication::Fence>>,
    /// The conditions the host's supervisor holds active, once it told any (for the
    /// Prometheus page).
    alerts: Mutex<Option<Vec<ActiveAlert>>>,
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
            uptime_ms: crate::clock::uptime_ms(),
            stages: self.reporter.summary(),
            network: s.network.as_ref().map(|n| n.counters()),
            tailnet: s.tailscale.as_ref().and_then(|t| t.current()),
            postgres: s.postgres.as_ref().map(|p| p.info()),
            services: s.statuses(),
            data_disk: self.disk.usage(),
            backup: self.backups.get().map(|b| Box::new(b.status())),
            init_memory: crate::own_memory::read(),
            fence: self.fence.lock().ok().and_then(|f| f.clone()),
            image: protocol::release::read(std::path::Path::new(protocol::release::RELEASE_FILE)),
        }
    }

    /// The supervisor's active alerts, as it last told them.
    pub fn alerts(&self) -> Option<Vec<ActiveAlert>> {
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps what the supervisor says is active now.
    pub fn set_alerts(&self, active: Vec<ActiveAlert>) {
        *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = Some(active);
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
        crate::lifecycle::stop::request();
        self.link.send(&GuestMessage::ShuttingDown {
            reason: reason.to_string(),
        });
        let mut disks = vec![&self.disk];
        if let Some(b) = self.backups.get() {
            disks.push(b.disk());
        }
        crate::lifecycle::shutdown::run(reason, deadline, &mut self.running(), &disks)
    }
}

impl Guest {
    /// The state before the host's configuration: the stages so far, the data disk's
    /// gate, the control channel.
    pub fn new(reporter: Arc<Reporter>, disk: Disk, link: ControlLink) -> Guest {
        Guest {
            reporter,
            running: Mutex::default(),
            disk,
            link,
            config: OnceLock::new(),
            backups: OnceLock::new(),
            fence: Mutex::default(),
            alerts: Mutex::default(),
        }
    }
}
