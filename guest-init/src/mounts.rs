//! The system filesystems PID 1 mounts before anything else, each logged by name.
//! Already-mounted targets (a kernel with DEVTMPFS_MOUNT, a re-exec) are fine.

use nix::mount::{mount, MsFlags};
use std::fs;
use std::path::Path;
use thiserror::Error;

/// A mount that failed.
#[derive(Debug, Error)]
#[error("mounting {fstype} on {target} failed: {source}")]
pub struct MountError {
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// The errno.
    pub source: nix::Error,
}

/// One entry of the system mount table.
#[derive(Debug, Clone, Copy)]
pub struct SystemMount {
    /// Source name shown in /proc/mounts.
    pub source: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Mount options.
    pub data: &'static str,
    /// Mode for the mount point if it must be created.
    pub mode: u32,
}

const NODEV_NOSUID_NOEXEC: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// proc, sys, devtmpfs, devpts, /dev/shm, /run and /tmp, in dependency order.
pub const SYSTEM_MOUNTS: &[SystemMount] = &[
    SystemMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NODEV_NOSUID_NOEXEC,
        data: "",
        mode: 0o555,
    },
    SystemMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NODEV_NOSUID_NOEXEC,
        data: "",
        mode: 0o555,
    },
    SystemMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        mode: 0o755,
    },
    SystemMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
        mode: 0o755,
    },
    SystemMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID),
        data: "mode=1777",
        mode: 0o1777,
    },
    SystemMount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID),
        data: "mode=0755",
        mode: 0o755,
    },
    SystemMount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID),
        data: "mode=1777",
        mode: 0o1777,
    },
];

/// True when `target` is already a mount point (per /proc/self/mountinfo, once /proc
/// exists).
pub fn is_mounted(target: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(target)))
        .unwrap_or(false)
}

/// Mounts every system filesystem, logging each; returns the first failure after trying
/// all of them (a missing /dev/shm must not stop /run from being mounted).
pub fn mount_system() -> Result<(), MountError> {
    let mut first_error = None;
    for m in SYSTEM_MOUNTS {
        if is_mounted(m.target) {
            log::info!("mount {} on {}: already mounted", m.fstype, m.target);
            continue;
        }
        if !Path::new(m.target).exists() {
            if let Err(e) = fs::create_dir_all(m.target) {
                log::warn!("cannot create mount point {}: {e}", m.target);
            }
        }
        let data = (!m.data.is_empty()).then_some(m.data);
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, data) {
            Ok(()) => log::info!("mounted {} on {}", m.fstype, m.target),
            Err(source) => {
                log::error!("mount {} on {} failed: {source}", m.fstype, m.target);
                first_error.get_or_insert(MountError {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                });
            }
        }
    }
    link_standard_fds();
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The links devtmpfs does not make and programs expect (udev or systemd would):
/// `/dev/fd` and `/dev/std{in,out,err}` into /proc/self/fd. initdb reads its password
/// from `/dev/stdin`.
const STANDARD_FD_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

fn link_standard_fds() {
    for (link, target) in STANDARD_FD_LINKS {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => log::warn!("cannot link {link} to {target}: {e}"),
        }
    }
}
