//! The kernel log, both ways: the init's `log` backend, and reading the ring buffer.
//! As PID 1 the backend writes to /dev/kmsg once /dev exists, so messages carry kernel
//! timestamps, show on the serial console and survive in `dmesg`; before that, and as
//! an ordinary process (tests, tools), it writes to stderr.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// Where log records go.
#[derive(Debug)]
enum Sink {
    Kmsg(File),
    Stderr,
}

/// A `log::Log` that formats `sovereign-init: message` lines.
#[derive(Debug)]
pub struct Logger {
    sink: Mutex<Sink>,
}

/// Longest message written to /dev/kmsg in one record (the kernel truncates at ~1 KiB).
const KMSG_MAX: usize = 900;

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger writing to stderr at `level`.
pub fn install(level: log::LevelFilter) {
    let logger = LOGGER.get_or_init(|| Logger {
        sink: Mutex::new(Sink::Stderr),
    });
    // Only fails if a logger is already installed; then that one keeps working.
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// Switches the logger to /dev/kmsg (call once devtmpfs is mounted). Keeps stderr if
/// /dev/kmsg cannot be opened, and says so.
pub fn use_kmsg() {
    let Some(logger) = LOGGER.get() else { return };
    match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(f) => {
            if let Ok(mut sink) = logger.sink.lock() {
                *sink = Sink::Kmsg(f);
            }
        }
        Err(e) => log::warn!("cannot open /dev/kmsg ({e}); logging to the console only"),
    }
}

/// syslog priority for a record, as /dev/kmsg expects it in `<N>`.
fn kmsg_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Cuts `msg` to at most `max` bytes on a character boundary.
fn truncate(msg: &mut String, max: usize) {
    if msg.len() > max {
        let mut cut = max;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("...");
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        match &mut *sink {
            Sink::Kmsg(file) => {
                let mut msg = record.args().to_string();
                truncate(&mut msg, KMSG_MAX);
                // One write() per record: /dev/kmsg treats each write as one message.
                let line = format!("<{}>sovereign-init: {msg}\n", kmsg_priority(record.level()));
                let _console = crate::console::lock();
                let _ = file.write_all(line.as_bytes());
            }
            Sink::Stderr => {
                let _ = writeln!(
                    std::io::stderr(),
                    "sovereign-init: {:<5} {}",
                    record.level(),
                    record.args()
                );
            }
        }
    }

    fn flush(&self) {}
}

/// Reads the kernel log records currently in the ring buffer (message text only, the
/// newest 400), for explaining a failed probe and for `sovereign logs kernel`.
pub fn read_ring() -> Vec<String> {
    let Ok(fd) = open(
        "/dev/kmsg",
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // "prio,seq,usec,flags;message\n[ continuation lines ]"
                if let Some((_, msg)) = rec.split_once(';') {
                    lines.push(msg.lines().next().unwrap_or("").to_string());
                }
            }
            // A record was overwritten while we read: keep going from the next one.
            Err(nix::errno::Errno::EPIPE) => continue,
            Err(_) => break,
        }
    }
    let keep = lines.len().saturating_sub(400);
    lines.split_off(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "é".repeat(600);
        truncate(&mut s, KMSG_MAX);
        assert!(s.len() <= KMSG_MAX + 3);
        assert!(s.ends_with("..."));
        let mut short = "ok".to_string();
        truncate(&mut short, KMSG_MAX);
        assert_eq!(short, "ok");
    }
}
