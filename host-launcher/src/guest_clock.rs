//! The time the guest is given at boot. PID 1 sets its clock from the host's (crosvm and
//! QEMU's RTC are not trusted to be there or right), so the host decides what time the
//! guest lives in. Normally that is the host's own clock; `SOVEREIGN_GUEST_CLOCK_OFFSET_SECS`
//! moves it, for drills that must see days pass (backup retention, the schedule) without
//! waiting for them. The launcher is static, so libfaketime cannot do this from outside.

use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The environment variable that moves the guest's clock, in seconds (may be negative).
pub const OFFSET_VAR: &str = "SOVEREIGN_GUEST_CLOCK_OFFSET_SECS";

/// Why the offset cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClockOffsetError {
    #[error("{OFFSET_VAR}={0:?} is not a whole number of seconds")]
    NotSeconds(String),
}

/// The offset the environment asks for: 0 when the variable is unset or empty.
pub fn offset_secs() -> Result<i64, ClockOffsetError> {
    parse_offset(std::env::var(OFFSET_VAR).ok().as_deref())
}

fn parse_offset(value: Option<&str>) -> Result<i64, ClockOffsetError> {
    match value.map(str::trim) {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| ClockOffsetError::NotSeconds(v.to_string())),
    }
}

/// Milliseconds since the epoch for the guest's clock: the host's, moved by the offset.
/// `None` when the host's clock is before the epoch or the offset is unusable (`start`
/// refuses an unusable offset before anything runs, see [`offset_secs`]).
pub fn guest_now_unix_ms() -> Option<u64> {
    let host = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let offset_ms = offset_secs().ok()?.checked_mul(1000)?;
    let host_ms = i64::try_from(host.as_millis()).ok()?;
    u64::try_from(host_ms.checked_add(offset_ms)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_is_no_offset_and_signed_seconds_are_read() {
        assert_eq!(parse_offset(None), Ok(0));
        assert_eq!(parse_offset(Some("")), Ok(0));
        assert_eq!(parse_offset(Some("172800")), Ok(172_800));
        assert_eq!(parse_offset(Some(" -3600 ")), Ok(-3600));
    }

    #[test]
    fn anything_but_whole_seconds_is_refused_naming_the_variable() {
        for bad in ["2d", "1.5", "soon"] {
            let e = parse_offset(Some(bad)).unwrap_err();
            assert!(e.to_string().contains(OFFSET_VAR), "{e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
