//! The guest's end of the control channel: an AF_VSOCK connection to the host (CID 2,
//! port 1025 by default), dialled with backoff and re-dialled whenever it drops. Every
//! (re)connection starts with the greeting (Hello, the device report, the stages so
//! far), so a restarted host supervisor catches up without asking.
//!
//! The first connection of a boot is handed a session token
//! ([`HostMessage::Session`]); it stays in this process's memory and goes into the Hello
//! of every reconnect, which is how the host tells PID 1's reconnects from another
//! guest process dialling the same port (see `vsock_dial` for the source port).
//!
//! Liveness does not rely on the transport delivering a close: the guest sends a
//! heartbeat every [`HEARTBEAT_INTERVAL`] and drops a connection on which no complete
//! message arrived for [`PEER_SILENCE_LIMIT`] (a host that vanished, or one that sends
//! half a frame and stops). Garbage, oversize or unknown frames drop it at once. Writes
//! have a deadline too, so a host that stops reading cannot stall PID 1's threads.

use protocol::control::{encode_frame, FrameReader, HEARTBEAT_INTERVAL, PEER_SILENCE_LIMIT};
use protocol::messages::{GuestMessage, HostMessage};
use protocol::ports::HOST_CID;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vsock::VsockStream;

/// How long one read waits before the loop checks its timers.
const READ_TICK: Duration = Duration::from_millis(500);

/// How long one frame may take to write before the connection counts as stuck.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Most bytes handed to one write(2) on the vsock. A single write of more than about
/// 48 KiB stalls for good under QEMU's vhost-device-vsock (0.3.0, Linux 6.12 guest):
/// the host received 36,920 bytes of a 40 KiB frame and nothing more, while the same
/// frame written in 16 KiB pieces arrives in ~130 ms.
pub const WRITE_CHUNK: usize = 16 * 1024;

/// Backoff between connection attempts: starts small (the host listens before the VM
/// starts, so the first attempt usually works) and caps at a few seconds.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// The delay to wait now; the following one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self, first: Duration) {
        self.next = first;
    }
}

/// Builds the greeting sent at the start of every connection.
pub type Greeting = Box<dyn Fn() -> Vec<GuestMessage> + Send + Sync>;

/// Handle to the control channel; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ControlLink {
    stream: Arc<Mutex<Option<VsockStream>>>,
    connected: Arc<AtomicBool>,
    /// This boot's session token, once the host handed it over.
    session: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLink")
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Why a connection to the host was dropped.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("control channel closed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the host closed the control channel")]
    Closed,
    #[error("bad control frame from host: {0}")]
    Codec(#[from] protocol::CodecError),
    #[error(
        "no message from the host for {0:?} ({1} bytes of a frame pending): treating it as gone"
    )]
    Silent(Duration, usize),
    #[error("the host end is gone: a heartbeat could not be sent")]
    HeartbeatFailed,
}

/// The result of waiting for the next message on a connection.
#[derive(Debug)]
enum Next {
    Message(Box<HostMessage>),
    Idle,
}

/// Reads from `stream` for at most one [`READ_TICK`], returning a whole message when one
/// is buffered.
fn next_message(stream: &mut VsockStream, reader: &mut FrameReader) -> Result<Next, LinkError> {
    if let Some(msg) = reader.next_message()? {
        return Ok(Next::Message(Box::new(msg)));
    }
    let mut buf = [0u8; 8192];
    match stream.read(&mut buf) {
        Ok(0) => Err(LinkError::Closed),
        Ok(n) => {
            reader.push(&buf[..n]);
            Ok(match reader.next_message()? {
                Some(msg) => Next::Message(Box::new(msg)),
                None => Next::Idle,
            })
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(Next::Idle),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Next::Idle),
        Err(e) => Err(e.into()),
    }
}

impl ControlLink {
    /// Starts the connection thread. Messages from the host go to `incoming`; `greeting`
    /// is sent first on every connection.
    pub fn start(port: u32, greeting: Greeting, incoming: Sender<HostMessage>) -> ControlLink {
        let link = ControlLink {
            stream: Arc::new(Mutex::new(None)),
            connected: Arc::new(AtomicBool::new(false)),
            session: Arc::new(Mutex::new(None)),
        };
        let worker = link.clone();
        let spawned = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || worker.run(port, greeting, incoming));
        if let Err(e) = spawned {
            log::error!("cannot start the control channel thread: {e}");
        }
        link
    }

    fn run(&self, port: u32, greeting: Greeting, incoming: Sender<HostMessage>) {
        let first = Duration::from_millis(100);
        let mut backoff = Backoff::new(first, Duration::from_secs(5));
        let mut attempts: u64 = 0;
        loop {
            attempts += 1;
            let mut stream = match crate::vsock_dial::dial(HOST_CID, port) {
                Ok(s) => s,
                Err(e) => {
                    // Log the first failure and then every 10th, not every attempt.
                    if attempts == 1 || attempts.is_multiple_of(10) {
                        let hint = if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                            " (no vsock transport: the vsock driver is not bound; see the devices report)"
                        } else {
                            ""
                        };
                        log::warn!("control: connect to vsock {HOST_CID}:{port} failed (attempt {attempts}): {e}{hint}");
                    }
                    std::thread::sleep(backoff.next_delay());
                    continue;
                }
            };
            log::info!("control: connected to vsock {HOST_CID}:{port} after {attempts} attempt(s)");
            attempts = 0;
            backoff.reset(first);
            let writer = match stream.try_clone() {
                Ok(w) => w,
                Err(e) => {
                    log::warn!("control: cannot clone the socket: {e}");
                    continue;
                }
            };
            if let Err(e) = stream
                .set_read_timeout(Some(READ_TICK))
                .and_then(|()| writer.set_write_timeout(Some(WRITE_DEADLINE)))
            {
                log::warn!("control: cannot set socket timeouts: {e}");
                continue;
            }
            if let Ok(mut slot) = self.stream.lock() {
                *slot = Some(writer);
            }
            self.connected.store(true, Ordering::SeqCst);
            let mut greeted = true;
            for mut msg in greeting() {
                if let GuestMessage::Hello(hello) = &mut msg {
                    hello.session = self.session.lock().ok().and_then(|s| s.clone());
                }
                greeted &= self.send(&msg);
            }
            if greeted {
                log::info!("control: greeting sent");
                match self.serve_connection(&mut stream, &incoming) {
                    Ok(()) => return,
                    Err(e) => log::warn!("control: {e}; reconnecting"),
                }
            }
            self.connected.store(false, Ordering::SeqCst);
            if let Ok(mut slot) = self.stream.lock() {
                *slot = None;
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            std::thread::sleep(backoff.next_delay());
        }
    }

    /// Passes the host's messages on and keeps the heartbeats going until the connection
    /// fails (`Err`) or the receiving side of `incoming` is gone (`Ok`: PID 1 is
    /// shutting down).
    fn serve_connection(
        &self,
        stream: &mut VsockStream,
        incoming: &Sender<HostMessage>,
    ) -> Result<(), LinkError> {
        let mut reader = FrameReader::new();
        let mut last_heard = Instant::now();
        let mut last_beat = Instant::now();
        loop {
            match next_message(stream, &mut reader)? {
                Next::Message(msg) => {
                    last_heard = Instant::now();
                    match *msg {
                        HostMessage::Heartbeat => {}
                        HostMessage::Session { token } => {
                            if let Ok(mut s) = self.session.lock() {
                                *s = Some(token);
                            }
                            log::info!("control: this boot's session token received");
                        }
                        msg => {
                            if incoming.send(msg).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                Next::Idle => {}
            }
            if last_heard.elapsed() > PEER_SILENCE_LIMIT {
                return Err(LinkError::Silent(PEER_SILENCE_LIMIT, reader.buffered()));
            }
            if last_beat.elapsed() >= HEARTBEAT_INTERVAL {
                if !self.send(&GuestMessage::Heartbeat) {
                    return Err(LinkError::HeartbeatFailed);
                }
                last_beat = Instant::now();
            }
        }
    }

    /// Sends one message. Returns false (and drops it) when not connected or the write
    /// fails; stage state is re-sent in the next greeting, so nothing important is lost.
    pub fn send(&self, msg: &GuestMessage) -> bool {
        let frame = match encode_frame(msg) {
            Ok(f) => f,
            Err(e) => {
                log::error!("control: cannot encode message: {e}");
                return false;
            }
        };
        let Ok(mut slot) = self.stream.lock() else {
            return false;
        };
        let Some(stream) = slot.as_mut() else {
            return false;
        };
        match frame
            .chunks(WRITE_CHUNK)
            .try_for_each(|chunk| stream.write_all(chunk))
        {
            Ok(()) => true,
            Err(e) => {
                log::warn!("control: send failed: {e}");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                *slot = None;
                false
            }
        }
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
        b.reset(Duration::from_millis(100));
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
