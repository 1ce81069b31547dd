//! Ordered power-off: postgres (fast shutdown), tailscaled, every other process, sync,
//! unmount /data, remount / read-only, power off. Runs within a deadline; PID 1 never
//! returns from here.

use crate::running::Running;
use crate::{boot, datadisk, reaper};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The console line that says the guest stopped cleanly (the host looks for it).
pub const CLEAN_SHUTDOWN_LINE: &str = "sovereign-init: clean shutdown complete, powering off";

/// True while any process other than PID 1 and kernel threads exists (kernel threads
/// have an empty command line). Zombies awaiting the reaper count as gone.
fn user_processes_left() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        if pid == 1 {
            return false;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        !zombie && !cmdline.is_empty()
    })
}

/// Stops everything in order and powers off.
pub fn run(reason: &str, deadline: Duration, services: &mut Running) -> ! {
    log::info!("shutting down: {reason} (deadline {deadline:?})");
    let start = Instant::now();
    let left = |share: u32| {
        deadline
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1))
            / share
    };
    if let Some(pg) = services.postgres.take() {
        log::info!("stopping postgres (fast shutdown)");
        pg.stop(left(2));
    }
    if let Some(ts) = services.tailscale.take() {
        log::info!("stopping tailscaled");
        ts.stop(left(2));
    }
    // Anything else still running (helpers, orphans): TERM, a moment, then KILL.
    if user_processes_left() {
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(3) && user_processes_left() {
            reaper::reap_all();
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
    reaper::reap_all();
    sync();
    if services.data_mounted {
        datadisk::unmount(Path::new(boot::DATA_DIR));
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        log::warn!("remounting / read-only failed: {e}");
    }
    sync();
    log::info!("clean shutdown complete after {:?}", start.elapsed());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{CLEAN_SHUTDOWN_LINE}");
    let _ = out.flush();
    drop(out);
    let err = reboot(RebootMode::RB_POWER_OFF);
    // Only reached if the kernel refused; PID 1 must not exit, so wait for ever.
    log::error!("power-off failed: {err:?}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
