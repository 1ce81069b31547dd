//! `sovereign alerts list|test`: what the supervisor raised, and a test notice through
//! every sink, answered sink by sink so a user sees which one works.

use crate::alerts::notice::{Notice, NoticeKind};
use crate::ipc::Phase;
use crate::paths::HostEnv;
use crate::spec::Spec;
use protocol::alerts::{Condition, Severity};

/// Prints the active alerts; exit 0 when none holds, 1 when one does or nothing
/// watches the VM.
pub async fn list(spec: &Spec) -> anyhow::Result<i32> {
    let s = super::status::gather(spec).await;
    if s.phase == Phase::NotRunning {
        println!(
            "{}: no supervisor is running, so nothing watches this VM (start it with `sovereign start`)",
            spec.name
        );
        return Ok(1);
    }
    if s.alerts.is_empty() {
        println!("{}: no condition holds", spec.name);
        return Ok(0);
    }
    let mut text = String::new();
    super::status::render_alerts(&mut text, &s.alerts);
    print!("{text}");
    Ok(1)
}

/// Sends one test notice through every sink of `spec`; exit 1 when one failed or none
/// is configured.
pub fn test(spec: &Spec, env: &HostEnv) -> anyhow::Result<i32> {
    if !spec.alerts.any_sink() {
        anyhow::bail!(
            "no alert sink is configured for '{}': set [alerts] webhook = \"https://...\" (ntfy, Gotify) or phone = true (on the phone) in the spec",
            spec.name
        );
    }
    let problems = spec.alerts.problems();
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        anyhow::bail!("the spec's [alerts] is not usable:\n{}", lines.join("\n"));
    }
    let sinks = crate::alerts::sinks(&spec.alerts, env)?;
    let now = crate::supervisor::now_unix();
    let notice = Notice {
        kind: NoticeKind::Test,
        vm: spec.name.clone(),
        condition: Condition::Test,
        severity: Severity::Warning,
        summary: "sovereign alerts test".into(),
        since_unix: now,
        at_unix: now,
    };
    let mut failed = 0;
    for sink in &sinks {
        match sink.send(&notice) {
            Ok(answer) => println!("✓ {}: {answer}", sink.name()),
            Err(e) => {
                failed += 1;
                println!("✗ {e}");
            }
        }
    }
    Ok(i32::from(failed > 0))
}
