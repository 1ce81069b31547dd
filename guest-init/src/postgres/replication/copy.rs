//! A replica's copy of its peer: `pg_basebackup` over the tailnet through this node's
//! slot on the peer, into [`cluster::COPY_WORK`]; `standby.signal` goes into the copy
//! before it is renamed into place, so the data directory is never a cluster without
//! it (which would start as a second primary on the peer's timeline) nor a half copy.

use super::peer::Peer;
use super::{standby_signal, ReplicationError};
use crate::command;
use crate::postgres::{cluster, Account};
use protocol::replication::slot_name;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a copy waits for its primary to hand one over (it may be booting too).
pub const PATIENCE: Duration = Duration::from_secs(300);

/// Copies the peer into place as this node's cluster; retried for [`PATIENCE`] while
/// the peer is not up yet, given up at once when shutdown was asked for.
pub(crate) fn from_peer(
    bin: &Path,
    account: Account,
    peer: &Peer,
    own_hostname: &str,
) -> Result<(), ReplicationError> {
    if crate::lifecycle::stop::requested() {
        return Err(crate::postgres::PgError::ShuttingDown.into());
    }
    let ip = peer.ip_for("copy its data")?;
    let slot = slot_name(own_hostname);
    let start = Instant::now();
    log::info!(
        "replication: copying the primary {} ({ip}) with pg_basebackup into {}",
        peer.name,
        cluster::COPY_WORK
    );
    loop {
        let work = cluster::fresh_work_dir(cluster::COPY_WORK, account)?;
        let mut cmd = account.command(bin.join("pg_basebackup"));
        cmd.arg("-d")
            .arg(peer.conninfo(ip, ""))
            .arg("-D")
            .arg(&work)
            .args(["-X", "stream", "-S", &slot, "--checkpoint=fast", "-w"]);
        let o = command::output(&mut cmd)?;
        if o.exit.success() {
            // pg_basebackup synced the copy; the signal file and the directory follow.
            standby_signal(&work, account)?;
            cluster::install(&work)?;
            log::info!(
                "replication: copied the primary in {:?}; the copy is the data directory",
                start.elapsed()
            );
            return Ok(());
        }
        if start.elapsed() >= PATIENCE || crate::lifecycle::stop::requested() {
            return Err(ReplicationError::Bootstrap {
                peer: peer.name.clone(),
                ip,
                waited: start.elapsed(),
                error: o.stderr.trim().to_string(),
            });
        }
        log::warn!(
            "replication: pg_basebackup: {} (trying again)",
            o.stderr.trim()
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}
