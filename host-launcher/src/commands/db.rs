//! `sovereign db list` and `db url`: the app databases as the guest has them, and the
//! connection string an app on another tailnet node uses. (`db dump` and `db restore`
//! move data: see [`super::transfer`].)

use super::query::query;
use crate::conninfo::{self, Format, Target};
use crate::spec::Spec;
use serde::Serialize;
use std::path::Path;

/// One database in the guest, as `db list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbEntry {
    /// Its name.
    pub name: String,
    /// The role that owns it.
    pub owner: String,
    /// Its size on disk.
    pub bytes: u64,
    /// Sessions connected to it now.
    pub connections: u64,
    /// Its role's connection limit (`None`: no role of that name, or no limit).
    pub connection_limit: Option<u32>,
    /// What it is to the spec.
    pub kind: DbKind,
}

/// What a database is to the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DbKind {
    /// An app the spec names.
    App,
    /// The copy `db restore` kept of an app's previous database.
    KeptByRestore,
    /// A database the spec no longer names: kept, never dropped by the launcher.
    Orphan,
}

/// Lists every non-template database but `postgres`, one line each.
const LIST_SQL: &str = "select d.datname, r.rolname, pg_database_size(d.oid), \
     (select count(*) from pg_stat_activity a where a.datname = d.datname), \
     coalesce(nullif(o.rolconnlimit, -1)::text, '') \
     from pg_database d join pg_roles r on r.oid = d.datdba \
     left join pg_roles o on o.rolname = d.datname \
     where not d.datistemplate and d.datname <> 'postgres' order by 1";

/// Reads psql's `-A -t` lines of [`LIST_SQL`].
pub fn parse_list(output: &str, spec_apps: &[&str]) -> Vec<DbEntry> {
    output
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let [name, owner, bytes, connections, limit] = f.as_slice() else {
                return None;
            };
            let kind = if spec_apps.contains(name) {
                DbKind::App
            } else if name.contains("_before_restore_") {
                DbKind::KeptByRestore
            } else {
                DbKind::Orphan
            };
            Some(DbEntry {
                name: name.to_string(),
                owner: owner.to_string(),
                bytes: bytes.parse().ok()?,
                connections: connections.parse().ok()?,
                connection_limit: limit.parse().ok(),
                kind,
            })
        })
        .collect()
}

/// The table `db list` prints.
pub fn render_list(entries: &[DbEntry]) -> String {
    let mut out = format!(
        "{:<32} {:<16} {:>10} {:>12}  {}\n",
        "DATABASE", "OWNER", "SIZE", "CONNECTIONS", "WHAT"
    );
    for e in entries {
        let limit = e
            .connection_limit
            .map_or_else(|| "-".to_string(), |l| l.to_string());
        out.push_str(&format!(
            "{:<32} {:<16} {:>10} {:>12}  {}\n",
            e.name,
            e.owner,
            super::backup::size(e.bytes),
            format!("{}/{limit}", e.connections),
            match e.kind {
                DbKind::App => "app in the spec",
                DbKind::KeptByRestore => "kept by `db restore` (drop it by hand when sure)",
                DbKind::Orphan => "orphan: no longer in the spec, kept",
            }
        ));
    }
    out
}

/// The database itself, as `status` shows it: the server's role and uptime, its
/// connections against `max_connections`, and every database with its role's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseView {
    /// `primary`, or `replica` while the server is in recovery.
    pub role: String,
    /// Seconds since the postmaster started.
    pub server_uptime_secs: u64,
    /// Client sessions now.
    pub connections: u64,
    /// The server's `max_connections`.
    pub max_connections: u64,
    /// The app databases, kept copies and orphans.
    pub databases: Vec<DbEntry>,
}

/// The server's role, uptime, connections and limit, one `|`-separated line.
const SERVER_SQL: &str = "select case when pg_is_in_recovery() then 'replica' else 'primary' end,      extract(epoch from now() - pg_postmaster_start_time())::bigint,      (select count(*) from pg_stat_activity where backend_type = 'client backend'),      current_setting('max_connections')";

/// Reads [`SERVER_SQL`]'s line.
fn parse_server(line: &str) -> Option<(String, u64, u64, u64)> {
    let f: Vec<&str> = line.trim().split('|').collect();
    let [role, uptime, connections, max] = f.as_slice() else {
        return None;
    };
    Some((
        role.to_string(),
        uptime.parse().ok()?,
        connections.parse().ok()?,
        max.parse().ok()?,
    ))
}

/// Asks the running server for its [`DatabaseView`]; `None` when it cannot answer.
pub async fn view(spec: &Spec) -> Option<DatabaseView> {
    let server = query(spec, SERVER_SQL).await.ok()?.ok()?;
    let (role, server_uptime_secs, connections, max_connections) = parse_server(&server)?;
    let list = query(spec, LIST_SQL).await.ok()?.ok()?;
    let apps: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    Some(DatabaseView {
        role,
        server_uptime_secs,
        connections,
        max_connections,
        databases: parse_list(&list, &apps),
    })
}

/// The lines `status` prints for a [`DatabaseView`].
pub fn render_view(v: &DatabaseView) -> String {
    let mut out = format!(
        "  database: {}, up {}, {}/{} connections\n",
        v.role,
        crate::report::human_duration(v.server_uptime_secs.saturating_mul(1000)),
        v.connections,
        v.max_connections
    );
    for e in &v.databases {
        let limit = e
            .connection_limit
            .map_or_else(|| "-".to_string(), |l| l.to_string());
        let note = match e.kind {
            DbKind::App => "",
            DbKind::KeptByRestore => "  (kept by db restore)",
            DbKind::Orphan => "  (orphan: not in the spec)",
        };
        out.push_str(&format!(
            "    {:<24} {:>10}  {}/{limit} connections{note}\n",
            e.name,
            super::backup::size(e.bytes),
            e.connections
        ));
    }
    out
}

/// `db list [--json]`.
pub async fn list(spec: &Spec, json: bool) -> anyhow::Result<i32> {
    let output = match query(spec, LIST_SQL).await? {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cannot list the databases: {e}");
            return Ok(1);
        }
    };
    let apps: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    let entries = parse_list(&output, &apps);
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", render_list(&entries));
        for missing in apps
            .iter()
            .filter(|a| !entries.iter().any(|e| &e.name == *a))
        {
            eprintln!("app {missing} is in the spec but has no database yet (it is made at the next start)");
        }
    }
    Ok(0)
}

/// `db drop NAME [--yes] [--output FILE]`: drops a database the spec no longer names
/// (an orphan, or a copy `db restore` kept), after a confirmation and a dump.
pub async fn drop(
    spec: &Spec,
    name: &str,
    yes: bool,
    output: Option<&Path>,
) -> anyhow::Result<i32> {
    if spec.apps.iter().any(|a| a.name == name) {
        anyhow::bail!(
            "{name} is an app in the spec of VM {}: remove its [[apps]] entry first (the next start would make it again, empty)",
            spec.name
        );
    }
    let entries = match query(spec, LIST_SQL).await? {
        Ok(out) => parse_list(&out, &[]),
        Err(e) => anyhow::bail!("cannot list the databases: {e}"),
    };
    let Some(entry) = entries
        .iter()
        .find(|e| e.name == name && protocol::config::is_sql_identifier(name))
    else {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        anyhow::bail!(
            "VM {} has no database {name:?} that can be dropped (its databases: {})",
            spec.name,
            names.join(", ")
        );
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = match output {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = spec
                .data_disk
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join("dumps");
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            dir.join(format!("{}-{name}-{stamp}.dump", spec.name))
        }
    };
    let question = format!(
        "Drop database {name} ({}) of VM {}? It is dumped to {} first.",
        super::backup::size(entry.bytes),
        spec.name,
        path.display()
    );
    if !yes && !super::backup::ask_yes(&question)? {
        eprintln!("nothing dropped");
        return Ok(2);
    }
    if super::transfer::dump_any(spec, name, Some(&path))? != 0 {
        eprintln!("the dump failed: nothing dropped");
        return Ok(1);
    }
    match query(spec, &format!("DROP DATABASE {name} WITH (FORCE)")).await? {
        Ok(_) => {
            println!("dropped {name}; its dump is {}", path.display());
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "DROP DATABASE {name} failed: {e} (its dump is {})",
                path.display()
            );
            Ok(1)
        }
    }
}

/// `db ca`: the CA certificate clients verify the server with (made on first use).
pub fn ca(spec: &Spec) -> anyhow::Result<i32> {
    print!("{}", crate::tls::ca_certificate(spec)?);
    Ok(0)
}

/// `db url APP [--format] [--verify-full CA]`: needs only the spec and the app's
/// password file.
/// With a `[replication]` table the string names both VMs: `read_only` asks for a
/// replica first, otherwise libpq looks for the one that takes writes.
pub fn url(
    spec: &Spec,
    app: &str,
    format: Format,
    verify_with_ca: Option<&str>,
    read_only: bool,
) -> anyhow::Result<i32> {
    let Some(a) = spec.apps.iter().find(|a| a.name == app) else {
        let names: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
        anyhow::bail!(
            "app {app:?} is not in the spec of VM {} (its apps: {})",
            spec.name,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    let password = crate::secrets::read_secret(&a.password_file).map_err(|e| {
        anyhow::anyhow!("{e}; the launcher writes it when the VM first starts with this app")
    })?;
    let target = Target {
        host: &spec.hostname,
        port: spec.postgres.port,
        dbname: &a.name,
        user: &a.name,
        password: password.expose(),
        verify_with_ca,
        cluster: spec.replication.as_ref().map(|r| {
            (
                r.peer.as_str(),
                if read_only {
                    conninfo::Session::PreferStandby
                } else {
                    conninfo::Session::ReadWrite
                },
            )
        }),
    };
    println!("{}", conninfo::render(&target, format));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_line_reads_and_renders() {
        let (role, up, conns, max) = parse_server("primary|3725|3|50\n").unwrap();
        let v = DatabaseView {
            role,
            server_uptime_secs: up,
            connections: conns,
            max_connections: max,
            databases: parse_list("forgejo|forgejo|8000000|2|20\nold|old|1|0|\n", &["forgejo"]),
        };
        let text = render_view(&v);
        assert!(text.starts_with("  database: primary, up 1h"), "{text}");
        assert!(text.contains("3/50 connections"), "{text}");
        assert!(text.contains("2/20 connections"), "{text}");
        assert!(text.contains("old") && text.contains("orphan"), "{text}");
        assert!(parse_server("garbage").is_none());
    }

    #[test]
    fn the_list_tells_apps_from_orphans_and_kept_copies() {
        let out = "forgejo|forgejo|8000000|2|20\n\
                   forgejo_before_restore_1796227445|forgejo|7000000|0|\n\
                   oldapp|oldapp|100|0|5\n\
                   garbage line\n";
        let e = parse_list(out, &["forgejo", "vaultwarden"]);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].kind, DbKind::App);
        assert_eq!(e[0].connection_limit, Some(20));
        assert_eq!(e[1].kind, DbKind::KeptByRestore);
        assert_eq!(e[1].connection_limit, None);
        assert_eq!(e[2].kind, DbKind::Orphan);
        let table = render_list(&e);
        assert!(
            table.contains("2/20") && table.contains("orphan"),
            "{table}"
        );
    }
}
