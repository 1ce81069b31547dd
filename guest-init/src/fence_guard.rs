//! The fence, kept running: a primary with peers asks them what they are every few
//! seconds and, when the fence's rules ([`crate::postgres::replication::fence`]) say a
//! peer is the primary, stops postgres at once and keeps its data. A fenced node stays
//! fenced until `sovereign rejoin`; the stage and status say so. The check also runs
//! before postgres first opens on a tailnet address that came up after boot
//! ([`crate::upkeep::follow_tailnet`]), so a primary that could not reach its peers at
//! boot is judged before it can take writes from the tailnet.
//!
//! On a replica the same check follows the primary: when its WAL receiver has not
//! streamed for [`FOLLOW_AFTER`] checks and another peer answers as this cluster's
//! primary (one promoted after the old primary was lost), the replica streams from it
//! (`recovery_target_timeline = latest` follows the new timeline).

use crate::clock::now_unix;
use crate::guest::Guest;
use crate::lifecycle::stop::StopBudget;
use crate::postgres::replication::fence::{self, Verdict};
use crate::postgres::replication::{ask_all, conf_lines, peer};
use crate::postgres::Postgres;
use protocol::config::GuestConfig;
use protocol::replication::{Fence, NodeIdentity};
use protocol::{Stage, StageReport};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Checks in a row without a streaming WAL receiver before a replica looks for
/// another primary (a primary's restart or a short cut heals on its own).
const FOLLOW_AFTER: u32 = 2;

/// Checks in a row this replica's WAL receiver has not streamed.
static NOT_STREAMING: AtomicU32 = AtomicU32::new(0);

/// A replica asks its peers every this many checks, only so that pgBackRest knows who
/// answers (see `peer_hosts`): within its one-minute window, without a psql per peer
/// every 5 s.
const LIVENESS_EVERY: u32 = 6;

/// Checks done on this replica.
static REPLICA_CHECKS: AtomicU32 = AtomicU32::new(0);

/// How often the peer is asked.
const INTERVAL: Duration = Duration::from_secs(5);

/// How long a fenced server gets to stop (fast shutdown).
const STOP: StopBudget = StopBudget {
    grace: Duration::from_secs(20),
    after_kill: Duration::from_secs(2),
};

/// Checks every [`INTERVAL`] until the node is fenced or shutdown begins. If the kernel
/// refuses the thread, the check before the tailnet opens still runs; said once.
pub fn spawn(guest: Arc<Guest>) {
    let spawned = std::thread::Builder::new()
        .name("fence".into())
        .spawn(move || loop {
            std::thread::sleep(INTERVAL);
            if crate::lifecycle::stop::requested() || check(&guest) == Some(false) {
                return;
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the fence's thread: {e}; the fence runs only when the tailnet address changes");
    }
}

/// One check. `Some(true)`: this node may take writes (or is a replica and need not
/// ask); `Some(false)`: it is fenced (now or before); `None`: nothing to check (no
/// server, no replication).
pub fn check(guest: &Guest) -> Option<bool> {
    let config = guest.config.get()?;
    let cfg = config.postgres.replication.as_ref()?;
    if matches!(current(guest), Some(Fence::Fenced { .. })) {
        return Some(false);
    }
    let pg = guest.running().postgres.clone()?;
    let own = pg.identity()?;
    let (bin, account) = pg.tools();
    if own.in_recovery {
        set(guest, None);
        // Asked for what they answer only: pgBackRest names the peers that answered
        // lately (see `peer_hosts`).
        if REPLICA_CHECKS
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(LIVENESS_EVERY)
        {
            let _ = ask_all(&cfg.peers, config.postgres.port, bin, account);
        }
        follow(&pg, config, &own);
        return Some(true);
    }
    let seen = ask_all(&cfg.peers, config.postgres.port, bin, account);
    match fence::judge_all(&own, &config.hostname, &seen) {
        Verdict::Primary => {
            set(
                guest,
                Some(Fence::Clear {
                    peer_seen_unix: now_unix(),
                }),
            );
            Some(true)
        }
        Verdict::Unconfirmed(reason) => {
            // Once the peer was seen, a silence is a peer that went away, not an
            // unknown; the last sighting stays in status.
            if !matches!(current(guest), Some(Fence::Clear { .. })) {
                let since_unix = match current(guest) {
                    Some(Fence::Unconfirmed { since_unix, .. }) => since_unix,
                    _ => now_unix(),
                };
                set(guest, Some(Fence::Unconfirmed { reason, since_unix }));
            }
            Some(true)
        }
        Verdict::Fenced(reason) => {
            fence_now(guest, &reason);
            Some(false)
        }
    }
}

/// On a replica: after [`FOLLOW_AFTER`] checks without streaming, streams from the
/// peer that answers as this cluster's primary on this node's timeline or a newer one,
/// when that is not the one it streams from already.
fn follow(pg: &Postgres, config: &GuestConfig, own: &NodeIdentity) {
    if pg.streaming() {
        NOT_STREAMING.store(0, Ordering::Relaxed);
        return;
    }
    if NOT_STREAMING.fetch_add(1, Ordering::Relaxed) + 1 < FOLLOW_AFTER {
        return;
    }
    let Some(cfg) = config.postgres.replication.as_ref() else {
        return;
    };
    let (bin, account) = pg.tools();
    let Some((primary, theirs)) =
        peer::find_primary(&cfg.peers, config.postgres.port, bin, account)
    else {
        return;
    };
    if theirs.system_identifier != own.system_identifier || theirs.timeline < own.timeline {
        return;
    }
    match pg.repoint(conf_lines(cfg, &primary, &config.hostname)) {
        Ok(true) => log::warn!(
            "replication: not streaming for {} checks; following {}, the primary on timeline {}",
            NOT_STREAMING.load(Ordering::Relaxed),
            primary.name,
            theirs.timeline
        ),
        Ok(false) => {}
        Err(e) => log::warn!(
            "replication: cannot point this replica at {}: {e}",
            primary.name
        ),
    }
}

/// Stops postgres (its data stays), and says why on the stage and in status.
fn fence_now(guest: &Guest, reason: &str) {
    log::error!("fenced: {reason}");
    set(
        guest,
        Some(Fence::Fenced {
            reason: reason.to_string(),
            since_unix: now_unix(),
        }),
    );
    let pg = guest.running().postgres.take();
    if let Some(pg) = pg {
        pg.stop(STOP);
    }
    guest.reporter.report(StageReport::failed(
        Stage::Postgres,
        format!("fenced: {reason}"),
    ));
}

fn current(guest: &Guest) -> Option<Fence> {
    guest.fence.lock().ok().and_then(|f| f.clone())
}

fn set(guest: &Guest, fence: Option<Fence>) {
    if let Ok(mut f) = guest.fence.lock() {
        *f = fence;
    }
}
