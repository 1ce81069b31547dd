//! Disk images on the host: created sparse at their size the first time a VM starts
//! (the guest formats a blank disk), never touched once they exist.

use crate::spec::DataDisk;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What [`prepare_disk`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskAction {
    /// The image existed and was left alone.
    Existing,
    /// A sparse image of this many bytes was created.
    Created(u64),
}

/// Why a disk image could not be created.
#[derive(Debug, Error)]
#[error("cannot create the disk image {path} ({size_gib} GiB, sparse): {source}")]
pub struct DiskError {
    /// The image path.
    pub path: PathBuf,
    /// Its intended size.
    pub size_gib: u64,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Where a disk image is kept when a step replaces or rewrites it (a restore onto a new
/// disk, a rejoin): beside it, named `<image>.<why>-<unix seconds>`, never overwritten
/// by a later one.
pub fn kept_copy_path(image: &Path, why: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!("{name}.{why}-{stamp}"))
}

/// Creates a disk image sparse at its size when it does not exist yet (mode 0600). The
/// guest formats a blank disk on first boot; an existing image is never touched.
pub fn prepare_disk(d: &DataDisk) -> Result<DiskAction, DiskError> {
    use std::os::unix::fs::OpenOptionsExt;
    if d.path.exists() {
        return Ok(DiskAction::Existing);
    }
    let err = |source| DiskError {
        path: d.path.clone(),
        size_gib: d.size_gib,
        source,
    };
    let bytes = d.size_gib * 1024 * 1024 * 1024;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&d.path)
        .map_err(err)?;
    f.set_len(bytes).map_err(err)?;
    Ok(DiskAction::Created(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_image_is_created_sparse_and_an_existing_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DataDisk {
            path: dir.path().join("postgres.img"),
            size_gib: 4,
        };
        assert_eq!(prepare_disk(&disk).unwrap(), DiskAction::Created(4 << 30));
        let m = std::fs::metadata(&disk.path).unwrap();
        assert_eq!(m.len(), 4 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(m.blocks() < 64, "sparse: {} blocks", m.blocks());
        assert_eq!(prepare_disk(&disk).unwrap(), DiskAction::Existing);
    }
}
