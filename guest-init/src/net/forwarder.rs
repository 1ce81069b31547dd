//! The pump between tap0 and gvproxy: Ethernet frames in gvproxy's "hyperkit" framing
//! (u16 little-endian length + frame) over a stream socket, both directions at once.
//!
//! Unlike upstream gvforwarder, the TAP device outlives the connection: when gvproxy
//! goes away the pump keeps tap0 and its addresses, drops outbound frames while down
//! (the kernel's own queues give back-pressure while up), re-dials with backoff and
//! resumes. Buffers are allocated once per thread or connection, never per frame.

use crate::control::Backoff;
use protocol::hyperkit;
use protocol::messages::NetworkCounters;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opens a new stream to gvproxy, handshake done (see `super::dial_vsock`).
pub type Dialer = Box<dyn Fn() -> std::io::Result<OwnedFd> + Send>;

/// Link state changes, for stage reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected; `reconnect` is false for the first connection.
    Up {
        /// True after an outage.
        reconnect: bool,
    },
    /// The connection dropped, with the reason.
    Down(String),
}

/// Callback for link events.
pub type EventSink = Box<dyn Fn(LinkEvent) + Send>;

#[derive(Debug, Default)]
struct Counters {
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    drops: AtomicU64,
    reconnects: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    connected: AtomicBool,
    /// The live connection the tap reader writes to.
    current: Mutex<Option<Arc<File>>>,
    /// Why the live connection was cut from outside the pump (the liveness watchdog),
    /// reported instead of the read error the cut causes.
    cut_reason: Mutex<Option<String>>,
}

/// A running forwarder.
#[derive(Debug, Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

/// Most bytes of queued frames the tap reader gathers into one write to gvproxy: the
/// vsock write size that is safe under QEMU's vhost-device-vsock
/// ([`crate::control::WRITE_CHUNK`]).
const BATCH_BYTES: usize = crate::control::WRITE_CHUNK;

/// Whether another frame is waiting on tap0 (a poll that does not wait).
fn readable_now(tap: &File) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Cuts a connection so both pump threads notice.
fn cut(conn: &File) {
    let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}

impl Forwarder {
    /// Starts both directions. `mtu` bounds frame sizes (see
    /// [`hyperkit::max_frame_len`]).
    pub fn start(
        tap: File,
        mtu: u16,
        dial: Dialer,
        on_event: EventSink,
    ) -> std::io::Result<Forwarder> {
        let fwd = Forwarder {
            shared: Arc::new(Shared::default()),
        };
        let tap = Arc::new(tap);
        let max = hyperkit::max_frame_len(mtu);
        let reader = fwd.clone();
        let tap_r = Arc::clone(&tap);
        std::thread::Builder::new()
            .name("net-tap→host".into())
            .spawn(move || reader.tap_to_host(&tap_r, max))?;
        let dialer = fwd.clone();
        std::thread::Builder::new()
            .name("net-host→tap".into())
            .spawn(move || dialer.host_to_tap(&tap, max, &dial, &on_event))?;
        Ok(fwd)
    }

    /// Reads frames from tap0 for ever and sends them to the current connection: every
    /// frame already queued, up to [`BATCH_BYTES`], goes in one write, so a bulk upload
    /// costs one vsock write per ten frames or so instead of one per frame (the other
    /// direction batches its reads the same way, through a `BufReader`).
    fn tap_to_host(&self, tap: &File, max: usize) {
        let mut buf = vec![0u8; BATCH_BYTES + hyperkit::HEADER_LEN + 65_536];
        let c = &self.shared.counters;
        loop {
            let (mut len, mut frames, mut payload) = (0usize, 0u64, 0u64);
            while len == 0 || (len < BATCH_BYTES && readable_now(tap)) {
                let at = len + hyperkit::HEADER_LEN;
                let n = match (&*tap).read(&mut buf[at..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("net: reading tap0 failed: {e}; forwarding to the host stops");
                        return;
                    }
                };
                let Ok(header) = hyperkit::encode_header(n, max) else {
                    add(&c.drops, 1);
                    continue;
                };
                buf[len..at].copy_from_slice(&header);
                len = at + n;
                frames += 1;
                payload += n as u64;
            }
            let conn = self.shared.current.lock().ok().and_then(|g| g.clone());
            let Some(conn) = conn else {
                add(&c.drops, frames);
                continue;
            };
            match (&*conn).write_all(&buf[..len]) {
                Ok(()) => {
                    add(&c.frames_out, frames);
                    add(&c.bytes_out, payload);
                }
                Err(e) => {
                    log::warn!("net: sending to gvproxy failed: {e}");
                    add(&c.drops, frames);
                    cut(&conn);
                }
            }
        }
    }

    /// Dials gvproxy (with backoff), then copies its frames to tap0 until the
    /// connection ends; repeats for ever.
    fn host_to_tap(&self, tap: &File, max: usize, dial: &Dialer, on_event: &EventSink) {
        let first = Duration::from_millis(200);
        let mut backoff = Backoff::new(first, Duration::from_secs(5));
        let mut frame = vec![0u8; max];
        let mut ever_connected = false;
        let mut attempts = 0u64;
        loop {
            let conn = match dial() {
                Ok(fd) => Arc::new(File::from(fd)),
                Err(e) => {
                    attempts += 1;
                    if attempts == 1 || attempts.is_multiple_of(10) {
                        log::warn!("net: connecting to gvproxy failed (attempt {attempts}): {e}");
                    }
                    std::thread::sleep(backoff.next_delay());
                    continue;
                }
            };
            attempts = 0;
            backoff.reset(first);
            if ever_connected {
                add(&self.shared.counters.reconnects, 1);
            }
            if let Ok(mut cur) = self.shared.current.lock() {
                *cur = Some(Arc::clone(&conn));
            }
            self.shared.connected.store(true, Ordering::SeqCst);
            on_event(LinkEvent::Up {
                reconnect: ever_connected,
            });
            ever_connected = true;

            let read_error = self.pump_in(&conn, tap, &mut frame, max);
            let why = match self
                .shared
                .cut_reason
                .lock()
                .ok()
                .and_then(|mut r| r.take())
            {
                Some(reason) => reason,
                None => read_error,
            };

            self.shared.connected.store(false, Ordering::SeqCst);
            if let Ok(mut cur) = self.shared.current.lock() {
                *cur = None;
            }
            cut(&conn);
            log::warn!("net: link to gvproxy lost: {why}; reconnecting");
            on_event(LinkEvent::Down(why));
            std::thread::sleep(backoff.next_delay());
        }
    }

    /// Copies frames from one connection to tap0; returns why it stopped.
    fn pump_in(&self, conn: &File, tap: &File, frame: &mut [u8], max: usize) -> String {
        let c = &self.shared.counters;
        let mut reader = BufReader::with_capacity(256 * 1024, conn);
        loop {
            let mut header = [0u8; hyperkit::HEADER_LEN];
            if let Err(e) = reader.read_exact(&mut header) {
                return format!("read: {e}");
            }
            let len = match hyperkit::decode_header(header, max) {
                Ok(len) => len,
                Err(e) => return e.to_string(),
            };
            let Some(frame) = frame.get_mut(..len) else {
                return format!("frame of {len} bytes exceeds the buffer");
            };
            if let Err(e) = reader.read_exact(frame) {
                return format!("read: {e}");
            }
            // A TAP write takes a whole frame or nothing.
            match (&*tap).write(frame) {
                Ok(n) if n == len => {
                    add(&c.frames_in, 1);
                    add(&c.bytes_in, len as u64);
                }
                // The kernel refuses some frames (e.g. tap0 still down): drop, go on.
                Ok(_) | Err(_) => add(&c.drops, 1),
            }
        }
    }

    /// Current counters.
    pub fn counters(&self) -> NetworkCounters {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetworkCounters {
            connected: self.shared.connected.load(Ordering::SeqCst),
            frames_out: get(&c.frames_out),
            bytes_out: get(&c.bytes_out),
            frames_in: get(&c.frames_in),
            bytes_in: get(&c.bytes_in),
            drops: get(&c.drops),
            reconnects: get(&c.reconnects),
        }
    }

    /// Cuts the live connection (if any) for `reason`: the pump reports the link lost
    /// with that reason and dials again.
    pub fn cut_current(&self, reason: String) {
        let conn = self.shared.current.lock().ok().and_then(|g| g.clone());
        if let Some(conn) = conn {
            if let Ok(mut r) = self.shared.cut_reason.lock() {
                *r = Some(reason);
            }
            cut(&conn);
        }
    }

    /// True while connected to gvproxy.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::sync::mpsc;

    /// A forwarder on a fake tap (a datagram pair keeps frame boundaries) whose dialer
    /// hands out one end of a fresh stream pair per dial; returns the forwarder, the
    /// link events and the far ends ("gvproxy") as they are dialled.
    fn forwarder() -> (
        Forwarder,
        mpsc::Receiver<LinkEvent>,
        mpsc::Receiver<UnixStream>,
        UnixDatagram,
    ) {
        let (tap, kernel) = UnixDatagram::pair().unwrap();
        let (far_tx, far_rx) = mpsc::channel();
        let far_tx = Mutex::new(far_tx);
        let dial: Dialer = Box::new(move || {
            let (near, far) = UnixStream::pair()?;
            let _ = far_tx.lock().unwrap().send(far);
            Ok(OwnedFd::from(near))
        });
        let (ev_tx, ev_rx) = mpsc::channel();
        let ev_tx = Mutex::new(ev_tx);
        let on_event: EventSink = Box::new(move |e| {
            let _ = ev_tx.lock().unwrap().send(e);
        });
        let fwd = Forwarder::start(File::from(OwnedFd::from(tap)), 1500, dial, on_event).unwrap();
        (fwd, ev_rx, far_rx, kernel)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_cut_from_outside_is_reported_with_its_reason_and_redialled() {
        let (fwd, events, far, _kernel) = forwarder();
        let _first = far.recv_timeout(WAIT).unwrap();
        assert_eq!(
            events.recv_timeout(WAIT).unwrap(),
            LinkEvent::Up { reconnect: false }
        );
        fwd.cut_current("the gateway did not answer".into());
        assert_eq!(
            events.recv_timeout(WAIT).unwrap(),
            LinkEvent::Down("the gateway did not answer".into())
        );
        let _second = far.recv_timeout(WAIT).unwrap();
        assert_eq!(
            events.recv_timeout(WAIT).unwrap(),
            LinkEvent::Up { reconnect: true }
        );
        assert_eq!(fwd.counters().reconnects, 1);
    }

    #[test]
    fn frames_cross_both_ways_in_hyperkit_framing() {
        let (fwd, events, far, kernel) = forwarder();
        let mut gvproxy = far.recv_timeout(WAIT).unwrap();
        assert_eq!(
            events.recv_timeout(WAIT).unwrap(),
            LinkEvent::Up { reconnect: false }
        );
        kernel.send(&[0xab; 60]).unwrap();
        let mut got = [0u8; 62];
        gvproxy.read_exact(&mut got).unwrap();
        assert_eq!(&got[..2], &60u16.to_le_bytes());
        assert!(got[2..].iter().all(|b| *b == 0xab));
        let mut frame = 64u16.to_le_bytes().to_vec();
        frame.extend([0xcd; 64]);
        gvproxy.write_all(&frame).unwrap();
        let mut back = [0u8; 128];
        let n = kernel.recv(&mut back).unwrap();
        assert_eq!(&back[..n], &[0xcd; 64][..]);
        let c = settled(&fwd, |c| c.frames_out == 1 && c.frames_in == 1);
        assert_eq!((c.frames_out, c.frames_in), (1, 1));
    }

    /// The counters once `done` holds or [`WAIT`] passes: each is bumped just after the
    /// write that carried its frames, so a reader on the far side can be ahead of it.
    fn settled(fwd: &Forwarder, done: impl Fn(&NetworkCounters) -> bool) -> NetworkCounters {
        let t = std::time::Instant::now();
        loop {
            let c = fwd.counters();
            if done(&c) || t.elapsed() > WAIT {
                return c;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn queued_frames_go_out_together_whole_and_in_order() {
        let (fwd, events, far, kernel) = forwarder();
        let mut gvproxy = far.recv_timeout(WAIT).unwrap();
        assert_eq!(
            events.recv_timeout(WAIT).unwrap(),
            LinkEvent::Up { reconnect: false }
        );
        let frames: Vec<(u8, usize)> = (0u8..40)
            .map(|i| (i, 60 + (usize::from(i) * 97) % 1455))
            .collect();
        for (i, size) in &frames {
            kernel.send(&vec![*i; *size]).unwrap();
        }
        for (i, size) in &frames {
            let mut header = [0u8; 2];
            gvproxy.read_exact(&mut header).unwrap();
            assert_eq!(usize::from(u16::from_le_bytes(header)), *size, "frame {i}");
            let mut frame = vec![0u8; *size];
            gvproxy.read_exact(&mut frame).unwrap();
            assert!(frame.iter().all(|b| b == i), "frame {i}");
        }
        let c = settled(&fwd, |c| c.frames_out == 40);
        assert_eq!((c.frames_out, c.drops), (40, 0));
        let sent: usize = frames.iter().map(|(_, size)| size).sum();
        assert_eq!(c.bytes_out, sent as u64);
    }
}
