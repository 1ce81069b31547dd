//! pgBackRest as PID 1 runs it: its configuration file (rendered from the host's
//! [`BackupConfig`]), the lines postgresql.conf needs for continuous archiving, and the
//! catalog `pgbackrest info --output=json` prints, read into the protocol's
//! [`BackupSet`]s.

use protocol::backup::{BackupConfig, BackupKind, BackupSet, REPO_LOCAL};
use serde::Deserialize;
use std::path::Path;
use thiserror::Error;

/// The one stanza (pgBackRest's name for a cluster and its repositories).
pub const STANZA: &str = "sovereign";

/// Where root's pgBackRest runs keep their configuration, lock and credentials (tmpfs,
/// 0700 root): everything that names repo2 holds its SFTP key and its cipher
/// passphrase, and no other guest account may read those.
pub const ROOT_RUN_DIR: &str = "/run/pgbackrest-root";

/// The configuration with both repositories (root only): the catalog and `verify`.
pub const CONFIG_FILE: &str = "/run/pgbackrest-root/pgbackrest.conf";

/// repo1 alone, run as postgres: PostgreSQL's `archive_command` (WAL reaches repo2 by
/// [`super::shipping`], never through the archiver), repo1's backups, restores and
/// expiry. repo1's files stay postgres's.
pub const LOCAL_CONFIG_FILE: &str = "/run/pgbackrest/pgbackrest-repo1.conf";

/// repo2 alone (root only): its backups, restores and the shipped WAL.
pub const OFFSITE_CONFIG_FILE: &str = "/run/pgbackrest-root/pgbackrest-repo2.conf";

/// repo2 alone for postgres: the `restore_command` of a server restored from repo2
/// reads WAL with it while it recovers; written for that restore and removed once the
/// server is promoted.
pub const RECOVERY_CONFIG_FILE: &str = "/run/pgbackrest/pgbackrest-recovery.conf";

/// Where the backup disk is mounted; repo1 lives under it.
pub const BACKUP_MOUNT: &str = "/backup";

/// repo1: the repository on the backup disk.
pub const REPO1_PATH: &str = "/backup/pgbackrest";

/// Async archiving's spool and pgBackRest's logs, on the backup disk: when the data
/// disk fills up, the archiver must still be able to write its status files and logs,
/// or it stops taking WAL and the WAL it leaves behind keeps the disk full.
pub const WORK_DIR: &str = "/backup/work";

/// pgBackRest's log files, as `logs pgbackrest` shows them: postgres's runs (repo1) log
/// under `<work dir>/log`, root's (anything with repo2) under `<work dir>/log-root`.
pub const LOGS: [&str; 6] = [
    "log/sovereign-archive-push.log",
    "log/sovereign-archive-push-async.log",
    "log/sovereign-backup.log",
    "log/sovereign-restore.log",
    "log-root/sovereign-backup.log",
    "log-root/sovereign-restore.log",
];

/// Where each of [`LOGS`] is.
pub fn log_paths() -> [std::path::PathBuf; 6] {
    LOGS.map(|name| Path::new(WORK_DIR).join(name))
}

/// The ends of pgBackRest's logs, each under its name, `max` bytes in all.
pub fn log_tail(max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let each = max / LOGS.len();
    for (name, path) in LOGS.iter().zip(log_paths()) {
        out.extend_from_slice(format!("==> {name} <==\n").as_bytes());
        match crate::log_files::tail_of(&path, each) {
            Ok(t) => out.extend_from_slice(&t),
            Err(e) => out.extend_from_slice(format!("({e})\n").as_bytes()),
        }
    }
    out
}

/// The pgBackRest binary in the root image.
pub const PROGRAM: &str = "/usr/bin/pgbackrest";

/// Which repositories one configuration file names. pgBackRest acts on every
/// repository its configuration lists, so each use that must leave one of them alone
/// gets a file without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repos {
    /// repo1 and, when configured, repo2: backups, restores, the catalog.
    Both,
    /// repo1 alone: PostgreSQL's `archive_command`, and stanza-create with repo2 away.
    Local,
    /// repo2 alone: pushing shipped WAL into it.
    Offsite,
    /// repo2 alone as postgres: the `restore_command` of a recovery from repo2.
    Recovery,
}

impl Repos {
    /// Whether its commands run as root: every configuration that names repo2, whose key
    /// and passphrase are root's alone. repo1 alone runs as postgres, so its files stay
    /// postgres's (a root run would leave root-owned files postgres's runs cannot read).
    pub fn runs_as_root(self) -> bool {
        matches!(self, Repos::Both | Repos::Offsite)
    }

    /// The set a command's `--repo=N` argument names; both without one.
    pub fn for_args(extra: &[String]) -> Repos {
        if extra.iter().any(|a| a == "--repo=1") {
            Repos::Local
        } else if extra.iter().any(|a| a == "--repo=2") {
            Repos::Offsite
        } else {
            Repos::Both
        }
    }

    /// The file this set's configuration is written to.
    pub fn config_file(self) -> &'static str {
        match self {
            Repos::Both => CONFIG_FILE,
            Repos::Local => LOCAL_CONFIG_FILE,
            Repos::Offsite => OFFSITE_CONFIG_FILE,
            Repos::Recovery => RECOVERY_CONFIG_FILE,
        }
    }

    /// The sets a configuration needs a file for: repo2's alone only when it exists.
    pub fn needed(cfg: &BackupConfig) -> Vec<Repos> {
        let mut sets = vec![Repos::Both, Repos::Local];
        if cfg.offsite.is_some() {
            sets.push(Repos::Offsite);
        }
        sets
    }
}

/// Renders pgbackrest.conf for one set of repositories. `queue_max_mib` bounds the WAL
/// the async archiver keeps queued while the repository is unreachable: past it,
/// pgBackRest drops WAL (and says so) rather than letting the data disk fill up, which
/// breaks point-in-time recovery (status then says so) but never the database. The
/// bound only goes with repo1: with it, archive-push looks for PostgreSQL's
/// archive_status beside the file, which only pg_wal has, not the shipping queue.
pub fn render_config(cfg: &BackupConfig, repos: Repos, pg_port: u16, queue_max_mib: u64) -> String {
    let local = match repos {
        Repos::Offsite | Repos::Recovery => String::new(),
        Repos::Both | Repos::Local => format!(
            "repo1-path={REPO1_PATH}\n\
             repo1-retention-full-type=time\n\
             repo1-retention-full={retention}\n\
             repo1-bundle=y\n\
             archive-push-queue-max={queue_max_mib}MiB\n",
            retention = cfg.retention_days,
        ),
    };
    let offsite = match (repos, &cfg.offsite) {
        (Repos::Both | Repos::Offsite, Some(o)) => super::offsite::config_lines(
            o,
            cfg.retention_days,
            super::offsite::KEY_FILE,
            super::offsite::KNOWN_HOSTS,
        ),
        (Repos::Recovery, Some(o)) => super::offsite::config_lines(
            o,
            cfg.retention_days,
            super::offsite::RECOVERY_KEY_FILE,
            super::offsite::RECOVERY_KNOWN_HOSTS,
        ),
        _ => String::new(),
    };
    // Root's runs keep their lock, spool and logs apart: a file root makes where
    // postgres's runs write would lock them out of it.
    let (run_dir, log_dir, spool_dir) = if repos.runs_as_root() {
        (ROOT_RUN_DIR, "log-root", "spool-root")
    } else {
        ("/run/pgbackrest", "log", "spool")
    };
    format!(
        "# Written by sovereign-init on every boot from the host's backup settings.\n\
         [global]\n\
         {local}\
         compress-type=lz4\n\
         archive-async=y\n\
         archive-timeout=120\n\
         spool-path={WORK_DIR}/{spool_dir}\n\
         lock-path={run_dir}/lock\n\
         log-path={WORK_DIR}/{log_dir}\n\
         log-level-console=warn\n\
         log-level-stderr=warn\n\
         log-level-file=info\n\
         process-max=1\n\
         start-fast=y\n\
         {offsite}\
         \n\
         [{STANZA}]\n\
         pg1-path={data}\n\
         pg1-port={pg_port}\n\
         pg1-user=postgres\n\
         pg1-socket-path={socket}\n",
        data = crate::postgres::CLUSTER_DIR,
        socket = crate::postgres::config::SOCKET_DIR,
    )
}

/// The postgresql.conf lines for continuous archiving through pgBackRest; on a node of
/// a cluster (`always`) also while it is a replica, the WAL it receives.
pub fn archive_settings(cfg: &BackupConfig, cluster: bool) -> String {
    format!(
        "# Continuous archiving to pgBackRest (async push)\n\
         archive_mode = {}\n\
         archive_command = '{PROGRAM} --config={LOCAL_CONFIG_FILE} --stanza={STANZA} archive-push %p'\n\
         archive_timeout = {}\n",
        if cluster { "always" } else { "on" },
        cfg.archive_timeout_secs
    )
}

/// The arguments of one pgBackRest command (after the program), with the config
/// file and stanza every command needs.
pub fn args(command: &str, extra: &[String]) -> Vec<String> {
    args_with(CONFIG_FILE, command, extra)
}

/// [`args`] with another configuration file.
/// Options (`--...`) go before the command, its parameters (a WAL name, a path) after.
pub fn args_with(config: &str, command: &str, extra: &[String]) -> Vec<String> {
    let (options, parameters): (Vec<&String>, Vec<&String>) =
        extra.iter().partition(|a| a.starts_with("--"));
    let mut v = vec![format!("--config={config}"), format!("--stanza={STANZA}")];
    v.extend(options.into_iter().cloned());
    v.push(command.to_string());
    v.extend(parameters.into_iter().cloned());
    v
}

/// Why the catalog could not be read.
#[derive(Debug, Error)]
pub enum InfoError {
    #[error("pgbackrest info printed JSON this init does not understand: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pgbackrest info knows no stanza {STANZA}")]
    NoStanza,
    #[error("the repository's stanza is not usable: {0}")]
    Status(String),
}

#[derive(Debug, Deserialize)]
struct InfoStanza {
    name: String,
    #[serde(default)]
    backup: Vec<InfoBackup>,
    status: InfoStatus,
    #[serde(default)]
    repo: Vec<InfoRepoStatus>,
}

#[derive(Debug, Deserialize)]
struct InfoRepoStatus {
    key: u8,
    status: InfoStatus,
}

#[derive(Debug, Deserialize)]
struct InfoStatus {
    code: i64,
    message: String,
}

#[derive(Debug, Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimes,
    info: InfoSizes,
    #[serde(default)]
    error: Option<bool>,
    #[serde(default)]
    database: Option<InfoBackupDb>,
    #[serde(default)]
    archive: Option<InfoBackupArchive>,
}

#[derive(Debug, Deserialize)]
struct InfoBackupArchive {
    start: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InfoBackupDb {
    #[serde(rename = "repo-key")]
    repo_key: u8,
}

#[derive(Debug, Deserialize)]
struct InfoTimes {
    start: i64,
    stop: i64,
}

#[derive(Debug, Deserialize)]
struct InfoSizes {
    size: u64,
    repository: InfoRepo,
}

#[derive(Debug, Deserialize)]
struct InfoRepo {
    delta: u64,
}

/// pgBackRest's status code of a stanza that exists but holds no set yet.
const STATUS_NO_BACKUP: i64 = 2;

/// What `pgbackrest info` says: the complete sets of every repository, and the
/// repositories it could not read (with two, one may be unreachable while the other
/// works).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// Complete sets, oldest first.
    pub sets: Vec<BackupSet>,
    /// Repositories that could not be read, with pgBackRest's message.
    pub broken_repos: Vec<(u8, String)>,
    /// Each complete set's first WAL segment (label, segment name), where known.
    pub first_segments: Vec<(String, String)>,
}

/// Reads `pgbackrest info --output=json`. A set pgBackRest marks as having errors
/// (e.g. a page checksum it could not verify) is left out: it must not count as a
/// restore point. An interrupted backup never appears in `info` at all. The stanza is
/// an error only when no repository can be read.
pub fn parse_info(json: &str) -> Result<Info, InfoError> {
    // A repository read with another passphrase decrypts to noise, and pgBackRest
    // quotes that noise, raw control bytes included, in the repository's status
    // message: JSON no parser accepts. Outside strings a control character can only
    // be whitespace, so a space in its place keeps the structure and the message.
    let json: String = json
        .chars()
        .map(|c| if u32::from(c) < 0x20 { ' ' } else { c })
        .collect();
    let stanzas: Vec<InfoStanza> = serde_json::from_str(&json)?;
    let stanza = stanzas
        .into_iter()
        .find(|s| s.name == STANZA)
        .ok_or(InfoError::NoStanza)?;
    let usable = |code: i64| code == 0 || code == STATUS_NO_BACKUP;
    let broken_repos: Vec<(u8, String)> = stanza
        .repo
        .iter()
        .filter(|r| !usable(r.status.code))
        .map(|r| (r.key, r.status.message.clone()))
        .collect();
    let some_repo_works = stanza.repo.iter().any(|r| usable(r.status.code));
    if !usable(stanza.status.code) && !some_repo_works {
        // The stanza's own message is a summary ("other"); the repositories' say why.
        let why = if broken_repos.is_empty() {
            stanza.status.message
        } else {
            broken_repos
                .iter()
                .map(|(_, m)| m.trim())
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(InfoError::Status(why));
    }
    let complete: Vec<InfoBackup> = stanza
        .backup
        .into_iter()
        .filter(|b| b.error != Some(true))
        .collect();
    let first_segments = complete
        .iter()
        .filter_map(|b| {
            let start = b.archive.as_ref()?.start.clone()?;
            Some((b.label.clone(), start))
        })
        .collect();
    let mut sets: Vec<BackupSet> = complete
        .into_iter()
        .filter_map(|b| {
            let kind = match b.kind.as_str() {
                "full" => BackupKind::Full,
                "diff" => BackupKind::Diff,
                "incr" => BackupKind::Incr,
                _ => return None,
            };
            Some(BackupSet {
                label: b.label,
                kind,
                started_unix: b.timestamp.start,
                stopped_unix: b.timestamp.stop,
                database_bytes: b.info.size,
                repo_bytes: b.info.repository.delta,
                repo: b.database.map_or(REPO_LOCAL, |d| d.repo_key),
            })
        })
        .collect();
    sets.sort_by_key(|s| s.stopped_unix);
    Ok(Info {
        sets,
        broken_repos,
        first_segments,
    })
}

impl super::Backups {
    /// Writes pgBackRest's configuration files; with a cluster, again before each use
    /// that reaches the peers (the ones that answer change).
    pub(super) fn write_configs(&self) -> Result<(), super::BackupError> {
        let owner = self.owner()?;
        let root = crate::owned_files::Owner { uid: 0, gid: 0 };
        // A share of the data disk may wait for an unreachable repository; past it
        // pgBackRest drops WAL instead of filling the disk.
        let queue_mib = crate::postgres::wal_budget::WalBudget::for_disk(self.data_disk_bytes)
            .archive_queue_mib;
        for repos in Repos::needed(&self.cfg) {
            let mut conf = render_config(&self.cfg, repos, self.pg_port, queue_mib);
            if let (Some(c), Repos::Both | Repos::Local) = (&self.cluster, repos) {
                conf.push_str(&c.pg_host_lines(self.pg_port));
            }
            let path = Path::new(repos.config_file());
            match repos.runs_as_root() {
                true => crate::owned_files::write_file(path, conf.as_bytes(), 0o600, root)?,
                false => crate::owned_files::write_file(path, conf.as_bytes(), 0o640, owner)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackupConfig {
        BackupConfig::with_defaults("/dev/vdc")
    }

    #[test]
    fn config_has_time_retention_async_archiving_and_a_bounded_queue() {
        let c = render_config(&cfg(), Repos::Local, 5432, 1024);
        for line in [
            "repo1-path=/backup/pgbackrest",
            "repo1-retention-full-type=time",
            "repo1-retention-full=7",
            "archive-async=y",
            "archive-push-queue-max=1024MiB",
            "spool-path=/backup/work/spool",
            "[sovereign]",
            "pg1-path=/data/postgres",
            "pg1-port=5432",
            "pg1-socket-path=/run/postgresql",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing in\n{c}");
        }
        assert!(archive_settings(&cfg(), true).contains("archive_mode = always\n"));
        let a = archive_settings(&cfg(), false);
        assert!(a.contains("archive_mode = on"), "{a}");
        assert!(a.contains("archive_timeout = 60"), "{a}");
        assert!(
            a.contains(
                "--config=/run/pgbackrest/pgbackrest-repo1.conf --stanza=sovereign archive-push %p'"
            ),
            "{a}"
        );
    }

    fn with_offsite() -> BackupConfig {
        BackupConfig {
            offsite: Some(protocol::backup::OffsiteConfig {
                host: "backup-node".into(),
                port: 22,
                user: "sovereign".into(),
                path: "/srv/repo".into(),
                host_key: "ssh-ed25519 AAAA".into(),
                private_key: protocol::config::Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----"),
                passphrase: protocol::config::Secret::new("a-long-backup-passphrase-1234"),
            }),
            ..cfg()
        }
    }

    #[test]
    fn each_set_of_repositories_names_only_its_own() {
        let c = with_offsite();
        let has = |repos, prefix: &str| {
            render_config(&c, repos, 5432, 64)
                .lines()
                .any(|l| l.starts_with(prefix))
        };
        assert_eq!(
            Repos::needed(&c),
            [Repos::Both, Repos::Local, Repos::Offsite]
        );
        assert_eq!(Repos::needed(&cfg()), [Repos::Both, Repos::Local]);
        assert!(has(Repos::Both, "repo1-path=") && has(Repos::Both, "repo2-path="));
        assert!(has(Repos::Local, "repo1-path=") && !has(Repos::Local, "repo2-"));
        assert!(has(Repos::Offsite, "repo2-path=") && !has(Repos::Offsite, "repo1-"));
        // The queue bound needs pg_wal's archive_status, which only repo1's pushes have.
        assert!(!has(Repos::Offsite, "archive-push-queue-max"));
        assert!(has(Repos::Local, "archive-push-queue-max=64MiB"));
        // What names repo2 runs as root, with root's lock and logs; repo1 as postgres.
        assert!(Repos::Both.runs_as_root() && Repos::Offsite.runs_as_root());
        assert!(!Repos::Local.runs_as_root() && !Repos::Recovery.runs_as_root());
        assert!(has(Repos::Offsite, "lock-path=/run/pgbackrest-root/lock"));
        assert!(has(Repos::Local, "lock-path=/run/pgbackrest/lock"));
        assert!(has(
            Repos::Recovery,
            "repo2-sftp-private-key-file=/run/pgbackrest/recovery"
        ));
        // postgres's restore_command reads the host key where postgres can.
        assert!(has(
            Repos::Recovery,
            "repo2-sftp-known-host=/run/pgbackrest/recovery-known-hosts"
        ));
        // postgres's runs log where postgres can write.
        let recovery = render_config(&c, Repos::Recovery, 5432, 64);
        assert!(
            recovery.lines().any(|l| l == "log-path=/backup/work/log"),
            "{recovery}"
        );
        assert_eq!(Repos::for_args(&["--repo=2".into()]), Repos::Offsite);
        assert_eq!(Repos::for_args(&["--repo=1".into()]), Repos::Local);
        assert_eq!(Repos::for_args(&[]), Repos::Both);
        // Without repo2 configured, Both names repo1 alone.
        let both = render_config(&cfg(), Repos::Both, 5432, 64);
        assert!(
            both.contains("repo1-path=") && !both.contains("repo2-"),
            "{both}"
        );
    }

    /// Shape of `pgbackrest info --output=json` (2.5x), trimmed to what is read.
    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1",
        "max":"000000010000000000000007","min":"000000010000000000000001"}],
        "backup":[
          {"label":"20261202-160405F_20261203-010000D","type":"diff",
           "timestamp":{"start":1764727200,"stop":1764727260},
           "info":{"size":31000000,"delta":2000000,"repository":{"size":4000000,"delta":300000}},
           "error":false},
          {"label":"20261202-160405F","type":"full",
           "archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},
           "timestamp":{"start":1764691445,"stop":1764691500},
           "info":{"size":30000000,"delta":30000000,"repository":{"size":3900000,"delta":3900000}},
           "error":false},
          {"label":"20261202-170000I","type":"incr",
           "timestamp":{"start":1764694800,"stop":1764694810},
           "info":{"size":30000000,"delta":10,"repository":{"size":1,"delta":1}},
           "error":true}],
        "cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7,"version":"17"}],
        "name":"sovereign","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],
        "status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn info_gives_complete_sets_oldest_first() {
        let sets = parse_info(INFO).unwrap().sets;
        assert_eq!(sets.len(), 2, "the set with errors is left out: {sets:?}");
        assert_eq!(sets[0].label, "20261202-160405F");
        assert_eq!(sets[0].kind, BackupKind::Full);
        assert_eq!(sets[0].stopped_unix, 1764691500);
        assert_eq!(sets[0].repo_bytes, 3900000);
        assert_eq!(sets[1].kind, BackupKind::Diff);
        assert_eq!(sets[1].database_bytes, 31000000);
        assert_eq!(sets[1].repo, REPO_LOCAL);
        assert_eq!(
            parse_info(INFO).unwrap().first_segments,
            [(
                "20261202-160405F".to_string(),
                "000000010000000000000003".to_string()
            )]
        );
    }

    #[test]
    fn one_unreachable_repository_leaves_the_other_readable() {
        let mixed = r#"[{"name":"sovereign",
            "backup":[{"label":"20261202-160405F","type":"full",
              "timestamp":{"start":1764691445,"stop":1764691500},
              "info":{"size":3,"repository":{"delta":2}},
              "database":{"id":1,"repo-key":2}}],
            "repo":[{"key":1,"status":{"code":2,"message":"no valid backups"}},
                    {"key":2,"status":{"code":99,"message":"[104]: unable to connect"}}],
            "status":{"code":99,"message":"other"}}]"#;
        let info = parse_info(mixed).unwrap();
        assert_eq!(info.sets[0].repo, 2);
        assert_eq!(
            info.broken_repos,
            vec![(2, "[104]: unable to connect".to_string())]
        );
        let all_broken = mixed.replace(
            r#""code":2,"message":"no valid backups""#,
            r#""code":99,"message":"x""#,
        );
        assert!(matches!(parse_info(&all_broken), Err(InfoError::Status(_))));
    }

    #[test]
    fn options_come_before_the_command_and_parameters_after() {
        let a = args_with(
            "/c.conf",
            "archive-get",
            &[
                "--repo=1".into(),
                "000000010000000000000001".into(),
                "/x/y".into(),
            ],
        );
        assert_eq!(
            a,
            [
                "--config=/c.conf",
                "--stanza=sovereign",
                "--repo=1",
                "archive-get",
                "000000010000000000000001",
                "/x/y"
            ]
        );
    }

    #[test]
    fn a_repository_read_with_another_passphrase_still_parses_and_says_why() {
        // What pgBackRest 2.55 prints for an encrypted repository read with another
        // cipher-pass: the decrypted noise, control bytes and all, in the message.
        let info = "[{\"archive\":[],\"backup\":[],\"cipher\":\"aes-256-cbc\",\"db\":[],\"name\":\"sovereign\",\"repo\":[{\"cipher\":\"aes-256-cbc\",\"key\":2,\"status\":{\"code\":99,\"message\":\"[FormatError] unable to load info file '/r/backup/sovereign/backup.info':\\nFormatError: key/value found outside of section at line 1: \u{7}\u{11}o\u{fffd}#\u{1f}\tb\u{0}\"}}],\"status\":{\"code\":99,\"message\":\"other\"}}]";
        let e = parse_info(info).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "the repository's stanza is not usable: [FormatError] unable to load info file"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_missing_or_broken_stanza_is_an_error() {
        assert!(matches!(parse_info("[]"), Err(InfoError::NoStanza)));
        let broken = r#"[{"name":"sovereign","backup":[],
            "status":{"code":1,"message":"missing stanza path"}}]"#;
        let e = parse_info(broken).unwrap_err().to_string();
        assert!(e.contains("missing stanza path"), "{e}");
        let empty = r#"[{"name":"sovereign","backup":[],
            "status":{"code":2,"message":"no valid backups"}}]"#;
        assert_eq!(parse_info(empty).unwrap(), Info::default());
        assert!(matches!(parse_info("{"), Err(InfoError::Json(_))));
    }
}
