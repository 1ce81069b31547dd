//! Network checks run from inside the guest: the gateway readiness check (a DNS answer
//! from gvproxy's resolver) and the host-requested probes (DNS, outbound TCP, inbound
//! TCP) that prove each direction of the gvproxy path.

use protocol::messages::Probe;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use thiserror::Error;

/// A name gvproxy's own DNS zone answers without asking any upstream resolver.
pub const GATEWAY_NAME: &str = "gateway.containers.internal";

/// Largest response a TCP probe returns.
const MAX_PROBE_OUTPUT: usize = 16 * 1024;

/// Why a probe or a resolution failed, with the address involved.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{dns} returned no address for {name}")]
    NoAddress { dns: Ipv4Addr, name: String },
    #[error("resolving {name} via {dns}: {source}")]
    Resolve {
        dns: Ipv4Addr,
        name: String,
        source: std::io::Error,
    },
    #[error("resolving {name} via {dns}: no answer within {timeout:?}")]
    ResolveTimeout {
        dns: Ipv4Addr,
        name: String,
        timeout: Duration,
    },
    #[error("cannot start the resolver thread: {0}")]
    Thread(std::io::Error),
    #[error("{op} {address}: {source}")]
    Io {
        op: &'static str,
        address: String,
        source: std::io::Error,
    },
    #[error("{0} resolved to nothing")]
    Unresolved(String),
    #[error("pgbench is a database run, not a network check")]
    NotNetwork,
    #[error(transparent)]
    Firewall(#[from] super::firewall::FirewallError),
    #[error("no connection to {bind}:{port} within {timeout:?}")]
    NoClient {
        bind: Ipv4Addr,
        port: u16,
        timeout: Duration,
    },
}

fn io(op: &'static str, address: impl ToString) -> impl FnOnce(std::io::Error) -> ProbeError {
    let address = address.to_string();
    move |source| ProbeError::Io {
        op,
        address,
        source,
    }
}

/// Resolves `name` with the system resolver (/etc/resolv.conf points at `dns`, which
/// is named only for the error text). `timeout` bounds the wait: the lookup runs on a
/// thread of its own, since getaddrinfo has no deadline.
pub fn resolve_via(
    dns: Ipv4Addr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ProbeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = name.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(
                (owned.as_str(), 0u16)
                    .to_socket_addrs()
                    .map(Iterator::collect::<Vec<_>>),
            );
        })
        .map_err(ProbeError::Thread)?;
    let name = name.to_string();
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(ProbeError::NoAddress { dns, name }),
        Ok(Err(source)) => Err(ProbeError::Resolve { dns, name, source }),
        Err(_) => Err(ProbeError::ResolveTimeout { dns, name, timeout }),
    }
}

fn tcp_exchange(address: &str, send: &str, timeout: Duration) -> Result<String, ProbeError> {
    let start = Instant::now();
    let addr = address
        .to_socket_addrs()
        .map_err(io("resolving", address))?
        .next()
        .ok_or_else(|| ProbeError::Unresolved(address.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connect", addr))?;
    stream
        .write_all(send.as_bytes())
        .map_err(io("send to", addr))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < MAX_PROBE_OUTPUT {
        let left = timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero());
        let Some(left) = left else { break };
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(io("read from", addr)(e)),
            Err(_) => break,
        }
    }
    out.truncate(MAX_PROBE_OUTPUT);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn serve_once(
    bind: Ipv4Addr,
    port: u16,
    reply: &str,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let here = format!("{bind}:{port}");
    let listener = TcpListener::bind((bind, port)).map_err(io("listen on", &here))?;
    listener
        .set_nonblocking(true)
        .map_err(io("listen on", &here))?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                stream
                    .write_all(reply.as_bytes())
                    .map_err(io("reply to", peer))?;
                return Ok(format!("served {peer}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() >= timeout {
                    return Err(ProbeError::NoClient {
                        bind,
                        port,
                        timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io("accept on", &here)(e)),
        }
    }
}

/// The deadline of a stream probe: at least a second, at most
/// [`protocol::messages::STREAM_MAX_MS`].
fn stream_cap(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(1000, protocol::messages::STREAM_MAX_MS))
}

/// Runs a host-requested probe; `guest` is the guest's own address (inbound probes
/// listen only there, never on the tailnet).
pub fn run(probe: &Probe, guest: Ipv4Addr, dns: Ipv4Addr) -> Result<String, ProbeError> {
    let cap = |ms: u64| Duration::from_millis(ms.clamp(100, 120_000));
    match probe {
        Probe::Dns { name } => resolve_via(dns, name, Duration::from_secs(5)).map(|addrs| {
            let ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            ips.join(",")
        }),
        Probe::Tcp {
            address,
            send,
            timeout_ms,
        } => tcp_exchange(address, send, cap(*timeout_ms)),
        Probe::Serve {
            port,
            reply,
            timeout_ms,
        } => {
            let _open = super::firewall::open_probe_port(*port)?;
            serve_once(guest, *port, reply, cap(*timeout_ms))
        }
        Probe::Pgbench { .. } => Err(ProbeError::NotNetwork),
        Probe::Stream {
            address,
            direction,
            bytes,
            timeout_ms,
        } => super::stream::over_tcp(address, *direction, *bytes, stream_cap(*timeout_ms)),
        Probe::VsockStream {
            port,
            direction,
            bytes,
            timeout_ms,
        } => super::stream::over_vsock(*port, *direction, *bytes, stream_cap(*timeout_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_serve_on_loopback() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let server = std::thread::spawn(move || {
            serve_once(Ipv4Addr::LOCALHOST, port, "hello\n", Duration::from_secs(5))
        });
        let mut got = Err(ProbeError::Unresolved(String::new()));
        for _ in 0..50 {
            got = tcp_exchange(&format!("127.0.0.1:{port}"), "", Duration::from_secs(2));
            if got.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(got.unwrap(), "hello\n");
        assert!(server
            .join()
            .unwrap()
            .unwrap()
            .starts_with("served 127.0.0.1:"));
        let refused = tcp_exchange(&format!("127.0.0.1:{port}"), "", Duration::from_millis(500));
        assert!(refused.unwrap_err().to_string().contains("connect"));
    }

    #[test]
    fn a_refused_thread_is_an_error_not_a_panic() {
        crate::lifecycle::reaper::tests::in_child_process(
            concat!(module_path!(), "::refused_thread_body"),
            "SOVEREIGN_NPROC_TEST",
        );
    }

    /// With RLIMIT_NPROC at 0 the kernel refuses every new thread (EAGAIN). As root the
    /// limit does not apply, so the child drops to `nobody` first.
    #[test]
    #[ignore = "runs only inside a_refused_thread_is_an_error_not_a_panic's child process"]
    fn refused_thread_body() {
        use nix::sys::resource::{setrlimit, Resource};
        if std::env::var_os("SOVEREIGN_NPROC_TEST").is_none() {
            return;
        }
        if nix::unistd::geteuid().is_root() {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).unwrap();
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).unwrap();
        }
        setrlimit(Resource::RLIMIT_NPROC, 0, 0).unwrap();
        let e = resolve_via(Ipv4Addr::LOCALHOST, "localhost", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ProbeError::Thread(_)), "{e}");
        let e = crate::command::output(&mut std::process::Command::new("true")).unwrap_err();
        assert!(e.to_string().starts_with("cannot start true"), "{e}");
    }

    #[test]
    fn serve_times_out() {
        let err = serve_once(Ipv4Addr::LOCALHOST, 0, "x", Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no connection"), "{err}");
    }
}
