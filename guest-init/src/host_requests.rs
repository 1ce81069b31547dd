//! Serving the host: the configuration, status, queries, probes, log reads and
//! shutdown requests that arrive on the control channel (and power-off signals), for
//! as long as PID 1 runs. Slow answers (psql, probes, log reads) run on their own
//! threads so the serving thread is never held up.

use crate::guest::{Event, Guest};
use crate::{log_files, net, postgres};
use protocol::backup::{BackupAnswer, BackupRequest};
use protocol::messages::{GuestLog, GuestMessage, HostMessage, Probe, QueryResult};
use protocol::transfer::TransferAnswer;
use protocol::{GuestConfig, Stage, StageReport};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How long services get to stop when a signal (not the host) asks for power-off.
const SIGNAL_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Relays host messages into the serving thread's event queue. If the kernel refuses
/// the thread, the host's messages cannot be served: said once, and PID 1 goes on.
pub fn relay(rx: Receiver<HostMessage>, tx: Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("host-relay".into())
        .spawn(move || {
            for msg in rx {
                if tx.send(Event::Host(msg)).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the host message relay: {e}");
    }
}

/// Runs `work` on its own thread and sends its result. When the kernel refuses a
/// thread (`RLIMIT_NPROC`, memory), the host gets `refused(reason)` at once instead.
fn answer_later(
    guest: &Guest,
    work: impl FnOnce() -> GuestMessage + Send + 'static,
    refused: impl FnOnce(String) -> GuestMessage,
) {
    let link = guest.link.clone();
    let spawned = std::thread::Builder::new()
        .name("answer".into())
        .spawn(move || {
            link.send(&work());
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to answer the host: {e}");
        guest.link.send(&refused(format!(
            "the guest cannot start a thread now: {e}"
        )));
    }
}

/// Answers a request that needs the host's configuration: `job` builds the work from
/// it, which runs on its own thread and is cut to fit one frame; before the
/// configuration has arrived the request is refused at once.
fn answer_configured<W>(
    guest: &Guest,
    id: u64,
    wrap: fn(QueryResult) -> GuestMessage,
    job: impl FnOnce(&GuestConfig) -> W,
) where
    W: FnOnce() -> QueryResult + Send + 'static,
{
    match guest.config.get() {
        Some(config) => {
            let work = job(config);
            answer_later(
                guest,
                move || work().fit_to_frame(wrap),
                |why| wrap(failed(id, why)),
            );
        }
        None => {
            let refused = wrap(failed(id, "the guest is not configured yet".into()));
            guest.link.send(&refused);
        }
    }
}

fn failed(id: u64, output: String) -> QueryResult {
    QueryResult {
        id,
        ok: false,
        output,
        truncated: false,
    }
}

/// A finished answer, cut to fit one control frame (an answer too big to send would
/// leave the host waiting for its deadline).
fn result(id: u64, outcome: Result<String, impl std::fmt::Display>) -> QueryResult {
    let (ok, output) = match outcome {
        Ok(o) => (true, o),
        Err(e) => (false, e.to_string()),
    };
    QueryResult {
        id,
        ok,
        output,
        truncated: false,
    }
}

/// Hands a new certificate to the running server, on its own thread (psql); the
/// outcome goes to the guest's log, as nothing waits for an answer.
fn reload_tls(guest: &Guest, material: protocol::config::TlsMaterial) {
    let Some(pg) = guest.running().postgres.clone() else {
        log::warn!("a new TLS certificate arrived while postgres is not running: the next start brings its own");
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || match pg.reload_tls(&material) {
            Ok(()) => log::info!("postgres: new TLS certificate installed and reloaded"),
            Err(e) => log::warn!("postgres: the new TLS certificate was not taken: {e}"),
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to reload the TLS certificate: {e}");
    }
}

/// Serves the host for ever: configuration, status, queries, probes, backups, shutdown.
pub fn serve(guest: &Arc<Guest>, events: &Receiver<Event>, config_tx: &Sender<GuestConfig>) -> ! {
    loop {
        let msg = match events.recv() {
            Ok(Event::Host(msg)) => msg,
            Ok(Event::PowerOff(reason)) => guest.shutdown(&reason, SIGNAL_SHUTDOWN_DEADLINE),
            Err(_) => guest.shutdown("event channel closed", Duration::from_secs(5)),
        };
        match msg {
            HostMessage::Config(config) => accept_config(guest, *config, config_tx),
            HostMessage::Ping => {
                guest.link.send(&GuestMessage::Pong);
            }
            HostMessage::Alerts { active } => {
                guest.set_alerts(active);
                guest.link.send(&GuestMessage::Pong);
            }
            // Consumed by the control link (liveness, the session token); never here.
            HostMessage::Heartbeat | HostMessage::Session { .. } => {}
            HostMessage::SignalService {
                id,
                service,
                signal,
            } => {
                let outcome = guest.signal_service(service, signal);
                guest
                    .link
                    .send(&GuestMessage::SignalResult(result(id, outcome)));
            }
            HostMessage::StatusRequest => {
                guest.link.send(&GuestMessage::Status(guest.status()));
            }
            HostMessage::Shutdown { deadline_secs } => guest.shutdown(
                "requested by the host",
                Duration::from_secs(u64::from(deadline_secs)),
            ),
            HostMessage::Query { id, sql } => {
                answer_configured(guest, id, GuestMessage::QueryResult, |config| {
                    let port = config.postgres.port;
                    move || postgres::query::run(id, &sql, port)
                });
            }
            HostMessage::Backup { id, request } => {
                let g = Arc::clone(guest);
                answer_later(
                    guest,
                    move || GuestMessage::BackupAnswer(answer_backup(&g, id, &request)),
                    |why| GuestMessage::BackupAnswer(BackupAnswer::failed(id, why)),
                );
            }
            HostMessage::Transfer {
                id,
                token,
                transfer,
            } => {
                let g = Arc::clone(guest);
                answer_later(
                    guest,
                    move || {
                        GuestMessage::TransferAnswer(crate::transfer::serve(
                            &g, id, &token, &transfer,
                        ))
                    },
                    |why| GuestMessage::TransferAnswer(TransferAnswer::failed(id, why)),
                );
            }
            HostMessage::Tls(material) => reload_tls(guest, material),
            HostMessage::Promote { id, force } => {
                let g = Arc::clone(guest);
                answer_later(
                    guest,
                    move || GuestMessage::PromoteResult(result(id, promote(&g, force))),
                    |why| GuestMessage::PromoteResult(failed(id, why)),
                );
            }
            HostMessage::ReadLog { id, log } => answer_later(
                guest,
                move || result(id, read_log(log)).fit_to_frame(GuestMessage::LogContents),
                |why| GuestMessage::LogContents(failed(id, why)),
            ),
            HostMessage::Probe {
                id,
                probe:
                    Probe::Pgbench {
                        mode,
                        clients,
                        seconds,
                    },
            } => answer_configured(guest, id, GuestMessage::ProbeResult, |config| {
                let port = config.postgres.port;
                move || result(id, postgres::pgbench::run(mode, clients, seconds, port))
            }),
            HostMessage::Probe { id, probe } => {
                answer_configured(guest, id, GuestMessage::ProbeResult, |config| {
                    let (address, dns) = (config.network.address, config.network.dns);
                    move || result(id, net::probe::run(&probe, address, dns))
                });
            }
        }
    }
}

/// The end of `log`, printable, from the service that owns it.
fn read_log(log: GuestLog) -> Result<String, log_files::LogReadError> {
    let bytes = match log {
        GuestLog::Postgres => postgres::logs::tail(log_files::MAX_TAIL)?,
        GuestLog::Tailscaled => log_files::tail_of(
            std::path::Path::new(crate::tailscale::LOG),
            log_files::MAX_TAIL,
        )?,
        GuestLog::Kernel => {
            let ring = crate::kmsg::read_ring().join("\n").into_bytes();
            let cut = ring.len().saturating_sub(log_files::MAX_TAIL);
            ring[cut..].to_vec()
        }
        GuestLog::Pgbackrest => crate::backup::pgbackrest::log_tail(log_files::MAX_TAIL),
    };
    Ok(log_files::printable(&bytes))
}

/// Promotes this replica (on its own thread: it asks the peer and waits for recovery to
/// end).
fn promote(guest: &Guest, force: bool) -> Result<String, String> {
    let cfg = guest
        .config
        .get()
        .and_then(|c| c.postgres.replication.as_ref())
        .ok_or("this VM's spec has no [replication] table: there is nothing to promote")?;
    let pg = guest
        .running()
        .postgres
        .clone()
        .ok_or("postgres is not running")?;
    postgres::replication::promote::promote(&pg, cfg, force).map_err(|e| e.to_string())
}

/// Carries out a backup request (on its own thread: backups and restores take minutes).
fn answer_backup(guest: &Guest, id: u64, request: &BackupRequest) -> BackupAnswer {
    let Some(backups) = guest.backups.get() else {
        return BackupAnswer::failed(
            id,
            "backups are off in this VM's spec (backup.enabled = false), or the guest is not configured yet",
        );
    };
    match request {
        BackupRequest::Now { kind } => {
            let (local, offsite) = backups.run(*kind);
            let said = |run: &protocol::backup::BackupRun| match (&run.error, &run.label) {
                (Some(e), _) => format!("{kind} backup to repo{} failed: {e}", run.repo),
                (None, label) => format!(
                    "{kind} backup {} to repo{} done",
                    label.as_deref().unwrap_or_default(),
                    run.repo
                ),
            };
            let message = std::iter::once(&local)
                .chain(offsite.as_ref())
                .map(said)
                .collect::<Vec<_>>()
                .join("; ");
            BackupAnswer {
                ok: local.ok() && offsite.as_ref().is_none_or(|r| r.ok()),
                run: Some(local),
                offsite_run: offsite,
                ..BackupAnswer::done(id, message)
            }
        }
        BackupRequest::List => match backups.catalog() {
            Ok(catalog) => BackupAnswer {
                catalog: Some(catalog.clone()),
                ..BackupAnswer::done(id, format!("{} set(s)", catalog.sets.len()))
            },
            Err(e) => BackupAnswer::failed(id, e.to_string()),
        },
        BackupRequest::Verify => match backups.verify() {
            Ok(summary) => BackupAnswer::done(
                id,
                if summary.is_empty() {
                    "the repository verified: every set and archived WAL segment checks out".into()
                } else {
                    summary
                },
            ),
            Err(e) => BackupAnswer::failed(id, e.to_string()),
        },
        BackupRequest::Restore { target } => {
            match crate::backup::restore::run(guest, backups, target) {
                Ok(message) => BackupAnswer::done(id, message),
                Err(e) => BackupAnswer::failed(id, e.to_string()),
            }
        }
    }
}

/// Takes the first valid configuration and hands it to the bring-up thread; a second
/// one is ignored (the guest is configured once per boot).
fn accept_config(guest: &Guest, config: GuestConfig, config_tx: &Sender<GuestConfig>) {
    if guest.config.get().is_some() {
        log::info!("control: configuration already applied; ignoring the new one");
    } else if let Err(e) = config.validate() {
        guest.reporter.report(StageReport::failed(
            Stage::Control,
            format!("configuration rejected: {e}"),
        ));
    } else if guest.config.set(config.clone()).is_ok() {
        let _ = config_tx.send(config);
    }
}
