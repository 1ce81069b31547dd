//! `sovereign status`: the supervisor's view (processes, stages, the guest's own status)
//! as a table or JSON; without a supervisor, what the pid files say.

use super::running_spec;
use crate::ipc::{base_status, Client, Phase, ProcessInfo, Reply, Request, VmStatus};
use crate::rundir::{Role, RunDir};
use crate::spec::{Backend, Spec};
use crate::terminal::{human_duration, mark};

/// Gathers the status of `spec`'s VM: the supervisor's view and the guest's own, and,
/// while the guest answers, the database and replication as the server has them.
pub async fn gather(spec: &Spec) -> VmStatus {
    let mut status = gather_vm(spec).await;
    status.autostart = crate::autostart::installed(&crate::paths::HostEnv::detect(), &spec.name);
    status.images = crate::run_files::image_sets(&RunDir::new(&spec.run_dir))
        .read()
        .ok()
        .flatten();
    if status.control_connected {
        status.database = super::db::view(spec).await;
        status.replication = super::replica::status(spec).await;
    }
    status
}

/// The supervisor's status of `spec`'s VM, or what the pid files say without one.
async fn gather_vm(spec: &Spec) -> VmStatus {
    let spec = running_spec(spec);
    let run = RunDir::new(&spec.run_dir);
    if let Ok(mut c) = Client::connect(&run).await {
        match c.call(&Request::Status).await {
            Ok(Reply::Status(s)) => return *s,
            Ok(other) => log::warn!("unexpected status answer {other:?}"),
            Err(e) => log::warn!("status request failed: {e}"),
        }
    }
    VmStatus {
        processes: Role::ALL
            .iter()
            .filter(|r| **r != Role::VhostDeviceVsock || spec.vmm.backend == Backend::Qemu)
            .map(|&role| ProcessInfo {
                role,
                pid: run.recorded_pid(role),
                alive: run.live_pid(role).is_some(),
            })
            .collect(),
        guest_error: Some("no supervisor is running".into()),
        ..base_status(&spec, Phase::NotRunning)
    }
}

/// How often `status --watch` refreshes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `status`; exit 0 when the VM is up, 1 otherwise. With `watch`, redraws the
/// table in place every [`WATCH_EVERY`] until interrupted.
pub async fn run(spec: &Spec, json: bool, watch: bool) -> anyhow::Result<i32> {
    loop {
        let s = gather(spec).await;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            let mut text = render(&s);
            if let Some(d) = &s.database {
                text.push_str(&super::db::render_view(d));
            }
            if let Some(r) = &s.replication {
                text.push_str(&super::replica::render_status(
                    r,
                    spec.data_disk.size_gib << 30,
                ));
            }
            if let Some(f) = s.guest.as_ref().and_then(|g| g.fence.as_ref()) {
                text.push_str(&super::replica::render_fence(
                    f,
                    // The guest stamps it by its clock, which may be set off the host's.
                    crate::guest_clock::guest_now_unix_ms()
                        .map_or(0, |ms| i64::try_from(ms / 1000).unwrap_or(i64::MAX)),
                ));
            }
            if watch {
                // Home and clear, then the table: redrawn in place.
                print!("\x1b[H\x1b[2J");
            }
            print!("{text}");
        }
        if !watch {
            return Ok(if s.phase == Phase::Up { 0 } else { 1 });
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

/// Share of the data disk in use above which status warns.
const DISK_WARN_PERCENT: u64 = 80;

/// Free space on the backup disk below which it counts as full: a WAL segment (16 MiB)
/// and pgBackRest's own files no longer fit.
const BACKUP_DISK_FULL_BYTES: u64 = 64 << 20;

/// What status says after the backup disk's free space: why archiving and backups
/// fail when it is full, a warning when it is filling up.
fn backup_disk_note(total: u64, available: u64) -> String {
    if total > 0 && available < BACKUP_DISK_FULL_BYTES {
        " ✗ FULL: WAL archiving and backups fail until space is freed (fewer backup.retention_days, or a bigger backup_disk)".to_string()
    } else {
        disk_warning(total, available).unwrap_or_default()
    }
}

/// The warning for a data disk that is filling up, if it is.
fn disk_warning(total: u64, available: u64) -> Option<String> {
    let used = total.saturating_sub(available);
    let percent = used.saturating_mul(100).checked_div(total)?;
    (percent >= DISK_WARN_PERCENT).then(|| {
        format!(
            " ⚠ {percent}% used (warning from {DISK_WARN_PERCENT}%): grow the disk or delete data"
        )
    })
}

/// The active alerts, one line each with since when; nothing when none holds.
pub fn render_alerts(o: &mut String, alerts: &[protocol::alerts::ActiveAlert]) {
    use std::fmt::Write as _;
    if alerts.is_empty() {
        return;
    }
    let now = u64::try_from(now_unix()).unwrap_or(0);
    let _ = writeln!(o, "  alerts:");
    for a in alerts {
        let mark = match a.severity {
            protocol::alerts::Severity::Critical => "✗",
            protocol::alerts::Severity::Warning => "!",
        };
        let _ = writeln!(
            o,
            "    {mark} {} ({}, for {}): {}",
            a.condition,
            a.severity,
            human_duration(now.saturating_sub(a.since_unix) * 1000),
            a.summary
        );
    }
}

/// The human table.
pub fn render(s: &VmStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let phase = s.phase;
    let age = s
        .elapsed_ms
        .map(|m| format!(", for {}", human_duration(m)))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "VM {} (CID {}, {}): {phase}{age}",
        s.name, s.cid, s.backend
    );
    let vmm_alive = s.processes.iter().any(|p| p.role == Role::Vmm && p.alive);
    if s.phase == Phase::NotRunning && vmm_alive {
        let _ = writeln!(
            o,
            "  ✗ the supervisor is gone but the VM runs: postgres may still serve, but nothing watches it; `sovereign stop` shuts the guest down cleanly"
        );
    }
    let _ = writeln!(o, "  processes:");
    for p in &s.processes {
        let pid = p.pid.map_or("-".to_string(), |p| p.to_string());
        let _ = writeln!(
            o,
            "    {:<19} pid {:<8} {}",
            p.role.name(),
            pid,
            if p.alive { "alive" } else { "not running" }
        );
    }
    if let Some(last) = s.restarts.last() {
        let ago = u64::try_from(now_unix())
            .unwrap_or(0)
            .saturating_sub(last.at_unix);
        let _ = writeln!(
            o,
            "  ! booted again {} time(s) after its VMM died; the last {} ago ({}); the console before it is in the log",
            s.restarts.len(),
            human_duration(ago * 1000),
            last.exited
        );
    }
    render_alerts(&mut o, &s.alerts);
    if let Some(sets) = &s.images {
        crate::update::render_status(&mut o, sets);
    }
    let refused = &s.control_refused;
    if refused.count > 0 {
        let ago = u64::try_from(now_unix())
            .unwrap_or(0)
            .saturating_sub(refused.last_unix);
        let _ = writeln!(
            o,
            "  ✗ {} control connection(s) refused: a guest process other than PID 1 tried to speak for the guest; the last {} ago: {}",
            refused.count,
            human_duration(ago * 1000),
            refused.last.as_deref().unwrap_or("?")
        );
    }
    if !s.stages.is_empty() {
        let _ = writeln!(o, "  stages:");
        for l in &s.stages {
            let at = l.elapsed_ms.map(human_duration).unwrap_or_default();
            let _ = writeln!(
                o,
                "    {:<9} {} {:>7}  {}",
                l.stage.name(),
                mark(l.status),
                at,
                l.summary
            );
        }
    }
    let _ = writeln!(
        o,
        "  control channel: {}",
        if s.control_connected {
            "connected"
        } else {
            "not connected"
        }
    );
    match &s.guest {
        Some(g) => {
            let _ = writeln!(o, "  guest: up {}", human_duration(g.uptime_ms));
            if let Some(t) = &g.tailnet {
                let _ = writeln!(o, "    tailnet:  {} {}", t.name, t.ips.join(" "));
            }
            if let Some(p) = &g.postgres {
                let _ = writeln!(
                    o,
                    "    postgres: {} {} listening on {}",
                    p.state,
                    p.version,
                    p.listen.join(" ")
                );
            }
            if !g.image.is_empty() {
                let _ = writeln!(o, "    image:    {}", protocol::release::summary(&g.image));
            }
            if let Some(d) = &g.data_disk {
                let _ = writeln!(
                    o,
                    "    data disk: {} MiB free of {} MiB{}",
                    d.available_bytes >> 20,
                    d.total_bytes >> 20,
                    if d.reserve_released {
                        " ✗ FULL: the emergency reserve is released; delete data or grow the disk"
                            .to_string()
                    } else {
                        disk_warning(d.total_bytes, d.available_bytes).unwrap_or_default()
                    }
                );
            }
            if let Some(b) = &g.backup {
                o.push_str(&render_backup(b, now_unix()));
            }
            if let Some(n) = &g.network {
                let _ = writeln!(
                    o,
                    "    network:  {} out {} frames/{} B, in {} frames/{} B, {} drops, {} reconnects",
                    if n.connected { "connected" } else { "disconnected" },
                    n.frames_out,
                    n.bytes_out,
                    n.frames_in,
                    n.bytes_in,
                    n.drops,
                    n.reconnects
                );
            }
            for svc in &g.services {
                let pid = svc.pid.map_or("-".to_string(), |p| p.to_string());
                let _ = writeln!(
                    o,
                    "    service:  {} pid {pid}, {} restart(s)",
                    svc.name, svc.restarts
                );
            }
        }
        None => {
            let _ = writeln!(
                o,
                "  guest: {}",
                s.guest_error.as_deref().unwrap_or("unknown")
            );
        }
    }
    match (&s.autostart, s.backend.as_str()) {
        (Some(p), _) => {
            let _ = writeln!(o, "  after a reboot: starts by itself ({})", p.display());
        }
        (None, "crosvm") => {
            let _ = writeln!(
                o,
                "  after a reboot: stays down (`sovereign enable` makes it start by itself)"
            );
        }
        (None, _) => {}
    }
    let _ = writeln!(o, "  console: {}", s.console_log.display());
    let _ = writeln!(o, "  log:     {}", s.supervisor_log.display());
    o
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The backup lines of `status`: what is broken first, then the last backup, the WAL
/// archive (its age is the committed work at risk right now), the window, the disk.
pub fn render_backup(b: &protocol::backup::BackupStatus, now: i64) -> String {
    use protocol::backup::utc_text;
    use std::fmt::Write as _;
    let mut o = String::new();
    if let Some(p) = &b.problem {
        let _ = writeln!(o, "    ✗ backups are not running: {p}");
        return o;
    }
    match (&b.last_run, &b.last_ok) {
        (None, _) => {
            let _ = writeln!(
                o,
                "    backups:  none yet (the first full one starts after ready)"
            );
        }
        (Some(last), ok) => {
            if let Some(e) = &last.error {
                let _ = writeln!(
                    o,
                    "    ✗ last backup ({} at {}) failed: {e}",
                    last.kind,
                    utc_text(last.started_unix)
                );
            }
            if let Some(ok) = ok {
                let _ = writeln!(
                    o,
                    "    backups:  last {} {} at {} ok ({:.1} s, {}), {} set(s)",
                    ok.kind,
                    ok.label.as_deref().unwrap_or("?"),
                    utc_text(ok.started_unix),
                    ok.duration_ms as f64 / 1000.0,
                    ok.repo_bytes
                        .map(crate::terminal::size)
                        .unwrap_or_else(|| "?".into()),
                    b.sets
                );
            }
        }
    }
    let a = &b.archive;
    if a.failing() {
        let _ = writeln!(
            o,
            "    ✗ WAL archiving is failing (segment {} at {}): point-in-time recovery is broken after {}",
            a.last_failed_wal.as_deref().unwrap_or("?"),
            a.last_failed_unix.map(utc_text).unwrap_or_default(),
            a.last_archived_unix
                .map(utc_text)
                .unwrap_or_else(|| "the last backup".into())
        );
    } else if let (Some(wal), Some(t)) = (&a.last_archived_wal, a.last_archived_unix) {
        let _ = writeln!(
            o,
            "    WAL archive: {wal} at {} ({} s ago)",
            utc_text(t),
            (now - t).max(0)
        );
    }
    if let Some(w) = b.window {
        let _ = writeln!(
            o,
            "    restorable: {} .. {}",
            utc_text(w.earliest_unix),
            utc_text(w.latest_unix)
        );
    }
    if let Some(d) = &b.disk {
        let _ = writeln!(
            o,
            "    backup disk: {} MiB free of {} MiB{}",
            d.available_bytes >> 20,
            d.total_bytes >> 20,
            backup_disk_note(d.total_bytes, d.available_bytes)
        );
    }
    if let Some(off) = &b.offsite {
        o.push_str(&render_offsite(off));
    }
    o
}

/// The repo2 lines: what is wrong with it first, then its newest good set.
fn render_offsite(off: &protocol::backup::OffsiteStatus) -> String {
    use protocol::backup::utc_text;
    let mut lines = Vec::new();
    if let Some(p) = &off.problem {
        lines.push(format!(
            "    ✗ offsite {} cannot be reached: {p}",
            off.target
        ));
    }
    if let Some(e) = off
        .last_run
        .as_ref()
        .and_then(|r| r.error.as_ref().map(|e| (r, e)))
    {
        lines.push(format!(
            "    ✗ last offsite backup ({} at {}) failed: {}",
            e.0.kind,
            utc_text(e.0.started_unix),
            e.1
        ));
    }
    if let Some(p) = &off.shipping_problem {
        lines.push(format!("    ✗ WAL is not reaching the offsite copy: {p}"));
    }
    lines.push(match &off.last_ok {
        Some(ok) => format!(
            "    offsite:  {} last {} {} at {} ok ({:.1} s), {} set(s)",
            off.target,
            ok.kind,
            ok.label.as_deref().unwrap_or("?"),
            utc_text(ok.started_unix),
            ok.duration_ms as f64 / 1000.0,
            off.sets
        ),
        None => format!(
            "    offsite:  {} no set yet, {} set(s)",
            off.target, off.sets
        ),
    });
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::{render, render_backup};
    use crate::ipc::{Phase, VmStatus};

    fn not_running(backend: &str) -> VmStatus {
        let env = crate::spec::tests::env_in(std::path::Path::new("/data/sovereign"), true);
        let mut spec = crate::spec::Spec::builtin_sql(&env).unwrap();
        spec.vmm.backend = match backend {
            "crosvm" => crate::spec::Backend::Crosvm,
            _ => crate::spec::Backend::Qemu,
        };
        VmStatus {
            elapsed_ms: Some(1000),
            control_connected: true,
            ..crate::ipc::base_status(&spec, Phase::Up)
        }
    }

    #[test]
    fn restarts_and_the_boot_script_are_said() {
        let mut s = not_running("crosvm");
        let text = render(&s);
        assert!(
            text.contains("after a reboot: stays down (`sovereign enable`"),
            "{text}"
        );
        assert!(!text.contains("booted again"), "{text}");
        s.autostart = Some("/data/adb/service.d/sovereign-sql.sh".into());
        s.restarts.push(crate::ipc::VmRestart {
            at_unix: 0,
            exited: "vmm: signal: 9 (SIGKILL)".into(),
            console_tail: vec![],
        });
        let text = render(&s);
        assert!(
            text.contains(
                "after a reboot: starts by itself (/data/adb/service.d/sovereign-sql.sh)"
            ),
            "{text}"
        );
        assert!(
            text.contains("! booted again 1 time(s) after its VMM died")
                && text.contains("(vmm: signal: 9 (SIGKILL))"),
            "{text}"
        );
        assert!(!text.contains("control connection(s) refused"), "{text}");
        s.control_refused.count = 2;
        s.control_refused.last = Some("control connection 7 refused: no token".into());
        let text = render(&s);
        assert!(
            text.contains("✗ 2 control connection(s) refused")
                && text.contains("connection 7 refused: no token"),
            "{text}"
        );
        // Under QEMU (a dev box) the boot script is not a thing to mention.
        assert!(!render(&not_running("qemu")).contains("after a reboot"));
    }

    #[test]
    fn a_filling_data_disk_is_warned_about_from_80_percent() {
        use super::disk_warning;
        assert_eq!(disk_warning(100, 30), None);
        let w = disk_warning(100, 20).unwrap();
        assert!(w.contains("80% used"), "{w}");
        assert_eq!(disk_warning(0, 0), None, "an unknown size warns of nothing");
    }
    use protocol::backup::{ArchiveState, BackupKind, BackupRun, BackupStatus, OffsiteStatus};

    #[test]
    fn failures_are_said_first_and_never_hidden() {
        let run = |error: Option<&str>| BackupRun {
            kind: BackupKind::Full,
            repo: 1,
            started_unix: 1_796_227_445,
            duration_ms: 41_000,
            label: error.is_none().then(|| "20261202-160405F".to_string()),
            repo_bytes: error.is_none().then_some(4 << 20),
            error: error.map(str::to_string),
        };
        let mut b = BackupStatus {
            last_run: Some(run(None)),
            last_ok: Some(run(None)),
            archive: ArchiveState {
                last_archived_wal: Some("000000010000000000000003".into()),
                last_archived_unix: Some(1_796_227_500),
                ..ArchiveState::default()
            },
            sets: 1,
            ..BackupStatus::default()
        };
        let t = render_backup(&b, 1_796_227_530);
        assert!(
            t.contains("last full 20261202-160405F") && t.contains("30 s ago"),
            "{t}"
        );
        assert!(!t.contains('✗'), "{t}");
        b.last_run = Some(run(Some("repo1: disk full")));
        b.archive.last_failed_unix = Some(1_796_227_600);
        let t = render_backup(&b, 1_796_227_630);
        assert!(
            t.contains("✗ last backup (full at 2026-12-02T16:04:05Z) failed: repo1: disk full"),
            "{t}"
        );
        assert!(t.contains("✗ WAL archiving is failing"), "{t}");
        b.disk = Some(protocol::messages::DiskUsage {
            total_bytes: 8 << 30,
            available_bytes: 1 << 20,
            ..Default::default()
        });
        let t = render_backup(&b, 1_796_227_630);
        assert!(
            t.contains(
                "backup disk: 1 MiB free of 8192 MiB ✗ FULL: WAL archiving and backups fail"
            ),
            "{t}"
        );
        b.offsite = Some(OffsiteStatus {
            target: "sovereign@backup-box:/srv/sovereign".into(),
            problem: Some("unable to connect".into()),
            last_run: Some(run(Some("host key mismatch"))),
            last_ok: None,
            sets: 0,
            ..OffsiteStatus::default()
        });
        let t = render_backup(&b, 1_796_227_630);
        assert!(
            t.contains("✗ offsite sovereign@backup-box:/srv/sovereign cannot be reached: unable to connect"),
            "{t}"
        );
        assert!(
            t.contains(
                "✗ last offsite backup (full at 2026-12-02T16:04:05Z) failed: host key mismatch"
            ),
            "{t}"
        );
        assert!(
            t.contains("offsite:  sovereign@backup-box:/srv/sovereign no set yet"),
            "{t}"
        );
        b.problem = Some("backup disk: /dev/vdc does not exist".into());
        let t = render_backup(&b, 0);
        assert!(t.contains("✗ backups are not running: backup disk"), "{t}");
    }
}
