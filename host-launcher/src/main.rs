//! The `sovereign` binary: parses the command line, sets up logging and runs a verb.

use anyhow::Context as _;
use clap::Parser;
use sovereign::cli::{
    AlertsAction, BackupAction, Cli, ClusterAction, Command, DbAction, DiskAction, ReplicaAction,
};
use sovereign::paths::HostEnv;
use sovereign::rundir::RunDir;

fn main() {
    let cli = Cli::parse();
    let supervising = matches!(cli.command, Command::Supervise { .. });
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(if supervising { "info" } else { "warn" }),
    )
    .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sovereign: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let env = HostEnv::detect();
    rt.block_on(async {
        match cli.command {
            Command::Start {
                vm,
                dry_run,
                wait_for,
                crosvm,
            } => {
                let (mut spec, source) = match vm.load(&env) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(2);
                    }
                };
                if let Some(stage) = wait_for {
                    spec.wait_for = stage;
                }
                if let Some(path) = crosvm {
                    spec.vmm.crosvm = path;
                }
                sovereign::commands::start::run(spec, &env, &source, dry_run, None, None).await
            }
            Command::Stop { vm, timeout } => {
                sovereign::commands::stop::run(&vm.load(&env)?.0, timeout).await
            }
            Command::Status { vm, json, watch } => {
                sovereign::commands::status::run(&vm.load(&env)?.0, json, watch).await
            }
            Command::Test { vm } => sovereign::commands::test::run(&vm.load(&env)?.0).await,
            Command::Console { vm, no_follow } => {
                sovereign::commands::console::run(&vm.load(&env)?.0, !no_follow).await
            }
            Command::Query { vm, statement } => {
                let sql = match statement {
                    Some(s) => s,
                    None => sovereign::commands::query::read_stdin()?,
                };
                sovereign::commands::query::run(&vm.load(&env)?.0, &sql).await
            }
            Command::Signal {
                vm,
                service,
                signal,
            } => {
                sovereign::commands::signal::signal(
                    &vm.load(&env)?.0,
                    service.to_guest(),
                    signal.to_guest(),
                )
                .await
            }
            Command::Probe { vm, check } => {
                sovereign::commands::probe::probe(&vm.load(&env)?.0, &check.to_probe()).await
            }
            Command::Backup { action } => match action {
                BackupAction::Now { vm, kind } => {
                    sovereign::commands::backup::now(&vm.load(&env)?.0, kind.to_kind()).await
                }
                BackupAction::List { vm, json } => {
                    sovereign::commands::backup::list(&vm.load(&env)?.0, json).await
                }
                BackupAction::Verify { vm } => {
                    sovereign::commands::backup::verify(&vm.load(&env)?.0).await
                }
                BackupAction::Key { vm, show, set, yes } => {
                    let spec = vm.load(&env)?.0;
                    match (show, set) {
                        (true, _) => sovereign::commands::backup::key::show(&spec, yes),
                        (_, true) => sovereign::commands::backup::key::set(&spec, yes),
                        _ => sovereign::commands::backup::key::where_it_is(&spec),
                    }
                }
                BackupAction::Export { vm, set, output } => {
                    sovereign::commands::backup::export::export(
                        &vm.load(&env)?.0,
                        set.as_deref(),
                        output.as_deref(),
                    )
                }
            },
            Command::Cluster { action } => {
                let (path, up) = match &action {
                    ClusterAction::Up { spec } => (spec, true),
                    ClusterAction::Status { spec } => (spec, false),
                };
                let cluster = match sovereign::cluster::Cluster::load(path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(2);
                    }
                };
                if up {
                    Ok(sovereign::cluster::up::run(&cluster)?)
                } else {
                    Ok(sovereign::cluster::status::run(&cluster))
                }
            }
            Command::Replica {
                action: ReplicaAction::Credentials { vm, out },
            } => sovereign::commands::replica::credentials(&vm.load(&env)?.0, out.as_deref()),
            Command::Promote { vm, force, yes } => {
                sovereign::commands::replica::promote(&vm.load(&env)?.0, force, yes).await
            }
            Command::Rejoin { vm, fresh, yes } => {
                let (spec, source) = vm.load(&env)?;
                sovereign::commands::replica::rejoin(spec, &env, &source, fresh, yes).await
            }
            Command::Db { action } => match action {
                DbAction::List { vm, json } => {
                    sovereign::commands::db::list(&vm.load(&env)?.0, json).await
                }
                DbAction::Url {
                    vm,
                    app,
                    format,
                    verify_full,
                    read_only,
                } => sovereign::commands::db::url(
                    &vm.load(&env)?.0,
                    &app,
                    format,
                    verify_full.as_deref(),
                    read_only,
                ),
                DbAction::Drop {
                    vm,
                    name,
                    yes,
                    output,
                } => {
                    sovereign::commands::db::drop(&vm.load(&env)?.0, &name, yes, output.as_deref())
                        .await
                }
                DbAction::Add {
                    vm,
                    app,
                    connection_limit,
                } => {
                    sovereign::commands::db::roles::add(
                        vm.spec.as_deref(),
                        &env,
                        &app,
                        connection_limit,
                    )
                    .await
                }
                DbAction::Password { vm, app, rotate: _ } => {
                    sovereign::commands::db::roles::rotate(&vm.load(&env)?.0, &app).await
                }
                DbAction::Ca { vm } => sovereign::commands::db::ca(&vm.load(&env)?.0),
                DbAction::Dump { vm, app, output } => {
                    sovereign::commands::db::dump::dump(&vm.load(&env)?.0, &app, output.as_deref())
                }
                DbAction::Restore { vm, app, file, yes } => {
                    sovereign::commands::db::dump::restore(&vm.load(&env)?.0, &app, &file, yes)
                }
            },
            Command::Restore {
                vm,
                to,
                yes,
                new_disk: true,
                from_export,
            } => {
                let (spec, source) = vm.load(&env)?;
                sovereign::commands::backup::restore_new_disk(
                    spec,
                    &env,
                    &source,
                    to,
                    yes,
                    from_export.as_deref(),
                )
                .await
            }
            Command::Restore {
                vm,
                to,
                yes,
                from_export: Some(file),
                ..
            } => sovereign::commands::backup::export::restore_from_export(
                &vm.load(&env)?.0,
                &file,
                to,
                yes,
            ),
            Command::Restore {
                vm,
                to,
                yes,
                new_disk: false,
                from_export: None,
            } => sovereign::commands::backup::restore(&vm.load(&env)?.0, to, yes).await,
            Command::Enable { vm } => {
                let (spec, _) = vm.load(&env)?;
                sovereign::commands::autostart::enable(&spec, vm.spec.as_deref(), &env)
            }
            Command::Disable { vm } => {
                sovereign::commands::autostart::disable(&vm.load(&env)?.0, &env)
            }
            Command::Build(args) => sovereign::commands::build::run(&args),
            Command::Deploy(args) => sovereign::commands::deploy::run(&args, &env),
            Command::Alerts {
                action: AlertsAction::List { vm },
            } => sovereign::commands::alerts::list(&vm.load(&env)?.0).await,
            Command::Alerts {
                action: AlertsAction::Test { vm },
            } => sovereign::commands::alerts::test(&vm.load(&env)?.0, &env),
            Command::Disk {
                action: DiskAction::Grow { vm, data, backup },
            } => {
                use sovereign::commands::disk::Which;
                let (which, flag, size) = match (data, backup) {
                    (Some(d), _) => (Which::Data, "--data", d),
                    (None, Some(b)) => (Which::Backup, "--backup", b),
                    (None, None) => anyhow::bail!("disk grow needs --data SIZE or --backup SIZE"),
                };
                let gib = sovereign::disk_grow::parse_gib(flag, &size)?;
                sovereign::commands::disk::grow(vm.spec.as_deref(), &env, which, gib).await
            }
            Command::Update {
                vm,
                images,
                rollback: _,
            } => {
                use sovereign::commands::update::{run, Action};
                let (spec, source) = vm.load(&env)?;
                let action = match &images {
                    Some(dir) => Action::Images(dir),
                    None => Action::Rollback,
                };
                run(spec, &env, &source, action).await
            }
            Command::Doctor { vm, try_vm } => {
                let (spec, source) = vm.load(&env)?;
                let mut facts = sovereign::doctor::facts(&spec, &env);
                if try_vm {
                    facts.extend(sovereign::doctor::trial::try_modes(&spec, &env));
                }
                print!("{}", sovereign::doctor::render(&facts));
                println!("preflight for VM {} ({source}):", spec.name);
                print!("{}", sovereign::preflight::run(&spec, &env));
                Ok(0)
            }
            Command::Logs { vm, log } => {
                sovereign::commands::logs::logs(&vm.load(&env)?.0, log.to_guest_log()).await
            }
            Command::Spec { vm } => {
                print!("{}", vm.load(&env)?.0.to_toml());
                Ok(0)
            }
            Command::Supervise { run_dir, lock_fd } => {
                let _lock = match lock_fd {
                    Some(fd) => Some(
                        sovereign::startlock::adopt(fd)
                            .context("cannot take over the start lock")?,
                    ),
                    None => None,
                };
                log::info!(
                    "supervisor {} for {}",
                    std::process::id(),
                    run_dir.display()
                );
                let code = sovereign::supervisor::run(RunDir::new(run_dir)).await?;
                log::info!("supervisor exits with {code}");
                Ok(code)
            }
        }
    })
}
