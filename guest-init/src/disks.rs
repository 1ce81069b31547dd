//! The guest's disks of its own: the data disk (`/dev/vdb`, `postgres.img` on the host,
//! /data) and the backup disk (`/dev/vdc`, `backup.img`, /backup). Each is formatted
//! ext4 with its own label on first boot if it is blank, checked with `e2fsck -p` on
//! every boot, and mounted. A disk that is neither blank nor carries the expected label
//! is never formatted: the backup disk can never be mistaken for the data disk.

use crate::command::{self, CommandError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The label our data filesystem carries (the root image is `sovereign-root`).
pub const DATA_LABEL: &str = "sovereign-data";

/// Where the data disk is mounted: tailscaled's state, the cluster
/// ([`crate::postgres::CLUSTER_DIR`]) and what the steps that replace it keep beside it.
pub const DATA_MOUNT: &str = "/data";

/// Offset of the ext2/3/4 superblock.
const SUPERBLOCK: usize = 1024;

/// What went wrong with the data disk.
#[derive(Debug, Error)]
pub enum DiskError {
    #[error("{0} does not exist (is the disk attached?)")]
    Missing(String),
    #[error("cannot read {dev}: {source}")]
    Read {
        /// Device path.
        dev: String,
        /// Why.
        source: std::io::Error,
    },
    #[error("{dev} is not blank and not a {label} filesystem ({found}); refusing to touch it")]
    Foreign {
        /// Device path.
        dev: String,
        /// The label expected.
        label: &'static str,
        /// What we found.
        found: String,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("not mounted: the guest is shutting down")]
    ShuttingDown,
    #[error("mounting {dev} on {target} failed: {source}")]
    Mount {
        /// Device path.
        dev: String,
        /// Mount point.
        target: String,
        /// The errno.
        source: nix::Error,
    },
}

/// What the start of a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskContent {
    /// All zeros: never used.
    Blank,
    /// An ext filesystem with this label.
    Ext {
        /// Volume label (may be empty).
        label: String,
    },
    /// Anything else.
    Other,
}

/// Classifies the first MiB of a disk.
pub fn classify(head: &[u8]) -> DiskContent {
    if head.iter().all(|b| *b == 0) {
        return DiskContent::Blank;
    }
    let magic = head.get(SUPERBLOCK + 56..SUPERBLOCK + 58);
    if magic == Some(&[0x53, 0xef]) {
        let label = head
            .get(SUPERBLOCK + 120..SUPERBLOCK + 136)
            .map(|l| {
                String::from_utf8_lossy(l)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default();
        return DiskContent::Ext { label };
    }
    DiskContent::Other
}

/// What preparing the disk did.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Device path.
    pub dev: String,
    /// True when it was formatted now (first boot).
    pub formatted: bool,
    /// e2fsck's verdict.
    pub fsck: String,
    /// What growing the filesystem to a larger device did (`sovereign disk grow` with
    /// the VM stopped), or why it could not.
    pub grown: Option<String>,
}

impl fmt::Display for DiskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, e2fsck: {}",
            self.dev,
            if self.formatted {
                "formatted (first boot)"
            } else {
                "reused"
            },
            self.fsck
        )?;
        if let Some(grown) = &self.grown {
            write!(f, ", {grown}")?;
        }
        Ok(())
    }
}

/// Formats if blank (with `label`), checks, mounts at `target`.
pub fn prepare(dev: &Path, target: &Path, label: &'static str) -> Result<DiskInfo, DiskError> {
    let name = dev.display().to_string();
    let start = Instant::now();
    while !dev.exists() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(DiskError::Missing(name));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut head = vec![0u8; 1 << 20];
    let read = File::open(dev).and_then(|mut f| f.read_exact(&mut head));
    read.map_err(|source| DiskError::Read {
        dev: name.clone(),
        source,
    })?;
    let formatted = match classify(&head) {
        DiskContent::Blank => {
            log::info!("disk {name} is blank: formatting ext4 ({label})");
            command::run(
                Command::new("mkfs.ext4")
                    .args([
                        "-q",
                        "-F",
                        "-L",
                        label,
                        "-E",
                        "lazy_itable_init=1,lazy_journal_init=1",
                    ])
                    .arg(dev),
                &[],
            )?;
            true
        }
        DiskContent::Ext { label: found } if found == label => false,
        DiskContent::Ext { label: found } => {
            return Err(DiskError::Foreign {
                dev: name,
                label,
                found: format!("ext filesystem labelled {found:?}"),
            })
        }
        DiskContent::Other => {
            return Err(DiskError::Foreign {
                dev: name,
                label,
                found: "unknown content".into(),
            })
        }
    };
    // 1 = errors corrected, 2 = corrected (a reboot matters only for a mounted root).
    let fsck = command::run(Command::new("e2fsck").arg("-p").arg(dev), &[1, 2])?;
    let verdict = match fsck.exit {
        crate::lifecycle::reaper::Exit::Code(0) => "clean".to_string(),
        other => format!("repaired ({other})"),
    };
    let _ = std::fs::create_dir_all(target);
    mount(
        Some(dev),
        target,
        Some("ext4"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|source| DiskError::Mount {
        dev: name.clone(),
        target: target.display().to_string(),
        source,
    })?;
    Ok(DiskInfo {
        grown: grow(dev),
        dev: name,
        formatted,
        fsck: verdict,
    })
}

/// Grows the mounted filesystem on `dev` to its device; what it did, for the stage and
/// the log (a failure is said, not fatal: the disk works at its old size).
fn grow(dev: &Path) -> Option<String> {
    match crate::disk_grow::grow_to_device(dev) {
        Ok(Some(g)) => {
            log::info!("{}: {g}", dev.display());
            Some(g.to_string())
        }
        Ok(None) => None,
        Err(e) => {
            log::warn!("{}: cannot grow the filesystem: {e}", dev.display());
            Some(format!("cannot grow the filesystem to the disk: {e}"))
        }
    }
}

/// A disk's mount, guarded so that shutdown and bring-up cannot cross: a mount in
/// progress finishes before shutdown unmounts, and none starts after.
#[derive(Debug)]
pub struct Disk {
    target: PathBuf,
    label: &'static str,
    /// Whether an emergency reserve is kept (the data disk: see [`crate::disk_watch`]).
    keeps_reserve: bool,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// The device, once mounted.
    dev: Option<PathBuf>,
    mounted: bool,
    closed: bool,
    watch: Option<crate::disk_watch::DiskWatch>,
}

impl Disk {
    /// The gate of the disk labelled `label` that mounts at `target`.
    pub fn new(target: impl Into<PathBuf>, label: &'static str) -> Disk {
        Disk {
            target: target.into(),
            label,
            keeps_reserve: false,
            state: Mutex::default(),
        }
    }

    /// The data disk: mounted at `target`, with an emergency reserve.
    pub fn data(target: impl Into<PathBuf>) -> Disk {
        Disk {
            keeps_reserve: true,
            ..Disk::new(target, DATA_LABEL)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`prepare`]s `dev` at the target, unless shutdown has begun.
    pub fn mount(&self, dev: &Path) -> Result<DiskInfo, DiskError> {
        let mut st = self.lock();
        if st.closed {
            return Err(DiskError::ShuttingDown);
        }
        let info = prepare(dev, &self.target, self.label)?;
        st.mounted = true;
        st.dev = Some(dev.to_path_buf());
        if self.keeps_reserve {
            st.watch = Some(crate::disk_watch::DiskWatch::new(&self.target));
        }
        Ok(info)
    }

    /// The disk's space, once mounted.
    pub fn usage(&self) -> Option<protocol::messages::DiskUsage> {
        let st = self.lock();
        match &st.watch {
            Some(w) => w.usage(),
            None if st.mounted => crate::disk_watch::usage_at(&self.target, false),
            None => None,
        }
    }

    /// Releases or retakes the emergency reserve as the space demands.
    pub fn check_space(&self) -> crate::disk_watch::Change {
        let mut st = self.lock();
        if st.closed {
            return crate::disk_watch::Change::None;
        }
        match st.watch.as_mut() {
            Some(w) => w.check(),
            None => crate::disk_watch::Change::None,
        }
    }

    /// Grows the filesystem when the host made the disk larger while it was mounted;
    /// what it did, once.
    pub fn grow_if_device_grew(&self) -> Option<String> {
        let st = self.lock();
        if st.closed || !st.mounted {
            return None;
        }
        grow(st.dev.as_deref()?)
    }

    /// Refuses later mounts and unmounts the disk if it is mounted (by us, or found in
    /// the mount table).
    pub fn close_and_unmount(&self) {
        let mut st = self.lock();
        st.closed = true;
        if st.mounted || crate::mounts::is_mounted(&self.target.to_string_lossy()) {
            unmount(&self.target);
            st.mounted = false;
        }
    }
}

/// Unmounts the data disk at shutdown (lazily if something still holds it).
pub fn unmount(target: &Path) {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => log::info!("unmounted {}", target.display()),
        Err(e) => {
            log::warn!("unmount {} failed ({e}); detaching", target.display());
            let _ = umount2(target, MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let blank = vec![0u8; 4096];
        assert_eq!(classify(&blank), DiskContent::Blank);
        let mut ext = vec![0u8; 4096];
        ext[SUPERBLOCK + 56] = 0x53;
        ext[SUPERBLOCK + 57] = 0xef;
        ext[SUPERBLOCK + 120..SUPERBLOCK + 120 + DATA_LABEL.len()]
            .copy_from_slice(DATA_LABEL.as_bytes());
        assert_eq!(
            classify(&ext),
            DiskContent::Ext {
                label: DATA_LABEL.into()
            }
        );
        let mut other = vec![0u8; 4096];
        other[510] = 0x55;
        other[511] = 0xaa;
        assert_eq!(classify(&other), DiskContent::Other);
    }
}
