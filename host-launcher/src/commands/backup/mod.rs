//! `sovereign backup now|list|verify` and `sovereign restore` (to a time or a set, in
//! place or onto a new data disk): the requests go to PID 1 through the supervisor and
//! the control channel; pgBackRest runs in the guest. Exports are [`export`].

pub mod export;
pub mod key;

use super::call;
use crate::ipc::{Reply, Request};
use crate::paths::HostEnv;
use crate::spec::Spec;
use crate::terminal::{ask_yes, size};
use protocol::backup::{
    utc_text, BackupAnswer, BackupCatalog, BackupKind, BackupRequest, RestoreTarget,
};

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

/// `backup now`: exit 0 when a set was made in every repository.
pub async fn now(spec: &Spec, kind: BackupKind) -> anyhow::Result<i32> {
    eprintln!(
        "taking a {kind} backup of VM {} (pgBackRest in the guest; this can take minutes) ...",
        spec.name
    );
    let Some(a) = ask(spec, BackupRequest::Now { kind }).await? else {
        return Ok(1);
    };
    for run in a.run.iter().chain(a.offsite_run.iter()) {
        match &run.error {
            None => println!(
                "{kind} backup {} to repo{} ({}) done in {}, {} in the repository",
                run.label.as_deref().unwrap_or("?"),
                run.repo,
                repo_name(run.repo),
                seconds(run.duration_ms),
                run.repo_bytes.map(size).unwrap_or_else(|| "?".into())
            ),
            Some(e) => eprintln!(
                "{kind} backup to repo{} ({}) failed: {e}",
                run.repo,
                repo_name(run.repo)
            ),
        }
    }
    if a.run.is_none() {
        eprintln!("{}", a.message);
    }
    Ok(if a.ok { 0 } else { 1 })
}

/// What a repository is, in words.
fn repo_name(repo: u8) -> &'static str {
    if repo == protocol::backup::REPO_OFFSITE {
        "offsite"
    } else {
        "backup disk"
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
            "{} set(s); restorable to any time from {} to {}\n",
            c.sets.len(),
            utc_text(w.earliest_unix),
            utc_text(w.latest_unix)
        ),
        None => "no backup set yet\n".to_string(),
    };
    if !c.sets.is_empty() {
        out.push_str(&format!(
            "  {:<34} {:<5} {:<19} {:<21} {:>9} {:>10} {:>10}\n",
            "LABEL", "TYPE", "REPO", "STARTED", "TOOK", "DATABASE", "IN REPO"
        ));
    }
    for s in &c.sets {
        out.push_str(&format!(
            "  {:<34} {:<5} {:<19} {:<21} {:>9} {:>10} {:>10}\n",
            s.label,
            s.kind.as_str(),
            format!("repo{} ({})", s.repo, repo_name(s.repo)),
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

/// `restore --new-disk [--from-export FILE]`: the VM must be stopped. The old data
/// disk image (if any) is moved aside, never deleted; the VM starts on a new one and PID
/// 1 restores onto it from the backup disk (or repo2) before postgres starts. With an
/// export (a lost phone, only the export and its passphrase left), the export is opened
/// first, so a wrong passphrase changes nothing, and sent to the booting guest, where it
/// becomes the repository. Exit codes as for `start`.
pub async fn restore_new_disk(
    mut spec: Spec,
    env: &HostEnv,
    source: &str,
    target: RestoreTarget,
    yes: bool,
    from_export: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    if super::connect(&spec).await.is_some() {
        eprintln!(
            "VM {} is running: --new-disk restores onto a new data disk at boot; stop it first (`sovereign stop`), or restore in place without --new-disk",
            spec.name
        );
        return Ok(2);
    }
    if !spec.backup.enabled {
        eprintln!("backups are off in this spec (backup.enabled = false): nothing to restore from");
        return Ok(2);
    }
    match (&spec.backup.offsite, spec.backup_disk.path.exists()) {
        _ if from_export.is_some() => {}
        (_, true) => {}
        (Some(o), false) => println!(
            "  the backup disk {} does not exist: a new one is made, and the restore comes from the offsite copy {}@{}:{}",
            spec.backup_disk.path.display(),
            o.user,
            o.host,
            o.path
        ),
        (None, false) => {
            eprintln!(
                "the backup disk {} does not exist and the spec names no offsite copy ([backup.offsite]): nothing to restore from",
                spec.backup_disk.path.display()
            );
            return Ok(2);
        }
    }
    let data = spec.data_disk.path.clone();
    if data.exists() {
        let aside = crate::disk_image::kept_copy_path(&data, "before-restore");
        let question = format!(
            "Start VM {} on a new data disk restored to {target}? The current {} is moved to {} (kept).",
            spec.name,
            data.display(),
            aside.display()
        );
        if !yes && !ask_yes(&question)? {
            eprintln!("nothing restored");
            return Ok(2);
        }
        std::fs::rename(&data, &aside).map_err(|e| {
            anyhow::anyhow!("cannot move {} to {}: {e}", data.display(), aside.display())
        })?;
        println!("  + moved {} to {}", data.display(), aside.display());
    }
    let opened = match from_export {
        Some(file) => Some(open_export(&spec, file)?),
        None => None,
    };
    spec.timeouts.postgres = spec.timeouts.postgres.max(3600);
    let request = match opened {
        Some(_) => protocol::config::BootRequest::ImportOntoNewDisk { target },
        None => protocol::config::BootRequest::RestoreOntoNewDisk { target },
    };
    let export = opened.as_ref().map(|o| o.0.clone());
    super::start::run(spec, env, source, false, Some(request), export).await
}

/// An export opened for a boot to restore from, removed when the start is over.
struct OpenedExport(std::path::PathBuf);

impl Drop for OpenedExport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Opens the export at `file` (sealed with the backup passphrase, or a plain export
/// made before exports were sealed) into a private file of the run directory.
fn open_export(spec: &Spec, file: &std::path::Path) -> anyhow::Result<OpenedExport> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spec.run_dir)?;
    let plain = OpenedExport(spec.run_dir.join("import.plain"));
    let mut out = crate::private_file::create_new(&plain.0)?;
    if crate::sealed::is_sealed(file)? {
        let passphrase = crate::secrets::backup_passphrase(spec)?;
        println!(
            "  opening the sealed {} with the backup passphrase ...",
            file.display()
        );
        crate::sealed::open_into(file, &passphrase, &mut out)?;
    } else {
        println!(
            "  note: {} is not sealed (made before exports were): sending it as it is",
            file.display()
        );
        std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
    }
    out.sync_all()?;
    Ok(plain)
}

/// Asks before an in-place restore.
fn confirm(spec: &Spec, target: &RestoreTarget) -> anyhow::Result<bool> {
    ask_yes(&format!(
        "Restore VM {} to {target}? Changes after that point leave the live database; the current data directory is kept aside in the guest until the next restore.",
        spec.name
    ))
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
                repo: 2,
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
        assert!(t.contains("repo2 (offsite)"), "{t}");
        assert!(
            t.contains("41 s") && t.contains("31.0 MiB") && t.contains("4.0 MiB"),
            "{t}"
        );
        let empty = render_catalog(&BackupCatalog::default());
        assert!(empty.contains("no backup set yet"), "{empty}");
    }
}
