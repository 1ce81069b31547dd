//! `backup key`: the passphrase that seals every copy of the database leaving the phone
//! (repo2 on the SFTP server, exports). Lose it with the phone and those copies are
//! noise; so it is shown once on request, to be kept apart from the phone, and taken
//! back on a new phone before a restore from what left the old one.

use crate::secrets;
use crate::spec::Spec;
use crate::terminal::ask_yes;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;

/// `backup key`: where the passphrase is, without showing it.
pub fn where_it_is(spec: &Spec) -> anyhow::Result<i32> {
    let path = &spec.backup.passphrase_file;
    if path.exists() {
        println!(
            "the backup passphrase of VM {} is in {} (0600); `sovereign backup key --show` prints it, to keep a copy apart from the phone",
            spec.name,
            path.display()
        );
    } else {
        println!(
            "VM {} has no backup passphrase yet ({}): the first start with backups makes one, or `sovereign backup key --set` takes an existing one",
            spec.name,
            path.display()
        );
    }
    Ok(0)
}

/// `backup key --show [--yes]`: prints the passphrase after asking.
pub fn show(spec: &Spec, yes: bool) -> anyhow::Result<i32> {
    let passphrase = secrets::backup_passphrase(spec)?;
    let question = format!(
        "This prints the passphrase that opens VM {}'s off-device backups and exports: whoever reads it can read them. Keep it apart from the phone (a password manager, paper). Show it?",
        spec.name
    );
    if !yes && !ask_yes(&question)? {
        eprintln!("not shown");
        return Ok(2);
    }
    println!("{}", passphrase.expose());
    Ok(0)
}

/// `backup key --set [--yes]`: takes a passphrase from stdin (one line), e.g. on a new
/// phone before restoring what the old one sealed. A different one already in place
/// is kept as `FILE.before-<time>`, after asking.
pub fn set(spec: &Spec, yes: bool) -> anyhow::Result<i32> {
    let path = &spec.backup.passphrase_file;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("backup passphrase (shown as you type): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let new = line.trim();
    if !protocol::offsite::is_passphrase(new) {
        anyhow::bail!(
            "backup.passphrase: must be 20-256 printable ASCII characters without spaces"
        );
    }
    if path.exists() {
        let current = secrets::read_secret(path)?;
        if current.expose() == new {
            println!(
                "unchanged: {} already holds this passphrase",
                path.display()
            );
            return Ok(0);
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let kept = path.with_file_name(format!(
            "{}.before-{stamp}",
            path.file_name().map_or_else(
                || "backup.passphrase".into(),
                |n| n.to_string_lossy().into_owned()
            )
        ));
        let question = format!(
            "Replace the backup passphrase in {}? What the current one sealed opens only with it; it is kept as {}.",
            path.display(),
            kept.display()
        );
        if !yes && !ask_yes(&question)? {
            eprintln!("nothing changed");
            return Ok(2);
        }
        std::fs::rename(path, &kept)?;
        println!("kept the previous passphrase as {}", kept.display());
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    secrets::write_private(path, format!("{new}\n").as_bytes())?;
    println!(
        "the backup passphrase is in {} (0600); the next start hands it to the guest",
        path.display()
    );
    Ok(0)
}
