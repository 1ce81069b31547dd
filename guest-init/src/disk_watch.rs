//! Watching the data disk's space. A database whose disk fills up refuses writes (its
//! own error, which is right), but then it cannot even delete data: every change needs
//! a little WAL space, and a server that crashed on a full disk cannot finish crash
//! recovery without room for one new WAL segment. So PID 1 keeps an emergency reserve
//! file on /data; once the disk is full and has stopped filling (the writers were
//! refused), the reserve is released (the server can recover, delete data or drop a
//! table again) and the `postgres` stage is reported degraded with the numbers; once
//! space is back the reserve is taken again and the stage holds.
//!
//! Releasing while a writer is still filling the disk would hand it the reserve too,
//! and leave nothing for the recovery that follows.

use nix::sys::statvfs::statvfs;
use protocol::messages::DiskUsage;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Size of the emergency reserve.
pub const RESERVE_BYTES: u64 = 64 << 20;

/// Below this much space for postgres, the disk counts as full: PostgreSQL needs room
/// for a whole new WAL segment (16 MiB) to go on writing, so a disk with less than two
/// segments free is already refusing writes.
pub const FULL_BELOW: u64 = 32 << 20;

/// How much the space may still shrink between two checks for the disk to count as no
/// longer filling (postgres's own log lines and small status files go on).
pub const SETTLED_WITHIN: u64 = 1 << 20;

/// What changed at a check, for the stage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to report.
    None,
    /// The disk filled up; the reserve was released.
    Full(DiskUsage),
    /// Space is back; the reserve was taken again.
    Recovered(DiskUsage),
}

/// The reserve of one data disk.
#[derive(Debug)]
pub struct DiskWatch {
    mount: PathBuf,
    reserve: PathBuf,
    released: bool,
    /// The space at the last check, when the disk was already full then.
    full_at_last_check: Option<u64>,
}

impl DiskWatch {
    /// Watches the filesystem mounted at `mount`; takes the reserve if there is room.
    pub fn new(mount: &Path) -> DiskWatch {
        let w = DiskWatch {
            mount: mount.to_path_buf(),
            reserve: mount.join(".sovereign-reserve"),
            released: false,
            full_at_last_check: None,
        };
        if let Err(e) = w.take_reserve() {
            log::warn!("data disk: cannot create the emergency reserve: {e}");
        }
        w
    }

    fn take_reserve(&self) -> std::io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.reserve)?;
        let len = i64::try_from(RESERVE_BYTES).unwrap_or(i64::MAX);
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len)
            .map_err(std::io::Error::from)
    }

    /// The disk's space now.
    pub fn usage(&self) -> Option<DiskUsage> {
        usage_at(&self.mount, self.released)
    }

    /// Releases or retakes the reserve as the space demands.
    pub fn check(&mut self) -> Change {
        let Some(u) = self.usage() else {
            return Change::None;
        };
        let previous = self.full_at_last_check;
        self.full_at_last_check = (u.available_bytes < FULL_BELOW).then_some(u.available_bytes);
        match decide(u.available_bytes, previous, self.released) {
            Decision::Release => match std::fs::remove_file(&self.reserve) {
                Ok(()) => {
                    self.released = true;
                    log::error!(
                        "data disk full ({} bytes left for postgres): released the {} MiB reserve so that data can be deleted",
                        u.available_bytes,
                        RESERVE_BYTES >> 20
                    );
                    Change::Full(self.usage().unwrap_or(u))
                }
                Err(e) => {
                    log::error!("data disk full and the reserve cannot be released: {e}");
                    Change::None
                }
            },
            Decision::Retake => match self.take_reserve() {
                Ok(()) => {
                    self.released = false;
                    log::info!("data disk has room again: reserve taken back");
                    Change::Recovered(self.usage().unwrap_or(u))
                }
                Err(e) => {
                    log::warn!("cannot take the reserve back yet: {e}");
                    Change::None
                }
            },
            Decision::Keep => Change::None,
        }
    }
}

/// The space of the filesystem mounted at `mount`.
pub fn usage_at(mount: &Path, reserve_released: bool) -> Option<DiskUsage> {
    let s = statvfs(mount).ok()?;
    let block = s.fragment_size();
    Some(DiskUsage {
        total_bytes: s.blocks().saturating_mul(block),
        available_bytes: s.blocks_available().saturating_mul(block),
        reserve_released,
    })
}

/// What to do with the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Release,
    Retake,
    Keep,
}

/// Release when postgres is out of space and the space has stopped shrinking since the
/// last check (`previous`, when the disk was full then too); retake only with room for
/// the reserve and as much again, so that the two never flap.
fn decide(available: u64, previous: Option<u64>, released: bool) -> Decision {
    let settled = previous.is_some_and(|p| available.saturating_add(SETTLED_WITHIN) >= p);
    if !released && available < FULL_BELOW && settled {
        Decision::Release
    } else if released && available > 2 * RESERVE_BYTES + FULL_BELOW {
        Decision::Retake
    } else {
        Decision::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_released_when_full_and_taken_back_with_room_to_spare() {
        let full = FULL_BELOW - 1;
        assert_eq!(decide(full, Some(full), false), Decision::Release);
        assert_eq!(decide(FULL_BELOW, Some(full), false), Decision::Keep);
        assert_eq!(decide(RESERVE_BYTES, None, true), Decision::Keep);
        assert_eq!(
            decide(2 * RESERVE_BYTES + FULL_BELOW, None, true),
            Decision::Keep
        );
        assert_eq!(
            decide(2 * RESERVE_BYTES + FULL_BELOW + 1, None, true),
            Decision::Retake
        );
    }

    #[test]
    fn the_reserve_waits_until_the_disk_has_stopped_filling() {
        let full = FULL_BELOW - 1;
        // Just became full: a writer may still be going.
        assert_eq!(decide(full, None, false), Decision::Keep);
        // Still shrinking by more than the slack: the writer has not been refused yet.
        assert_eq!(
            decide(full - 2 * SETTLED_WITHIN, Some(full), false),
            Decision::Keep
        );
        // Shrinking by less than the slack, or growing: refused, so released.
        assert_eq!(
            decide(full - SETTLED_WITHIN / 2, Some(full), false),
            Decision::Release
        );
        assert_eq!(decide(0, Some(0), false), Decision::Release);
        assert_eq!(decide(full, Some(0), false), Decision::Release);
    }

    #[test]
    fn the_reserve_is_a_real_allocation() {
        let t = tempfile::tempdir().unwrap();
        let w = DiskWatch::new(t.path());
        let meta = std::fs::metadata(t.path().join(".sovereign-reserve")).unwrap();
        assert_eq!(meta.len(), RESERVE_BYTES);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= RESERVE_BYTES,
            "allocated, not sparse"
        );
        let u = w.usage().unwrap();
        assert!(u.total_bytes > 0 && !u.reserve_released);
    }
}
