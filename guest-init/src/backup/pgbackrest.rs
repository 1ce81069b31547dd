//! pgBackRest as PID 1 runs it: its configuration file (rendered from the host's
//! [`BackupConfig`]), the lines postgresql.conf needs for continuous archiving, and the
//! catalog `pgbackrest info --output=json` prints, read into the protocol's
//! [`BackupSet`]s.

use protocol::backup::{BackupConfig, BackupKind, BackupSet, REPO_LOCAL};
use serde::Deserialize;
use thiserror::Error;

/// The one stanza (pgBackRest's name for a cluster and its repositories).
pub const STANZA: &str = "sovereign";

/// The configuration file, rewritten on every boot (tmpfs: nothing stale survives).
pub const CONFIG_FILE: &str = "/run/pgbackrest/pgbackrest.conf";

/// The same without repo2: for PostgreSQL's `archive_command` (WAL reaches repo2 by
/// [`super::shipping`], never through the archiver) and for the one command that knows
/// no `--repo` (stanza-create) when repo2 is out of reach.
pub const LOCAL_CONFIG_FILE: &str = "/run/pgbackrest/pgbackrest-repo1.conf";

/// The same with repo2 alone, for pushing shipped WAL into it.
pub const OFFSITE_CONFIG_FILE: &str = "/run/pgbackrest/pgbackrest-repo2.conf";

/// Where the backup disk is mounted; repo1 lives under it.
pub const BACKUP_MOUNT: &str = "/backup";

/// repo1: the repository on the backup disk.
pub const REPO1_PATH: &str = "/backup/pgbackrest";

/// Async archiving's spool and pgBackRest's logs, on the backup disk: when the data
/// disk fills up, the archiver must still be able to write its status files and logs,
/// or it stops taking WAL and the WAL it leaves behind keeps the disk full.
pub const WORK_DIR: &str = "/backup/work";

/// The pgBackRest binary in the root image.
pub const PROGRAM: &str = "/usr/bin/pgbackrest";

/// Renders pgbackrest.conf. `queue_max_mib` bounds the WAL the async archiver keeps
/// queued while the repository is unreachable: past it, pgBackRest drops WAL (and
/// says so) rather than letting the data disk fill up, which breaks point-in-time
/// recovery (status then says so) but never the database.
pub fn render_config(cfg: &BackupConfig, pg_port: u16, queue_max_mib: u64) -> String {
    format!(
        "# Written by sovereign-init on every boot from the host's backup settings.\n\
         [global]\n\
         repo1-path={REPO1_PATH}\n\
         repo1-retention-full-type=time\n\
         repo1-retention-full={retention}\n\
         repo1-bundle=y\n\
         compress-type=lz4\n\
         archive-async=y\n\
         archive-push-queue-max={queue_max_mib}MiB\n\
         archive-timeout=120\n\
         spool-path={WORK_DIR}/spool\n\
         lock-path=/run/pgbackrest/lock\n\
         log-path={WORK_DIR}/log\n\
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
         pg1-socket-path={socket}\n",
        offsite = cfg
            .offsite
            .as_ref()
            .map(|o| super::offsite::config_lines(o, cfg.retention_days))
            .unwrap_or_default(),
        retention = cfg.retention_days,
        data = crate::postgres::DATA_DIR,
        socket = crate::postgres::config::SOCKET_DIR,
    )
}

/// The postgresql.conf lines for continuous archiving through pgBackRest.
pub fn archive_settings(cfg: &BackupConfig) -> String {
    format!(
        "# Continuous archiving to pgBackRest (async push)\n\
         archive_mode = on\n\
         archive_command = '{PROGRAM} --config={LOCAL_CONFIG_FILE} --stanza={STANZA} archive-push %p'\n\
         archive_timeout = {}\n",
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
    let stanzas: Vec<InfoStanza> = serde_json::from_str(json)?;
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
        return Err(InfoError::Status(stanza.status.message));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackupConfig {
        BackupConfig::with_defaults("/dev/vdc")
    }

    #[test]
    fn config_has_time_retention_async_archiving_and_a_bounded_queue() {
        let c = render_config(&cfg(), 5432, 1024);
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
        let a = archive_settings(&cfg());
        assert!(a.contains("archive_mode = on"), "{a}");
        assert!(a.contains("archive_timeout = 60"), "{a}");
        assert!(
            a.contains(
                "--config=/run/pgbackrest/pgbackrest-repo1.conf --stanza=sovereign archive-push %p'"
            ),
            "{a}"
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
