//! Spec validation before anything starts: every field is checked and every failure is
//! reported (one line each, naming the field and value), not just the first.
//!
//! Validation has no side effects; [`crate::disk_image::prepare_disk`] creates the disk images later,
//! once validation and preflight passed.

use crate::kernel;
use crate::paths::{socket_path_fits, HostEnv, MAX_SOCKET_PATH};
use crate::rundir::RunDir;
use crate::spec::{Backend, DataDisk, Problem, Protection, Spec};
use kernel_config::Arch;
use nix::unistd::{access, AccessFlags};
use protocol::config::is_dns_label;
use protocol::pg_settings;
use std::collections::HashSet;
use std::path::Path;

/// Accepted guest memory, MiB.
pub const MEMORY_RANGE: std::ops::RangeInclusive<u32> = 128..=65536;
/// Accepted vCPU count.
pub const CPU_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
/// Accepted data disk size, GiB.
pub const DISK_RANGE: std::ops::RangeInclusive<u64> = 1..=4096;
/// Accepted stage timeout, seconds.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 1..=3600;

/// Checks every field of `spec` on this host; an empty result means it may start.
pub fn validate(spec: &Spec, env: &HostEnv) -> Vec<Problem> {
    let mut p = Vec::new();
    let host_arch = Arch::host();

    if !is_dns_label(&spec.name) {
        p.push(Problem::new(
            "name",
            &spec.name,
            "must be a DNS label (a-z, 0-9, '-'; it names files)",
        ));
    }
    if let Some(why) = protocol::ports::reserved_cid_reason(spec.cid) {
        p.push(Problem::new(
            "cid",
            spec.cid,
            format!("reserved: {why}; use 3 or above"),
        ));
    }
    if !MEMORY_RANGE.contains(&spec.memory_mib) {
        p.push(Problem::new(
            "memory_mib",
            spec.memory_mib,
            format!("must be in {MEMORY_RANGE:?}"),
        ));
    }
    if !CPU_RANGE.contains(&spec.cpus) {
        p.push(Problem::new(
            "cpus",
            spec.cpus,
            format!("must be in {CPU_RANGE:?}"),
        ));
    }
    if !is_dns_label(&spec.hostname) {
        p.push(Problem::new(
            "hostname",
            &spec.hostname,
            "must be a DNS label: 1-63 of a-z, 0-9 and '-'",
        ));
    }

    if let Some(r) = &spec.replication {
        p.extend(r.problems(&spec.hostname));
    }
    p.extend(spec.alerts.problems());
    p.extend(super::metrics::problems(spec.metrics, spec.postgres.port));
    check_kernel(spec, &mut p);
    if let Some(initrd) = &spec.initrd {
        check_readable_file("initrd", initrd, &mut p);
    }
    if check_readable_file("root_image", &spec.root_image, &mut p) && !writable(&spec.root_image) {
        p.push(Problem::new(
            "root_image",
            spec.root_image.display(),
            "is not writable (it is attached read-write)",
        ));
    }
    check_disks(spec, &mut p);

    for (field, path) in option_paths(spec) {
        if path.to_string_lossy().contains(',') {
            p.push(Problem::new(
                field,
                path.display(),
                "contains ',' which crosvm and QEMU option lists cannot carry",
            ));
        }
    }
    for sock in RunDir::new(&spec.run_dir).sockets() {
        if !socket_path_fits(&sock) {
            p.push(Problem::new(
                "run_dir",
                spec.run_dir.display(),
                format!(
                    "too long: socket {} is {} bytes, unix sockets allow {MAX_SOCKET_PATH}; use a shorter run_dir",
                    sock.display(),
                    sock.as_os_str().len()
                ),
            ));
            break;
        }
    }

    check_guest(spec, &mut p);
    check_postgres(spec, &mut p);
    if let Some(url) = &spec.tailscale.login_server {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.push(Problem::new(
                "tailscale.login_server",
                url,
                "must be an http:// or https:// URL",
            ));
        }
    }
    check_timeouts(spec, &mut p);
    check_vmm(spec, host_arch, env, &mut p);
    p
}

fn check_kernel(spec: &Spec, p: &mut Vec<Problem>) {
    if !check_readable_file("kernel", &spec.kernel, p) {
        return;
    }
    match kernel::image_arch(&spec.kernel) {
        Ok(arch) if arch == spec.arch => {}
        Ok(arch) => p.push(Problem::new(
            "kernel",
            spec.kernel.display(),
            format!(
                "is an {arch} kernel but the guest architecture is {} (field arch)",
                spec.arch
            ),
        )),
        Err(e) => p.push(Problem::new("kernel", spec.kernel.display(), e.to_string())),
    }
}

/// The disks' fields and the backup settings.
fn check_disks(spec: &Spec, p: &mut Vec<Problem>) {
    for (name, disk) in spec.extra_disks() {
        check_disk(&format!("{name}_disk"), disk, p);
    }
    if spec.backup.enabled {
        if spec.backup_disk.path == spec.data_disk.path {
            p.push(Problem::new(
                "backup_disk.path",
                spec.backup_disk.path.display(),
                "is the data disk; backups must survive the loss of the data disk",
            ));
        }
        // The key stays unread here: the key file is checked when it is read at start.
        let placeholders = (
            protocol::config::Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----"),
            protocol::config::Secret::new("placeholder-passphrase-unread"),
        );
        if let Some(Err(protocol::config::ConfigError::Invalid { field, value, why })) = spec
            .guest_backup(spec.backup.offsite.as_ref().map(|_| placeholders))
            .map(|b| b.validate())
        {
            p.push(Problem::new(field, value, why));
        }
    }
}

fn check_disk(prefix: &str, d: &DataDisk, p: &mut Vec<Problem>) {
    let size_field = format!("{prefix}.size_gib");
    let path_field = format!("{prefix}.path");
    if !DISK_RANGE.contains(&d.size_gib) {
        p.push(Problem::new(
            size_field,
            d.size_gib,
            format!("must be in {DISK_RANGE:?}"),
        ));
    }
    match std::fs::metadata(&d.path) {
        Ok(m) if !m.is_file() => p.push(Problem::new(
            path_field,
            d.path.display(),
            "exists but is not a regular file",
        )),
        Ok(_) if !writable(&d.path) => p.push(Problem::new(
            path_field,
            d.path.display(),
            "is not writable",
        )),
        Ok(_) => {}
        Err(_) => match d.path.parent() {
            Some(dir) if dir.is_dir() => {
                if !writable(dir) {
                    p.push(Problem::new(
                        path_field,
                        d.path.display(),
                        format!(
                            "does not exist and {} is not writable to create it",
                            dir.display()
                        ),
                    ));
                }
            }
            _ => p.push(Problem::new(
                path_field,
                d.path.display(),
                "does not exist and its directory does not exist either",
            )),
        },
    }
}

fn check_guest(spec: &Spec, p: &mut Vec<Problem>) {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    if !LEVELS.contains(&spec.guest.log_level.as_str()) {
        p.push(Problem::new(
            "guest.log_level",
            &spec.guest.log_level,
            format!("must be one of {LEVELS:?}"),
        ));
    }
    if !(1..=600).contains(&spec.guest.device_wait_secs) {
        p.push(Problem::new(
            "guest.device_wait_secs",
            spec.guest.device_wait_secs,
            "must be in 1..=600",
        ));
    }
    for arg in &spec.guest.cmdline_extra {
        if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.push(Problem::new(
                "guest.cmdline_extra",
                arg,
                "each entry is one kernel argument: non-empty, no spaces or control characters",
            ));
        }
    }
}

fn check_postgres(spec: &Spec, p: &mut Vec<Problem>) {
    if spec.postgres.port == 0 {
        p.push(Problem::new("postgres.port", 0, "must not be 0"));
    }
    let max_connections = pg_settings::max_connections(spec.memory_mib, &spec.postgres.settings);
    let most = pg_settings::max_app_connection_limit(max_connections);
    let mut seen = HashSet::new();
    for app in &spec.apps {
        if let Some(why) = protocol::config::app_name_problem(&app.name) {
            p.push(Problem::new("apps.name", &app.name, why));
        }
        if !seen.insert(app.name.as_str()) {
            p.push(Problem::new("apps.name", &app.name, "appears twice"));
        }
        if !(1..=most).contains(&app.connection_limit) {
            p.push(Problem::new(
                "apps.connection_limit",
                app.connection_limit,
                format!("must be 1 to {most}: the server allows {max_connections} connections (memory_mib and postgres.settings.max_connections decide) and keeps {} for the superuser and PID 1", pg_settings::RESERVED_CONNECTIONS),
            ));
        }
    }
    for (name, value) in &spec.postgres.settings {
        if let Err(e) = pg_settings::check(name, value, spec.memory_mib) {
            p.push(Problem::new(
                format!("postgres.settings.{name}"),
                value,
                setting_problem(&e),
            ));
        }
    }
}

/// What is wrong with a setting, without the field and value [`Problem`] already names.
fn setting_problem(e: &pg_settings::SettingError) -> String {
    match e {
        pg_settings::SettingError::Owned { why, .. } => format!("set by the project ({why})"),
        pg_settings::SettingError::Unknown { allowed, .. } => {
            format!("not a setting the spec may change (it may change: {allowed})")
        }
        pg_settings::SettingError::Invalid { why, .. } => why.clone(),
    }
}

fn check_timeouts(spec: &Spec, p: &mut Vec<Problem>) {
    let t = &spec.timeouts;
    for (name, v) in [
        ("timeouts.init", t.init),
        ("timeouts.devices", t.devices),
        ("timeouts.control", t.control),
        ("timeouts.network", t.network),
        ("timeouts.tailscale", t.tailscale),
        ("timeouts.postgres", t.postgres),
        ("timeouts.ready", t.ready),
        ("timeouts.shutdown", t.shutdown),
    ] {
        if !TIMEOUT_RANGE.contains(&v) {
            p.push(Problem::new(
                name,
                v,
                format!("seconds, must be in {TIMEOUT_RANGE:?}"),
            ));
        }
    }
}

fn check_vmm(spec: &Spec, host_arch: Option<Arch>, _env: &HostEnv, p: &mut Vec<Problem>) {
    let v = &spec.vmm;
    let native = host_arch == Some(spec.arch);
    match v.backend {
        Backend::Crosvm => {
            if !native {
                p.push(Problem::new(
                    "arch",
                    spec.arch,
                    format!(
                        "crosvm runs guests of the host's architecture only ({})",
                        host_arch.map_or("unknown".to_string(), |a| a.to_string())
                    ),
                ));
            }
            if v.protection != Protection::None && spec.arch != Arch::Arm64 {
                p.push(Problem::new(
                    "vmm.protection",
                    v.protection,
                    "protected VMs are a pKVM feature of arm64; on x86_64 use \"none\"",
                ));
            }
            if let Some(n) = v.swiotlb_mib {
                if spec.arch != Arch::Arm64 {
                    p.push(Problem::new(
                        "vmm.swiotlb_mib",
                        n,
                        "crosvm accepts --swiotlb only in aarch64 builds",
                    ));
                } else if v.protection == Protection::None {
                    p.push(Problem::new(
                        "vmm.swiotlb_mib",
                        n,
                        "only a protected VM bounces its I/O through swiotlb; set vmm.protection = \"without-firmware\" or drop it",
                    ));
                } else if !(1..=1024).contains(&n) {
                    p.push(Problem::new(
                        "vmm.swiotlb_mib",
                        n,
                        "must be in 1..=1024 MiB",
                    ));
                }
            }
        }
        Backend::Qemu => {
            if v.protection != Protection::None {
                p.push(Problem::new(
                    "vmm.protection",
                    v.protection,
                    "is a crosvm option; the backend is qemu",
                ));
            }
            if let Some(n) = v.swiotlb_mib {
                p.push(Problem::new(
                    "vmm.swiotlb_mib",
                    n,
                    "is a crosvm option; the backend is qemu",
                ));
            }
            match v.qemu_accel.as_str() {
                "tcg" => {}
                "kvm" if native => {}
                "kvm" => p.push(Problem::new(
                    "vmm.qemu_accel",
                    "kvm",
                    format!(
                        "KVM runs guests of the host's architecture only; arch is {}: use tcg",
                        spec.arch
                    ),
                )),
                other => p.push(Problem::new("vmm.qemu_accel", other, "must be tcg or kvm")),
            }
        }
    }
    for (field, tool) in [
        ("vmm.crosvm", &v.crosvm),
        ("vmm.qemu", &v.qemu),
        ("vmm.vhost_device_vsock", &v.vhost_device_vsock),
        ("vmm.gvproxy", &v.gvproxy),
    ] {
        if tool.is_empty() {
            p.push(Problem::new(field, tool, "must name a program"));
        }
    }
}

/// Paths that end up inside comma-separated VMM option lists.
fn option_paths(spec: &Spec) -> Vec<(&'static str, &Path)> {
    let mut v = vec![
        ("kernel", spec.kernel.as_path()),
        ("root_image", spec.root_image.as_path()),
        ("data_disk.path", spec.data_disk.path.as_path()),
        ("backup_disk.path", spec.backup_disk.path.as_path()),
        ("console_log", spec.console_log.as_path()),
        ("run_dir", spec.run_dir.as_path()),
    ];
    if let Some(i) = &spec.initrd {
        v.push(("initrd", i.as_path()));
    }
    v
}

/// Records a problem unless `path` is a readable regular file; returns true if it is.
fn check_readable_file(field: &str, path: &Path, p: &mut Vec<Problem>) -> bool {
    match std::fs::metadata(path) {
        Err(e) => {
            p.push(Problem::new(
                field,
                path.display(),
                format!("cannot be read: {e}"),
            ));
            false
        }
        Ok(m) if !m.is_file() => {
            p.push(Problem::new(field, path.display(), "is not a regular file"));
            false
        }
        Ok(_) => match std::fs::File::open(path) {
            Ok(_) => true,
            Err(e) => {
                p.push(Problem::new(
                    field,
                    path.display(),
                    format!("cannot be opened: {e}"),
                ));
                false
            }
        },
    }
}

fn writable(path: &Path) -> bool {
    access(path, AccessFlags::W_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::env_in;

    pub(crate) fn fake_bzimage() -> Vec<u8> {
        kernel_config::sample_image(Arch::X86_64)
    }

    pub(crate) fn fake_arm64_image() -> Vec<u8> {
        kernel_config::sample_image(Arch::Arm64)
    }

    fn good(dir: &Path) -> Spec {
        std::fs::write(dir.join("bzImage"), fake_bzimage()).unwrap();
        std::fs::write(dir.join("Image"), fake_arm64_image()).unwrap();
        std::fs::write(dir.join("root.img"), b"").unwrap();
        let env = env_in(dir, false);
        Spec::parse("arch = \"x86_64\"", dir, &env, "t").unwrap()
    }

    fn fields(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        let spec = good(dir.path());
        let env = env_in(dir.path(), false);
        assert_eq!(validate(&spec, &env), vec![]);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = good(dir.path());
        let env = env_in(dir.path(), false);
        spec.cid = 2;
        spec.memory_mib = 16;
        spec.cpus = 0;
        spec.hostname = "SQL VM".into();
        spec.data_disk.size_gib = 0;
        spec.postgres.port = 0;
        spec.guest.log_level = "loud".into();
        spec.guest.cmdline_extra = vec!["a b".into()];
        spec.tailscale.login_server = Some("ftp://x".into());
        spec.timeouts.control = 0;
        spec.vmm.qemu_accel = "hvf".into();
        spec.vmm.swiotlb_mib = Some(64);
        spec.apps = vec![
            crate::spec::AppSpec {
                name: "Bad-Name".into(),
                password_file: "/x".into(),
                connection_limit: 20,
            },
            crate::spec::AppSpec {
                name: "ok".into(),
                password_file: "/y".into(),
                connection_limit: 20,
            },
            crate::spec::AppSpec {
                name: "ok".into(),
                password_file: "/z".into(),
                connection_limit: 20,
            },
        ];
        let p = validate(&spec, &env);
        let f = fields(&p);
        for want in [
            "cid",
            "memory_mib",
            "cpus",
            "hostname",
            "data_disk.size_gib",
            "postgres.port",
            "guest.log_level",
            "guest.cmdline_extra",
            "tailscale.login_server",
            "timeouts.control",
            "vmm.qemu_accel",
            "vmm.swiotlb_mib",
            "apps.name",
        ] {
            assert!(f.contains(&want), "{want} missing from {f:?}");
        }
        let cid = p.iter().find(|p| p.field == "cid").unwrap().to_string();
        assert_eq!(
            cid,
            "cid = \"2\": reserved: 2 is the host's own CID; use 3 or above"
        );
        assert_eq!(p.iter().filter(|p| p.field == "apps.name").count(), 2);
    }

    #[test]
    fn names_postgres_or_the_launcher_give_elsewhere_are_refused_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = good(dir.path());
        let env = env_in(dir.path(), false);
        for (name, why) in [
            ("replicator", "replication role"),
            ("pg_x", "starting with pg_"),
            ("template9", "template databases"),
            ("postgres", "superuser"),
        ] {
            spec.apps = vec![crate::spec::AppSpec {
                name: name.into(),
                password_file: "/x".into(),
                connection_limit: 20,
            }];
            let p = validate(&spec, &env);
            let line = p
                .iter()
                .find(|p| p.field == "apps.name")
                .unwrap_or_else(|| panic!("{name} accepted"))
                .to_string();
            assert!(line.contains(name) && line.contains(why), "{line}");
        }
    }

    #[test]
    fn postgres_settings_are_checked_and_connection_limits_follow_max_connections() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = good(dir.path());
        let env = env_in(dir.path(), false);
        spec.memory_mib = 2048;
        spec.apps = vec![crate::spec::AppSpec {
            name: "forgejo".into(),
            password_file: "/x".into(),
            connection_limit: 90,
        }];
        assert_eq!(
            validate(&spec, &env),
            vec![],
            "2 GiB allows 100 connections"
        );
        spec.postgres.settings = [
            ("shared_buffers", "4GB"),
            ("fsync", "off"),
            ("max_connections", "60"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = validate(&spec, &env);
        let lines: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            fields(&p),
            [
                "apps.connection_limit",
                "postgres.settings.fsync",
                "postgres.settings.shared_buffers"
            ],
            "{lines:#?}"
        );
        assert!(lines[0].contains("must be 1 to 55"), "{}", lines[0]);
        assert!(
            lines[1].contains("set by the project (durability"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("at most half the VM's memory (1024MB"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn files_are_checked_for_presence_and_architecture() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = good(dir.path());
        let env = env_in(dir.path(), false);
        spec.kernel = dir.path().join("Image");
        let p = validate(&spec, &env);
        assert_eq!(fields(&p), ["kernel"]);
        assert!(
            p[0].why
                .contains("arm64 kernel but the guest architecture is x86_64"),
            "{}",
            p[0]
        );

        spec.kernel = dir.path().join("root.img");
        let p = validate(&spec, &env);
        assert!(p[0].why.contains("not a kernel boot image"), "{}", p[0]);

        spec.kernel = dir.path().join("missing");
        spec.initrd = Some(dir.path().join("missing.cpio.gz"));
        spec.root_image = dir.path().to_path_buf();
        spec.data_disk.path = dir.path().join("no/such/dir/postgres.img");
        let p = validate(&spec, &env);
        assert_eq!(
            fields(&p),
            ["kernel", "initrd", "root_image", "data_disk.path"]
        );
        assert!(p[0].why.contains("cannot be read"), "{}", p[0]);
        assert!(p[2].why.contains("not a regular file"), "{}", p[2]);
    }

    #[test]
    fn long_run_dirs_and_commas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = good(dir.path());
        let env = env_in(dir.path(), false);
        spec.run_dir = std::path::PathBuf::from(format!("/{}", "r".repeat(100)));
        spec.console_log = dir.path().join("a,b.log");
        let p = validate(&spec, &env);
        assert_eq!(fields(&p), ["console_log", "run_dir"]);
        assert!(p[1].why.contains("unix sockets allow 107"), "{}", p[1]);
    }

    #[test]
    fn backend_specific_options() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = good(dir.path());
        let env = env_in(dir.path(), false);
        spec.vmm.protection = Protection::WithoutFirmware;
        assert_eq!(fields(&validate(&spec, &env)), ["vmm.protection"]);
        spec.vmm.backend = Backend::Crosvm;
        spec.vmm.swiotlb_mib = Some(64);
        let p = validate(&spec, &env);
        if Arch::host() == Some(Arch::X86_64) {
            // An x86_64 guest cannot be protected, and has no --swiotlb.
            assert_eq!(fields(&p), ["vmm.protection", "vmm.swiotlb_mib"]);
            assert!(p[0].why.contains("pKVM feature of arm64"), "{}", p[0]);
            assert!(p[1].why.contains("aarch64"));
        }
        // An arm64 guest under TCG is fine on any host, but not under crosvm on x86.
        spec.arch = Arch::Arm64;
        spec.kernel = dir.path().join("Image");
        spec.vmm.swiotlb_mib = None;
        spec.vmm.protection = Protection::None;
        spec.vmm.backend = Backend::Qemu;
        assert_eq!(validate(&spec, &env), vec![]);
        if Arch::host() == Some(Arch::Arm64) {
            spec.vmm.backend = Backend::Crosvm;
            spec.vmm.swiotlb_mib = Some(16);
            assert_eq!(fields(&validate(&spec, &env)), ["vmm.swiotlb_mib"]);
            spec.vmm.protection = Protection::WithoutFirmware;
            assert_eq!(validate(&spec, &env), vec![]);
            spec.vmm.backend = Backend::Qemu;
            spec.vmm.swiotlb_mib = None;
            spec.vmm.protection = Protection::None;
        }
        if Arch::host() == Some(Arch::X86_64) {
            spec.vmm.backend = Backend::Crosvm;
            assert_eq!(fields(&validate(&spec, &env)), ["arch"]);
        }
    }
}
