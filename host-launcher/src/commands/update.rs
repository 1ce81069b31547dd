//! `sovereign update --images DIR | --rollback`: the order of an update's steps. Each
//! step that moves a file is journalled first ([`crate::update::journal`]): stage the
//! new set beside the current one, stop the VM, switch the files, boot and wait for
//! every stage. Proven: the replaced set is kept for `--rollback`. Not proven: the
//! files are switched back and the replaced set boots again, by itself, and the
//! command says which stage failed and why. The data disk is never touched.

use crate::paths::HostEnv;
use crate::run_files;
use crate::rundir::RunDir;
use crate::spec::Spec;
use crate::update::journal::{self, Journal, Step};
use crate::update::slots::{self, Staging};
use crate::update::{self, UpdateError};
use protocol::release::{ImageSets, InstalledSet, Versions};
use std::path::Path;

/// What `update` was asked to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Install the set in this artifact directory.
    Images(&'a Path),
    /// Go back to the set kept beside the current one.
    Rollback,
}

/// Runs `update`; returns the exit code: 0 the new set is up, 1 it failed and the
/// replaced set was booted again (or a boot failed), 2 refused with nothing changed.
pub async fn run(
    spec: Spec,
    env: &HostEnv,
    source: &str,
    action: Action<'_>,
) -> anyhow::Result<i32> {
    let run = RunDir::new(&spec.run_dir);
    std::fs::create_dir_all(&spec.run_dir)?;
    if super::connect(&spec).await.is_none() {
        if let Some(said) = journal::recover(&spec)? {
            println!("  ! {said}");
        }
    } else if journal::file(&spec).read()?.is_some() {
        eprintln!(
            "another update of VM {} is under way ({}); wait for it to finish",
            spec.name,
            journal::file(&spec).path().display()
        );
        return Ok(2);
    }
    let slots = match update::slots_of(&spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    let sets_file = run_files::image_sets(&run);
    let sets = sets_file.read()?.unwrap_or_default();
    let journal = match action {
        Action::Images(dir) => match stage_images(&spec, &slots, &sets, dir).await {
            Ok(Some(j)) => j,
            Ok(None) => return Ok(0),
            Err(e) => {
                eprintln!("{e}");
                return Ok(2);
            }
        },
        Action::Rollback => match stage_rollback(&spec, &slots, &sets) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{e}");
                return Ok(2);
            }
        },
    };
    switch_and_prove(spec, env, source, journal).await
}

/// Checks the set in `dir` and copies it beside the current one; `None` when it is
/// the current set already.
async fn stage_images(
    spec: &Spec,
    slots: &[slots::Slot],
    sets: &ImageSets,
    dir: &Path,
) -> Result<Option<Journal>, UpdateError> {
    let c = update::candidate(spec, slots, dir)?;
    if sets.current.as_ref().is_some_and(|s| s.id == c.set.id) {
        println!(
            "✓ {} is VM {}'s current set already: nothing to do",
            c.set.describe(),
            spec.name
        );
        return Ok(None);
    }
    let running = running_versions(spec).await;
    let current = match (&sets.current, &running) {
        (_, Some(v)) => Some((format!("VM {}", spec.name), v)),
        (Some(s), None) => Some((s.describe(), &s.versions)),
        (None, None) => {
            println!("  note: the VM is stopped and its set was not installed by `update`, so its PostgreSQL version is unknown here; the guest checks the data directory's at boot");
            None
        }
    };
    update::check_major(&c.set, current)?;
    println!(
        "update VM {}: {} replaces {} (the data disk is not touched)",
        spec.name,
        c.set.describe(),
        sets.current
            .as_ref()
            .map_or_else(|| "the files in place".to_string(), InstalledSet::describe)
    );
    let journal = Journal {
        step: Step::Staged,
        staging: Staging::Copied,
        slots: slots.to_vec(),
        to: c.set.clone(),
        from: sets.current.clone().or_else(|| in_place(running.as_ref())),
        pid: std::process::id(),
    };
    journal.record(&journal::file(spec))?;
    if let Some(old) = &sets.previous {
        println!(
            "  - removing the set kept before ({}): one spare set is kept, the one running now",
            old.id
        );
        let kept_none = ImageSets {
            current: sets.current.clone(),
            previous: None,
        };
        run_files::image_sets(&RunDir::new(&spec.run_dir)).write(&kept_none)?;
    }
    slots::drop_previous(slots)?;
    if let Err(e) = update::stage_copies(&c, &mut |l| println!("  {l}")) {
        journal.undo()?;
        journal::file(spec).remove()?;
        return Err(e);
    }
    println!(
        "  ✓ staged and checked against {}",
        dir.join(protocol::manifest::FILE_NAME).display()
    );
    Ok(Some(journal))
}

/// The set in place before the first update, as it is recorded once replaced.
fn in_place(running: Option<&Versions>) -> Option<InstalledSet> {
    Some(InstalledSet {
        id: "before-update".into(),
        versions: running.cloned().unwrap_or_default(),
        source: "the files in place before the first update".into(),
        installed_unix: 0,
    })
}

/// The kept set becomes the one to install.
fn stage_rollback(
    spec: &Spec,
    slots: &[slots::Slot],
    sets: &ImageSets,
) -> Result<Journal, UpdateError> {
    let (Some(previous), Some(current)) = (&sets.previous, &sets.current) else {
        return Err(UpdateError::NoPrevious(format!(
            "VM {} has no set recorded as kept ({}); `update --images DIR` installs one",
            spec.name,
            run_files::image_sets(&RunDir::new(&spec.run_dir))
                .path()
                .display()
        )));
    };
    if !slots::previous_complete(slots) {
        return Err(UpdateError::NoPrevious(format!(
            "the kept files of {} are missing ({}.previous)",
            previous.describe(),
            slots[1].path.display()
        )));
    }
    println!(
        "roll back VM {}: {} replaces {} (the data disk is not touched)",
        spec.name,
        previous.describe(),
        current.describe()
    );
    let journal = Journal {
        step: Step::Staged,
        staging: Staging::FromPrevious,
        slots: slots.to_vec(),
        to: previous.clone(),
        from: Some(current.clone()),
        pid: std::process::id(),
    };
    journal.record(&journal::file(spec))?;
    slots::stage_previous(slots)?;
    Ok(journal)
}

/// The running guest's image versions, when it answers.
async fn running_versions(spec: &Spec) -> Option<Versions> {
    let status = super::status::gather(spec).await;
    let guest = status.guest?;
    let mut v = guest.image.clone();
    if let Some(p) = guest.postgres.filter(|_| !v.contains_key("postgres")) {
        v.insert("postgres".into(), p.version);
    }
    (!v.is_empty()).then_some(v)
}

/// Stops the VM, switches the files and boots; undoes it all when the boot fails.
async fn switch_and_prove(
    spec: Spec,
    env: &HostEnv,
    source: &str,
    mut journal: Journal,
) -> anyhow::Result<i32> {
    let file = journal::file(&spec);
    if super::connect(&spec).await.is_some() {
        let stopped = super::stop::run(&spec, None).await?;
        if stopped != 0 {
            journal.undo()?;
            file.remove()?;
            println!(
                "✗ VM {} did not stop cleanly: the update was not applied, nothing was changed",
                spec.name
            );
            return Ok(1);
        }
    }
    journal.step = Step::Switched;
    journal.record(&file)?;
    slots::switch(&journal.slots)?;
    println!("  switched to {}; booting it", journal.to.describe());
    let booted = match super::start::run(spec.clone(), env, source, false, None, None).await {
        Ok(code) => code,
        Err(e) => {
            // The new set never ran: the files go back before the error is told.
            journal.undo()?;
            file.remove()?;
            return Err(e.context(format!(
                "booting {} (the files were put back)",
                journal.to.describe()
            )));
        }
    };
    if booted == 0 {
        let sets = ImageSets {
            current: Some(journal.to.clone()),
            previous: journal.from.clone(),
        };
        run_files::image_sets(&RunDir::new(&spec.run_dir)).write(&sets)?;
        file.remove()?;
        println!(
            "✓ VM {} runs {}; {} is kept for `sovereign update --rollback`",
            spec.name,
            journal.to.describe(),
            journal.from_name()
        );
        return Ok(0);
    }
    let why = run_files::failure(&RunDir::new(&spec.run_dir))
        .read()
        .ok()
        .flatten()
        .map_or_else(
            || "did not come up".to_string(),
            |r| format!("failed at {}: {}", r.failure.at, r.failure.reason),
        );
    println!(
        "✗ {} {why}; going back to {}",
        journal.to.describe(),
        journal.from_name()
    );
    journal.undo()?;
    file.remove()?;
    if super::start::run(spec.clone(), env, source, false, None, None).await? == 0 {
        println!(
            "✓ VM {} runs {} again; the update was not applied ({} {why})",
            spec.name,
            journal.from_name(),
            journal.to.describe()
        );
    } else {
        println!(
            "✗ {} did not come up either: see the failure above and `sovereign console`",
            journal.from_name()
        );
    }
    Ok(1)
}
