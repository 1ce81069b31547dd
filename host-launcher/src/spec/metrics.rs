//! The spec's `[metrics]` table: whether PID 1 serves its Prometheus page on the
//! tailnet, and on which port. Off by default: the page names every database and its
//! size to any tailnet node, without a password.

use super::Problem;
use serde::Deserialize;

/// postgres_exporter's port, so a scrape config written for it needs no change.
pub const DEFAULT_PORT: u16 = 9187;

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsFile {
    enabled: Option<bool>,
    port: Option<u16>,
}

impl MetricsFile {
    /// The page's port when it is on.
    pub(super) fn resolve(self) -> Option<u16> {
        self.enabled
            .unwrap_or(false)
            .then(|| self.port.unwrap_or(DEFAULT_PORT))
    }
}

/// What is wrong with a page on `port` beside PostgreSQL on `pg_port`.
pub fn problems(port: Option<u16>, pg_port: u16) -> Vec<Problem> {
    let Some(port) = port else { return Vec::new() };
    let taken = [
        (pg_port, "PostgreSQL's port"),
        (protocol::ports::TAILSCALE_WIREGUARD, "tailscaled's port"),
    ];
    let mut p = Vec::new();
    if port < 1024 {
        p.push(Problem::new(
            "metrics.port",
            port,
            "must be 1024 or more (9187 by default)",
        ));
    }
    for (other, what) in taken {
        if port == other {
            p.push(Problem::new(
                "metrics.port",
                port,
                format!("is {what}; pick another (9187 by default)"),
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml: &str) -> MetricsFile {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn off_unless_enabled_and_9187_by_default() {
        assert_eq!(file("").resolve(), None);
        assert_eq!(file("port = 9300").resolve(), None);
        assert_eq!(file("enabled = true").resolve(), Some(9187));
        assert_eq!(file("enabled = true\nport = 9300").resolve(), Some(9300));
        let typo = toml::from_str::<MetricsFile>("prot = 1").unwrap_err();
        assert!(typo.to_string().contains("prot"), "{typo}");
    }

    #[test]
    fn a_port_taken_or_privileged_is_refused_naming_the_field() {
        assert!(problems(Some(9187), 5432).is_empty());
        assert!(problems(None, 5432).is_empty());
        let p = problems(Some(5432), 5432);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "metrics.port");
        assert!(p[0].why.contains("PostgreSQL"), "{:?}", p[0]);
        assert_eq!(problems(Some(80), 5432)[0].field, "metrics.port");
    }
}
