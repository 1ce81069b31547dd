//! The guest's side of the control channel. Connections are accepted in a task of
//! their own, which refuses at once any AF_VSOCK peer whose CID is not the spec's. A
//! new connection is only a candidate: it replaces the current one when its first
//! message is a Hello that passes the Hello rule, so another VM on the same host can
//! neither take over the channel nor fail a running VM's connection. On the current
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
use protocol::{GuestMessage, HostMessage};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Accepts guest connections forever; each one's events go to `tx`. On AF_VSOCK a peer
/// whose CID is not `cid` is closed without a word.
pub async fn accept_guests(
    mut listener: ControlListener,
    cid: u32,
    tx: mpsc::Sender<ControlEvent>,
) {
    let mut id = 0u64;
    loop {
        match listener.accept().await {
            Ok((_stream, Some(peer))) if peer != cid => {
                log::warn!("control: refused a connection from CID {peer}: this VM is CID {cid}");
            }
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
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            current: None,
            candidates: Vec::new(),
            heard: Instant::now(),
            beat: Instant::now(),
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
                    if assess_hello(h, cid, c.peer_cid).is_ok() {
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
        let GuestMessage::Hello(hello) = msg else {
            log::warn!(
                "control connection {} spoke before its Hello: closed",
                candidate.id
            );
            candidate.close();
            return Flow::Continue;
        };
        let booting = self.readiness.as_ref().is_some_and(|r| r.hello().is_none());
        if let Err(why) = assess_hello(&hello, self.spec.cid, candidate.peer_cid) {
            if !booting {
                log::warn!("control connection {} refused: {why}", candidate.id);
                candidate.close();
                return Flow::Continue;
            }
            // During the boot it is our own guest that is wrong (other VMs were refused
            // at accept): the control stage fails with the reason.
        }
        self.channel.promote(candidate);
        self.on_guest_message(GuestMessage::Hello(hello), now).await
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

    /// A Hello after the boot's: a verified reconnect, handed the config again.
    async fn on_reconnect_hello(&mut self, hello: &Hello) {
        log::info!("guest reconnected (kernel {})", hello.kernel_release);
        if let (Some(conn), Ok(config)) = (
            self.channel.current.clone(),
            secrets::guest_config(&self.spec),
        ) {
            if let Err(e) = conn.send(HostMessage::Config(config)).await {
                log::warn!("cannot resend GuestConfig: {e}");
            }
        }
    }
}
