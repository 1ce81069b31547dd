//! The checksum checks of a deploy: the local files against the manifest before
//! anything is pushed, and the device's copies (asked with `sha256sum` as root) after
//! the push and after the move into place.

use super::adb::Adb;
use super::manifest::ManifestEntry;
use super::remote::{self, sha256sum, su};
use super::DeployError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Where a deploy compares checksums with the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// In the staging directory, before anything is moved into place.
    Staged,
    /// In the destination, after the move.
    Installed,
}

impl Checkpoint {
    /// What to do when the check fails here.
    pub fn hint(self) -> &'static str {
        match self {
            Checkpoint::Staged => "the transfer was corrupted and nothing was moved into place; run deploy again (try another cable or port)",
            Checkpoint::Installed => "run deploy again; if it repeats, check free space on /data (`adb shell df /data`)",
        }
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Checkpoint::Staged => "after the push",
            Checkpoint::Installed => "after moving it into place",
        })
    }
}

/// Lower-case hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// True when `got` (as `sha256sum` prints it) is the manifest's `want`; the manifest's
/// hex digits may be in either case.
pub fn same_sum(got: Option<&String>, want: &str) -> bool {
    got.is_some_and(|g| g.eq_ignore_ascii_case(want))
}

/// Checks sizes (cheap) of every deployed file against the manifest.
pub fn check_local_sizes(dir: &Path, files: &[&ManifestEntry]) -> Result<(), DeployError> {
    for e in files {
        let path = dir.join(&e.name);
        let meta = std::fs::metadata(&path).map_err(|cause| DeployError::LocalRead {
            path: path.clone(),
            cause,
        })?;
        if meta.len() != e.size {
            return Err(DeployError::LocalMismatch {
                path,
                what: format!("size {} bytes, manifest says {}", meta.len(), e.size),
            });
        }
    }
    Ok(())
}

/// Checks the contents of `files` against the manifest.
pub fn check_local_sums(dir: &Path, files: &[&ManifestEntry]) -> Result<(), DeployError> {
    for e in files {
        let path = dir.join(&e.name);
        let sum = sha256_file(&path).map_err(|cause| DeployError::LocalRead {
            path: path.clone(),
            cause,
        })?;
        if !same_sum(Some(&sum), &e.sha256) {
            return Err(DeployError::LocalMismatch {
                path,
                what: format!("SHA-256 {sum}, manifest says {}", e.sha256),
            });
        }
    }
    Ok(())
}

/// Asks the device (as root) for the SHA-256 of `paths`; a missing file has no entry.
pub fn remote_sums(adb: &Adb, paths: &[String]) -> Result<BTreeMap<String, String>, DeployError> {
    let command = sha256sum(paths)?;
    let r = adb.shell(&su(&command)?)?;
    if r.status == Some(127) {
        return Err(DeployError::NoSha256sum {
            serial: adb.serial.clone().unwrap_or_default(),
            command,
        });
    }
    Ok(remote::parse_sha256sum(&r.stdout))
}

/// Asks the device for the SHA-256 of each `(remote path, entry)` and compares it with
/// the manifest's; `when` says which check this is (for the message and the hint).
pub fn verify_remote(
    adb: &Adb,
    files: &[(String, &ManifestEntry)],
    when: Checkpoint,
) -> Result<(), DeployError> {
    let paths: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    let sums = remote_sums(adb, &paths)?;
    for (path, e) in files {
        let got = sums.get(path);
        if !same_sum(got, &e.sha256) {
            return Err(DeployError::Corrupted {
                path: path.clone(),
                serial: adb.serial.clone().unwrap_or_default(),
                got: got.map_or_else(|| "is missing".to_string(), |g| format!("has SHA-256 {g}")),
                when,
                want: e.sha256.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::manifest::FileMode;

    #[test]
    fn local_files_are_checked_against_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        assert_eq!(
            sha256_file(&dir.path().join("a")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut e = ManifestEntry {
            name: "a".into(),
            size: 3,
            sha256: "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD".into(),
            mode: FileMode(0o644),
            deploy: true,
        };
        check_local_sizes(dir.path(), &[&e]).unwrap();
        assert!(
            check_local_sums(dir.path(), &[&e]).is_ok(),
            "hex in any case"
        );
        e.size = 4;
        let err = check_local_sizes(dir.path(), &[&e])
            .unwrap_err()
            .to_string();
        assert!(err.contains("size 3 bytes, manifest says 4"), "{err}");
        e.size = 3;
        e.sha256 = "0".repeat(64);
        let err = check_local_sums(dir.path(), &[&e]).unwrap_err().to_string();
        assert!(err.contains("manifest says 0000"), "{err}");
        e.name = "b".into();
        let err = check_local_sizes(dir.path(), &[&e])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn sums_compare_without_regard_to_case() {
        let lower = "ab".repeat(32);
        assert!(same_sum(Some(&lower), &"AB".repeat(32)));
        assert!(!same_sum(Some(&lower), &"ac".repeat(32)));
        assert!(!same_sum(None, &lower));
    }
}
