//! The forwarder inside the VMs, over real vsock, as a user runs it: bulk TCP streams
//! between each guest and this host's loopback (gvproxy's 192.168.127.254) through the
//! guest's kernel, its forwarder (ours in PID 1, upstream gvforwarder under systemd in
//! the peer), vhost-device-vsock and gvproxy. Both VMs run at once and the rounds
//! alternate between them; this end times every transfer (from accepting the
//! connection to the guest's close). Beside throughput: the forwarder's own CPU time,
//! as each guest reads it from procfs, and the whole VM's (QEMU's CPU time on this
//! host), per GB. Then the raw vsock stream rate between the same endpoints (our guest
//! to a unix socket under vhost-device-vsock, no TCP and no forwarder): the ceiling.

use sovereign_tests::process::text;
use sovereign_tests::vm::Vm;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The host's loopback as gvproxy shows it to a guest.
const HOST_ALIAS: &str = "192.168.127.254";
/// The vsock port of the raw stream (any the VM's own channels do not use).
const RAW_VSOCK_PORT: u32 = 5201;
/// How long one transfer may take.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(300);
/// Bytes a block written by this end.
const BLOCK: usize = 64 * 1024;

/// Which way a transfer goes, from the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Host to guest.
    Down,
    /// Guest to host.
    Up,
}

/// One transfer as this end and the guest saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// MB/s by this end's clock.
    pub mb_s: f64,
    /// The forwarder's CPU ms over the transfer, by the guest.
    pub forwarder_cpu_ms: Option<u64>,
    /// QEMU's CPU ms over the transfer, on this host.
    pub vm_cpu_ms: Option<u64>,
    /// Bytes moved.
    pub bytes: u64,
}

/// All samples of one forwarder.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Host to guest.
    pub down: Vec<Sample>,
    /// Guest to host.
    pub up: Vec<Sample>,
}

impl Samples {
    fn push(&mut self, way: Way, s: Sample) {
        match way {
            Way::Down => self.down.push(s),
            Way::Up => self.up.push(s),
        }
    }

    /// Every sample, both ways.
    pub fn all(&self) -> impl Iterator<Item = &Sample> {
        self.down.iter().chain(&self.up)
    }
}

/// Everything this part measured.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Through our forwarder.
    pub ours: Samples,
    /// Through upstream gvforwarder in the systemd peer, when it ran.
    pub theirs: Option<Samples>,
    /// Raw vsock from our guest.
    pub raw: Samples,
    /// Bytes per transfer.
    pub bytes: u64,
    /// Rounds per forwarder.
    pub rounds: usize,
}

impl Streams {
    /// The chart's panel: median MB/s each way, per forwarder and raw vsock.
    pub fn chart(&self) -> crate::chart::Bars {
        let median = |s: Option<&Samples>, way: Way| {
            s.and_then(|s| {
                let v = if way == Way::Down { &s.down } else { &s.up };
                spread(v.iter().map(|x| x.mb_s))
            })
            .map_or(f64::NAN, |m| m.0)
        };
        let group = |label: &str, way| {
            (
                label.to_string(),
                vec![
                    median(Some(&self.ours), way),
                    median(self.theirs.as_ref(), way),
                    median(Some(&self.raw), way),
                ],
            )
        };
        crate::chart::Bars {
            caption: "Inside the VM over vsock, MB/s (median)".into(),
            series: vec![
                "sovereign-init".into(),
                "gvforwarder (systemd peer)".into(),
                "raw vsock".into(),
            ],
            groups: vec![
                group("host → guest", Way::Down),
                group("guest → host", Way::Up),
            ],
        }
    }
}

/// The median, min and max of some figures.
pub fn spread(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Some((median, v[0], v[v.len() - 1]))
}

/// CPU seconds per GB moved over `samples`, from the figure `pick` chooses.
pub fn cpu_s_per_gb(samples: &Samples, pick: impl Fn(&Sample) -> Option<u64>) -> Option<f64> {
    let (mut ms, mut bytes) = (0u64, 0u64);
    for s in samples.all() {
        ms += pick(s)?;
        bytes += s.bytes;
    }
    (bytes > 0).then(|| ms as f64 / 1000.0 / (bytes as f64 / 1e9))
}

/// A process's user plus system CPU time, ms (`/proc/PID/stat`; USER_HZ is 100).
fn process_cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * 10)
}

/// This end of one transfer: serves `bytes` and waits for the guest's close (down), or
/// reads `bytes` (up, or until an early close); returns the bytes and the time from
/// accepting to the end.
fn serve<S: Read + Write>(
    mut s: S,
    way: Way,
    bytes: u64,
    end_writes: impl Fn(&S),
) -> std::io::Result<(u64, Duration)> {
    let t = Instant::now();
    let mut buf = vec![0u8; BLOCK];
    let mut sink = |s: &mut S| -> std::io::Result<u64> {
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    match way {
        Way::Down => {
            let block = vec![0u8; BLOCK];
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left.min(BLOCK as u64)).unwrap_or(BLOCK);
                s.write_all(&block[..n])?;
                left -= n as u64;
            }
            end_writes(&s);
            sink(&mut s)?;
            Ok((bytes, t.elapsed()))
        }
        Way::Up => {
            // Closing once every byte is here, not waiting for the guest's close:
            // vhost-device-vsock does not pass a guest's half-close on to its unix
            // socket, and the guest waits for this end's close to know all arrived.
            let mut got = 0u64;
            while got < bytes {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((got, t.elapsed()))
        }
    }
}

/// This end of a transfer, running: its bytes and time once the guest closes.
type FarEnd = std::thread::JoinHandle<std::io::Result<(u64, Duration)>>;

/// The guest's connection from a non-blocking listener, or a timeout after
/// [`TRANSFER_DEADLINE`]: a guest that never dials must not leave this end waiting for
/// ever.
fn accept_within<S>(accept: impl Fn() -> std::io::Result<S>) -> std::io::Result<S> {
    let t = Instant::now();
    loop {
        match accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock && t.elapsed() < TRANSFER_DEADLINE => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no connection from the guest within {TRANSFER_DEADLINE:?}"),
                ))
            }
            other => return other,
        }
    }
}

/// A TCP listener on this host's loopback for one transfer, served on a thread.
fn tcp_far_end(way: Way, bytes: u64) -> Result<(u16, FarEnd), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listen: {e}"))?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(true)?;
        let s = accept_within(|| l.accept().map(|(s, _)| s))?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(TRANSFER_DEADLINE))?;
        serve(s, way, bytes, |s: &TcpStream| {
            let _ = s.shutdown(Shutdown::Write);
        })
    });
    Ok((port, h))
}

/// The rate of a finished far end.
fn finish(h: FarEnd, bytes: u64, who: &str) -> Result<(u64, f64), String> {
    let (moved, took) = h
        .join()
        .map_err(|_| format!("{who}: the far end panicked"))?
        .map_err(|e| format!("{who}: {e}"))?;
    if moved != bytes {
        return Err(format!("{who}: {moved} of {bytes} bytes arrived"));
    }
    Ok((moved, moved as f64 / took.as_secs_f64().max(1e-6) / 1e6))
}

/// The guest's figure for its forwarder's CPU, from `probe stream`'s report.
fn forwarder_cpu_in(report: &str) -> Option<u64> {
    report
        .split("forwarder CPU ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One transfer through our guest's forwarder.
pub fn ours(vm: &Vm, qemu: Option<u32>, way: Way, bytes: u64) -> Result<Sample, String> {
    let (port, far) = tcp_far_end(way, bytes)?;
    let address = format!("{HOST_ALIAS}:{port}");
    let n = bytes.to_string();
    let mut args = vec!["stream", address.as_str(), "--timeout", "300"];
    if way == Way::Up {
        args.extend(["--upload", n.as_str()]);
    }
    let cpu0 = qemu.and_then(process_cpu_ms);
    let o = vm.cli("probe", &args);
    let cpu1 = qemu.and_then(process_cpu_ms);
    if !o.status.success() {
        // The far end waits for a connection that will not come; it ends with us.
        return Err(format!("probe stream: {}", text(&o)));
    }
    let (bytes, mb_s) = finish(far, bytes, "ours")?;
    Ok(Sample {
        mb_s,
        forwarder_cpu_ms: forwarder_cpu_in(&String::from_utf8_lossy(&o.stdout)),
        vm_cpu_ms: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
        bytes,
    })
}

/// The peer's side: a control connection its stream unit dials (see
/// rootfs/peer/overlay/usr/local/sbin/sovereign-peer-stream).
pub struct PeerStreams {
    listener: TcpListener,
    control: Option<BufReader<TcpStream>>,
}

impl PeerStreams {
    /// Listens for the peer's stream unit; the port goes into its image.
    pub fn listen() -> Result<PeerStreams, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listen: {e}"))?;
        Ok(PeerStreams {
            listener,
            control: None,
        })
    }

    /// The control port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// The control connection, waiting up to `limit` for the peer to dial it.
    fn control(&mut self, limit: Duration) -> Result<&mut BufReader<TcpStream>, String> {
        if self.control.is_none() {
            self.listener
                .set_nonblocking(true)
                .map_err(|e| e.to_string())?;
            let t = Instant::now();
            let s = loop {
                match self.listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock && t.elapsed() < limit => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(format!("the peer's stream unit never dialled: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(TRANSFER_DEADLINE))
                .map_err(|e| e.to_string())?;
            self.control = Some(BufReader::new(s));
        }
        self.control.as_mut().ok_or_else(|| "no control".into())
    }

    /// One transfer through the peer's gvforwarder.
    pub fn transfer(&mut self, qemu: Option<u32>, way: Way, bytes: u64) -> Result<Sample, String> {
        let (port, far) = tcp_far_end(way, bytes)?;
        let control = self.control(Duration::from_secs(120))?;
        let line = match way {
            Way::Down => format!("download {port}\n"),
            Way::Up => format!("upload {port} {bytes}\n"),
        };
        let cpu0 = qemu.and_then(process_cpu_ms);
        control
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("to the peer's stream unit: {e}"))?;
        let mut answer = String::new();
        control
            .read_line(&mut answer)
            .map_err(|e| format!("from the peer's stream unit: {e}"))?;
        let cpu1 = qemu.and_then(process_cpu_ms);
        let cpu = answer
            .strip_prefix("done ")
            .ok_or_else(|| format!("the peer's stream unit said {answer:?}"))?;
        let (bytes, mb_s) = finish(far, bytes, "the peer")?;
        Ok(Sample {
            mb_s,
            forwarder_cpu_ms: cpu.trim().parse().ok(),
            vm_cpu_ms: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
            bytes,
        })
    }
}

/// Alternating rounds: each round moves `bytes` down then up through ours, then the
/// same through the peer (when there is one), the order swapping every round.
pub fn rounds(
    vm: &Vm,
    mut peer: Option<(&mut PeerStreams, Option<u32>)>,
    rounds: usize,
    bytes: u64,
) -> Result<(Samples, Samples), String> {
    let qemu = vm.pid_of("qemu-system");
    let (mut mine, mut theirs) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        let peer_first = round % 2 == 1;
        for turn in 0..2 {
            let peer_turn = (turn == 0) == peer_first;
            for way in [Way::Down, Way::Up] {
                if peer_turn {
                    if let Some((p, pq)) = peer.as_mut() {
                        let s = p.transfer(*pq, way, bytes)?;
                        eprintln!("    round {} peer {way:?}: {:.1} MB/s", round + 1, s.mb_s);
                        theirs.push(way, s);
                    }
                } else {
                    let s = ours(vm, qemu, way, bytes)?;
                    eprintln!("    round {} ours {way:?}: {:.1} MB/s", round + 1, s.mb_s);
                    mine.push(way, s);
                }
            }
        }
    }
    Ok((mine, theirs))
}

/// Raw vsock rate from our guest, each way, `rounds` times: the host end is the unix
/// socket vhost-device-vsock connects to for the guest's port.
pub fn raw_vsock(vm: &Vm, rounds: usize, bytes: u64) -> Result<Samples, String> {
    let path = vm.run_dir().join(format!("vsock.sock_{RAW_VSOCK_PORT}"));
    let mut out = Samples::default();
    for _ in 0..rounds {
        for way in [Way::Down, Way::Up] {
            out.push(way, raw_vsock_once(vm, &path, way, bytes)?);
        }
    }
    Ok(out)
}

fn raw_vsock_once(vm: &Vm, path: &Path, way: Way, bytes: u64) -> Result<Sample, String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let far = std::thread::spawn(move || {
        l.set_nonblocking(true)?;
        let s = accept_within(|| l.accept().map(|(s, _)| s))?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(TRANSFER_DEADLINE))?;
        serve(s, way, bytes, |s: &UnixStream| {
            let _ = s.shutdown(Shutdown::Write);
        })
    });
    let port = RAW_VSOCK_PORT.to_string();
    let n = bytes.to_string();
    let mut args = vec!["vsock-stream", port.as_str(), "--timeout", "300"];
    if way == Way::Up {
        args.extend(["--upload", n.as_str()]);
    }
    let o = vm.cli("probe", &args);
    if !o.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(format!("probe vsock-stream: {}", text(&o)));
    }
    let result = finish(far, bytes, "raw vsock");
    let _ = std::fs::remove_file(path);
    let (bytes, mb_s) = result?;
    eprintln!("    raw vsock {way:?}: {mb_s:.1} MB/s");
    Ok(Sample {
        mb_s,
        forwarder_cpu_ms: None,
        vm_cpu_ms: None,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(spread([3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread([4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread([f64::NAN]), None);
    }

    #[test]
    fn the_guests_cpu_figure_is_read() {
        assert_eq!(
            forwarder_cpu_in("downloaded 1 bytes in 9 ms (0.0 MB/s); forwarder CPU 412 ms\n"),
            Some(412)
        );
        assert_eq!(forwarder_cpu_in("downloaded 1 bytes in 9 ms"), None);
    }

    #[test]
    fn cpu_per_gb_needs_every_sample() {
        let s = |cpu| Sample {
            mb_s: 1.0,
            forwarder_cpu_ms: cpu,
            vm_cpu_ms: None,
            bytes: 500_000_000,
        };
        let mut all = Samples::default();
        all.push(Way::Down, s(Some(1000)));
        all.push(Way::Up, s(Some(3000)));
        assert_eq!(cpu_s_per_gb(&all, |s| s.forwarder_cpu_ms), Some(4.0));
        all.push(Way::Up, s(None));
        assert_eq!(cpu_s_per_gb(&all, |s| s.forwarder_cpu_ms), None);
    }

    #[test]
    fn this_end_serves_and_sinks_over_loopback() {
        let (port, far) = tcp_far_end(Way::Down, 1_000_000).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        drop(s);
        assert_eq!(finish(far, 1_000_000, "t").unwrap().0, 1_000_000);

        let (port, far) = tcp_far_end(Way::Up, 70_000).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[1u8; 69_999]).unwrap();
        drop(s);
        let e = finish(far, 70_000, "t").unwrap_err();
        assert!(e.contains("69999 of 70000"), "{e}");
    }
}
