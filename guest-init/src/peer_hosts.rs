//! The cluster's peers by name in /etc/hosts: tailscaled in the guest does not serve
//! names (`--accept-dns=false`), yet pgBackRest reaches a peer's TLS server by its
//! tailnet name, the name its certificate carries. Each address tailscaled gave for a
//! peer is written beside the image's own lines, marked, and rewritten when it changes.
//! Also when each peer last answered: pgBackRest is only told of peers that did
//! ([`answered_within`]), so it never asks the resolver (gvproxy, and past it the host's
//! network) for a name /etc/hosts lacks, nor waits out a connection to a peer that is
//! down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When each peer's server last answered.
static ANSWERED: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// Notes that `name`'s server answered just now.
pub fn answered(name: &str) {
    if let Ok(mut a) = ANSWERED.lock() {
        a.insert(name.to_string(), Instant::now());
    }
}

/// Whether `name` is in /etc/hosts and its server answered within `window`.
pub fn answered_within(name: &str, window: Duration) -> bool {
    let known = KNOWN.lock().is_ok_and(|k| k.contains_key(name));
    known
        && ANSWERED
            .lock()
            .is_ok_and(|a| a.get(name).is_some_and(|t| t.elapsed() <= window))
}

const HOSTS: &str = "/etc/hosts";
/// Ends every line this module writes.
const MARK: &str = "# tailnet peer (sovereign-init)";

static KNOWN: Mutex<BTreeMap<String, Ipv4Addr>> = Mutex::new(BTreeMap::new());

/// Records that `name` is at `ip`; rewrites /etc/hosts when that is news. A failure is
/// logged: the name then fails to resolve, and pgBackRest says so.
pub fn remember(name: &str, ip: Ipv4Addr) {
    let Ok(mut known) = KNOWN.lock() else {
        return;
    };
    if known.get(name) == Some(&ip) {
        return;
    }
    known.insert(name.to_string(), ip);
    let current = std::fs::read_to_string(HOSTS).unwrap_or_default();
    let text = render(&current, &known);
    let tmp = format!("{HOSTS}.new");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, HOSTS));
    match written {
        Ok(()) => log::info!("{HOSTS}: {name} is {ip}"),
        Err(e) => log::warn!(
            "cannot write {name} ({ip}) into {}: {e}",
            Path::new(HOSTS).display()
        ),
    }
}

/// `current` without this module's lines, then one line per known peer.
fn render(current: &str, known: &BTreeMap<String, Ipv4Addr>) -> String {
    let mut out: String = current
        .lines()
        .filter(|l| !l.ends_with(MARK))
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, ip) in known {
        out.push_str(&format!("{ip} {name} {MARK}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_replace_their_own_lines_and_leave_the_rest() {
        let mut known = BTreeMap::new();
        known.insert("sql-r1".to_string(), Ipv4Addr::new(100, 64, 0, 2));
        let once = render("127.0.0.1 localhost\n", &known);
        assert_eq!(
            once,
            format!("127.0.0.1 localhost\n100.64.0.2 sql-r1 {MARK}\n")
        );
        known.insert("sql-r1".to_string(), Ipv4Addr::new(100, 64, 0, 9));
        let again = render(&once, &known);
        assert_eq!(
            again,
            format!("127.0.0.1 localhost\n100.64.0.9 sql-r1 {MARK}\n")
        );
    }
}
