//! Dials the host over vsock from a reserved source port. Ports below 1024 can only be
//! bound by a process with `CAP_NET_BIND_SERVICE`, which in this guest is PID 1 alone
//! (the services it starts run without it), so where the host sees the source port
//! (crosvm, whose host end is the kernel's vsock: `accept` gives the peer's port) it can
//! tell PID 1's connections from any other guest process's. Under QEMU's
//! vhost-device-vsock the host end is a unix socket that carries no port; there the
//! control channel's session token is what holds.

use nix::errno::Errno;
use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use vsock::VsockStream;

/// The source ports PID 1 dials from, highest first; the host accepts no other.
pub const RESERVED_PORTS: RangeInclusive<u32> = protocol::ports::RESERVED_SOURCE_PORTS;

/// Connects to `cid:port` from the first free port of [`RESERVED_PORTS`].
pub fn dial(cid: u32, port: u32) -> io::Result<VsockStream> {
    for local in RESERVED_PORTS.rev() {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, local)) {
            Ok(()) => {}
            Err(Errno::EADDRINUSE) => continue,
            Err(e) => return Err(e.into()),
        }
        connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
        return Ok(VsockStream::from(fd));
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "every reserved vsock source port ({}-{}) is taken",
            RESERVED_PORTS.start(),
            RESERVED_PORTS.end()
        ),
    ))
}
