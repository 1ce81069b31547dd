//! The guest's own logs, read for the host (`sovereign logs`): the end of each, with
//! control characters replaced, small enough for one control frame.

use protocol::messages::GuestLog;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A log that could not be read.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct LogReadError {
    /// The file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

/// Most bytes of a log sent in one answer (JSON escaping may grow it; the frame cap is
/// 64 KiB).
pub const MAX_TAIL: usize = 24 * 1024;

/// The last `max` bytes of `bytes`, as text with control characters (other than
/// newline and tab) shown as U+FFFD.
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..])
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

/// The newest regular file in `dir`.
fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn read(path: &Path) -> Result<Vec<u8>, LogReadError> {
    std::fs::read(path).map_err(|source| LogReadError {
        path: path.display().to_string(),
        source,
    })
}

/// The end of `log`.
pub fn read_tail(log: GuestLog) -> Result<String, LogReadError> {
    let bytes = match log {
        GuestLog::Postgres => {
            let mut all = read(Path::new("/data/postgres/startup.log")).unwrap_or_default();
            if let Some(p) = newest(Path::new("/data/postgres/log")) {
                all.extend(read(&p)?);
            }
            all
        }
        GuestLog::Tailscaled => read(Path::new("/data/tailscale/tailscaled.log"))?,
        GuestLog::Kernel => crate::kmsg::read_ring().join("\n").into_bytes(),
    };
    Ok(tail_text(&bytes, MAX_TAIL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_bounded_and_printable() {
        let mut log = b"old line\n".repeat(10_000);
        log.extend_from_slice(b"last\0line\x1b[1m\n");
        let t = tail_text(&log, 100);
        assert!(t.len() <= 100 + 2 * 3, "{}", t.len());
        assert!(t.ends_with("last\u{fffd}line\u{fffd}[1m\n"), "{t:?}");
    }
}
