//! What the bring-up thread does every few seconds once the stages ran: keeps the data
//! disk's emergency reserve (and says when the disk fills up or has room again), rotates
//! the logs on the data disk, and follows the tailnet address with postgres.

use crate::boot::{report_ready, Guest};
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
    let pgbackrest_logs = log_files::PGBACKREST_LOGS.map(|name| {
        Path::new(crate::backup::pgbackrest::WORK_DIR)
            .join("log")
            .join(name)
    });
    let logs = [
        Path::new(log_files::TAILSCALED_LOG).to_path_buf(),
        Path::new(crate::postgres::STARTUP_LOG).to_path_buf(),
    ];
    for log in logs.iter().chain(pgbackrest_logs.iter()) {
        if let Err(e) = log_files::rotate_if_large(log, log_files::ROTATE_AT) {
            log::warn!("cannot rotate {e}");
        }
    }
    let Some(info) = ts.current() else { return };
    if info.ips.is_empty() || pg.listening_on(&info.ips) {
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
        report_ready(reporter);
    }
}
