//! Disk images on the host: created sparse at their size the first time a VM starts
//! (the guest formats a blank disk), never touched once they exist, and copied whole
//! before a step rewrites one ([`copy_kept`]): in Rust rather than with `cp`, whose
//! sparse and reflink flags are GNU's (the phone runs toybox), and synced before the
//! step that relies on the copy begins.

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

/// Why a kept copy could not be made. Nothing is left behind: a partial copy is removed.
#[derive(Debug, Error)]
pub enum CopyError {
    #[error("{0} exists already: a kept copy is never overwritten")]
    Exists(PathBuf),
    #[error("copying {from} needs {need_mib} MiB in {dir}, which has {free_mib} MiB free: free some space first (nothing was changed)")]
    NoSpace {
        from: PathBuf,
        dir: PathBuf,
        need_mib: u64,
        free_mib: u64,
    },
    #[error(
        "copying {from} to {to}: {source} (the partial copy was removed; nothing else was changed)"
    )]
    Io {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Room kept free beyond the copy's own blocks, so the copy never fills the disk.
const COPY_MARGIN: u64 = 64 << 20;

/// Reads in chunks of this size; an all-zero chunk stays a hole in the copy.
const COPY_CHUNK: usize = 1 << 20;

/// Copies the image `from` to `to`, which must not exist: sparse (only the blocks
/// that hold data are read, and zero chunks stay holes), written as `to.partial`,
/// synced, then renamed into place with its directory synced, so after a power cut
/// there is either a whole copy or none. Checks the free space first. Returns the
/// bytes written.
pub fn copy_kept(from: &Path, to: &Path) -> Result<u64, CopyError> {
    if to.exists() {
        return Err(CopyError::Exists(to.to_path_buf()));
    }
    let io = |source| CopyError::Io {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let dir = to.parent().unwrap_or(Path::new("."));
    let src = std::fs::File::open(from).map_err(io)?;
    let meta = src.metadata().map_err(io)?;
    {
        use std::os::unix::fs::MetadataExt;
        let need = meta.blocks() * 512;
        let fs = rustix::fs::statvfs(dir).map_err(|e| io(e.into()))?;
        let free = fs.f_bavail * fs.f_frsize;
        if need + COPY_MARGIN > free {
            return Err(CopyError::NoSpace {
                from: from.to_path_buf(),
                dir: dir.to_path_buf(),
                need_mib: need >> 20,
                free_mib: free >> 20,
            });
        }
    }
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let copied = copy_extents(&src, meta.len(), &partial).and_then(|written| {
        std::fs::rename(&partial, to)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(written)
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied.map_err(io)
}

/// Writes the data extents of `src` (`len` bytes long) into a new file at `dst`
/// (0600, no symlink followed), synced; returns the bytes written.
fn copy_extents(src: &std::fs::File, len: u64, dst: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let _ = std::fs::remove_file(dst);
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        // Never written through a symlink planted at its name.
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dst)?;
    out.set_len(len)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut written = 0;
    let mut at = 0;
    while at < len {
        // The next extent that holds data, and where it ends; a file system without
        // SEEK_DATA is read whole.
        let (start, end) = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(at)) {
            Ok(start) => {
                let end = rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(start)).unwrap_or(len);
                (start, end.min(len))
            }
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => (at, len),
        };
        let mut pos = start;
        while pos < end {
            let n = usize::try_from((end - pos).min(COPY_CHUNK as u64)).unwrap_or(COPY_CHUNK);
            src.read_exact_at(&mut buf[..n], pos)?;
            if buf[..n].iter().any(|b| *b != 0) {
                out.write_all_at(&buf[..n], pos)?;
                written += n as u64;
            }
            pos += n as u64;
        }
        at = end;
    }
    out.sync_all()?;
    Ok(written)
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
    fn a_kept_copy_is_whole_sparse_and_never_overwrites() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("postgres.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(256 << 20).unwrap();
        f.write_all_at(b"superblock", 1024).unwrap();
        f.write_all_at(&[7u8; 4096], 100 << 20).unwrap();
        f.write_all_at(b"the end", (256 << 20) - 7).unwrap();
        drop(f);
        let copy = dir.path().join("postgres.img.before-rejoin-1");
        let written = copy_kept(&img, &copy).unwrap();
        assert!(written <= 3 << 20, "only the chunks with data: {written}");
        assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&copy).unwrap());
        let m = std::fs::metadata(&copy).unwrap();
        assert!(m.blocks() * 512 < 8 << 20, "sparse: {} blocks", m.blocks());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert!(!dir
            .path()
            .join("postgres.img.before-rejoin-1.partial")
            .exists());
        assert!(matches!(
            copy_kept(&img, &copy),
            Err(CopyError::Exists(p)) if p == copy
        ));
    }

    #[test]
    fn a_failed_copy_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let e = copy_kept(&dir.path().join("missing.img"), &dir.path().join("copy"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.img") && e.contains("nothing else was changed"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

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
