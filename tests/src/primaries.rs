//! How many nodes of a cluster take writes, sampled once a second while something
//! happens to it: the measure of "never two primaries while they can see each other".
//! A node counts when its server answers `pg_is_in_recovery()` with `f` (asked through
//! `sovereign query`, over its own control channel, so a node the tailnet cannot reach
//! is still counted).

use crate::vm::Vm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One sample: when, and how many nodes took writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Since the watch began.
    pub at: Duration,
    /// Nodes that answered as read-write primaries.
    pub writable: usize,
}

/// The samples of one watch.
#[derive(Debug, Clone, Default)]
pub struct PrimaryCounts {
    /// In order.
    pub samples: Vec<Sample>,
}

impl PrimaryCounts {
    /// The longest stretch during which more than one node took writes (from the first
    /// such sample to the next sample with at most one).
    pub fn longest_split(&self) -> Duration {
        let mut longest = Duration::ZERO;
        let mut since = None;
        for s in &self.samples {
            match (s.writable > 1, since) {
                (true, None) => since = Some(s.at),
                (false, Some(t)) => {
                    longest = longest.max(s.at - t);
                    since = None;
                }
                _ => {}
            }
        }
        if let (Some(t), Some(last)) = (since, self.samples.last()) {
            longest = longest.max(last.at - t + Duration::from_secs(1));
        }
        longest
    }

    /// The last sample's count.
    pub fn last(&self) -> usize {
        self.samples.last().map_or(0, |s| s.writable)
    }

    /// Asserts that two nodes took writes together for no longer than `limit` and that
    /// exactly one did at the end.
    pub fn assert_one_primary_within(&self, limit: Duration) {
        assert!(
            self.longest_split() <= limit,
            "two primaries for {:?}: {}",
            self.longest_split(),
            self.summary()
        );
        assert_eq!(self.last(), 1, "{}", self.summary());
    }

    /// The samples as `t:count` pairs, for messages.
    pub fn summary(&self) -> String {
        self.samples
            .iter()
            .map(|s| format!("{}:{}", s.at.as_secs(), s.writable))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Whether `vm`'s server takes writes now.
pub fn writable(vm: &Vm) -> bool {
    vm.query("select pg_is_in_recovery()")
        .is_ok_and(|out| out.trim() == "f")
}

/// Counts the writable nodes among `vms` every second while `during` runs and for
/// `after` longer; returns what `during` returned and the counts.
pub fn watch<T: Send>(
    vms: &[&Vm],
    after: Duration,
    during: impl FnOnce() -> T + Send,
) -> (T, PrimaryCounts) {
    let done = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut counts = PrimaryCounts::default();
            let mut until = None;
            loop {
                let at = start.elapsed();
                let n = vms.iter().filter(|vm| writable(vm)).count();
                counts.samples.push(Sample { at, writable: n });
                if until.is_none() && done.load(Ordering::SeqCst) {
                    until = Some(Instant::now() + after);
                }
                if until.is_some_and(|u| Instant::now() >= u) {
                    return counts;
                }
                let next = at + Duration::from_secs(1);
                std::thread::sleep(next.saturating_sub(start.elapsed()));
            }
        });
        let result = during();
        done.store(true, Ordering::SeqCst);
        let counts = sampler.join().expect("the sampler");
        (result, counts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(v: &[(u64, usize)]) -> PrimaryCounts {
        PrimaryCounts {
            samples: v
                .iter()
                .map(|(t, n)| Sample {
                    at: Duration::from_secs(*t),
                    writable: *n,
                })
                .collect(),
        }
    }

    #[test]
    fn the_longest_split_is_measured_between_samples() {
        assert_eq!(counts(&[(0, 1), (1, 1)]).longest_split(), Duration::ZERO);
        let c = counts(&[(0, 1), (1, 2), (2, 2), (5, 1), (6, 2), (7, 1)]);
        assert_eq!(c.longest_split(), Duration::from_secs(4));
        assert_eq!(c.last(), 1);
        let open = counts(&[(0, 2), (3, 2)]);
        assert_eq!(open.longest_split(), Duration::from_secs(4));
        assert_eq!(open.summary(), "0:2 3:2");
    }
}
