//! Reads an artifact set's `manifest.json` (written by `cargo xtask manifest` at the end
//! of `scripts/build-images.sh`) through [`protocol::manifest`], the types the writer
//! uses too, and adds what only a deploy needs to say: which file was read, and that a
//! phone needs the arm64 set.

use protocol::manifest::Manifest;
pub use protocol::manifest::{FileMode, ManifestEntry, FILE_NAME, SECRETS_DIR};
use protocol::Arch;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a manifest cannot be used. Every message names the manifest's path.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {cause} (build the set with scripts/build-images.sh --arch arm64, or pass --artifacts DIR)")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
    #[error("{path} is not a usable manifest (rebuild the set with scripts/build-images.sh)")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// What the parser or the validation refused.
        source: protocol::manifest::ManifestError,
    },
    #[error("{path}: arch = \"{found}\": a phone needs the {want} set (scripts/build-images.sh --arch {want})")]
    WrongArch {
        /// The manifest path.
        path: PathBuf,
        /// The manifest's architecture.
        found: Arch,
        /// The architecture needed.
        want: Arch,
    },
    #[error("{path}: none of its {count} files has \"deploy\": true (rebuild the set with scripts/build-images.sh)")]
    NothingToDeploy {
        /// The manifest path.
        path: PathBuf,
        /// How many files it lists.
        count: usize,
    },
}

/// A manifest as read from an artifact directory: its contents and where they came
/// from, so every later complaint can name the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// The parsed, validated contents.
    pub manifest: Manifest,
}

impl Loaded {
    /// Reads and validates `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Loaded, ManifestError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(cause) => return Err(ManifestError::Read { path, cause }),
        };
        match Manifest::from_json(&text) {
            Ok(manifest) => Ok(Loaded { path, manifest }),
            Err(source) => Err(ManifestError::Invalid { path, source }),
        }
    }

    /// Refuses a set built for another architecture than `want`.
    pub fn require_arch(&self, want: Arch) -> Result<(), ManifestError> {
        if self.manifest.arch == want {
            return Ok(());
        }
        Err(ManifestError::WrongArch {
            path: self.path.clone(),
            found: self.manifest.arch,
            want,
        })
    }

    /// The files `deploy` copies, in manifest order; refuses a set with none.
    pub fn to_deploy(&self) -> Result<Vec<&ManifestEntry>, ManifestError> {
        let files: Vec<&ManifestEntry> = self.manifest.deployed().collect();
        if files.is_empty() {
            return Err(ManifestError::NothingToDeploy {
                path: self.path.clone(),
                count: self.manifest.files.len(),
            });
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn entry(name: &str, mode: u32, deploy: bool) -> ManifestEntry {
        ManifestEntry {
            name: name.into(),
            size: 1,
            sha256: SUM.into(),
            mode: FileMode(mode),
            deploy,
        }
    }

    /// Writes `text` as DIR/manifest.json and loads it.
    fn load_text(text: &str) -> (tempfile::TempDir, Result<Loaded, ManifestError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let loaded = Loaded::load(dir.path());
        (dir, loaded)
    }

    /// The message with its causes, as `sovereign` prints it (`{:#}`).
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            s.push_str(&format!(": {cause}"));
            next = cause.source();
        }
        s
    }

    #[test]
    fn loads_what_the_writer_writes_and_checks_the_arch() {
        let m = Manifest {
            arch: Arch::Arm64,
            versions: Default::default(),
            files: vec![
                entry("Image", 0o644, true),
                entry("sovereign", 0o755, true),
                entry("sovereign-init", 0o644, false),
            ],
        };
        let (dir, loaded) = load_text(&m.to_json());
        let loaded = loaded.unwrap();
        assert_eq!(loaded.path, dir.path().join("manifest.json"));
        assert_eq!(loaded.manifest, m);
        let names: Vec<&str> = loaded
            .to_deploy()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["Image", "sovereign"]);
        loaded.require_arch(Arch::Arm64).unwrap();
        let e = loaded.require_arch(Arch::X86_64).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: arch = \"arm64\"", loaded.path.display())),
            "{e}"
        );
        assert!(
            e.ends_with("a phone needs the x86_64 set (scripts/build-images.sh --arch x86_64)"),
            "{e}"
        );
    }

    #[test]
    fn every_complaint_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = Loaded::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read {}",
                dir.path().join(FILE_NAME).display()
            )),
            "{e}"
        );
        assert!(e.contains("--arch arm64, or pass --artifacts DIR"), "{e}");

        let (dir, loaded) = load_text(r#"{"arch": "arm64", "files": [{"name": "a"}]}"#);
        let e = chain(&loaded.unwrap_err());
        let path = dir.path().join(FILE_NAME);
        assert!(
            e.starts_with(&format!("{} is not a usable manifest", path.display())),
            "{e}"
        );
        assert!(
            e.contains("files[0]") && e.contains("missing field `size`"),
            "{e}"
        );

        let m = Manifest {
            arch: Arch::Arm64,
            versions: Default::default(),
            files: vec![entry("sovereign-init", 0o644, false)],
        };
        let (dir, loaded) = load_text(&m.to_json());
        let e = loaded.unwrap().to_deploy().unwrap_err().to_string();
        let path = dir.path().join(FILE_NAME);
        assert!(
            e.starts_with(&format!("{}: none of its 1 files", path.display())),
            "{e}"
        );
    }
}
