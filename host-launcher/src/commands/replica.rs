//! Clusters: `replica credentials` (what a replica's host needs from the
//! primary's), `promote` (this replica becomes the primary) and `rejoin` (a former
//! primary becomes the replica of the new one, its data disk kept aside first).

use super::query::query;
use crate::ipc::{Reply, Request};
use crate::paths::HostEnv;
use crate::spec::Spec;
use crate::terminal::ask_yes;
use protocol::config::BootRequest;
use protocol::replication::{Fence, ReplicationStatus, STATUS_SQL};
use std::path::Path;

/// `replica credentials [--out FILE]`: prints, or writes 0600, what the replica's host
/// names in `replication.credentials_file`.
pub fn credentials(spec: &Spec, out: Option<&Path>) -> anyhow::Result<i32> {
    match out {
        Some(path) => {
            crate::replica_credentials::write(spec, path)?;
            println!(
                "wrote {} (mode 0600): copy it to the replica's host and name it in its spec's replication.credentials_file",
                path.display()
            );
        }
        None => print!("{}", crate::replica_credentials::render(spec)?),
    }
    Ok(0)
}

/// This node's replication status, when the server answers.
pub async fn status(spec: &Spec) -> Option<ReplicationStatus> {
    spec.replication.as_ref()?;
    let out = query(spec, STATUS_SQL).await.ok()?.ok()?;
    ReplicationStatus::parse(&out)
}

/// `promote [--force] [--yes]`: asks, then has the guest promote the replica, which
/// refuses while the old primary is plainly alive unless `force`.
pub async fn promote(spec: &Spec, force: bool, yes: bool) -> anyhow::Result<i32> {
    let Some(r) = &spec.replication else {
        eprintln!(
            "VM {} has no [replication] table in its spec: there is nothing to promote",
            spec.name
        );
        return Ok(2);
    };
    let question = format!(
        "Make VM {} ({}) the primary? The old primary among {} must then rejoin as its replica before it takes writes again{}.",
        spec.name,
        spec.hostname,
        r.peers.join(", "),
        if force {
            " (--force: even if it still runs; it stops taking writes once it sees this node)"
        } else {
            ""
        }
    );
    if !yes && !ask_yes(&question)? {
        eprintln!("nothing changed");
        return Ok(2);
    }
    let answer = match super::call(&super::running_spec(spec), &Request::Promote { force }).await? {
        Reply::PromoteResult(r) => r,
        Reply::Error { message } => {
            eprintln!("promote: {message}");
            return Ok(1);
        }
        other => {
            eprintln!("promote: unexpected answer {other:?}");
            return Ok(1);
        }
    };
    if !answer.ok {
        eprintln!("promote: {}", answer.output);
        return Ok(1);
    }
    println!(
        "{} is the primary now ({}). Clients using the multi-host `db url` write here without a change.",
        spec.hostname, answer.output
    );
    let peers = r.peers.join(" or ");
    println!(
        "Before the old primary ({peers}) takes writes again it must become this node's replica: on its host, `sovereign rejoin` (a plain start refuses to make a second primary, and a running old primary stops taking writes once it sees this node)."
    );
    if r.synchronous {
        println!(
            "Note: replication.synchronous is on, so commits here wait until one of {peers} streams from this node."
        );
    }
    Ok(0)
}

/// `rejoin [--fresh]`: with the VM stopped, copies its data disk aside (asking first),
/// then starts it with this boot's request to rewind onto the peer (or copy it anew)
/// and follow it.
pub async fn rejoin(
    spec: Spec,
    env: &HostEnv,
    source: &str,
    fresh: bool,
    yes: bool,
) -> anyhow::Result<i32> {
    let Some(peer) = spec.replication.as_ref().map(|r| {
        if r.peers.len() == 1 {
            r.peers.join("")
        } else {
            format!("the primary among {}", r.peers.join(", "))
        }
    }) else {
        eprintln!(
            "VM {} has no [replication] table in its spec: it has no peer to rejoin",
            spec.name
        );
        return Ok(2);
    };
    if super::connect(&spec).await.is_some() {
        eprintln!(
            "VM {} is running: rejoin rewinds its data before postgres starts; stop it first (`sovereign stop`)",
            spec.name
        );
        return Ok(2);
    }
    let data = spec.data_disk.path.clone();
    if data.exists() {
        let copy = crate::disk_image::kept_copy_path(&data, "before-rejoin");
        let how = if fresh {
            format!("Its database is replaced by a new copy of {peer}")
        } else {
            format!("Writes it took that {peer} never received are given up (pg_rewind)")
        };
        let question = format!(
            "Make VM {} a replica of {peer}? {how}. {} is copied to {} first (kept).",
            spec.name,
            data.display(),
            copy.display()
        );
        if !yes && !ask_yes(&question)? {
            eprintln!("nothing changed");
            return Ok(2);
        }
        let written = crate::disk_image::copy_kept(&data, &copy)?;
        println!(
            "  + copied {} to {} ({}, synced)",
            data.display(),
            copy.display(),
            crate::terminal::size(written)
        );
    }
    let request = BootRequest::Rejoin { fresh };
    super::start::run(spec, env, source, false, Some(request), None).await
}

/// Percent of the data disk that a replication slot may hold back before status warns
/// (the `slot-retains-too-much` alert's warning).
const SLOT_WARN_PERCENT: u64 = crate::alerts::replication::SLOT_WARNING_PERCENT;

/// The lines `status` prints for replication; `disk_bytes` is the data disk's size.
pub fn render_status(s: &ReplicationStatus, disk_bytes: u64) -> String {
    let bytes = |b: Option<u64>| match b {
        None => "-".to_string(),
        Some(b) if b < 1 << 20 => format!("{b} B"),
        Some(b) => crate::terminal::size(b),
    };
    let mut out = format!(
        "  replication: {} on timeline {}, {}{}\n",
        s.role,
        s.timeline,
        s.state,
        if s.peer.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.peer)
        }
    );
    out.push_str(&format!(
        "    lag {} / {}\n",
        bytes(s.lag_bytes),
        s.lag_seconds
            .map_or_else(|| "-".to_string(), |secs| format!("{secs} s"))
    ));
    for r in s.replicas.iter().filter(|_| s.replicas.len() > 1) {
        out.push_str(&format!(
            "    replica {}: {}, lag {} / {}\n",
            r.name,
            r.state,
            bytes(r.lag_bytes),
            r.lag_seconds
                .map_or_else(|| "-".to_string(), |secs| format!("{secs} s"))
        ));
    }
    for slot in &s.slots {
        out.push_str(&format!(
            "    slot {}{}: holds {} of WAL",
            slot.name,
            if slot.active { "" } else { " (inactive)" },
            bytes(slot.retained_bytes)
        ));
        if slot.lost() {
            out.push_str(" ✗ invalidated: its replica fell further behind than the WAL budget lets this node keep (max_slot_wal_keep_size); it must copy this node anew: on its host, `sovereign rejoin --fresh`");
        } else if slot.wal_status == "unreserved" {
            out.push_str(" ⚠ past the WAL budget: invalidated at the next checkpoint unless its replica catches up");
        } else if slot.share_of(disk_bytes) >= SLOT_WARN_PERCENT {
            out.push_str(&format!(
                " ⚠ {SLOT_WARN_PERCENT}% of the data disk or more: a replica that is gone keeps WAL here up to the budget; bring it back, or drop its slot (select pg_drop_replication_slot('NAME'))"
            ));
        }
        out.push('\n');
    }
    out
}

/// The line `status` prints for a primary's fence; `now_unix` is the host's clock.
pub fn render_fence(f: &Fence, now_unix: i64) -> String {
    let ago = |t: i64| {
        let secs = (now_unix - t).max(0);
        if secs < 120 {
            format!("{secs} s ago")
        } else {
            format!("{} min ago", secs / 60)
        }
    };
    match f {
        Fence::Clear { peer_seen_unix } => format!(
            "  fence: ✓ the peer answered {}, and is no newer primary\n",
            ago(*peer_seen_unix)
        ),
        Fence::Unconfirmed { reason, since_unix } => format!(
            "  fence: ⚠ {reason} (since {}); it fences this node once it answers as a newer primary\n",
            ago(*since_unix)
        ),
        Fence::Fenced { reason, since_unix } => {
            format!("  fence: ✗ fenced {}: {reason}\n", ago(*since_unix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::replication::{Role, SlotStatus};

    fn primary(retained: u64, wal_status: &str) -> ReplicationStatus {
        ReplicationStatus {
            role: Role::Primary,
            timeline: 2,
            state: "streaming async".into(),
            peer: "sql_vm".into(),
            lag_bytes: Some(0),
            lag_seconds: Some(0),
            replicas: vec![],
            slots: vec![SlotStatus {
                name: "sql_vm".into(),
                active: wal_status != "lost",
                wal_status: wal_status.into(),
                retained_bytes: (wal_status != "lost").then_some(retained),
                inactive_secs: None,
            }],
        }
    }

    #[test]
    fn status_warns_when_a_slot_holds_too_much_and_says_when_it_was_lost() {
        let ok = render_status(&primary(100 << 20, "reserved"), 4 << 30);
        assert!(
            ok.contains("primary on timeline 2, streaming async (sql_vm)"),
            "{ok}"
        );
        assert!(
            ok.contains("slot sql_vm: holds 100.0 MiB of WAL") && !ok.contains('⚠'),
            "{ok}"
        );
        assert!(ok.contains("lag 0 B / 0 s"), "{ok}");
        let warned = render_status(&primary(2 << 30, "extended"), 4 << 30);
        assert!(
            warned.contains("⚠ 25% of the data disk or more"),
            "{warned}"
        );
        let lost = render_status(&primary(0, "lost"), 4 << 30);
        assert!(
            lost.contains("slot sql_vm (inactive): holds - of WAL ✗ invalidated")
                && lost.contains("sovereign rejoin --fresh"),
            "{lost}"
        );
    }

    #[test]
    fn the_fence_line_says_what_holds() {
        let f = Fence::Fenced {
            reason: "the peer sql-replica was promoted to timeline 2".into(),
            since_unix: 1000,
        };
        assert_eq!(
            render_fence(&f, 1030),
            "  fence: ✗ fenced 30 s ago: the peer sql-replica was promoted to timeline 2\n"
        );
        let u = Fence::Unconfirmed {
            reason: "cannot rule out a newer primary: the peer did not answer (x)".into(),
            since_unix: 0,
        };
        assert!(render_fence(&u, 600).contains("⚠ cannot rule out a newer primary"));
    }
}
