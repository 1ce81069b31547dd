//! `db dump` and `db restore`: one app's database out to a file (`pg_dump -Fc`) and a
//! dump back in as that app's database, the current one kept under another name.

use super::super::bulk::{receive, send};
use crate::spec::Spec;
use crate::terminal::ask_yes;
use protocol::transfer::Transfer;
use std::path::Path;

/// Refuses an app the spec does not name, listing the ones it does.
fn known_app(spec: &Spec, app: &str) -> anyhow::Result<()> {
    if spec.apps.iter().any(|a| a.name == app) {
        return Ok(());
    }
    let names: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    anyhow::bail!(
        "app {app:?} is not in the spec of VM {} (its apps: {})",
        spec.name,
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// `db dump APP [--output FILE]`: `pg_dump -Fc` of the app's database.
pub fn dump(spec: &Spec, app: &str, output: Option<&Path>) -> anyhow::Result<i32> {
    known_app(spec, app)?;
    dump_any(spec, app, output)
}

/// `pg_dump -Fc` of any database but `postgres` (an app's, an orphan, a kept copy).
pub fn dump_any(spec: &Spec, name: &str, output: Option<&Path>) -> anyhow::Result<i32> {
    eprintln!("dumping database {name} (pg_dump -Fc) ...");
    // A dump stays a plain `pg_dump -Fc` archive that pg_restore reads anywhere.
    receive(spec, Transfer::DumpApp { app: name.into() }, output, None)
}

/// `db restore APP FILE`: loads a dump into the app's database; the current one is
/// kept under another name.
pub fn restore(spec: &Spec, app: &str, file: &Path, yes: bool) -> anyhow::Result<i32> {
    known_app(spec, app)?;
    let question = format!(
        "Replace the database of app {app} with the dump {}? Its sessions are ended; the current database is kept under another name.",
        file.display()
    );
    if !yes && !ask_yes(&question)? {
        eprintln!("nothing restored");
        return Ok(2);
    }
    send(spec, file, None, |bytes| Transfer::RestoreApp {
        app: app.into(),
        bytes,
    })
}
