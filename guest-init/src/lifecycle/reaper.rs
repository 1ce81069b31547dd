//! Child processes and their exits. PID 1 inherits every orphan in the VM, so one place
//! reaps them all (`waitpid(-1, WNOHANG)` until none is left) and hands the exit of each
//! child we started to whoever is waiting for it. Nothing else may call `wait`: std's
//! `Child::wait`/`output` would race this reaper, so children are spawned here.
//!
//! One lock (the registry's) orders the two: [`spawn`] holds it from fork until the
//! child is registered, which covers std's own `waitpid` on a child whose exec failed
//! (std forks and execs itself when `uid`/`gid` are set, and panics if that wait
//! fails); [`reap_all`] holds it around every `waitpid(-1)`. So the reaper can never
//! take a child out from under a spawner, and every exit of a child we spawned finds
//! its waiter registered. An exit nobody waits for (an orphan) is logged and dropped:
//! keeping it would hand it to a later child that reuses the pid.

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fmt;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It called exit with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// True for `exit(0)`.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Who waits for which pid.
#[derive(Debug, Default)]
struct Registry {
    waiting: HashMap<i32, Sender<Exit>>,
}

impl Registry {
    /// Registers the waiter of a child just spawned.
    fn register(&mut self, pid: i32, tx: Sender<Exit>) {
        self.waiting.insert(pid, tx);
    }

    /// Hands `exit` to the waiter of `pid`; false (and nothing kept) when nobody waits.
    fn deliver(&mut self, pid: i32, exit: Exit) -> bool {
        match self.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
                true
            }
            None => false,
        }
    }
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn lock() -> MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// A child we started, whose exit arrives through the reaper.
#[derive(Debug)]
pub struct ChildHandle {
    pid: i32,
    exit: Receiver<Exit>,
    done: Option<Exit>,
    /// The std handle, kept for its stdio pipes only (never waited on).
    pub child: Child,
}

impl ChildHandle {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Waits for the child to exit. If the reaper is gone (cannot happen while PID 1
    /// runs) the child is reported as killed.
    pub fn wait(&mut self) -> Exit {
        if let Some(e) = self.done {
            return e;
        }
        let e = self
            .exit
            .recv()
            .unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
        self.done = Some(e);
        e
    }

    /// Waits at most `timeout`; `None` if the child still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Exit> {
        if self.done.is_some() {
            return self.done;
        }
        match self.exit.recv_timeout(timeout) {
            Ok(e) => {
                self.done = Some(e);
                Some(e)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Exit::Signal(Signal::SIGKILL as i32)),
        }
    }

    /// Sends `sig` to the child unless it already exited.
    pub fn signal(&self, sig: Signal) {
        if self.done.is_none() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }
}

/// Starts `cmd` and registers it with the reaper, all under the registry's lock (see
/// the module's documentation).
pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildHandle> {
    let (tx, rx) = channel();
    let mut reg = lock();
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    reg.register(pid, tx);
    drop(reg);
    Ok(ChildHandle {
        pid,
        exit: rx,
        done: None,
        child,
    })
}

/// Reaps every exited child without blocking and delivers the exits of children we
/// started. Returns how many were reaped (orphans included).
pub fn reap_all() -> usize {
    let mut reaped = 0;
    let mut reg = lock();
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                break;
            }
            Ok(s) => s,
        };
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
            WaitStatus::Signaled(pid, sig, _) => (pid, Exit::Signal(sig as i32)),
            _ => continue,
        };
        reaped += 1;
        if !reg.deliver(pid.as_raw(), exit) {
            log::debug!("reaped orphan {pid} ({exit})");
        }
    }
    reaped
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn exits_are_delivered_to_the_spawner() {
        let mut ok = spawn(&mut Command::new("true")).unwrap();
        let mut bad = spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        let mut killed = spawn(Command::new("sleep").arg("30")).unwrap();
        killed.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut exits = [None, None, None];
        while exits.iter().any(Option::is_none) && std::time::Instant::now() < deadline {
            reap_all();
            for (slot, child) in exits.iter_mut().zip([&mut ok, &mut bad, &mut killed]) {
                if slot.is_none() {
                    *slot = child.wait_timeout(Duration::from_millis(10));
                }
            }
        }
        assert_eq!(
            exits,
            [
                Some(Exit::Code(0)),
                Some(Exit::Code(3)),
                Some(Exit::Signal(15))
            ]
        );
        assert_eq!(Exit::Signal(15).to_string(), "killed by SIGTERM");
        assert!(Exit::Code(0).success());
    }

    #[test]
    fn an_exit_nobody_waited_for_is_never_handed_to_a_later_child() {
        // An orphan with pid 4242 is reaped; later a child of ours gets pid 4242 (pids
        // wrap). It must not be told that it exited.
        let mut reg = Registry::default();
        assert!(!reg.deliver(4242, Exit::Code(0)));
        let (tx, rx) = channel();
        reg.register(4242, tx);
        assert!(rx.try_recv().is_err(), "a stale exit reached the new child");
        assert!(reg.deliver(4242, Exit::Code(7)));
        assert_eq!(rx.try_recv(), Ok(Exit::Code(7)));
        assert!(reg.waiting.is_empty());
    }

    /// Runs `test` (its full path, as `module_path!()` gives it) in a fresh copy of this
    /// test binary (so its `waitpid(-1)` reaps no other test's children) and asserts it
    /// passed.
    pub(crate) fn in_child_process(path: &str, env: &str) {
        // The harness names tests without the crate.
        let test = path.split_once("::").map_or(path, |(_, rest)| rest);
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args(["--exact", test, "--include-ignored", "--nocapture"])
            .env(env, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{test} in a child process: {}\n{text}",
            out.status
        );
    }

    #[test]
    fn a_failed_exec_never_races_the_reaper() {
        in_child_process(
            concat!(module_path!(), "::failed_exec_race_body"),
            "SOVEREIGN_REAPER_RACE",
        );
    }

    /// A reaper spinning on `waitpid(-1)` while uid-switched spawns fail to exec: std
    /// waits for such a child itself and panics when the reaper took it first.
    #[test]
    #[ignore = "runs only inside a_failed_exec_never_races_the_reaper's child process"]
    fn failed_exec_race_body() {
        if std::env::var_os("SOVEREIGN_REAPER_RACE").is_none() {
            return;
        }
        use std::os::unix::process::CommandExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let spinner = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    reap_all();
                }
            })
        };
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        for _ in 0..200 {
            let err = spawn(
                Command::new("/nonexistent/sovereign-test-program")
                    .uid(uid)
                    .gid(gid),
            )
            .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        }
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
    }
}
