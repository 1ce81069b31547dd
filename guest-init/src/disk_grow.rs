//! A disk the host made larger (`sovereign disk grow`) gets a filesystem to match:
//! ext4 grows while mounted, so the same check serves a boot after an offline grow and
//! a running guest whose disk grew under it. The device's size comes from sysfs, the
//! filesystem's from its superblock; `resize2fs` (with no size: to the device) runs only
//! when the device is clearly larger, so a disk whose size is not a whole number of
//! blocks never triggers it again and again.

use crate::command::{self, CommandError};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// Growth smaller than this is left alone (ext4 may leave a partial last group unused).
const MIN_GROWTH: u64 = 16 << 20;

/// Offset of the ext2/3/4 superblock.
const SUPERBLOCK: usize = 1024;

/// What growing did: the filesystem's size before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    /// Bytes before.
    pub from: u64,
    /// Bytes after.
    pub to: u64,
}

impl std::fmt::Display for Grown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "filesystem grown from {} MiB to {} MiB",
            self.from >> 20,
            self.to >> 20
        )
    }
}

/// Grows the mounted ext4 filesystem on `dev` to the device's size when the device is
/// at least [`MIN_GROWTH`] larger; `None` when there was nothing to do.
pub fn grow_to_device(dev: &Path) -> Result<Option<Grown>, CommandError> {
    let (Some(device), Some(from)) = (device_bytes(dev), filesystem_bytes(dev)) else {
        return Ok(None);
    };
    if device < from.saturating_add(MIN_GROWTH) {
        return Ok(None);
    }
    log::info!(
        "{}: the device is {} MiB, its filesystem {} MiB: growing it",
        dev.display(),
        device >> 20,
        from >> 20
    );
    command::run(Command::new("resize2fs").arg(dev), &[])?;
    let to = filesystem_bytes(dev).unwrap_or(from);
    Ok(Some(Grown { from, to }))
}

/// The block device's size, from `/sys/class/block/<name>/size` (512-byte sectors
/// whatever the device's own block size).
fn device_bytes(dev: &Path) -> Option<u64> {
    let name = dev.file_name()?;
    let sectors =
        std::fs::read_to_string(Path::new("/sys/class/block").join(name).join("size")).ok()?;
    sectors.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// The ext filesystem's size from the superblock on `dev`.
fn filesystem_bytes(dev: &Path) -> Option<u64> {
    let mut head = vec![0u8; SUPERBLOCK + 1024];
    File::open(dev)
        .and_then(|mut f| f.read_exact(&mut head))
        .ok()?;
    superblock_bytes(&head[SUPERBLOCK..])
}

/// The filesystem size an ext2/3/4 superblock records: blocks (the high half only with
/// the 64bit feature) times the block size.
fn superblock_bytes(sb: &[u8]) -> Option<u64> {
    let u32_at = |at: usize| -> Option<u64> {
        let b = sb.get(at..at + 4)?;
        Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    if sb.get(56..58)? != [0x53, 0xef] {
        return None;
    }
    const INCOMPAT_64BIT: u64 = 0x80;
    let lo = u32_at(4)?;
    let hi = if u32_at(0x60)? & INCOMPAT_64BIT != 0 {
        u32_at(0x150)?
    } else {
        0
    };
    let log_block = u32_at(24)?;
    let block = 1024u64.checked_shl(u32::try_from(log_block).ok()?)?;
    (hi << 32 | lo).checked_mul(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(blocks_lo: u32, blocks_hi: u32, log_block: u32, bit64: bool) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[4..8].copy_from_slice(&blocks_lo.to_le_bytes());
        sb[24..28].copy_from_slice(&log_block.to_le_bytes());
        sb[56] = 0x53;
        sb[57] = 0xef;
        let incompat: u32 = if bit64 { 0x80 | 0x40 } else { 0x40 };
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&blocks_hi.to_le_bytes());
        sb
    }

    #[test]
    fn the_superblock_gives_blocks_times_block_size() {
        // 4 GiB of 4 KiB blocks.
        assert_eq!(
            superblock_bytes(&superblock(1 << 20, 0, 2, true)),
            Some(4 << 30)
        );
        // The high half counts only with the 64bit feature.
        assert_eq!(
            superblock_bytes(&superblock(1 << 20, 1, 2, true)),
            Some(((1u64 << 32) + (1 << 20)) * 4096)
        );
        assert_eq!(
            superblock_bytes(&superblock(1 << 20, 1, 2, false)),
            Some(4 << 30)
        );
        let mut not_ext = superblock(1, 0, 0, false);
        not_ext[56] = 0;
        assert_eq!(superblock_bytes(&not_ext), None);
    }

    #[test]
    fn a_real_filesystem_reads_back_the_size_mkfs_gave_it() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&img)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfs.ext4 is not here");
            return;
        }
        assert_eq!(filesystem_bytes(&img), Some(64 << 20));
    }
}
