//! The boot's events: every event is kept (a `watch` that connects late replays them)
//! and broadcast to the watchers already connected. Delivering a final event (up or
//! failed) is counted, so the supervisor knows the starting CLI heard the outcome.

use crate::control::write_frame;
use crate::ipc::{Event, Reply};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::broadcast;

/// How long a final event waits for a watcher (`start` may still be connecting).
const FINAL_DELIVERY: Duration = Duration::from_secs(5);

/// Event history shared with client tasks: `watch` replays it, then follows live.
#[derive(Debug)]
pub struct Events {
    history: Mutex<Vec<Event>>,
    live: broadcast::Sender<Event>,
    finals_delivered: AtomicUsize,
}

impl Events {
    /// An empty history with no watcher.
    pub fn new() -> Events {
        let (live, _) = broadcast::channel(64);
        Events {
            history: Mutex::new(Vec::new()),
            live,
            finals_delivered: AtomicUsize::new(0),
        }
    }

    /// Logs `ev`, keeps it for late watchers and sends it to the current ones.
    pub fn emit(&self, ev: Event) {
        log::info!("event: {}", serde_json::to_string(&ev).unwrap_or_default());
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.push(ev.clone());
        let _ = self.live.send(ev);
    }

    /// Serves a `watch`: every event so far, then live ones, until the final event was
    /// delivered or the watcher left.
    pub async fn watch(&self, stream: &mut UnixStream) {
        let (past, mut rx) = {
            let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            (h.clone(), self.live.subscribe())
        };
        for ev in past {
            if !self.deliver(stream, ev).await {
                return;
            }
        }
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if !self.deliver(stream, ev).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!("watcher lagged {n} events")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Sends `ev` to a watcher. `false` ends the watch: the client left, or `ev` was
    /// the final event (then counted as delivered, which lets the supervisor know the
    /// starting CLI has heard the outcome).
    async fn deliver(&self, stream: &mut UnixStream, ev: Event) -> bool {
        let fin = is_final(&ev);
        if write_frame(stream, &Reply::Event(ev)).await.is_err() {
            return false;
        }
        if fin {
            self.finals_delivered.fetch_add(1, Ordering::SeqCst);
        }
        !fin
    }

    /// Gives a watching `start` (possibly still connecting) up to 5 s to read the final
    /// event, so the supervisor does not exit before its outcome was told.
    pub async fn wait_delivered(&self) {
        let until = Instant::now() + FINAL_DELIVERY;
        while self.finals_delivered.load(Ordering::SeqCst) == 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Up and failed end a watch.
fn is_final(ev: &Event) -> bool {
    matches!(ev, Event::Up(_) | Event::Failed(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::read_frame;
    use crate::rundir::Role;
    use protocol::control::FrameReader;
    use std::sync::Arc;

    fn launched(pid: i32) -> Event {
        Event::Launched {
            role: Role::Vmm,
            pid,
            elapsed_ms: 1,
        }
    }

    fn up() -> Event {
        Event::Up(crate::ipc::UpInfo {
            elapsed_ms: 2,
            wait_for: protocol::Stage::Control,
            hostname: "sql-vm".into(),
            tailnet: None,
            postgres_port: 5432,
            password_file: "/s/pw".into(),
            console_log: "/s/console.log".into(),
            supervisor_pid: 1,
        })
    }

    fn stopping() -> Event {
        Event::Stopping {
            reason: "test".into(),
        }
    }

    async fn next(client: &mut UnixStream, reader: &mut FrameReader) -> Option<Event> {
        match read_frame::<_, Reply>(client, reader).await.unwrap() {
            Some(Reply::Event(ev)) => Some(ev),
            None => None,
            Some(other) => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_late_watcher_gets_the_history_then_live_events_until_the_final_one() {
        let events = Arc::new(Events::new());
        events.emit(launched(1));
        events.emit(launched(2));
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let watch = tokio::spawn({
            let events = events.clone();
            async move { events.watch(&mut server).await }
        });
        let mut reader = FrameReader::new();
        assert_eq!(next(&mut client, &mut reader).await, Some(launched(1)));
        assert_eq!(next(&mut client, &mut reader).await, Some(launched(2)));
        events.emit(stopping());
        assert_eq!(next(&mut client, &mut reader).await, Some(stopping()));
        assert_eq!(events.finals_delivered.load(Ordering::SeqCst), 0);

        events.emit(up());
        assert_eq!(next(&mut client, &mut reader).await, Some(up()));
        watch.await.unwrap();
        assert_eq!(
            next(&mut client, &mut reader).await,
            None,
            "the watch ended"
        );
        assert_eq!(events.finals_delivered.load(Ordering::SeqCst), 1);
        // Delivered: no wait.
        let t = Instant::now();
        events.wait_delivered().await;
        assert!(t.elapsed() < FINAL_DELIVERY);
    }

    #[test]
    fn only_up_and_failed_end_a_watch() {
        assert!(!is_final(&launched(1)));
        assert!(!is_final(&stopping()));
        assert!(is_final(&up()));
    }
}
