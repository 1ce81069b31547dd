//! Boot progress: console markers and the clock are fed to the readiness tracker, what
//! it accepts is published as events (up, or a failed boot), and the GuestConfig is
//! handed over as soon as the guest proved its devices and said Hello.

use super::{Flow, Supervisor};
use crate::ipc::{Event, Phase, UpInfo};
use crate::readiness::{Progress, StageStatus};
use crate::secrets;
use protocol::marker::Marker;
use protocol::{HostMessage, Stage};
use std::time::Instant;

impl Supervisor {
    /// Reads the console lines written since the last call and feeds their markers and
    /// the clock (stage deadlines) to the readiness tracker.
    pub(super) fn console_progress(&mut self, now: Instant) -> Vec<Progress> {
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
                if let Some(m) = Marker::parse(line) {
                    log::debug!("console marker {}", m.stage);
                    progress.extend(r.on_marker(&m, now));
                }
            }
            progress.extend(r.tick(now));
        }
        progress
    }

    /// Publishes progress; sends the GuestConfig when it becomes due (which may accept
    /// `control` and reach `wait_for`).
    pub(super) async fn apply(&mut self, mut progress: Vec<Progress>) -> Flow {
        loop {
            for p in std::mem::take(&mut progress) {
                match p {
                    Progress::Accepted(line) => self.events.emit(Event::Stage(line)),
                    Progress::Up => {
                        self.phase = Phase::Up;
                        self.events.emit(Event::Up(self.up_info()));
                        self.certify_tailnet_name().await;
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

    /// When the tailnet gave the VM a full name its certificate lacks (the first start
    /// in a tailnet), records it for every later certificate and hands the running
    /// server one that carries it, so `verify-full` works with that name at once.
    async fn certify_tailnet_name(&mut self) {
        let Some(name) = self
            .readiness
            .as_ref()
            .and_then(|r| r.tailnet().map(|t| t.name.clone()))
        else {
            return;
        };
        match crate::tls::learn_name(&self.spec, &name) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::warn!("cannot record the tailnet name {name} for the certificate: {e}");
                return;
            }
        }
        let (Some(conn), Ok(material)) = (
            self.channel.current.clone(),
            secrets::server_tls(&self.spec),
        ) else {
            log::warn!("cannot issue a certificate naming {name} now: the next start carries it");
            return;
        };
        match conn.send(HostMessage::Tls(material)).await {
            Ok(()) => log::info!("a certificate that also names {name} sent to the guest"),
            Err(e) => log::warn!("cannot send the certificate naming {name}: {e}"),
        }
    }

    /// What `start` prints once the VM is up.
    fn up_info(&self) -> UpInfo {
        UpInfo {
            elapsed_ms: self.elapsed_ms(),
            wait_for: self.spec.wait_for,
            hostname: self.spec.hostname.clone(),
            tailnet: self.readiness.as_ref().and_then(|r| r.tailnet().cloned()),
            postgres_port: self.spec.postgres.port,
            password_file: self.spec.postgres.superuser_password_file.clone(),
            console_log: self.spec.console_log.clone(),
            supervisor_pid: std::process::id(),
        }
    }

    /// Sends the GuestConfig once Hello was valid and the devices were accepted; returns
    /// the progress that caused.
    async fn send_config_if_due(&mut self) -> Option<Vec<Progress>> {
        let r = self.readiness.as_ref()?;
        let devices_accepted = r.status_of(Stage::Devices) == StageStatus::Accepted;
        if !(r.config_due() && devices_accepted) {
            return None;
        }
        let conn = self.channel.current.clone()?;
        let now = Instant::now();
        let config = match secrets::guest_config(&self.spec) {
            Ok(c) => protocol::GuestConfig {
                request: self.boot_request.clone(),
                ..c
            },
            Err(e) => {
                let reason = format!("cannot build the guest configuration: {e}");
                return self
                    .readiness
                    .as_mut()
                    .map(|r| r.fail_now(Stage::Control, reason, now));
            }
        };
        match conn.send(HostMessage::Config(Box::new(config))).await {
            Ok(()) => {
                log::info!("GuestConfig sent on connection {}", conn.id);
                if let Some(r) = self.boot_request.take() {
                    log::info!("the request {r:?} went to this boot; no later boot gets it");
                }
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
}
