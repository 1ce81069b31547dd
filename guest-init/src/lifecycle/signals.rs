//! Signal handling, set up before anything else: every signal PID 1 cares about is
//! blocked and read from a signalfd, so none can interrupt a half-done step and none is
//! lost. Children get a clean mask (std's spawn resets it before exec).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a received signal asks the init to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// A child changed state: reap.
    Reap,
    /// Shut down in order and power off (SIGTERM, SIGINT, SIGPWR).
    PowerOff(Signal),
    /// Nothing to do.
    Ignore(Signal),
}

/// The signals the init blocks and reads from its signalfd.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread (and so in every thread it spawns
/// afterwards) and returns the signalfd that receives them.
pub fn install() -> nix::Result<SignalFd> {
    let set = handled();
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
}

/// Maps a signal number to what the init does with it.
pub fn action(signo: u32) -> SignalAction {
    match i32::try_from(signo)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
    {
        Some(Signal::SIGCHLD) => SignalAction::Reap,
        Some(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR)) => SignalAction::PowerOff(s),
        Some(s) => SignalAction::Ignore(s),
        None => SignalAction::Ignore(Signal::SIGSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(action(Signal::SIGCHLD as u32), SignalAction::Reap);
        assert_eq!(
            action(Signal::SIGPWR as u32),
            SignalAction::PowerOff(Signal::SIGPWR)
        );
        assert_eq!(
            action(Signal::SIGHUP as u32),
            SignalAction::Ignore(Signal::SIGHUP)
        );
        assert!(matches!(action(9999), SignalAction::Ignore(_)));
    }
}
