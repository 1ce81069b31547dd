//! `sovereign logs`: the end of one of the guest's logs (postgres, tailscaled, the
//! kernel, pgBackRest), which live on the data disk, readable only by root in the guest.

use super::call;
use crate::ipc::{Reply, Request};
use crate::spec::Spec;
use protocol::messages::GuestLog;

/// Runs `logs`: prints the end of the guest's log; exit 1 when it could not be read.
pub async fn logs(spec: &Spec, log: GuestLog) -> anyhow::Result<i32> {
    let spec = super::running_spec(spec);
    match call(&spec, &Request::ReadLog { log }).await? {
        Reply::LogContents(r) if r.ok => {
            print!("{}", r.output);
            Ok(0)
        }
        Reply::LogContents(r) => {
            eprintln!("cannot read the log: {}", r.output);
            Ok(1)
        }
        Reply::Error { message } => {
            eprintln!("cannot read the log: {message}");
            Ok(1)
        }
        other => {
            eprintln!("unexpected answer {other:?}");
            Ok(1)
        }
    }
}
