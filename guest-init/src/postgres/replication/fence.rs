//! The fence: the rules by which a primary decides, from what its peer says it is,
//! whether it may take writes. Two nodes of one cluster that can see each other must
//! never both take writes, so when both are primaries exactly one keeps going:
//!
//! 1. the newer timeline wins: the peer was promoted past this node (it was away, or
//!    `promote --force` was used while it ran), so this node stops;
//! 2. on the same timeline (two promotions from one parent; no single command makes
//!    it), the node whose name sorts first wins, the same answer on both nodes.
//!
//! The loser stops postgres and keeps its data; `sovereign rejoin` makes it the
//! winner's replica. A peer that does not answer cannot be ruled out as a newer
//! primary, and that is said ([`Verdict::Unconfirmed`]); a peer of another cluster, or
//! a replica, is no rival. Pure: what the peer said in, the verdict out.

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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(system: &str, timeline: u32, in_recovery: bool) -> NodeIdentity {
        NodeIdentity {
            system_identifier: system.into(),
            timeline,
            in_recovery,
        }
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
