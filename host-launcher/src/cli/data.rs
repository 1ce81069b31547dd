//! The arguments of the verbs that keep and move data: `backup`, `db`, and the
//! targets `restore --to` reads.

use super::VmArgs;
use clap::Subcommand;
use std::path::PathBuf;

/// The backup types `backup now` can take.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BackupKindArg {
    /// Every file.
    Full,
    /// Files changed since the last full backup.
    Diff,
    /// Files changed since the last backup of any type.
    Incr,
}

impl BackupKindArg {
    /// The wire form.
    pub fn to_kind(self) -> protocol::backup::BackupKind {
        use protocol::backup::BackupKind;
        match self {
            BackupKindArg::Full => BackupKind::Full,
            BackupKindArg::Diff => BackupKind::Diff,
            BackupKindArg::Incr => BackupKind::Incr,
        }
    }
}

/// What `backup` does.
#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Take a backup now (PID 1 also takes them by itself: the spec's backup.schedule).
    Now {
        #[command(flatten)]
        vm: VmArgs,
        /// Full, differential or incremental.
        #[arg(long = "type", value_enum, default_value = "full")]
        kind: BackupKindArg,
    },
    /// The backup sets, with times and sizes, and the recoverable window.
    List {
        #[command(flatten)]
        vm: VmArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Read every file of the repository back and check it against its checksum.
    Verify {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Write a tar of the backup disk's repository (every set and the archived WAL) to
    /// stdout or a file, to keep a copy off the phone (`adb pull`). `sovereign restore
    /// --from-export FILE` reads it back.
    Export {
        #[command(flatten)]
        vm: VmArgs,
        /// Only from this set on (a label from `backup list`): its full set, every later
        /// set and the WAL from the full set's start; older sets are left out.
        #[arg(value_name = "SET")]
        set: Option<String>,
        /// Write here (as FILE.partial until the stream checked out) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The passphrase that seals what leaves the phone (repo2, exports): where it is;
    /// `--show` prints it (keep a copy apart from the phone); `--set` takes it from
    /// stdin (on a new phone, before restoring what the old one sealed).
    Key {
        #[command(flatten)]
        vm: VmArgs,
        /// Print it, after asking.
        #[arg(long, conflicts_with = "set")]
        show: bool,
        /// Read it from stdin (one line) into the passphrase file.
        #[arg(long)]
        set: bool,
        /// Do not ask for confirmation (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

/// `sovereign alerts ...`.
#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// The conditions that hold now, each with since when (what `status` lists under
    /// "alerts").
    List {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Send one test notice through every sink the spec's [alerts] names (the phone's
    /// notification, the webhook) and say what each answered; exit 1 when one failed.
    Test {
        #[command(flatten)]
        vm: VmArgs,
    },
}

/// `sovereign disk ...`.
#[derive(Debug, Subcommand)]
pub enum DiskAction {
    /// Make the data or the backup disk larger (never smaller). With the VM stopped the
    /// image grows now and the guest grows its filesystem at the next start; with it
    /// running the VMM resizes the disk (QEMU's block_resize, crosvm's disk resize) and
    /// the guest grows the filesystem at once. The host must have room for what it
    /// adds; the spec file's size_gib follows.
    #[command(group(clap::ArgGroup::new("disk").required(true).args(["data", "backup"])))]
    Grow {
        #[command(flatten)]
        vm: VmArgs,
        /// The data disk's new size in GiB (8, 8G or 8GiB).
        #[arg(long, value_name = "SIZE")]
        data: Option<String>,
        /// The backup disk's new size in GiB.
        #[arg(long, value_name = "SIZE")]
        backup: Option<String>,
    },
}

/// `sovereign db ...`.
#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// The app databases in the guest: owners, sizes, connections against each role's
    /// limit, and orphans (databases the spec no longer names, kept).
    List {
        #[command(flatten)]
        vm: VmArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the connection string an app on another tailnet node uses (the host is the
    /// VM's tailnet name, never an address).
    Url {
        #[command(flatten)]
        vm: VmArgs,
        /// The app, as the spec's [[apps]] names it.
        app: String,
        /// The form.
        #[arg(long, value_enum, default_value = "uri")]
        format: crate::conninfo::Format,
        /// Require TLS and verify the server (`sslmode=verify-full`) with the CA
        /// certificate at CA_FILE on the app's machine (save `sovereign db ca` there).
        /// With a replica (the spec's [replication]), both VMs are listed; with --verify-full,
        /// CA_FILE must then hold both hosts' CA certificates (`db ca` on each).
        #[arg(long, value_name = "CA_FILE")]
        verify_full: Option<String>,
        /// For read-only clients of a two-node cluster: a replica first
        /// (`target_session_attrs=prefer-standby`) instead of the primary.
        #[arg(long)]
        read_only: bool,
    },
    /// Drop a database the spec no longer names (an orphan, or a copy `db restore`
    /// kept): asks first (`--yes` for scripts) and dumps it before dropping.
    Drop {
        #[command(flatten)]
        vm: VmArgs,
        /// The database, as `db list` shows it.
        name: String,
        /// Do not ask for confirmation (the dump is still taken).
        #[arg(long)]
        yes: bool,
        /// Where the dump goes (default: dumps/<vm>-<name>-<time>.dump beside the data
        /// disk image).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Add an app: a `[[apps]]` entry in the spec file, a generated password in the
    /// secrets directory, and (when the VM runs) its role and database at once.
    Add {
        #[command(flatten)]
        vm: VmArgs,
        /// The app's name: its role and database (a lowercase SQL identifier).
        app: String,
        /// Most sessions its role may hold at once (default 20).
        #[arg(long, value_name = "N")]
        connection_limit: Option<u32>,
    },
    /// Give an app's role a new generated password. On a running VM the old password's
    /// file is replaced only once the server holds the new one.
    Password {
        #[command(flatten)]
        vm: VmArgs,
        /// The app, as the spec's [[apps]] names it.
        app: String,
        /// Generate a new password (the only action; required so that it is never
        /// done by accident).
        #[arg(long, required = true)]
        rotate: bool,
    },
    /// Print the CA certificate (PEM) that signs the server's certificate, for
    /// clients using `sslmode=verify-full`.
    Ca {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Write `pg_dump -Fc` of an app's database to stdout or a file.
    Dump {
        #[command(flatten)]
        vm: VmArgs,
        /// The app, as the spec's [[apps]] names it.
        app: String,
        /// Write here (as FILE.partial until the stream checked out) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Replace an app's database with a dump (`db dump`'s format). Its sessions are
    /// ended; the current database is kept as `<app>_before_restore_<time>`.
    Restore {
        #[command(flatten)]
        vm: VmArgs,
        /// The app, as the spec's [[apps]] names it.
        app: String,
        /// The dump.
        file: PathBuf,
        /// Do not ask for confirmation (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

/// Reads `restore --to`: `latest`, a backup set's label, or a time.
pub fn parse_restore_target(s: &str) -> Result<protocol::backup::RestoreTarget, String> {
    use protocol::backup::RestoreTarget;
    let s = s.trim();
    if s.is_empty() {
        return Err("give latest, a set label from `backup list`, or a time".into());
    }
    if s == "latest" {
        return Ok(RestoreTarget::Latest);
    }
    if is_set_label(s) {
        return Ok(RestoreTarget::Set {
            label: s.to_string(),
        });
    }
    if s.len() > 64 || s.chars().any(char::is_control) {
        return Err(format!(
            "{s:?} is not a time (too long or control characters)"
        ));
    }
    Ok(RestoreTarget::Time {
        time: s.to_string(),
    })
}

/// pgBackRest's labels: `YYYYMMDD-HHMMSSF`, or that plus `_YYYYMMDD-HHMMSS` and `D`/`I`.
fn is_set_label(s: &str) -> bool {
    let stamp = |t: &str| {
        t.len() == 15
            && t.as_bytes()[8] == b'-'
            && t.bytes()
                .enumerate()
                .all(|(i, b)| i == 8 || b.is_ascii_digit())
    };
    match s.split_once('_') {
        None => s.len() == 16 && s.ends_with('F') && stamp(&s[..15]),
        Some((full, rest)) => {
            full.len() == 16
                && full.ends_with('F')
                && stamp(&full[..15])
                && rest.len() == 16
                && (rest.ends_with('D') || rest.ends_with('I'))
                && stamp(&rest[..15])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::backup::RestoreTarget;

    #[test]
    fn restore_targets_are_latest_a_set_or_a_time() {
        assert_eq!(parse_restore_target("latest"), Ok(RestoreTarget::Latest));
        for label in ["20261202-160405F", "20261202-160405F_20261203-010000D"] {
            assert_eq!(
                parse_restore_target(label),
                Ok(RestoreTarget::Set {
                    label: label.into()
                })
            );
        }
        assert_eq!(
            parse_restore_target("2026-12-02T16:04:05Z"),
            Ok(RestoreTarget::Time {
                time: "2026-12-02T16:04:05Z".into()
            })
        );
        parse_restore_target("").unwrap_err();
        parse_restore_target("2026-12-02\n16:00").unwrap_err();
        parse_restore_target("x\u{7}").unwrap_err();
        parse_restore_target(&"9".repeat(65)).unwrap_err();
        assert!(
            !is_set_label("20261202-160405D"),
            "a diff alone is no label"
        );
        assert!(!is_set_label("2026120-1604055F"));
    }
}
