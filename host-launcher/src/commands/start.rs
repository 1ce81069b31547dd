//! `sovereign start`: validate, preflight, prepare files, launch the detached supervisor
//! and print its progress until the VM is up (exit 0) or failed (exit 1).

use super::running_spec;
use crate::ipc::{Client, Event, Reply, Request, UpInfo};
use crate::paths::HostEnv;
use crate::run_files;
use crate::rundir::{Role, RunDir};
use crate::spec::validate;
use crate::spec::{Spec, SpecError};
use crate::terminal::{failure_block, stage_line, stamp};
use crate::vmm::LaunchPlan;
use crate::{guest_clock, preflight, process, secrets, vmm};
use anyhow::Context as _;
use protocol::config::BootRequest;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How the built-in spec is named in messages (see [`crate::cli::VmArgs::load`]).
pub const BUILTIN: &str = "built-in sql";

/// Runs `start`; returns the exit code. An update that a power cut or a killed
/// `update` left unfinished is undone first, and said (an update's own boot is not:
/// [`crate::update::journal::recover`] leaves the journal of this process alone).
/// `request` is for this start's first boot only
/// (`rejoin`, `restore --new-disk`): the supervisor hands it to that boot and to no
/// other, so a restart after a crash never repeats it. `export` (an opened export,
/// for `restore --new-disk --from-export`) is sent to the guest once its control
/// channel is up; the boot restores from it.
pub async fn run(
    spec: Spec,
    env: &HostEnv,
    source_name: &str,
    dry_run: bool,
    request: Option<BootRequest>,
    export: Option<PathBuf>,
) -> anyhow::Result<i32> {
    if !dry_run && super::connect(&spec).await.is_none() {
        if let Some(said) = crate::update::journal::recover(&spec)? {
            println!("  ! {said}");
        }
    }
    let problems = validate::validate(&spec, env);
    if !problems.is_empty() {
        eprintln!(
            "{}",
            SpecError::Invalid {
                source_name: source_name.to_string(),
                problems
            }
        );
        return Ok(2);
    }
    match guest_clock::offset_secs() {
        Ok(0) => {}
        Ok(secs) => println!(
            "note: the guest's clock will be {secs} s off the host's ({})",
            guest_clock::OFFSET_VAR
        ),
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    }
    let plan = vmm::plan(&spec, env);
    if dry_run {
        for c in &plan.commands {
            println!("{}", c.shell_line());
        }
        return Ok(0);
    }

    // Held from here; the supervisor keeps it until it exits.
    let lock = match crate::startlock::StartLock::acquire(&spec.run_dir, &spec.name) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    let leftovers: Vec<String> = Role::ALL
        .iter()
        .filter_map(|r| {
            RunDir::new(&spec.run_dir)
                .live_pid(*r)
                .map(|p| format!("{r} pid {p}"))
        })
        .collect();
    if !leftovers.is_empty() {
        eprintln!(
            "VM {} is still running without its supervisor ({}): `sovereign stop {}` shuts the guest down cleanly; then start it again",
            spec.name,
            leftovers.join(", "),
            selector(source_name)
        );
        return Ok(2);
    }
    let mut spec = spec;
    if let Some(f) = secrets::stash_env_auth_key(&mut spec)? {
        println!(
            "  + moved ${} into {} (mode 0600): no process the VM runs carries it",
            secrets::AUTHKEY_ENV,
            f.display()
        );
    }
    println!(
        "preflight for VM {} ({}, CID {}):",
        spec.name, spec.vmm.backend, spec.cid
    );
    let report = preflight::run(&spec, env);
    print!("{report}");
    if !report.ok() {
        return Ok(2);
    }

    prepare(&spec, &plan, request.as_ref())?;
    let run = RunDir::new(&spec.run_dir);
    let lock_fd = lock.raw_fd();
    let t0 = Instant::now();
    let exe = std::env::current_exe()
        .context("cannot find the sovereign binary to start the supervisor")?;
    let log = spec.log_file("supervisor");
    let mut supervisor = process::spawn_supervisor(&exe, &run, &log, lock_fd)?;
    lock.hand_over();
    let pid = supervisor.id();
    println!(
        "{} supervisor started (pid {pid}, log {})",
        stamp(t0.elapsed()),
        log.display()
    );

    let Some(mut client) = wait_for_supervisor(&run, &mut supervisor).await else {
        return Ok(report_lost(
            &spec,
            &run,
            "the supervisor exited before it could be reached",
        )
        .await);
    };
    client.send(&Request::Watch).await?;
    let mut export = export;
    let mut sending: Option<tokio::task::JoinHandle<String>> = None;
    loop {
        let reply = tokio::select! {
            r = client.recv() => r,
            Some(said) = async { Some(sending.as_mut()?.await) }, if sending.is_some() => {
                sending = None;
                println!("{} {}", stamp(t0.elapsed()), said.unwrap_or_else(|e| format!("✗ the export was not sent: {e}")));
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                println!("\ninterrupted: stopping VM {}", spec.name);
                super::stop::run(&spec, None).await?;
                return Ok(130);
            }
        };
        match reply {
            Ok(Some(Reply::Event(ev))) => match ev {
                Event::Launched { role, pid, .. } => {
                    println!("{} {role} started (pid {pid})", stamp(t0.elapsed()));
                }
                Event::Stage(line) => {
                    println!("{} {}", stamp(t0.elapsed()), stage_line(&line));
                    if line.stage == protocol::Stage::Control
                        && line.status == protocol::status::StageStatus::Accepted
                    {
                        if let Some(file) = export.take() {
                            println!(
                                "{} sending the export {} to the guest",
                                stamp(t0.elapsed()),
                                file.display()
                            );
                            let run = run.clone();
                            sending = Some(tokio::task::spawn_blocking(move || {
                                send_export(&run, &file)
                            }));
                        }
                    }
                }
                Event::Stopping { reason } => {
                    println!("{} ✗ {reason}", stamp(t0.elapsed()));
                    println!(
                        "{} stopping everything started for VM {}…",
                        stamp(t0.elapsed()),
                        spec.name
                    );
                }
                Event::Failed(report) => {
                    print!("{}", failure_block(&spec.name, &report));
                    // Return only once the supervisor itself is gone too.
                    if !crate::process::wait_gone(
                        crate::process::as_pid(pid),
                        run.root(),
                        Duration::from_secs(15),
                    )
                    .await
                    {
                        println!("✗ the supervisor (pid {pid}) is still running");
                    }
                    return Ok(1);
                }
                Event::Up(info) => {
                    print_up(&spec, source_name, &info, t0.elapsed());
                    return Ok(0);
                }
            },
            Ok(Some(other)) => log::warn!("unexpected reply {other:?}"),
            Ok(None) | Err(_) => {
                return Ok(report_lost(&spec, &run, "the supervisor closed the connection").await);
            }
        }
    }
}

/// Sends the opened export at `file` for the boot to restore from; what happened.
fn send_export(run: &RunDir, file: &std::path::Path) -> String {
    let sent = std::fs::File::open(file).and_then(|mut f| {
        let bytes = f.metadata()?.len();
        crate::transfer::run(
            run,
            protocol::transfer::Transfer::ImportExport { bytes },
            &mut f,
            &mut std::io::sink(),
        )
        .map_err(std::io::Error::other)
    });
    match sent {
        Ok(a) if a.ok => format!("✓ {}", a.message),
        Ok(a) => format!("✗ the guest refused the export: {}", a.message),
        Err(e) => format!("✗ the export was not sent: {e}"),
    }
}

/// Creates directories, secrets and the data disk, and writes the run spec, the launch
/// plan preflight checked and this start's one-boot request (or removes a stale one).
fn prepare(spec: &Spec, plan: &LaunchPlan, request: Option<&BootRequest>) -> anyhow::Result<()> {
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true).mode(0o700);
    for d in [&spec.run_dir, &spec.secrets_dir] {
        dirs.create(d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    let log_dir = spec.log_dir();
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let imported = crate::replica_credentials::import(spec)?;
    for f in &imported.written {
        println!(
            "  + took {} from the replica credentials file (mode 0600)",
            f.display()
        );
    }
    for f in &imported.kept {
        println!(
            "  ! kept {}: the replica credentials file holds another value, and this node already has its data disk (a password rotated since the file was written stays)",
            f.display()
        );
    }
    for f in secrets::ensure_all(spec)? {
        println!("  + generated {} (mode 0600)", f.display());
    }
    let data_existed = spec.data_disk.path.exists();
    for (name, disk) in spec.extra_disks() {
        if let crate::disk_image::DiskAction::Created(bytes) =
            crate::disk_image::prepare_disk(disk)?
        {
            println!(
                "  + created {name} disk {} ({} GiB, sparse; the guest formats it on first boot)",
                disk.path.display(),
                bytes >> 30
            );
            if name == "backup" && data_existed {
                println!(
                    "  ! the backup disk was missing while the data disk exists: the backups and archived WAL it held are gone from repo1{}; a new full backup starts after ready",
                    if spec.backup.offsite.is_some() {
                        " (repo2 keeps its own)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    let run = RunDir::new(&spec.run_dir);
    run.remove_stale();
    run_files::failure(&run).remove()?;
    run_files::spec(&run).write(spec)?;
    run_files::launch_plan(&run).write(plan)?;
    run_files::boot_request(&run).put(request)?;
    Ok(())
}

async fn wait_for_supervisor(run: &RunDir, supervisor: &mut std::process::Child) -> Option<Client> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Ok(c) = Client::connect(run).await {
            return Some(c);
        }
        // The child handle, not /proc: right after spawn its command line may be empty.
        if !matches!(supervisor.try_wait(), Ok(None)) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The supervisor vanished without a final event: show its failure report if it left
/// one, then make sure nothing of the VM is left.
async fn report_lost(spec: &Spec, run: &RunDir, what: &str) -> i32 {
    let spec = running_spec(spec);
    match run_files::failure(run).read().ok().flatten() {
        Some(report) => print!("{}", failure_block(&spec.name, &report)),
        None => {
            println!(
                "✗ {what}; its log: {}",
                spec.log_file("supervisor").display()
            );
            if let Ok(text) = std::fs::read_to_string(spec.log_file("supervisor")) {
                for l in text
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    println!("    | {l}");
                }
            }
        }
    }
    let _ = super::stop::stop_leftovers(&spec, run).await;
    let left: Vec<_> = Role::ALL
        .iter()
        .filter(|r| run.live_pid(**r).is_some())
        .collect();
    if !left.is_empty() {
        println!("✗ still running: {left:?}");
    }
    1
}

/// How the user names this VM on the command line (`--sql` or `--spec FILE`).
fn selector(source_name: &str) -> String {
    if source_name == BUILTIN {
        "--sql".to_string()
    } else {
        format!(
            "--spec {}",
            shlex::try_quote(source_name).unwrap_or_default()
        )
    }
}

fn print_up(spec: &Spec, source_name: &str, info: &UpInfo, elapsed: Duration) {
    let scope = if info.wait_for == protocol::Stage::Ready {
        String::new()
    } else {
        format!(" (waited for `{}` only)", info.wait_for)
    };
    println!(
        "{} up: VM {} (CID {}){scope}",
        stamp(elapsed),
        spec.name,
        spec.cid
    );
    let sel = selector(source_name);
    if let Some(t) = &info.tailnet {
        println!("  tailnet:   {} {}", t.name, t.ips.join(" "));
    }
    if info.wait_for >= protocol::Stage::Postgres {
        println!(
            "  postgres:  psql \"host={} port={} user=postgres dbname=postgres\"  (password in {})",
            info.hostname,
            info.postgres_port,
            info.password_file.display()
        );
    }
    println!("  console:   {}", info.console_log.display());
    println!(
        "  supervisor pid {} keeps the VM; next: sovereign status {sel} | test {sel} | stop {sel}",
        info.supervisor_pid
    );
}
