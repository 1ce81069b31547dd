//! The serial console: PID 1's stdio and the `SOVEREIGN <stage> <json>` markers that
//! let the host follow the boot even when vsock never comes up.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::dup2_stdin;
use protocol::marker::Marker;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};

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

/// Serialises our writes to the serial console. A marker goes through the tty layer,
/// which drains to the UART in the background, while kernel log lines (ours via
/// /dev/kmsg included) are printed straight to the UART; without this lock a log line
/// could land in the middle of a long marker and break its JSON.
static CONSOLE: Mutex<()> = Mutex::new(());

/// Holds the console for one kernel-log write (see [`CONSOLE`]).
pub fn lock() -> MutexGuard<'static, ()> {
    CONSOLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prints one marker line on the console with a single write, and waits until the
/// tty has transmitted it, so nothing we log can interleave with it.
pub fn marker(marker: &Marker) {
    let mut line = marker.to_line();
    line.insert(0, '\n');
    line.push('\n');
    let _console = lock();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    // Not a tty (tests, tools): nothing to drain.
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
}
