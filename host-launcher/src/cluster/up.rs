//! `sovereign cluster up`: brings the cluster to what its file says, in the order that
//! cannot make two primaries or strand a replica: the primary first, up to `ready`;
//! each replica handed its credentials by the primary's own launcher (never a file the
//! user copies); the replicas started; each one streaming; a row written on the
//! primary read back on every replica; the backups every node holds; the multi-host
//! connection strings. Run again, it starts nothing that runs and rewrites no file
//! that holds the same bytes, and says so.

use super::node::{Node, NodeError};
use super::Cluster;
use protocol::backup::BackupCatalog;
use protocol::replication::slot_name;
use protocol::status::{Phase, VmStatus};
use std::time::{Duration, Instant};

/// How long the replicas get to stream once started.
const STREAM_PATIENCE: Duration = Duration::from_secs(300);
/// How long a row written on the primary may take to reach every replica (a replica
/// busy with its first backup replays slowly on a small machine).
const ROW_PATIENCE: Duration = Duration::from_secs(180);

/// What `up` changed, for its last line.
#[derive(Debug, Default)]
struct Changes(Vec<String>);

/// Runs `cluster up`; exit 0 when every step held.
pub fn run(cluster: &Cluster) -> Result<i32, NodeError> {
    let mut changed = Changes::default();
    println!("cluster: {}", describe(cluster));
    let primary = cluster.primary();
    println!("[1/6] the primary");
    ensure_up(primary, &mut changed)?;
    println!("[2/6] credentials, from {}'s launcher", primary.hostname);
    let credentials = primary.sovereign_ok("replica credentials", &[])?;
    for r in cluster.replicas() {
        hand_credentials(r, &credentials, &mut changed)?;
    }
    println!("[3/6] the replicas");
    for r in cluster.replicas() {
        ensure_up(r, &mut changed)?;
    }
    println!("[4/6] streaming");
    if !wait_streaming(cluster)? {
        return Ok(1);
    }
    println!(
        "[5/6] a row written on {} is read on every replica",
        primary.hostname
    );
    if !row_reaches_every_replica(cluster)? {
        return Ok(1);
    }
    println!("[6/6] backups on every node");
    for n in &cluster.nodes {
        println!("  {}: {}", n.hostname, backups_of(n));
    }
    print_urls(cluster)?;
    if changed.0.is_empty() {
        println!("✓ cluster up: nothing to change; every node was up and every replica streams");
    } else {
        println!("✓ cluster up: {}", changed.0.join("; "));
    }
    Ok(0)
}

fn describe(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| format!("{} ({}, {})", n.hostname, n.role, n.via.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts the node's VM unless its supervisor says it is up.
fn ensure_up(n: &Node, changed: &mut Changes) -> Result<(), NodeError> {
    if let Some(s) = n.status()? {
        if s.phase == Phase::Up {
            println!("  = {} is up", n.hostname);
            return Ok(());
        }
    }
    println!(
        "  … starting {} on {} (it returns once every stage is proven{})",
        n.hostname,
        n.via.describe(),
        if n.is_primary() {
            ""
        } else {
            "; a replica's first boot copies the primary"
        }
    );
    let started = Instant::now();
    let out = n.sovereign_ok("start", &[])?;
    for line in out
        .lines()
        .filter(|l| l.starts_with('✓') || l.starts_with("up:"))
    {
        println!("    {line}");
    }
    println!(
        "  + started {} in {:.0} s",
        n.hostname,
        started.elapsed().as_secs_f64()
    );
    changed.0.push(format!("started {}", n.hostname));
    Ok(())
}

/// Writes the primary's credentials where the replica's spec reads them, unless they
/// are there already.
fn hand_credentials(r: &Node, credentials: &str, changed: &mut Changes) -> Result<(), NodeError> {
    let Some(path) = &r.credentials_file else {
        return Err(NodeError::Failed {
            node: r.hostname.clone(),
            command: format!("read {}", r.spec),
            status: "spec".into(),
            output: "replication.credentials_file is not set: name the file the cluster hands this replica its credentials in".into(),
        });
    };
    if r.read_file(path)?.as_deref() == Some(credentials) {
        println!("  = {} has them ({path})", r.hostname);
        return Ok(());
    }
    r.write_private(path, credentials.as_bytes())?;
    println!(
        "  + handed {} its credentials ({path} on {}, mode 0600)",
        r.hostname,
        r.via.describe()
    );
    changed
        .0
        .push(format!("handed {} its credentials", r.hostname));
    Ok(())
}

/// Waits until the primary sees every replica streaming; false (said) when one does not.
fn wait_streaming(c: &Cluster) -> Result<bool, NodeError> {
    let start = Instant::now();
    let mut said = Vec::new();
    loop {
        let status = c.primary().status()?;
        let mut missing = Vec::new();
        for r in c.replicas() {
            match link(status.as_ref(), &r.hostname) {
                Some(state) if state.starts_with("streaming") => {
                    if !said.contains(&r.hostname) {
                        println!(
                            "  ✓ {} streams from {} ({state})",
                            r.hostname,
                            c.primary().hostname
                        );
                        said.push(r.hostname.clone());
                    }
                }
                other => missing.push(format!(
                    "{} ({})",
                    r.hostname,
                    other.unwrap_or_else(|| "not connected".into())
                )),
            }
        }
        if missing.is_empty() {
            return Ok(true);
        }
        if start.elapsed() >= STREAM_PATIENCE {
            println!(
                "  ✗ after {} s these replicas do not stream: {}; see `sovereign status` and `sovereign logs postgres` on their hosts",
                STREAM_PATIENCE.as_secs(),
                missing.join(", ")
            );
            return Ok(false);
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The state the primary reports for the replica named `hostname`.
fn link(status: Option<&VmStatus>, hostname: &str) -> Option<String> {
    let r = status?.replication.as_ref()?;
    let name = slot_name(hostname);
    r.replicas
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.state.clone())
        .or_else(|| (r.peer == name).then(|| r.state.clone()))
}

/// Writes a row with a fresh token on the primary and reads it on every replica.
fn row_reaches_every_replica(c: &Cluster) -> Result<bool, NodeError> {
    let token = format!(
        "{}-{}",
        c.primary().hostname,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let write = format!(
        "create table if not exists sovereign_cluster_check (token text primary key, at timestamptz not null default now());\n\
         delete from sovereign_cluster_check where at < now() - interval '1 day';\n\
         insert into sovereign_cluster_check (token) values ('{token}');\n"
    );
    let o = c
        .primary()
        .sovereign_with_input("query", &[], write.as_bytes())?;
    c.primary().judge("query", &o)?;
    let read = format!("select count(*) from sovereign_cluster_check where token = '{token}';\n");
    for r in c.replicas() {
        let start = Instant::now();
        loop {
            let o = r.sovereign_with_input("query", &[], read.as_bytes())?;
            if o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == "1")
            {
                println!(
                    "  ✓ {} reads it after {:.1} s",
                    r.hostname,
                    start.elapsed().as_secs_f64()
                );
                break;
            }
            if start.elapsed() >= ROW_PATIENCE {
                println!(
                    "  ✗ {} has not replayed the row after {} s: {}{}",
                    r.hostname,
                    ROW_PATIENCE.as_secs(),
                    String::from_utf8_lossy(&o.stdout).trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return Ok(false);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(true)
}

/// What `backup list` says the node holds, in one line.
fn backups_of(n: &Node) -> String {
    let o = match n.sovereign("backup list", &["--json"]) {
        Ok(o) => o,
        Err(e) => return format!("? {e}"),
    };
    if !o.status.success() {
        let why = format!(
            "{} {}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return format!("⚠ {}", why.trim());
    }
    match serde_json::from_slice::<BackupCatalog>(&o.stdout) {
        Ok(c) if c.sets.is_empty() => {
            "⚠ no backup set yet (`sovereign backup now` on its host)".into()
        }
        Ok(c) => {
            let newest = c.sets.last().map_or(String::new(), |s| s.label.clone());
            format!("✓ {} set(s), the newest {newest}", c.sets.len())
        }
        Err(e) => format!("? unreadable answer: {e}"),
    }
}

/// `db url APP` of every app, from the primary's launcher: every node's name, the
/// writable one chosen by libpq.
fn print_urls(c: &Cluster) -> Result<(), NodeError> {
    let p = c.primary();
    if p.apps.is_empty() {
        let hosts: Vec<&str> = c.nodes.iter().map(|n| n.hostname.as_str()).collect();
        println!(
            "connect: psql \"host={} user=postgres dbname=postgres target_session_attrs=read-write\" (from a tailnet node)",
            hosts.join(",")
        );
        return Ok(());
    }
    println!("connection strings (the primary wherever it is):");
    for app in &p.apps {
        let url = p.sovereign_ok("db url", &[app])?;
        println!("  {app}: {}", url.trim());
    }
    Ok(())
}
