//! The guest's TAP device: `/dev/net/tun` with IFF_TAP | IFF_NO_PI, so each read or
//! write is exactly one Ethernet frame with no extra header.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    /// The device file; read() yields one frame, write() sends one.
    pub file: File,
    /// The interface name the kernel gave it.
    pub name: String,
}

/// Creates (or attaches to) the TAP interface `name`.
pub fn open_tap(name: &str) -> Result<Tap, super::NetError> {
    let err = |op: &'static str, e: nix::Error| super::NetError::Tap {
        name: name.to_string(),
        op,
        source: e,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err("validate name", nix::Error::EINVAL));
    }
    let fd: OwnedFd = open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open /dev/net/tun", e))?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    req.ifr_ifru.ifru_flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI)
        .map_err(|_| err("flags", nix::Error::EINVAL))?;
    // SAFETY: fd is an open /dev/net/tun descriptor and req a valid, initialised ifreq
    // that outlives the call; TUNSETIFF reads it and writes the final name back into it.
    unsafe { tun_set_iff(fd.as_raw_fd(), &req) }.map_err(|e| err("TUNSETIFF", e))?;
    let actual: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| c.to_ne_bytes()[0])
        .collect();
    Ok(Tap {
        file: File::from(fd),
        name: String::from_utf8_lossy(&actual).into_owned(),
    })
}
