//! A write load from the second tailnet node: one psql per row, one row per transaction,
//! by the name `sql-vm` through Tailscale, the way an app's client reaches the database.
//! Every acknowledged COMMIT is logged with its time, so after a fault the tests can
//! say when writes came back and prove that no acknowledged row was lost.
//!
//! Rows are numbered 1, 2, 3, ... and a number is only moved past once its insert was
//! acknowledged (a failed attempt is retried with the same number, `on conflict do
//! nothing` absorbing one that committed unacknowledged). So the acknowledged rows are
//! exactly 1..=K, and "nothing lost" is `count(*) where n <= K` = K.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The table the load writes.
pub const TABLE: &str = "fault_load";

/// SQL that creates [`TABLE`].
pub const CREATE_TABLE: &str =
    "create table if not exists fault_load (n bigint primary key, at timestamptz not null default now())";

#[derive(Debug, Default)]
struct Log {
    acked: Vec<Instant>,
    failures: Vec<(Instant, String)>,
}

/// The running load.
#[derive(Debug)]
pub struct WriteLoad {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Asserts that every row the load acknowledged (1..=`acked`) is on `vm`.
pub fn assert_acked_rows_on(vm: &crate::vm::Vm, acked: usize) {
    let present = vm.number(&format!("select count(*) from {TABLE} where n <= {acked}"));
    assert_eq!(
        present,
        i64::try_from(acked).unwrap_or(i64::MAX),
        "every acknowledged row is on {}",
        vm.spec.display()
    );
}

/// Writes a libpq password file (0600) for `password`, so no process carries the
/// password in its environment or arguments.
pub fn pgpass(dir: &Path, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("pgpass");
    std::fs::write(&path, format!("*:*:*:postgres:{password}\n")).expect("write pgpass");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Where the load writes unless told otherwise: the VM by name, as the superuser.
pub const DEFAULT_CONNINFO: &str =
    "host=sql-vm port=5432 user=postgres dbname=postgres connect_timeout=5";

fn insert(ns: &str, pgpass: &Path, conninfo: &str, n: usize) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "psql"])
        .arg(conninfo)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "insert into {TABLE} (n) values ({n}) on conflict do nothing"
        ))
        .env("PGPASSFILE", pgpass)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl WriteLoad {
    /// Starts writing from inside network namespace `ns` (the second node's).
    pub fn start(ns: &str, pgpass: &Path) -> WriteLoad {
        WriteLoad::start_to(ns, pgpass, DEFAULT_CONNINFO)
    }

    /// [`WriteLoad::start`] with a connection string of its own (e.g. both VMs of a
    /// cluster, `target_session_attrs=read-write`).
    pub fn start_to(ns: &str, pgpass: &Path, conninfo: &str) -> WriteLoad {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop, ns, pgpass, conninfo) = (
                Arc::clone(&log),
                Arc::clone(&stop),
                ns.to_string(),
                pgpass.to_path_buf(),
                conninfo.to_string(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = log.lock().map(|l| l.acked.len() + 1).unwrap_or(1);
                    match insert(&ns, &pgpass, &conninfo, n) {
                        Ok(()) => {
                            if let Ok(mut l) = log.lock() {
                                l.acked.push(Instant::now());
                            }
                        }
                        Err(e) => {
                            if let Ok(mut l) = log.lock() {
                                l.failures.push((Instant::now(), e));
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
        };
        WriteLoad {
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// [`WriteLoad::start_to`], returned once more than `rows` rows were acknowledged
    /// (within a minute; panics with the last failure otherwise).
    pub fn start_warmed(ns: &str, pgpass: &Path, conninfo: &str, rows: usize) -> WriteLoad {
        let writes = WriteLoad::start_to(ns, pgpass, conninfo);
        let warmed =
            crate::process::wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
                (writes.acked() > rows).then_some(())
            });
        assert!(
            warmed.is_some(),
            "the load did not get {rows} rows acknowledged: {:?}",
            writes.last_failure()
        );
        writes
    }

    /// Rows acknowledged so far (rows 1..=this).
    pub fn acked(&self) -> usize {
        self.log.lock().map(|l| l.acked.len()).unwrap_or(0)
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> usize {
        self.log.lock().map(|l| l.failures.len()).unwrap_or(0)
    }

    /// The last failure's text, for messages.
    pub fn last_failure(&self) -> Option<String> {
        self.log
            .lock()
            .ok()
            .and_then(|l| l.failures.last().map(|(_, e)| e.clone()))
    }

    /// Waits until a row is acknowledged after `since`; returns how long after `since`.
    pub fn first_ack_after(&self, since: Instant, timeout: Duration) -> Option<Duration> {
        crate::process::wait_for(timeout, Duration::from_millis(100), || {
            self.log.lock().ok().and_then(|l| {
                l.acked
                    .iter()
                    .find(|t| **t > since)
                    .map(|t| t.duration_since(since))
            })
        })
    }

    /// The longest stretch without an acknowledged row between `from` and `to` (the
    /// outage a fault caused, as a client saw it).
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let Ok(l) = self.log.lock() else {
            return Duration::ZERO;
        };
        let mut prev = from;
        let mut longest = Duration::ZERO;
        for t in l.acked.iter().filter(|t| **t > from && **t <= to) {
            longest = longest.max(t.duration_since(prev));
            prev = *t;
        }
        longest.max(to.saturating_duration_since(prev))
    }

    /// Stops the load; returns the rows acknowledged.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.acked()
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
