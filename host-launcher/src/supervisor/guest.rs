//! The guest's side of the control channel. Connections are accepted in a task of
//! their own, which refuses at once any AF_VSOCK peer whose CID is not the spec's or
//! whose source port is not one only PID 1 can bind (see `ControlListener::accept_from`).
//! A new connection is only a candidate: it replaces the current one when its first
//! message is a Hello that passes the Hello rule, so another VM on the same host can
//! neither take over the channel nor fail a running VM's connection.
//!
//! Inside the guest, only PID 1 may speak for it. The boot's first connection is PID
//! 1's (it dials before any other guest process exists); the supervisor hands it a
//! session token then, and a later connection takes over only when its Hello carries
//! that token. Configuration and secrets go to no other connection. Under
//! vhost-device-vsock the host sees no source port, so the token is what holds there;
//! a root process in the guest could still read the token from PID 1's memory or bind
//! a reserved port, and owns the guest anyway. On the current
//! connection, the supervisor sends a heartbeat every [`HEARTBEAT_INTERVAL`] and drops a
//! guest that stayed silent for [`PEER_SILENCE_LIMIT`] (the guest dials again). Each
//! guest message goes where it belongs: boot evidence to the readiness tracker,
//! answers to the request waiting for them.

use super::requests::GuestRequestError;
use super::{Flow, Supervisor};
use crate::control::{spawn_connection, Connection, ControlEvent, ControlListener};
use crate::readiness::assess_hello;
use crate::secrets;
use protocol::control::{HEARTBEAT_INTERVAL, PEER_SILENCE_LIMIT};
use protocol::messages::Hello;
use protocol::status::ControlRefusals;
use protocol::{GuestMessage, HostMessage};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Compares two tokens in time that does not depend on where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Accepts guest connections forever; each one's events go to `tx`. On AF_VSOCK a peer
/// whose CID is not `cid` is closed without a word.
pub async fn accept_guests(
    mut listener: ControlListener,
    cid: u32,
    tx: mpsc::Sender<ControlEvent>,
) {
    let mut id = 0u64;
    loop {
        match listener.accept_from(cid, "control").await {
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

/// Why a new control connection did not take over the channel.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdmitError {
    #[error("control connection {id} spoke before its Hello: closed")]
    NoHello {
        /// The connection.
        id: u64,
    },
    #[error("control connection {id} refused: its Hello {}", if *.presented { "carries a wrong session token" } else { "carries no session token, and this boot's first connection already has it" })]
    NoSession {
        /// The connection.
        id: u64,
        /// Whether it carried a token at all.
        presented: bool,
    },
    #[error("control connection {id} refused: {why}")]
    Refused {
        /// The connection.
        id: u64,
        /// What its Hello got wrong.
        #[source]
        why: crate::readiness::HelloRefused,
    },
}

/// The current connection and the ones that have not proven themselves yet.
#[derive(Debug)]
pub(super) struct Channel {
    /// The verified connection requests and config go to.
    pub current: Option<Connection>,
    /// Connections waiting for their Hello.
    candidates: Vec<Connection>,
    /// When the current connection last delivered a message.
    heard: Instant,
    /// When the last heartbeat went out.
    beat: Instant,
    /// This boot's session token, once its first connection was admitted.
    pub session: Option<String>,
    /// Connections refused for want of the token, for `status`.
    pub refused: ControlRefusals,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            current: None,
            candidates: Vec::new(),
            heard: Instant::now(),
            beat: Instant::now(),
            session: None,
            refused: ControlRefusals::default(),
        }
    }
}

impl Channel {
    fn take_candidate(&mut self, id: u64) -> Option<Connection> {
        let i = self.candidates.iter().position(|c| c.id == id)?;
        Some(self.candidates.swap_remove(i))
    }

    /// While stopping: candidates are tracked and a verified Hello makes one current;
    /// everything else waits for no one.
    pub(super) fn on_event_while_stopping(&mut self, ev: ControlEvent, cid: u32) {
        match ev {
            ControlEvent::Opened(conn) => self.candidates.push(conn),
            ControlEvent::Message { conn, msg } => {
                if let (Some(c), GuestMessage::Hello(h)) = (self.take_candidate(conn), &*msg) {
                    if assess_hello(h, cid, c.peer_cid).is_ok() && self.holds_session(h).is_ok() {
                        self.promote(c);
                    } else {
                        c.close();
                    }
                }
            }
            ControlEvent::Closed { conn, .. } => {
                self.take_candidate(conn);
                if self.current.as_ref().is_some_and(|c| c.id == conn) {
                    self.current = None;
                }
            }
        }
    }

    /// A candidate's first message: a Hello that passes the Hello rule makes it the
    /// current connection (the old one is closed); anything else closes the candidate
    /// and leaves the current connection alone. While `booting` (no verified Hello yet)
    /// a Hello that fails the rule is admitted anyway, so that the `control` stage fails
    /// with its reason: other VMs were already refused at accept.
    fn admit(
        &mut self,
        candidate: Connection,
        first: &GuestMessage,
        cid: u32,
        booting: bool,
    ) -> Result<(), AdmitError> {
        let GuestMessage::Hello(hello) = first else {
            candidate.close();
            return Err(AdmitError::NoHello { id: candidate.id });
        };
        if let Err(why) = assess_hello(hello, cid, candidate.peer_cid) {
            if !booting {
                candidate.close();
                return Err(AdmitError::Refused {
                    id: candidate.id,
                    why,
                });
            }
        }
        if !booting {
            if let Err(presented) = self.holds_session(hello) {
                candidate.close();
                let e = AdmitError::NoSession {
                    id: candidate.id,
                    presented,
                };
                self.refused.count += 1;
                self.refused.last = Some(e.to_string());
                self.refused.last_unix = super::now_unix();
                return Err(e);
            }
        }
        self.promote(candidate);
        Ok(())
    }

    /// Whether `hello` carries this boot's session token (before one was handed out, any
    /// Hello does); `Err(presented)` says whether it carried a token at all.
    fn holds_session(&self, hello: &Hello) -> Result<(), bool> {
        match (&self.session, &hello.session) {
            (None, _) => Ok(()),
            (Some(ours), Some(theirs)) if same_token(ours, theirs) => Ok(()),
            (Some(_), theirs) => Err(theirs.is_some()),
        }
    }

    /// Makes `conn` the current connection, closing the one it replaces.
    fn promote(&mut self, conn: Connection) {
        if let Some(old) = self.current.replace(conn) {
            log::info!(
                "guest reconnected: connection {} replaces {}",
                self.current.as_ref().map_or(0, |c| c.id),
                old.id
            );
            old.close();
        }
        self.heard = Instant::now();
    }
}

impl Supervisor {
    /// A control connection opened, closed or delivered a message.
    pub(super) async fn on_control(&mut self, ev: ControlEvent) -> Flow {
        let now = Instant::now();
        match ev {
            ControlEvent::Opened(conn) => {
                self.channel.candidates.push(conn);
                Flow::Continue
            }
            ControlEvent::Closed { conn, reason } => {
                if self.channel.take_candidate(conn).is_some() {
                    log::info!("control connection {conn} closed before its Hello: {reason}");
                } else if self.channel.current.as_ref().is_some_and(|c| c.id == conn) {
                    self.drop_current(&reason);
                }
                Flow::Continue
            }
            ControlEvent::Message { conn, msg } => {
                if self.channel.current.as_ref().is_some_and(|c| c.id == conn) {
                    self.channel.heard = now;
                    return self.on_guest_message(*msg, now).await;
                }
                match self.channel.take_candidate(conn) {
                    Some(candidate) => self.on_candidate_message(candidate, *msg, now).await,
                    None => {
                        log::debug!("message on stale connection {conn} ignored");
                        Flow::Continue
                    }
                }
            }
        }
    }

    /// The first message of a new connection: only a valid Hello makes it current.
    async fn on_candidate_message(
        &mut self,
        candidate: Connection,
        msg: GuestMessage,
        now: Instant,
    ) -> Flow {
        let booting = self.readiness.as_ref().is_some_and(|r| r.hello().is_none());
        match self.channel.admit(candidate, &msg, self.spec.cid, booting) {
            Ok(()) => self.on_guest_message(msg, now).await,
            Err(why) => {
                log::warn!("{why}");
                Flow::Continue
            }
        }
    }

    /// Forgets the current connection (closed, silent or refused) and fails what waits
    /// on it.
    fn drop_current(&mut self, reason: &str) {
        if let Some(c) = self.channel.current.take() {
            log::info!("control connection {} closed: {reason}", c.id);
            c.close();
        }
        self.pending
            .fail_all(|| GuestRequestError::ConnectionClosed(reason.to_string()));
    }

    /// On every tick: a heartbeat when one is due, and the silence check.
    pub(super) fn keep_alive(&mut self, now: Instant) {
        let Some(conn) = self.channel.current.clone() else {
            return;
        };
        if now.saturating_duration_since(self.channel.heard) > PEER_SILENCE_LIMIT {
            self.drop_current(&format!(
                "no message from the guest for {}s: treating it as gone (it dials again)",
                PEER_SILENCE_LIMIT.as_secs()
            ));
            return;
        }
        if now.saturating_duration_since(self.channel.beat) >= HEARTBEAT_INTERVAL {
            self.channel.beat = now;
            if !conn.post(HostMessage::Heartbeat) {
                self.drop_current("the guest does not take messages (heartbeat refused)");
            }
        }
    }

    /// A message from the current connection.
    async fn on_guest_message(&mut self, msg: GuestMessage, now: Instant) -> Flow {
        let peer = self.channel.current.as_ref().and_then(|c| c.peer_cid);
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
                    self.on_reconnect_hello(&h).await;
                    return Flow::Continue;
                }
                if assess_hello(&h, self.spec.cid, peer).is_ok() {
                    self.start_session();
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
            GuestMessage::Heartbeat => Flow::Continue,
            other => {
                if let Some(unsolicited) = self.pending.answer(other) {
                    log::debug!("unsolicited guest message {unsolicited:?}");
                }
                Flow::Continue
            }
        }
    }

    /// Hands the boot's first connection its session token (before anything else goes
    /// to it) and keeps the token where a `stop` without a supervisor finds it.
    fn start_session(&mut self) {
        let token = crate::supervisor::transfers::new_token();
        if let Some(conn) = &self.channel.current {
            if !conn.post(HostMessage::Session {
                token: token.clone(),
            }) {
                log::warn!("cannot hand the guest its session token: the connection is gone");
            }
        }
        if let Err(e) = crate::run_files::session(&self.run).write(&token) {
            log::warn!("{e}");
        }
        self.channel.session = Some(token);
    }

    /// A Hello after the boot's: a verified reconnect, handed the config again.
    async fn on_reconnect_hello(&mut self, hello: &Hello) {
        log::info!("guest reconnected (kernel {})", hello.kernel_release);
        if let (Some(conn), Ok(config)) = (
            self.channel.current.clone(),
            secrets::guest_config(&self.spec),
        ) {
            if let Err(e) = conn.send(HostMessage::Config(Box::new(config))).await {
                log::warn!("cannot resend GuestConfig: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::read_frame;
    use protocol::control::FrameReader;
    use tokio::net::UnixStream;

    fn hello(cid: u32) -> GuestMessage {
        GuestMessage::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            cid,
            kernel_release: "6.12".into(),
            boot_time_ms: 1,
            session: None,
        })
    }

    /// A connection as the supervisor holds it, and the peer's end.
    fn connection(id: u64) -> (Connection, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        let (tx, _rx) = mpsc::channel(8);
        (spawn_connection(id, Box::new(server), None, tx), client)
    }

    async fn closed(peer: &mut UnixStream) -> bool {
        let mut reader = FrameReader::new();
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                read_frame::<_, HostMessage>(peer, &mut reader)
            )
            .await,
            Ok(Ok(None))
        )
    }

    #[tokio::test]
    async fn only_a_verified_hello_takes_over_the_channel() {
        let mut ch = Channel::default();
        let (first, mut first_peer) = connection(1);
        ch.admit(first, &hello(10), 10, true).unwrap();
        assert_eq!(ch.current.as_ref().map(|c| c.id), Some(1));

        // After the boot: a wrong CID, a message before Hello, an old protocol version.
        let (liar, mut liar_peer) = connection(2);
        let e = ch.admit(liar, &hello(11), 10, false).unwrap_err();
        assert!(e.to_string().contains("says its CID is 11"), "{e}");
        let (chatty, mut chatty_peer) = connection(3);
        let e = ch
            .admit(chatty, &GuestMessage::Heartbeat, 10, false)
            .unwrap_err();
        assert!(e.to_string().contains("spoke before its Hello"), "{e}");
        assert_eq!(ch.current.as_ref().map(|c| c.id), Some(1), "unchanged");
        assert!(closed(&mut liar_peer).await && closed(&mut chatty_peer).await);

        // The real guest reconnecting replaces the old connection, which is closed.
        let (again, _again_peer) = connection(4);
        ch.admit(again, &hello(10), 10, false).unwrap();
        assert_eq!(ch.current.as_ref().map(|c| c.id), Some(4));
        assert!(closed(&mut first_peer).await);
    }

    #[tokio::test]
    async fn after_the_first_connection_only_the_session_token_takes_over() {
        let mut ch = Channel::default();
        let (first, _first_peer) = connection(1);
        ch.admit(first, &hello(10), 10, true).unwrap();
        ch.session = Some("0123abcd".into());
        let with = |token: Option<&str>| match hello(10) {
            GuestMessage::Hello(h) => GuestMessage::Hello(Hello {
                session: token.map(str::to_string),
                ..h
            }),
            other => other,
        };

        // Another guest process with a valid Hello, and one replaying a wrong token.
        let (bare, mut bare_peer) = connection(2);
        let e = ch.admit(bare, &with(None), 10, false).unwrap_err();
        assert!(e.to_string().contains("carries no session token"), "{e}");
        let (forged, mut forged_peer) = connection(3);
        let e = ch
            .admit(forged, &with(Some("0123abce")), 10, false)
            .unwrap_err();
        assert!(e.to_string().contains("wrong session token"), "{e}");
        assert!(closed(&mut bare_peer).await && closed(&mut forged_peer).await);
        assert_eq!(ch.current.as_ref().map(|c| c.id), Some(1), "PID 1 keeps it");
        assert_eq!(ch.refused.count, 2);

        // PID 1's own reconnect carries it.
        let (again, _again_peer) = connection(4);
        ch.admit(again, &with(Some("0123abcd")), 10, false).unwrap();
        assert_eq!(ch.current.as_ref().map(|c| c.id), Some(4));
    }
}
