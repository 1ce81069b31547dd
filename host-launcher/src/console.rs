//! The guest's serial console log, read as it grows: complete lines go to the readiness
//! tracker (for `SOVEREIGN <stage> <json>` markers) and the last few are kept as
//! evidence for a failure report. `sovereign console` follows the same file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A line longer than this is cut and emitted anyway (a runaway guest cannot make the
/// launcher buffer without bound).
pub const MAX_LINE: usize = 256 * 1024;

/// Follows a file that another process appends to (and may truncate or recreate).
#[derive(Debug)]
pub struct ConsoleTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    last: VecDeque<String>,
    keep: usize,
}

impl ConsoleTail {
    /// Follows `path` from its start, keeping the last `keep` lines.
    pub fn new(path: impl Into<PathBuf>, keep: usize) -> ConsoleTail {
        ConsoleTail {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            last: VecDeque::with_capacity(keep),
            keep,
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call and returns the new complete lines.
    /// A missing file yields nothing; a file that shrank is read again from its start.
    pub fn poll(&mut self) -> std::io::Result<Vec<String>> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(vec![]);
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        Ok(self.push(&buf))
    }

    /// Splits `bytes` (appended to any pending partial line) into complete lines.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' || self.partial.len() >= MAX_LINE {
                let line = clean_line(&std::mem::take(&mut self.partial));
                self.remember(&line);
                out.push(line);
                if b == b'\n' {
                    continue;
                }
            }
            self.partial.push(b);
        }
        out
    }

    fn remember(&mut self, line: &str) {
        if self.keep == 0 {
            return;
        }
        if self.last.len() == self.keep {
            self.last.pop_front();
        }
        self.last.push_back(line.to_string());
    }

    /// The last lines seen, oldest first, including an unterminated final line.
    pub fn last_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.last.iter().cloned().collect();
        if !self.partial.is_empty() {
            v.push(clean_line(&self.partial));
        }
        v
    }
}

/// Decodes a console line: lossy UTF-8, carriage returns and other control characters
/// (except tab) removed, so a terminal printing it is not reprogrammed by the guest.
pub fn clean_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

/// Moves an existing console log aside (`<log>.prev`) so a new boot starts a fresh
/// file and markers of the previous boot are never mistaken for this one's.
pub fn rotate(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        std::fs::rename(path, crate::paths::with_suffix(path, ".prev"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::marker::Marker;
    use protocol::{Stage, StageReport};
    use std::io::Write;

    #[test]
    fn follows_a_growing_file_and_finds_markers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut tail = ConsoleTail::new(&path, 3);
        assert!(
            tail.poll().unwrap().is_empty(),
            "missing file is not an error"
        );

        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let marker = Marker::from_report(&StageReport::started(Stage::Init, ())).to_line();
        let (first, rest) = marker.split_at(marker.len() / 2);
        f.write_all(format!("[    0.000000] Linux version 6.12\r\n[    1.0] {first}").as_bytes())
            .unwrap();
        f.flush().unwrap();
        let lines = tail.poll().unwrap();
        assert_eq!(lines, vec!["[    0.000000] Linux version 6.12"]);
        assert_eq!(
            tail.last_lines().len(),
            2,
            "the partial line counts as evidence"
        );

        f.write_all(format!("{rest}\r\nplain\n\x1b[31mred\n").as_bytes())
            .unwrap();
        f.flush().unwrap();
        let lines = tail.poll().unwrap();
        assert_eq!(lines.len(), 3);
        let m = Marker::parse(&lines[0]).unwrap();
        assert_eq!(m.stage, Stage::Init);
        assert!(m.stage_report().is_some());
        assert_eq!(lines[2], "[31mred", "escape bytes are dropped");
        assert_eq!(
            tail.last_lines(),
            vec![lines[0].clone(), lines[1].clone(), lines[2].clone()]
        );

        // A new boot truncates the file: reading starts over.
        std::fs::write(&path, b"fresh\n").unwrap();
        assert_eq!(tail.poll().unwrap(), vec!["fresh"]);
    }

    #[test]
    fn runaway_lines_are_cut() {
        let mut tail = ConsoleTail::new("/nonexistent", 2);
        let lines = tail.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
    }

    #[test]
    fn rotation_keeps_the_previous_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        rotate(&path).unwrap();
        std::fs::write(&path, "old").unwrap();
        rotate(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c.log.prev")).unwrap(),
            "old"
        );
    }
}
