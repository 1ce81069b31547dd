//! `sovereign console`: prints the guest's serial console log and follows it.

use crate::console::ConsoleTail;
use crate::spec::Spec;
use std::time::Duration;

/// Runs `console`; `follow` keeps printing new lines until interrupted.
pub async fn run(spec: &Spec, follow: bool) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    let path = spec.console_log.clone();
    if !follow && !path.exists() {
        eprintln!(
            "no console log at {} (the VM has not been started)",
            path.display()
        );
        return Ok(1);
    }
    let mut tail = ConsoleTail::new(&path, 0);
    loop {
        for line in tail.poll()? {
            println!("{line}");
        }
        if !follow {
            for line in tail.last_lines() {
                println!("{line}");
            }
            return Ok(0);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}
