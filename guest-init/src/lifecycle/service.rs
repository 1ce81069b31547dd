//! One supervised process: started, restarted with backoff when it dies, restarted on
//! request (a configuration change), and stopped with a signal and a deadline. Used for
//! postgres and tailscaled; [`crate::lifecycle::running`] holds the set of them.

use crate::lifecycle::reaper::{self, Exit};
use crate::lifecycle::stop::StopBudget;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocol::messages::ServiceStatus;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Builds the command for each (re)start.
pub type CommandFactory = Box<dyn Fn() -> Command + Send>;

#[derive(Debug, Default)]
struct State {
    pid: Option<u32>,
    restarts: u32,
    /// Set by `stop`: do not restart.
    stopping: bool,
    /// Set by `restart`: the next exit is planned, restart at once without counting.
    planned: bool,
    /// The supervising thread has ended.
    finished: bool,
    last_exit: Option<Exit>,
}

/// Handle to a supervised process.
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    stop_signal: Signal,
    shared: Arc<(Mutex<State>, Condvar)>,
}

/// Restart delay after the `n`th consecutive quick failure: 1 s doubling to 30 s.
pub fn restart_delay(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.min(5)).min(Duration::from_secs(30))
}

impl Service {
    /// Starts `make()` now and keeps it running until [`Service::stop`].
    pub fn start(name: &str, stop_signal: Signal, make: CommandFactory) -> Service {
        let svc = Service {
            name: name.to_string(),
            stop_signal,
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
        };
        let worker = svc.clone();
        if let Err(e) = std::thread::Builder::new()
            .name(format!("svc-{name}"))
            .spawn(move || worker.supervise(make))
        {
            log::error!("{name}: cannot start its supervisor thread: {e}");
        }
        svc
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `left` for the supervising thread to change the state.
    fn wait_change<'a>(
        &'a self,
        st: std::sync::MutexGuard<'a, State>,
        left: Duration,
    ) -> std::sync::MutexGuard<'a, State> {
        self.shared
            .1
            .wait_timeout(st, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    fn supervise(&self, make: CommandFactory) {
        let mut quick_failures = 0u32;
        loop {
            if self.lock().stopping {
                break;
            }
            // Nothing (re)starts once power-off was asked for: the shutdown's sweep
            // would only kill it again, mid-way.
            if crate::lifecycle::stop::requested() {
                log::warn!("{}: not started: shutdown was requested", self.name);
                break;
            }
            let started = Instant::now();
            let mut child = match reaper::spawn(&mut make()) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("{}: cannot start: {e}", self.name);
                    quick_failures += 1;
                    self.pause(restart_delay(quick_failures));
                    continue;
                }
            };
            log::info!("{}: started (pid {})", self.name, child.pid());
            let stop_now = {
                let mut st = self.lock();
                st.pid = Some(child.pid());
                st.stopping
            };
            self.shared.1.notify_all();
            if stop_now {
                child.signal(self.stop_signal);
            }
            let exit = child.wait();
            let (stopping, planned) = {
                let mut st = self.lock();
                st.pid = None;
                st.last_exit = Some(exit);
                let planned = std::mem::take(&mut st.planned);
                (st.stopping, planned)
            };
            self.shared.1.notify_all();
            if stopping {
                log::info!("{}: stopped ({exit})", self.name);
                break;
            }
            if planned {
                log::info!("{}: restarting as requested ({exit})", self.name);
                continue;
            }
            quick_failures = if started.elapsed() > Duration::from_secs(60) {
                0
            } else {
                quick_failures + 1
            };
            let delay = restart_delay(quick_failures);
            log::warn!(
                "{}: exited unexpectedly ({exit}); restarting in {delay:?}",
                self.name
            );
            self.lock().restarts += 1;
            self.pause(delay);
        }
        self.lock().finished = true;
        self.shared.1.notify_all();
    }

    /// Waits `delay` before a restart, or less if [`Service::stop`] is called: a
    /// shutdown never waits out a backoff.
    fn pause(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut st = self.lock();
        while !st.stopping {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return;
            };
            st = self.wait_change(st, left);
        }
    }

    /// The current pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// Waits until the process runs (or `timeout` passes); returns its pid.
    pub fn wait_running(&self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.pid.is_none() && !st.finished {
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self.wait_change(st, left);
        }
        st.pid
    }

    fn signal(&self, sig: Signal) {
        self.send_signal(sig);
    }

    /// Sends `sig` to the process if it runs; returns its pid.
    pub fn send_signal(&self, sig: Signal) -> Option<u32> {
        let pid = self.pid()?;
        let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)), sig);
        Some(pid)
    }

    /// Restarts the process now (stop signal, then an immediate start), waiting up to
    /// `deadline` for it to exit before killing it.
    pub fn restart(&self, deadline: Duration) {
        let Some(old) = self.pid() else { return };
        self.lock().planned = true;
        self.signal(self.stop_signal);
        let until = Instant::now() + deadline;
        let mut st = self.lock();
        while st.pid == Some(old) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                drop(st);
                log::warn!(
                    "{}: did not stop within {deadline:?}; killing it",
                    self.name
                );
                self.signal(Signal::SIGKILL);
                return;
            };
            st = self.wait_change(st, left);
        }
    }

    /// Stops the process for good: the stop signal, SIGKILL after `budget.grace`, and at
    /// most `budget.after_kill` more. Returns how it exited, if it was running.
    pub fn stop(&self, budget: StopBudget) -> Option<Exit> {
        let deadline = budget.grace;
        self.lock().stopping = true;
        self.shared.1.notify_all();
        self.signal(self.stop_signal);
        let mut until = Instant::now() + deadline;
        let mut killed = false;
        let mut st = self.lock();
        while !st.finished {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                if killed {
                    log::error!("{}: still not gone after SIGKILL", self.name);
                    return st.last_exit;
                }
                drop(st);
                log::warn!(
                    "{}: did not stop within {deadline:?}; killing it",
                    self.name
                );
                self.signal(Signal::SIGKILL);
                killed = true;
                until = Instant::now() + budget.after_kill;
                st = self.lock();
                continue;
            };
            st = self.wait_change(st, left);
        }
        st.last_exit
    }

    /// Name, pid and restart count, for status reports.
    pub fn status(&self) -> ServiceStatus {
        let st = self.lock();
        ServiceStatus {
            name: self.name.clone(),
            pid: st.pid,
            restarts: st.restarts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_cuts_a_restart_backoff_short() {
        crate::lifecycle::reaper::tests::in_child_process(
            concat!(module_path!(), "::backoff_body"),
            "SOVEREIGN_BACKOFF_TEST",
        );
    }

    /// A service that cannot start backs off (2 s, 4 s, ...); `stop` must not wait that
    /// out. Needs the reaper, so it runs in a child process.
    #[test]
    #[ignore = "runs only inside stop_cuts_a_restart_backoff_short's child process"]
    fn backoff_body() {
        if std::env::var_os("SOVEREIGN_BACKOFF_TEST").is_none() {
            return;
        }
        let svc = Service::start(
            "missing",
            Signal::SIGTERM,
            Box::new(|| Command::new("/nonexistent/sovereign-service")),
        );
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        svc.stop(StopBudget {
            grace: Duration::from_secs(20),
            after_kill: Duration::from_secs(1),
        });
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "stop waited {:?} for a backoff",
            t.elapsed()
        );
    }

    #[test]
    fn delays_grow_and_cap() {
        assert_eq!(restart_delay(0), Duration::from_secs(1));
        assert_eq!(restart_delay(1), Duration::from_secs(2));
        assert_eq!(restart_delay(4), Duration::from_secs(16));
        assert_eq!(restart_delay(9), Duration::from_secs(30));
    }
}
