//! Entry point. As PID 1 it boots the VM; as an ordinary process it offers the pieces
//! that make sense outside a VM (census, command-line parsing, the forwarder), which is
//! how they are tested and benchmarked on a host.

use protocol::evidence::InitEvidence;
use sovereign_init::devices::{census, kernel};
use sovereign_init::lifecycle::{reaper, signals};
use sovereign_init::{boot, clock, cmdline, console, guest, kmsg, mounts, net};
use std::time::Duration;

fn main() {
    if nix::unistd::getpid().as_raw() == 1 {
        pid1();
    }
    std::process::exit(tool(std::env::args().skip(1).collect()));
}

/// PID 1: never returns.
fn pid1() -> ! {
    // When the kernel handed over: the start of PID 1's own share of the boot.
    let handed_over_ms = clock::uptime_ms();
    // Signals before anything else, so none is lost or acted on half-way.
    let sigfd = signals::install();
    // The kernel starts init with no PATH; every helper we run needs one. Set while
    // this is still the only thread.
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    kmsg::install(log::LevelFilter::Info);
    let mounted = mounts::mount_system();
    // Our log lines go through /dev/kmsg, which rate-limits userspace to 10 lines per
    // 5 s by default and silently drops the rest.
    if let Err(e) = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n") {
        log::warn!("cannot lift the /dev/kmsg rate limit: {e}");
    }
    console::reopen_stdio();
    kmsg::use_kmsg();
    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (boot_config, warnings) = cmdline::parse(&cmdline_text);
    log::set_max_level(boot_config.log_level);
    log::info!(
        "sovereign-init {} starting as PID 1",
        env!("CARGO_PKG_VERSION")
    );
    for w in &warnings {
        log::warn!("{w}");
    }
    let init = mounted.map(|()| InitEvidence {
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: kernel::release(),
        cmdline_warnings: warnings,
        handed_over_ms: Some(handed_over_ms),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let boot_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("boot".into())
        .spawn(move || boot::run(boot_config, init, rx, boot_tx));
    if let Err(e) = spawned {
        log::error!("cannot start the boot thread: {e}");
    }
    match sigfd {
        Ok(fd) => loop {
            match fd.read_signal() {
                Ok(Some(info)) => match signals::action(info.ssi_signo) {
                    signals::SignalAction::Reap => {
                        reaper::reap_all();
                    }
                    signals::SignalAction::PowerOff(sig) => {
                        log::info!("received {sig}: powering off");
                        let _ = tx.send(guest::Event::PowerOff(format!("received {sig}")));
                    }
                    signals::SignalAction::Ignore(sig) => log::debug!("ignoring {sig}"),
                },
                Ok(None) => {}
                Err(e) => {
                    log::error!("reading the signalfd failed: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    reaper::reap_all();
                }
            }
        },
        Err(e) => {
            log::error!("signalfd setup failed ({e}); reaping by polling, signals ignored");
            loop {
                std::thread::sleep(Duration::from_secs(1));
                reaper::reap_all();
            }
        }
    }
}

const USAGE: &str = "\
sovereign-init: PID 1 of the Sovereign PostgreSQL VM.

Run as PID 1 it boots the VM. Run as an ordinary process it offers:
  sovereign-init census [--root DIR] [--wait SECS]   print the virtio device report (JSON)
  sovereign-init cmdline [TEXT]                       parse sovereign.* keys (default: /proc/cmdline)
  sovereign-init forward --unix PATH [--tap NAME] [--address IP/PREFIX] [--gateway IP] [--mtu N]
                                                      run the tap <-> gvproxy forwarder (root)
  sovereign-init resolve NAME                         resolve a name with this binary's resolver
  sovereign-init --version | --help";

/// Tool mode; returns the exit code.
fn tool(args: Vec<String>) -> i32 {
    kmsg::install(log::LevelFilter::Info);
    let mut it = args.iter().map(String::as_str);
    match it.next() {
        Some("census") => run_census(it.collect()),
        Some("cmdline") => {
            let text = match it.next() {
                Some(t) => t.to_string(),
                None => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            };
            let (config, warnings) = cmdline::parse(&text);
            println!("{config:#?}");
            for w in warnings {
                println!("warning: {w}");
            }
            0
        }
        Some("forward") => forward(it.collect()),
        Some("resolve") => match it.next() {
            Some(name) => match net::probe::resolve_via(
                std::net::Ipv4Addr::UNSPECIFIED,
                name,
                Duration::from_secs(5),
            ) {
                Ok(addrs) => {
                    for a in addrs {
                        println!("{}", a.ip());
                    }
                    0
                }
                Err(e) => {
                    eprintln!("resolve: {e}");
                    1
                }
            },
            None => {
                eprintln!("resolve: a host name is required");
                2
            }
        },
        Some("--version") => {
            println!("sovereign-init {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            0
        }
        other => {
            eprintln!("sovereign-init: unknown command {other:?}; this is PID 1 of the VM, not PID 1 here\n\n{USAGE}");
            2
        }
    }
}

/// Value of `--flag VALUE` in `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1).copied())
}

fn run_census(args: Vec<&str>) -> i32 {
    let root = flag(&args, "--root").unwrap_or("/");
    let wait = match flag(&args, "--wait").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(secs)) => secs,
        Some(Err(_)) => {
            eprintln!(
                "census: --wait {:?} is not a whole number of seconds",
                flag(&args, "--wait").unwrap_or_default()
            );
            return 2;
        }
    };
    let facts = census::KernelFacts {
        release: kernel::release(),
        ..Default::default()
    };
    let report = census::census(&census::Sysfs::new(root), Duration::from_secs(wait), &facts);
    match serde_json::to_string_pretty(&report) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("census: {e}");
            1
        }
    }
}

fn forward(args: Vec<&str>) -> i32 {
    let Some(path) = flag(&args, "--unix") else {
        eprintln!("forward: --unix PATH (gvproxy's listen socket) is required");
        return 2;
    };
    let mut cfg = protocol::config::NetworkConfig::default();
    if let Some(a) = flag(&args, "--address") {
        let parsed = a
            .split_once('/')
            .and_then(|(ip, p)| Some((ip.parse().ok()?, p.parse().ok()?)));
        match parsed {
            Some((ip, prefix)) => (cfg.address, cfg.prefix_len) = (ip, prefix),
            None => {
                eprintln!("forward: --address {a:?} is not IP/PREFIX");
                return 2;
            }
        }
    }
    if let Some(g) = flag(&args, "--gateway") {
        match g.parse() {
            Ok(ip) => (cfg.gateway, cfg.dns) = (ip, ip),
            Err(_) => {
                eprintln!("forward: --gateway {g:?} is not an IPv4 address");
                return 2;
            }
        }
    }
    if let Some(m) = flag(&args, "--mtu") {
        match m.parse() {
            Ok(mtu) => cfg.mtu = mtu,
            Err(_) => {
                eprintln!("forward: --mtu {m:?} is not a number");
                return 2;
            }
        }
    }
    if let Err(e) = cfg.validate() {
        eprintln!("forward: {e}");
        return 2;
    }
    let tap = flag(&args, "--tap").unwrap_or(net::TAP_NAME);
    let endpoint = net::Endpoint::Unix(path.into());
    match net::Network::start_with(&cfg, tap, endpoint, None) {
        Ok(network) => loop {
            std::thread::sleep(Duration::from_secs(5));
            log::info!("counters: {:?}", network.counters());
        },
        Err(e) => {
            eprintln!("forward: {e}");
            1
        }
    }
}
