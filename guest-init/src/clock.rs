//! The guest's clocks as PID 1 reads them: time since the kernel booted (stage
//! timings) and wall-clock seconds since the epoch (set from the host's at `control`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the kernel booted (CLOCK_BOOTTIME, like /proc/uptime but
/// readable before /proc is mounted and to the millisecond).
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        let ms = Duration::from(t).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    })
}

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
