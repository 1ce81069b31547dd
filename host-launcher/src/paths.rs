//! Where things live on this host: the state directory (`/data/sovereign` on Android,
//! `$SOVEREIGN_HOME` or `/var/lib/sovereign` elsewhere), the tool cache, and how helper
//! programs (crosvm, qemu-system-*, vhost-device-vsock, gvproxy) are found.
//!
//! Everything that reads the environment goes through [`HostEnv`], so preflight and
//! spec tests can point it at empty temporary directories instead of the real host.

use crate::trust::Untrusted;
use crate::vmm::crosvm_flags::CrosvmFlags;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// State directory on Android: the only place the launcher's files live on the phone.
pub const ANDROID_BASE_DIR: &str = "/data/sovereign";
/// State directory on any other Linux host unless `$SOVEREIGN_HOME` says otherwise.
pub const LINUX_BASE_DIR: &str = "/var/lib/sovereign";
/// crosvm as shipped by Android's virtualization APEX.
pub const ANDROID_CROSVM: &str = "/apex/com.android.virt/bin/crosvm";
/// Where KernelSU and Magisk run boot scripts from (`*.sh`, after boot, as root).
pub const ANDROID_BOOT_SCRIPT_DIR: &str = "/data/adb/service.d";
/// Overrides the state directory on non-Android hosts.
pub const HOME_ENV: &str = "SOVEREIGN_HOME";
/// Overrides the tool cache (`${XDG_CACHE_HOME:-$HOME/.cache}/sovereign`).
pub const CACHE_ENV: &str = "SOVEREIGN_CACHE";

/// A snapshot of the host facts the launcher depends on, injectable for tests.
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// True on Android (a `/system/build.prop` or `$ANDROID_ROOT` exists).
    pub android: bool,
    /// The state directory (see the module docs).
    pub base_dir: PathBuf,
    /// Directories searched for helper programs, in order: `$PATH`, the directory of the
    /// running `sovereign` binary, then `<cache>/bin`.
    pub search_dirs: Vec<PathBuf>,
    /// `/dev/kvm`, or a stand-in in tests.
    pub kvm_device: PathBuf,
    /// `/dev/vhost-vsock`, or a stand-in in tests.
    pub vhost_vsock_device: PathBuf,
    /// Root of the SELinux filesystem (`/sys/fs/selinux`).
    pub selinux_fs: PathBuf,
    /// The root manager's boot-script directory ([`ANDROID_BOOT_SCRIPT_DIR`]).
    pub boot_script_dir: PathBuf,
    /// Effective user id.
    pub euid: u32,
    /// What the crosvm last asked listed in `run --help`: one start asks once, and
    /// preflight checks the answer the launch plan is rendered from.
    pub crosvm_help: OnceLock<(PathBuf, Option<CrosvmFlags>)>,
}

impl HostEnv {
    /// Reads the real host: environment variables, `/system/build.prop`, `/proc/self/exe`.
    pub fn detect() -> HostEnv {
        let android = Path::new("/system/build.prop").exists()
            || std::env::var_os("ANDROID_ROOT").is_some_and(|v| !v.is_empty());
        let base_dir = if android {
            PathBuf::from(ANDROID_BASE_DIR)
        } else {
            match std::env::var_os(HOME_ENV) {
                Some(v) if !v.is_empty() => PathBuf::from(v),
                _ => PathBuf::from(LINUX_BASE_DIR),
            }
        };
        let mut search_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            search_dirs.push(dir);
        }
        if let Some(cache) = cache_dir() {
            search_dirs.push(cache.join("bin"));
        }
        HostEnv {
            android,
            base_dir,
            search_dirs,
            kvm_device: PathBuf::from("/dev/kvm"),
            vhost_vsock_device: PathBuf::from("/dev/vhost-vsock"),
            selinux_fs: PathBuf::from("/sys/fs/selinux"),
            boot_script_dir: PathBuf::from(ANDROID_BOOT_SCRIPT_DIR),
            euid: nix::unistd::geteuid().as_raw(),
            crosvm_help: OnceLock::new(),
        }
    }

    /// The flags the crosvm at `program` lists, asked once per [`HostEnv`] (see
    /// [`CrosvmFlags::probe`]); `None` when it cannot be run or lists no options.
    pub fn crosvm_flags(&self, program: &Path) -> Option<CrosvmFlags> {
        match self.crosvm_help.get() {
            Some((asked, answer)) if asked == program => *answer,
            _ => {
                let answer = CrosvmFlags::probe(program);
                let _ = self.crosvm_help.set((program.to_path_buf(), answer));
                answer
            }
        }
    }

    /// Resolves a helper program: a value containing `/` is a path and is used as is;
    /// a bare name is searched for in [`HostEnv::search_dirs`]. `None` when nothing
    /// executable was found.
    pub fn find_tool(&self, tool: &str) -> Option<PathBuf> {
        self.find_trusted_tool(tool).ok().flatten()
    }

    /// [`HostEnv::find_tool`], and as root only a program nobody else can replace
    /// ([`crate::trust::check`]): `Ok(None)` when nothing is found, `Err` when the only
    /// candidates are untrusted (the first one's reason).
    pub fn find_trusted_tool(&self, tool: &str) -> Result<Option<PathBuf>, Untrusted> {
        let candidates: Vec<PathBuf> = if tool.contains('/') {
            vec![PathBuf::from(tool)]
        } else {
            self.search_dirs.iter().map(|d| d.join(tool)).collect()
        };
        let mut refused = None;
        for p in candidates.into_iter().filter(|p| is_executable(p)) {
            if self.euid != 0 {
                return Ok(Some(p));
            }
            // Our own files count as root's (the tests run preflight as a stand-in root).
            match crate::trust::check(&p, nix::unistd::geteuid().as_raw()) {
                Ok(()) => return Ok(Some(p)),
                Err(e) => {
                    log::warn!("skipping {}: {e}", p.display());
                    refused.get_or_insert(e);
                }
            }
        }
        refused.map_or(Ok(None), Err)
    }
}

/// The tool cache the repository's scripts fill: `$SOVEREIGN_CACHE`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/sovereign`.
pub fn cache_dir() -> Option<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(c) = non_empty(CACHE_ENV) {
        return Some(PathBuf::from(c));
    }
    let xdg = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(xdg.join("sovereign"))
}

/// True for a regular file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves `p` against `dir` unless it is already absolute.
pub fn resolve(dir: &Path, p: impl Into<PathBuf>) -> PathBuf {
    let p = p.into();
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

/// Length limit of a unix socket path (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// True when `p` fits in `sun_path`.
pub fn socket_path_fits(p: &Path) -> bool {
    p.as_os_str().len() <= MAX_SOCKET_PATH
}

/// `p` with `suffix` appended to its last component (`vsock.sock` → `vsock.sock_1025`).
pub fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(p.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_in_search_dirs_only_when_executable() {
        let dir = tempfile::tempdir().unwrap();
        let env = HostEnv {
            android: false,
            base_dir: dir.path().into(),
            search_dirs: vec![dir.path().join("empty"), dir.path().into()],
            kvm_device: dir.path().join("kvm"),
            vhost_vsock_device: dir.path().join("vhost-vsock"),
            selinux_fs: dir.path().join("selinux"),
            boot_script_dir: dir.path().join("service.d"),
            euid: 0,
            crosvm_help: OnceLock::new(),
        };
        assert_eq!(env.find_tool("gvproxy"), None);
        let tool = dir.path().join("gvproxy");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        assert_eq!(env.find_tool("gvproxy"), None, "not executable yet");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(env.find_tool("gvproxy"), Some(tool.clone()));
        assert_eq!(env.find_tool(tool.to_str().unwrap()), Some(tool));
        assert_eq!(env.find_tool("/nonexistent/gvproxy"), None);
    }

    #[test]
    fn suffix_and_socket_length() {
        assert_eq!(
            with_suffix(Path::new("/r/vsock.sock"), "_1025"),
            PathBuf::from("/r/vsock.sock_1025")
        );
        assert!(socket_path_fits(Path::new(
            "/data/sovereign/run/sql/vsock.sock_1025"
        )));
        assert!(!socket_path_fits(&PathBuf::from(format!(
            "/{}",
            "x".repeat(107)
        ))));
        assert!(socket_path_fits(&PathBuf::from(format!(
            "/{}",
            "x".repeat(106)
        ))));
    }
}
