//! `sovereign rejoin`: this node becomes its peer's replica, by `pg_rewind` onto the
//! peer's timeline or, with `--fresh`, by a new copy of the peer. The host keeps a copy
//! of the whole data disk before it asks, so nothing here is the only copy of anything.
//!
//! A rewind changes the cluster in place and cannot be resumed safely halfway (the
//! target's WAL may already be the source's), so the step is recorded on the data disk
//! first ([`MARKER`]) and the boot that finds it unfinished completes the rejoin the
//! way that is always sound: a new copy of the peer. A rewind that did finish is only
//! missing its `standby.signal`, which that boot writes. The request itself travels
//! for one boot only; this marker is what a later boot acts on.

use super::copy;
use super::peer::Peer;
use super::{standby_signal, Preparation, ReplicationError};
use crate::command;
use crate::durable::{self, Marker};
use crate::postgres::{cluster, Account, CLUSTER_DIR};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where an unfinished rejoin is recorded, beside the data directory.
pub const MARKER: &str = "/data/postgres.rejoin";

/// How far a rejoin got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// pg_rewind was started on the data directory.
    Rewinding,
    /// pg_rewind finished; `standby.signal` may be missing.
    Rewound,
    /// The data directory was given up for a new copy of the peer.
    Copying,
}

/// The marker's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Step {
    /// The peer this node rejoins.
    peer: String,
    /// How far it got.
    phase: Phase,
}

/// What this boot does about a rejoin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A new request: rewind (`fresh` false) or copy anew.
    Requested {
        /// Copy the peer anew instead of rewinding.
        fresh: bool,
    },
    /// An earlier boot's rejoin did not finish.
    Unfinished(UnfinishedStep),
}

/// An unfinished rejoin, as its marker recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedStep(Step);

fn marker() -> Marker {
    Marker::at(PathBuf::from(MARKER))
}

/// The rejoin this boot must carry out: an unfinished one on the disk, else the host's
/// request (`Some(fresh)`); `None` on an ordinary boot. An unfinished rewind is never
/// rewound again, even when the host asks anew (the cluster may be half the peer's
/// already): only a request to copy anew replaces it.
pub fn plan(request: Option<bool>) -> Result<Option<Plan>, ReplicationError> {
    let unfinished = marker().read::<Step>()?;
    Ok(match (unfinished, request) {
        (_, Some(true)) => Some(Plan::Requested { fresh: true }),
        (Some(step), _) => Some(Plan::Unfinished(UnfinishedStep(step))),
        (None, Some(false)) => Some(Plan::Requested { fresh: false }),
        (None, None) => None,
    })
}

/// Carries out `plan`; returns what the node became and, when it finished an earlier
/// boot's rejoin, the line that says so.
pub(crate) fn run(
    plan: Plan,
    bin: &Path,
    account: Account,
    peer: &Peer,
    own_hostname: &str,
) -> Result<(Preparation, Option<String>), ReplicationError> {
    match plan {
        Plan::Requested { fresh: false } if cluster::exists() => {
            rewind(bin, account, peer)?;
            Ok((Preparation::Rewound, None))
        }
        Plan::Requested { .. } => {
            copy_anew(bin, account, peer, own_hostname)?;
            Ok((Preparation::Copied, None))
        }
        Plan::Unfinished(UnfinishedStep(step)) if step.phase == Phase::Rewound => {
            finish_rewound(account, &step)?;
            Ok((
                Preparation::Rewound,
                Some(format!(
                    "a rejoin onto {} was interrupted after pg_rewind finished (a power cut or a stop); this boot wrote its standby.signal and finished it",
                    step.peer
                )),
            ))
        }
        Plan::Unfinished(UnfinishedStep(step)) => {
            let during = match step.phase {
                Phase::Rewinding => "during pg_rewind",
                _ => "while copying the peer anew",
            };
            log::warn!(
                "replication: a rejoin onto {} was interrupted {during}; finishing it with a new copy of {}",
                step.peer,
                peer.name
            );
            copy_anew(bin, account, peer, own_hostname)?;
            Ok((
                Preparation::Copied,
                Some(format!(
                    "a rejoin onto {} was interrupted {during} (a power cut or a stop); this boot finished it with a new copy of {} (the disk from before the rejoin is kept on the host, postgres.img.before-rejoin-*)",
                    step.peer, peer.name
                )),
            ))
        }
    }
}

/// How long a rejoin keeps trying to reach the peer before it gives up.
const REACH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
/// Between two tries.
const REACH_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// True when pg_rewind's `stderr` says it never connected to the source (libpq's
/// connection failure), so nothing in the data directory was touched.
fn not_connected(stderr: &str) -> bool {
    stderr.contains("connection to server at") && stderr.contains("failed")
}

/// Rewinds the data directory onto the peer's timeline (pg_rewind first finishes crash
/// recovery itself when the node was cut off without a clean shutdown), then makes it
/// a replica.
fn rewind(bin: &Path, account: Account, peer: &Peer) -> Result<(), ReplicationError> {
    if crate::lifecycle::stop::requested() {
        return Err(crate::postgres::PgError::ShuttingDown.into());
    }
    let ip = peer.ip_for("rewind onto it")?;
    let m = marker();
    m.set(&Step {
        peer: peer.name.clone(),
        phase: Phase::Rewinding,
    })?;
    log::info!(
        "replication: rejoin: rewinding onto {} ({ip}) with pg_rewind",
        peer.name
    );
    let started = std::time::Instant::now();
    let o = loop {
        let mut cmd = account.command(bin.join("pg_rewind"));
        cmd.args(["-D", CLUSTER_DIR, "--source-server"])
            .arg(peer.conninfo(ip, ""));
        let o = command::output(&mut cmd)?;
        if o.exit.success() {
            break o;
        }
        // A path through the tailnet can take a while after both nodes joined; pg_rewind
        // that could not connect has changed nothing, so it may simply run again.
        let unreached = not_connected(&o.stderr);
        if !unreached || started.elapsed() >= REACH_PATIENCE || crate::lifecycle::stop::requested()
        {
            return Err(ReplicationError::Rewind {
                peer: peer.name.clone(),
                ip,
                error: format!("{} {}", o.stdout.trim(), o.stderr.trim()),
            });
        }
        log::warn!(
            "replication: rejoin: {} not reached yet ({}); trying again",
            peer.name,
            o.stderr.trim()
        );
        std::thread::sleep(REACH_RETRY);
    };
    log::info!(
        "replication: rejoin: pg_rewind finished: {}",
        o.stdout.trim().replace('\n', "; ")
    );
    let step = Step {
        peer: peer.name.clone(),
        phase: Phase::Rewound,
    };
    m.set(&step)?;
    finish_rewound(account, &step)
}

/// The rewound cluster starts as a replica: its signal file, then the marker goes.
fn finish_rewound(account: Account, step: &Step) -> Result<(), ReplicationError> {
    standby_signal(Path::new(CLUSTER_DIR), account)?;
    marker().clear()?;
    log::info!(
        "replication: rejoin: the data directory follows {} now",
        step.peer
    );
    Ok(())
}

/// Gives up this node's cluster (the host kept a copy of the disk) and copies the peer
/// into place.
fn copy_anew(
    bin: &Path,
    account: Account,
    peer: &Peer,
    own_hostname: &str,
) -> Result<(), ReplicationError> {
    peer.ip_for("copy its data")?;
    if crate::lifecycle::stop::requested() {
        return Err(crate::postgres::PgError::ShuttingDown.into());
    }
    marker().set(&Step {
        peer: peer.name.clone(),
        phase: Phase::Copying,
    })?;
    log::info!(
        "replication: rejoin: removing this node's cluster (the host kept the disk) to copy {} anew",
        peer.name
    );
    durable::remove_tree(Path::new(CLUSTER_DIR))?;
    copy::from_peer(bin, account, peer, own_hostname)?;
    marker().clear()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_records_the_phase_by_name() {
        let json = serde_json::to_string(&Step {
            peer: "sql-replica".into(),
            phase: Phase::Rewinding,
        })
        .unwrap();
        assert_eq!(json, r#"{"peer":"sql-replica","phase":"rewinding"}"#);
        let back: Step = serde_json::from_str(r#"{"peer":"sql-vm","phase":"rewound"}"#).unwrap();
        assert_eq!(back.phase, Phase::Rewound);
    }

    #[test]
    fn only_a_connection_that_never_came_up_is_tried_again() {
        assert!(not_connected(
            "pg_rewind: error: connection to server at \"100.64.0.1\", port 5432 failed: timeout expired"
        ));
        assert!(!not_connected(
            "pg_rewind: error: could not find common ancestor of the source and target cluster's timelines"
        ));
    }
}
