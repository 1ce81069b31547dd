//! The fence: the rules by which a primary decides, from what its peers say they are,
//! whether it may take writes. Two nodes of one cluster that can see each other must
//! never both take writes, so when two are primaries exactly one keeps going:
//!
//! 1. the newer timeline wins: the peer was promoted past this node (it was away, or
//!    `promote --force` was used while it ran), so this node stops;
//! 2. on the same timeline (two promotions from one parent; no single command makes
//!    it), the node whose name sorts first wins, the same answer on both nodes.
//!
//! The loser stops postgres and keeps its data; `sovereign rejoin` makes it the
//! winner's replica. A peer that does not answer cannot be ruled out as a newer
//! primary, and that is said ([`Verdict::Unconfirmed`]); a peer of another cluster, or
//! a replica, is no rival. With several peers ([`judge_all`]) any one that wins fences
//! this node. Pure: what the peers said in, the verdict out.

use super::peer::PeerSeen;
use protocol::replication::NodeIdentity;

/// What a primary may do, by the fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take writes: the peer answered and is no newer primary of this cluster.
    Primary,
    /// Take writes, but nothing rules out that the peer was promoted: it did not answer.
    Unconfirmed(String),
    /// Stop taking writes: the peer is the primary by the rules above (why, and what to
    /// do).
    Fenced(String),
}

/// Judges this primary (`own`, named `own_name`) against what its peer `peer_name` said.
pub fn judge(own: &NodeIdentity, own_name: &str, peer_name: &str, peer: &PeerSeen) -> Verdict {
    let theirs = match peer {
        PeerSeen::Silent(why) => {
            return Verdict::Unconfirmed(format!(
                "cannot rule out a newer primary: the peer did not answer ({why})"
            ))
        }
        PeerSeen::Answered(id) => id,
    };
    if theirs.system_identifier != own.system_identifier || theirs.in_recovery {
        return Verdict::Primary;
    }
    let rejoin = format!(
        "it is kept; run `sovereign rejoin` on this VM's host to make it {peer_name}'s replica"
    );
    if theirs.timeline > own.timeline {
        return Verdict::Fenced(format!(
            "the peer {peer_name} was promoted to timeline {}, past this node's timeline {}: it is the primary and this node stopped taking writes; its data {rejoin}",
            theirs.timeline, own.timeline
        ));
    }
    if theirs.timeline == own.timeline && peer_name < own_name {
        return Verdict::Fenced(format!(
            "the peer {peer_name} is a primary on this node's timeline {} too; on the same timeline the node whose name sorts first ({peer_name}) keeps taking writes and this one stopped; its data {rejoin}",
            own.timeline
        ));
    }
    Verdict::Primary
}

/// Judges this primary against every peer (`(name, what it said)`): fenced when any
/// peer is the primary by the rules above, unconfirmed while any peer is silent, else
/// clear.
pub fn judge_all(own: &NodeIdentity, own_name: &str, peers: &[(String, PeerSeen)]) -> Verdict {
    let mut silent = Vec::new();
    for (name, seen) in peers {
        match judge(own, own_name, name, seen) {
            Verdict::Fenced(why) => return Verdict::Fenced(why),
            Verdict::Unconfirmed(why) => silent.push(why),
            Verdict::Primary => {}
        }
    }
    match silent.len() {
        0 => Verdict::Primary,
        1 => Verdict::Unconfirmed(silent.remove(0)),
        _ => Verdict::Unconfirmed(format!(
            "cannot rule out a newer primary: {} peers did not answer ({})",
            silent.len(),
            silent
                .iter()
                .map(|w| w
                    .rsplit_once(" (")
                    .map_or(w.as_str(), |(_, r)| r.trim_end_matches(')')))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(system: &str, timeline: u32, in_recovery: bool) -> NodeIdentity {
        NodeIdentity {
            system_identifier: system.into(),
            timeline,
            in_recovery,
            wal_end: None,
        }
    }

    #[test]
    fn with_several_peers_any_winner_fences_and_any_silence_is_unconfirmed() {
        let own = node("7", 1, false);
        let replica = ("sql-r2".to_string(), seen(node("7", 1, true)));
        let newer = ("sql-r1".to_string(), seen(node("7", 2, false)));
        let gone = |n: &str| {
            (
                n.to_string(),
                PeerSeen::Silent(format!("{n} has no tailnet address")),
            )
        };
        assert!(matches!(
            judge_all(&own, "sql-vm", &[replica.clone(), newer]),
            Verdict::Fenced(why) if why.contains("sql-r1 was promoted to timeline 2")
        ));
        assert_eq!(
            judge_all(&own, "sql-vm", std::slice::from_ref(&replica)),
            Verdict::Primary
        );
        let one = judge_all(&own, "sql-vm", &[replica, gone("sql-r1")]);
        assert!(
            matches!(&one, Verdict::Unconfirmed(w) if w.contains("sql-r1 has no tailnet address")),
            "{one:?}"
        );
        let two = judge_all(&own, "sql-vm", &[gone("sql-r1"), gone("sql-r2")]);
        assert!(
            matches!(&two, Verdict::Unconfirmed(w) if w.starts_with("cannot rule out a newer primary: 2 peers did not answer (sql-r1 has no tailnet address; sql-r2")),
            "{two:?}"
        );
    }

    fn seen(id: NodeIdentity) -> PeerSeen {
        PeerSeen::Answered(id)
    }

    #[test]
    fn the_newer_timeline_keeps_taking_writes_and_the_older_stops() {
        let old = node("7", 1, false);
        let new = node("7", 2, false);
        let v = judge(&old, "sql-vm", "sql-replica", &seen(new.clone()));
        let Verdict::Fenced(why) = v else {
            panic!("{v:?}")
        };
        assert!(
            why.contains("promoted to timeline 2, past this node's timeline 1")
                && why.contains("sovereign rejoin"),
            "{why}"
        );
        assert_eq!(
            judge(&new, "sql-replica", "sql-vm", &seen(old)),
            Verdict::Primary
        );
    }

    #[test]
    fn a_tie_goes_to_the_name_that_sorts_first_on_both_nodes() {
        let a = node("7", 3, false);
        let b = node("7", 3, false);
        assert_eq!(
            judge(&a, "sql-a", "sql-b", &seen(b.clone())),
            Verdict::Primary
        );
        assert!(matches!(
            judge(&b, "sql-b", "sql-a", &seen(a)),
            Verdict::Fenced(why) if why.contains("sorts first (sql-a)")
        ));
    }

    #[test]
    fn replicas_other_clusters_and_silence_are_no_reason_to_stop() {
        let own = node("7", 1, false);
        assert_eq!(
            judge(&own, "sql-vm", "sql-replica", &seen(node("7", 2, true))),
            Verdict::Primary,
            "a replica of the newer timeline is following, not writing"
        );
        assert_eq!(
            judge(&own, "sql-vm", "sql-replica", &seen(node("8", 5, false))),
            Verdict::Primary,
            "another cluster is not this one's second primary"
        );
        let silent = judge(
            &own,
            "sql-vm",
            "sql-replica",
            &PeerSeen::Silent("no route".into()),
        );
        assert!(
            matches!(&silent, Verdict::Unconfirmed(why) if why.starts_with("cannot rule out a newer primary") && why.contains("no route")),
            "{silent:?}"
        );
    }
}
