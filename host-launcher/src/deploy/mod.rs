//! `sovereign deploy`: copies the arm64 artifact set from the developer's machine to a
//! rooted phone over adb, and proves it arrived.
//!
//! adb (running as the `shell` user) cannot write `/data/sovereign`, so files travel
//! in two steps: `adb push` into a staging directory under `/data/local/tmp`, then one
//! root script (`su -c`) that moves them into place and sets owner and modes. Only
//! files whose SHA-256 on the device differs from the manifest are pushed; staged
//! files are checked before anything is moved (a corrupted transfer never replaces a
//! good file), and every deployed file is checked again in its final place.
//!
//! Pieces: [`manifest`] (what to copy), [`adb`] (talking to the device),
//! [`remote`] (quoting and parsing the device's shell), [`verify`] (the checksum
//! checks); this module holds the errors and the order of the steps.

pub mod adb;
pub mod manifest;
pub mod remote;
pub mod verify;

use adb::Adb;
use manifest::{Loaded, ManifestEntry, ManifestError, SECRETS_DIR};
use protocol::Arch;
use remote::{install_script, quote, su, Install};
use std::collections::BTreeSet;
use std::path::PathBuf;
use thiserror::Error;
use verify::{check_local_sizes, check_local_sums, remote_sums, same_sum, verify_remote};
pub use verify::{sha256_file, Checkpoint};

/// Where the set goes on the phone: the launcher's state directory on Android.
pub const DEFAULT_DEST: &str = crate::paths::ANDROID_BASE_DIR;
/// Where `adb push` leaves files before root moves them (writable by adb's `shell` user).
pub const STAGING: &str = "/data/local/tmp/sovereign-staging";
/// The architecture a phone's set must be built for.
pub const PHONE_ARCH: Arch = Arch::Arm64;
/// What `uname -m` prints on a phone that can run it.
pub const PHONE_MACHINE: &str = "aarch64";

/// Why a deploy stopped. Each message is one line: what failed, with which value, and
/// what to do.
#[derive(Debug, Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Quote(#[from] remote::QuoteError),
    #[error("adb not found ({searched}): install Android SDK platform-tools, or pass --adb PATH")]
    AdbNotFound {
        /// Where it was looked for.
        searched: String,
    },
    #[error("cannot run adb at {program}: {cause} (pass --adb PATH)")]
    AdbSpawn {
        /// The program.
        program: PathBuf,
        /// The error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {detail}")]
    AdbFailed {
        /// The call, e.g. `adb -s R58 push ...`.
        command: String,
        /// `exit N`.
        status: String,
        /// adb's own message.
        detail: String,
    },
    #[error("no device attached (`adb devices` lists none): connect the phone by USB with USB debugging enabled (Settings → Developer options)")]
    NoDevice,
    #[error("device {serial} is {state:?}: {hint}")]
    NotReady {
        /// Its serial.
        serial: String,
        /// Its state as adb lists it.
        state: String,
        /// What to do.
        hint: &'static str,
    },
    #[error("device {serial} is not attached (attached: {attached}): check --serial against `adb devices`")]
    SerialNotFound {
        /// The requested serial.
        serial: String,
        /// What is attached.
        attached: String,
    },
    #[error("{count} devices attached ({list}): choose one with --serial SERIAL")]
    SeveralDevices {
        /// How many are ready.
        count: usize,
        /// Their serials and states.
        list: String,
    },
    #[error("device {serial} reports machine {machine:?} (`uname -m`), not aarch64: the arm64 set needs a 64-bit ARM phone")]
    WrongMachine {
        /// The device.
        serial: String,
        /// What `uname -m` printed.
        machine: String,
    },
    #[error("su on device {serial} did not give root (`su -c id` printed {output:?}): grant root to Shell in the KernelSU manager's Superuser list, then retry")]
    SuDenied {
        /// The device.
        serial: String,
        /// What `su -c id` printed.
        output: String,
    },
    #[error("--dest {dest:?}: {why}")]
    BadDest {
        /// The value given.
        dest: String,
        /// What is expected.
        why: &'static str,
    },
    #[error(
        "cannot read {path}: {cause} (rebuild the set with scripts/build-images.sh --arch arm64)"
    )]
    LocalRead {
        /// The file.
        path: PathBuf,
        /// The error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
    #[error("{path} does not match the manifest: {what} (rebuild the set with scripts/build-images.sh --arch arm64)")]
    LocalMismatch {
        /// The file.
        path: PathBuf,
        /// Which property differs, with both values.
        what: String,
    },
    #[error("sha256sum is not available on device {serial} (`{command}` exited 127): the phone needs Android 8 or later (toybox)")]
    NoSha256sum {
        /// The device.
        serial: String,
        /// The remote command.
        command: String,
    },
    #[error("{path} on device {serial} {got} {when}, expected SHA-256 {want}: {hint}", hint = .when.hint())]
    Corrupted {
        /// The remote path.
        path: String,
        /// The device.
        serial: String,
        /// `has SHA-256 X` or `is missing`.
        got: String,
        /// Which check found it.
        when: Checkpoint,
        /// The manifest's checksum.
        want: String,
    },
    #[error("installing into {dest} on device {serial} failed ({status}): {detail} (is there space on /data? `adb shell df /data`)")]
    InstallFailed {
        /// The destination.
        dest: String,
        /// The device.
        serial: String,
        /// Its exit status.
        status: String,
        /// Its output.
        detail: String,
    },
}

/// What to deploy where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The artifact directory (holds manifest.json).
    pub artifacts: PathBuf,
    /// The destination directory on the phone.
    pub dest: String,
    /// The device, when chosen by the user.
    pub serial: Option<String>,
    /// The adb program.
    pub adb: PathBuf,
    /// Push manifest.json too, so `sovereign update --images DEST` on the phone can
    /// check the set (`deploy --update`).
    pub with_manifest: bool,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The device.
    pub serial: String,
    /// Files pushed (manifest names).
    pub pushed: Vec<String>,
    /// Files already intact on the device.
    pub unchanged: Vec<String>,
    /// Bytes pushed.
    pub bytes_pushed: u64,
}

/// Refuses destinations that are relative, the root, or not plain.
pub fn check_dest(dest: &str) -> Result<(), DeployError> {
    let bad = |why| {
        Err(DeployError::BadDest {
            dest: dest.to_string(),
            why,
        })
    };
    if !dest.starts_with('/') {
        return bad("expected an absolute path on the phone, e.g. /data/sovereign");
    }
    if dest.trim_end_matches('/').is_empty() {
        return bad("the root directory cannot be the destination");
    }
    if dest.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control characters and backslashes are not allowed");
    }
    if dest.split('/').any(|c| c == "." || c == "..") {
        return bad(". and .. components are not allowed");
    }
    Ok(())
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(p, _)| p)
}

/// Runs a deploy; `progress` receives one line per step.
pub fn deploy(o: &Options, progress: &mut dyn FnMut(&str)) -> Result<Summary, DeployError> {
    check_dest(&o.dest)?;
    let dest = o.dest.trim_end_matches('/').to_string();
    let m = Loaded::load(&o.artifacts)?;
    m.require_arch(PHONE_ARCH)?;
    let mut files = m.to_deploy()?;
    let manifest_entry = if o.with_manifest {
        Some(manifest_as_entry(&m.path)?)
    } else {
        None
    };
    files.extend(manifest_entry.as_ref());
    check_local_sizes(&o.artifacts, &files)?;

    let mut adb = Adb::new(o.adb.clone());
    let serial = adb::select(&adb.devices()?, o.serial.as_deref())?;
    adb.serial = Some(serial.clone());
    let uname = adb.shell("uname -m")?;
    let machine = uname.stdout.trim().to_string();
    if machine.is_empty() {
        return Err(DeployError::AdbFailed {
            command: adb.render(&["shell", "uname -m"]),
            status: uname
                .status
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            detail: uname.text(),
        });
    }
    if machine != PHONE_MACHINE {
        return Err(DeployError::WrongMachine { serial, machine });
    }
    let id = adb.shell(&su("id")?)?;
    if !id.stdout.contains("uid=0(") && !id.stdout.contains("uid=0 ") {
        return Err(DeployError::SuDenied {
            serial,
            output: id.text(),
        });
    }
    progress(&format!(
        "device {serial}: aarch64, root via su; comparing {} file(s) of {} by SHA-256",
        files.len(),
        o.artifacts.display()
    ));

    let targets: Vec<(String, &ManifestEntry)> =
        files.iter().map(|e| (join(&dest, &e.name), *e)).collect();
    let paths: Vec<String> = targets.iter().map(|(p, _)| p.clone()).collect();
    let on_device = remote_sums(&adb, &paths)?;
    let (changed, unchanged): (Vec<_>, Vec<_>) = targets
        .iter()
        .partition(|(p, e)| !same_sum(on_device.get(p), &e.sha256));

    let mut staged: Vec<(String, &ManifestEntry)> = Vec::new();
    if !changed.is_empty() {
        // What is pushed must be what the manifest says, or the staged check below
        // would blame the cable for a stale artifact directory.
        let to_push: Vec<&ManifestEntry> = changed.iter().map(|(_, e)| *e).collect();
        check_local_sums(&o.artifacts, &to_push)?;
        let staging_dirs: BTreeSet<String> = changed
            .iter()
            .map(|(_, e)| parent(&join(STAGING, &e.name)).to_string())
            .collect();
        let mkdir = format!(
            "mkdir -p {}",
            staging_dirs
                .iter()
                .map(|d| quote(d))
                .collect::<Result<Vec<_>, _>>()?
                .join(" ")
        );
        let r = adb.shell(&mkdir)?;
        if r.status.is_some_and(|s| s != 0) {
            return Err(DeployError::AdbFailed {
                command: adb.render(&["shell", &mkdir]),
                status: format!("exit {}", r.status.unwrap_or(-1)),
                detail: r.text(),
            });
        }
        for (_, e) in &changed {
            let remote = join(STAGING, &e.name);
            progress(&format!("pushing {} ({})", e.name, human_bytes(e.size)));
            adb.push(&o.artifacts.join(&e.name), &remote)?;
            staged.push((remote, *e));
        }
        if let Err(err) = verify_remote(&adb, &staged, Checkpoint::Staged) {
            if let Ok(cleanup) = quote(STAGING).and_then(|s| su(&format!("rm -rf {s}"))) {
                let _ = adb.shell(&cleanup);
            }
            return Err(err);
        }
    }

    let secrets = join(&dest, SECRETS_DIR);
    let has_secrets = files.iter().any(|e| e.is_secret());
    let dirs: BTreeSet<String> = targets
        .iter()
        .map(|(p, _)| parent(p).to_string())
        .filter(|d| *d != dest && *d != secrets)
        .collect();
    let installs: Vec<Install> = targets
        .iter()
        .map(|(target, e)| Install {
            staged: staged
                .iter()
                .find(|(_, s)| s.name == e.name)
                .map(|(p, _)| p.clone()),
            target: target.clone(),
            mode: if e.is_secret() { 0o600 } else { e.mode.0 },
        })
        .collect();
    let script = install_script(
        &dest,
        &dirs.into_iter().collect::<Vec<_>>(),
        has_secrets.then_some(secrets.as_str()),
        &installs,
        STAGING,
    )?;
    let r = adb.shell(&su(&script)?)?;
    if r.status != Some(0) {
        return Err(DeployError::InstallFailed {
            dest,
            serial,
            status: r
                .status
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            detail: r.text(),
        });
    }
    progress(&format!("verifying {} file(s) in {dest}", targets.len()));
    verify_remote(&adb, &targets, Checkpoint::Installed)?;
    Ok(Summary {
        serial,
        bytes_pushed: changed.iter().map(|(_, e)| e.size).sum(),
        pushed: changed.iter().map(|(_, e)| e.name.clone()).collect(),
        unchanged: unchanged.iter().map(|(_, e)| e.name.clone()).collect(),
    })
}

/// manifest.json itself as a file to push (the manifest cannot list itself).
fn manifest_as_entry(path: &std::path::Path) -> Result<ManifestEntry, DeployError> {
    let read = |cause| DeployError::LocalRead {
        path: path.to_path_buf(),
        cause,
    };
    Ok(ManifestEntry {
        name: manifest::FILE_NAME.to_string(),
        size: std::fs::metadata(path).map_err(read)?.len(),
        sha256: sha256_file(path).map_err(read)?,
        mode: manifest::FileMode(0o644),
        deploy: true,
    })
}

/// `512 B`, `3.4 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_must_be_plain_absolute_paths() {
        check_dest("/data/sovereign").unwrap();
        check_dest("/data/sovereign test/").unwrap();
        for bad in [
            "data/sovereign",
            "/",
            "//",
            "/data/../x",
            "/data/a\nb",
            "/a\\b",
        ] {
            let e = check_dest(bad).unwrap_err().to_string();
            assert!(e.starts_with("--dest "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(576 << 20), "576.0 MiB");
    }
}
