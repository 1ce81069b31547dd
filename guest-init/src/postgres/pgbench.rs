//! pgbench inside the guest (`sovereign probe pgbench`), as the superuser over the unix
//! socket on the tables a `pgbench -i` made in the `postgres` database. The same run
//! from another tailnet node, divided by this one, is what the whole network path
//! (tailscale, the forwarder, gvproxy) costs a database client.

use super::{find_bin_dir, Account, PgError};
use crate::command::{self, CommandError};
use protocol::messages::{PgbenchMode, PGBENCH_MAX_CLIENTS, PGBENCH_MAX_SECONDS};
use std::path::Path;
use thiserror::Error;

/// Why a guest pgbench run did not happen or did not finish.
#[derive(Debug, Error)]
pub enum PgbenchError {
    #[error("pgbench clients = {0}: must be 1 to {PGBENCH_MAX_CLIENTS}")]
    Clients(u16),
    #[error("pgbench seconds = {0}: must be 1 to {PGBENCH_MAX_SECONDS}")]
    Seconds(u32),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// pgbench's arguments for one run (no initialisation, `-n`: the tables exist).
fn arguments(
    mode: PgbenchMode,
    clients: u16,
    seconds: u32,
    port: u16,
) -> Result<Vec<String>, PgbenchError> {
    if clients == 0 || clients > PGBENCH_MAX_CLIENTS {
        return Err(PgbenchError::Clients(clients));
    }
    if seconds == 0 || seconds > PGBENCH_MAX_SECONDS {
        return Err(PgbenchError::Seconds(seconds));
    }
    let n = clients.to_string();
    let mut args: Vec<String> = ["-n", "-b", mode.builtin(), "-c", &n, "-j", &n, "-T"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    args.push(seconds.to_string());
    args.extend(super::superuser_over_socket(port));
    args.push("postgres".into());
    Ok(args)
}

/// Runs pgbench and returns its report (TPS and latency lines).
pub fn run(
    mode: PgbenchMode,
    clients: u16,
    seconds: u32,
    port: u16,
) -> Result<String, PgbenchError> {
    let args = arguments(mode, clients, seconds, port)?;
    let bin = find_bin_dir(Path::new("/")).ok_or(PgError::NotInstalled)?;
    let account = Account::lookup()?;
    let mut cmd = account.command(bin.join("pgbench"));
    cmd.args(&args);
    Ok(command::run(&mut cmd, &[])?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_uses_the_builtin_script_over_the_socket() {
        let a = arguments(PgbenchMode::SelectOnly, 4, 20, 5432)
            .unwrap()
            .join(" ");
        assert_eq!(
            a,
            "-n -b select-only -c 4 -j 4 -T 20 -h /run/postgresql -p 5432 -U postgres postgres"
        );
    }

    #[test]
    fn out_of_range_runs_are_refused_naming_the_field() {
        let e = arguments(PgbenchMode::TpcbLike, 0, 20, 5432)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pgbench clients = 0"), "{e}");
        let e = arguments(PgbenchMode::TpcbLike, 65, 20, 5432)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pgbench clients = 65"), "{e}");
        let e = arguments(PgbenchMode::TpcbLike, 4, 601, 5432)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pgbench seconds = 601"), "{e}");
    }
}
