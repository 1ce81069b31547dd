//! The CLI's verbs. These are the edges where errors become messages (`anyhow`) and
//! exit codes: 0 success, 1 the VM failed or a check failed, 2 the spec or the host is
//! not fit to start (validation, preflight).

pub mod alerts;
pub mod autostart;
pub mod backup;
pub mod build;
pub mod bulk;
pub mod console;
pub mod db;
pub mod deploy;
pub mod disk;
pub mod logs;
pub mod probe;
pub mod query;
pub mod replica;
pub mod signal;
pub mod start;
pub mod status;
pub mod stop;
pub mod test;
pub mod update;

use crate::ipc::{Client, Reply, Request};
use crate::rundir::RunDir;
use crate::spec::Spec;
use anyhow::Context as _;

/// The spec a running VM was started with (its run dir's spec.json), else `spec`.
pub fn running_spec(spec: &Spec) -> Spec {
    let run = RunDir::new(&spec.run_dir);
    crate::run_files::spec(&run)
        .read()
        .ok()
        .flatten()
        .unwrap_or_else(|| spec.clone())
}

/// Connects to the supervisor of `spec`'s VM, if one listens.
pub async fn connect(spec: &Spec) -> Option<Client> {
    Client::connect(&RunDir::new(&spec.run_dir)).await.ok()
}

/// Sends one request to the supervisor and returns its reply.
pub async fn call(spec: &Spec, req: &Request) -> anyhow::Result<Reply> {
    let mut c = connect(spec).await.with_context(|| {
        format!(
            "VM {} is not running (no supervisor at {})",
            spec.name,
            spec.run_dir.display()
        )
    })?;
    c.call(req)
        .await
        .with_context(|| format!("the supervisor of VM {} did not answer", spec.name))
}
