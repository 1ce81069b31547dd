//! `sovereign cluster status`: every node in one table, each asked through its own
//! launcher on its host: where its supervisor stands, its role and timeline as the
//! server says, how far behind it is (a replica) or who streams from it (the
//! primary), its slots, its last backup, its connections and its alerts.

use super::node::Node;
use super::Cluster;
use protocol::replication::Role;
use protocol::status::VmStatus;

/// Prints the table; exit 0 when exactly one node takes writes and every node answered.
pub fn run(cluster: &Cluster) -> i32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut primaries = 0;
    let mut silent = 0;
    for n in &cluster.nodes {
        match n.status() {
            Ok(Some(s)) => {
                if s.replication
                    .as_ref()
                    .is_some_and(|r| r.role == Role::Primary)
                {
                    primaries += 1;
                }
                print!("{}", render(n, &s, now));
            }
            Ok(None) => {
                silent += 1;
                println!(
                    "{} ({}): no status (is its launcher installed there?)",
                    n.hostname,
                    n.via.describe()
                );
            }
            Err(e) => {
                silent += 1;
                println!("{} ({}): ✗ {e}", n.hostname, n.via.describe());
            }
        }
    }
    match primaries {
        1 => println!("✓ one primary"),
        0 => println!("✗ no node takes writes"),
        n => println!("✗ {n} nodes answer as primaries: the fence stops all but one within seconds; if this stays, see docs/operations.md (Replicas)"),
    }
    if primaries == 1 && silent == 0 {
        0
    } else {
        1
    }
}

/// One node's lines.
fn render(n: &Node, s: &VmStatus, now: i64) -> String {
    let mut out = format!("{} ({}): {}", n.hostname, n.via.describe(), s.phase);
    match &s.replication {
        Some(r) => {
            out.push_str(&format!(", {} on timeline {}", r.role, r.timeline));
            match r.role {
                Role::Replica => out.push_str(&format!(
                    ", {} from {}, lag {} / {}",
                    r.state,
                    if r.peer.is_empty() { "-" } else { &r.peer },
                    bytes(r.lag_bytes),
                    r.lag_seconds
                        .map_or_else(|| "-".into(), |x| format!("{x} s"))
                )),
                Role::Primary => {
                    let links: Vec<String> = r
                        .replicas
                        .iter()
                        .map(|l| format!("{} {} (lag {})", l.name, l.state, bytes(l.lag_bytes)))
                        .collect();
                    out.push_str(&format!(
                        ", replicas: {}",
                        if links.is_empty() {
                            "none connected".to_string()
                        } else {
                            links.join(", ")
                        }
                    ));
                }
            }
            out.push('\n');
            for slot in &r.slots {
                out.push_str(&format!(
                    "  slot {}: {}{}, holds {}\n",
                    slot.name,
                    if slot.active { "active" } else { "inactive" },
                    if slot.wal_status.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", slot.wal_status)
                    },
                    bytes(slot.retained_bytes)
                ));
            }
        }
        None => out.push_str(", the server did not answer\n"),
    }
    if let Some(db) = &s.database {
        out.push_str(&format!(
            "  connections {} of {}\n",
            db.connections, db.max_connections
        ));
    }
    let backup = s.guest.as_ref().and_then(|g| g.backup.as_ref());
    match backup.and_then(|b| b.last_ok.as_ref()) {
        Some(run) => out.push_str(&format!(
            "  last backup: {} {} min ago ({} set(s) on its backup disk)\n",
            run.kind,
            (now - run.started_unix).max(0) / 60,
            backup.map_or(0, |b| b.sets)
        )),
        None => out.push_str(&format!(
            "  last backup: none{}\n",
            backup
                .and_then(|b| b.problem.as_ref())
                .map_or(String::new(), |p| format!(" ({p})"))
        )),
    }
    for a in &s.alerts {
        out.push_str(&format!(
            "  alert {} ({}): {}\n",
            a.condition, a.severity, a.summary
        ));
    }
    out
}

fn bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b < 1 << 20 => format!("{b} B"),
        Some(b) => crate::terminal::size(b),
    }
}
