//! `backup export` and `restore --from-export`: the backup disk's repository out to a
//! file, sealed with the backup passphrase ([`crate::sealed`]), and a file back in as
//! the repository a restore reads.

use super::super::bulk::{receive, send};
use crate::spec::Spec;
use crate::terminal::ask_yes;
use protocol::backup::RestoreTarget;
use protocol::transfer::Transfer;
use std::path::Path;

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
    // It leaves the phone: sealed with the backup passphrase.
    let passphrase = crate::secrets::backup_passphrase(&crate::commands::running_spec(spec))?;
    receive(spec, transfer, output, Some(&passphrase))
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
    let passphrase = crate::secrets::backup_passphrase(&crate::commands::running_spec(spec))?;
    eprintln!("sending {} to the guest and restoring ...", file.display());
    send(spec, file, Some(&passphrase), |bytes| {
        Transfer::RestoreFromExport { bytes, target }
    })
}
