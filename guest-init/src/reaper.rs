//! Child processes and their exits. PID 1 inherits every orphan in the VM, so one place
//! reaps them all (`waitpid(-1, WNOHANG)` until none is left) and hands the exit of each
//! child we started to whoever is waiting for it. Nothing else may call `wait`: std's
//! `Child::wait`/`output` would race this reaper, so children are spawned here.

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fmt;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
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

#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, Sender<Exit>>,
    /// Exits reaped before anyone registered for them (cannot happen for children we
    /// spawn, since spawning holds the lock; kept for robustness).
    unclaimed: HashMap<i32, Exit>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
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

/// Starts `cmd` and registers it with the reaper before any SIGCHLD can be handled.
pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildHandle> {
    let (tx, rx) = channel();
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    if let Some(exit) = reg.unclaimed.remove(&pid) {
        let _ = tx.send(exit);
    } else {
        reg.waiting.insert(pid, tx);
    }
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
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        match reg.waiting.remove(&pid.as_raw()) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                log::debug!("reaped orphan {pid} ({exit})");
                if reg.unclaimed.len() < 64 {
                    reg.unclaimed.insert(pid.as_raw(), exit);
                }
            }
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
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
}
