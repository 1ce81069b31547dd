//! The VM benchmark behind `scripts/bench.sh`: one VM under QEMU on a local tailnet,
//! measured in the same run against its in-guest baseline:
//!
//! - boot to ready, per stage, on the first boot (initdb included) and on a later one,
//!   by the host's clock (from the VMM's start) and by the guest's (from the kernel's
//!   start), with PID 1's own share: from the kernel handing over to it until `control`;
//! - boot to the witness (psql from the second node by name answers) against the same
//!   packages booted with systemd, Debian's cloud kernel and upstream gvforwarder
//!   (`peer.rs`; the image is `$SOVEREIGN_BENCH_PEER`, from scripts/build-peer-image.sh),
//!   and the resident memory of what stands in for PID 1 there;
//! - PID 1's resident memory after ready and its peak under forwarding load (pgbench
//!   over the tailnet at the most clients), the binaries' and the root image's sizes;
//! - pgbench (select-only and tpcb-like at 1, 4 and 16 clients) from the second
//!   tailnet node against the same run inside the guest over the unix socket
//!   (`sovereign probe pgbench`): the ratio is what the whole network path costs;
//! - the forwarder inside the VMs over real vsock (`inside.rs`): bulk TCP both ways
//!   through ours and through upstream gvforwarder in the systemd peer, both VMs up,
//!   rounds alternating, with each forwarder's CPU and the whole VM's per GB, and the
//!   raw vsock stream rate beside them.
//!
//! Prints a Markdown report and writes it to `target/bench/vm.md`, with a chart of both
//! in `target/bench/vm.png`. Not a test: numbers, not assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a failed step ends it

mod chart;
mod inside;
mod path;
mod peer;
mod report;
mod stages;

use protocol::messages::ProcessMemory;
use report::{boot_table, forwarder_table, mib, path_table, systemd_footprint, systemd_table};
use sovereign_tests::artifacts::{missing_prerequisite, workspace_target_dir, Artifacts};
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::Vm;
use stages::{stage, stage_times, StageTime};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The peer's connection string: the VM by its tailnet name.
const DSN: &str = "host=sql-vm port=5432 user=postgres dbname=postgres";
/// pgbench's scale: 10 is 1M accounts, ~150 MiB, in cache on a 1 GiB VM.
const SCALE: &str = "10";
/// Client counts of the pgbench matrix.
const CLIENTS: [u16; 3] = [1, 4, 16];
/// Scripts of the pgbench matrix.
const SCRIPTS: [&str; 2] = ["select-only", "tpcb-like"];

fn fail(msg: &str) -> ! {
    eprintln!("bench-vm: {msg}");
    std::process::exit(1);
}

/// Boots the VM; returns its stage times and when psql from `peer` by name first
/// answered (ms from launching `start`: the witness the systemd peer is timed to).
fn boot(vm: &Vm, peer: &TailNode, what: &str) -> (Vec<StageTime>, Option<u64>) {
    eprintln!("==> {what}");
    let t0 = Instant::now();
    let password = || {
        std::fs::read_to_string(vm.home.path().join("secrets/sql-postgres.password"))
            .ok()
            .map(|p| p.trim().to_string())
    };
    std::thread::scope(|s| {
        let witness = s.spawn(|| peer::witness(peer, "sql-vm", password, t0, || false));
        let o = vm.start();
        if !o.status.success() {
            fail(&format!("{what} failed:\n{}", text(&o)));
        }
        let times = stage_times(&vm.status());
        let witness_ms = witness.join().ok().flatten();
        if let Some(ms) = witness_ms {
            eprintln!("    psql answered after {:.2} s", ms as f64 / 1000.0);
        }
        (times, witness_ms)
    })
}

/// The font the chart's labels use: `$SOVEREIGN_BENCH_FONT`, else Debian's DejaVu Sans
/// (fonts-dejavu-core, which scripts/ci-deps.sh installs).
fn chart_font() -> std::path::PathBuf {
    std::env::var_os("SOVEREIGN_BENCH_FONT")
        .map(Into::into)
        .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into())
}

/// A boot as the chart draws it: the kernel until PID 1, then each stage from the end of
/// the one before to its own ready, by the guest's clock.
fn chart_boot(label: &str, times: &[StageTime]) -> chart::Boot {
    let mut spans = Vec::new();
    let mut from = stage(times, "init").and_then(|t| t.guest_started_ms);
    if let Some(handover) = from {
        spans.push(("kernel".to_string(), 0.0, handover as f64 / 1000.0));
    }
    for t in times {
        if let (Some(start), Some(end)) = (from, t.guest_ready_ms) {
            spans.push((t.stage.clone(), start as f64 / 1000.0, end as f64 / 1000.0));
            from = Some(end);
        }
    }
    chart::Boot {
        label: label.to_string(),
        spans,
    }
}

/// TPS and average latency (ms) from pgbench's report.
fn pgbench_figures(report: &str) -> Option<(f64, f64)> {
    let number_after = |prefix: &str| {
        report.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
    };
    Some((number_after("tps = ")?, number_after("latency average = ")?))
}

/// The second node's pgbench: `$SOVEREIGN_BENCH_PG_BIN/pgbench` (scripts/bench.sh sets
/// it), else the one on PATH.
fn pgbench() -> String {
    std::env::var("SOVEREIGN_BENCH_PG_BIN")
        .map(|d| format!("{d}/pgbench"))
        .unwrap_or_else(|_| "pgbench".into())
}

/// One pgbench run from the peer over the tailnet.
fn over_tailnet(peer: &TailNode, password: &str, script: &str, clients: u16, secs: u32) -> String {
    let n = clients.to_string();
    let o = run(peer
        .command(&pgbench())
        .args([
            "-n",
            "-b",
            script,
            "-c",
            &n,
            "-j",
            &n,
            "-T",
            &secs.to_string(),
            DSN,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "15"));
    if !o.status.success() {
        fail(&format!(
            "pgbench over the tailnet ({script}, {clients}): {}",
            text(&o)
        ));
    }
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The same run inside the guest over the unix socket.
fn in_guest(vm: &Vm, script: &str, clients: u16, secs: u32) -> String {
    let (n, s) = (clients.to_string(), secs.to_string());
    let o = vm.cli(
        "probe",
        &[
            "pgbench",
            "--mode",
            script,
            "--clients",
            &n,
            "--seconds",
            &s,
        ],
    );
    if !o.status.success() {
        fail(&format!(
            "pgbench in the guest ({script}, {clients}): {}",
            text(&o)
        ));
    }
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// PID 1's memory as the guest reports it.
fn init_memory(vm: &Vm) -> Option<ProcessMemory> {
    vm.status().guest?.init_memory
}

/// A systemd boot as the chart draws it: kernel, initrd and userspace to the default
/// target, by systemd-analyze.
fn chart_systemd_boot(label: &str, boot: &peer::PeerBoot) -> Option<chart::Boot> {
    let (kernel, initrd, userspace) = boot.phases?;
    let mut spans = vec![("kernel".to_string(), 0.0, kernel)];
    // Debian's initramfs-tools leaves no initrd timestamps: its time is in the kernel's.
    if initrd > 0.0 {
        spans.push(("initrd".to_string(), kernel, kernel + initrd));
    }
    spans.push((
        "systemd to its target".to_string(),
        kernel + initrd,
        kernel + initrd + userspace,
    ));
    Some(chart::Boot {
        label: label.to_string(),
        spans,
    })
}

/// A positive number from the environment, or `default`.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The forwarder inside the VMs (ours is up): alternating rounds against the systemd
/// peer, booted once more with its stream unit on, then the raw vsock rate.
fn forwarder_inside(
    vm: &Vm,
    peer: &TailNode,
    peer_vm: Option<&(&peer::PeerImage, Vm)>,
) -> inside::Streams {
    let rounds = usize::try_from(env_number("SOVEREIGN_BENCH_STREAM_ROUNDS", 3)).unwrap_or(3);
    let bytes = env_number("SOVEREIGN_BENCH_STREAM_MIB", 64) << 20;
    eprintln!(
        "==> the forwarder inside the VMs over real vsock: {rounds} alternating round(s) of {} MiB each way",
        bytes >> 20
    );
    let (ours, theirs) = match peer_vm {
        Some((image, pvm)) => {
            let mut streams = inside::PeerStreams::listen().unwrap_or_else(|e| fail(&e));
            peer::give_stream_port(pvm, streams.port()).unwrap_or_else(|e| fail(&e));
            let (_, result) = peer::boot(pvm, peer, image, "forwarder rounds", |qemu| {
                inside::rounds(vm, Some((&mut streams, qemu)), rounds, bytes)
            })
            .unwrap_or_else(|e| fail(&e));
            result.unwrap_or_else(|e| fail(&e))
        }
        None => inside::rounds(vm, None, rounds, bytes).unwrap_or_else(|e| fail(&e)),
    };
    eprintln!("==> raw vsock, the same endpoints without TCP or forwarder");
    let raw = inside::raw_vsock(vm, rounds, bytes).unwrap_or_else(|e| fail(&e));
    inside::Streams {
        ours,
        theirs: peer_vm.is_some().then_some(theirs),
        raw,
        bytes,
        rounds,
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: bench-vm ARTIFACT_DIR (scripts/bench.sh passes it)"));
    if let Some(why) = missing_prerequisite() {
        fail(&why);
    }
    let run_secs: u32 = std::env::var("SOVEREIGN_BENCH_PGBENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let a = Artifacts::in_dir(Path::new(&dir), "bzImage").unwrap_or_else(|e| fail(&e));
    let peer_image = match std::env::var_os("SOVEREIGN_BENCH_PEER") {
        Some(d) => Some(peer::PeerImage::open(Path::new(&d)).unwrap_or_else(|e| fail(&e))),
        None => {
            eprintln!(
                "bench-vm: SOVEREIGN_BENCH_PEER is not set: no systemd peer (scripts/bench.sh builds it)"
            );
            None
        }
    };
    let mut lab = Lab::start(&a.tools, "benchvm").unwrap_or_else(|e| fail(&e));
    let mut opts = lab.vm_options();
    opts.data_disk_gib = 4;
    opts.stage_timeout_secs = 300;
    let (login_server, key_file) = (lab.headscale.url.clone(), lab.vm_key_file.clone());
    let vm = Vm::new(&a, &opts);
    let peer = lab.join_peer().unwrap_or_else(|e| fail(&e));

    let peer_vm = peer_image.as_ref().map(|image| {
        let pvm = peer::new_vm(&a, image, opts.clone());
        peer::give_tailnet(&pvm, &login_server, &key_file).unwrap_or_else(|e| fail(&e));
        (image, pvm)
    });
    let systemd = peer_vm.as_ref().map(|(image, pvm)| {
        let (first, ()) =
            peer::boot(pvm, peer, image, "first boot", |_| ()).unwrap_or_else(|e| fail(&e));
        let (later, figures) = peer::boot(pvm, peer, image, "later boot", |_| {
            path::measure(
                peer,
                peer::HOSTNAME,
                &image.password(),
                &pgbench(),
                true,
                run_secs,
            )
        })
        .unwrap_or_else(|e| fail(&e));
        let figures = figures.unwrap_or_else(|e| fail(&e));
        ([first, later], figures)
    });

    let (first, first_witness) = boot(&vm, peer, "first boot (initdb included)");
    let after_ready = init_memory(&vm);
    let password = vm.superuser_password();
    wait_for(Duration::from_secs(120), Duration::from_secs(3), || {
        run(peer
            .command("psql")
            .args([DSN, "-c", "select 1"])
            .env("PGPASSWORD", &password))
        .status
        .success()
        .then_some(())
    })
    .unwrap_or_else(|| fail("psql from the peer never worked"));
    eprintln!("==> pgbench -i -s {SCALE} (generated in the server)");
    let init = run(peer
        .command(&pgbench())
        .args(["-i", "-s", SCALE, "-I", "dtGvp", DSN])
        .env("PGPASSWORD", &password));
    if !init.status.success() {
        fail(&format!("pgbench -i: {}", text(&init)));
    }

    let ours_path = systemd.as_ref().map(|_| {
        path::measure(peer, "sql-vm", &password, &pgbench(), false, run_secs)
            .unwrap_or_else(|e| fail(&e))
    });

    let mut rows = Vec::new();
    let peak_under_load = AtomicU64::new(0);
    for script in SCRIPTS {
        for clients in CLIENTS {
            eprintln!("==> pgbench {script}, {clients} client(s), {run_secs} s: tailnet, then in the guest");
            let sampling = AtomicBool::new(clients == CLIENTS[CLIENTS.len() - 1]);
            let tailnet = std::thread::scope(|s| {
                s.spawn(|| {
                    while sampling.load(Ordering::SeqCst) {
                        if let Some(m) = init_memory(&vm) {
                            peak_under_load.fetch_max(m.rss_kib, Ordering::SeqCst);
                        }
                        std::thread::sleep(Duration::from_secs(2));
                    }
                });
                let report = over_tailnet(peer, &password, script, clients, run_secs);
                sampling.store(false, Ordering::SeqCst);
                report
            });
            let guest = in_guest(&vm, script, clients, run_secs);
            let t = pgbench_figures(&tailnet)
                .unwrap_or_else(|| fail(&format!("no figures in {tailnet}")));
            let g =
                pgbench_figures(&guest).unwrap_or_else(|| fail(&format!("no figures in {guest}")));
            eprintln!("    tailnet {:.0} TPS, guest {:.0} TPS", t.0, g.0);
            rows.push((script, clients, t, g));
        }
    }
    eprintln!("==> stop, then a later boot");
    let o = vm.stop();
    if !o.status.success() {
        fail(&format!("stop failed:\n{}", text(&o)));
    }
    let (later, later_witness) = boot(&vm, peer, "later boot");
    let streams = forwarder_inside(&vm, peer, peer_vm.as_ref());
    let peak_after_load = init_memory(&vm);
    let o = vm.stop();
    if !o.status.success() {
        fail(&format!("stop failed:\n{}", text(&o)));
    }

    let mut out = String::from("## Boot to ready, per stage (QEMU TCG)\n\n");
    boot_table(&mut out, &first, &later);
    if let Some((boots, theirs)) = &systemd {
        systemd_table(&mut out, [first_witness, later_witness], boots);
        if let Some(ours) = &ours_path {
            path_table(&mut out, ours, theirs, run_secs);
        }
    }
    forwarder_table(&mut out, &streams);
    out.push_str("## pgbench: over the tailnet from the second node against inside the guest\n\n");
    let _ = writeln!(
        out,
        "Scale {SCALE}, {run_secs} s per run; the ratio is tailnet TPS / in-guest TPS.\n\n\
         | script | clients | tailnet TPS | latency ms | in-guest TPS | latency ms | ratio |\n\
         |---|---|---|---|---|---|---|"
    );
    for (script, clients, t, g) in &rows {
        let _ = writeln!(
            out,
            "| {script} | {clients} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} |",
            t.0,
            t.1,
            g.0,
            g.1,
            t.0 / g.0
        );
    }
    out.push_str("\n## Footprint\n\n| what | size |\n|---|---|\n");
    let kib = |k: Option<u64>| k.map_or("–".into(), |k| format!("{:.2} MiB", k as f64 / 1024.0));
    let _ = writeln!(
        out,
        "| PID 1 resident after ready | {} |",
        kib(after_ready.map(|m| m.rss_kib))
    );
    if let Some(m) = after_ready {
        let _ = writeln!(
            out,
            "| of which anonymous (heap, stacks) / the binary's pages / threads | {} / {} / {} |",
            kib(m.anon_kib),
            kib(m.file_kib),
            m.threads.map_or("–".into(), |t| t.to_string())
        );
    }
    let _ = writeln!(
        out,
        "| PID 1 resident under forwarding load (highest sample) | {} |",
        kib(Some(peak_under_load.load(Ordering::SeqCst)).filter(|k| *k > 0))
    );
    let _ = writeln!(
        out,
        "| PID 1 peak resident (VmHWM) after the runs | {} |",
        kib(peak_after_load.map(|m| m.peak_kib))
    );
    if let Some(([_, later], _)) = &systemd {
        systemd_footprint(&mut out, after_ready.map(|m| m.rss_kib), later);
    }
    for (name, file) in [
        (
            "sovereign-init binary",
            Path::new(&dir).join("sovereign-init"),
        ),
        ("sovereign binary", Path::new(&dir).join("sovereign")),
    ] {
        if let Ok(m) = std::fs::metadata(&file) {
            let _ = writeln!(out, "| {name} | {} |", mib(m.len()));
        }
    }
    if let Ok(m) = std::fs::metadata(&a.root_image) {
        let _ = writeln!(
            out,
            "| root image (apparent / allocated) | {} / {} |",
            mib(m.len()),
            mib(m.blocks() * 512)
        );
    }
    if let Some(bytes) = peer_image.as_ref().and_then(peer::PeerImage::root_bytes) {
        let _ = writeln!(
            out,
            "| the systemd peer's root image (apparent) | {} |",
            mib(bytes)
        );
    }
    println!("{out}");
    let dest = workspace_target_dir().join("bench");
    if std::fs::create_dir_all(&dest).is_ok() {
        let _ = std::fs::write(dest.join("vm.md"), &out);
        eprintln!("written to {}", dest.join("vm.md").display());
    }
    let mut boots = vec![
        chart_boot("first boot", &first),
        chart_boot("later boot", &later),
    ];
    if let Some(([f, l], _)) = &systemd {
        boots.extend(chart_systemd_boot("systemd, first", f));
        boots.extend(chart_systemd_boot("systemd, later", l));
    }
    let tps = chart::Bars {
        caption: "pgbench TPS: tailnet vs inside the guest".into(),
        series: vec!["over the tailnet".into(), "inside the guest".into()],
        groups: rows
            .iter()
            .map(|(script, clients, t, g)| {
                let name = if *script == "select-only" {
                    "S"
                } else {
                    "TPC-B"
                };
                (format!("{name} ×{clients}"), vec![t.0, g.0])
            })
            .collect(),
    };
    let png = dest.join("vm.png");
    let panels = [streams.chart(), tps];
    match chart::use_font(&chart_font()).and_then(|()| chart::draw(&png, &boots, &panels)) {
        Ok(()) => eprintln!("chart in {}", png.display()),
        Err(e) => eprintln!("no chart: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_reports_are_read() {
        let report = "transaction type: <builtin: select only>\nscaling factor: 10\n\
                      latency average = 2.909 ms\ninitial connection time = 12.3 ms\n\
                      tps = 1375.123456 (without initial connection time)\n";
        assert_eq!(pgbench_figures(report), Some((1375.123456, 2.909)));
        assert_eq!(pgbench_figures("pgbench: error: connection failed"), None);
    }
}
