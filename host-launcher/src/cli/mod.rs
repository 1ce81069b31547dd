//! The command line (clap derive): every verb and its options, with `--sql` naming the
//! built-in VM and `--spec FILE` any other. [`crate::commands`] runs them.

use crate::paths::HostEnv;
use crate::spec::{Spec, SpecError};
use clap::{Args, Parser, Subcommand};
use protocol::Stage;
use std::path::PathBuf;

mod cluster;
mod data;
mod probe;
pub use cluster::ClusterAction;
pub use data::{
    parse_restore_target, AlertsAction, BackupAction, BackupKindArg, DbAction, DiskAction,
};
pub use probe::{PgbenchScript, ProbeCheck, StreamTransfer};

/// Runs PostgreSQL in a VM (crosvm on Android, QEMU elsewhere), reachable over Tailscale.
#[derive(Debug, Parser)]
#[command(name = "sovereign", version, about, long_about = None)]
#[command(
    after_help = "State lives in /data/sovereign on Android, else $SOVEREIGN_HOME or /var/lib/sovereign.\n\
Logging: RUST_LOG (e.g. RUST_LOG=debug). Exit codes: 0 ok, 1 VM or check failed, 2 spec or host unfit."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Selects the VM: the built-in `sql` VM (default) or a spec file.
#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// The built-in `sql` VM (the default when no --spec is given).
    #[arg(long, conflicts_with = "spec")]
    pub sql: bool,
    /// A VM spec file (TOML); relative paths in it resolve against its directory.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
}

impl VmArgs {
    /// Loads the selected spec; also returns how to name its source in messages.
    pub fn load(&self, env: &HostEnv) -> Result<(Spec, String), SpecError> {
        match &self.spec {
            Some(p) => Ok((Spec::load(p, env)?, p.display().to_string())),
            None => Ok((
                Spec::builtin_sql(env)?,
                crate::commands::start::BUILTIN.to_string(),
            )),
        }
    }
}

/// The guest services `signal` can reach.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ServiceArg {
    /// The postmaster.
    Postgres,
    /// tailscaled.
    Tailscaled,
}

/// The signals `signal` can send.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SignalArg {
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGHUP.
    Hup,
    /// SIGINT.
    Int,
}

impl ServiceArg {
    /// The wire form.
    pub fn to_guest(self) -> protocol::messages::GuestService {
        use protocol::messages::GuestService;
        match self {
            ServiceArg::Postgres => GuestService::Postgres,
            ServiceArg::Tailscaled => GuestService::Tailscaled,
        }
    }
}

impl SignalArg {
    /// The wire form.
    pub fn to_guest(self) -> protocol::messages::ServiceSignal {
        use protocol::messages::ServiceSignal;
        match self {
            SignalArg::Term => ServiceSignal::Term,
            SignalArg::Kill => ServiceSignal::Kill,
            SignalArg::Hup => ServiceSignal::Hup,
            SignalArg::Int => ServiceSignal::Int,
        }
    }
}

/// The guest logs `logs` can show.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogName {
    /// PostgreSQL's server log.
    Postgres,
    /// tailscaled's log.
    Tailscaled,
    /// The guest kernel's ring buffer.
    Kernel,
    /// pgBackRest's logs (WAL archiving, backups, restores).
    Pgbackrest,
}

impl LogName {
    /// The wire form.
    pub fn to_guest_log(self) -> protocol::messages::GuestLog {
        use protocol::messages::GuestLog;
        match self {
            LogName::Postgres => GuestLog::Postgres,
            LogName::Tailscaled => GuestLog::Tailscaled,
            LogName::Kernel => GuestLog::Kernel,
            LogName::Pgbackrest => GuestLog::Pgbackrest,
        }
    }
}

/// `replica` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReplicaAction {
    /// On the primary's host: print (or write, mode 0600) the replication password and
    /// the cluster's passwords, for the replica's spec (`replication.credentials_file`).
    Credentials {
        #[command(flatten)]
        vm: VmArgs,
        /// Write to FILE (mode 0600) instead of printing.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the spec, run preflight, boot the VM and wait until it proves each stage.
    Start {
        #[command(flatten)]
        vm: VmArgs,
        /// Print the exact commands (vhost-device-vsock, gvproxy, VMM), one per line, shell-quoted; start nothing.
        #[arg(long)]
        dry_run: bool,
        /// Say "up" once this stage is accepted (default: the spec's wait_for, normally `ready`; boot-only images: `control`).
        #[arg(long, value_name = "STAGE", value_parser = parse_stage)]
        wait_for: Option<Stage>,
        /// The crosvm binary (default: the spec's vmm.crosvm, normally /apex/com.android.virt/bin/crosvm).
        #[arg(long, value_name = "PATH")]
        crosvm: Option<String>,
    },
    /// Shut the guest down cleanly and stop everything started for it.
    Stop {
        #[command(flatten)]
        vm: VmArgs,
        /// Seconds the guest may take to shut down before the VMM is killed (default: the spec's timeouts.shutdown).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u32>,
    },
    /// Show processes, stages, guest uptime, tailnet name and IPs, postgres state.
    Status {
        #[command(flatten)]
        vm: VmArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Redraw every 2 s until Ctrl-C.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Re-check every stage from this host and run the witness queries.
    Test {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Print the guest's serial console log and follow it.
    Console {
        #[command(flatten)]
        vm: VmArgs,
        /// Print what is there and exit.
        #[arg(long)]
        no_follow: bool,
    },
    /// Run SQL in the guest as the postgres superuser (over the control channel).
    /// Without SQL, the statements are read from stdin: use that for anything you
    /// would not want in the host's process list (passwords).
    Query {
        #[command(flatten)]
        vm: VmArgs,
        /// The statement(s), e.g. 'select 1' (omit to read them from stdin).
        #[arg(value_name = "SQL")]
        statement: Option<String>,
    },
    /// Send a signal to a service in the guest (postgres, tailscaled); PID 1 restarts
    /// it as after any unexpected exit. For testing recovery.
    Signal {
        #[command(flatten)]
        vm: VmArgs,
        /// Which service.
        service: ServiceArg,
        /// Which signal.
        #[arg(long, value_enum, default_value = "term")]
        signal: SignalArg,
    },
    /// Check or measure from inside the guest: resolve a name, connect out, accept one
    /// inbound connection (gvproxy's path each way), run pgbench, or stream bulk data.
    Probe {
        #[command(flatten)]
        vm: VmArgs,
        /// What to check.
        #[command(subcommand)]
        check: ProbeCheck,
    },
    /// Backups with pgBackRest: take one now, or list the sets and the window.
    Backup {
        /// What to do.
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Restore the database to a point in time, the latest archived change, or a
    /// backup set. Postgres stops; the current data directory is kept aside until the
    /// restored server is up and checked (and then until the next restore).
    Restore {
        #[command(flatten)]
        vm: VmArgs,
        /// `latest`, a set label from `backup list`, or a time PostgreSQL reads
        /// (e.g. 2026-12-02T16:04:05Z; without a zone, UTC).
        #[arg(long, value_name = "TARGET", value_parser = parse_restore_target)]
        to: protocol::backup::RestoreTarget,
        /// Do not ask for confirmation (for scripts).
        #[arg(long)]
        yes: bool,
        /// The data disk is gone or broken: with the VM stopped, move the old image (if
        /// any) aside, start the VM on a new data disk and restore onto it from the
        /// backup disk (or repo2) before postgres starts; with --from-export, from that
        /// export (a new phone with only the export and its passphrase).
        #[arg(long)]
        new_disk: bool,
        /// Restore from a `backup export` file (opened with the backup passphrase): it
        /// becomes the backup disk's repository (the current one is kept aside), then the
        /// database is restored from it.
        #[arg(long, value_name = "FILE")]
        from_export: Option<PathBuf>,
    },
    /// A primary and its replicas on several hosts, brought up and shown by one command.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// A cluster by hand: what a replica's host needs from the primary's.
    Replica {
        /// What to do.
        #[command(subcommand)]
        action: ReplicaAction,
    },
    /// Make this VM, a replica, the primary (PostgreSQL's promotion: a new timeline).
    /// Refused while its WAL receiver streams, a peer answers as the primary, or
    /// another replica has WAL this one lacks: two nodes that see each other never both
    /// take writes, and no replica is left unable to follow. The old primary must then
    /// `rejoin` before it takes writes again (if it still runs, it stops by itself once
    /// it sees this node on the newer timeline).
    Promote {
        #[command(flatten)]
        vm: VmArgs,
        /// Promote even though the old primary still answers or streams to this node:
        /// for a primary that is gone for good, or to take over anyway (the old primary
        /// then fences itself: it stops postgres and keeps its data).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Start this VM, a former primary, as the replica of its peer: with the VM stopped,
    /// its data disk is copied aside (kept), then pg_rewind gives up the writes the peer
    /// never received and the VM follows the peer.
    Rejoin {
        #[command(flatten)]
        vm: VmArgs,
        /// Copy the peer anew instead of rewinding: for a replica that fell too far
        /// behind (its slot on the primary was invalidated) or a rewind that cannot
        /// work. The copy of the data disk is still made first.
        #[arg(long)]
        fresh: bool,
        /// Do not ask for confirmation (the copy of the data disk is still made).
        #[arg(long)]
        yes: bool,
    },
    /// App databases: dumps and restores of one app.
    Db {
        /// What to do.
        #[command(subcommand)]
        action: DbAction,
    },
    /// Alerts: what the supervisor raised (a backup that stopped, a disk filling up, the
    /// off-device copy refused ...) and a test notice through the spec's [alerts] sinks.
    Alerts {
        /// What to do.
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// The VM's disks: make one larger.
    Disk {
        /// What to do.
        #[command(subcommand)]
        action: DiskAction,
    },
    /// Boot a new image set (kernel and root image: a PostgreSQL minor release, a
    /// tailscale update, a new PID 1) and keep the current one until the new one is
    /// proven: when any stage fails, the current set boots again by itself and the
    /// command says why. `--rollback` goes back on purpose. The data disk is never
    /// touched; a set with another PostgreSQL major version is refused. A power cut
    /// during an update is undone by the next `start`.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["images", "rollback"])))]
    Update {
        #[command(flatten)]
        vm: VmArgs,
        /// An artifact set (`build` on the developer's machine; on a phone, what
        /// `deploy --update` pushed): its manifest.json, kernel and root.img.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Boot the set kept by the last update again (the current one is kept in turn).
        #[arg(long)]
        rollback: bool,
    },
    /// What this device can do for Sovereign, on one screen to attach to a report:
    /// Android's release, the kernel, the hypervisor's properties, crosvm's version and
    /// flags, the device nodes, the root manager, SELinux, free space; then the
    /// preflight of the VM's spec. Holds no secrets and no serials.
    Doctor {
        #[command(flatten)]
        vm: VmArgs,
        /// Also start a VM with the spec's kernel and nothing else, ordinary and protected,
        /// for up to 10 s each: whether this phone's hypervisor runs one at all.
        #[arg(long)]
        try_vm: bool,
    },
    /// Start the VM by itself after the phone reboots: installs a boot script in the
    /// root manager's boot-script directory (/data/adb/service.d, run by KernelSU and
    /// Magisk) that waits for Android to finish booting, then runs `start`.
    Enable {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Remove the boot script `enable` installed (a running VM keeps running).
    Disable {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Build the VM's artifact set (kernel, root image, binaries) from this source tree
    /// and print where it is: the step before `deploy --sql`.
    Build(crate::commands::build::BuildArgs),
    /// Copy the arm64 artifact set to a rooted phone over adb (only what changed), verify
    /// it by SHA-256, and print the command that starts the VM there.
    Deploy(crate::commands::deploy::DeployArgs),
    /// Print the end of one of the guest's own logs (they live on its data disk).
    Logs {
        #[command(flatten)]
        vm: VmArgs,
        /// Which log.
        #[arg(value_enum)]
        log: LogName,
    },
    /// Print the resolved VM spec as TOML (a starting point for your own spec file).
    Spec {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// The detached supervisor `start` launches (internal).
    #[command(hide = true)]
    Supervise {
        /// The VM's run directory (holds spec.json).
        #[arg(long, value_name = "DIR")]
        run_dir: PathBuf,
        /// The start lock's descriptor, handed over by `start` (held until exit).
        #[arg(long, value_name = "FD")]
        lock_fd: Option<i32>,
    },
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        format!("unknown stage '{s}' (one of {})", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// docs/phone.md spells the phone workflow this way; every line must parse.
    #[test]
    fn the_phone_guides_commands_parse_as_written() {
        for line in [
            "build --sql",
            "build --sql --arch x86_64",
            "deploy --sql",
            "start --sql",
            "test --sql",
            "status",
            "stop --sql",
            "enable --sql",
            "disable --sql",
        ] {
            let argv = std::iter::once("sovereign").chain(line.split(' '));
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("`sovereign {line}` does not parse: {e}");
            }
        }
        let c = Cli::try_parse_from(["sovereign", "build", "--sql"]).unwrap();
        assert!(
            matches!(&c.command, Command::Build(b) if b.arch == protocol::arch::Arch::Arm64),
            "the phone's arch by default"
        );
        let e = Cli::try_parse_from(["sovereign", "build", "--arch", "riscv"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown architecture \"riscv\""), "{e}");
    }

    #[test]
    fn stream_probes_download_by_default_and_refuse_the_vms_own_ports() {
        use protocol::messages::{Probe, StreamDirection};
        let probe = |args: &[&str]| {
            let argv = ["sovereign", "probe"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Probe { check, .. }) => Ok(check.to_probe()),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(
            probe(&["stream", "192.168.127.254:5201"]),
            Ok(Probe::Stream {
                address: "192.168.127.254:5201".into(),
                direction: StreamDirection::Download,
                bytes: 0,
                timeout_ms: 120_000
            })
        );
        assert_eq!(
            probe(&[
                "vsock-stream",
                "5201",
                "--upload",
                "1048576",
                "--timeout",
                "30"
            ]),
            Ok(Probe::VsockStream {
                port: 5201,
                direction: StreamDirection::Upload,
                bytes: 1 << 20,
                timeout_ms: 30_000
            })
        );
        let e = probe(&["vsock-stream", "1024"]).unwrap_err();
        assert!(e.contains("1024") && e.contains("<PORT>"), "{e}");
        let e = probe(&["stream", "h:1", "--upload", "0"]).unwrap_err();
        assert!(e.contains("--upload"), "{e}");
    }

    #[test]
    fn a_guest_pgbench_run_is_bounded_and_names_the_field_it_refuses() {
        let c =
            Cli::try_parse_from(["sovereign", "probe", "pgbench", "--mode", "tpcb-like"]).unwrap();
        let Command::Probe { check, .. } = &c.command else {
            panic!("{c:?}")
        };
        assert_eq!(
            check.to_probe(),
            protocol::messages::Probe::Pgbench {
                mode: protocol::messages::PgbenchMode::TpcbLike,
                clients: 4,
                seconds: 20
            }
        );
        for (flag, value) in [
            ("--clients", "65"),
            ("--clients", "0"),
            ("--seconds", "601"),
        ] {
            let e = Cli::try_parse_from(["sovereign", "probe", "pgbench", flag, value])
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag) && e.contains(value), "{e}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c =
            Cli::try_parse_from(["sovereign", "start", "--sql", "--wait-for", "control"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Start {
                wait_for: Some(Stage::Control),
                ..
            }
        ));
        Cli::try_parse_from(["sovereign", "start", "--sql", "--spec", "x.toml"]).unwrap_err();
        let e = Cli::try_parse_from(["sovereign", "start", "--wait-for", "vsock"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of init, devices"), "{e}");
        let c = Cli::try_parse_from(["sovereign", "backup", "now", "--type", "diff"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Backup {
                action: BackupAction::Now {
                    kind: BackupKindArg::Diff,
                    ..
                }
            }
        ));
        let c = Cli::try_parse_from(["sovereign", "query", "--sql", "select 1"]).unwrap();
        assert!(
            matches!(c.command, Command::Query { statement, .. } if statement.as_deref() == Some("select 1"))
        );
    }

    #[test]
    fn disk_grow_takes_exactly_one_disk() {
        let c =
            Cli::try_parse_from(["sovereign", "disk", "grow", "--sql", "--data", "8G"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Disk {
                action: DiskAction::Grow { data: Some(ref d), backup: None, .. }
            } if d == "8G"
        ));
        for args in [
            &["sovereign", "disk", "grow", "--sql"][..],
            &[
                "sovereign",
                "disk",
                "grow",
                "--sql",
                "--data",
                "8",
                "--backup",
                "9",
            ][..],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
