//! The guest's side of the control channel: connections are accepted in a task of their
//! own; in the main loop, the current connection is tracked (a reconnect replaces it)
//! and each guest message goes where it belongs: boot evidence to the readiness tracker,
//! answers to the request waiting for them.

use super::requests::GuestRequestError;
use super::{Flow, Supervisor};
use crate::control::{spawn_connection, ControlEvent, ControlListener};
use crate::secrets;
use protocol::{GuestMessage, HostMessage};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Accepts guest connections forever; each one's events go to `tx`.
pub async fn accept_guests(mut listener: ControlListener, tx: mpsc::Sender<ControlEvent>) {
    let mut id = 0u64;
    loop {
        match listener.accept().await {
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

impl Supervisor {
    /// A control connection opened, closed or delivered a message.
    pub(super) async fn on_control(&mut self, ev: ControlEvent) -> Flow {
        let now = Instant::now();
        match ev {
            ControlEvent::Opened(conn) => {
                if let Some(old) = &self.control {
                    log::info!(
                        "guest reconnected: connection {} replaces {}",
                        conn.id,
                        old.id
                    );
                }
                self.control = Some(conn);
                Flow::Continue
            }
            ControlEvent::Closed { conn, reason } => {
                if self.control.as_ref().is_some_and(|c| c.id == conn) {
                    log::info!("control connection {conn} closed: {reason}");
                    self.control = None;
                    self.pending
                        .fail_all(|| GuestRequestError::ConnectionClosed(reason.clone()));
                }
                Flow::Continue
            }
            ControlEvent::Message { conn, msg } => {
                if self.control.as_ref().is_none_or(|c| c.id != conn) {
                    log::debug!("message on stale connection {conn} ignored");
                    return Flow::Continue;
                }
                self.on_guest_message(*msg, now).await
            }
        }
    }

    /// A message from the current connection.
    async fn on_guest_message(&mut self, msg: GuestMessage, now: Instant) -> Flow {
        let peer = self.control.as_ref().and_then(|c| c.peer_cid);
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
                    self.on_reconnect_hello(h.cid, peer).await;
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
            other => {
                if let Some(unsolicited) = self.pending.answer(other) {
                    log::debug!("unsolicited guest message {unsolicited:?}");
                }
                Flow::Continue
            }
        }
    }

    /// A Hello after the boot's: a reconnect. Checked, then handed the config again.
    async fn on_reconnect_hello(&mut self, cid: u32, peer: Option<u32>) {
        let ok = cid == self.spec.cid && peer.is_none_or(|p| p == self.spec.cid);
        if !ok {
            log::warn!("reconnect with wrong CID {cid} (peer {peer:?}) refused");
            self.control = None;
            return;
        }
        if let (Some(conn), Ok(config)) = (self.control.clone(), secrets::guest_config(&self.spec))
        {
            if let Err(e) = conn.send(HostMessage::Config(config)).await {
                log::warn!("cannot resend GuestConfig: {e}");
            }
        }
    }
}
