//! Small helpers for running and waiting on programs in tests.

use nix::sys::signal::Signal;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion, returning its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// Sends `sig` to `pid`; a process that is already gone is not an error here.
pub fn kill(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
    }
}

/// stdout and stderr as one string, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What `o` printed, after asserting it succeeded (`what` names it in the failure).
pub fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", text(o));
    text(o)
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open daemon log");
        let err = out.try_clone().expect("clone daemon log");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            name: name.to_string(),
            child,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it (SIGTERM, up to 5 s, then SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        kill(self.child.id(), Signal::SIGTERM);
        if wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            (!self.alive()).then_some(())
        })
        .is_none()
        {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Kills it at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pids of processes whose command line contains `needle` (like `pgrep -f`).
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| {
                            String::from_utf8_lossy(&c)
                                .replace('\0', " ")
                                .contains(needle)
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}
