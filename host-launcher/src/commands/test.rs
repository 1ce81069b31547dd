//! `sovereign test`: re-checks every stage from this host (processes, control ping, the
//! guest's status) and runs the witness queries it can through the control channel.
//! One ✓/✗ line per check; exit 0 only when all hold.

use super::query::query;
use super::status::gather;
use crate::ipc::{Phase, Reply, Request};
use crate::readiness::StageStatus;
use crate::spec::Spec;
use protocol::Stage;

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str, detail: impl AsRef<str>) {
        if !ok {
            self.failed += 1;
        }
        let d = detail.as_ref();
        let sep = if d.is_empty() { "" } else { ": " };
        println!("  {} {what}{sep}{d}", if ok { "✓" } else { "✗" });
    }
}

/// Runs `test`; returns the exit code.
pub async fn run(spec: &Spec) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    let mut c = Checks { failed: 0 };
    println!("testing VM {} (wait_for = {}):", spec.name, spec.wait_for);
    let s = gather(&spec).await;
    c.check(s.phase == Phase::Up, "supervisor", s.phase.to_string());
    for p in &s.processes {
        c.check(
            p.alive,
            p.role.name(),
            p.pid.map_or("no pid".to_string(), |p| format!("pid {p}")),
        );
    }
    for l in s.stages.iter().filter(|l| l.stage <= spec.wait_for) {
        c.check(
            l.status == StageStatus::Accepted,
            &format!("stage {}", l.stage),
            &l.summary,
        );
    }
    if s.phase == Phase::NotRunning {
        println!(
            "VM {} is not running: `sovereign start` boots it",
            spec.name
        );
        return Ok(finish(c));
    }
    match super::call(&spec, &Request::Ping).await {
        Ok(Reply::Pong { rtt_ms }) => c.check(true, "control ping", format!("{rtt_ms} ms")),
        Ok(Reply::Error { message }) => c.check(false, "control ping", message),
        Ok(other) => c.check(false, "control ping", format!("{other:?}")),
        Err(e) => c.check(false, "control ping", e.to_string()),
    }
    let Some(g) = &s.guest else {
        c.check(
            false,
            "guest status",
            s.guest_error.as_deref().unwrap_or("no answer"),
        );
        return Ok(finish(c));
    };
    c.check(true, "guest status", format!("uptime {} ms", g.uptime_ms));
    if spec.wait_for >= Stage::Network {
        let n = g.network.unwrap_or_default();
        c.check(
            n.connected,
            "network",
            format!("{} frames out, {} in", n.frames_out, n.frames_in),
        );
    }
    if spec.wait_for >= Stage::Tailscale {
        let t = g.tailnet.clone().unwrap_or_default();
        c.check(
            !t.name.is_empty() && !t.ips.is_empty(),
            "tailnet",
            format!("{} {}", t.name, t.ips.join(" ")),
        );
    }
    if spec.wait_for >= Stage::Postgres {
        let state = g.postgres.as_ref().map(|p| p.state);
        c.check(
            state == Some(protocol::messages::ServerState::Ready),
            "postgres state",
            state.map_or("absent".to_string(), |s| s.to_string()),
        );
        let mut witnesses: Vec<(String, String, String)> = vec![
            ("select 1".into(), "select 1".into(), "1".into()),
            ("scram passwords".into(), "show password_encryption".into(), "scram-sha-256".into()),
            (
                "no trust rules in pg_hba".into(),
                "select count(*) from pg_hba_file_rules where auth_method = 'trust' and type <> 'local'".into(),
                "0".into(),
            ),
        ];
        for app in &spec.apps {
            witnesses.push((
                format!("app {} provisioned", app.name),
                format!(
                    "select count(*) from pg_database d join pg_roles r on r.oid = d.datdba where d.datname = '{0}' and r.rolname = '{0}'",
                    app.name
                ),
                "1".into(),
            ));
        }
        for (what, sql, want) in witnesses {
            match query(&spec, &sql).await {
                Ok(Ok(out)) => c.check(
                    out.trim() == want,
                    &what,
                    format!("{} (want {want})", out.trim()),
                ),
                Ok(Err(e)) => c.check(false, &what, e.to_string()),
                Err(e) => c.check(false, &what, e.to_string()),
            }
        }
    }
    Ok(finish(c))
}

fn finish(c: Checks) -> i32 {
    if c.failed == 0 {
        println!("all checks passed");
        0
    } else {
        println!("{} check(s) failed", c.failed);
        1
    }
}
