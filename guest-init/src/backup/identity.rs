//! The node's tailnet identity, kept on the backup disk as well as the data disk: after
//! the data disk is lost and restored onto a new one, the VM comes back as the same
//! tailnet node (same name, same addresses) instead of a new node that clients do not
//! know. tailscaled's state file holds the node key, so the copy is root's alone
//! (0600 in a 0700 directory), written to a temporary file and renamed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// tailscaled's state on the data disk.
const LIVE: &str = "/data/tailscale/tailscaled.state";

/// Its copy on the backup disk.
const KEPT_DIR: &str = "/backup/identity";

fn kept() -> PathBuf {
    Path::new(KEPT_DIR).join("tailscaled.state")
}

fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let data = std::fs::read(from)?;
    let tmp = to.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, to)
}

/// Copies the live state to the backup disk (after a successful join).
pub fn save() {
    match copy_private(Path::new(LIVE), &kept()) {
        Ok(()) => log::info!("tailnet identity kept on the backup disk"),
        Err(e) => log::warn!("cannot keep the tailnet identity on the backup disk: {e}"),
    }
}

/// On a data disk without tailscaled state, puts the kept identity back; returns true
/// when it did.
pub fn restore_if_missing() -> bool {
    if Path::new(LIVE).exists() || !kept().exists() {
        return false;
    }
    match copy_private(&kept(), Path::new(LIVE)) {
        Ok(()) => {
            log::warn!("new data disk: the tailnet identity kept on the backup disk is back");
            true
        }
        Err(e) => {
            log::warn!("cannot restore the tailnet identity from the backup disk: {e}");
            false
        }
    }
}
