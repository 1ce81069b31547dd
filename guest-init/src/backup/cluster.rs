//! Backups on every node of a cluster. pgBackRest backs up a replica only with the
//! primary at hand (it starts and stops the backup there), so each node runs
//! pgBackRest's TLS server on its tailnet address, for its peers alone (mutual TLS:
//! the peer's certificate, issued by the cluster's CA, names it), and lists its peers
//! as pg2..pgN of its stanza: pgBackRest then finds the primary wherever it is after a
//! promotion. A replica archives the WAL it receives into its own repository
//! (`archive_mode = always`), takes its backups from its own disk
//! (`--backup-standby=y`), and its backup disk alone restores the cluster to any moment
//! it has WAL for, across a failover. pgBackRest refuses its archive check with
//! `archive_mode = always`, so backups run without it; the archive watch says when WAL
//! stops arriving.

use crate::lifecycle::service::Service;
use crate::owned_files::{self, OwnedFileError};
use crate::postgres::{config::SOCKET_DIR, Account, CLUSTER_DIR};
use nix::sys::signal::Signal;
use std::path::Path;

/// The port of pgBackRest's TLS server (its default).
pub const SERVER_PORT: u16 = 8432;

/// The TLS server's configuration (postgres's).
pub const SERVER_CONFIG_FILE: &str = "/run/pgbackrest/pgbackrest-server.conf";

/// A peer that answered the fence's question this recently is named to pgBackRest
/// (the fence asks every 5 s).
const ANSWERED_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The other nodes of this node's cluster, for pgBackRest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRepo {
    /// Their tailnet names (resolved through /etc/hosts, see [`crate::peer_hosts`]).
    pub peers: Vec<String>,
}

impl ClusterRepo {
    /// The stanza's lines for the peers that answered lately (see
    /// [`crate::peer_hosts`]): `pg2`.. reached through their TLS servers with this
    /// node's certificate.
    pub fn pg_host_lines(&self, pg_port: u16) -> String {
        self.lines_for(
            self.peers
                .iter()
                .filter(|p| crate::peer_hosts::answered_within(p, ANSWERED_WITHIN)),
            pg_port,
        )
    }

    fn lines_for<'a>(&self, peers: impl Iterator<Item = &'a String>, pg_port: u16) -> String {
        let [cert, key, ca] = crate::postgres::tls::paths();
        peers
            .enumerate()
            .map(|(i, peer)| {
                let n = i + 2;
                format!(
                    "pg{n}-host={peer}\n\
                     pg{n}-host-type=tls\n\
                     pg{n}-host-port={SERVER_PORT}\n\
                     pg{n}-host-ca-file={}\n\
                     pg{n}-host-cert-file={}\n\
                     pg{n}-host-key-file={}\n\
                     pg{n}-path={CLUSTER_DIR}\n\
                     pg{n}-port={pg_port}\n\
                     pg{n}-socket-path={SOCKET_DIR}\n",
                    ca.display(),
                    cert.display(),
                    key.display()
                )
            })
            .collect()
    }

    /// What a backup run adds: no archive check (see the module), and the files from
    /// this node's own disk when it is a replica.
    pub fn backup_args(standby: bool) -> Vec<String> {
        vec![
            "--no-archive-check".to_string(),
            format!("--backup-standby={}", if standby { "y" } else { "n" }),
        ]
    }

    /// The TLS server's configuration: on `address` only, for the peers' certificates
    /// alone, serving this node's cluster.
    pub fn server_config(&self, address: &str, pg_port: u16, stanza: &str) -> String {
        let [cert, key, ca] = crate::postgres::tls::paths();
        let auth: String = self
            .peers
            .iter()
            .map(|p| format!("tls-server-auth={p}={stanza}\n"))
            .collect();
        format!(
            "# Written by sovereign-init: pgBackRest's server for this cluster's peers.\n\
             [global]\n\
             tls-server-address={address}\n\
             tls-server-port={SERVER_PORT}\n\
             tls-server-cert-file={}\n\
             tls-server-key-file={}\n\
             tls-server-ca-file={}\n\
             {auth}\
             lock-path=/run/pgbackrest/lock-server\n\
             log-path={}/log\n\
             log-level-console=warn\n\
             log-level-file=info\n\
             \n\
             [{stanza}]\n\
             pg1-path={CLUSTER_DIR}\n\
             pg1-port={pg_port}\n\
             pg1-socket-path={SOCKET_DIR}\n",
            cert.display(),
            key.display(),
            ca.display(),
            super::WORK_DIR,
        )
    }
}

/// Writes the server's configuration and starts it (as postgres, supervised).
pub(crate) fn start_server(
    cluster: &ClusterRepo,
    address: &str,
    pg_port: u16,
    account: Account,
) -> Result<Service, OwnedFileError> {
    let conf = cluster.server_config(address, pg_port, super::pgbackrest::STANZA);
    owned_files::write_file(
        Path::new(SERVER_CONFIG_FILE),
        conf.as_bytes(),
        0o640,
        account.owner(),
    )?;
    log::info!(
        "pgbackrest: serving {} on {address}:{SERVER_PORT}",
        cluster.peers.join(", ")
    );
    Ok(Service::start(
        "pgbackrest-server",
        Signal::SIGTERM,
        Box::new(move || {
            let mut c = account.command(super::pgbackrest::PROGRAM);
            c.args([&format!("--config={SERVER_CONFIG_FILE}"), "server"]);
            c
        }),
    ))
}

impl super::Backups {
    /// With a cluster: the configuration again, naming the peers that answer now.
    pub(super) fn refresh_peers(&self) {
        if self.cluster.is_some() {
            if let Err(e) = self.write_configs() {
                log::warn!("pgbackrest: cannot rewrite its configuration: {e}");
            }
        }
    }

    /// With a cluster: starts pgBackRest's TLS server for the peers on `address` (this
    /// node's tailnet address), once.
    pub fn serve_peers(&self, address: &str) {
        let (Some(c), Some(account)) = (&self.cluster, self.account) else {
            return;
        };
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if server.is_some() {
            return;
        }
        match start_server(c, address, self.pg_port, account) {
            Ok(s) => *server = Some(s),
            Err(e) => log::error!("pgbackrest: cannot serve the peers: {e}"),
        }
    }

    /// What a backup run adds with a cluster (see this module).
    pub(super) fn cluster_args(&self) -> Vec<String> {
        match &self.cluster {
            Some(_) => ClusterRepo::backup_args(crate::postgres::replication::is_standby()),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterRepo {
        ClusterRepo {
            peers: vec!["sql-r1".into(), "sql-r2".into()],
        }
    }

    #[test]
    fn every_peer_is_a_pg_host_over_tls_with_this_nodes_certificate() {
        let c = cluster();
        assert_eq!(c.pg_host_lines(5432), "", "no peer answered yet");
        let s = c.lines_for(c.peers.iter(), 5432);
        assert!(
            s.starts_with("pg2-host=sql-r1\npg2-host-type=tls\npg2-host-port=8432\n"),
            "{s}"
        );
        assert!(s.contains("pg3-host=sql-r2\n"));
        assert!(s.contains("pg3-host-cert-file=/run/postgresql/server.crt\n"));
        assert!(s.contains("pg3-host-ca-file=/run/postgresql/ca.crt\n"));
        assert!(s.contains(&format!("pg2-path={CLUSTER_DIR}\npg2-port=5432\n")));
    }

    #[test]
    fn the_server_listens_on_one_address_for_the_peers_alone() {
        let s = cluster().server_config("100.64.0.7", 5432, "sovereign");
        assert!(s.contains("tls-server-address=100.64.0.7\n"));
        assert!(s.contains("tls-server-auth=sql-r1=sovereign\ntls-server-auth=sql-r2=sovereign\n"));
        assert!(s.contains("[sovereign]\npg1-path="));
        assert_eq!(
            ClusterRepo::backup_args(true),
            ["--no-archive-check", "--backup-standby=y"]
        );
    }
}
