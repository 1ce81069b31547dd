//! The verbs that move bulk data: `backup export`, `restore --from-export`,
//! `db dump` and `db restore`. The bytes go over their own data connection
//! ([`crate::transfer`]); a file being written is named `*.partial` until the stream's
//! SHA-256 checked out, so a cut export never looks like a whole one.

use super::backup::{ask_yes, size};
use super::running_spec;
use crate::rundir::RunDir;
use crate::spec::Spec;
use crate::transfer::{self, TransferError};
use protocol::backup::RestoreTarget;
use protocol::transfer::{Transfer, TransferAnswer};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a received file is called until it is whole.
fn partial_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Prints a transfer's outcome; the exit code.
fn report(result: Result<TransferAnswer, TransferError>, started: Instant) -> i32 {
    match result {
        Ok(a) if a.ok => {
            eprintln!(
                "{} ({} in {:.1} s, sha256 {})",
                a.message,
                size(a.bytes),
                started.elapsed().as_secs_f64(),
                a.sha256.as_deref().unwrap_or("?")
            );
            0
        }
        Ok(a) => {
            eprintln!("failed: {}", a.message);
            1
        }
        Err(e) => {
            eprintln!("failed: {e}");
            1
        }
    }
}

/// Runs a guest → host transfer into `output` (a file, written as `*.partial` and
/// renamed once whole) or into stdout (refused on a terminal).
fn receive(spec: &Spec, what: Transfer, output: Option<&Path>) -> anyhow::Result<i32> {
    let run = RunDir::new(&running_spec(spec).run_dir);
    let started = Instant::now();
    let Some(path) = output else {
        let stdout = io::stdout();
        if stdout.is_terminal() {
            anyhow::bail!("refusing to write binary data to a terminal: redirect stdout to a file or pass --output FILE");
        }
        let mut out = stdout.lock();
        let result = transfer::run(&run, what, &mut io::empty(), &mut out);
        let code = report(result, started);
        if code != 0 {
            eprintln!("what was written to stdout is incomplete: do not use it");
        }
        return Ok(code);
    };
    let partial = partial_name(path);
    let mut file = File::create(&partial)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?;
    let result = transfer::run(&run, what, &mut io::empty(), &mut file);
    let whole = matches!(&result, Ok(a) if a.ok);
    let code = report(result, started);
    if !whole {
        let _ = std::fs::remove_file(&partial);
        return Ok(code);
    }
    file.sync_all()?;
    std::fs::rename(&partial, path).map_err(|e| {
        anyhow::anyhow!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            path.display()
        )
    })?;
    println!("{}", path.display());
    Ok(code)
}

/// Runs a host → guest transfer of the file at `path`.
fn send(spec: &Spec, path: &Path, what: impl FnOnce(u64) -> Transfer) -> anyhow::Result<i32> {
    let mut file =
        File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let bytes = file.metadata()?.len();
    let run = RunDir::new(&running_spec(spec).run_dir);
    let started = Instant::now();
    let result = transfer::run(&run, what(bytes), &mut file, &mut io::sink());
    let code = report(result, started);
    io::stderr().flush()?;
    Ok(code)
}

/// `backup export [SET] [--output FILE]`: a tar of the backup disk's repository, or
/// of the part a restore to SET or later reads.
pub fn export(spec: &Spec, from_set: Option<&str>, output: Option<&Path>) -> anyhow::Result<i32> {
    match from_set {
        Some(label) => eprintln!(
            "exporting the backup repository of VM {} from set {label} on (its full set, every later set, and the WAL from there) ...",
            spec.name
        ),
        None => eprintln!(
            "exporting the backup repository of VM {} (every set and the archived WAL) ...",
            spec.name
        ),
    }
    let transfer = Transfer::ExportBackup {
        from_set: from_set.map(str::to_string),
    };
    receive(spec, transfer, output)
}

/// `restore --from-export FILE --to TARGET`.
pub fn restore_from_export(
    spec: &Spec,
    file: &Path,
    target: RestoreTarget,
    yes: bool,
) -> anyhow::Result<i32> {
    let question = format!(
        "Restore VM {} to {target} from the export {}? It becomes the backup disk's repository (the current one is kept aside); changes after that point leave the live database, and the current data directory is kept aside in the guest until the next restore.",
        spec.name,
        file.display()
    );
    if !yes && !ask_yes(&question)? {
        eprintln!("nothing restored");
        return Ok(2);
    }
    eprintln!("sending {} to the guest and restoring ...", file.display());
    send(spec, file, |bytes| Transfer::RestoreFromExport {
        bytes,
        target,
    })
}

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
    receive(spec, Transfer::DumpApp { app: name.into() }, output)
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
    send(spec, file, |bytes| Transfer::RestoreApp {
        app: app.into(),
        bytes,
    })
}
