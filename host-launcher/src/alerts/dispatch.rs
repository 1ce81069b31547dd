//! Delivery off the supervisor's loop: notices queue for one thread that sends each to
//! every sink in order, retrying with backoff, so a slow or dead receiver never holds
//! the supervisor up and a clear never overtakes its raise.

use super::notice::Notice;
use super::Sink;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Notices that may wait for the sender; past this, new ones are dropped (and logged).
const QUEUE: usize = 64;
/// Waits before each attempt at one sink: about four minutes in all.
const BACKOFF_SECS: [u64; 7] = [0, 2, 5, 15, 30, 60, 120];

/// The sending thread's handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    tx: SyncSender<Notice>,
    pending: Arc<(Mutex<usize>, Condvar)>,
}

impl Dispatcher {
    /// Starts the thread that sends to `sinks` (none: notices are only logged).
    pub fn start(sinks: Vec<Sink>) -> Dispatcher {
        let (tx, rx) = sync_channel(QUEUE);
        let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
        let counter = pending.clone();
        std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || deliver_all(rx, &sinks, &counter))
            .map_or_else(
                |e| log::error!("cannot start the alert sender: {e}; alerts are only logged"),
                |_| (),
            );
        Dispatcher { tx, pending }
    }

    /// Queues `n`; never blocks.
    pub fn post(&self, n: Notice) {
        let title = n.title();
        let (count, _) = &*self.pending;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let dropped = match self.tx.try_send(n) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some("the queue is full"),
            Err(TrySendError::Disconnected(_)) => Some("the sender is gone"),
        };
        if let Some(why) = dropped {
            self.done_one();
            log::error!("alert '{title}' not sent: {why}");
        }
    }

    fn done_one(&self) {
        finish_one(&self.pending);
    }

    /// Waits until every queued notice was sent (or given up on), at most `within`;
    /// true when the queue is empty. For the last notice before the supervisor exits.
    pub fn drain(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (count, cv) = &*self.pending;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = cv
                .wait_timeout(n, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

fn finish_one(pending: &(Mutex<usize>, Condvar)) {
    let (count, cv) = pending;
    let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
    *n = n.saturating_sub(1);
    cv.notify_all();
}

fn deliver_all(rx: Receiver<Notice>, sinks: &[Sink], pending: &(Mutex<usize>, Condvar)) {
    for n in rx {
        for sink in sinks {
            deliver(sink, &n);
        }
        finish_one(pending);
    }
}

/// Sends `n` to `sink`, retrying with [`BACKOFF_SECS`].
fn deliver(sink: &Sink, n: &Notice) {
    for (attempt, wait) in BACKOFF_SECS.iter().enumerate() {
        std::thread::sleep(Duration::from_secs(*wait));
        match sink.send(n) {
            Ok(how) => {
                log::info!(
                    "alert '{}' ({}) sent to {}: {how}",
                    n.title(),
                    n.kind,
                    sink.name()
                );
                return;
            }
            Err(e) if attempt + 1 < BACKOFF_SECS.len() => {
                log::warn!("{e}; trying again in {} s", BACKOFF_SECS[attempt + 1])
            }
            Err(e) => log::error!("{e}; alert '{}' ({}) given up", n.title(), n.kind),
        }
    }
}
