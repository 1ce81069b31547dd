//! Where the tests find what they boot and run: the artifact set of
//! `scripts/build-images.sh --arch x86_64` (`$SOVEREIGN_ARTIFACTS`), the Debian cloud
//! kernel (`$SOVEREIGN_CLOUD_KERNEL`) and the tools in `$SOVEREIGN_CACHE/bin`.

use std::path::{Path, PathBuf};

/// The artifact set and tools for one architecture.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The artifact directory.
    pub dir: PathBuf,
    /// Guest kernel (bzImage or Image).
    pub kernel: PathBuf,
    /// Full root image (Debian, PostgreSQL, tailscale, sovereign-init); absent from a
    /// `--boot-only` set, which only boots the initramfs.
    pub root_image: PathBuf,
    /// Boot-only initramfs (sovereign-init alone).
    pub initramfs: PathBuf,
    /// The launcher binary.
    pub sovereign: PathBuf,
    /// Debian's cloud kernel (virtio, vsock and ext4 as modules), if fetched.
    pub cloud_kernel: Option<PathBuf>,
    /// Directory with gvproxy, vhost-device-vsock, headscale, tailscale(d) for the host.
    pub tools: PathBuf,
}

/// `${SOVEREIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sovereign}`.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("SOVEREIGN_CACHE") {
        return PathBuf::from(c);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/root".into())
                .join(".cache")
        });
    base.join("sovereign")
}

fn existing(path: PathBuf) -> Result<PathBuf, String> {
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing (run scripts/build-images.sh)",
            path.display()
        ))
    }
}

impl Artifacts {
    /// The x86_64 set named by `$SOVEREIGN_ARTIFACTS`.
    pub fn from_env() -> Result<Artifacts, String> {
        let dir = std::env::var_os("SOVEREIGN_ARTIFACTS")
            .map(PathBuf::from)
            .ok_or("SOVEREIGN_ARTIFACTS is not set (scripts/test.sh sets it to the output of scripts/build-images.sh --arch x86_64)")?;
        Artifacts::in_dir(&dir, "bzImage")
    }

    /// The set in `dir` with the kernel file `kernel_name`.
    pub fn in_dir(dir: &Path, kernel_name: &str) -> Result<Artifacts, String> {
        let tools = cache_dir().join("bin");
        for tool in [
            "gvproxy",
            "vhost-device-vsock",
            "headscale",
            "tailscale",
            "tailscaled",
        ] {
            existing(tools.join(tool)).map_err(|_| {
                format!(
                    "{tool} is missing from {} (run scripts/ci-deps.sh)",
                    tools.display()
                )
            })?;
        }
        Ok(Artifacts {
            kernel: existing(dir.join(kernel_name))?,
            root_image: dir.join("root.img"),
            initramfs: existing(dir.join("boot-initramfs.cpio.gz"))?,
            sovereign: existing(dir.join("sovereign"))?,
            cloud_kernel: std::env::var_os("SOVEREIGN_CLOUD_KERNEL")
                .map(PathBuf::from)
                .filter(|p| p.exists()),
            tools,
            dir: dir.to_path_buf(),
        })
    }

    /// A host tool from the tool directory.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.tools.join(name)
    }

    /// The arm64 set named by `$SOVEREIGN_ARM64_ARTIFACTS` (output of
    /// `scripts/build-images.sh --arch arm64 [--boot-only]`): its Image and boot initramfs
    /// hold the guest's code, while `sovereign` is this host's launcher
    /// ([`host_launcher`]), since the set's own launcher is an aarch64 binary.
    pub fn from_env_arm64() -> Result<Artifacts, String> {
        let dir = std::env::var_os("SOVEREIGN_ARM64_ARTIFACTS").map(PathBuf::from).ok_or(
            "SOVEREIGN_ARM64_ARTIFACTS is not set (point it at the output of scripts/build-images.sh --arch arm64)",
        )?;
        let mut a = Artifacts::in_dir(&dir, "Image")?;
        a.sovereign = host_launcher()?;
        Ok(a)
    }
}

/// ELF `e_machine` of this host's architecture.
fn host_elf_machine() -> object::elf::Machine {
    if cfg!(target_arch = "aarch64") {
        object::elf::EM_AARCH64
    } else {
        object::elf::EM_X86_64
    }
}

/// Cargo's target directory of this workspace (`$CARGO_TARGET_DIR` or `target/`), where
/// the scripts' musl builds land.
pub fn workspace_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A `sovereign` binary that runs on this host, for tests that boot a foreign guest:
/// `$SOVEREIGN_LAUNCHER`, else the x86_64 set's (`$SOVEREIGN_ARTIFACTS/sovereign`), else
/// the newest of the workspace's own builds (`cargo build -p sovereign` makes one).
pub fn host_launcher() -> Result<PathBuf, String> {
    let env_path = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let candidates: Vec<PathBuf> = if let Some(p) = env_path("SOVEREIGN_LAUNCHER") {
        vec![p]
    } else if let Some(dir) = env_path("SOVEREIGN_ARTIFACTS") {
        vec![dir.join("sovereign")]
    } else {
        let target = workspace_target_dir();
        let host_musl = format!(
            "{}-unknown-linux-musl",
            if cfg!(target_arch = "aarch64") {
                "aarch64"
            } else {
                "x86_64"
            }
        );
        let mut found: Vec<(std::time::SystemTime, PathBuf)> =
            ["debug", "release", &format!("{host_musl}/release")]
                .iter()
                .map(|d| target.join(d).join("sovereign"))
                .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
                .collect();
        found.sort();
        found.into_iter().rev().map(|(_, p)| p).collect()
    };
    for p in &candidates {
        if !p.exists() {
            continue;
        }
        if xtask::elf::inspect(p).is_ok_and(|f| f.machine == host_elf_machine()) {
            return Ok(p.clone());
        }
        return Err(format!(
            "{} is not a launcher for this host's architecture",
            p.display()
        ));
    }
    Err("no sovereign launcher for this host: run `cargo build -p sovereign`, or set SOVEREIGN_LAUNCHER".into())
}

/// Why the arm64 boot test cannot run here, if it cannot.
pub fn missing_prerequisite_arm64() -> Option<String> {
    if !on_path("qemu-system-aarch64") {
        return Some("qemu-system-aarch64 is not installed (run scripts/ci-deps.sh)".into());
    }
    None
}

/// The arm64 artifacts for VM test `name`, or `None` after printing why it is skipped
/// (`SOVEREIGN_REQUIRE_VM_TESTS=1` turns a skip into a failure, as in [`vm_test`]).
pub fn vm_test_arm64(name: &str) -> Option<Artifacts> {
    let result = match missing_prerequisite_arm64() {
        Some(why) => Err(why),
        None => Artifacts::from_env_arm64(),
    };
    require_or_skip(name, result)
}

/// `Some` when `result` holds what test `name` needs; otherwise prints why the test is
/// skipped, or fails it under `SOVEREIGN_REQUIRE_VM_TESTS=1`.
pub fn require_or_skip<T>(name: &str, result: Result<T, String>) -> Option<T> {
    match result {
        Ok(a) => Some(a),
        Err(why) if std::env::var("SOVEREIGN_REQUIRE_VM_TESTS").as_deref() == Ok("1") => {
            panic!("{name} must run here (SOVEREIGN_REQUIRE_VM_TESTS=1) but cannot: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {name}: {why}");
            None
        }
    }
}

/// Whether the heavy variant `what` of a VM test runs: drills that spend minutes
/// waiting on real timeouts run only with `SOVEREIGN_HEAVY_TESTS=1`
/// (`scripts/test.sh --heavy`), so the default run stays inside CI's time budget. A
/// skipped variant says so on stderr (shown with `--nocapture`); `scripts/test.sh`
/// says which are skipped.
pub fn heavy_variant(what: &str) -> bool {
    let on = std::env::var("SOVEREIGN_HEAVY_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("SKIPPED heavy variant: {what} (SOVEREIGN_HEAVY_TESTS=1 or scripts/test.sh --heavy runs it)");
    }
    on
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Why a VM test cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, TUN devices, mkfs of the root image)".into());
    }
    if !cfg!(target_arch = "x86_64") {
        return Some("the VM tests boot x86_64 guests with QEMU TCG on an x86_64 host".into());
    }
    for program in ["qemu-system-x86_64", "ip", "psql"] {
        if !on_path(program) {
            return Some(format!(
                "{program} is not installed (run scripts/ci-deps.sh)"
            ));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// The artifacts for VM test `name`, or `None` after printing why it is skipped. With
/// `SOVEREIGN_REQUIRE_VM_TESTS=1` a missing prerequisite fails the test instead: CI
/// must never pass by skipping.
pub fn vm_test(name: &str) -> Option<Artifacts> {
    let result = match missing_prerequisite() {
        Some(why) => Err(why),
        None => Artifacts::from_env(),
    };
    require_or_skip(name, result)
}

/// Debian's cloud kernel for test `name`, or `None` after printing why it is skipped
/// (a failure under `SOVEREIGN_REQUIRE_VM_TESTS=1`).
pub fn cloud_kernel(a: &Artifacts, name: &str) -> Option<PathBuf> {
    let found = a.cloud_kernel.clone().ok_or_else(|| {
        "SOVEREIGN_CLOUD_KERNEL is not set (scripts/fetch-cloud-kernel.sh)".to_string()
    });
    require_or_skip(name, found)
}
