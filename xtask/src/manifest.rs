//! Writes an artifact set's `manifest.json` (`cargo xtask manifest`): each file's size
//! and SHA-256, and the mode and deploy policy of [`policy`], in the
//! [`protocol::manifest`] types that `sovereign deploy` reads back.

use protocol::manifest::{check_name, FileMode, Manifest, ManifestEntry, ManifestError};
use protocol::manifest::{FILE_NAME, SECRETS_DIR};
use protocol::Arch;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a manifest could not be written.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{name:?} cannot be listed in {FILE_NAME}: {why}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
    #[error("the manifest for {dir} would be invalid: {cause}")]
    Invalid {
        /// The artifact directory.
        dir: PathBuf,
        /// What `Manifest::validate` refused (in the message already, so not a
        /// `source` too).
        cause: ManifestError,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
}

/// How `deploy` treats one file of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Permission bits on the phone.
    pub mode: FileMode,
    /// Whether `deploy` copies it.
    pub deploy: bool,
}

/// The mode and deploy flag of a file of the set, by name: the phone runs `sovereign`
/// and `gvproxy`; `sovereign-init` already sits inside root.img, and the boot initramfs
/// and the kernel's config are for tests and inspection only; secrets are 0600; the rest
/// (kernel, root.img, sql.toml) is plain data the launcher reads.
pub fn policy(name: &str) -> Policy {
    let (mode, deploy) = match name {
        "sovereign" | "gvproxy" => (0o755, true),
        "sovereign-init" | "boot-initramfs.cpio.gz" | "kernel.config" => (0o644, false),
        _ if name.starts_with(&format!("{SECRETS_DIR}/")) => (0o600, true),
        _ => (0o644, true),
    };
    Policy {
        mode: FileMode(mode),
        deploy,
    }
}

/// Size and lower-case hex SHA-256 of a file, in one streaming read (so both describe
/// the same bytes).
pub fn size_and_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    let sum = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, sum))
}

/// The manifest of `names` (relative to `dir`) for `arch`, validated.
pub fn build(
    arch: Arch,
    dir: &Path,
    names: &[String],
    versions: protocol::release::Versions,
) -> Result<Manifest, BuildError> {
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let bad = |why| BuildError::BadName {
            name: name.clone(),
            why,
        };
        check_name(name).map_err(bad)?;
        if name == FILE_NAME {
            return Err(bad("the manifest cannot list itself"));
        }
        let path = dir.join(name);
        let (size, sha256) =
            size_and_sha256(&path).map_err(|cause| BuildError::Read { path, cause })?;
        let Policy { mode, deploy } = policy(name);
        files.push(ManifestEntry {
            name: name.clone(),
            size,
            sha256,
            mode,
            deploy,
        });
    }
    let manifest = Manifest {
        arch,
        files,
        versions,
    };
    manifest.validate().map_err(|cause| BuildError::Invalid {
        dir: dir.to_path_buf(),
        cause,
    })?;
    Ok(manifest)
}

/// Writes `manifest` to `dir/manifest.json` through a temporary file in `dir` and a
/// rename, so a reader sees the old manifest or the new one, never half of one.
/// Returns the path written.
pub fn write(dir: &Path, manifest: &Manifest) -> Result<PathBuf, BuildError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(manifest.to_json().as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(cause) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(BuildError::Write { path, cause });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_what_deploy_expects() {
        let p = |name| {
            let Policy { mode, deploy } = policy(name);
            (mode.0, deploy)
        };
        assert_eq!(p("sovereign"), (0o755, true));
        assert_eq!(p("gvproxy"), (0o755, true));
        assert_eq!(p("sovereign-init"), (0o644, false));
        assert_eq!(p("boot-initramfs.cpio.gz"), (0o644, false));
        assert_eq!(p("kernel.config"), (0o644, false));
        for name in ["bzImage", "Image", "root.img", "sql.toml"] {
            assert_eq!(p(name), (0o644, true), "{name}");
        }
        assert_eq!(p("secrets/ts-authkey"), (0o600, true));
    }

    #[test]
    fn writes_a_manifest_the_reader_accepts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Image"), b"abc").unwrap();
        std::fs::write(dir.path().join("sovereign"), b"").unwrap();
        std::fs::write(dir.path().join("sovereign-init"), b"init").unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/key"), b"k").unwrap();
        let names: Vec<String> = ["Image", "sovereign", "sovereign-init", "secrets/key"]
            .map(String::from)
            .to_vec();
        let m = build(Arch::Arm64, dir.path(), &names, Default::default()).unwrap();
        let path = write(dir.path(), &m).unwrap();
        assert_eq!(path, dir.path().join("manifest.json"));
        let back = Manifest::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.arch, Arch::Arm64);
        let image = &back.files[0];
        assert_eq!((image.name.as_str(), image.size), ("Image", 3));
        assert_eq!(
            image.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            back.files[1].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            back.deployed().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["Image", "sovereign", "secrets/key"]
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "temporary file left behind: {left:?}");
    }

    #[test]
    fn bad_lists_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        let err = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            build(Arch::X86_64, dir.path(), &names, Default::default())
                .unwrap_err()
                .to_string()
        };
        let e = err(&["missing"]);
        assert!(
            e.starts_with("cannot read ") && e.contains("missing"),
            "{e}"
        );
        let e = err(&["../a"]);
        assert!(e.starts_with("\"../a\" cannot be listed"), "{e}");
        let e = err(&["manifest.json"]);
        assert!(e.contains("cannot list itself"), "{e}");
        let e = err(&["a", "a"]);
        assert!(e.contains("files[1].name = \"a\": listed twice"), "{e}");
        let e = write(
            &dir.path().join("nope"),
            &Manifest {
                arch: Arch::X86_64,
                files: Vec::new(),
                versions: Default::default(),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot write") && e.contains("nope"), "{e}");
    }
}
