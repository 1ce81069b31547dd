//! `backup export SET`: which files of the repository an export from one set on holds.
//! A set is only restorable with the full set it builds on and the WAL from that full
//! set's start, and a point in time after it needs every later set's WAL too; so an
//! export "of a set" is its full set, every set taken since, and the WAL from the full
//! set's first segment on. What it leaves out is the older sets and their WAL: the
//! part of the repository a restore to this set or later never reads.
//!
//! `backup.info` is exported whole (pgBackRest checksums it, so it is not rewritten
//! here); the import expires the sets it lists but the export does not hold, with
//! pgBackRest's own `expire --set` ([`super::export::restore_from_export`]).

use super::pgbackrest::STANZA;
use std::collections::BTreeSet;
use std::path::{Component, Path};

/// The part of a repository an export from one set on holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSelection {
    /// Labels of the sets it holds: the full set and every set started since.
    pub labels: BTreeSet<String>,
    /// The full set's first WAL segment (24 hex digits).
    pub first_segment: String,
}

impl SetSelection {
    /// Whether the repository path `rel` (relative to the repository's top) belongs in
    /// the export. Directories on the way to a wanted file are wanted.
    pub fn wants(&self, rel: &Path) -> bool {
        let parts: Vec<&str> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        match parts.as_slice() {
            [] | ["backup" | "archive"] | ["backup" | "archive", STANZA] => true,
            ["backup", STANZA, "backup.history", rest @ ..] => match rest.last() {
                Some(file) if rest.len() == 2 => self.labels.iter().any(|l| file.starts_with(l)),
                _ => true,
            },
            ["backup", STANZA, name, ..] => {
                name.starts_with("backup.info") || self.labels.contains(*name)
            }
            ["archive", STANZA, name] => name.starts_with("archive.info") || is_dir_name(name),
            ["archive", STANZA, _, name] if name.ends_with(".history") => true,
            ["archive", STANZA, _, dir] => self.wants_segment_dir(dir),
            ["archive", STANZA, _, _, file] => self.wants_segment(file),
            _ => false,
        }
    }

    /// A segment directory (16 hex digits: timeline and log) with segments at or after
    /// the first one, on any timeline.
    fn wants_segment_dir(&self, dir: &str) -> bool {
        match (dir.get(8..16), self.first_segment.get(8..16)) {
            (Some(log), Some(first_log)) => log >= first_log,
            _ => false,
        }
    }

    /// A WAL segment (or its `.backup` label file) at or after the first one. Segment
    /// names compare by log and segment number; timelines branch from earlier ones, so
    /// a later timeline's segment at or after the first belongs too.
    fn wants_segment(&self, file: &str) -> bool {
        match (file.get(8..24), self.first_segment.get(8..24)) {
            (Some(pos), Some(first)) => pos >= first,
            _ => false,
        }
    }
}

/// A repository's per-database archive directory, e.g. `17-1`.
fn is_dir_name(name: &str) -> bool {
    name.contains('-') && !name.contains('.')
}

/// The selection for an export from `label` on, given every set's label and start
/// time and each full set's first WAL segment. `None` when `label` is not a set.
pub fn select(
    label: &str,
    sets: &[(String, i64)],
    first_segments: &[(String, String)],
) -> Option<SetSelection> {
    sets.iter().find(|(l, _)| l == label)?;
    // pgBackRest names a diff or incr set after its full set: FULL_TIMEI.
    let full = label.split('_').next()?;
    let full_start = sets.iter().find(|(l, _)| l == full)?.1;
    let first_segment = first_segments
        .iter()
        .find(|(l, _)| l == full)
        .map(|(_, s)| s.clone())?;
    let labels = sets
        .iter()
        .filter(|(_, start)| *start >= full_start)
        .map(|(l, _)| l.clone())
        .collect();
    Some(SetSelection {
        labels,
        first_segment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F1: &str = "20261201-100000F";
    const D1: &str = "20261201-100000F_20261202-100000D";
    const F2: &str = "20261203-100000F";
    const I2: &str = "20261203-100000F_20261203-120000I";

    fn sets() -> Vec<(String, i64)> {
        [(F1, 100), (D1, 200), (F2, 300), (I2, 400)]
            .iter()
            .map(|(l, t)| (l.to_string(), *t))
            .collect()
    }

    fn firsts() -> Vec<(String, String)> {
        vec![
            (F1.into(), "000000010000000000000003".into()),
            (F2.into(), "000000010000000100000010".into()),
        ]
    }

    #[test]
    fn a_set_brings_its_full_set_every_later_set_and_nothing_older() {
        let s = select(I2, &sets(), &firsts()).unwrap();
        assert_eq!(s.labels, [F2, I2].map(String::from).into());
        assert_eq!(s.first_segment, "000000010000000100000010");
        let from_d1 = select(D1, &sets(), &firsts()).unwrap();
        assert_eq!(from_d1.labels.len(), 4, "D1 needs F1, and every later set");
        assert_eq!(select("nope", &sets(), &firsts()), None);
    }

    #[test]
    fn paths_are_chosen_by_set_and_by_segment() {
        let s = select(F2, &sets(), &firsts()).unwrap();
        let wants = |p: &str| s.wants(Path::new(p));
        let st = STANZA;
        assert!(wants(""));
        assert!(wants(&format!("backup/{st}/backup.info")));
        assert!(wants(&format!("backup/{st}/backup.info.copy")));
        assert!(wants(&format!("backup/{st}/{F2}/backup.manifest")));
        assert!(wants(&format!("backup/{st}/{I2}/pg_data/base/1/123")));
        assert!(!wants(&format!("backup/{st}/{F1}/backup.manifest")));
        assert!(!wants(&format!("backup/{st}/{D1}")));
        assert!(wants(&format!("backup/{st}/backup.history/2026")));
        assert!(wants(&format!(
            "backup/{st}/backup.history/2026/{F2}.manifest.gz"
        )));
        assert!(!wants(&format!(
            "backup/{st}/backup.history/2026/{F1}.manifest.gz"
        )));
        assert!(wants(&format!("archive/{st}/archive.info")));
        assert!(wants(&format!("archive/{st}/17-1")));
        assert!(wants(&format!("archive/{st}/17-1/00000002.history")));
        assert!(!wants(&format!("archive/{st}/17-1/0000000100000000")));
        assert!(wants(&format!("archive/{st}/17-1/0000000100000001")));
        assert!(wants(&format!("archive/{st}/17-1/0000000200000002")));
        assert!(!wants(&format!(
            "archive/{st}/17-1/0000000100000001/00000001000000010000000F-ab.lz4"
        )));
        assert!(wants(&format!(
            "archive/{st}/17-1/0000000100000001/000000010000000100000010-ab.lz4"
        )));
        assert!(wants(&format!(
            "archive/{st}/17-1/0000000100000001/000000010000000100000010.00000028.backup"
        )));
        assert!(wants(&format!(
            "archive/{st}/17-1/0000000200000001/000000020000000100000011-cd.lz4"
        )));
        assert!(!wants("lock"));
        assert!(!wants(&format!("backup/other/{F2}")));
    }
}
