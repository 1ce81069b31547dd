//! The supervisor's watch over its VM: every `[alerts] check_secs` it takes the same
//! status a client gets, judges it ([`crate::alerts::conditions`]), and hands the
//! notices to the sender thread; the active conditions go into every later status and
//! to the guest, whose Prometheus page carries them.

use super::clients::{ask_guest, status, Command};
use super::requests::Expect;
use super::{now_unix, Supervisor};
use crate::alerts::conditions::{evaluate, Found};
use crate::alerts::dispatch::Dispatcher;
use crate::alerts::notice::{Notice, NoticeKind};
use crate::alerts::tracker::Tracker;
use crate::paths::HostEnv;
use crate::spec::Spec;
use protocol::alerts::{ActiveAlert, Condition, Severity};
use protocol::status::Phase;
use protocol::HostMessage;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the supervisor, stopping because its VM failed, waits for that last notice.
const LAST_NOTICE_WAIT: Duration = Duration::from_secs(20);

/// How long the guest may take to take the active alerts.
const TELL_GUEST: Duration = Duration::from_secs(10);

/// The conditions that hold now, shared with the snapshot.
pub(super) type ActiveAlerts = Arc<Mutex<Vec<ActiveAlert>>>;

/// The watch's handles the main loop keeps.
#[derive(Debug)]
pub(super) struct Alerting {
    /// What `status` lists.
    pub(super) active: ActiveAlerts,
    /// The sender thread.
    pub(super) dispatcher: Dispatcher,
}

/// Sets up the sinks and starts the watch over the status the main loop (`cmd`)
/// serves.
pub(super) fn start(spec: &Spec, cmd: mpsc::Sender<Command>) -> Alerting {
    let sinks = crate::alerts::sinks(&spec.alerts, &HostEnv::detect()).unwrap_or_else(|e| {
        log::error!("{e}; alerts are only logged here");
        Vec::new()
    });
    if sinks.is_empty() {
        log::info!("alerts: no sink configured ([alerts] phone or webhook); conditions are logged and listed by status");
    }
    for s in &sinks {
        log::info!("alerts go to {}", s.name());
    }
    let dispatcher = Dispatcher::start(sinks);
    let active = ActiveAlerts::default();
    tokio::spawn(watch(spec.clone(), cmd, active.clone(), dispatcher.clone()));
    Alerting { active, dispatcher }
}

/// Judges the VM's status every `check_secs` while it is up, until the main loop is
/// gone.
async fn watch(spec: Spec, cmd: mpsc::Sender<Command>, active: ActiveAlerts, out: Dispatcher) {
    let mut tracker = Tracker::new(&spec.name, spec.alerts.repeat_secs);
    let mut every = tokio::time::interval(Duration::from_secs(spec.alerts.check_secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(s) = status(&cmd).await else { return };
        if s.phase != Phase::Up {
            continue;
        }
        let now = now_unix();
        let now_secs = i64::try_from(now).unwrap_or(i64::MAX);
        let mut found = evaluate(&s, &spec.backup, now_secs);
        let (_, ca) = crate::tls::ca_paths(&spec);
        let server = crate::tls::server_certificate_path(&spec);
        let certs = [
            ("CA", ca.as_path()),
            ("server certificate", server.as_path()),
        ];
        found.extend(crate::alerts::certificates::check(&certs, now_secs));
        let mut answered = s.guest.is_some();
        if spec.replication.is_some() && answered {
            match replication_conditions(&cmd, &spec, &s).await {
                Some(more) => found.extend(more),
                None => answered = false,
            }
        }
        let notices = tracker.update(now, found, answered);
        let now_active = tracker.active();
        *active.lock().unwrap_or_else(|p| p.into_inner()) = now_active.clone();
        if s.guest.is_some() {
            let told = HostMessage::Alerts { active: now_active };
            if let Err(e) = ask_guest(&cmd, told, Expect::Pong, TELL_GUEST).await {
                log::debug!("alerts: the guest was not told: {e}");
            }
        }
        for n in notices {
            log_notice(&n);
            out.post(n);
        }
    }
}

/// The replication conditions, from the status query the guest runs for the watch;
/// `None` when it did not answer, so that nothing clears on a missing answer.
async fn replication_conditions(
    cmd: &mpsc::Sender<Command>,
    spec: &Spec,
    s: &protocol::status::VmStatus,
) -> Option<Vec<Found>> {
    let query = HostMessage::Query {
        id: 0,
        sql: protocol::replication::STATUS_SQL.to_string(),
    };
    let answer = match ask_guest(cmd, query, Expect::Query(0), TELL_GUEST).await {
        Ok(protocol::GuestMessage::QueryResult(r)) if r.ok => r.output,
        Ok(_) => return None,
        Err(e) => {
            log::debug!("alerts: the replication status was not read: {e}");
            return None;
        }
    };
    let replication = protocol::replication::ReplicationStatus::parse(&answer)?;
    let limits = crate::alerts::replication::Limits {
        disconnected_after_secs: 2 * spec.alerts.check_secs,
        lag_secs: spec.alerts.replica_lag_secs,
        disk_bytes: s
            .guest
            .as_ref()
            .and_then(|g| g.data_disk)
            .map_or(0, |d| d.total_bytes),
    };
    Some(crate::alerts::replication::evaluate(&replication, &limits))
}

fn log_notice(n: &Notice) {
    match n.kind {
        NoticeKind::Cleared => log::info!("alert {}: {}", n.kind, n.title()),
        _ => log::warn!("alert {}: {}: {}", n.kind, n.title(), n.summary),
    }
}

impl Supervisor {
    /// The VM failed after it had been up: the one alert the watch cannot send, because
    /// the supervisor is about to exit. Sent now; [`Self::last_notices`] waits for it.
    pub(super) fn alert_vm_down(&self, why: &str) {
        let now = now_unix();
        let found = Found {
            condition: Condition::VmDown,
            severity: Severity::Critical,
            summary: why.to_string(),
        };
        let n = Notice {
            kind: NoticeKind::Raised,
            vm: self.spec.name.clone(),
            condition: found.condition,
            severity: found.severity,
            summary: found.summary,
            since_unix: now,
            at_unix: now,
        };
        log_notice(&n);
        self.alerting.dispatcher.post(n);
    }

    /// Gives queued notices up to [`LAST_NOTICE_WAIT`] to go out before the exit.
    pub(super) async fn last_notices(&self) {
        let d = self.alerting.dispatcher.clone();
        let sent = tokio::task::spawn_blocking(move || d.drain(LAST_NOTICE_WAIT))
            .await
            .unwrap_or(false);
        if !sent {
            log::warn!("alerts still queued at exit were not sent");
        }
    }
}
