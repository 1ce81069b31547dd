//! Preflight: can this host run the VM the spec describes? Each check is one line with
//! ✓ (holds), ! (warning: boot may still work) or ✗ (start refuses), and the first
//! failure says what to do.
//!
//! Every check reads the host through [`HostEnv`] (device paths, tool search path, state
//! directory), so tests run them against empty temporary directories. Checks are plain
//! functions in [`checks`]; Android-only ones live in [`android_checks`].

use crate::kernel;
use crate::paths::HostEnv;
use crate::rundir::{running_vms, Role, RunDir};
use crate::spec::{Backend, Spec};
use nix::unistd::{access, AccessFlags};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The requirement holds.
    Pass,
    /// Not a blocker, but worth knowing (e.g. the kernel lacks an option).
    Warn,
    /// `start` cannot proceed.
    Fail,
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name (`kvm`, `gvproxy`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure or warning.
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// All checks of one preflight run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when nothing failed (warnings allowed).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The first failed check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == Status::Fail)
    }
}

impl fmt::Display for Report {
    /// One line per check; the first failure (and every warning) followed by its hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut explained = false;
        for c in &self.checks {
            let mark = match c.status {
                Status::Pass => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            writeln!(f, "  {mark} {:<18} {}", c.name, c.detail)?;
            let explain = match c.status {
                Status::Fail => !std::mem::replace(&mut explained, true),
                Status::Warn => true,
                Status::Pass => false,
            };
            if let (true, Some(h)) = (explain, &c.hint) {
                writeln!(f, "      → {h}")?;
            }
        }
        Ok(())
    }
}

/// A preflight check.
pub type CheckFn = fn(&Spec, &HostEnv) -> Option<Check>;

/// The generic checks, in order; a check returning `None` does not apply to this spec.
pub fn checks() -> Vec<CheckFn> {
    vec![
        privileges,
        state_dirs,
        kvm,
        vsock_device,
        vmm_binary,
        gvproxy,
        cid_free,
        kernel_options,
        data_disk_space,
    ]
}

/// Checks that only mean something on Android: the SELinux mode (reported) and VMs
/// the launcher did not start that hold the CID (another app's crosvm).
pub fn android_checks() -> Vec<CheckFn> {
    vec![selinux, foreign_cid]
}

/// Runs every applicable check.
pub fn run(spec: &Spec, env: &HostEnv) -> Report {
    let mut list = checks();
    if env.android {
        list.extend(android_checks());
    }
    Report {
        checks: list.into_iter().filter_map(|c| c(spec, env)).collect(),
    }
}

/// A device node the VMM needs that cannot be opened for reading and writing.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct DeviceOpenError {
    /// The device node (`/dev/kvm`, `/dev/vhost-vsock`).
    pub path: PathBuf,
    /// Why the open failed.
    #[source]
    pub source: std::io::Error,
}

/// Opens `path` read-write and closes it again: can the VMM use this device?
fn open_rw(path: &Path) -> Result<(), DeviceOpenError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| DeviceOpenError {
            path: path.to_path_buf(),
            source,
        })
}

/// What to do when a device crosvm needs cannot be opened, by why.
fn crosvm_device_hint(e: &DeviceOpenError, missing: &str) -> String {
    let device = &e.path;
    match e.source.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist: {missing}", device.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "only root may open {}: run the launcher through su, e.g. `su -c '/data/sovereign/sovereign start --sql'`",
            device.display()
        ),
        _ => format!("{} cannot be opened; check `ls -lZ {}` as root", device.display(), device.display()),
    }
}

fn privileges(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "privileges";
    if env.euid == 0 {
        return Some(Check::pass(NAME, "running as root"));
    }
    let caps = caps::read(None, caps::CapSet::Effective)
        .map(|set| {
            let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
            v.sort();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        })
        .unwrap_or_else(|e| format!("unknown ({e})"));
    Some(match spec.vmm.backend {
        // QEMU under TCG needs no privilege: only the state files (checked next).
        Backend::Qemu => Check::pass(
            NAME,
            format!(
                "uid {} (QEMU needs no capabilities; effective: {caps})",
                env.euid
            ),
        ),
        Backend::Crosvm => {
            let devices_ok =
                open_rw(&env.kvm_device).is_ok() && open_rw(&env.vhost_vsock_device).is_ok();
            if devices_ok {
                Check::pass(
                    NAME,
                    format!(
                        "uid {}, {} and {} usable",
                        env.euid,
                        env.kvm_device.display(),
                        env.vhost_vsock_device.display()
                    ),
                )
            } else {
                Check::fail(
                    NAME,
                    format!(
                        "uid {} without access to {} (effective capabilities: {caps})",
                        env.euid,
                        env.kvm_device.display()
                    ),
                    "crosvm needs root on the phone: run it as `su -c 'sovereign start --sql'`",
                )
            }
        }
    })
}

/// The nearest existing ancestor of `p` (itself if it exists).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

fn state_dirs(spec: &Spec, _env: &HostEnv) -> Option<Check> {
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

fn kvm(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "kvm";
    let needed = spec.vmm.backend == Backend::Crosvm || spec.vmm.qemu_accel == "kvm";
    if !needed {
        return Some(Check::pass(NAME, "not needed (QEMU with TCG)"));
    }
    Some(match open_rw(&env.kvm_device) {
        Ok(()) => Check::pass(NAME, format!("{} usable", env.kvm_device.display())),
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            match spec.vmm.backend {
                Backend::Crosvm => crosvm_device_hint(
                    &e,
                    "this phone's kernel offers no KVM; it needs pKVM (Android Virtualization Framework, e.g. Pixel 7 or later on Android 14+)",
                ),
                Backend::Qemu => "set vmm.qemu_accel = \"tcg\" in the spec, or load kvm and get access to /dev/kvm".to_string(),
            },
        ),
    })
}

fn vsock_device(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "vsock";
    Some(match spec.vmm.backend {
        Backend::Crosvm => match open_rw(&env.vhost_vsock_device) {
            Ok(()) => Check::pass(NAME, format!("{} usable", env.vhost_vsock_device.display())),
            Err(e) => Check::fail(
                NAME,
                e.to_string(),
                crosvm_device_hint(
                    &e,
                    "crosvm's --vsock needs the host kernel's vhost_vsock (present wherever AVF is; on other kernels load vhost_vsock.ko)",
                ),
            ),
        },
        Backend::Qemu => match env.find_tool(&spec.vmm.vhost_device_vsock) {
            Some(p) => Check::pass(NAME, format!("vhost-device-vsock at {}", p.display())),
            None => Check::fail(
                NAME,
                format!("{} not found (searched PATH, beside sovereign, the tool cache)", spec.vmm.vhost_device_vsock),
                "install it: cargo install --locked vhost-device-vsock --version 0.3.0 (scripts/ci-deps.sh does), or set vmm.vhost_device_vsock",
            ),
        },
    })
}

fn vmm_binary(spec: &Spec, env: &HostEnv) -> Option<Check> {
    let (name, configured, hint): (&'static str, &str, &str) = match spec.vmm.backend {
        Backend::Crosvm => (
            "crosvm",
            &spec.vmm.crosvm,
            "Android ships crosvm in the virtualization APEX (/apex/com.android.virt/bin/crosvm); without that APEX the phone has no AVF. If crosvm lives elsewhere, pass --crosvm PATH or set vmm.crosvm",
        ),
        Backend::Qemu => (
            "qemu",
            &spec.vmm.qemu,
            "install QEMU 10 (qemu-system-x86 / qemu-system-arm from bookworm-backports), or set vmm.qemu",
        ),
    };
    Some(match env.find_tool(configured) {
        Some(p) => Check::pass(name, p.display().to_string()),
        None => Check::fail(name, format!("{configured} not found"), hint),
    })
}

fn gvproxy(spec: &Spec, env: &HostEnv) -> Option<Check> {
    Some(match env.find_tool(&spec.vmm.gvproxy) {
        Some(p) => Check::pass("gvproxy", p.display().to_string()),
        None => Check::fail(
            "gvproxy",
            format!(
                "{} not found (searched PATH, beside sovereign, the tool cache)",
                spec.vmm.gvproxy
            ),
            "build it with scripts/build-go-tools.sh (gvisor-tap-vsock v0.8.9), or set vmm.gvproxy",
        ),
    })
}

fn cid_free(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "cid";
    let own = RunDir::new(&spec.run_dir);
    if let Some(pid) = own
        .live_pid(Role::Supervisor)
        .or_else(|| own.live_pid(Role::Vmm))
    {
        return Some(Check::fail(
            NAME,
            format!(
                "VM {} is already running (pid {pid}, {})",
                spec.name,
                spec.run_dir.display()
            ),
            format!(
                "see `sovereign status`, or stop it first with `sovereign stop` for {}",
                spec.name
            ),
        ));
    }
    for vm in running_vms(&env.base_dir.join("run")) {
        if vm.run_dir != spec.run_dir && vm.cid == Some(spec.cid) {
            return Some(Check::fail(
                NAME,
                format!(
                    "CID {} is held by running VM {} (pid {})",
                    spec.cid, vm.name, vm.pid
                ),
                "give this VM another cid in its spec, or stop the other VM",
            ));
        }
    }
    Some(Check::pass(NAME, format!("CID {} free", spec.cid)))
}

fn kernel_options(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    const NAME: &str = "kernel options";
    if !spec.kernel.is_file() {
        return None; // validation already said so
    }
    Some(match kernel::missing_options(&spec.kernel, spec.arch) {
        Ok(missing) if missing.is_empty() => Check::pass(
            NAME,
            format!("every option of the {} fragments present", spec.arch),
        ),
        Ok(missing) => Check::warn(
            NAME,
            format!(
                "{} required option(s) missing: {}",
                missing.len(),
                missing
                    .iter()
                    .map(|m| m.option.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "the boot will likely fail at `devices`; build the kernel with scripts/build-kernel.sh",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot check: {e}"),
            "the guest reports missing options itself at `devices`",
        ),
    })
}

/// Reports the SELinux mode; never fails (crosvm started through su runs in su's
/// domain, and a denial names itself in the kernel log).
fn selinux(_spec: &Spec, env: &HostEnv) -> Option<Check> {
    let mode = match std::fs::read_to_string(env.selinux_fs.join("enforce")) {
        Ok(s) if s.trim() == "1" => {
            "enforcing (if crosvm or gvproxy is denied: `dmesg | grep avc:`)"
        }
        Ok(_) => "permissive",
        Err(_) => "disabled or not visible",
    };
    Some(Check::pass("selinux", mode))
}

/// The vsock CID a crosvm command line claims: `--cid N`, `--cid=N`, `--vsock N`,
/// `--vsock cid=N,...` (and the `=` forms). Other programs (QEMU with
/// vhost-device-vsock) never run on the phone; on Linux hosts the run-dir check covers
/// this launcher's own VMs.
pub fn cid_in_args(args: &[String]) -> Option<u32> {
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a))?;
    if !program.contains("crosvm") {
        return None;
    }
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if flag != "--cid" && flag != "--vsock" {
            continue;
        }
        let Some(value) = inline.or_else(|| it.peek().map(|v| v.to_string())) else {
            continue;
        };
        let value = value
            .split(',')
            .find_map(|kv| match kv.split_once('=') {
                Some(("cid", v)) => Some(v.to_string()),
                None => Some(kv.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        if let Ok(c) = value.parse() {
            return Some(c);
        }
    }
    None
}

/// Processes under `proc_root` (normally `/proc`) whose command line claims `cid`,
/// except this process and those whose command line names `own` (this VM's run dir):
/// `(pid, the command line)`.
pub fn processes_claiming_cid(proc_root: &Path, cid: u32, own: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    let mut v: Vec<(u32, String)> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let line = args.join(" ");
            (cid_in_args(&args) == Some(cid) && !line.contains(own)).then_some((pid, line))
        })
        .collect();
    v.sort();
    v
}

/// A VM this launcher did not start (another app's AVF VM, a hand-started crosvm) that
/// holds the spec's CID: crosvm would fail to bind it.
fn foreign_cid(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    foreign_cid_in(spec, Path::new("/proc"))
}

fn foreign_cid_in(spec: &Spec, proc_root: &Path) -> Option<Check> {
    const NAME: &str = "cid (other VMs)";
    // With the trailing slash, run/sql does not also match run/sql2.
    let own = format!("{}/", spec.run_dir.display());
    let found = processes_claiming_cid(proc_root, spec.cid, &own);
    Some(match found.first() {
        None => Check::pass(
            NAME,
            format!("no other VMM process claims CID {}", spec.cid),
        ),
        Some((pid, line)) => {
            let mut shown: String = line.chars().take(120).collect();
            if shown.len() < line.len() {
                shown.push('…');
            }
            Check::fail(
                NAME,
                format!("CID {} is claimed by pid {pid}: {shown}", spec.cid),
                format!(
                    "stop that VM, or give this one a free CID (cid = {} in a spec file)",
                    spec.cid.saturating_add(1)
                ),
            )
        }
    })
}

/// Room for the data disk: a disk not created yet needs its full size free (it is
/// sparse, but PostgreSQL will fill it); an existing one may still grow.
fn data_disk_space(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    const NAME: &str = "data disk space";
    let disk = &spec.data_disk.path;
    let dir = disk.parent().and_then(existing_ancestor)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let st = match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => st,
        Err(e) => {
            return Some(Check::warn(
                NAME,
                format!("cannot read free space of {}: {e}", dir.display()),
                format!("check it yourself with `df -h {}`", dir.display()),
            ))
        }
    };
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let size = spec.data_disk.size_gib << 30;
    Some(match std::fs::metadata(disk) {
        Err(_) if free < size => Check::fail(
            NAME,
            format!(
                "{:.1} GiB free on {}, the new data disk {} needs {} GiB",
                gib(free),
                dir.display(),
                disk.display(),
                spec.data_disk.size_gib
            ),
            format!(
                "free space on {}, or set a smaller data_disk.size_gib in a spec file",
                dir.display()
            ),
        ),
        Err(_) => Check::pass(
            NAME,
            format!(
                "{:.1} GiB free on {} for the new {} GiB data disk",
                gib(free),
                dir.display(),
                spec.data_disk.size_gib
            ),
        ),
        Ok(m) => {
            let allocated = std::os::unix::fs::MetadataExt::blocks(&m) * 512;
            let grow = m.len().saturating_sub(allocated);
            if free >= grow {
                Check::pass(
                    NAME,
                    format!(
                        "{:.1} GiB free on {}, data disk may grow {:.1} GiB",
                        gib(free),
                        dir.display(),
                        gib(grow)
                    ),
                )
            } else {
                Check::warn(
                    NAME,
                    format!(
                        "{:.1} GiB free on {}, the sparse data disk may grow {:.1} GiB more",
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
    use crate::spec::tests::env_in;
    use std::os::unix::fs::PermissionsExt;

    fn exe(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn setup(backend: Backend) -> (tempfile::TempDir, Spec, HostEnv) {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_in(dir.path(), backend == Backend::Crosvm);
        env.search_dirs = vec![dir.path().join("bin")];
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let mut spec = Spec::builtin_sql(&env).unwrap();
        spec.vmm.backend = backend;
        spec.vmm.crosvm = "crosvm".into();
        (dir, spec, env)
    }

    fn status_of(r: &Report, name: &str) -> Option<Status> {
        r.checks.iter().find(|c| c.name == name).map(|c| c.status)
    }

    #[test]
    fn qemu_with_nothing_installed_names_each_missing_piece() {
        let (_d, spec, env) = setup(Backend::Qemu);
        let r = run(&spec, &env);
        assert!(!r.ok());
        assert_eq!(
            status_of(&r, "kvm"),
            Some(Status::Pass),
            "TCG needs no /dev/kvm"
        );
        assert_eq!(status_of(&r, "vsock"), Some(Status::Fail));
        assert_eq!(status_of(&r, "qemu"), Some(Status::Fail));
        assert_eq!(status_of(&r, "gvproxy"), Some(Status::Fail));
        assert_eq!(status_of(&r, "cid"), Some(Status::Pass));
        let text = r.to_string();
        assert!(text.contains("✗ vsock"), "{text}");
        assert_eq!(
            text.matches("→").count(),
            1,
            "only the first failure explains: {text}"
        );
        assert!(
            text.contains("cargo install --locked vhost-device-vsock"),
            "{text}"
        );
    }

    #[test]
    fn qemu_with_tools_present_passes() {
        let (d, spec, env) = setup(Backend::Qemu);
        for t in ["vhost-device-vsock", "gvproxy", &spec.vmm.qemu] {
            exe(&d.path().join("bin"), t);
        }
        let r = run(&spec, &env);
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn crosvm_needs_its_devices() {
        let (d, spec, env) = setup(Backend::Crosvm);
        exe(&d.path().join("bin"), "crosvm");
        exe(&d.path().join("bin"), "gvproxy");
        let r = run(&spec, &env);
        assert_eq!(status_of(&r, "kvm"), Some(Status::Fail));
        assert_eq!(status_of(&r, "vsock"), Some(Status::Fail));
        assert!(r.first_failure().unwrap().detail.contains("dev-kvm"), "{r}");
        assert_eq!(
            status_of(&r, "selinux"),
            Some(Status::Pass),
            "android checks run"
        );
        std::fs::write(&env.kvm_device, b"").unwrap();
        std::fs::write(&env.vhost_vsock_device, b"").unwrap();
        let r = run(&spec, &env);
        assert!(r.ok(), "{r}");
    }

    fn android_crosvm() -> (tempfile::TempDir, Spec, HostEnv) {
        let (d, spec, env) = setup(Backend::Crosvm);
        assert!(env.android);
        exe(&d.path().join("bin"), "crosvm");
        exe(&d.path().join("bin"), "gvproxy");
        (d, spec, env)
    }

    fn check<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {r}"))
    }

    #[test]
    fn android_devices_missing_or_locked_say_pkvm_or_root() {
        let (_d, spec, env) = android_crosvm();
        let r = run(&spec, &env);
        let kvm = check(&r, "kvm");
        assert_eq!(kvm.status, Status::Fail);
        assert!(kvm.hint.as_deref().unwrap().contains("pKVM"), "{kvm:?}");
        let vsock = check(&r, "vsock");
        assert!(
            vsock.hint.as_deref().unwrap().contains("vhost_vsock"),
            "{vsock:?}"
        );
        // Present but not openable: the hint is about root, not about pKVM.
        std::fs::create_dir(&env.kvm_device).unwrap();
        let r = run(&spec, &env);
        let kvm = check(&r, "kvm");
        assert_eq!(kvm.status, Status::Fail);
        assert!(!kvm.hint.as_deref().unwrap().contains("pKVM"), "{kvm:?}");
    }

    #[test]
    fn an_unopenable_device_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-kvm");
        let e = open_rw(&path).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
        assert!(crosvm_device_hint(&e, "no KVM").ends_with("does not exist: no KVM"));
    }

    #[test]
    fn crosvm_elsewhere_is_named_with_the_flag_to_use() {
        let (_d, mut spec, env) = setup(Backend::Crosvm);
        spec.vmm.crosvm = "/apex/com.android.virt/bin/crosvm-missing".into();
        let r = run(&spec, &env);
        let c = check(&r, "crosvm");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("crosvm-missing not found"), "{c:?}");
        assert!(
            c.hint.as_deref().unwrap().contains("--crosvm PATH"),
            "{c:?}"
        );
    }

    #[test]
    fn selinux_mode_is_reported_never_fatal() {
        let (_d, spec, env) = android_crosvm();
        assert_eq!(
            check(&run(&spec, &env), "selinux").detail,
            "disabled or not visible"
        );
        std::fs::create_dir_all(&env.selinux_fs).unwrap();
        for (value, mode) in [("1", "enforcing"), ("0", "permissive")] {
            std::fs::write(env.selinux_fs.join("enforce"), value).unwrap();
            let c = selinux(&spec, &env).unwrap();
            assert_eq!(c.status, Status::Pass);
            assert!(c.detail.starts_with(mode), "{c:?}");
        }
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn cids_are_read_from_every_vmm_spelling() {
        let cases = [
            ("/apex/com.android.virt/bin/crosvm run --cid 10 k", Some(10)),
            ("crosvm run --cid=11 k", Some(11)),
            (
                "crosvm run --vsock cid=12,device=/dev/vhost-vsock k",
                Some(12),
            ),
            ("crosvm run --vsock=cid=13 k", Some(13)),
            ("crosvm run --vsock 14 k", Some(14)),
            ("crosvm run --mem 1024 k", None),
            (
                "vhost-device-vsock --vm guest-cid=10,socket=/s,uds-path=/u",
                None,
            ),
            ("sleep --cid 10", None),
        ];
        for (line, want) in cases {
            assert_eq!(cid_in_args(&words(line)), want, "{line}");
        }
    }

    #[test]
    fn another_vmm_holding_the_cid_is_refused_but_our_own_is_not() {
        let (d, spec, _env) = android_crosvm();
        let proc_root = d.path().join("proc");
        let write = |pid: u32, line: &str| {
            let dir = proc_root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cmdline"), line.replace(' ', "\0") + "\0").unwrap();
        };
        write(
            4000,
            &format!(
                "/apex/com.android.virt/bin/crosvm run --vsock cid=10 -s {}/crosvm.sock k",
                spec.run_dir.display()
            ),
        );
        write(4001, "crosvm run --cid 11 -s /other/run/vm2/crosvm.sock k");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        let c = foreign_cid_in(&spec, &proc_root).unwrap();
        assert_eq!(
            c.status,
            Status::Pass,
            "our own crosvm is not foreign: {c:?}"
        );
        write(
            4002,
            "/apex/com.android.virt/bin/crosvm run --cid 10 --protected-vm x",
        );
        let c = foreign_cid_in(&spec, &proc_root).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.detail.starts_with(
                "CID 10 is claimed by pid 4002: /apex/com.android.virt/bin/crosvm run --cid 10"
            ),
            "{c:?}"
        );
        assert!(c.hint.as_deref().unwrap().contains("cid = 11"), "{c:?}");
        // The check on the real /proc runs (nothing here holds CID 10 under crosvm).
        assert_eq!(foreign_cid(&spec, &_env).unwrap().name, "cid (other VMs)");
    }

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

    #[test]
    fn a_running_vm_holding_the_cid_is_refused() {
        let (d, mut spec, env) = setup(Backend::Qemu);
        let other = d.path().join("run/other");
        std::fs::create_dir_all(&other).unwrap();
        let run_other = RunDir::new(&other);
        std::fs::write(run_other.spec_json(), r#"{"cid": 10}"#).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(&other)
            .spawn()
            .unwrap();
        std::fs::write(run_other.pid_file(Role::Supervisor), child.id().to_string()).unwrap();
        crate::rundir::tests::wait_for_exec(child.id());
        let c = cid_free(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("held by running VM other"), "{c:?}");
        spec.cid = 11;
        assert_eq!(cid_free(&spec, &env).unwrap().status, Status::Pass);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
