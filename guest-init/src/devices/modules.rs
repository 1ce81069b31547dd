//! Kernel module loading for kernels that build virtio, vsock, ext4 or tun as modules
//! (Debian's cloud kernel, for instance). Our own kernel builds everything in and has no
//! /lib/modules tree, so this does nothing there.
//!
//! Modules are found by the modaliases of the devices present (`modules.alias`) plus a
//! fixed list the VM always needs, their dependencies come from `modules.dep`, and each
//! is loaded with `finit_module` (compressed `.ko.xz`/`.ko.zst` files are decompressed
//! by the kernel).

use nix::kmod::{finit_module, ModuleInitFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Modules the VM needs whether or not a device asks for them.
pub const ALWAYS_WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
    "virtio_console",
    "virtio_rng",
    "ext4",
    "tun",
];

/// `finit_module` flag: the file is compressed and the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// The module tree of one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// Module name → (relative path, dependency paths).
    deps: HashMap<String, (String, Vec<String>)>,
    /// (alias pattern, module name).
    aliases: Vec<(String, String)>,
}

/// The module name of a path like `kernel/net/vmw_vsock/vsock.ko.xz`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Shell-style glob match supporting `*` and `?` (what modules.alias uses).
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

impl ModuleIndex {
    /// Reads `modules.dep` and `modules.alias` under `dir` (`/lib/modules/<release>`).
    /// `None` when the tree does not exist.
    pub fn open(dir: &Path) -> Option<ModuleIndex> {
        let dep_text = fs::read_to_string(dir.join("modules.dep")).ok()?;
        let mut deps = HashMap::new();
        for line in dep_text.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let list = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module_name(path), (path.to_string(), list));
        }
        let aliases = fs::read_to_string(dir.join("modules.alias"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("alias"), Some(pat), Some(name)) => {
                        Some((pat.to_string(), name.replace('-', "_")))
                    }
                    _ => None,
                }
            })
            .collect();
        Some(ModuleIndex {
            dir: dir.to_path_buf(),
            deps,
            aliases,
        })
    }

    /// True when the tree knows a module of this name.
    pub fn has(&self, name: &str) -> bool {
        self.deps.contains_key(name)
    }

    /// Modules whose aliases match any of `modaliases`.
    pub fn for_modaliases(&self, modaliases: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for alias in modaliases {
            for (pat, name) in &self.aliases {
                if glob_match(pat.as_bytes(), alias.as_bytes()) && !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
        out
    }

    /// Files to load, dependencies first, for the named modules (unknown names skipped).
    pub fn plan(&self, wanted: &[String]) -> Vec<PathBuf> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            self.visit(name, &mut seen, &mut order);
        }
        order.into_iter().map(|rel| self.dir.join(rel)).collect()
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, deps)) = self.deps.get(name) else {
            return;
        };
        for dep in deps {
            self.visit(&module_name(dep), seen, order);
        }
        order.push(path.clone());
    }
}

/// The outcome of loading modules.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Modules loaded now.
    pub loaded: Vec<String>,
    /// Modules that failed, with the error.
    pub failed: Vec<(String, String)>,
}

/// Why a module file could not be loaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("open {0}: {1}")]
    Open(String, std::io::Error),
    #[error("{0}")]
    Kernel(nix::errno::Errno),
}

/// Loads one module file (already loaded or built in counts as success).
fn load_file(path: &Path) -> Result<(), LoadError> {
    let file = File::open(path).map_err(|e| LoadError::Open(path.display().to_string(), e))?;
    let compressed = path
        .extension()
        .is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&file, &CString::default(), flags) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(LoadError::Kernel(e)),
    }
}

/// Modaliases of every device on the virtio and PCI buses.
pub fn device_modaliases(sys_root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for bus in ["virtio", "pci", "platform"] {
        let dir = sys_root.join(format!("sys/bus/{bus}/devices"));
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(a) = fs::read_to_string(e.path().join("modalias")) {
                out.push(a.trim().to_string());
            }
        }
    }
    out
}

/// Loads what the devices present and the VM need, if this kernel has modules.
/// Returns `None` when there is no module tree (everything is built in, or nothing can
/// be loaded).
pub fn load_needed(release: &str, extra: &[String]) -> Option<LoadReport> {
    let dir = Path::new("/lib/modules").join(release);
    let index = ModuleIndex::open(&dir)?;
    let mut wanted: Vec<String> = ALWAYS_WANTED.iter().map(|s| s.to_string()).collect();
    wanted.extend(extra.iter().cloned());
    // virtio devices appear only once the transport is loaded: load it first, then
    // look at the devices' aliases.
    let mut report = LoadReport::default();
    for round in 0..2 {
        let mut names = wanted.clone();
        if round == 1 {
            names.extend(index.for_modaliases(&device_modaliases(Path::new("/"))));
        }
        for path in index.plan(&names) {
            let name = module_name(&path.to_string_lossy());
            if report.loaded.contains(&name) || report.failed.iter().any(|(n, _)| n == &name) {
                continue;
            }
            match load_file(&path) {
                Ok(()) => {
                    log::info!("loaded module {name}");
                    report.loaded.push(name);
                }
                Err(e) => {
                    log::warn!("module {name} failed to load: {e}");
                    report.failed.push((name, e.to_string()));
                }
            }
        }
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_globs() {
        assert_eq!(
            module_name("kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz"),
            "vmw_vsock_virtio_transport"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(module_name("kernel/drivers/x/foo-bar.ko.zst"), "foo_bar");
        assert!(glob_match(
            b"virtio:d00000013v*",
            b"virtio:d00000013v00001AF4"
        ));
        assert!(!glob_match(
            b"virtio:d00000002v*",
            b"virtio:d00000013v00001AF4"
        ));
        assert!(glob_match(
            b"pci:v00001AF4d*sv*sd*bc*sc*i*",
            b"pci:v00001AF4d00001053sv00001AF4sd00001100bc02sc80i00"
        ));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"", b"x"));
    }

    #[test]
    fn plan_orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/net/vmw_vsock/vsock.ko.xz\n\
             kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko.xz\n\
             kernel/net/vmw_vsock/vsock.ko.xz:\n\
             kernel/drivers/block/virtio_blk.ko.xz:\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("modules.alias"),
            "alias virtio:d00000013v* vmw_vsock_virtio_transport\nalias virtio:d00000002v* virtio_blk\n",
        )
        .unwrap();
        let idx = ModuleIndex::open(dir.path()).unwrap();
        let wanted = idx.for_modaliases(&["virtio:d00000013v00001AF4".into()]);
        assert_eq!(wanted, vec!["vmw_vsock_virtio_transport"]);
        let plan: Vec<String> = idx
            .plan(&[wanted[0].clone(), "virtio_blk".into(), "not_there".into()])
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        assert_eq!(
            plan,
            [
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "virtio_blk"
            ]
        );
        assert!(ModuleIndex::open(&dir.path().join("missing")).is_none());
    }
}
