//! What the bring-up thread does every few seconds once the stages ran: keeps the data
//! disk's emergency reserve (and says when the disk fills up or has room again), grows
//! a filesystem whose disk the host made larger, rotates
//! the logs on the data disk, follows the tailnet address with postgres, and says when
//! PostgreSQL gave up a replica's slot to keep the disk's WAL budget.

use crate::guest::Guest;
use crate::log_files;
use protocol::{Stage, StageReport, StageState};
use std::path::Path;

/// Keeps the data disk's emergency reserve and says when the disk fills up or has room
/// again (see [`crate::disk_watch`]).
pub fn watch_space(guest: &Guest) {
    use crate::disk_watch::Change;
    let reporter = &guest.reporter;
    match guest.disk.check_space() {
        Change::Full(u) => reporter.report(StageReport::degraded(
            Stage::Postgres,
            format!(
                "data disk full: postgres refuses writes; the {} MiB emergency reserve was released so that data can be deleted ({} MiB of {} MiB left)",
                crate::disk_watch::RESERVE_BYTES >> 20,
                u.available_bytes >> 20,
                u.total_bytes >> 20
            ),
        )),
        Change::Recovered(_) => {
            let pg = guest.running().postgres.clone();
            if let Some(pg) = pg {
                reporter.report(StageReport::ready(Stage::Postgres, pg.info()));
            }
        }
        Change::None => {}
    }
}

/// Grows the data and backup disks' filesystems when the host made a disk larger
/// under the running guest (`sovereign disk grow` online); `status` shows the new
/// size from the next request on.
pub fn grow_disks(guest: &Guest) {
    if let Some(said) = guest.disk.grow_if_device_grew() {
        log::info!("data disk: {said}");
    }
    if let Some(said) = guest
        .backups
        .get()
        .and_then(|b| b.grow_disk_if_device_grew())
    {
        log::info!("backup disk: {said}");
    }
}

/// The slots already reported invalidated (each is said once).
static LOST_SLOTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// On a primary with a peer: when PostgreSQL invalidated a replication slot (its replica
/// fell further behind than `max_slot_wal_keep_size`), the `postgres` stage says so and
/// what that replica must do.
pub fn watch_slots(guest: &Guest) {
    let Some(r) = guest
        .config
        .get()
        .and_then(|c| c.postgres.replication.as_ref())
    else {
        return;
    };
    let Some(pg) = guest.running().postgres.clone() else {
        return;
    };
    let Ok(out) = pg.sql(
        "select slot_name from pg_replication_slots where wal_status = 'lost' and not pg_is_in_recovery()",
    ) else {
        return;
    };
    let Ok(mut reported) = LOST_SLOTS.lock() else {
        return;
    };
    for slot in out.lines().map(str::trim).filter(|s| !s.is_empty()) {
        if reported.iter().any(|s| s == slot) {
            continue;
        }
        reported.push(slot.to_string());
        let replica = r
            .peers
            .iter()
            .find(|p| protocol::replication::slot_name(p) == slot)
            .map_or(slot, String::as_str);
        let why = format!(
            "the replication slot {slot} was invalidated: its replica fell further behind than the WAL this disk keeps for it (max_slot_wal_keep_size); that replica ({replica}) must be copied anew: on its host, `sovereign rejoin --fresh`"
        );
        log::warn!("{why}");
        guest
            .reporter
            .report(StageReport::degraded(Stage::Postgres, why));
    }
}

/// Follows the tailnet address: when it appears or changes, postgres is reconfigured to
/// listen there (localhost stays), and the stages are reported again.
pub fn follow_tailnet(guest: &Guest) {
    let (ts, pg) = {
        let s = guest.running();
        (s.tailscale.clone(), s.postgres.clone())
    };
    let (Some(ts), Some(pg)) = (ts, pg) else {
        return;
    };
    let logs = [
        Path::new(crate::tailscale::LOG).to_path_buf(),
        Path::new(crate::postgres::STARTUP_LOG).to_path_buf(),
    ];
    for log in logs
        .iter()
        .chain(crate::backup::pgbackrest::log_paths().iter())
    {
        if let Err(e) = log_files::rotate_if_large(log, log_files::ROTATE_AT) {
            log::warn!("cannot rotate {e}");
        }
    }
    let Some(info) = ts.current() else { return };
    if info.ips.is_empty() || pg.listening_on(&info.ips) {
        return;
    }
    // A primary that could not ask its peer at boot is judged before it takes writes
    // from the tailnet.
    if crate::fence_guard::check(guest) == Some(false) {
        return;
    }
    let reporter = &guest.reporter;
    log::info!(
        "tailnet addresses now {:?}: reconfiguring postgres",
        info.ips
    );
    if reporter.state(Stage::Tailscale) != Some(StageState::Ready) {
        reporter.report(StageReport::ready(Stage::Tailscale, info.clone()));
    }
    let relistened = pg.relisten(&info.ips).map(|()| pg.info());
    if reporter.settle(Stage::Postgres, relistened).is_some() {
        reporter.report_ready();
    }
}
