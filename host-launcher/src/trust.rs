//! Whether a helper program is safe for root to run. The launcher runs as root and
//! starts gvproxy, vhost-device-vsock and the VMM; a binary that another user can
//! replace (its file, or any directory above it, writable by someone else) would run
//! that user's code as root. Such a program is refused, with the path and the reason.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a program is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {why}; root does not run programs others can replace")]
pub struct Untrusted {
    /// The program or directory at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// Checks `program` (resolved through symlinks) and every directory above it: each must
/// be owned by root or by `euid`, and not writable by group or others, except a
/// directory with the sticky bit (like /tmp), where others cannot replace our entries.
pub fn check(program: &Path, euid: u32) -> Result<(), Untrusted> {
    let real = std::fs::canonicalize(program).map_err(|e| Untrusted {
        path: program.to_path_buf(),
        why: format!("cannot resolve it ({e})"),
    })?;
    let mut at: Option<&Path> = Some(&real);
    let mut is_file = true;
    while let Some(p) = at {
        let meta = std::fs::metadata(p).map_err(|e| Untrusted {
            path: p.to_path_buf(),
            why: format!("cannot stat it ({e})"),
        })?;
        let owner = meta.uid();
        if owner != 0 && owner != euid {
            return Err(Untrusted {
                path: p.to_path_buf(),
                why: format!("owned by uid {owner}"),
            });
        }
        let mode = meta.mode();
        let sticky_dir = !is_file && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_dir {
            return Err(Untrusted {
                path: p.to_path_buf(),
                why: format!("writable by group or others (mode {:04o})", mode & 0o7777),
            });
        }
        is_file = false;
        at = p.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn writable_files_and_directories_are_refused() {
        let euid = nix::unistd::geteuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o755);
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        chmod(&bin, 0o755);
        let tool = bin.join("gvproxy");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        chmod(&tool, 0o755);
        // The temp dir's ancestors (/tmp is sticky) are fine as they are.
        check(&tool, euid).unwrap();
        chmod(&tool, 0o777);
        let e = check(&tool, euid).unwrap_err();
        assert!(e.why.contains("mode 0777"), "{e}");
        chmod(&tool, 0o755);
        chmod(&bin, 0o777);
        let e = check(&tool, euid).unwrap_err();
        assert_eq!(e.path, std::fs::canonicalize(&bin).unwrap(), "{e}");
        chmod(&bin, 0o1777);
        check(&tool, euid).unwrap();
        // A link into a writable place is judged by its target.
        chmod(&bin, 0o777);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&tool, &link).unwrap();
        check(&link, euid).unwrap_err();
        chmod(&bin, 0o755);
        // Owned by someone else: only as root can the test make such a file.
        if euid == 0 {
            nix::unistd::chown(&tool, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = check(&tool, euid).unwrap_err();
            assert!(e.why.contains("owned by uid 65534"), "{e}");
        }
    }
}
