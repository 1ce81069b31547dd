//! Console markers: `SOVEREIGN <stage> <json>` lines the guest prints on its serial
//! console, so the host can follow (and diagnose) a boot even when vsock never comes up.

use crate::stage::Stage;
use serde::Serialize;

/// Every marker line starts with this word and a space.
pub const PREFIX: &str = "SOVEREIGN ";

/// Formats one marker line (no trailing newline). The JSON is compact and single-line.
pub fn format_marker<T: Serialize>(stage: Stage, payload: &T) -> String {
    let json = serde_json::to_string(payload).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("unserialisable marker payload: {e}") }).to_string()
    });
    format!("{PREFIX}{stage} {json}")
}

/// A marker parsed from a console line.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// The stage named by the line.
    pub stage: Stage,
    /// Its JSON payload.
    pub payload: serde_json::Value,
}

/// Finds a marker in a console line. Kernel log prefixes before `SOVEREIGN` (e.g.
/// `[    1.23] `) are tolerated; anything malformed yields `None`.
pub fn parse_marker(line: &str) -> Option<Marker> {
    let start = line.find(PREFIX)?;
    let rest = &line[start + PREFIX.len()..];
    let (name, json) = rest.split_once(' ')?;
    let stage = Stage::from_name(name)?;
    let payload = serde_json::from_str(json.trim_end()).ok()?;
    Some(Marker { stage, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_prefix_tolerance() {
        let line = format_marker(Stage::Devices, &serde_json::json!({"devices": []}));
        assert_eq!(line, r#"SOVEREIGN devices {"devices":[]}"#);
        let m = parse_marker(&format!("[    1.234567] {line}\r")).unwrap();
        assert_eq!(m.stage, Stage::Devices);
        assert_eq!(m.payload["devices"], serde_json::json!([]));
    }

    #[test]
    fn garbage_is_ignored() {
        for line in [
            "",
            "SOVEREIGN",
            "SOVEREIGN devices",
            "SOVEREIGN nope {}",
            "SOVEREIGN init {",
            "hello",
        ] {
            assert_eq!(parse_marker(line), None, "{line:?}");
        }
    }
}
