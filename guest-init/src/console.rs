//! The serial console: PID 1's stdio and the `SOVEREIGN <stage> <json>` markers that
//! let the host follow the boot even when vsock never comes up.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::dup2_stdin;
use protocol::Stage;
use serde::Serialize;
use std::io::Write;

/// Points fds 0, 1 and 2 at /dev/console. The kernel opens them for init only if
/// /dev/console existed before devtmpfs was mounted; after mounting it ourselves this
/// makes sure our markers reach the serial console in every case.
pub fn reopen_stdio() {
    match open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let _ = dup2_stdin(&fd);
            let _ = nix::unistd::dup2_stdout(&fd);
            let _ = nix::unistd::dup2_stderr(&fd);
        }
        Err(e) => log::warn!("cannot open /dev/console: {e}"),
    }
}

/// Prints one marker line on the console with a single write, so it is not interleaved
/// with our own other output.
pub fn marker<T: Serialize>(stage: Stage, payload: &T) {
    let mut line = protocol::marker::format_marker(stage, payload);
    line.insert(0, '\n');
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
