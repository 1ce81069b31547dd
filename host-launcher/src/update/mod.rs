//! Image sets and updates: a set is the kernel and the root image a VM boots (the data
//! disk is never part of one). `sovereign update --images DIR` stages a new set beside
//! the current one, boots it, and keeps the current one until the new one is proven;
//! what is checked before anything stops lives here ([`Candidate`], [`check_major`]),
//! the files and their renames in [`slots`], the power-cut journal in [`journal`], and
//! the order of the steps in `commands::update`.

pub mod journal;
pub mod slots;

use crate::deploy::manifest::{Loaded, ManifestEntry, ManifestError};
use crate::deploy::sha256_file;
use crate::spec::Spec;
use protocol::release::{self, InstalledSet, Versions};
use sha2::{Digest, Sha256};
use slots::Slot;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why an update or rollback did not happen, or stopped. Each message names the file
/// or the set and says what was left as it was.
#[derive(Debug, Error)]
pub enum UpdateError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{dir}: the set has no {name} (its manifest lists {listed}); nothing was changed")]
    Missing {
        /// The artifact directory.
        dir: PathBuf,
        /// The file the VM needs.
        name: String,
        /// What the manifest lists.
        listed: String,
    },
    #[error("{path}: SHA-256 {found}, its manifest says {want}: the set is damaged or changed since it was built; nothing was changed")]
    Digest {
        /// The file.
        path: PathBuf,
        /// Its digest.
        found: String,
        /// The manifest's.
        want: String,
    },
    #[error("the spec boots an initrd ({0}): an image set is a kernel and a root image, so `update` does not replace this VM's; change its files by hand")]
    Initrd(PathBuf),
    #[error("{new} carries PostgreSQL {new_major}; {current} runs PostgreSQL {current_major}: a server cannot read the data directory of another major version, so the set is refused and nothing was changed (a major upgrade is not supported yet)")]
    Major {
        /// The set offered.
        new: String,
        /// Its PostgreSQL major.
        new_major: u32,
        /// What runs now.
        current: String,
        /// Its PostgreSQL major.
        current_major: u32,
    },
    #[error("there is no previous set to go back to: {0}")]
    NoPrevious(String),
    #[error(transparent)]
    Move(#[from] slots::MoveError),
    #[error(transparent)]
    Copy(#[from] crate::disk_image::CopyError),
    #[error(transparent)]
    RunFile(#[from] crate::run_files::RunFileError),
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The files of `spec`'s set: its kernel and root image, named as a manifest names them.
pub fn slots_of(spec: &Spec) -> Result<Vec<Slot>, UpdateError> {
    if let Some(initrd) = &spec.initrd {
        return Err(UpdateError::Initrd(initrd.clone()));
    }
    Ok(vec![
        Slot {
            role: "kernel".into(),
            name: spec.arch.image_name().into(),
            path: spec.kernel.clone(),
        },
        Slot {
            role: "root image".into(),
            name: "root.img".into(),
            path: spec.root_image.clone(),
        },
    ])
}

/// A set offered by `update --images DIR`, read from its manifest and not yet copied.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The artifact directory.
    pub dir: PathBuf,
    /// The set as it will be recorded.
    pub set: InstalledSet,
    /// Each slot with the manifest's entry for its file.
    pub files: Vec<(Slot, ManifestEntry)>,
}

/// Reads DIR's manifest and picks the files `slots` need: the set must be built for
/// the spec's architecture and list each of them.
pub fn candidate(spec: &Spec, slots: &[Slot], dir: &Path) -> Result<Candidate, UpdateError> {
    let loaded = Loaded::load(dir)?;
    loaded.require_arch(spec.arch)?;
    let m = &loaded.manifest;
    let mut files = Vec::new();
    let mut ids = Sha256::new();
    for slot in slots {
        let entry = m
            .files
            .iter()
            .find(|e| e.name == slot.name)
            .ok_or_else(|| UpdateError::Missing {
                dir: dir.to_path_buf(),
                name: slot.name.clone(),
                listed: m
                    .files
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        ids.update(format!("{} {}\n", entry.name, entry.sha256));
        files.push((slot.clone(), entry.clone()));
    }
    let id: String = ids
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Candidate {
        dir: dir.to_path_buf(),
        set: InstalledSet {
            id,
            versions: m.versions.clone(),
            source: dir.display().to_string(),
            installed_unix: now_unix(),
        },
        files,
    })
}

/// Refuses a set whose PostgreSQL major differs from what runs now (`current`: how it
/// is named, and its versions). Either side unknown passes: the guest refuses a data
/// directory of another major at boot, and the update is then undone.
pub fn check_major(
    new: &InstalledSet,
    current: Option<(String, &Versions)>,
) -> Result<(), UpdateError> {
    let Some((current, versions)) = current else {
        return Ok(());
    };
    match (
        release::postgres_major(&new.versions),
        release::postgres_major(versions),
    ) {
        (Some(new_major), Some(current_major)) if new_major != current_major => {
            Err(UpdateError::Major {
                new: new.describe(),
                new_major,
                current,
                current_major,
            })
        }
        _ => Ok(()),
    }
}

/// Copies each file of `c` to its slot's `.next` (synced, renamed into place) and checks
/// the copy against the manifest; `progress` hears one line per file.
pub fn stage_copies(c: &Candidate, progress: &mut dyn FnMut(&str)) -> Result<(), UpdateError> {
    for (slot, entry) in &c.files {
        let from = c.dir.join(&entry.name);
        let next = slot.next();
        slots::remove(&next)?;
        progress(&format!(
            "copying the {} {} ({})",
            slot.role,
            from.display(),
            crate::terminal::size(entry.size)
        ));
        crate::disk_image::copy_kept(&from, &next)?;
        let found = sha256_file(&next).map_err(|source| UpdateError::Read {
            path: next.clone(),
            source,
        })?;
        if found != entry.sha256 {
            slots::remove(&next)?;
            return Err(UpdateError::Digest {
                path: from,
                found,
                want: entry.sha256.clone(),
            });
        }
    }
    Ok(())
}

/// The lines `status` shows for the image sets, when `update` installed any.
pub fn render_status(o: &mut String, sets: &protocol::release::ImageSets) {
    use std::fmt::Write as _;
    if let Some(c) = &sets.current {
        let _ = writeln!(o, "  image set: {} from {}", c.describe(), c.source);
    }
    if let Some(p) = &sets.previous {
        let _ = writeln!(o, "  kept for `update --rollback`: {}", p.describe());
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
