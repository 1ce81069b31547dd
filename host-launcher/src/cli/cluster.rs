//! `sovereign cluster` subcommands.

use clap::Subcommand;
use std::path::PathBuf;

/// What `cluster` does.
#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Bring the cluster up: the primary to `ready`, each replica handed its
    /// credentials by the primary's launcher and started, each one streaming, a row
    /// written on the primary read on every replica, the backups each node holds, the
    /// multi-host connection strings. Idempotent: what already runs is left alone.
    Up {
        /// The cluster file: `[[node]]` tables, each with `spec` (the node's VM spec
        /// on its host), `via` (`local`, `adb:SERIAL` or `ssh:HOST`) and optionally
        /// `sovereign` (the launcher there) and `home` (its SOVEREIGN_HOME).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
    },
    /// Every node in one table: phase, role, timeline, lag, replicas, slots, last
    /// backup, connections and alerts, each asked on its own host.
    Status {
        /// The cluster file (as for `cluster up`).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
    },
}
