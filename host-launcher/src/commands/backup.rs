//! `sovereign backup now|list` and `sovereign restore`: the requests go to PID 1
//! through the supervisor and the control channel; pgBackRest runs in the guest.

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;
use protocol::backup::{
    utc_text, BackupAnswer, BackupCatalog, BackupKind, BackupRequest, RestoreTarget,
};
use std::io::{BufRead, IsTerminal, Write};

/// Sends `request` and returns the guest's answer, or prints why there is none.
async fn ask(spec: &Spec, request: BackupRequest) -> anyhow::Result<Option<BackupAnswer>> {
    let spec = super::running_spec(spec);
    match call(&spec, &Request::Backup { request }).await? {
        Reply::Backup(a) => Ok(Some(a)),
        Reply::Error { message } => {
            eprintln!("no answer from the guest: {message}");
            Ok(None)
        }
        other => anyhow::bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// `backup now`: exit 0 when a set was made.
pub async fn now(spec: &Spec, kind: BackupKind) -> anyhow::Result<i32> {
    eprintln!(
        "taking a {kind} backup of VM {} (pgBackRest in the guest; this can take minutes) ...",
        spec.name
    );
    let Some(a) = ask(spec, BackupRequest::Now { kind }).await? else {
        return Ok(1);
    };
    match (&a.run, a.ok) {
        (Some(run), true) => {
            println!(
                "{kind} backup {} done in {}, {} in the repository",
                run.label.as_deref().unwrap_or("?"),
                seconds(run.duration_ms),
                run.repo_bytes.map(size).unwrap_or_else(|| "?".into())
            );
            Ok(0)
        }
        _ => {
            eprintln!("{}", a.message);
            Ok(1)
        }
    }
}

/// `backup list`.
pub async fn list(spec: &Spec, json: bool) -> anyhow::Result<i32> {
    let Some(a) = ask(spec, BackupRequest::List).await? else {
        return Ok(1);
    };
    let Some(catalog) = a.catalog.filter(|_| a.ok) else {
        eprintln!("{}", a.message);
        return Ok(1);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
    } else {
        print!("{}", render_catalog(&catalog));
    }
    Ok(0)
}

/// `backup verify`: exit 0 when the repository checks out.
pub async fn verify(spec: &Spec) -> anyhow::Result<i32> {
    eprintln!(
        "verifying the repository of VM {} (every set and WAL segment is read back) ...",
        spec.name
    );
    let Some(a) = ask(spec, BackupRequest::Verify).await? else {
        return Ok(1);
    };
    if a.ok {
        println!("{}", a.message);
        Ok(0)
    } else {
        eprintln!("verify failed: {}", a.message);
        Ok(1)
    }
}

/// The catalog as a table, with the window first.
pub fn render_catalog(c: &BackupCatalog) -> String {
    let mut out = match c.window {
        Some(w) => format!(
            "repo1 (backup disk): {} set(s); restorable to any time from {} to {}\n",
            c.sets.len(),
            utc_text(w.earliest_unix),
            utc_text(w.latest_unix)
        ),
        None => "repo1 (backup disk): no backup set yet\n".to_string(),
    };
    if !c.sets.is_empty() {
        out.push_str(&format!(
            "  {:<34} {:<5} {:<21} {:>9} {:>10} {:>10}\n",
            "LABEL", "TYPE", "STARTED", "TOOK", "DATABASE", "IN REPO"
        ));
    }
    for s in &c.sets {
        out.push_str(&format!(
            "  {:<34} {:<5} {:<21} {:>9} {:>10} {:>10}\n",
            s.label,
            s.kind.as_str(),
            utc_text(s.started_unix),
            format!("{} s", (s.stopped_unix - s.started_unix).max(0)),
            size(s.database_bytes),
            size(s.repo_bytes)
        ));
    }
    out
}

/// `restore --to`: asks first (unless `yes`), exit 0 when the restored server is up.
pub async fn restore(spec: &Spec, target: RestoreTarget, yes: bool) -> anyhow::Result<i32> {
    if !yes && !confirm(spec, &target)? {
        eprintln!("nothing restored");
        return Ok(2);
    }
    eprintln!("restoring VM {} to {target}: postgres stops until the restored server is up and checked ...", spec.name);
    let Some(a) = ask(spec, BackupRequest::Restore { target }).await? else {
        return Ok(1);
    };
    if a.ok {
        println!("{}", a.message);
        Ok(0)
    } else {
        eprintln!("restore refused or failed: {}", a.message);
        Ok(1)
    }
}

/// Asks on the terminal; without one, says how to go on.
fn confirm(spec: &Spec, target: &RestoreTarget) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "restore replaces the database of VM {}: pass --yes to confirm when not at a terminal",
            spec.name
        );
    }
    eprint!(
        "Restore VM {} to {target}? Changes after that point leave the live database; the current data directory is kept aside in the guest until the next restore. [y/N] ",
        spec.name
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Bytes as MiB/GiB with one decimal.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::backup::{BackupSet, RecoveryWindow};

    #[test]
    fn the_table_shows_the_window_and_each_set() {
        let c = BackupCatalog {
            sets: vec![BackupSet {
                label: "20261202-160405F".into(),
                kind: BackupKind::Full,
                started_unix: 1_796_227_445,
                stopped_unix: 1_796_227_486,
                database_bytes: 31 << 20,
                repo_bytes: 4 << 20,
            }],
            window: Some(RecoveryWindow {
                earliest_unix: 1_796_227_486,
                latest_unix: 1_796_228_000,
            }),
        };
        let t = render_catalog(&c);
        assert!(
            t.contains("from 2026-12-02T16:04:46Z to 2026-12-02T16:13:20Z"),
            "{t}"
        );
        assert!(t.contains("20261202-160405F"), "{t}");
        assert!(
            t.contains("41 s") && t.contains("31.0 MiB") && t.contains("4.0 MiB"),
            "{t}"
        );
        let empty = render_catalog(&BackupCatalog::default());
        assert!(empty.contains("no backup set yet"), "{empty}");
    }
}
