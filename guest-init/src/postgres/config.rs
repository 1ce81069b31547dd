//! What PostgreSQL is told: the server binaries to use, postgresql.conf (sized for the
//! VM's memory, listening on localhost and the tailnet only), pg_hba.conf (scram-sha-256
//! from the tailnet ranges and nothing else) and the provisioning SQL (passwords as
//! SCRAM verifiers, never plaintext). Pure functions, tested on their text.

use super::wal_budget::WalBudget;
use protocol::config::PostgresConfig;
use protocol::provision;
use std::fs;
use std::path::{Path, PathBuf};

/// Where the server puts its unix socket.
pub const SOCKET_DIR: &str = "/run/postgresql";
/// Address ranges allowed to connect over TCP: the tailnet's, and nothing else.
pub const ALLOWED_NETWORKS: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

/// Locates `/usr/lib/postgresql/<major>/bin`, preferring the highest major.
pub fn find_bin_dir(root: &Path) -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir(root.join("usr/lib/postgresql"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// postgresql.conf: memory settings as `memory` says (derived from the VM's memory, see
/// [`protocol::pg_settings`]), WAL sized to the data disk (`wal`); `listen` adds to
/// localhost. The spec's overrides are appended by the caller, last.
pub fn render_postgresql_conf(
    port: u16,
    listen: &[String],
    jit: bool,
    wal: &WalBudget,
    memory: &str,
) -> String {
    let mut addrs = vec!["localhost".to_string()];
    addrs.extend(listen.iter().cloned());
    format!(
        "# Written by sovereign-init on every boot; edits here are overwritten.\n\
         listen_addresses = '{listen}'\n\
         port = {port}\n\
         unix_socket_directories = '{SOCKET_DIR}'\n\
         password_encryption = scram-sha-256\n\
         {memory}\
         dynamic_shared_memory_type = posix\n\
         # Planner: the phone's flash is random-access like an SSD\n\
         random_page_cost = 1.1\n\
         effective_io_concurrency = 200\n\
         default_statistics_target = 100\n\
         # Durability: every commit reaches the disk\n\
         fsync = on\n\
         synchronous_commit = on\n\
         full_page_writes = on\n\
         wal_level = replica\n\
         {wal}\
         checkpoint_completion_target = 0.9\n\
         jit = {jit}\n\
         # Logging, on the data disk\n\
         logging_collector = on\n\
         log_directory = 'log'\n\
         log_filename = 'postgresql-%a.log'\n\
         log_truncate_on_rotation = on\n\
         log_rotation_age = 1d\n\
         log_connections = on\n\
         log_disconnections = on\n\
         log_statement = 'ddl'\n\
         log_line_prefix = '%m [%p] %q%u@%d from %h '\n\
         log_timezone = 'UTC'\n\
         timezone = 'UTC'\n\
         datestyle = 'iso, mdy'\n\
         lc_messages = 'C'\n\
         lc_monetary = 'C'\n\
         lc_numeric = 'C'\n\
         lc_time = 'C'\n\
         default_text_search_config = 'pg_catalog.english'\n",
        listen = addrs.join(","),
        jit = if jit { "on" } else { "off" },
        wal = wal.postgresql_conf_lines(),
    )
}

/// The pg_ident.conf map the unix socket's peer authentication goes through.
pub const IDENT_MAP: &str = "local";

/// pg_ident.conf: the `postgres` account is the superuser; it may also open a session
/// as any other role, which is how a `db restore` loads an app's dump with that app's
/// rights only (a dump can `RESET ROLE`, but never past its session's role). root (PID
/// 1's pgBackRest runs for repo2, which hold its key) connects as the superuser. No
/// other account of the guest maps to any role.
pub fn render_pg_ident() -> String {
    format!(
        "# Written by sovereign-init on every boot; edits here are overwritten.\n\
         # MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n\
         {IDENT_MAP}  postgres  /^[a-z_][a-z0-9_]*$\n\
         {IDENT_MAP}  root  postgres\n"
    )
}

/// pg_hba.conf: peer over the unix socket, scram-sha-256 from the tailnet, nothing else.
/// Without `superuser_from_tailnet`, `postgres` is rejected over TCP (the first matching
/// line decides) and keeps only the unix socket. With `replication`, the replication
/// role may stream from the tailnet too.
pub fn render_pg_hba(superuser_from_tailnet: bool, replication: bool) -> String {
    let mut s = String::from(
        "# Written by sovereign-init on every boot; edits here are overwritten.\n\
         # TYPE  DATABASE  USER  ADDRESS  METHOD\n\
         local   all       all            peer map=local\n",
    );
    if !superuser_from_tailnet {
        for net in ALLOWED_NETWORKS {
            s.push_str(&format!("host    all       postgres   {net}  reject\n"));
        }
    }
    for net in ALLOWED_NETWORKS {
        s.push_str(&format!("host    all       all   {net}  scram-sha-256\n"));
    }
    if replication {
        let role = protocol::replication::REPLICATION_ROLE;
        for net in ALLOWED_NETWORKS {
            s.push_str(&format!(
                "host    replication  {role}  {net}  scram-sha-256\n"
            ));
        }
    }
    s
}

/// SQL that sets the superuser's password and creates each app's role and database
/// (see [`protocol::provision`]), each verifier with a salt of its own.
pub fn render_provisioning(cfg: &PostgresConfig, salt: impl Fn() -> [u8; 16]) -> String {
    // With a synchronous replica, a commit waits for it; provisioning must not (it runs
    // before any replica can have connected).
    let mut sql = String::from("SET synchronous_commit = local;\n");
    sql.push_str(&provision::superuser_sql(&cfg.superuser_password, &salt()));
    for app in &cfg.apps {
        sql.push_str(&provision::app_sql(app, &salt()));
    }
    if let Some(r) = &cfg.replication {
        sql.push_str(&protocol::replication::role_sql(
            &r.password,
            &salt(),
            &r.peers,
        ));
    }
    sql
}

/// 16 random bytes from the kernel, for a SCRAM salt.
pub fn random_salt() -> std::io::Result<[u8; 16]> {
    let mut salt = [0u8; 16];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut salt)?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::{AppDatabase, Secret};

    #[test]
    fn hba_allows_only_the_tailnet() {
        let closed = render_pg_hba(false, false);
        let rules: Vec<&str> = closed.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(rules.len(), 5);
        assert!(rules[1].contains(" postgres ") && rules[1].ends_with("reject"));
        assert!(rules[2].contains(" postgres ") && rules[2].ends_with("reject"));
        let hba = render_pg_hba(true, false);
        assert!(!hba.contains("reject") && !hba.contains("replication"));
        let rules: Vec<&str> = hba.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(rules.len(), 3);
        assert!(
            rules[0].starts_with("local") && rules[0].ends_with(&format!("peer map={IDENT_MAP}"))
        );
        assert!(render_pg_ident().contains(&format!("{IDENT_MAP}  postgres  /^")));
        assert!(rules[1].contains("100.64.0.0/10") && rules[1].ends_with("scram-sha-256"));
        assert!(rules[2].contains("fd7a:115c:a1e0::/48") && rules[2].ends_with("scram-sha-256"));
        assert!(!hba.contains("trust") && !hba.contains("0.0.0.0") && !hba.contains("md5"));
        let replicating = render_pg_hba(false, true);
        let streams: Vec<&str> = replicating
            .lines()
            .filter(|l| l.contains(" replication "))
            .collect();
        assert_eq!(streams.len(), 2, "{replicating}");
        assert!(streams
            .iter()
            .all(|l| l.contains(" replicator ") && l.ends_with("scram-sha-256")));
    }

    #[test]
    fn conf_listens_on_localhost_and_the_tailnet_only() {
        let conf = render_postgresql_conf(
            5432,
            &["100.64.0.7".into(), "fd7a:115c:a1e0::7".into()],
            false,
            &WalBudget::for_disk(1 << 30),
            &protocol::pg_settings::derived_lines(1024, &Default::default()),
        );
        assert!(conf.contains("shared_buffers = 128MB\n"));
        assert!(conf.contains("max_connections = 50\n"));
        assert!(conf.contains("max_wal_size = 64MB\n"));
        assert!(conf.contains("listen_addresses = 'localhost,100.64.0.7,fd7a:115c:a1e0::7'\n"));
        assert!(conf.contains("jit = off\n"));
        assert!(conf.contains("log_connections = on\n"));
        let local = render_postgresql_conf(5432, &[], true, &WalBudget::for_disk(0), "");
        assert!(local.contains("listen_addresses = 'localhost'\n"));
        assert!(!local.contains('*'));
    }

    #[test]
    fn provisioning_never_contains_plaintext() {
        let cfg = PostgresConfig {
            superuser_password: Secret::new("super-secret-pw"),
            port: 5432,
            superuser_from_tailnet: true,
            tls: None,
            replication: None,
            memory_mib: 1024,
            settings: Default::default(),
            apps: vec![AppDatabase {
                name: "forgejo".into(),
                password: Secret::new("forgejo-secret-pw"),
                connection_limit: 7,
            }],
        };
        let sql = render_provisioning(&cfg, || [1; 16]);
        assert!(!sql.contains("super-secret-pw") && !sql.contains("forgejo-secret-pw"));
        assert_eq!(sql.matches("SCRAM-SHA-256$4096:").count(), 2);
        assert!(sql.contains("CREATE DATABASE forgejo OWNER forgejo"));
        assert!(sql.contains("CONNECTION LIMIT 7;"));
    }

    #[test]
    fn finds_the_highest_major() {
        let root = tempfile::tempdir().unwrap();
        for major in ["15", "17", "notanumber"] {
            let bin = root
                .path()
                .join("usr/lib/postgresql")
                .join(major)
                .join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("postgres"), "").unwrap();
        }
        assert_eq!(
            find_bin_dir(root.path()).unwrap(),
            root.path().join("usr/lib/postgresql/17/bin")
        );
        assert!(find_bin_dir(&root.path().join("none")).is_none());
    }
}
