//! The guest's end of the control channel: an AF_VSOCK connection to the host (CID 2,
//! port 1025 by default), dialled with backoff and re-dialled whenever it drops. Every
//! (re)connection starts with the greeting (Hello, the device report, the stages so
//! far), so a restarted host supervisor catches up without asking.

use protocol::control::{encode_frame, payload_len, HEADER_LEN};
use protocol::messages::{GuestMessage, HostMessage};
use protocol::ports::HOST_CID;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vsock::VsockStream;

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
}

impl std::fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLink")
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Why reading a host message failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("control channel closed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad control frame from host: {0}")]
    Codec(#[from] protocol::CodecError),
}

fn read_message(stream: &mut VsockStream) -> Result<HostMessage, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header)?;
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(serde_json::from_slice(&payload).map_err(protocol::CodecError::from)?)
}

impl ControlLink {
    /// Starts the connection thread. Messages from the host go to `incoming`; `greeting`
    /// is sent first on every connection.
    pub fn start(port: u32, greeting: Greeting, incoming: Sender<HostMessage>) -> ControlLink {
        let link = ControlLink {
            stream: Arc::new(Mutex::new(None)),
            connected: Arc::new(AtomicBool::new(false)),
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
            let mut stream = match VsockStream::connect_with_cid_port(HOST_CID, port) {
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
            if let Ok(mut slot) = self.stream.lock() {
                *slot = Some(writer);
            }
            self.connected.store(true, Ordering::SeqCst);
            let mut greeted = true;
            for msg in greeting() {
                greeted &= self.send(&msg);
            }
            if greeted {
                log::info!("control: greeting sent");
                loop {
                    match read_message(&mut stream) {
                        Ok(msg) => {
                            if incoming.send(msg).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            log::warn!("control: {e}; reconnecting");
                            break;
                        }
                    }
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
        match stream.write_all(&frame) {
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
