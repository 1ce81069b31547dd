//! PostgreSQL's logs: its own output before the logging collector takes over
//! ([`super::STARTUP_LOG`]) and the collector's newest file; read for the host and for
//! error messages.

use super::{CLUSTER_DIR, STARTUP_LOG};
use crate::log_files::{newest, printable, tail_of, LogReadError, MAX_TAIL};
use std::path::Path;

/// The last `max` bytes of the server's output: the startup log, then the newest file
/// of the collector.
pub fn tail(max: usize) -> Result<Vec<u8>, LogReadError> {
    let mut all = tail_of(Path::new(STARTUP_LOG), max).unwrap_or_default();
    if let Some(p) = newest(&Path::new(CLUSTER_DIR).join("log")) {
        all.extend(tail_of(&p, max)?);
    }
    let cut = all.len().saturating_sub(max);
    Ok(all.split_off(cut))
}

/// The last `n` lines of PostgreSQL's output, joined with ` | ` (for error messages).
pub fn last_lines(n: usize) -> String {
    let text = printable(&tail(MAX_TAIL).unwrap_or_default());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
