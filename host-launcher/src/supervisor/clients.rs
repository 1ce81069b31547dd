//! The server of `<run>/supervisor.sock` ([`crate::ipc`]): one task per client, one
//! request per connection. `watch` is served from the event history; `status`, `stop`
//! and the requests relayed to the guest (ping, query, probe, log) go to the main loop
//! as [`Command`]s.

use super::events::Events;
use super::requests::{Expect, GuestAnswer, GuestRequestError};
use super::transfers::{self, Waiting};
use crate::control::{read_frame, write_frame};
use crate::ipc::{Reply, Request, StopReport, VmStatus};
use protocol::control::FrameReader;
use protocol::{GuestMessage, HostMessage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// How long a guest request (status, ping) may take.
const GUEST_REQUEST: Duration = Duration::from_secs(10);
/// How long a query may take.
const GUEST_QUERY: Duration = Duration::from_secs(120);

/// How long a probe may take: a network check gets [`GUEST_QUERY`], a pgbench run its
/// own duration and a minute to connect its clients and report, a stream its own
/// deadline and ten seconds to report.
fn probe_deadline(probe: &protocol::messages::Probe) -> Duration {
    use protocol::messages::{Probe, STREAM_MAX_MS};
    match probe {
        Probe::Pgbench { seconds, .. } => Duration::from_secs(u64::from(*seconds) + 60),
        Probe::Stream { timeout_ms, .. } | Probe::VsockStream { timeout_ms, .. } => {
            Duration::from_millis((*timeout_ms).min(STREAM_MAX_MS) + 10_000)
        }
        _ => GUEST_QUERY,
    }
}
/// How long a promotion may take: asking the peer (its connect timeout) and up to a
/// minute for PostgreSQL to leave recovery.
const GUEST_PROMOTE: Duration = Duration::from_secs(150);

/// How long a backup or restore may take (a full backup of a large database under
/// emulation, or replaying a day of WAL).
pub(super) const GUEST_BACKUP: Duration = Duration::from_secs(4 * 3600);

/// What a client task asks of the main loop, which owns the VM's state.
#[derive(Debug)]
pub enum Command {
    /// The supervisor's part of the status.
    Snapshot(oneshot::Sender<VmStatus>),
    /// Relay `msg` to the guest and answer with the message that `expect`s it.
    Guest {
        /// The request (query-like ones get their id in the main loop).
        msg: Box<HostMessage>,
        /// The answer to wait for.
        expect: Expect,
        /// How long to wait for it.
        timeout: Duration,
        /// Where the answer goes.
        reply: oneshot::Sender<GuestAnswer>,
    },
    /// Stop the VM; the supervisor exits after answering.
    Stop {
        /// Seconds the guest may take (default: the spec's).
        deadline_secs: Option<u32>,
        /// Where the stop report goes.
        reply: oneshot::Sender<StopReport>,
    },
}

/// Accepts clients on the supervisor socket forever, one task each.
pub async fn serve_clients(
    listener: UnixListener,
    events: Arc<Events>,
    cmd: mpsc::Sender<Command>,
    waiting: Waiting,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(
                    stream,
                    events.clone(),
                    cmd.clone(),
                    waiting.clone(),
                ));
            }
            Err(e) => {
                log::warn!("supervisor socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Reads one request and answers it.
async fn serve_client(
    mut stream: UnixStream,
    events: Arc<Events>,
    cmd: mpsc::Sender<Command>,
    waiting: Waiting,
) {
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
            events.watch(&mut stream).await;
            return;
        }
        Request::Status => match status(&cmd).await {
            Some(status) => Reply::Status(Box::new(status)),
            None => return,
        },
        Request::Ping => {
            let t = Instant::now();
            match ask_guest(&cmd, HostMessage::Ping, Expect::Pong, GUEST_REQUEST).await {
                Ok(_) => Reply::Pong {
                    rtt_ms: crate::process::millis(t.elapsed()),
                },
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            }
        }
        Request::Query { sql } => {
            let msg = HostMessage::Query { id: 0, sql };
            relay(&cmd, msg, Expect::Query(0), GUEST_QUERY).await
        }
        Request::Probe { probe } => {
            let deadline = probe_deadline(&probe);
            let msg = HostMessage::Probe { id: 0, probe };
            relay(&cmd, msg, Expect::Probe(0), deadline).await
        }
        Request::ReadLog { log } => {
            let msg = HostMessage::ReadLog { id: 0, log };
            relay(&cmd, msg, Expect::Log(0), GUEST_QUERY).await
        }
        Request::SignalService { service, signal } => {
            let msg = HostMessage::SignalService {
                id: 0,
                service,
                signal,
            };
            relay(&cmd, msg, Expect::Signal(0), GUEST_QUERY).await
        }
        Request::Promote { force } => {
            let msg = HostMessage::Promote { id: 0, force };
            relay(&cmd, msg, Expect::Promote(0), GUEST_PROMOTE).await
        }
        Request::Backup { request } => {
            let msg = HostMessage::Backup { id: 0, request };
            relay(&cmd, msg, Expect::Backup(0), GUEST_BACKUP).await
        }
        Request::Transfer { transfer } => {
            transfers::serve(&mut stream, &cmd, &waiting, transfer).await
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

/// The supervisor's snapshot plus the guest's own status (or why there is none);
/// `None` when the main loop is gone.
pub(super) async fn status(cmd: &mpsc::Sender<Command>) -> Option<VmStatus> {
    let (tx, rx) = oneshot::channel();
    cmd.send(Command::Snapshot(tx)).await.ok()?;
    let mut status = rx.await.ok()?;
    if status.control_connected {
        match ask_guest(
            cmd,
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
    Some(status)
}

/// Relays a query, probe, log or backup request to the guest and turns its answer into
/// the reply.
async fn relay(
    cmd: &mpsc::Sender<Command>,
    msg: HostMessage,
    expect: Expect,
    timeout: Duration,
) -> Reply {
    match ask_guest(cmd, msg, expect, timeout).await {
        Ok(GuestMessage::QueryResult(r)) => Reply::QueryResult(r),
        Ok(GuestMessage::ProbeResult(r)) => Reply::ProbeResult(r),
        Ok(GuestMessage::LogContents(r)) => Reply::LogContents(r),
        Ok(GuestMessage::SignalResult(r)) => Reply::SignalResult(r),
        Ok(GuestMessage::PromoteResult(r)) => Reply::PromoteResult(r),
        Ok(GuestMessage::BackupAnswer(a)) => Reply::Backup(a),
        Ok(other) => Reply::Error {
            message: GuestRequestError::UnexpectedAnswer(Box::new(other)).to_string(),
        },
        Err(e) => Reply::Error {
            message: e.to_string(),
        },
    }
}

/// Has the main loop send `msg` to the guest and waits for the answer.
pub(super) async fn ask_guest(
    cmd: &mpsc::Sender<Command>,
    msg: HostMessage,
    expect: Expect,
    timeout: Duration,
) -> GuestAnswer {
    let (tx, rx) = oneshot::channel();
    cmd.send(Command::Guest {
        msg: Box::new(msg),
        expect,
        timeout,
        reply: tx,
    })
    .await
    .map_err(|_| GuestRequestError::SupervisorGone)?;
    rx.await.map_err(|_| GuestRequestError::SupervisorGone)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::QueryResult;

    /// Serves one request against a main loop that answers every guest request with
    /// `answer`; returns the reply the client read.
    async fn served(req: Request, answer: fn(HostMessage) -> GuestAnswer) -> Reply {
        let (server, mut client) = UnixStream::pair().unwrap();
        let (cmd_tx, mut cmd_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(c) = cmd_rx.recv().await {
                if let Command::Guest { msg, reply, .. } = c {
                    let _ = reply.send(answer(*msg));
                }
            }
        });
        let task = tokio::spawn(serve_client(
            server,
            Arc::new(Events::new()),
            cmd_tx,
            Waiting::default(),
        ));
        write_frame(&mut client, &req).await.unwrap();
        let mut reader = FrameReader::new();
        let reply = read_frame(&mut client, &mut reader).await.unwrap().unwrap();
        task.await.unwrap();
        reply
    }

    #[tokio::test]
    async fn a_query_is_relayed_and_its_result_answered() {
        let reply = served(
            Request::Query {
                sql: "select 1".into(),
            },
            |msg| match msg {
                HostMessage::Query { id, sql } => Ok(GuestMessage::QueryResult(QueryResult {
                    id,
                    ok: true,
                    output: sql,
                    truncated: false,
                })),
                other => panic!("{other:?}"),
            },
        )
        .await;
        assert_eq!(
            reply,
            Reply::QueryResult(QueryResult {
                id: 0,
                ok: true,
                output: "select 1".into(),
                truncated: false,
            })
        );
    }

    #[tokio::test]
    async fn relay_failures_and_wrong_answers_become_error_replies() {
        let reply = served(Request::Ping, |_| Err(GuestRequestError::Timeout)).await;
        assert_eq!(
            reply,
            Reply::Error {
                message: "the guest did not answer in time".into()
            }
        );
        let reply = served(
            Request::ReadLog {
                log: protocol::messages::GuestLog::Kernel,
            },
            |_| Ok(GuestMessage::Pong),
        )
        .await;
        assert_eq!(
            reply,
            Reply::Error {
                message: "unexpected answer Pong".into()
            }
        );
    }
}
