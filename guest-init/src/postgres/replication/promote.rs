//! `sovereign promote`: this replica becomes the primary, on a new timeline. Refused
//! while the old primary is plainly alive, since two nodes that can see each other must
//! never both take writes: while this node's WAL receiver streams from it (and heard
//! from it just now), or while a peer answers as a read-write primary of the same
//! cluster; and refused while another replica has WAL this one lacks (that replica
//! could not follow the new timeline, and what it has would be lost: promote it
//! instead). `force` is for a peer that is gone, or for an operator who means it: the
//! old primary, if it still runs, sees this node on the newer timeline and fences
//! itself ([`super::fence`]). The other replicas follow the new primary on their own
//! ([`crate::fence_guard`]).

use super::peer::PeerSeen;
use crate::postgres::{PgError, Postgres};
use protocol::replication::{slot_sql, NodeIdentity, ReplicationConfig, IDENTITY_SQL};
use std::time::Instant;
use thiserror::Error;

/// How long PostgreSQL may take to leave recovery.
const PROMOTE_WAIT_SECS: u32 = 60;

/// A WAL receiver that heard from its primary this recently streams from a live one.
/// A primary that lost power falls silent: its receiver stays `streaming` until
/// `wal_receiver_timeout`, but its last message ages past this at once.
const RECENT_SECS: u32 = 10;

/// Why the node was not promoted.
#[derive(Debug, Error)]
pub enum PromoteError {
    #[error("this node is already a primary (timeline {0}): nothing to promote")]
    AlreadyPrimary(u32),
    #[error("refusing to promote: {0}. A second primary would split the data. Stop the old primary first; if it is gone for good, or to take over anyway (it stops taking writes once it sees this node), pass --force")]
    Refused(String),
    #[error("PostgreSQL did not leave recovery within {PROMOTE_WAIT_SECS} s (pg_promote said {0:?}); see `sovereign logs postgres`")]
    NotPromoted(String),
    #[error("this node's identity cannot be read: {0:?}")]
    Unreadable(String),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// Promotes the replica `pg` whose replication settings are `cfg`; returns what
/// happened, for the operator.
pub fn promote(
    pg: &Postgres,
    cfg: &ReplicationConfig,
    force: bool,
) -> Result<String, PromoteError> {
    let out = pg.sql(IDENTITY_SQL)?;
    let own = NodeIdentity::parse(&out).ok_or(PromoteError::Unreadable(out))?;
    if !own.in_recovery {
        return Err(PromoteError::AlreadyPrimary(own.timeline));
    }
    let seen = super::ask_all(&cfg.peers, pg.port, &pg.bin, pg.account);
    let same_cluster = |id: &NodeIdentity| id.system_identifier == own.system_identifier;
    let rivals: Vec<(String, u32)> = seen
        .iter()
        .filter_map(|(name, s)| match s {
            PeerSeen::Answered(p) if same_cluster(p) && !p.in_recovery => {
                Some((name.clone(), p.timeline))
            }
            _ => None,
        })
        .collect();
    let ahead: Vec<String> = seen
        .iter()
        .filter_map(|(name, s)| match (s, own.wal_end) {
            (PeerSeen::Answered(p), Some(mine)) if same_cluster(p) && p.in_recovery => {
                p.wal_end.filter(|theirs| *theirs > mine).map(|theirs| {
                    format!(
                        "{name} has {} bytes of WAL more than this node",
                        theirs - mine
                    )
                })
            }
            _ => None,
        })
        .collect();
    // Asked after the peer, whose silence can take a connect timeout: a receiver that
    // heard from its primary since is streaming from a live primary.
    let receiving = pg
        .sql(&format!(
            "select coalesce((select status || ' from ' || coalesce(sender_host, '?') from pg_stat_wal_receiver \
             where status = 'streaming' and last_msg_receipt_time > now() - interval '{RECENT_SECS} seconds'), '')"
        ))?
        .trim()
        .to_string();
    let mut why_not = Vec::new();
    if !receiving.is_empty() {
        why_not.push(format!(
            "this node's WAL receiver is {receiving}, which it heard from in the last {RECENT_SECS} s"
        ));
    }
    for (name, timeline) in &rivals {
        why_not.push(format!(
            "{name} answers as this cluster's primary on timeline {timeline}"
        ));
    }
    for said in &ahead {
        why_not.push(format!(
            "{said}: it could not follow this node and what it has would be lost; promote it instead"
        ));
    }
    if !why_not.is_empty() && !force {
        return Err(PromoteError::Refused(why_not.join(", and ")));
    }
    if !why_not.is_empty() {
        log::warn!(
            "replication: promoting although {} (--force)",
            why_not.join(", and ")
        );
    }
    let started = Instant::now();
    let said = pg.sql(&format!("select pg_promote(true, {PROMOTE_WAIT_SECS})"))?;
    if said.trim() != "t" {
        return Err(PromoteError::NotPromoted(said.trim().to_string()));
    }
    let took = started.elapsed();
    log::warn!("replication: promoted to primary in {took:?}");
    for peer in &cfg.peers {
        if let Err(e) = pg.sql(&slot_sql(peer)) {
            log::warn!("replication: the slot for {peer} could not be made: {e}");
        }
    }
    let mut message = format!("promoted in {:.1} s", took.as_secs_f64());
    for (name, timeline) in &rivals {
        message.push_str(&format!(
            "; {name} still answered as a primary on timeline {timeline}: it stops taking writes as soon as it sees this node on the newer timeline"
        ));
    }
    let followers: Vec<&str> = seen
        .iter()
        .filter(|(_, s)| matches!(s, PeerSeen::Answered(p) if same_cluster(p) && p.in_recovery))
        .map(|(name, _)| name.as_str())
        .collect();
    if !followers.is_empty() {
        message.push_str(&format!(
            "; {} follow{} this node on {} own",
            followers.join(" and "),
            if followers.len() == 1 { "s" } else { "" },
            if followers.len() == 1 { "its" } else { "their" }
        ));
    }
    Ok(message)
}
