//! `sovereign disk grow --data SIZE | --backup SIZE`: a data or backup disk made larger,
//! never smaller. With the VM stopped the image is made longer and the guest grows its
//! filesystem when it next mounts it; with the VM running the VMM resizes the disk it
//! has open ([`crate::vmm::resize`]) and the guest grows the filesystem within seconds,
//! which this waits to see in the guest's status. The spec file's `size_gib` follows
//! (it sizes a disk made anew, as after a lost disk).

use crate::disk_grow::{self, Plan, GIB};
use crate::paths::HostEnv;
use crate::rundir::{Role, RunDir};
use crate::spec::Spec;
use std::path::Path;
use std::time::{Duration, Instant};

/// Which disk grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The data disk (`postgres.img`).
    Data,
    /// The backup disk (`backup.img`).
    Backup,
}

impl Which {
    /// The disk's name among [`Spec::extra_disks`] and the VMM's drives.
    fn id(self) -> &'static str {
        match self {
            Which::Data => "data",
            Which::Backup => "backup",
        }
    }

    /// Its table in a spec file.
    fn table(self) -> &'static str {
        match self {
            Which::Data => "data_disk",
            Which::Backup => "backup_disk",
        }
    }
}

/// How long the guest has to show the grown filesystem.
const GUEST_GROWS_WITHIN: Duration = Duration::from_secs(90);

/// `disk grow`: grows the disk `which` of the VM of `spec_file` (the built-in VM when
/// `None`) to `gib` GiB.
pub async fn grow(
    spec_file: Option<&Path>,
    env: &HostEnv,
    which: Which,
    gib: u64,
) -> anyhow::Result<i32> {
    let loaded = match spec_file {
        Some(p) => Spec::load(p, env)?,
        None => Spec::builtin_sql(env)?,
    };
    let spec = super::running_spec(&loaded);
    if which == Which::Backup && !spec.backup.enabled {
        anyhow::bail!("backups are off in this spec: there is no backup disk to grow");
    }
    let disk = match which {
        Which::Data => &spec.data_disk,
        Which::Backup => &spec.backup_disk,
    };
    let plan = disk_grow::plan(&disk.path, gib)?;
    let run = RunDir::new(&spec.run_dir);
    if run.live_pid(Role::Vmm).is_some() {
        grow_online(&spec, which, plan).await?;
    } else {
        disk_grow::grow_offline(&disk.path, plan)?;
        println!(
            "{} grown from {} to {} GiB; the guest grows its filesystem when the VM next starts",
            disk.path.display(),
            crate::terminal::size(plan.from),
            gib
        );
    }
    match spec_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read VM spec {}: {e}", p.display()))?;
            let new_text = crate::spec::with_disk_size(&text, which.table(), gib);
            let dir = p.parent().unwrap_or(Path::new("."));
            Spec::parse(&new_text, dir, env, &p.display().to_string())?;
            super::db::roles::write_atomically(p, &new_text)?;
            println!("{}.size_gib = {gib} in {}", which.table(), p.display());
        }
        None => println!(
            "the built-in VM keeps the image at its new size; a disk made anew (after a lost disk) starts at the default size"
        ),
    }
    Ok(0)
}

/// Resizes the running VM's disk and waits for the guest to report the filesystem grown.
async fn grow_online(spec: &Spec, which: Which, plan: Plan) -> anyhow::Result<()> {
    let before = fs_total(spec, which).await;
    let (id, to) = (which.id(), plan.to);
    tokio::task::spawn_blocking({
        let spec = spec.clone();
        move || crate::vmm::resize::resize_running(&spec, id, to)
    })
    .await??;
    println!(
        "{} disk resized to {} GiB on the running VM; waiting for the guest to grow its filesystem",
        which.id(),
        plan.to / GIB
    );
    let grown_enough = |total: u64| match before {
        // The filesystem counts its own metadata out: half the growth is proof enough.
        Some(b) => total > b + (plan.to - plan.from) / 2,
        None => total > plan.from,
    };
    let start = Instant::now();
    loop {
        if let Some(total) = fs_total(spec, which).await.filter(|t| grown_enough(*t)) {
            println!(
                "the guest's {} filesystem is now {} (was {})",
                which.id(),
                crate::terminal::size(total),
                before.map_or_else(|| "unknown".to_string(), crate::terminal::size)
            );
            return Ok(());
        }
        if start.elapsed() > GUEST_GROWS_WITHIN {
            anyhow::bail!(
                "the disk is {} GiB but the guest's filesystem did not grow within {} s: `sovereign logs kernel` says why; it grows at the next start too",
                plan.to / GIB,
                GUEST_GROWS_WITHIN.as_secs()
            );
        }
        eprint!(".");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The size of the disk's filesystem as the guest reports it.
async fn fs_total(spec: &Spec, which: Which) -> Option<u64> {
    let guest = super::status::gather(spec).await.guest?;
    match which {
        Which::Data => guest.data_disk.map(|d| d.total_bytes),
        Which::Backup => guest.backup.and_then(|b| b.disk).map(|d| d.total_bytes),
    }
}
