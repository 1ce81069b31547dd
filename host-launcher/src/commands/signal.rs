//! `sovereign signal`: a signal to a service PID 1 supervises (it restarts the service
//! after an unexpected exit, as always): how an operator, or the fault suite, kills one.

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;
use protocol::messages::{GuestService, ServiceSignal};

/// Runs `signal`: asks PID 1 to signal a service; exit 1 when it could not.
pub async fn signal(
    spec: &Spec,
    service: GuestService,
    signal: ServiceSignal,
) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    match call(&spec, &Request::SignalService { service, signal }).await? {
        Reply::SignalResult(r) if r.ok => {
            println!("{}", r.output);
            Ok(0)
        }
        Reply::SignalResult(r) => {
            eprintln!("signal failed: {}", r.output);
            Ok(1)
        }
        Reply::Error { message } => {
            eprintln!("signal failed: {message}");
            Ok(1)
        }
        other => {
            eprintln!("unexpected answer {other:?}");
            Ok(1)
        }
    }
}
