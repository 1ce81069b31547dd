//! What the boot sequence started and shutdown must stop, in one place: the network
//! and the supervised processes ([`crate::lifecycle::service`]). The data disk has its own gate,
//! [`crate::disks::Disk`].

use crate::{net, postgres, tailscale};
use protocol::messages::ServiceStatus;
use std::sync::Arc;

/// The guest's running parts. Shared between the boot thread (which adds them) and the
/// thread serving the host (status, shutdown), so each is an `Arc` cloned out under a
/// brief lock.
#[derive(Debug, Default)]
pub struct Running {
    /// tap0 and its forwarder.
    pub network: Option<Arc<net::Network>>,
    /// tailscaled.
    pub tailscale: Option<Arc<tailscale::Tailscale>>,
    /// PostgreSQL.
    pub postgres: Option<Arc<postgres::Postgres>>,
}

impl Running {
    /// Status of every supervised process.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        let mut out = Vec::new();
        if let Some(ts) = &self.tailscale {
            out.push(ts.service().status());
        }
        if let Some(pg) = &self.postgres {
            out.push(pg.service().status());
        }
        out
    }
}
