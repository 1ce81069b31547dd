//! Two-node clusters: `replica credentials` (what a replica's host needs from the
//! primary's), `promote` (this replica becomes the primary) and `rejoin` (a former
//! primary becomes the replica of the new one, its data disk kept aside first).

use super::backup::ask_yes;
use super::query::{query, QueryError};
use crate::paths::HostEnv;
use crate::spec::Spec;
use protocol::replication::{slot_sql, ReplicationStatus, STATUS_SQL};
use std::path::Path;
use std::time::Instant;

/// How long `promote` lets PostgreSQL take to leave recovery.
const PROMOTE_WAIT_SECS: u32 = 60;

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
    out.lines().find_map(ReplicationStatus::parse)
}

/// `promote`: the replica leaves recovery and takes writes (on a new timeline); then
/// keeps a slot for its peer so the old primary can rejoin.
pub async fn promote(spec: &Spec) -> anyhow::Result<i32> {
    let Some(r) = &spec.replication else {
        eprintln!(
            "VM {} has no [replication] table in its spec: there is nothing to promote",
            spec.name
        );
        return Ok(2);
    };
    match query(spec, "select pg_is_in_recovery()").await? {
        Ok(out) if out.trim() == "t" => {}
        Ok(_) => {
            eprintln!("VM {} is already a primary: nothing to promote", spec.name);
            return Ok(1);
        }
        Err(e) => return failed("asking whether it is a replica", &e),
    }
    let started = Instant::now();
    match query(
        spec,
        &format!("select pg_promote(true, {PROMOTE_WAIT_SECS})"),
    )
    .await?
    {
        Ok(out) if out.trim() == "t" => {}
        Ok(out) => {
            eprintln!(
                "promote: PostgreSQL did not finish within {PROMOTE_WAIT_SECS} s (pg_promote said {:?}); see `sovereign logs postgres`",
                out.trim()
            );
            return Ok(1);
        }
        Err(e) => return failed("promoting", &e),
    }
    let took = started.elapsed();
    if let Err(e) = query(spec, &slot_sql(&r.peer)).await? {
        eprintln!("promote: the slot for {} could not be made: {e}", r.peer);
    }
    println!(
        "{} is the primary now (promoted in {:.1} s). Clients using the multi-host `db url` write here without a change.",
        spec.hostname,
        took.as_secs_f64()
    );
    println!(
        "Before {peer} starts again, it must become this node's replica: on its host, `sovereign rejoin` (a plain start refuses to make a second primary).",
        peer = r.peer
    );
    if r.synchronous {
        println!(
            "Note: replication.synchronous is on, so commits here wait until {} is back as a replica.",
            r.peer
        );
    }
    Ok(0)
}

/// `rejoin`: with the VM stopped, copies its data disk aside (asking first), then
/// starts it with the instruction to rewind onto the peer and follow it.
pub async fn rejoin(mut spec: Spec, env: &HostEnv, source: &str, yes: bool) -> anyhow::Result<i32> {
    let Some(peer) = spec.replication.as_ref().map(|r| r.peer.clone()) else {
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
        let question = format!(
            "Make VM {} a replica of {peer}? Writes it took that {peer} never received are given up (pg_rewind). {} is copied to {} first (kept).",
            spec.name,
            data.display(),
            copy.display()
        );
        if !yes && !ask_yes(&question)? {
            eprintln!("nothing changed");
            return Ok(2);
        }
        let o = std::process::Command::new("cp")
            .args(["--sparse=always", "--reflink=auto", "--"])
            .arg(&data)
            .arg(&copy)
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run cp: {e}"))?;
        if !o.status.success() {
            anyhow::bail!(
                "cannot copy {} to {}: {}",
                data.display(),
                copy.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        println!("  + copied {} to {}", data.display(), copy.display());
    }
    if let Some(r) = spec.replication.as_mut() {
        r.rejoin = true;
    }
    super::start::run(spec, env, source, false).await
}

fn failed(what: &str, e: &QueryError) -> anyhow::Result<i32> {
    eprintln!("promote: {what} failed: {e}");
    Ok(1)
}

/// Share of the data disk that a replication slot may hold back before status warns.
const SLOT_WARN_DIVISOR: u64 = 4;

/// The lines `status` prints for replication; `disk_bytes` is the data disk's size.
pub fn render_status(s: &ReplicationStatus, disk_bytes: u64) -> String {
    let bytes = |b: Option<u64>| match b {
        None => "-".to_string(),
        Some(b) if b < 1 << 20 => format!("{b} B"),
        Some(b) => super::backup::size(b),
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
    if !s.slots.is_empty() {
        out.push_str(&format!(
            "    slots {} hold {} of WAL",
            s.slots,
            bytes(s.slot_retained_bytes)
        ));
        let limit = disk_bytes / SLOT_WARN_DIVISOR;
        if s.slot_retained_bytes
            .is_some_and(|b| limit > 0 && b > limit)
        {
            out.push_str(&format!(
                " ⚠ more than 1/{SLOT_WARN_DIVISOR} of the data disk: a replica that is gone keeps WAL here until the disk fills; bring it back, or drop its slot (select pg_drop_replication_slot('NAME'))"
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::replication::Role;

    #[test]
    fn status_warns_when_a_slot_holds_too_much() {
        let mut s = ReplicationStatus {
            role: Role::Primary,
            timeline: 2,
            state: "streaming async".into(),
            peer: "sql_vm".into(),
            lag_bytes: Some(0),
            lag_seconds: Some(0),
            slots: "sql_vm".into(),
            slot_retained_bytes: Some(100 << 20),
        };
        let ok = render_status(&s, 4 << 30);
        assert!(
            ok.contains("primary on timeline 2, streaming async (sql_vm)"),
            "{ok}"
        );
        assert!(
            ok.contains("slots sql_vm hold 100.0 MiB of WAL") && !ok.contains('⚠'),
            "{ok}"
        );
        assert!(ok.contains("lag 0 B / 0 s"), "{ok}");
        s.slot_retained_bytes = Some(2 << 30);
        let warned = render_status(&s, 4 << 30);
        assert!(
            warned.contains("⚠ more than 1/4 of the data disk"),
            "{warned}"
        );
    }
}
