//! PostgreSQL's memory settings follow the VM's memory, and a spec may change a short
//! list of tunables in `[postgres.settings]`. Both ends use this module: the launcher
//! refuses a bad setting before anything starts (naming the field), the guest renders
//! what it was handed, so the two can never disagree about what is allowed.
//!
//! The formula, for `m` MiB of guest memory (1 GiB gives the values the project has
//! always used):
//!
//! | setting                | value                       | at 1 GiB | at 4 GiB |
//! |------------------------|-----------------------------|----------|----------|
//! | `shared_buffers`       | m / 8                       | 128MB    | 512MB    |
//! | `effective_cache_size` | m / 2                       | 512MB    | 2048MB   |
//! | `work_mem`             | m / 256, at least 4MB       | 4MB      | 16MB     |
//! | `maintenance_work_mem` | m / 16, 16MB to 1024MB      | 64MB     | 256MB    |
//! | `max_connections`      | 50 per GiB, 50 to 200       | 50       | 200      |

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Connections kept for the superuser and PID 1's own sessions: an app's connection
/// limit is at most `max_connections` less these.
pub const RESERVED_CONNECTIONS: u32 = 5;

/// The settings the VM's memory decides, as `(name, value)` in postgresql.conf's form.
pub fn for_memory(memory_mib: u32) -> Vec<(&'static str, String)> {
    let m = u64::from(memory_mib);
    vec![
        (
            "max_connections",
            derived_max_connections(memory_mib).to_string(),
        ),
        ("shared_buffers", format!("{}MB", (m / 8).max(16))),
        ("effective_cache_size", format!("{}MB", (m / 2).max(32))),
        ("work_mem", format!("{}MB", (m / 256).max(4))),
        (
            "maintenance_work_mem",
            format!("{}MB", (m / 16).clamp(16, 1024)),
        ),
    ]
}

/// `max_connections` for `memory_mib` when the spec does not set it: 50 per GiB, 50 to
/// 200 (each session costs the server a few MiB before it does any work).
pub fn derived_max_connections(memory_mib: u32) -> u32 {
    (50 * (memory_mib / 1024)).clamp(50, 200)
}

/// `max_connections` as the server will have it: the spec's override, else derived.
pub fn max_connections(memory_mib: u32, overrides: &BTreeMap<String, String>) -> u32 {
    overrides
        .get("max_connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| derived_max_connections(memory_mib))
}

/// The largest connection limit an app may have on a server with `max_connections`.
pub fn max_app_connection_limit(max_connections: u32) -> u32 {
    max_connections.saturating_sub(RESERVED_CONNECTIONS)
}

/// What a tunable's value is, and the range it may take.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A size with a unit (kB, MB, GB, TB), at least `min_kb`.
    Memory { min_kb: u64 },
    /// A whole number in `min..=max`.
    Integer { min: i64, max: i64 },
    /// A decimal number in `min..=max`.
    Real { min: f64, max: f64 },
    /// A time with a unit (ms, s, min, h, d), at least `min_ms`; `0` or `-1` where
    /// PostgreSQL reads them as "off".
    Duration {
        min_ms: u64,
        off: &'static [&'static str],
    },
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// The settings a spec may change, with what each takes. Everything else is either the
/// project's to decide (see [`owned_reason`]) or not a setting we have tested.
const TUNABLES: &[(&str, Kind)] = &[
    ("shared_buffers", Kind::Memory { min_kb: 16 * 1024 }),
    ("effective_cache_size", Kind::Memory { min_kb: 8 * 1024 }),
    ("work_mem", Kind::Memory { min_kb: 64 }),
    ("maintenance_work_mem", Kind::Memory { min_kb: 1024 }),
    ("temp_buffers", Kind::Memory { min_kb: 800 }),
    ("max_connections", Kind::Integer { min: 10, max: 1000 }),
    (
        "default_statistics_target",
        Kind::Integer {
            min: 1,
            max: 10_000,
        },
    ),
    (
        "effective_io_concurrency",
        Kind::Integer { min: 0, max: 1000 },
    ),
    (
        "max_parallel_workers_per_gather",
        Kind::Integer { min: 0, max: 64 },
    ),
    (
        "random_page_cost",
        Kind::Real {
            min: 0.0,
            max: 1.0e6,
        },
    ),
    (
        "seq_page_cost",
        Kind::Real {
            min: 0.0,
            max: 1.0e6,
        },
    ),
    (
        "checkpoint_completion_target",
        Kind::Real { min: 0.0, max: 1.0 },
    ),
    (
        "autovacuum_vacuum_scale_factor",
        Kind::Real {
            min: 0.0,
            max: 100.0,
        },
    ),
    (
        "checkpoint_timeout",
        Kind::Duration {
            min_ms: 30_000,
            off: &[],
        },
    ),
    (
        "statement_timeout",
        Kind::Duration {
            min_ms: 1,
            off: &["0"],
        },
    ),
    (
        "lock_timeout",
        Kind::Duration {
            min_ms: 1,
            off: &["0"],
        },
    ),
    (
        "idle_in_transaction_session_timeout",
        Kind::Duration {
            min_ms: 1,
            off: &["0"],
        },
    ),
    (
        "log_min_duration_statement",
        Kind::Duration {
            min_ms: 0,
            off: &["-1", "0"],
        },
    ),
    (
        "deadlock_timeout",
        Kind::Duration {
            min_ms: 1,
            off: &[],
        },
    ),
    (
        "log_statement",
        Kind::Choice(&["none", "ddl", "mod", "all"]),
    ),
    ("log_lock_waits", Kind::Choice(&["on", "off"])),
    ("log_checkpoints", Kind::Choice(&["on", "off"])),
    ("track_io_timing", Kind::Choice(&["on", "off"])),
];

/// Why a setting is the project's own, or `None` when it is not one of ours.
fn owned_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "listen_addresses" | "port" | "unix_socket_directories" => {
            "the guest listens on localhost and the tailnet only, on postgres.port"
        }
        "fsync" | "full_page_writes" | "synchronous_commit" | "synchronous_standby_names" => {
            "durability is not a tunable here: every commit reaches the disk (and the synchronous replica, when [replication] says so)"
        }
        "wal_level" | "max_wal_size" | "min_wal_size" | "wal_keep_size"
        | "max_slot_wal_keep_size" | "archive_mode" | "archive_command" | "archive_timeout"
        | "restore_command" => "the WAL budget and archiving follow the data disk and [backup]",
        "primary_conninfo" | "primary_slot_name" | "hot_standby" | "wal_receiver_timeout"
        | "wal_sender_timeout" | "max_wal_senders" | "max_replication_slots" => {
            "replication is [replication]'s"
        }
        "password_encryption" | "ssl" | "ssl_cert_file" | "ssl_key_file" | "ssl_ca_file"
        | "hba_file" | "ident_file" => "authentication and TLS are the launcher's",
        "data_directory" | "config_file" | "logging_collector" | "log_directory"
        | "log_filename" | "shared_preload_libraries" | "jit" => {
            "the root image and the data disk decide it"
        }
        _ => return None,
    })
}

/// A `[postgres.settings]` entry the guest cannot use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("postgres.settings.{name}: set by the project ({why})")]
    Owned {
        /// The setting.
        name: String,
        /// Why it is ours.
        why: &'static str,
    },
    #[error(
        "postgres.settings.{name}: not a setting the spec may change (it may change: {allowed})"
    )]
    Unknown {
        /// The setting.
        name: String,
        /// The tunables, comma-separated.
        allowed: String,
    },
    #[error("postgres.settings.{name} = {value:?}: {why}")]
    Invalid {
        /// The setting.
        name: String,
        /// The value given.
        value: String,
        /// What is expected instead.
        why: String,
    },
}

/// Checks one `[postgres.settings]` entry for a VM of `memory_mib`.
pub fn check(name: &str, value: &str, memory_mib: u32) -> Result<(), SettingError> {
    let invalid = |why: String| SettingError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        why,
    };
    let Some((_, kind)) = TUNABLES.iter().find(|(n, _)| *n == name) else {
        return Err(match owned_reason(name) {
            Some(why) => SettingError::Owned {
                name: name.to_string(),
                why,
            },
            None => SettingError::Unknown {
                name: name.to_string(),
                allowed: TUNABLES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        });
    };
    match *kind {
        Kind::Memory { min_kb } => {
            let kb = memory_kb(value).ok_or_else(|| {
                invalid("a size with a unit PostgreSQL reads: kB, MB, GB or TB (e.g. 256MB)".into())
            })?;
            if kb < min_kb {
                return Err(invalid(format!("at least {min_kb}kB")));
            }
            let half = u64::from(memory_mib) * 1024 / 2;
            if name == "shared_buffers" && kb > half {
                return Err(invalid(format!(
                    "at most half the VM's memory ({}MB of memory_mib = {memory_mib}): the rest is the server's processes and the page cache",
                    half / 1024
                )));
            }
        }
        Kind::Integer { min, max } => match value.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => {}
            _ => return Err(invalid(format!("a whole number from {min} to {max}"))),
        },
        Kind::Real { min, max } => match value.parse::<f64>() {
            Ok(v) if v.is_finite() && (min..=max).contains(&v) => {}
            _ => return Err(invalid(format!("a number from {min} to {max}"))),
        },
        Kind::Duration { min_ms, off } => {
            if !off.contains(&value) {
                match duration_ms(value) {
                    Some(ms) if ms >= min_ms => {}
                    Some(_) => return Err(invalid(format!("at least {min_ms}ms"))),
                    None => {
                        let offs = if off.is_empty() {
                            String::new()
                        } else {
                            format!(", or {} for off", off.join(" or "))
                        };
                        return Err(invalid(format!(
                            "a time with a unit: ms, s, min, h or d (e.g. 30s){offs}"
                        )));
                    }
                }
            }
        }
        Kind::Choice(words) => {
            if !words.contains(&value) {
                return Err(invalid(format!("one of {}", words.join(", "))));
            }
        }
    }
    Ok(())
}

/// Checks every entry.
pub fn check_all(
    overrides: &BTreeMap<String, String>,
    memory_mib: u32,
) -> Result<(), SettingError> {
    for (name, value) in overrides {
        check(name, value, memory_mib)?;
    }
    Ok(())
}

/// The memory lines postgresql.conf gets for a VM of `memory_mib`, leaving out those
/// the spec's overrides set.
pub fn derived_lines(memory_mib: u32, overrides: &BTreeMap<String, String>) -> String {
    let mut out = format!("# Memory for a {memory_mib} MiB VM (derived from memory_mib)\n");
    for (name, value) in for_memory(memory_mib) {
        if !overrides.contains_key(name) {
            out.push_str(&format!("{name} = {value}\n"));
        }
    }
    out
}

/// The spec's overrides as postgresql.conf lines, each value quoted as PostgreSQL reads
/// a string. They go last: where a name appears twice, PostgreSQL takes the last.
pub fn override_lines(overrides: &BTreeMap<String, String>) -> String {
    if overrides.is_empty() {
        return String::new();
    }
    let mut out = String::from("# From the spec's [postgres.settings]\n");
    for (name, value) in overrides {
        out.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    out
}

/// A size such as `256MB` in kB; `None` without one of PostgreSQL's units.
fn memory_kb(value: &str) -> Option<u64> {
    with_unit(
        value,
        &[("kB", 1), ("MB", 1024), ("GB", 1 << 20), ("TB", 1 << 30)],
    )
}

/// A time such as `30s` in milliseconds; `None` without one of PostgreSQL's units.
fn duration_ms(value: &str) -> Option<u64> {
    with_unit(
        value,
        &[
            ("ms", 1),
            ("s", 1000),
            ("min", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
        ],
    )
}

/// A whole number followed by one of `units`, in the smallest unit.
fn with_unit(value: &str, units: &[(&str, u64)]) -> Option<u64> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit = &value[digits.len()..];
    let (_, factor) = units.iter().find(|(u, _)| *u == unit)?;
    n.checked_mul(*factor)
}

/// One server setting that differs from PostgreSQL's built-in default, as `status`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingView {
    /// The setting's name.
    pub name: String,
    /// Its value as `SHOW` prints it.
    pub value: String,
    /// Whether the spec's `[postgres.settings]` set it (otherwise the guest derived or
    /// fixed it).
    #[serde(default)]
    pub from_spec: bool,
}

/// Whether `name` is a setting a spec may change: `status` lists these first.
pub fn is_tunable(name: &str) -> bool {
    TUNABLES.iter().any(|(n, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn one_gib_keeps_the_values_the_project_always_had() {
        let got = for_memory(1024);
        assert_eq!(
            got,
            vec![
                ("max_connections", "50".to_string()),
                ("shared_buffers", "128MB".to_string()),
                ("effective_cache_size", "512MB".to_string()),
                ("work_mem", "4MB".to_string()),
                ("maintenance_work_mem", "64MB".to_string()),
            ]
        );
    }

    #[test]
    fn four_gib_scales_every_memory_setting() {
        let got: BTreeMap<_, _> = for_memory(4096).into_iter().collect();
        assert_eq!(got["shared_buffers"], "512MB");
        assert_eq!(got["effective_cache_size"], "2048MB");
        assert_eq!(got["work_mem"], "16MB");
        assert_eq!(got["maintenance_work_mem"], "256MB");
        assert_eq!(got["max_connections"], "200");
        assert_eq!(derived_max_connections(256), 50);
        assert_eq!(derived_max_connections(65536), 200);
    }

    #[test]
    fn an_override_replaces_the_derived_line_and_is_quoted() {
        let overrides = map(&[("shared_buffers", "256MB"), ("log_statement", "mod")]);
        let derived = derived_lines(1024, &overrides);
        assert!(!derived.contains("shared_buffers"), "{derived}");
        assert!(derived.contains("work_mem = 4MB\n"), "{derived}");
        let text = override_lines(&overrides);
        assert!(text.contains("shared_buffers = '256MB'\n"), "{text}");
        assert!(text.contains("log_statement = 'mod'\n"), "{text}");
        assert_eq!(override_lines(&BTreeMap::new()), "");
    }

    #[test]
    fn good_values_pass() {
        for (n, v) in [
            ("shared_buffers", "256MB"),
            ("work_mem", "8MB"),
            ("max_connections", "120"),
            ("random_page_cost", "1.5"),
            ("statement_timeout", "30s"),
            ("statement_timeout", "0"),
            ("log_min_duration_statement", "-1"),
            ("log_min_duration_statement", "250ms"),
            ("log_statement", "all"),
        ] {
            assert_eq!(check(n, v, 1024), Ok(()), "{n} = {v}");
        }
    }

    #[test]
    fn bad_values_name_the_field_and_say_what_is_expected() {
        let e = check("shared_buffers", "256", 1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("postgres.settings.shared_buffers = \"256\": a size with a unit"),
            "{e}"
        );
        let e = check("shared_buffers", "900MB", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most half the VM's memory (512MB"), "{e}");
        let e = check("statement_timeout", "30", 1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a time with a unit") && e.contains("or 0 for off"),
            "{e}"
        );
        let e = check("max_connections", "5", 1024).unwrap_err().to_string();
        assert!(e.contains("from 10 to 1000"), "{e}");
        let e = check("log_statement", "everything", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of none, ddl, mod, all"), "{e}");
        let e = check("random_page_cost", "NaN", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a number from"), "{e}");
    }

    #[test]
    fn the_projects_own_settings_and_unknown_ones_are_refused_with_the_reason() {
        let e = check("fsync", "off", 1024).unwrap_err().to_string();
        assert!(
            e.contains("postgres.settings.fsync: set by the project (durability"),
            "{e}"
        );
        let e = check("listen_addresses", "*", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tailnet only"), "{e}");
        let e = check("shared_buferz", "1GB", 1024).unwrap_err().to_string();
        assert!(
            e.contains("not a setting the spec may change (it may change: shared_buffers,"),
            "{e}"
        );
    }

    #[test]
    fn a_quote_in_a_value_cannot_end_the_line_early() {
        // No tunable accepts a quote, but the rendering must hold even so.
        let text = override_lines(&map(&[("log_statement", "x' ; fsync = 'off")]));
        assert!(
            text.contains("log_statement = 'x'' ; fsync = ''off'\n"),
            "{text}"
        );
    }

    #[test]
    fn max_connections_follows_the_override_and_leaves_room() {
        assert_eq!(max_connections(1024, &BTreeMap::new()), 50);
        assert_eq!(
            max_connections(1024, &map(&[("max_connections", "120")])),
            120
        );
        assert_eq!(max_app_connection_limit(50), 45);
    }
}
