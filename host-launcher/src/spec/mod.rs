//! The VM spec: a TOML file describing one VM (or the built-in `sql` VM), read into a
//! [`Spec`] whose paths are all absolute and whose every default is filled in.
//!
//! Relative paths in a spec file resolve against the file's directory; for the built-in
//! spec they resolve against the state directory. `run_dir` and `secrets_dir` always
//! default to `<state>/run/<name>` and `<state>/secrets`, so every VM of this host is
//! found in one place (the CID check scans `<state>/run/*`).
//!
//! This module holds the resolved types; `file` reads a spec file and resolves it.

pub mod alerts;
mod edit;
mod file;
pub mod metrics;
mod problem;
mod replication;
pub mod validate;

pub use alerts::AlertsSpec;
pub use edit::{with_app_added, with_disk_size};
pub use file::BUILTIN_APPS;
pub use problem::{Problem, SpecError};
pub use replication::ReplicationSpec;

use kernel_config::Arch;
use protocol::Stage;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The backup disk as the guest sees it: the third virtio-blk disk, after the root
/// image and the data disk.
pub const BACKUP_DEVICE: &str = "/dev/vdc";

/// Name of the built-in VM selected by `--sql`.
pub const DEFAULT_NAME: &str = "sql";

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// crosvm with the host's `/dev/vhost-vsock` (Android, pKVM).
    Crosvm,
    /// qemu-system-* with vhost-user-vsock through vhost-device-vsock (CI, dev boxes).
    Qemu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Crosvm => "crosvm",
            Backend::Qemu => "qemu",
        })
    }
}

/// What the supervisor does when the VMM exits without being asked to: a database that
/// stays down after crosvm dies is not a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Stop everything and report (the default off Android, where a person is watching).
    #[default]
    No,
    /// Boot the VM again, with a growing pause and at most a few times an hour (the
    /// default on Android); never after `stop`.
    OnFailure,
}

/// Whether crosvm runs the guest as a protected VM (pKVM keeps its memory from the
/// Android host). One field, so a spec cannot ask for half of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// An ordinary VM: runs everywhere pKVM runs.
    #[default]
    None,
    /// `--protected-vm-without-firmware`: protected, without pvmfw (arm64 crosvm only;
    /// experimental in crosvm, and not every phone allows it).
    WithoutFirmware,
}

impl Protection {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::None => "none",
            Protection::WithoutFirmware => "without-firmware",
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The data disk: PostgreSQL's `/data`, formatted ext4 by the guest when blank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDisk {
    /// Image file (created sparse at `size_gib` when absent).
    pub path: PathBuf,
    /// Size in GiB of a newly created image.
    pub size_gib: u64,
}

/// Backups: pgBackRest with its repository (repo1) on the backup disk, continuous WAL
/// archiving, time-based retention and a schedule PID 1 runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSpec {
    /// Whether the VM gets a backup disk and PID 1 runs pgBackRest (default true).
    pub enabled: bool,
    /// PostgreSQL's `archive_timeout`: at most this much committed work waits for its
    /// WAL segment to reach the repository.
    pub archive_timeout_secs: u32,
    /// Sets older than this are expired.
    pub retention_days: u32,
    /// When PID 1 takes backups by itself.
    pub schedule: ScheduleSpec,
    /// The passphrase off-device copies are encrypted with (repo2, exports), 0600:
    /// generated on the first start with backups (default
    /// `<secrets>/<name>-backup.passphrase`). Keep a copy apart from the phone: without
    /// it nothing that left the phone can be restored (`sovereign backup key --show`).
    pub passphrase_file: PathBuf,
    /// repo2 off the device, when set: an SFTP server reached over the tailnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteSpec>,
}

/// repo2: an SFTP server reached over the tailnet by name (`[backup.offsite]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsiteSpec {
    /// The server's tailnet name.
    pub host: String,
    /// Its SSH port (default 22).
    pub port: u16,
    /// The account on the server.
    pub user: String,
    /// The repository's absolute path on the server.
    pub path: String,
    /// The server's public host key (`ssh-ed25519 AAAA...`, its ssh_host_ed25519_key.pub).
    pub host_key: String,
    /// The client's private key, 0600 (default `<secrets>/<name>-offsite.key`; make it
    /// with `ssh-keygen -t ed25519 -N '' -f FILE` and put FILE.pub in the server's
    /// authorized_keys).
    pub private_key_file: PathBuf,
}

/// When PID 1 takes backups (the first full one right after the first `ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// A full backup when the newest full set is this many days old (default 7).
    pub full_every_days: u32,
    /// A differential backup when the newest set is this many days old (default 1;
    /// 0 for none).
    pub diff_every_days: u32,
}

/// What the guest's kernel command line carries besides the fixed boot arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSpec {
    /// `sovereign.log=<level>`: the init's log level.
    pub log_level: String,
    /// `sovereign.device_wait=<secs>`: how long the init waits for virtio drivers.
    pub device_wait_secs: u32,
    /// Extra kernel command line arguments, appended verbatim (never secrets).
    pub cmdline_extra: Vec<String>,
}

/// PostgreSQL settings handed to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSpec {
    /// TCP port on the tailnet addresses.
    pub port: u16,
    /// File holding the superuser password (generated, mode 0600, when absent).
    pub superuser_password_file: PathBuf,
    /// Whether `postgres` may log in over the tailnet (default true: the witness
    /// `psql -U postgres` needs it). Turn it off once the apps use their own roles: a
    /// superuser can run programs in the guest.
    #[serde(default = "default_true")]
    pub superuser_from_tailnet: bool,
    /// `[postgres.settings]`: tunables by name, as postgresql.conf reads them; the
    /// memory settings not named here follow `memory_mib`.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

/// An application role and database provisioned in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Role and database name.
    pub name: String,
    /// File holding its password (generated, mode 0600, when absent).
    pub password_file: PathBuf,
    /// Most sessions its role may hold at once.
    pub connection_limit: u32,
}

/// How the guest joins the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailscaleSpec {
    /// Control server URL (a headscale); absent for Tailscale's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_server: Option<String>,
    /// File holding an auth key; `$SOVEREIGN_TS_AUTHKEY` takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key_file: Option<PathBuf>,
}

/// The VMM and its helpers. Program values without `/` are looked up on `$PATH`, next
/// to the `sovereign` binary, then in the tool cache's `bin/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmSpec {
    /// crosvm or QEMU.
    pub backend: Backend,
    /// The crosvm binary.
    pub crosvm: String,
    /// The qemu-system binary for the guest architecture.
    pub qemu: String,
    /// QEMU accelerator: `tcg` (works everywhere) or `kvm`.
    pub qemu_accel: String,
    /// vhost-device-vsock (QEMU only).
    pub vhost_device_vsock: String,
    /// gvproxy.
    pub gvproxy: String,
    /// Protected VM or not (crosvm only).
    #[serde(default)]
    pub protection: Protection,
    /// crosvm `--swiotlb <MiB>` for a protected VM (default: sized from the device
    /// count, as Android's virtualization service does; aarch64 crosvm builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swiotlb_mib: Option<u32>,
}

/// Per-stage deadlines in seconds, each counted from the previous stage's acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Launch of the helpers and VMM → `SOVEREIGN init` on the console.
    pub init: u32,
    /// init → device report.
    pub devices: u32,
    /// devices → Hello on the control channel.
    pub control: u32,
    /// control → network ready.
    pub network: u32,
    /// network → tailscale ready.
    pub tailscale: u32,
    /// tailscale → postgres ready.
    pub postgres: u32,
    /// postgres → ready.
    pub ready: u32,
    /// How long the guest may take to shut down before the VMM is killed.
    pub shutdown: u32,
}

impl Timeouts {
    /// The deadline of `stage`.
    pub fn for_stage(&self, stage: Stage) -> Duration {
        Duration::from_secs(u64::from(match stage {
            Stage::Init => self.init,
            Stage::Devices => self.devices,
            Stage::Control => self.control,
            Stage::Network => self.network,
            Stage::Tailscale => self.tailscale,
            Stage::Postgres => self.postgres,
            Stage::Ready => self.ready,
        }))
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            init: 60,
            devices: 30,
            control: 60,
            network: 60,
            tailscale: 180,
            postgres: 180,
            ready: 30,
            shutdown: 30,
        }
    }
}

/// A fully resolved VM spec: absolute paths, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Short name used in file names (`sql`).
    pub name: String,
    /// Guest architecture; the kernel must be of it.
    pub arch: Arch,
    /// The guest's vsock CID.
    pub cid: u32,
    /// Guest memory.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// The guest's host name and tailnet name.
    pub hostname: String,
    /// Kernel boot image (bzImage or arm64 Image).
    pub kernel: PathBuf,
    /// Optional initramfs (boot tests); without it the root image is `/dev/vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The root filesystem image (ext4), `/dev/vda`.
    pub root_image: PathBuf,
    /// Serial console output.
    pub console_log: PathBuf,
    /// Sockets and pid files of the running VM.
    pub run_dir: PathBuf,
    /// Generated passwords.
    pub secrets_dir: PathBuf,
    /// The stage at which `start` says "up" (`ready`, or `control` for boot-only images).
    pub wait_for: Stage,
    /// What happens when the VMM dies on its own.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The data disk, `/dev/vdb`.
    pub data_disk: DataDisk,
    /// The backup disk, `/dev/vdc` (attached when backups are enabled).
    pub backup_disk: DataDisk,
    /// Backups.
    pub backup: BackupSpec,
    /// Kernel command line additions.
    pub guest: GuestSpec,
    /// PostgreSQL.
    pub postgres: PostgresSpec,
    /// Streaming replication with a peer VM; `None` for a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,
    /// Application roles and databases.
    #[serde(default)]
    pub apps: Vec<AppSpec>,
    /// Tailnet membership.
    pub tailscale: TailscaleSpec,
    /// VMM and helpers.
    pub vmm: VmmSpec,
    /// Stage deadlines.
    pub timeouts: Timeouts,
    /// Where the supervisor tells its user about a condition, and how often.
    #[serde(default = "no_alert_sinks")]
    pub alerts: AlertsSpec,
    /// The port of PID 1's Prometheus page on the tailnet, when `[metrics]` turns it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<u16>,
}

/// `alerts` of a run spec written before the field existed.
fn no_alert_sinks() -> AlertsSpec {
    AlertsSpec::defaults(false)
}

/// The qemu-system binary name for a guest architecture.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

impl Spec {
    /// Renders the spec as TOML (the `spec` subcommand; a valid spec file).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render spec: {e}\n"))
    }

    /// The deadline of the stage after `stage`'s predecessor, see [`Timeouts`].
    pub fn stage_timeout(&self, stage: Stage) -> Duration {
        self.timeouts.for_stage(stage)
    }

    /// The backup configuration for the guest, when backups are enabled, with repo2's
    /// private key and the backup passphrase (read from their files by the caller; see
    /// [`crate::secrets`]).
    pub fn guest_backup(
        &self,
        offsite_secrets: Option<(protocol::config::Secret, protocol::config::Secret)>,
    ) -> Option<protocol::backup::BackupConfig> {
        let offsite =
            self.backup
                .offsite
                .as_ref()
                .zip(offsite_secrets)
                .map(|(o, (key, passphrase))| protocol::backup::OffsiteConfig {
                    host: o.host.clone(),
                    port: o.port,
                    user: o.user.clone(),
                    path: o.path.clone(),
                    host_key: o.host_key.clone(),
                    private_key: key,
                    passphrase,
                });
        self.backup.enabled.then(|| protocol::backup::BackupConfig {
            device: BACKUP_DEVICE.to_string(),
            archive_timeout_secs: self.backup.archive_timeout_secs,
            retention_days: self.backup.retention_days,
            full_every_days: self.backup.schedule.full_every_days,
            diff_every_days: self.backup.schedule.diff_every_days,
            offsite,
        })
    }

    /// The disk images the VMM attaches after the root image, in device order
    /// (`/dev/vdb`, then `/dev/vdc`).
    pub fn extra_disks(&self) -> Vec<(&'static str, &DataDisk)> {
        let mut v = vec![("data", &self.data_disk)];
        if self.backup.enabled {
            v.push(("backup", &self.backup_disk));
        }
        v
    }

    /// Directory of the log files kept beside the console log.
    pub fn log_dir(&self) -> PathBuf {
        self.console_log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// A log file beside the console log: `<dir>/<name>-<what>.log`.
    pub fn log_file(&self, what: &str) -> PathBuf {
        self.log_dir().join(format!("{}-{what}.log", self.name))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::paths::HostEnv;

    pub(crate) fn env_in(dir: &Path, android: bool) -> HostEnv {
        HostEnv {
            android,
            base_dir: dir.to_path_buf(),
            search_dirs: vec![],
            kvm_device: dir.join("dev-kvm"),
            vhost_vsock_device: dir.join("dev-vhost-vsock"),
            selinux_fs: dir.join("selinux"),
            boot_script_dir: dir.join("adb/service.d"),
            euid: 0,
            crosvm_help: Default::default(),
        }
    }

    #[test]
    fn builtin_sql_matches_the_design_table() {
        let env = env_in(Path::new("/data/sovereign"), true);
        let s = Spec::builtin_sql(&env).unwrap();
        assert_eq!(s.name, "sql");
        assert_eq!(s.cid, 10);
        assert_eq!(s.memory_mib, 1024);
        assert_eq!(s.cpus, 2);
        assert_eq!(s.hostname, "sql-vm");
        assert_eq!(s.postgres.port, 5432);
        assert_eq!(s.data_disk.size_gib, 4);
        assert_eq!(s.backup_disk.size_gib, 8);
        assert_eq!(
            s.backup_disk.path,
            PathBuf::from("/data/sovereign/backup.img")
        );
        assert!(s.backup.enabled);
        assert_eq!(s.backup.archive_timeout_secs, 60);
        assert_eq!(s.backup.retention_days, 7);
        assert_eq!(
            (
                s.backup.schedule.full_every_days,
                s.backup.schedule.diff_every_days
            ),
            (7, 1)
        );
        assert_eq!(
            s.data_disk.path,
            PathBuf::from("/data/sovereign/postgres.img")
        );
        assert_eq!(
            s.console_log,
            PathBuf::from("/data/sovereign/sql-console.log")
        );
        assert_eq!(s.run_dir, PathBuf::from("/data/sovereign/run/sql"));
        assert_eq!(s.vmm.backend, Backend::Crosvm);
        assert_eq!(s.vmm.crosvm, "/apex/com.android.virt/bin/crosvm");
        assert_eq!(s.wait_for, Stage::Ready);
        assert_eq!(
            s.postgres.superuser_password_file,
            PathBuf::from("/data/sovereign/secrets/sql-postgres.password")
        );
        let linux = Spec::builtin_sql(&env_in(Path::new("/var/lib/sovereign"), false)).unwrap();
        assert_eq!(linux.vmm.backend, Backend::Qemu);
        assert_eq!(
            linux.log_file("supervisor"),
            PathBuf::from("/var/lib/sovereign/sql-supervisor.log")
        );
    }
}
