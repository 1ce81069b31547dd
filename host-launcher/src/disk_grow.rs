//! `sovereign disk grow`'s rules, apart from how the VMM is told: a disk only grows, the
//! host must have room for what it adds (the image is sparse, but the guest may fill
//! it), and a stopped VM's image is simply made longer (the guest grows its filesystem
//! when it next mounts it).

use std::path::{Path, PathBuf};
use thiserror::Error;

/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Why a disk cannot grow as asked.
#[derive(Debug, Error)]
pub enum GrowError {
    #[error("{flag} {given:?}: give the new size in GiB (8, 8G or 8GiB)")]
    BadSize {
        /// `--data` or `--backup`.
        flag: &'static str,
        /// What was given.
        given: String,
    },
    #[error("there is no disk image at {path} yet: the first start makes it the spec's size_gib; set that instead")]
    NoImage {
        /// The image path.
        path: PathBuf,
    },
    #[error("{path} is {current_gib} GiB and a disk never shrinks: give a size larger than that (asked: {asked_gib} GiB)")]
    NotLarger {
        /// The image path.
        path: PathBuf,
        /// Its size now, GiB (rounded down).
        current_gib: u64,
        /// What was asked.
        asked_gib: u64,
    },
    #[error("growing {path} by {growth_mib} MiB needs that much free on the host, and {dir} has {free_mib} MiB (the image is sparse, but the guest may fill it)")]
    NoRoom {
        /// The image path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// What growing adds.
        growth_mib: u64,
        /// What the host has free there.
        free_mib: u64,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Reads a size in GiB as `--data`/`--backup` take it: `8`, `8G` or `8GiB`.
pub fn parse_gib(flag: &'static str, given: &str) -> Result<u64, GrowError> {
    let digits = given
        .strip_suffix("GiB")
        .or_else(|| given.strip_suffix('G'))
        .unwrap_or(given);
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && n <= 4096 => Ok(n),
        _ => Err(GrowError::BadSize {
            flag,
            given: given.to_string(),
        }),
    }
}

/// What growing `path` to `gib` GiB would change: its size now and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Bytes now.
    pub from: u64,
    /// Bytes after.
    pub to: u64,
}

/// Checks that the image at `path` exists, is smaller than `gib`, and that the host has
/// room for the difference.
pub fn plan(path: &Path, gib: u64) -> Result<Plan, GrowError> {
    let io = |what, source| GrowError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let from = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GrowError::NoImage {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io("read", e)),
    };
    let to = gib * GIB;
    if to <= from {
        return Err(GrowError::NotLarger {
            path: path.to_path_buf(),
            current_gib: from / GIB,
            asked_gib: gib,
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let fs = rustix::fs::statvfs(dir).map_err(|e| io("check the space beside", e.into()))?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free < to - from {
        return Err(GrowError::NoRoom {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            growth_mib: (to - from) >> 20,
            free_mib: free >> 20,
        });
    }
    Ok(Plan { from, to })
}

/// Makes the stopped VM's image at `path` `plan.to` bytes long (sparse) and syncs it.
pub fn grow_offline(path: &Path, plan: Plan) -> Result<(), GrowError> {
    let io = |what, source| GrowError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io("open", e))?;
    f.set_len(plan.to).map_err(|e| io("grow", e))?;
    f.sync_all().map_err(|e| io("sync", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_gib_and_a_bad_one_names_the_flag() {
        assert_eq!(parse_gib("--data", "8").unwrap(), 8);
        assert_eq!(parse_gib("--data", "8G").unwrap(), 8);
        assert_eq!(parse_gib("--data", "16GiB").unwrap(), 16);
        for bad in ["", "0", "8M", "-1", "8 G", "99999"] {
            let e = parse_gib("--backup", bad).unwrap_err().to_string();
            assert!(e.starts_with("--backup "), "{e}");
        }
    }

    #[test]
    fn a_disk_only_grows_and_keeps_what_it_holds() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("postgres.img");
        let e = plan(&img, 8).unwrap_err();
        assert!(matches!(e, GrowError::NoImage { .. }), "{e}");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(4 * GIB).unwrap();
        f.write_all_at(b"rows", 4 * GIB - 4).unwrap();
        drop(f);
        let e = plan(&img, 4).unwrap_err().to_string();
        assert!(e.contains("is 4 GiB and a disk never shrinks"), "{e}");
        let e = plan(&img, 2).unwrap_err().to_string();
        assert!(e.contains("never shrinks"), "{e}");
        let p = plan(&img, 6).unwrap();
        assert_eq!(
            p,
            Plan {
                from: 4 * GIB,
                to: 6 * GIB
            }
        );
        grow_offline(&img, p).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 6 * GIB);
        let mut tail = [0u8; 4];
        std::fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut tail, 4 * GIB - 4)
            .unwrap();
        assert_eq!(&tail, b"rows");
    }

    #[test]
    fn the_host_must_have_room_for_what_growing_adds() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("postgres.img");
        std::fs::File::create(&img).unwrap().set_len(GIB).unwrap();
        let e = plan(&img, 4096).unwrap_err().to_string();
        assert!(e.contains("needs that much free on the host"), "{e}");
    }
}
