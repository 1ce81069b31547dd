//! Bulk streams the host asks for when it benchmarks the network path: over TCP through
//! the guest's kernel, the forwarder, vsock and gvproxy (what a user's traffic meets),
//! or over a vsock stream of their own (the ceiling any forwarder works under). The far
//! end times the transfer; the guest's own figure comes back as a cross-check.

use super::probe::ProbeError;
use crate::control::WRITE_CHUNK;
use protocol::messages::{StreamDirection, STREAM_MAX_BYTES};
use protocol::ports::HOST_CID;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use vsock::VsockStream;

/// Read buffer for downloads.
const READ_BUFFER: usize = 64 * 1024;

/// A connected stream that can end its sending half and bound its waits.
trait BulkStream: Read + Write {
    fn end_sending(&self) -> std::io::Result<()>;
    fn bound_waits(&self, limit: Duration) -> std::io::Result<()>;
}

impl BulkStream for TcpStream {
    fn end_sending(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn bound_waits(&self, limit: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(limit))?;
        self.set_write_timeout(Some(limit))
    }
}

impl BulkStream for VsockStream {
    fn end_sending(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn bound_waits(&self, limit: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(limit))?;
        self.set_write_timeout(Some(limit))
    }
}

/// Streams over TCP to `address` (`host:port`).
pub fn over_tcp(
    address: &str,
    direction: StreamDirection,
    bytes: u64,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let addr = address
        .to_socket_addrs()
        .map_err(|source| io_error("resolving", address, source))?
        .next()
        .ok_or_else(|| ProbeError::Unresolved(address.to_string()))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| io_error("connect", address, source))?;
    let before = forwarder_cpu_ms();
    let report = transfer(stream, address, direction, bytes, timeout, READ_BUFFER)?;
    Ok(match (before, forwarder_cpu_ms()) {
        (Some(b), Some(a)) => format!("{report}; forwarder CPU {} ms", a.saturating_sub(b)),
        _ => report,
    })
}

/// What the forwarder's pump threads (named `net-tap→host` and `net-host→tap`) have
/// spent on the CPU, user and system, in ms; `None` when procfs cannot say.
fn forwarder_cpu_ms() -> Option<u64> {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)?;
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((comm, used)) = thread_cpu_ticks(&stat) {
            if comm.starts_with("net-tap") || comm.starts_with("net-host") {
                ticks += used;
            }
        }
    }
    Some(ticks * 1000 / ticks_per_sec)
}

/// A thread's name and its user plus system time in clock ticks, from its
/// `/proc/.../stat` line (`tid (comm) state ... utime stime ...`; comm may hold spaces
/// and parentheses, so the fields count from the last `)`).
fn thread_cpu_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Streams over a vsock connection of its own to the host's `port`.
pub fn over_vsock(
    port: u32,
    direction: StreamDirection,
    bytes: u64,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let address = format!("vsock {HOST_CID}:{port}");
    let stream = crate::vsock_dial::dial(HOST_CID, port)
        .map_err(|source| io_error("connect", &address, source))?;
    transfer(stream, &address, direction, bytes, timeout, WRITE_CHUNK)
}

fn io_error(op: &'static str, address: &str, source: std::io::Error) -> ProbeError {
    ProbeError::Io {
        op,
        address: address.to_string(),
        source,
    }
}

/// Moves the bytes and reports how many, how long and how fast, by the guest's clock.
/// An upload writes `bytes` zeros in pieces of at most `chunk`, ends its sending half
/// and waits for the far end to close (so every byte was read there); a download reads
/// until the far end closes.
fn transfer(
    mut stream: impl BulkStream,
    address: &str,
    direction: StreamDirection,
    bytes: u64,
    timeout: Duration,
    chunk: usize,
) -> Result<String, ProbeError> {
    if direction == StreamDirection::Upload && bytes > STREAM_MAX_BYTES {
        return Err(io_error(
            "upload to",
            address,
            std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("{bytes} bytes asked, at most {STREAM_MAX_BYTES}"),
            ),
        ));
    }
    stream
        .bound_waits(timeout)
        .map_err(|e| io_error("set deadlines on", address, e))?;
    let start = Instant::now();
    let overdue =
        || std::io::Error::new(ErrorKind::TimedOut, format!("not done within {timeout:?}"));
    let mut buf = vec![0u8; READ_BUFFER.max(chunk)];
    let moved = match direction {
        StreamDirection::Upload => {
            let mut left = bytes;
            while left > 0 {
                if start.elapsed() > timeout {
                    return Err(io_error("upload to", address, overdue()));
                }
                let n = usize::try_from(left).map_or(chunk, |l| l.min(chunk));
                let written = stream
                    .write(&buf[..n])
                    .map_err(|e| io_error("upload to", address, e))?;
                if written == 0 {
                    return Err(io_error("upload to", address, ErrorKind::WriteZero.into()));
                }
                left -= written as u64;
            }
            stream
                .end_sending()
                .map_err(|e| io_error("end the upload to", address, e))?;
            drain(&mut stream, &mut buf, start, timeout)
                .map_err(|e| io_error("wait for the close of", address, e))?;
            bytes
        }
        StreamDirection::Download => drain(&mut stream, &mut buf, start, timeout)
            .map_err(|e| io_error("download from", address, e))?,
    };
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    let verb = match direction {
        StreamDirection::Upload => "uploaded",
        StreamDirection::Download => "downloaded",
    };
    Ok(format!(
        "{verb} {moved} bytes in {:.0} ms ({:.1} MB/s)",
        secs * 1000.0,
        moved as f64 / secs / 1e6
    ))
}

/// Reads until the far end closes; returns the bytes read.
fn drain(
    stream: &mut impl Read,
    buf: &mut [u8],
    start: Instant,
    timeout: Duration,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        if start.elapsed() > timeout {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("{total} bytes read, no close within {timeout:?}"),
            ));
        }
        match stream.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn far_end(send: u64) -> (String, std::thread::JoinHandle<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let far = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let block = vec![7u8; 10_000];
            let mut left = send;
            while left > 0 {
                let n = usize::try_from(left).map_or(block.len(), |l| l.min(block.len()));
                s.write_all(&block[..n]).unwrap();
                left -= n as u64;
            }
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.len() as u64
        });
        (address, far)
    }

    #[test]
    fn thread_cpu_is_read_past_odd_names() {
        let stat = "812 (net-tap→host) S 1 1 0 0 -1 4194368 10 0 0 0 250 131 0 0 20 0 12 0";
        assert_eq!(thread_cpu_ticks(stat), Some(("net-tap→host", 381)));
        let odd = "9 (a) b (c) R 1 1 0 0 -1 0 0 0 0 0 7 5 0 0";
        assert_eq!(thread_cpu_ticks(odd), Some(("a) b (c", 12)));
        assert_eq!(thread_cpu_ticks("9 (cut"), None);
        assert!(
            forwarder_cpu_ms().is_some(),
            "this process's own tasks are readable"
        );
    }

    #[test]
    fn downloads_read_until_the_far_end_closes() {
        let (address, far) = far_end(1_234_567);
        let report = over_tcp(
            &address,
            StreamDirection::Download,
            0,
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(
            report.starts_with("downloaded 1234567 bytes in "),
            "{report}"
        );
        assert_eq!(far.join().unwrap(), 0);
    }

    #[test]
    fn uploads_send_every_byte_and_wait_for_the_close() {
        let (address, far) = far_end(0);
        let report = over_tcp(
            &address,
            StreamDirection::Upload,
            3_000_001,
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(report.starts_with("uploaded 3000001 bytes in "), "{report}");
        assert_eq!(far.join().unwrap(), 3_000_001);
    }

    #[test]
    fn a_silent_far_end_is_a_timeout_naming_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let e = over_tcp(
            &address,
            StreamDirection::Download,
            0,
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&address) && e.contains("download from"), "{e}");
        drop(listener);
    }

    #[test]
    fn an_oversized_upload_is_refused_before_any_byte() {
        let (address, _far) = far_end(0);
        let e = over_tcp(
            &address,
            StreamDirection::Upload,
            STREAM_MAX_BYTES + 1,
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at most"), "{e}");
    }
}
