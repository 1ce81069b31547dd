//! What an image set is made of, by version: PostgreSQL, tailscale, PID 1 and the build.
//! The root image carries it in [`RELEASE_FILE`] (written by `scripts/build-rootfs.sh`),
//! the guest reports it in its status, and an artifact set's `manifest.json` repeats it
//! (with the kernel's release) so `sovereign update` can refuse a set PostgreSQL could
//! not read before anything stops.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The release file inside the root image: `key=value` lines.
pub const RELEASE_FILE: &str = "/etc/sovereign-release";

/// Versions by component: `postgres`, `tailscale`, `init`, `build` (and `kernel` in a
/// manifest).
pub type Versions = BTreeMap<String, String>;

/// The components, in the order people read them.
const ORDER: [&str; 5] = ["build", "postgres", "tailscale", "init", "kernel"];

/// Reads `key=value` lines; blank lines, `#` comments and lines without `=` are skipped
/// (a release file is information, never a reason to fail a boot).
pub fn parse(text: &str) -> Versions {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .collect()
}

/// Reads the release file at `path`; empty when it is missing or unreadable.
pub fn read(path: &std::path::Path) -> Versions {
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The major version in a PostgreSQL version string: `17` from `17.6-0+deb13u1`, from
/// `17.6` and from `PostgreSQL 17.6 on x86_64...`.
pub fn major_of(version: &str) -> Option<u32> {
    let digits = version
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    digits.split('.').next()?.parse().ok()
}

/// The PostgreSQL major version a set carries.
pub fn postgres_major(v: &Versions) -> Option<u32> {
    v.get("postgres").and_then(|p| major_of(p))
}

/// One line: `build 20261207T1200Z · postgres 17.6-0+deb13u1 · tailscale 1.82.5 · init
/// 3f2a…`, known components first.
pub fn summary(v: &Versions) -> String {
    let mut parts: Vec<String> = ORDER
        .iter()
        .filter_map(|k| v.get(*k).map(|val| format!("{k} {val}")))
        .collect();
    parts.extend(
        v.iter()
            .filter(|(k, _)| !ORDER.contains(&k.as_str()))
            .map(|(k, val)| format!("{k} {val}")),
    );
    parts.join(" · ")
}

/// An image set `sovereign update` installed: which one, what it is made of, whence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledSet {
    /// Short digest of its boot files' SHA-256 sums: the same files, the same id.
    pub id: String,
    /// Its manifest's versions.
    #[serde(default)]
    pub versions: Versions,
    /// The directory it was installed from.
    pub source: String,
    /// When it was installed (seconds since the epoch).
    pub installed_unix: u64,
}

impl InstalledSet {
    /// `set 3f2a9c01d4e7 (build … · postgres …)`, for messages.
    pub fn describe(&self) -> String {
        if self.versions.is_empty() {
            format!("set {}", self.id)
        } else {
            format!("set {} ({})", self.id, summary(&self.versions))
        }
    }
}

/// A VM's image sets: the one it boots and the one `update --rollback` goes back to.
/// `None` for a set the launcher did not install (the files were put in place by hand
/// or by `deploy` before the first update).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSets {
    /// The set in the spec's kernel and root image paths.
    pub current: Option<InstalledSet>,
    /// The set kept beside it (`<path>.previous`).
    pub previous: Option<InstalledSet>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_file_reads_as_its_lines_say() {
        let v = parse("# made by build-rootfs.sh\npostgres=17.6-0+deb13u1\n\ntailscale = 1.82.5\nnonsense\ninit=\nbuild=b1\n");
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(v["tailscale"], "1.82.5");
        assert_eq!(postgres_major(&v), Some(17));
        assert_eq!(
            summary(&v),
            "build b1 · postgres 17.6-0+deb13u1 · tailscale 1.82.5"
        );
        assert!(read(std::path::Path::new("/nonexistent/release")).is_empty());
    }

    #[test]
    fn the_major_version_is_read_from_every_form_postgres_is_named_in() {
        for (text, major) in [
            ("17.6-0+deb13u1", Some(17)),
            ("18beta1", Some(18)),
            (
                "PostgreSQL 17.6 (Debian 17.6-0+deb13u1) on x86_64-pc-linux-gnu",
                Some(17),
            ),
            ("9.6.24", Some(9)),
            ("unknown", None),
            ("", None),
        ] {
            assert_eq!(major_of(text), major, "{text}");
        }
    }
}
