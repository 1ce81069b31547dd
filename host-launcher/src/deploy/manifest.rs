//! `manifest.json` of an artifact set (written by `scripts/build-images.sh`): the
//! target architecture and, per file, its size, SHA-256, mode and whether `deploy`
//! copies it to the phone. Read field by field so that every complaint names the field
//! (`files[2].sha256`) and the value it found.

use serde_json::Value;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The manifest's file name inside an artifact directory.
pub const FILE_NAME: &str = "manifest.json";

/// Files under this directory are secrets: mode 0600 in a 0700 directory.
pub const SECRETS_DIR: &str = "secrets";

/// Why a manifest cannot be used.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file is missing or unreadable.
    #[error("cannot read {path}: {cause} (build the set with scripts/build-images.sh --arch arm64, or pass --artifacts DIR)")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {message} (rebuild it with scripts/build-images.sh)")]
    Json {
        /// The manifest path.
        path: PathBuf,
        /// serde_json's message (line and column).
        message: String,
    },
    /// A required field is absent.
    #[error("{path}: field {field} is missing (rebuild it with scripts/build-images.sh)")]
    Missing {
        /// The manifest path.
        path: PathBuf,
        /// Dotted field name, e.g. `files[2].sha256`.
        field: String,
    },
    /// A field has an unacceptable value.
    #[error("{path}: {field} = {value}: {why}")]
    Field {
        /// The manifest path.
        path: PathBuf,
        /// Dotted field name, e.g. `files[2].mode`.
        field: String,
        /// The value as found (JSON).
        value: String,
        /// What is expected.
        why: String,
    },
}

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the artifact directory (and to the destination on the phone).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Permission bits on the phone.
    pub mode: u32,
    /// Whether `deploy` copies it (boot-test and build-only files stay behind).
    pub deploy: bool,
}

impl Entry {
    /// True for a file under `secrets/`, which must be 0600 in a 0700 directory.
    pub fn is_secret(&self) -> bool {
        self.name.starts_with(&format!("{SECRETS_DIR}/"))
    }
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Target architecture (`arm64` or `x86_64`).
    pub arch: String,
    /// Every file, in manifest order.
    pub files: Vec<Entry>,
}

impl Manifest {
    /// Reads and validates `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|cause| ManifestError::Read {
            path: path.clone(),
            cause,
        })?;
        Manifest::parse(&text, &path)
    }

    /// Parses and validates manifest text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let root: Value = serde_json::from_str(text).map_err(|e| ManifestError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let r = Reader { path };
        let arch = r.string(&root, "arch", "arch")?;
        if arch != "arm64" && arch != "x86_64" {
            return Err(r.bad("arch", &root["arch"], "expected \"arm64\" or \"x86_64\""));
        }
        let list = match root.get("files") {
            None => return Err(r.missing("files")),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(r.bad("files", v, "expected a list of files")),
        };
        let mut files: Vec<Entry> = Vec::with_capacity(list.len());
        for (i, f) in list.iter().enumerate() {
            let at = |k: &str| format!("files[{i}].{k}");
            if !f.is_object() {
                return Err(r.bad(&format!("files[{i}]"), f, "expected an object"));
            }
            let name = r.string(f, "name", &at("name"))?;
            if let Err(why) = check_name(&name) {
                return Err(r.bad(&at("name"), &f["name"], why));
            }
            if files.iter().any(|e| e.name == name) {
                return Err(r.bad(&at("name"), &f["name"], "listed twice"));
            }
            let size = match f.get("size") {
                None => return Err(r.missing(&at("size"))),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| r.bad(&at("size"), v, "expected a byte count"))?,
            };
            let sha256 = r.string(f, "sha256", &at("sha256"))?;
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(r.bad(&at("sha256"), &f["sha256"], "expected 64 hex digits"));
            }
            let mode_text = r.string(f, "mode", &at("mode"))?;
            let mode = u32::from_str_radix(&mode_text, 8)
                .ok()
                .filter(|m| *m <= 0o777 && !mode_text.is_empty())
                .ok_or_else(|| {
                    r.bad(
                        &at("mode"),
                        &f["mode"],
                        "expected octal permission bits such as \"0644\"",
                    )
                })?;
            let deploy = match f.get("deploy") {
                None => return Err(r.missing(&at("deploy"))),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| r.bad(&at("deploy"), v, "expected true or false"))?,
            };
            let entry = Entry {
                name,
                size,
                sha256: sha256.to_ascii_lowercase(),
                mode,
                deploy,
            };
            if entry.is_secret() && entry.mode != 0o600 {
                return Err(r.bad(
                    &at("mode"),
                    &f["mode"],
                    "a file under secrets/ must be 0600",
                ));
            }
            files.push(entry);
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            arch,
            files,
        })
    }

    /// Refuses a set built for another architecture than `want`.
    pub fn require_arch(&self, want: &str) -> Result<(), ManifestError> {
        if self.arch == want {
            return Ok(());
        }
        Err(ManifestError::Field {
            path: self.path.clone(),
            field: "arch".into(),
            value: format!("{:?}", self.arch),
            why: format!("a phone needs the {want} set (scripts/build-images.sh --arch {want})"),
        })
    }

    /// The files `deploy` copies, in manifest order.
    pub fn deployed(&self) -> impl Iterator<Item = &Entry> {
        self.files.iter().filter(|e| e.deploy)
    }
}

struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn missing(&self, field: &str) -> ManifestError {
        ManifestError::Missing {
            path: self.path.to_path_buf(),
            field: field.to_string(),
        }
    }

    fn bad(&self, field: &str, value: &Value, why: &str) -> ManifestError {
        ManifestError::Field {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    fn string(&self, obj: &Value, key: &str, field: &str) -> Result<String, ManifestError> {
        match obj.get(key) {
            None => Err(self.missing(field)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.bad(field, v, "expected a string")),
        }
    }
}

/// A file name must be a plain relative path: `[A-Za-z0-9._+-]` components, none empty,
/// `.` or `..`, at most one directory deep. This keeps every remote path safe to print
/// and easy to quote, and the set inside its destination.
fn check_name(name: &str) -> Result<(), &'static str> {
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
        Manifest::parse(text, Path::new("m.json"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_what_build_images_writes() {
        let text = format!(
            r#"{{
  "arch": "arm64",
  "files": [
    {{"name": "Image", "size": 10, "sha256": "{SUM}", "mode": "0644", "deploy": true}},
    {{"name": "sovereign", "size": 2, "sha256": "{SUM}", "mode": "0755", "deploy": true}},
    {{"name": "sovereign-init", "size": 2, "sha256": "{SUM}", "mode": "0644", "deploy": false}}
  ]
}}"#
        );
        let m = Manifest::parse(&text, Path::new("m.json")).unwrap();
        assert_eq!(m.arch, "arm64");
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files[1].mode, 0o755);
        assert_eq!(
            m.deployed().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["Image", "sovereign"]
        );
        assert!(m.require_arch("arm64").is_ok());
        let e = m.require_arch("x86_64").unwrap_err().to_string();
        assert!(e.contains("arch = \"arm64\""), "{e}");
    }

    #[test]
    fn every_bad_field_is_named_with_its_value() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err(r#"{"files": []}"#).contains("field arch is missing"));
        let e = err(r#"{"arch": "riscv64", "files": []}"#);
        assert!(e.contains("arch = \"riscv64\""), "{e}");
        assert!(err(r#"{"arch": "arm64"}"#).contains("field files is missing"));
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
        assert!(e.contains("files[0].size = -1"), "{e}");
        let e = err(&with_file(&format!(
            r#"{{"name": "Image", "size": 1, "sha256": "{SUM}", "mode": "rwx", "deploy": true}}"#
        )));
        assert!(e.contains("files[0].mode = \"rwx\""), "{e}");
        let e = err(&with_file(&format!(
            r#"{{"name": "Image", "size": 1, "sha256": "{SUM}", "mode": "0644"}}"#
        )));
        assert!(e.contains("files[0].deploy is missing"), "{e}");
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
