//! Reading a spec: the TOML file as written (every field optional, unknown fields
//! refused) and its resolution into a [`Spec`] with absolute paths and every default.

use super::{
    qemu_binary, AppSpec, Backend, BackupSpec, DataDisk, GuestSpec, OffsiteSpec, PostgresSpec,
    Problem, Protection, RestartPolicy, ScheduleSpec, Spec, SpecError, TailscaleSpec, Timeouts,
    VmmSpec, DEFAULT_NAME,
};
use crate::paths::{resolve, HostEnv, ANDROID_CROSVM};
use kernel_config::Arch;
use protocol::Stage;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The TOML file as written: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: Option<String>,
    arch: Option<String>,
    cid: Option<u32>,
    memory_mib: Option<u32>,
    cpus: Option<u32>,
    hostname: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    root_image: Option<PathBuf>,
    console_log: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    wait_for: Option<Stage>,
    restart: Option<RestartPolicy>,
    #[serde(default)]
    data_disk: DataDiskFile,
    #[serde(default)]
    backup_disk: DataDiskFile,
    #[serde(default)]
    backup: BackupFile,
    #[serde(default)]
    guest: GuestFile,
    #[serde(default)]
    postgres: PostgresFile,
    #[serde(default)]
    apps: Vec<AppFile>,
    #[serde(default)]
    tailscale: TailscaleFile,
    #[serde(default)]
    vmm: VmmFile,
    #[serde(default)]
    timeouts: TimeoutsFile,
    replication: Option<super::replication::ReplicationFile>,
    #[serde(default)]
    alerts: super::alerts::AlertsFile,
    #[serde(default)]
    metrics: super::metrics::MetricsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataDiskFile {
    path: Option<PathBuf>,
    size_gib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupFile {
    enabled: Option<bool>,
    archive_timeout_secs: Option<u32>,
    retention_days: Option<u32>,
    #[serde(default)]
    schedule: ScheduleFile,
    passphrase_file: Option<PathBuf>,
    offsite: Option<OffsiteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsiteFile {
    host: String,
    port: Option<u16>,
    user: String,
    path: String,
    host_key: String,
    private_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    full_every_days: Option<u32>,
    diff_every_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestFile {
    log_level: Option<String>,
    device_wait_secs: Option<u32>,
    cmdline_extra: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresFile {
    port: Option<u16>,
    superuser_password_file: Option<PathBuf>,
    superuser_from_tailnet: Option<bool>,
    #[serde(default)]
    settings: std::collections::BTreeMap<String, SettingValue>,
}

/// A `[postgres.settings]` value as TOML writes it: `"256MB"`, `120`, `1.5` or `true`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SettingValue {
    Text(String),
    Whole(i64),
    Decimal(f64),
    Switch(bool),
}

impl SettingValue {
    /// The value as postgresql.conf reads it (a switch as `on`/`off`).
    fn into_conf(self) -> String {
        match self {
            SettingValue::Text(s) => s,
            SettingValue::Whole(n) => n.to_string(),
            SettingValue::Decimal(x) => x.to_string(),
            SettingValue::Switch(b) => if b { "on" } else { "off" }.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    name: String,
    password_file: Option<PathBuf>,
    connection_limit: Option<u32>,
}

/// The apps the built-in VM provisions: the two the project is for.
pub const BUILTIN_APPS: [&str; 2] = ["vaultwarden", "forgejo"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TailscaleFile {
    login_server: Option<String>,
    auth_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmmFile {
    backend: Option<Backend>,
    crosvm: Option<String>,
    qemu: Option<String>,
    qemu_accel: Option<String>,
    vhost_device_vsock: Option<String>,
    gvproxy: Option<String>,
    protection: Option<Protection>,
    swiotlb_mib: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsFile {
    init: Option<u32>,
    devices: Option<u32>,
    control: Option<u32>,
    network: Option<u32>,
    tailscale: Option<u32>,
    postgres: Option<u32>,
    ready: Option<u32>,
    shutdown: Option<u32>,
}

impl Spec {
    /// The built-in `sql` VM (`--sql`), with paths under the state directory.
    pub fn builtin_sql(env: &HostEnv) -> Result<Spec, SpecError> {
        let file = SpecFile {
            apps: BUILTIN_APPS
                .iter()
                .map(|name| AppFile {
                    name: name.to_string(),
                    password_file: None,
                    connection_limit: None,
                })
                .collect(),
            ..SpecFile::default()
        };
        resolve_file(file, &env.base_dir, env, "built-in sql")
    }

    /// Reads a spec file; relative paths resolve against its directory.
    pub fn load(path: &Path, env: &HostEnv) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Spec::parse(&text, &dir, env, &abs.display().to_string())
    }

    /// Parses spec text as if it were a file in `dir` (tests, and [`Spec::load`]).
    pub fn parse(
        text: &str,
        dir: &Path,
        env: &HostEnv,
        source_name: &str,
    ) -> Result<Spec, SpecError> {
        let file: SpecFile = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: PathBuf::from(source_name),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        resolve_file(file, dir, env, source_name)
    }
}

/// Resolves a parsed spec file whose relative paths are relative to `dir`.
fn resolve_file(
    f: SpecFile,
    dir: &Path,
    env: &HostEnv,
    source_name: &str,
) -> Result<Spec, SpecError> {
    let name = f.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
    let arch = match f.arch {
        None => Arch::host().unwrap_or(Arch::X86_64),
        Some(s) => s
            .parse()
            .map_err(|e: protocol::arch::UnknownArch| SpecError::Invalid {
                source_name: source_name.to_string(),
                problems: vec![Problem::new("arch", &s, e.to_string())],
            })?,
    };
    let base = env.base_dir.as_path();
    let secrets_dir = resolve(
        base,
        f.secrets_dir.unwrap_or_else(|| PathBuf::from("secrets")),
    );
    let in_dir = |p: PathBuf| resolve(dir, p);
    let backend = f.vmm.backend.unwrap_or(if env.android {
        Backend::Crosvm
    } else {
        Backend::Qemu
    });
    let apps = f
        .apps
        .into_iter()
        .map(|a| AppSpec {
            password_file: a
                .password_file
                .map(&in_dir)
                .unwrap_or_else(|| secrets_dir.join(format!("{name}-app-{}.password", a.name))),
            name: a.name,
            connection_limit: a
                .connection_limit
                .unwrap_or(protocol::config::DEFAULT_CONNECTION_LIMIT),
        })
        .collect();
    let t = Timeouts::default();
    Ok(Spec {
        arch,
        cid: f.cid.unwrap_or(protocol::ports::DEFAULT_GUEST_CID),
        memory_mib: f.memory_mib.unwrap_or(1024),
        cpus: f.cpus.unwrap_or(2),
        hostname: f.hostname.unwrap_or_else(|| "sql-vm".to_string()),
        kernel: in_dir(f.kernel.unwrap_or_else(|| PathBuf::from(arch.image_name()))),
        initrd: f.initrd.map(&in_dir),
        root_image: in_dir(f.root_image.unwrap_or_else(|| PathBuf::from("root.img"))),
        console_log: in_dir(
            f.console_log
                .unwrap_or_else(|| PathBuf::from(format!("{name}-console.log"))),
        ),
        run_dir: resolve(
            base,
            f.run_dir
                .unwrap_or_else(|| PathBuf::from("run").join(&name)),
        ),
        wait_for: f.wait_for.unwrap_or(Stage::Ready),
        restart: f.restart.unwrap_or(if env.android {
            RestartPolicy::OnFailure
        } else {
            RestartPolicy::No
        }),
        data_disk: DataDisk {
            path: in_dir(
                f.data_disk
                    .path
                    .unwrap_or_else(|| PathBuf::from("postgres.img")),
            ),
            size_gib: f.data_disk.size_gib.unwrap_or(4),
        },
        backup_disk: DataDisk {
            path: in_dir(
                f.backup_disk
                    .path
                    .unwrap_or_else(|| PathBuf::from("backup.img")),
            ),
            size_gib: f.backup_disk.size_gib.unwrap_or(8),
        },
        backup: BackupSpec {
            enabled: f.backup.enabled.unwrap_or(true),
            archive_timeout_secs: f.backup.archive_timeout_secs.unwrap_or(60),
            retention_days: f.backup.retention_days.unwrap_or(7),
            schedule: ScheduleSpec {
                full_every_days: f.backup.schedule.full_every_days.unwrap_or(7),
                diff_every_days: f.backup.schedule.diff_every_days.unwrap_or(1),
            },
            passphrase_file: f
                .backup
                .passphrase_file
                .map(&in_dir)
                .unwrap_or_else(|| secrets_dir.join(format!("{name}-backup.passphrase"))),
            offsite: f.backup.offsite.map(|o| OffsiteSpec {
                host: o.host,
                port: o.port.unwrap_or(22),
                user: o.user,
                path: o.path,
                host_key: o.host_key.trim().to_string(),
                private_key_file: o
                    .private_key_file
                    .map(&in_dir)
                    .unwrap_or_else(|| secrets_dir.join(format!("{name}-offsite.key"))),
            }),
        },
        guest: GuestSpec {
            log_level: f.guest.log_level.unwrap_or_else(|| "info".to_string()),
            device_wait_secs: f.guest.device_wait_secs.unwrap_or(10),
            cmdline_extra: f.guest.cmdline_extra.unwrap_or_default(),
        },
        alerts: f.alerts.resolve(in_dir, env.android),
        metrics: f.metrics.resolve(),
        replication: f
            .replication
            .map(|r| r.resolve(in_dir, &secrets_dir, &name)),
        postgres: PostgresSpec {
            port: f.postgres.port.unwrap_or(5432),
            superuser_password_file: f
                .postgres
                .superuser_password_file
                .map(&in_dir)
                .unwrap_or_else(|| secrets_dir.join(format!("{name}-postgres.password"))),
            superuser_from_tailnet: f.postgres.superuser_from_tailnet.unwrap_or(true),
            settings: f
                .postgres
                .settings
                .into_iter()
                .map(|(k, v)| (k, v.into_conf()))
                .collect(),
        },
        apps,
        tailscale: TailscaleSpec {
            login_server: f.tailscale.login_server,
            auth_key_file: f.tailscale.auth_key_file.map(&in_dir),
        },
        vmm: VmmSpec {
            backend,
            crosvm: f.vmm.crosvm.unwrap_or_else(|| ANDROID_CROSVM.to_string()),
            qemu: f.vmm.qemu.unwrap_or_else(|| qemu_binary(arch).to_string()),
            qemu_accel: f.vmm.qemu_accel.unwrap_or_else(|| "tcg".to_string()),
            vhost_device_vsock: f
                .vmm
                .vhost_device_vsock
                .unwrap_or_else(|| "vhost-device-vsock".to_string()),
            gvproxy: f.vmm.gvproxy.unwrap_or_else(|| "gvproxy".to_string()),
            protection: f.vmm.protection.unwrap_or_default(),
            swiotlb_mib: f.vmm.swiotlb_mib,
        },
        timeouts: Timeouts {
            init: f.timeouts.init.unwrap_or(t.init),
            devices: f.timeouts.devices.unwrap_or(t.devices),
            control: f.timeouts.control.unwrap_or(t.control),
            network: f.timeouts.network.unwrap_or(t.network),
            tailscale: f.timeouts.tailscale.unwrap_or(t.tailscale),
            postgres: f.timeouts.postgres.unwrap_or(t.postgres),
            ready: f.timeouts.ready.unwrap_or(t.ready),
            shutdown: f.timeouts.shutdown.unwrap_or(t.shutdown),
        },
        secrets_dir,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::env_in;

    #[test]
    fn file_paths_resolve_against_the_spec_dir_and_print_back() {
        let env = env_in(Path::new("/base"), false);
        let text = r#"
            name = "boot"
            arch = "x86_64"
            cid = 42
            kernel = "k/bzImage"
            initrd = "/abs/initrd.cpio.gz"
            wait_for = "control"
            [data_disk]
            size_gib = 1
            [backup_disk]
            path = "/disks/b.img"
            [backup]
            archive_timeout_secs = 30
            [backup.schedule]
            diff_every_days = 0
            [[apps]]
            name = "forgejo"
            [vmm]
            qemu_accel = "tcg"
            [timeouts]
            control = 20
        "#;
        let s = Spec::parse(text, Path::new("/specs"), &env, "t.toml").unwrap();
        assert_eq!(s.kernel, PathBuf::from("/specs/k/bzImage"));
        assert_eq!(s.initrd, Some(PathBuf::from("/abs/initrd.cpio.gz")));
        assert_eq!(s.root_image, PathBuf::from("/specs/root.img"));
        assert_eq!(s.console_log, PathBuf::from("/specs/boot-console.log"));
        assert_eq!(s.run_dir, PathBuf::from("/base/run/boot"));
        assert_eq!(
            s.apps[0].password_file,
            PathBuf::from("/base/secrets/boot-app-forgejo.password")
        );
        assert_eq!(s.wait_for, Stage::Control);
        assert_eq!(s.backup_disk.path, PathBuf::from("/disks/b.img"));
        assert_eq!(s.backup.archive_timeout_secs, 30);
        assert_eq!(s.backup.schedule.diff_every_days, 0);
        assert_eq!(s.backup.schedule.full_every_days, 7);
        assert_eq!(s.timeouts.control, 20);
        assert_eq!(s.timeouts.init, 60);
        let again = Spec::parse(&s.to_toml(), Path::new("/elsewhere"), &env, "again").unwrap();
        assert_eq!(again, s, "the printed spec reads back as itself");
    }

    #[test]
    fn the_offsite_copy_reads_with_its_defaults_and_an_address_is_refused() {
        let env = env_in(Path::new("/base"), false);
        let text = r#"
            [backup.offsite]
            host = "backup-box"
            user = "sovereign"
            path = "/srv/sovereign"
            host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey "
        "#;
        let s = Spec::parse(text, Path::new("/specs"), &env, "t.toml").unwrap();
        let o = s.backup.offsite.as_ref().unwrap();
        assert_eq!(o.port, 22);
        assert_eq!(o.host_key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey");
        assert_eq!(
            o.private_key_file,
            PathBuf::from("/base/secrets/sql-offsite.key")
        );
        assert!(crate::spec::validate::validate(&s, &env)
            .iter()
            .all(|p| !p.to_string().contains("offsite")));
        let by_address = text.replace("backup-box", "100.64.0.9");
        let s = Spec::parse(&by_address, Path::new("/specs"), &env, "t.toml").unwrap();
        let problems: Vec<String> = crate::spec::validate::validate(&s, &env)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.iter().any(|p| p.contains("backup.offsite.host")),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_types_name_the_field() {
        let env = env_in(Path::new("/base"), false);
        let e = Spec::parse("cidd = 3", Path::new("/"), &env, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cidd"), "{e}");
        let e = Spec::parse("cid = \"ten\"", Path::new("/"), &env, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cid"), "{e}");
        let e = Spec::parse("[vmm]\nbackend = \"xen\"", Path::new("/"), &env, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xen"), "{e}");
        let e = Spec::parse("arch = \"riscv64\"", Path::new("/"), &env, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("arch = \"riscv64\""), "{e}");
        let e = Spec::parse("wait_for = \"vsock\"", Path::new("/"), &env, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vsock"), "{e}");
    }

    #[test]
    fn the_superuser_stays_on_the_tailnet_unless_the_spec_says_otherwise() {
        let env = env_in(Path::new("/base"), false);
        let on = Spec::parse("", Path::new("/d"), &env, "t.toml").unwrap();
        assert!(on.postgres.superuser_from_tailnet);
        let off = Spec::parse(
            "[postgres]\nsuperuser_from_tailnet = false",
            Path::new("/d"),
            &env,
            "t.toml",
        )
        .unwrap();
        assert!(!off.postgres.superuser_from_tailnet);
        let e = Spec::parse(
            "[postgres]\nsuperuser_from_tailnet = \"no\"",
            Path::new("/d"),
            &env,
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("superuser_from_tailnet"), "{e}");
    }

    #[test]
    fn postgres_settings_keep_what_toml_wrote_as_postgresql_reads_it() {
        let env = env_in(Path::new("/base"), false);
        let s = Spec::parse(
            "[postgres.settings]\nshared_buffers = \"256MB\"\nmax_connections = 120\nrandom_page_cost = 1.5\nlog_lock_waits = true\n",
            Path::new("/d"),
            &env,
            "t.toml",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = s
            .postgres
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("log_lock_waits", "on"),
                ("max_connections", "120"),
                ("random_page_cost", "1.5"),
                ("shared_buffers", "256MB")
            ]
        );
    }
}
