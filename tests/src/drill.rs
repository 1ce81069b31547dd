//! Drills in steps: one fixture (a lab, VMs, a write load) shared by the tests of one
//! file, each test one step of the drill. A test first runs, in order, the steps before
//! it that have not run yet, so `cargo test --test replica promote` runs that step with
//! everything it needs, and `--test-threads=1` over the whole file runs each step once.
//! A step that failed makes the steps after it fail at once, naming it, instead of
//! running on a fixture it left half-way. The fixture is torn down when the test process
//! exits (its VMs stopped, its namespaces removed).

use std::sync::{Mutex, MutexGuard, Once};

/// One step of a drill.
pub struct Step<F> {
    /// Its name, as the test that runs it is called.
    pub name: &'static str,
    /// What it does to the fixture (panics when what it checks does not hold).
    pub run: fn(&mut F),
}

impl<F> std::fmt::Debug for Step<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}", self.name)
    }
}

struct Staged<F> {
    fixture: F,
    /// How many steps ran, in order.
    done: usize,
    /// A step that did not finish (it panicked).
    broken: Option<&'static str>,
}

/// What a drill's fixture does when a step fails: print what explains it (the VMs'
/// logs), while everything still runs.
pub trait Fixture {
    /// Prints the evidence of a failed step.
    fn on_failure(&self) {}
}

/// A drill's shared fixture and how far it got.
pub struct Drill<F: Fixture + Send + 'static> {
    state: Mutex<Option<Staged<F>>>,
}

impl<F: Fixture + Send + 'static> std::fmt::Debug for Drill<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        match state.as_ref() {
            None => write!(f, "drill (not set up)"),
            Some(s) => write!(f, "drill ({} step(s) done)", s.done),
        }
    }
}

impl<F: Fixture + Send + 'static> Default for Drill<F> {
    fn default() -> Self {
        Drill::new()
    }
}

impl<F: Fixture + Send + 'static> Drill<F> {
    /// An empty drill, for a `static`.
    pub const fn new() -> Drill<F> {
        Drill {
            state: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Staged<F>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `steps` up to and including the one called `upto`, building the fixture with
    /// `setup` first; `setup` returning `None` (the test skips: no root, no artifacts)
    /// skips every step.
    pub fn run(&'static self, setup: impl FnOnce() -> Option<F>, steps: &[Step<F>], upto: &str) {
        let target = steps
            .iter()
            .position(|s| s.name == upto)
            .unwrap_or_else(|| panic!("no step called {upto}"));
        let mut state = self.lock();
        if state.is_none() {
            let Some(fixture) = setup() else { return };
            *state = Some(Staged {
                fixture,
                done: 0,
                broken: None,
            });
            on_exit(Box::new(|| drop(self.lock().take())));
        }
        let Some(staged) = state.as_mut() else { return };
        if let Some(broken) = staged.broken {
            panic!("the drill's step {broken} failed earlier; {upto} needs it");
        }
        while staged.done <= target {
            let step = &steps[staged.done];
            if staged.done < target {
                println!("--- step {} first (needed by {upto})", step.name);
            }
            staged.broken = Some(step.name);
            let fixture = &mut staged.fixture;
            let started = std::time::Instant::now();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (step.run)(fixture);
            }));
            // On stderr, so a run without --nocapture shows where the time went too.
            eprintln!(
                "--- step {} took {:.1} s",
                step.name,
                started.elapsed().as_secs_f64()
            );
            if let Err(panic) = ran {
                staged.fixture.on_failure();
                std::panic::resume_unwind(panic);
            }
            staged.broken = None;
            staged.done += 1;
        }
    }
}

/// Declares a drill: its `static`, its steps in order, and one ignored `#[test]` per
/// step (VM tests: `scripts/test.sh` runs them with `--include-ignored`), so the steps
/// are listed once.
///
/// ```ignore
/// sovereign_tests::drill! {
///     static DRILL: Drill<Suite> = setup;
///     s01_boots => boots,
///     s02_survives_a_power_cut => power_cut,
/// }
/// ```
#[macro_export]
macro_rules! drill {
    (static $drill:ident: Drill<$fixture:ty> = $setup:path; $($name:ident => $run:path),+ $(,)?) => {
        static $drill: $crate::drill::Drill<$fixture> = $crate::drill::Drill::new();

        /// The drill's steps, in the order they run.
        const STEPS: &[$crate::drill::Step<$fixture>] = &[
            $($crate::drill::Step { name: stringify!($name), run: $run }),+
        ];

        $(
            #[test]
            #[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
            fn $name() {
                $drill.run($setup, STEPS, stringify!($name));
            }
        )+
    };
}

/// Work to do when the test process exits.
type Teardown = Box<dyn FnOnce() + Send>;

static TEARDOWNS: Mutex<Vec<Teardown>> = Mutex::new(Vec::new());

extern "C" fn run_teardowns() {
    let all = std::mem::take(&mut *TEARDOWNS.lock().unwrap_or_else(|p| p.into_inner()));
    for t in all.into_iter().rev() {
        t();
    }
}

/// Runs `t` when the process exits (libtest ends with `exit`; statics are never dropped).
fn on_exit(t: Teardown) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no arguments, as atexit
        // requires; it runs once, on the exiting thread, after the tests.
        unsafe {
            nix::libc::atexit(run_teardowns);
        }
    });
    TEARDOWNS.lock().unwrap_or_else(|p| p.into_inner()).push(t);
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Fixture for Vec<&'static str> {}
    impl Fixture for () {}

    static DRILL: Drill<Vec<&'static str>> = Drill::new();

    const STEPS: [Step<Vec<&'static str>>; 3] = [
        Step {
            name: "one",
            run: |f| f.push("one"),
        },
        Step {
            name: "two",
            run: |f| f.push("two"),
        },
        Step {
            name: "three",
            run: |f| f.push("three"),
        },
    ];

    #[test]
    fn a_step_runs_what_comes_before_it_once() {
        DRILL.run(|| Some(Vec::new()), &STEPS, "two");
        DRILL.run(|| panic!("built once"), &STEPS, "one");
        DRILL.run(|| panic!("built once"), &STEPS, "three");
        let state = DRILL.lock();
        assert_eq!(state.as_ref().unwrap().fixture, ["one", "two", "three"]);
    }

    static BROKEN: Drill<()> = Drill::new();

    #[test]
    fn a_failed_step_stops_the_ones_after_it() {
        let steps = [
            Step {
                name: "fails",
                run: |_: &mut ()| panic!("on purpose"),
            },
            Step {
                name: "after",
                run: |_: &mut ()| {},
            },
        ];
        let first = std::panic::catch_unwind(|| BROKEN.run(|| Some(()), &steps, "fails"));
        assert!(first.is_err());
        let second = std::panic::catch_unwind(|| BROKEN.run(|| Some(()), &steps, "after"));
        let msg = second
            .unwrap_err()
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_default();
        assert!(msg.contains("step fails failed earlier"), "{msg}");
    }
}
