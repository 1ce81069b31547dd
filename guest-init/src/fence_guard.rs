//! The fence, kept running: a primary with a peer asks the peer what it is every few
//! seconds and, when the fence's rules ([`crate::postgres::replication::fence`]) say the
//! peer is the primary, stops postgres at once and keeps its data. A fenced node stays
//! fenced until `sovereign rejoin`; the stage and status say so. The check also runs
//! before postgres first opens on a tailnet address that came up after boot
//! ([`crate::upkeep::follow_tailnet`]), so a primary that could not reach its peer at
//! boot is judged before it can take writes from the tailnet.

use crate::clock::now_unix;
use crate::guest::Guest;
use crate::lifecycle::stop::StopBudget;
use crate::postgres::replication::fence::{self, Verdict};
use crate::postgres::replication::peer::Peer;
use protocol::replication::Fence;
use protocol::{Stage, StageReport};
use std::sync::Arc;
use std::time::Duration;

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
    let cfg = guest.config.get()?.postgres.replication.as_ref()?;
    if matches!(current(guest), Some(Fence::Fenced { .. })) {
        return Some(false);
    }
    let pg = guest.running().postgres.clone()?;
    let own = pg.identity()?;
    if own.in_recovery {
        set(guest, None);
        return Some(true);
    }
    let (bin, account) = pg.tools();
    let peer = Peer::find(&cfg.peer, guest.config.get()?.postgres.port, Duration::ZERO);
    let seen = peer.ask(bin, account);
    let hostname = &guest.config.get()?.hostname;
    match fence::judge(&own, hostname, &cfg.peer, &seen) {
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
