//! Reading and bounding log files: their ends read for the host (`sovereign logs`),
//! small enough for one control frame, and their size kept bounded on the data disk.
//! Only the end of a file is ever read (a seek, then at most [`MAX_TAIL`] bytes), and
//! files are opened without following symlinks: the postgres user can write in its log
//! directory. Each service owns its logs and where they are (`postgres::logs`,
//! `tailscale`, `backup::pgbackrest`); this module knows only files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Most bytes of a log sent in one answer (JSON escaping may grow it; the answer is cut
/// again to fit a frame if need be).
pub const MAX_TAIL: usize = 24 * 1024;

/// Size at which a log PID 1 appends to (tailscaled's, postgres' startup output) is
/// rotated: copied to `<name>.1` (replacing the previous copy) and truncated, so each
/// takes at most twice this on the data disk.
pub const ROTATE_AT: u64 = 8 << 20;

/// A log that could not be read or rotated.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct LogReadError {
    /// The file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogReadError {
    let path = path.display().to_string();
    move |source| LogReadError { path, source }
}

/// The text of `bytes` with control characters (other than newline and tab) shown as
/// U+FFFD.
pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// The last `max` bytes of a seekable stream: one seek, one bounded read.
pub fn tail_bytes<R: Read + Seek>(r: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let len = r.seek(SeekFrom::End(0))?;
    let from = len.saturating_sub(u64::try_from(max).unwrap_or(u64::MAX));
    r.seek(SeekFrom::Start(from))?;
    let mut out = Vec::with_capacity(usize::try_from(len - from).unwrap_or(max));
    r.take(u64::try_from(max).unwrap_or(u64::MAX))
        .read_to_end(&mut out)?;
    Ok(out)
}

fn open_no_follow(path: &Path) -> Result<File, LogReadError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error(path))
}

/// The last `max` bytes of the file at `path`.
pub fn tail_of(path: &Path, max: usize) -> Result<Vec<u8>, LogReadError> {
    let mut f = open_no_follow(path)?;
    tail_bytes(&mut f, max).map_err(io_error(path))
}

/// The newest regular file in `dir`.
pub fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Rotates `path` when it has grown past `limit`: copies it to `<path>.1` and truncates
/// it (the writer keeps its O_APPEND descriptor and goes on at the new end). Lines
/// written between the copy and the truncation are lost; the disk never fills.
pub fn rotate_if_large(path: &Path, limit: u64) -> Result<bool, LogReadError> {
    let mut f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(path)(e)),
    };
    let len = f.metadata().map_err(io_error(path))?.len();
    if len <= limit {
        return Ok(false);
    }
    let old = PathBuf::from(format!("{}.1", path.display()));
    let mut copy = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&old)
        .map_err(io_error(&old))?;
    std::io::copy(&mut (&mut f).take(len), &mut copy).map_err(io_error(&old))?;
    f.set_len(0).map_err(io_error(path))?;
    log::info!(
        "{} reached {len} bytes: rotated to {}",
        path.display(),
        old.display()
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A reader that fails the test if more than `limit` bytes are read from it.
    struct Counting<R> {
        inner: R,
        read: usize,
        limit: usize,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            assert!(self.read <= self.limit, "read {} bytes", self.read);
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn only_the_tail_is_read_and_it_is_printable() {
        let mut log = b"old line\n".repeat(1_000_000);
        log.extend_from_slice(b"last\0line\x1b[1m\n");
        let mut r = Counting {
            inner: std::io::Cursor::new(log),
            read: 0,
            limit: 100,
        };
        let t = printable(&tail_bytes(&mut r, 100).unwrap());
        assert!(t.ends_with("last\u{fffd}line\u{fffd}[1m\n"), "{t:?}");
        let mut short = std::io::Cursor::new(b"abc".to_vec());
        assert_eq!(tail_bytes(&mut short, 100).unwrap(), b"abc");
    }

    #[test]
    fn a_large_log_is_rotated_and_keeps_growing_from_zero() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("tailscaled.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(&[b'x'; 5000]).unwrap();
        assert!(!rotate_if_large(&path, 10_000).unwrap());
        writer.write_all(&[b'y'; 6000]).unwrap();
        assert!(rotate_if_large(&path, 10_000).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(t.path().join("tailscaled.log.1"))
                .unwrap()
                .len(),
            11_000
        );
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert!(!rotate_if_large(&t.path().join("missing.log"), 1).unwrap());
    }
}
