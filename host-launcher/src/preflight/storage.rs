//! Room on the host's filesystems: the state directories can be created and written,
//! and the data disk has the space it needs (or may grow into).

use super::Check;
use crate::paths::HostEnv;
use crate::spec::{DataDisk, Spec};
use nix::unistd::{access, AccessFlags};
use std::path::Path;

/// The nearest existing ancestor of `p` (itself if it exists).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

/// The run, log and secrets directories can be created: their nearest existing
/// ancestors are writable directories.
pub(super) fn state_dirs(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    const NAME: &str = "state directories";
    let log_dir = spec.log_dir();
    let dirs = [
        spec.run_dir.as_path(),
        log_dir.as_path(),
        spec.secrets_dir.as_path(),
    ];
    for d in dirs {
        let Some(anc) = existing_ancestor(d) else {
            continue;
        };
        if !anc.is_dir() || access(anc, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
            return Some(Check::fail(
                NAME,
                format!(
                    "{} cannot be created: {} is not a writable directory",
                    d.display(),
                    anc.display()
                ),
                "run as root, or set $SOVEREIGN_HOME (or the spec's paths) to a directory you own",
            ));
        }
    }
    Some(Check::pass(
        NAME,
        format!(
            "{} writable",
            existing_ancestor(&spec.run_dir)
                .unwrap_or(&spec.run_dir)
                .display()
        ),
    ))
}

/// Room for the data disk: a disk not created yet needs its full size free (it is
/// sparse, but PostgreSQL will fill it); an existing one may still grow.
pub(super) fn data_disk_space(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    disk_space("data disk space", "data", &spec.data_disk)
}

/// Room for the backup disk, when backups are enabled: as for the data disk (the
/// repository fills it up to the retention).
pub(super) fn backup_disk_space(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    spec.backup
        .enabled
        .then(|| disk_space("backup disk space", "backup", &spec.backup_disk))
        .flatten()
}

fn disk_space(title: &'static str, name: &str, d: &DataDisk) -> Option<Check> {
    let disk = &d.path;
    let dir = disk.parent().and_then(existing_ancestor)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let st = match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => st,
        Err(e) => {
            return Some(Check::warn(
                title,
                format!("cannot read free space of {}: {e}", dir.display()),
                format!("check it yourself with `df -h {}`", dir.display()),
            ))
        }
    };
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let size = d.size_gib << 30;
    Some(match std::fs::metadata(disk) {
        Err(_) if free < size => Check::fail(
            title,
            format!(
                "{:.1} GiB free on {}, the new {name} disk {} needs {} GiB",
                gib(free),
                dir.display(),
                disk.display(),
                d.size_gib
            ),
            format!(
                "free space on {}, or set a smaller {name}_disk.size_gib in a spec file",
                dir.display()
            ),
        ),
        Err(_) => Check::pass(
            title,
            format!(
                "{:.1} GiB free on {} for the new {} GiB {name} disk",
                gib(free),
                dir.display(),
                d.size_gib
            ),
        ),
        Ok(m) => {
            let allocated = std::os::unix::fs::MetadataExt::blocks(&m) * 512;
            let grow = m.len().saturating_sub(allocated);
            if free >= grow {
                Check::pass(
                    title,
                    format!(
                        "{:.1} GiB free on {}, {name} disk may grow {:.1} GiB",
                        gib(free),
                        dir.display(),
                        gib(grow)
                    ),
                )
            } else {
                Check::warn(
                    title,
                    format!(
                        "{:.1} GiB free on {}, the sparse {name} disk may grow {:.1} GiB more",
                        gib(free),
                        dir.display(),
                        gib(grow)
                    ),
                    format!(
                        "free space on {} before the database fills it",
                        dir.display()
                    ),
                )
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::tests::android_crosvm;
    use crate::preflight::Status;

    #[test]
    fn data_disk_space_needs_the_full_size_for_a_new_disk() {
        let (d, mut spec, env) = android_crosvm();
        spec.data_disk.size_gib = 1 << 30; // an exbibyte: more than any disk has
        let c = data_disk_space(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("needs 1073741824 GiB"), "{c:?}");
        spec.data_disk.size_gib = 0;
        assert_eq!(data_disk_space(&spec, &env).unwrap().status, Status::Pass);
        // An existing sparse disk larger than the free space may still grow: a warning.
        let st = nix::sys::statvfs::statvfs(d.path()).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        std::fs::File::create(&spec.data_disk.path)
            .unwrap()
            .set_len(free + (1 << 30))
            .unwrap();
        let c = data_disk_space(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Warn, "{c:?}");
        std::fs::File::create(&spec.data_disk.path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert_eq!(data_disk_space(&spec, &env).unwrap().status, Status::Pass);
    }
}
