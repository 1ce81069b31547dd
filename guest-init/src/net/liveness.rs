//! Notices a link to gvproxy that looks connected but moves nothing back.
//!
//! A connection can stay open on our side after gvproxy is gone: vhost-device-vsock
//! (QEMU's vsock device here) ignores a reset from the host end of a connection, which
//! is what a SIGKILLed gvproxy with frames still unread leaves, so the guest kept
//! sending into a connection nobody read and the tailnet stayed down. The watchdog
//! looks at the forwarder's counters: when frames keep going out and none has come in
//! for a while, it asks the gateway a question (a DNS lookup, which gvproxy always
//! answers); when that goes unanswered too, it cuts the connection, and the forwarder
//! dials again like after any other outage.

use super::forwarder::Forwarder;
use protocol::messages::NetworkCounters;
use std::time::{Duration, Instant};

/// How often the watchdog looks at the counters.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long frames may go out with none coming back before the gateway is asked.
pub const QUIET_LIMIT: Duration = Duration::from_secs(4);

/// A question the gateway must answer; `Err` says why it did not.
pub type Probe = Box<dyn Fn() -> Result<(), String> + Send>;

/// Whether the counters call for a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Frames come back, nothing goes out, or the link is down anyway.
    Fine,
    /// Frames went out and none came back for longer than the limit.
    Probe,
}

/// The counters when a frame last came in (or the link last changed).
#[derive(Debug, Clone)]
pub struct Silence {
    frames_in: u64,
    frames_out: u64,
    reconnects: u64,
    since: Instant,
}

impl Silence {
    /// Starts watching from `counters` at `now`.
    pub fn new(now: Instant, counters: &NetworkCounters) -> Silence {
        Silence {
            frames_in: counters.frames_in,
            frames_out: counters.frames_out,
            reconnects: counters.reconnects,
            since: now,
        }
    }

    /// Takes in the counters at `now`; a probe is due when frames went out and none
    /// came in for `limit`.
    pub fn observe(
        &mut self,
        now: Instant,
        counters: &NetworkCounters,
        limit: Duration,
    ) -> Verdict {
        let moved_in = counters.frames_in != self.frames_in;
        let relinked = counters.reconnects != self.reconnects;
        if moved_in || relinked || !counters.connected {
            *self = Silence::new(now, counters);
            return Verdict::Fine;
        }
        let sent = counters.frames_out > self.frames_out;
        if sent && now.duration_since(self.since) >= limit {
            Verdict::Probe
        } else {
            Verdict::Fine
        }
    }

    /// How long nothing came in.
    pub fn quiet_for(&self, now: Instant) -> Duration {
        now.duration_since(self.since)
    }
}

/// Watches `forwarder` for ever (on a thread of its own), asking `probe` when the link
/// has gone quiet and cutting the connection when the probe fails with nothing come in.
pub fn watch(forwarder: Forwarder, probe: Probe) {
    let mut silence = Silence::new(Instant::now(), &forwarder.counters());
    loop {
        std::thread::sleep(CHECK_EVERY);
        let now = Instant::now();
        let before = forwarder.counters();
        if silence.observe(now, &before, QUIET_LIMIT) == Verdict::Fine {
            continue;
        }
        let quiet = silence.quiet_for(now);
        if let Err(e) = probe() {
            let after = forwarder.counters();
            if after.frames_in == before.frames_in && after.reconnects == before.reconnects {
                forwarder.cut_current(format!(
                    "nothing came back from gvproxy for {:.1} s while {} frame(s) went out, \
                     and the gateway did not answer: {e}",
                    quiet.as_secs_f32(),
                    after.frames_out.saturating_sub(silence.frames_out)
                ));
            }
        }
        silence = Silence::new(Instant::now(), &forwarder.counters());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(frames_in: u64, frames_out: u64) -> NetworkCounters {
        NetworkCounters {
            connected: true,
            frames_in,
            frames_out,
            ..NetworkCounters::default()
        }
    }

    const LIMIT: Duration = Duration::from_secs(4);

    #[test]
    fn frames_out_with_none_back_past_the_limit_call_for_a_probe() {
        let t0 = Instant::now();
        let mut s = Silence::new(t0, &counters(10, 10));
        assert_eq!(
            s.observe(t0 + Duration::from_secs(2), &counters(10, 15), LIMIT),
            Verdict::Fine
        );
        assert_eq!(
            s.observe(t0 + Duration::from_secs(4), &counters(10, 20), LIMIT),
            Verdict::Probe
        );
    }

    #[test]
    fn an_idle_link_is_never_probed() {
        let t0 = Instant::now();
        let mut s = Silence::new(t0, &counters(10, 10));
        assert_eq!(
            s.observe(t0 + Duration::from_secs(600), &counters(10, 10), LIMIT),
            Verdict::Fine
        );
    }

    #[test]
    fn a_frame_coming_in_restarts_the_clock() {
        let t0 = Instant::now();
        let mut s = Silence::new(t0, &counters(10, 10));
        assert_eq!(
            s.observe(t0 + Duration::from_secs(3), &counters(11, 15), LIMIT),
            Verdict::Fine
        );
        assert_eq!(
            s.observe(t0 + Duration::from_secs(5), &counters(11, 20), LIMIT),
            Verdict::Fine
        );
        assert_eq!(
            s.observe(t0 + Duration::from_secs(7), &counters(11, 21), LIMIT),
            Verdict::Probe
        );
    }

    #[test]
    fn a_down_or_new_link_is_not_probed() {
        let t0 = Instant::now();
        let mut s = Silence::new(t0, &counters(10, 10));
        let down = NetworkCounters {
            connected: false,
            ..counters(10, 20)
        };
        assert_eq!(
            s.observe(t0 + Duration::from_secs(9), &down, LIMIT),
            Verdict::Fine
        );
        let relinked = NetworkCounters {
            reconnects: 1,
            ..counters(10, 30)
        };
        assert_eq!(
            s.observe(t0 + Duration::from_secs(20), &relinked, LIMIT),
            Verdict::Fine
        );
        assert_eq!(
            s.observe(t0 + Duration::from_secs(22), &relinked, LIMIT),
            Verdict::Fine
        );
    }
}
