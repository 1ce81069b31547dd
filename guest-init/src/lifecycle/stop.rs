//! What stopping means to PID 1: whether power-off was asked for (from then on nothing
//! new starts), and the time one process gets to stop before it is killed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set once power-off was asked for.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Records that power-off was asked for: from now on no stage and no multi-step
/// operation begins (one begun and cut off by the power-off is finished or undone by
/// the next boot).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether power-off was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// How long one process (or group) may take: its stop signal, then SIGKILL, then a
/// last wait for the kernel to tear it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopBudget {
    /// From the stop signal until SIGKILL.
    pub grace: Duration,
    /// From SIGKILL until we go on regardless.
    pub after_kill: Duration,
}

impl StopBudget {
    /// The longest this step can take.
    pub fn worst_case(self) -> Duration {
        self.grace + self.after_kill
    }
}
