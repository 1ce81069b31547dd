//! Guest requests in flight: the supervisor relays a client's status, ping, query,
//! probe or log request to the guest and waits for the message that answers it. Here
//! queries get their ids, answers are matched to the request that expects them, and
//! requests past their deadline (or cut off by a closed connection or a stop) are told
//! why they got no answer.

use crate::control::ControlError;
use protocol::{GuestMessage, HostMessage};
use std::time::Instant;
use thiserror::Error;
use tokio::sync::oneshot;

/// Why a request relayed to the guest (status, ping, query, probe, log) got no answer.
#[derive(Debug, Error)]
pub enum GuestRequestError {
    #[error("the control channel is not connected")]
    NotConnected,
    #[error("the guest did not answer in time")]
    Timeout,
    #[error("the control connection closed: {0}")]
    ConnectionClosed(String),
    #[error("the VM is stopping")]
    Stopping,
    #[error("the supervisor is shutting down")]
    SupervisorGone,
    #[error(transparent)]
    Send(#[from] ControlError),
    #[error("unexpected answer {0:?}")]
    UnexpectedAnswer(Box<GuestMessage>),
}

/// The guest's answer to a relayed request, or why there is none.
pub type GuestAnswer = Result<GuestMessage, GuestRequestError>;

/// What the supervisor expects back from the guest for a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A `Status`.
    Status,
    /// A `Pong`.
    Pong,
    /// The `QueryResult` of this id.
    Query(u64),
    /// The `ProbeResult` of this id.
    Probe(u64),
    /// The `LogContents` of this id.
    Log(u64),
    /// The `SignalResult` of this id.
    Signal(u64),
    /// The `BackupAnswer` of this id.
    Backup(u64),
    /// The `TransferAnswer` of this id.
    Transfer(u64),
    /// The `PromoteResult` of this id.
    Promote(u64),
}

impl Expect {
    /// The request `msg` answers, if it answers one at all.
    pub fn answered_by(msg: &GuestMessage) -> Option<Expect> {
        match msg {
            GuestMessage::Status(_) => Some(Expect::Status),
            GuestMessage::Pong => Some(Expect::Pong),
            GuestMessage::QueryResult(q) => Some(Expect::Query(q.id)),
            GuestMessage::ProbeResult(q) => Some(Expect::Probe(q.id)),
            GuestMessage::LogContents(q) => Some(Expect::Log(q.id)),
            GuestMessage::SignalResult(q) => Some(Expect::Signal(q.id)),
            GuestMessage::BackupAnswer(a) => Some(Expect::Backup(a.id)),
            GuestMessage::TransferAnswer(a) => Some(Expect::Transfer(a.id)),
            GuestMessage::PromoteResult(q) => Some(Expect::Promote(q.id)),
            _ => None,
        }
    }
}

/// One request sent to the guest and not answered yet.
#[derive(Debug)]
struct Pending {
    expect: Expect,
    deadline: Instant,
    reply: oneshot::Sender<GuestAnswer>,
}

/// The requests waiting for the guest, and the next query id.
#[derive(Debug)]
pub struct PendingRequests {
    waiting: Vec<Pending>,
    next_id: u64,
}

impl Default for PendingRequests {
    fn default() -> Self {
        PendingRequests {
            waiting: Vec::new(),
            next_id: 1,
        }
    }
}

impl PendingRequests {
    /// Gives a query, probe or log request the next id and returns the answer to wait
    /// for; other messages keep `expect`.
    pub fn assign_id(&mut self, msg: &mut HostMessage, expect: Expect) -> Expect {
        let expect = match msg {
            HostMessage::Query { id, .. } => {
                *id = self.next_id;
                Expect::Query(self.next_id)
            }
            HostMessage::Probe { id, .. } => {
                *id = self.next_id;
                Expect::Probe(self.next_id)
            }
            HostMessage::ReadLog { id, .. } => {
                *id = self.next_id;
                Expect::Log(self.next_id)
            }
            HostMessage::SignalService { id, .. } => {
                *id = self.next_id;
                Expect::Signal(self.next_id)
            }
            HostMessage::Backup { id, .. } => {
                *id = self.next_id;
                Expect::Backup(self.next_id)
            }
            HostMessage::Transfer { id, .. } => {
                *id = self.next_id;
                Expect::Transfer(self.next_id)
            }
            HostMessage::Promote { id, .. } => {
                *id = self.next_id;
                Expect::Promote(self.next_id)
            }
            _ => return expect,
        };
        self.next_id += 1;
        expect
    }

    /// Waits for `expect` until `deadline`; the answer goes to `reply`.
    pub fn wait(&mut self, expect: Expect, deadline: Instant, reply: oneshot::Sender<GuestAnswer>) {
        self.waiting.push(Pending {
            expect,
            deadline,
            reply,
        });
    }

    /// Hands `msg` to the oldest request it answers; gives it back when none waits
    /// for it.
    pub fn answer(&mut self, msg: GuestMessage) -> Option<GuestMessage> {
        let expect = Expect::answered_by(&msg);
        match self.waiting.iter().position(|p| Some(p.expect) == expect) {
            Some(i) => {
                let p = self.waiting.remove(i);
                let _ = p.reply.send(Ok(msg));
                None
            }
            None => Some(msg),
        }
    }

    /// Tells every request whose deadline passed by `now` that the guest did not answer.
    pub fn expire(&mut self, now: Instant) {
        let (expired, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.waiting = waiting;
        for p in expired {
            let _ = p.reply.send(Err(GuestRequestError::Timeout));
        }
    }

    /// Ends every waiting request with the error `why` makes.
    pub fn fail_all(&mut self, why: impl Fn() -> GuestRequestError) {
        for p in self.waiting.drain(..) {
            let _ = p.reply.send(Err(why()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::QueryResult;
    use std::time::Duration;

    fn result(id: u64) -> QueryResult {
        QueryResult {
            id,
            ok: true,
            output: format!("answer {id}"),
            truncated: false,
        }
    }

    #[test]
    fn queries_get_increasing_ids_other_requests_keep_their_expectation() {
        let mut p = PendingRequests::default();
        let mut q = HostMessage::Query {
            id: 0,
            sql: "select 1".into(),
        };
        assert_eq!(p.assign_id(&mut q, Expect::Query(0)), Expect::Query(1));
        assert!(matches!(q, HostMessage::Query { id: 1, .. }));
        let mut l = HostMessage::ReadLog {
            id: 0,
            log: protocol::messages::GuestLog::Kernel,
        };
        assert_eq!(p.assign_id(&mut l, Expect::Log(0)), Expect::Log(2));
        let mut ping = HostMessage::Ping;
        assert_eq!(p.assign_id(&mut ping, Expect::Pong), Expect::Pong);
        assert_eq!(ping, HostMessage::Ping);
    }

    #[test]
    fn an_answer_goes_to_the_request_with_its_id() {
        let mut p = PendingRequests::default();
        let far = Instant::now() + Duration::from_secs(60);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        p.wait(Expect::Query(1), far, tx1);
        p.wait(Expect::Query(2), far, tx2);
        assert!(p.answer(GuestMessage::QueryResult(result(2))).is_none());
        assert_eq!(
            rx2.try_recv().unwrap().unwrap(),
            GuestMessage::QueryResult(result(2))
        );
        assert!(rx1.try_recv().is_err(), "query 1 still waits");
        // Nobody waits for a probe result or a pong: given back as unsolicited.
        let probe = GuestMessage::ProbeResult(result(1));
        assert_eq!(p.answer(probe.clone()), Some(probe));
        assert_eq!(p.answer(GuestMessage::Pong), Some(GuestMessage::Pong));
    }

    #[test]
    fn deadlines_and_stops_end_requests_with_their_reason() {
        let mut p = PendingRequests::default();
        let t0 = Instant::now();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        p.wait(Expect::Status, t0 + Duration::from_secs(1), tx1);
        p.wait(Expect::Pong, t0 + Duration::from_secs(10), tx2);
        p.expire(t0 + Duration::from_secs(1));
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Err(GuestRequestError::Timeout)
        ));
        assert!(rx2.try_recv().is_err(), "the ping still has time");
        p.fail_all(|| GuestRequestError::ConnectionClosed("EOF".into()));
        let e = rx2.try_recv().unwrap().unwrap_err();
        assert_eq!(e.to_string(), "the control connection closed: EOF");
        assert_eq!(p.answer(GuestMessage::Pong), Some(GuestMessage::Pong));
    }

    #[test]
    fn error_texts_say_why_there_is_no_answer() {
        let cases = [
            (
                GuestRequestError::NotConnected,
                "the control channel is not connected",
            ),
            (
                GuestRequestError::Timeout,
                "the guest did not answer in time",
            ),
            (GuestRequestError::Stopping, "the VM is stopping"),
            (
                GuestRequestError::SupervisorGone,
                "the supervisor is shutting down",
            ),
            (
                GuestRequestError::Send(ControlError::Closed),
                "the control connection is closed",
            ),
            (
                GuestRequestError::UnexpectedAnswer(Box::new(GuestMessage::Pong)),
                "unexpected answer Pong",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
