//! `sovereign probe`: a check run inside the guest (DNS, outbound and inbound TCP,
//! pgbench, bulk streams), to prove each direction of the guest's network path.

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;
use protocol::messages::Probe;

/// Runs `probe`: prints the guest's answer; exit 1 when the check failed.
pub async fn probe(spec: &Spec, probe: &Probe) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    let reply = call(
        &spec,
        &Request::Probe {
            probe: probe.clone(),
        },
    )
    .await?;
    let (ok, text) = match reply {
        Reply::ProbeResult(r) => (r.ok, r.output),
        Reply::Error { message } => (false, message),
        other => (false, format!("unexpected answer {other:?}")),
    };
    if ok {
        println!("{}", text.trim_end());
        Ok(0)
    } else {
        eprintln!("probe failed: {text}");
        Ok(1)
    }
}
