//! `sovereign db`: the app databases as the guest has them (`list`, the view `status`
//! shows), the connection string an app on another tailnet node uses (`url`, `ca`),
//! and dropping what the spec no longer names (`drop`). Adding an app and rotating its
//! password are [`roles`]; dumps and restores of one app are [`dump`].

pub mod dump;
pub mod roles;

use crate::commands::query::query;
use crate::conninfo::{self, Format, Target};
use crate::spec::Spec;
use protocol::status::{DatabaseView, DbEntry, DbKind, ServerFacts, DATABASE_SQL};
use std::path::Path;

/// Every database but `postgres` and the templates, as the server has them, sorted by
/// what each is to a spec whose apps are `apps`.
async fn databases(spec: &Spec, apps: &[&str]) -> anyhow::Result<Result<Vec<DbEntry>, String>> {
    Ok(match query(spec, DATABASE_SQL).await? {
        Ok(out) => ServerFacts::parse(&out)
            .map(|f| f.view(apps, &[]).databases)
            .ok_or_else(|| format!("the server's answer is not what was asked for: {out:?}")),
        Err(e) => Err(e.to_string()),
    })
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
            crate::terminal::size(e.bytes),
            format!("{}/{limit}", e.connections),
            match e.kind {
                DbKind::App => "app in the spec",
                DbKind::KeptByRestore => "kept by `db restore` (drop it by hand when sure)",
                DbKind::Orphan => "orphan: no longer in the spec, kept",
                DbKind::Loading => "being loaded by `db restore`",
            }
        ));
    }
    out
}

/// Asks the running server for its [`DatabaseView`]; `None` when it cannot answer.
pub async fn view(spec: &Spec) -> Option<DatabaseView> {
    let out = query(spec, DATABASE_SQL).await.ok()?.ok()?;
    let apps: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    let settings: Vec<&str> = spec.postgres.settings.keys().map(String::as_str).collect();
    Some(ServerFacts::parse(&out)?.view(&apps, &settings))
}

/// The lines `status` prints for a [`DatabaseView`].
pub fn render_view(v: &DatabaseView) -> String {
    let mut out = format!(
        "  database: {}, up {}, {}/{} connections\n",
        v.role,
        crate::terminal::human_duration(v.server_uptime_secs.saturating_mul(1000)),
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
            DbKind::Loading => "  (being loaded by db restore)",
        };
        out.push_str(&format!(
            "    {:<24} {:>10}  {}/{limit} connections{note}\n",
            e.name,
            crate::terminal::size(e.bytes),
            e.connections
        ));
    }
    out.push_str(&render_settings(&v.settings));
    out
}

/// The tunables that differ from PostgreSQL's defaults, those the spec set marked; the
/// project's fixed settings (logging, locale, WAL) are in `status --json`.
fn render_settings(settings: &[protocol::pg_settings::SettingView]) -> String {
    let shown: Vec<String> = settings
        .iter()
        .filter(|s| protocol::pg_settings::is_tunable(&s.name))
        .map(|s| {
            let mark = if s.from_spec { " (spec)" } else { "" };
            format!("{} {}{mark}", s.name, s.value)
        })
        .collect();
    if shown.is_empty() {
        return String::new();
    }
    format!("  settings: {}\n", shown.join(", "))
}

/// `db list [--json]`.
pub async fn list(spec: &Spec, json: bool) -> anyhow::Result<i32> {
    let apps: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    let entries = match databases(spec, &apps).await? {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot list the databases: {e}");
            return Ok(1);
        }
    };
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
    let entries = match databases(spec, &[]).await? {
        Ok(e) => e,
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
            crate::private_file::ensure_directory(&dir)?;
            dir.join(format!("{}-{name}-{stamp}.dump", spec.name))
        }
    };
    let question = format!(
        "Drop database {name} ({}) of VM {}? It is dumped to {} first.",
        crate::terminal::size(entry.bytes),
        spec.name,
        path.display()
    );
    if !yes && !crate::terminal::ask_yes(&question)? {
        eprintln!("nothing dropped");
        return Ok(2);
    }
    if dump::dump_any(spec, name, Some(&path))? != 0 {
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
/// With a `[replication]` table the string names every VM: `read_only` asks for a
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
                r.peers.as_slice(),
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

    fn entry(name: &str, kind: DbKind, limit: Option<u32>) -> DbEntry {
        DbEntry {
            name: name.into(),
            owner: name.into(),
            bytes: 8_000_000,
            connections: 2,
            connection_limit: limit,
            kind,
        }
    }

    #[test]
    fn the_view_renders_the_server_and_each_database() {
        let v = DatabaseView {
            role: "primary".into(),
            server_uptime_secs: 3725,
            connections: 3,
            max_connections: 50,
            databases: vec![
                entry("forgejo", DbKind::App, Some(20)),
                entry("old", DbKind::Orphan, None),
            ],
            settings: [
                ("log_timezone", "UTC", false),
                ("shared_buffers", "128MB", false),
                ("work_mem", "8MB", true),
            ]
            .into_iter()
            .map(
                |(name, value, from_spec)| protocol::pg_settings::SettingView {
                    name: name.into(),
                    value: value.into(),
                    from_spec,
                },
            )
            .collect(),
        };
        let text = render_view(&v);
        assert!(text.starts_with("  database: primary, up 1h"), "{text}");
        assert!(
            text.contains("  settings: shared_buffers 128MB, work_mem 8MB (spec)\n"),
            "{text}"
        );
        assert!(text.contains("3/50 connections"), "{text}");
        assert!(text.contains("2/20 connections"), "{text}");
        assert!(text.contains("old") && text.contains("orphan"), "{text}");
    }

    #[test]
    fn the_list_tells_apps_from_orphans_and_kept_copies() {
        let e = [
            entry("forgejo", DbKind::App, Some(20)),
            entry(
                "forgejo_before_restore_1796227445",
                DbKind::KeptByRestore,
                None,
            ),
            entry("oldapp", DbKind::Orphan, Some(5)),
        ];
        let table = render_list(&e);
        assert!(
            table.contains("2/20") && table.contains("orphan") && table.contains("kept by"),
            "{table}"
        );
    }
}
