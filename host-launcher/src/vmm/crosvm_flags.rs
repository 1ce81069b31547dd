//! What the phone's crosvm accepts, read from its own `crosvm run --help`.
//!
//! crosvm builds differ: `--no-balloon` exists only with the `balloon` feature (a build
//! without it stops with "Unrecognized argument: --no-balloon" before the VM starts),
//! older builds know `--cid`/`--rwdisk` but not `--vsock`/`--block`, and
//! `--swiotlb`/`--unmap-guest-memory-on-fork` are newer still. The launcher asks the
//! binary it is about to run and renders only flags that binary lists.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The optional crosvm flags the launcher uses, each true when `run --help` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrosvmFlags {
    /// `--vsock cid=N` (else the older `--cid N`).
    pub vsock: bool,
    /// `--block path=...` (else the older `--rwdisk`/`--rwroot`).
    pub block: bool,
    /// `--no-balloon` (builds with the `balloon` feature).
    pub no_balloon: bool,
    /// `--no-usb`.
    pub no_usb: bool,
    /// `--unmap-guest-memory-on-fork`.
    pub unmap_guest_memory_on_fork: bool,
    /// `--swiotlb <MiB>`.
    pub swiotlb: bool,
    /// `--protected-vm-without-firmware`.
    pub protected_vm_without_firmware: bool,
}

impl CrosvmFlags {
    /// What current crosvm (AVF's build, with default features) accepts: used when the
    /// binary cannot be asked (a dry run on another machine) and pinned by the goldens.
    pub const CURRENT: CrosvmFlags = CrosvmFlags {
        vsock: true,
        block: true,
        no_balloon: true,
        no_usb: true,
        unmap_guest_memory_on_fork: true,
        swiotlb: true,
        protected_vm_without_firmware: true,
    };

    /// The flags `help` (the text of `crosvm run --help`) lists, or `None` when it lists
    /// no options at all (not a crosvm help text).
    pub fn from_help(help: &str) -> Option<CrosvmFlags> {
        let listed = |flag: &str| {
            help.match_indices(flag).any(|(i, _)| {
                let after = help[i + flag.len()..].chars().next();
                let before = help[..i].chars().next_back();
                !matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == '-')
                    && !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-')
            })
        };
        if !listed("--mem") && !listed("--cpus") {
            return None;
        }
        Some(CrosvmFlags {
            vsock: listed("--vsock"),
            block: listed("--block"),
            no_balloon: listed("--no-balloon"),
            no_usb: listed("--no-usb"),
            unmap_guest_memory_on_fork: listed("--unmap-guest-memory-on-fork"),
            swiotlb: listed("--swiotlb"),
            protected_vm_without_firmware: listed("--protected-vm-without-firmware"),
        })
    }

    /// Asks `crosvm` for `run --help` (stdout and stderr; some builds print usage to
    /// stderr). `None` when it cannot be run or its answer is not a help text.
    pub fn probe(crosvm: &Path) -> Option<CrosvmFlags> {
        let mut child = Command::new(crosvm)
            .args(["run", "--help"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // The help text can outgrow a pipe's buffer: drain both while waiting.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::Builder::new().spawn(move || {
                let mut text = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut text);
                }
                text
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        // A crosvm that hangs on --help must not hold up start: give it 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        let mut text = Vec::new();
        for reader in [stdout, stderr].into_iter().flatten() {
            text.extend(reader.join().unwrap_or_default());
            text.push(b'\n');
        }
        CrosvmFlags::from_help(&String::from_utf8_lossy(&text))
    }

    /// The flags the launcher would like but this build lacks, named for the report.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.vsock, "--vsock (using --cid)"),
            (self.block, "--block (using --rwdisk/--rwroot)"),
            (
                self.no_balloon,
                "--no-balloon (built without the balloon feature)",
            ),
            (self.no_usb, "--no-usb"),
            (
                self.unmap_guest_memory_on_fork,
                "--unmap-guest-memory-on-fork",
            ),
            (self.swiotlb, "--swiotlb"),
            (
                self.protected_vm_without_firmware,
                "--protected-vm-without-firmware",
            ),
        ]
        .into_iter()
        .filter(|(has, _)| !has)
        .map(|(_, name)| name)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from current crosvm's `run --help` (argh's layout).
    const CURRENT_HELP: &str = "Usage: crosvm run [<kernel>] [options]\n\n\
        Start a new crosvm instance\n\nOptions:\n\
        \x20 --block          parameters for setting up a block device.\n\
        \x20 --cid            (DEPRECATED): Use --vsock.\n\
        \x20 --cpus           cpu parameters.\n\
        \x20 --mem            memory parameters.\n\
        \x20 --no-balloon     don't use virtio-balloon device in the guest\n\
        \x20 --no-usb         don't use usb devices in the guest\n\
        \x20 --protected-vm-without-firmware\n\
        \x20 --swiotlb        size of the swiotlb buffer in MiB\n\
        \x20 --unmap-guest-memory-on-fork\n\
        \x20 --vsock          add a vsock device.\n";

    #[test]
    fn current_crosvm_lists_everything() {
        assert_eq!(
            CrosvmFlags::from_help(CURRENT_HELP),
            Some(CrosvmFlags::CURRENT)
        );
        assert!(CrosvmFlags::CURRENT.missing().is_empty());
    }

    #[test]
    fn a_build_without_the_balloon_feature_lacks_only_no_balloon() {
        let help = CURRENT_HELP.replace("--no-balloon ", "--balloon-page ");
        let f = CrosvmFlags::from_help(&help).unwrap();
        assert!(!f.no_balloon);
        assert_eq!(
            f.missing(),
            ["--no-balloon (built without the balloon feature)"]
        );
    }

    #[test]
    fn an_older_crosvm_is_read_flag_by_flag_not_by_prefix() {
        // `--cid` and `--rwdisk` only; `--vsock-device` or `--blocks` must not count.
        let help = "crosvm run [options] <kernel>\n  --cid CID\n  --mem N\n  --cpus N\n  \
                    --rwdisk PATH\n  --rwroot PATH\n  --vhost-vsock-device PATH\n  --blocksize N\n";
        let f = CrosvmFlags::from_help(help).unwrap();
        assert!(!f.vsock && !f.block && !f.no_balloon && !f.swiotlb, "{f:?}");
    }

    #[test]
    fn something_else_is_not_a_help_text() {
        assert_eq!(CrosvmFlags::from_help(""), None);
        assert_eq!(CrosvmFlags::from_help("Permission denied"), None);
    }

    #[test]
    fn the_probe_reads_stdout_and_stderr_and_gives_up_on_a_hang() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let on_stderr = write("crosvm-err", "echo '  --mem N\n  --cid N' >&2; exit 1");
        let f = CrosvmFlags::probe(&on_stderr).unwrap();
        assert!(!f.vsock);
        let hang = write("crosvm-hang", "sleep 30");
        assert_eq!(CrosvmFlags::probe(&hang), None);
        assert_eq!(CrosvmFlags::probe(&d.path().join("absent")), None);
    }
}
