//! The report's Markdown tables.

use crate::inside::{cpu_s_per_gb, spread, Samples, Streams};
use crate::stages::{pid1_share_ms, pid1_split_ms, stage, StageTime};
use crate::{path, peer};
use std::fmt::Write as _;

/// Milliseconds as seconds with two decimals, or a dash.
fn secs(ms: Option<u64>) -> String {
    ms.map_or("–".into(), |ms| format!("{:.2}", ms as f64 / 1000.0))
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Boot to ready per stage, first and later boot, with PID 1's share and its split.
pub fn boot_table(out: &mut String, first: &[StageTime], later: &[StageTime]) {
    out.push_str(
        "| stage | first boot: host s | guest started s | guest ready s | later boot: host s | guest started s | guest ready s |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for f in first {
        let l = stage(later, &f.stage);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.stage,
            secs(f.host_ms),
            secs(f.guest_started_ms),
            secs(f.guest_ready_ms),
            secs(l.and_then(|l| l.host_ms)),
            secs(l.and_then(|l| l.guest_started_ms)),
            secs(l.and_then(|l| l.guest_ready_ms)),
        );
    }
    let _ = writeln!(
        out,
        "\nPID 1's own share (kernel hands over → control holds): first boot {} ms, later boot {} ms.\n",
        pid1_share_ms(first).map_or("–".into(), |m| m.to_string()),
        pid1_share_ms(later).map_or("–".into(), |m| m.to_string()),
    );
    for (label, times) in [("first boot", first), ("later boot", later)] {
        if let Some([init, devices, control]) = pid1_split_ms(times) {
            let _ = writeln!(
                out,
                "- {label}: init {init} ms, devices {devices} ms (waiting for drivers included), \
                 control {control} ms (dialling the host and waiting for its configuration included)"
            );
        }
    }
    out.push('\n');
}

/// The witness against the systemd peer: launch to psql by name, first and later boot.
pub fn systemd_table(out: &mut String, ours: [Option<u64>; 2], systemd: &[peer::PeerBoot; 2]) {
    out.push_str(
        "## Boot to psql by name, against the same packages under systemd\n\n\
         From launching the VMM's companions to the first psql from the second node that \
         answers, polled every 200 ms. The peer boots Debian's cloud kernel with its \
         initramfs, systemd, and gvforwarder, tailscaled and PostgreSQL as units; Debian \
         made its cluster when the image was built, so its first boot has no initdb.\n\n\
         | boot | ours s | systemd peer s | ratio | the peer by systemd-analyze |\n\
         |---|---|---|---|---|\n",
    );
    for ((label, ours), theirs) in ["first", "later"].iter().zip(ours).zip(systemd) {
        let ratio = ours.map_or("–".into(), |o| {
            format!("{:.2}", o as f64 / theirs.witness_ms as f64)
        });
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {ratio} | {} |",
            secs(ours),
            secs(Some(theirs.witness_ms)),
            theirs.startup.as_deref().unwrap_or("–"),
        );
    }
    out.push('\n');
}

/// The network path against the systemd peer's.
pub fn path_table(
    out: &mut String,
    ours: &path::PathFigures,
    theirs: &path::PathFigures,
    secs: u32,
) {
    let _ = writeln!(
        out,
        "## The network path against the systemd peer's (over the tailnet, by name)\n\n\
         Same tailscaled and PostgreSQL; ours forwards with PID 1, the peer with upstream \
         gvforwarder, each over real vsock to its own gvproxy. COPY of 32 MB each way \
         (upload into a temporary table); pgbench select-only, 4 clients, {secs} s, scale 10.\n\n\
         | what | ours | systemd peer | ratio |\n|---|---|---|---|\n\
         | COPY to the second node, MB/s | {:.1} | {:.1} | {:.2} |\n\
         | COPY from the second node, MB/s | {:.1} | {:.1} | {:.2} |\n\
         | pgbench select-only ×4, TPS | {:.0} | {:.0} | {:.2} |\n",
        ours.download_mb_s,
        theirs.download_mb_s,
        ours.download_mb_s / theirs.download_mb_s,
        ours.upload_mb_s,
        theirs.upload_mb_s,
        ours.upload_mb_s / theirs.upload_mb_s,
        ours.select_tps,
        theirs.select_tps,
        ours.select_tps / theirs.select_tps,
    );
}

/// What stands in for PID 1 on the systemd peer, against PID 1.
pub fn systemd_footprint(out: &mut String, ours_kib: Option<u64>, later: &peer::PeerBoot) {
    let of = |names: &[&str]| -> u64 {
        later
            .rss_kib
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, k)| k)
            .sum()
    };
    if later.rss_kib.is_empty() {
        out.push_str("| the systemd peer's resident memory | – (no report on its console) |\n");
        return;
    }
    let systemd = of(&["systemd"]);
    let daemons = of(&[
        "systemd-journal",
        "systemd-udevd",
        "systemd-logind",
        "dbus-daemon",
    ]);
    let forwarder = of(&["gvforwarder"]);
    let whole = systemd + daemons + forwarder;
    let mib = |kib: u64| format!("{:.2} MiB", kib as f64 / 1024.0);
    let _ = writeln!(
        out,
        "| peer: systemd (PID 1) resident after boot | {} |",
        mib(systemd)
    );
    let _ = writeln!(
        out,
        "| peer: journald, udevd, logind, dbus resident | {} |",
        mib(daemons)
    );
    let _ = writeln!(out, "| peer: gvforwarder resident | {} |", mib(forwarder));
    if let Some(ours) = ours_kib {
        let _ = writeln!(
            out,
            "| PID 1 against all of those ({}) | {:.2}× |",
            mib(whole),
            ours as f64 / whole as f64
        );
    }
}

/// The forwarder inside the VMs: throughput each way as median and range, CPU per GB,
/// the ratios, and how near each comes to raw vsock.
pub fn forwarder_table(out: &mut String, s: &Streams) {
    let peer = if s.theirs.is_some() {
        "alternating with the systemd peer's, both VMs up"
    } else {
        "no systemd peer in this run (SOVEREIGN_BENCH_PEER unset)"
    };
    let _ = writeln!(
        out,
        "## The forwarder inside the VMs, over real vsock\n\n\
         TCP between each guest and this host's loopback through gvproxy, {} MiB per \
         transfer, {} round(s) per forwarder, {peer}, timed at the host's end. \
         Forwarder CPU is what each guest's procfs says its forwarder spent (PID 1's two \
         pump threads; gvforwarder's process); VM CPU is QEMU's CPU time on the host \
         (the guest's kernel, forwarder and virtio together, under TCG).\n\n\
         | figure | sovereign-init | gvforwarder (systemd peer) | ratio |\n|---|---|---|---|",
        s.bytes >> 20,
        s.rounds
    );
    let rate = |v: &[crate::inside::Sample]| spread(v.iter().map(|x| x.mb_s));
    let show = |m: Option<(f64, f64, f64)>| {
        m.map_or("–".into(), |(med, lo, hi)| {
            format!("{med:.1} ({lo:.1}–{hi:.1})")
        })
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let theirs = s.theirs.as_ref();
    type Pick = fn(&Samples) -> &[crate::inside::Sample];
    let ways: [(&str, Pick); 2] = [
        ("host → guest MB/s, median (range)", |x| &x.down),
        ("guest → host MB/s, median (range)", |x| &x.up),
    ];
    for (label, pick) in ways {
        let (a, b) = (rate(pick(&s.ours)), theirs.and_then(|t| rate(pick(t))));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} |",
            show(a),
            show(b),
            ratio(a.map(|m| m.0), b.map(|m| m.0))
        );
    }
    type Cpu = fn(&crate::inside::Sample) -> Option<u64>;
    let cpus: [(&str, Cpu); 2] = [
        ("forwarder CPU s per GB", |x| x.forwarder_cpu_ms),
        ("whole VM CPU s per GB", |x| x.vm_cpu_ms),
    ];
    for (label, pick) in cpus {
        let (a, b) = (
            cpu_s_per_gb(&s.ours, pick),
            theirs.and_then(|t| cpu_s_per_gb(t, pick)),
        );
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
        let _ = writeln!(out, "| {label} | {} | {} | {} |", f(a), f(b), ratio(a, b));
    }
    for (label, pick) in ways {
        let raw = rate(pick(&s.raw)).map(|m| m.0);
        let pct = |m: Option<(f64, f64, f64)>| match (m, raw) {
            (Some(m), Some(r)) if r > 0.0 => format!("{:.0}%", 100.0 * m.0 / r),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| share of raw vsock ({} MB/s), {} | {} | {} | |",
            raw.map_or("–".into(), |r| format!("{r:.1}")),
            label.split(" MB/s").next().unwrap_or(label),
            pct(rate(pick(&s.ours))),
            pct(theirs.and_then(|t| rate(pick(t))))
        );
    }
    out.push('\n');
}
