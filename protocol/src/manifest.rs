//! `manifest.json` of an artifact set: the target architecture and, per file, its
//! size, SHA-256, mode and whether `deploy` copies it to the phone. Written by
//! `cargo xtask manifest` at the end of `scripts/build-images.sh`, read by
//! `sovereign deploy`; both use these types, so the two cannot disagree.

use crate::arch::Arch;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use thiserror::Error;

/// The manifest's file name inside an artifact directory.
pub const FILE_NAME: &str = "manifest.json";

/// Files under this directory are secrets: mode 0600 in a 0700 directory.
pub const SECRETS_DIR: &str = "secrets";

/// Why a manifest cannot be used. Every variant names the field (`files[2].sha256`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestError {
    #[error("not valid JSON for a manifest at {field}: {message}")]
    Json {
        /// Dotted path of the field where parsing stopped (`.` for the top level).
        field: String,
        /// serde_json's message (line and column).
        message: String,
    },
    #[error("{field} = {value}: {why}")]
    Field {
        /// Dotted field name, e.g. `files[2].mode`.
        field: String,
        /// The value as found (JSON).
        value: String,
        /// What is expected.
        why: String,
    },
}

/// Permission bits, written as an octal string (`"0644"`) so the JSON reads like `ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8)
            .ok()
            .filter(|m| *m <= 0o777 && !text.is_empty())
            .map(FileMode)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not octal permission bits such as \"0644\""
                ))
            })
    }
}

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Path relative to the artifact directory (and to the destination on the phone).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Permission bits on the phone.
    pub mode: FileMode,
    /// Whether `deploy` copies it (boot-test and build-only files stay behind).
    pub deploy: bool,
}

impl ManifestEntry {
    /// True for a file under `secrets/`, which must be 0600 in a 0700 directory.
    pub fn is_secret(&self) -> bool {
        self.name.starts_with(&format!("{SECRETS_DIR}/"))
    }
}

/// A whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Target architecture.
    pub arch: Arch,
    /// Every file, in build order.
    pub files: Vec<ManifestEntry>,
    /// What the set is made of, by version (see [`crate::release`]): `update` refuses
    /// a set whose PostgreSQL major differs from the running one's before it stops
    /// anything. Empty in sets built before it was written.
    #[serde(default, skip_serializing_if = "crate::release::Versions::is_empty")]
    pub versions: crate::release::Versions,
}

impl Manifest {
    /// Parses and validates manifest text.
    pub fn from_json(text: &str) -> Result<Manifest, ManifestError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let manifest: Manifest =
            serde_path_to_error::deserialize(de).map_err(|e| ManifestError::Json {
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Checks what the types cannot: safe names, hex digests, secret modes, no
    /// duplicates.
    pub fn validate(&self) -> Result<(), ManifestError> {
        for (k, v) in &self.versions {
            let plain = |t: &str| {
                !t.is_empty() && t.len() <= 128 && t.chars().all(|c| c.is_ascii_graphic())
            };
            if !plain(k) || !plain(v) || k.contains('=') {
                return Err(ManifestError::Field {
                    field: format!("versions.{k}"),
                    value: format!("{v:?}"),
                    why: "expected a short word without spaces or '=' (e.g. \"17.6-0+deb13u1\")"
                        .to_string(),
                });
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let bad = |k: &str, value: String, why: &str| ManifestError::Field {
                field: format!("files[{i}].{k}"),
                value,
                why: why.to_string(),
            };
            check_name(&f.name).map_err(|why| bad("name", format!("{:?}", f.name), why))?;
            if self.files[..i].iter().any(|e| e.name == f.name) {
                return Err(bad("name", format!("{:?}", f.name), "listed twice"));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    "sha256",
                    format!("{:?}", f.sha256),
                    "expected 64 hex digits",
                ));
            }
            if f.is_secret() && f.mode != FileMode(0o600) {
                return Err(bad(
                    "mode",
                    format!("\"{}\"", f.mode),
                    "a file under secrets/ must be 0600",
                ));
            }
        }
        Ok(())
    }

    /// The files `deploy` copies, in manifest order.
    pub fn deployed(&self) -> impl Iterator<Item = &ManifestEntry> {
        self.files.iter().filter(|e| e.deploy)
    }
}

/// A file name must be a plain relative path: `[A-Za-z0-9._+-]` components, none empty,
/// `.` or `..`, at most one directory deep. This keeps every remote path safe to print
/// and easy to quote, and the set inside its destination.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Err("at most one directory level (e.g. secrets/NAME)");
    }
    for p in parts {
        if p.is_empty() || p == "." || p == ".." {
            return Err("expected a relative file name without empty, . or .. components");
        }
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            return Err("only letters, digits and . _ + - are allowed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn with_file(file: &str) -> String {
        format!(r#"{{"arch": "arm64", "files": [{file}]}}"#)
    }

    fn err(text: &str) -> String {
        Manifest::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn round_trips_what_the_writer_writes() {
        let m = Manifest {
            arch: Arch::Arm64,
            versions: [("postgres".to_string(), "17.6".to_string())].into(),
            files: vec![
                ManifestEntry {
                    name: "Image".into(),
                    size: 10,
                    sha256: SUM.into(),
                    mode: FileMode(0o644),
                    deploy: true,
                },
                ManifestEntry {
                    name: "sovereign".into(),
                    size: 2,
                    sha256: SUM.into(),
                    mode: FileMode(0o755),
                    deploy: true,
                },
                ManifestEntry {
                    name: "sovereign-init".into(),
                    size: 2,
                    sha256: SUM.into(),
                    mode: FileMode(0o644),
                    deploy: false,
                },
            ],
        };
        let text = m.to_json();
        assert!(text.contains(r#""mode": "0755""#), "{text}");
        assert!(text.contains(r#""arch": "arm64""#), "{text}");
        let back = Manifest::from_json(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.deployed().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["Image", "sovereign"]
        );
    }

    #[test]
    fn every_bad_field_is_named_with_its_value() {
        assert!(err("{").contains("not valid JSON"));
        let e = err(r#"{"files": []}"#);
        assert!(e.contains("missing field `arch`"), "{e}");
        let e = err(r#"{"arch": "riscv64", "files": []}"#);
        assert!(e.contains("at arch") && e.contains("riscv64"), "{e}");
        assert!(err(r#"{"arch": "arm64"}"#).contains("missing field `files`"));
        let e = err(&with_file(
            r#"{"name": "Image", "size": 1, "sha256": "xyz", "mode": "0644", "deploy": true}"#,
        ));
        assert!(
            e.contains("files[0].sha256 = \"xyz\": expected 64 hex digits"),
            "{e}"
        );
        let e = err(&with_file(&format!(
            r#"{{"name": "Image", "size": -1, "sha256": "{SUM}", "mode": "0644", "deploy": true}}"#
        )));
        assert!(e.contains("files[0].size") && e.contains("-1"), "{e}");
        let e = err(&with_file(&format!(
            r#"{{"name": "Image", "size": 1, "sha256": "{SUM}", "mode": "rwx", "deploy": true}}"#
        )));
        assert!(e.contains("files[0].mode") && e.contains("\"rwx\""), "{e}");
        let e = err(&with_file(&format!(
            r#"{{"name": "Image", "size": 1, "sha256": "{SUM}", "mode": "0644"}}"#
        )));
        assert!(
            e.contains("files[0]") && e.contains("missing field `deploy`"),
            "{e}"
        );
        let e = err(&with_file(&format!(
            r#"{{"name": "../etc/passwd", "size": 1, "sha256": "{SUM}", "mode": "0644", "deploy": true}}"#
        )));
        assert!(e.contains("files[0].name = \"../etc/passwd\""), "{e}");
        let e = err(&with_file(&format!(
            r#"{{"name": "a b", "size": 1, "sha256": "{SUM}", "mode": "0644", "deploy": true}}"#
        )));
        assert!(e.contains("only letters"), "{e}");
        let e = err(&with_file(&format!(
            r#"{{"name": "secrets/key", "size": 1, "sha256": "{SUM}", "mode": "0644", "deploy": true}}"#
        )));
        assert!(e.contains("must be 0600"), "{e}");
        let one = format!(
            r#"{{"name": "a", "size": 1, "sha256": "{SUM}", "mode": "0644", "deploy": true}}"#
        );
        let e = err(&with_file(&format!("{one}, {one}")));
        assert!(e.contains("files[1].name = \"a\": listed twice"), "{e}");
    }
}
