//! What the host can ask the guest to check or measure from inside ([`Probe`]): the
//! network paths through gvproxy, pgbench on the local socket, and bulk streams through
//! the forwarder or over raw vsock. Carried by `HostMessage::Probe`.

use serde::{Deserialize, Serialize};

/// A check or measurement the guest runs on the host's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// Resolve a name with the guest's resolver (/etc/resolv.conf → gvproxy's DNS).
    Dns {
        /// Host name to resolve.
        name: String,
    },
    /// Connect to `address` (`host:port`), send `send`, return what comes back (up to
    /// 16 KiB) until the peer closes or `timeout_ms` passes.
    Tcp {
        /// Where to connect.
        address: String,
        /// Bytes to send first (may be empty).
        send: String,
        /// Overall deadline.
        timeout_ms: u64,
    },
    /// Listen on the guest's network address at `port`, accept one connection within
    /// `timeout_ms`, answer `reply`, close. Proves the inbound path (gvproxy's expose).
    Serve {
        /// TCP port to listen on.
        port: u16,
        /// What to send to the client.
        reply: String,
        /// How long to wait for the client.
        timeout_ms: u64,
    },
    /// Run pgbench inside the guest against the local server over its unix socket, on
    /// the tables a `pgbench -i` made in the `postgres` database: the baseline that
    /// prices the whole network path when the same run comes over the tailnet.
    Pgbench {
        /// The built-in script.
        mode: PgbenchMode,
        /// Clients (and threads), 1 to [`PGBENCH_MAX_CLIENTS`].
        clients: u16,
        /// Duration, 1 to [`PGBENCH_MAX_SECONDS`].
        seconds: u32,
    },
    /// Move bulk data over TCP through the guest's network path (kernel, forwarder,
    /// vsock, gvproxy) to `address`, the far end timing it: the forwarder's throughput as
    /// a user's traffic meets it.
    Stream {
        /// Where to connect, e.g. the host's loopback through gvproxy.
        address: String,
        /// Which way the bytes go.
        direction: StreamDirection,
        /// Bytes to send when uploading, at most [`STREAM_MAX_BYTES`]; a download reads
        /// until the far end closes.
        bytes: u64,
        /// Overall deadline.
        timeout_ms: u64,
    },
    /// The same over a vsock stream of its own to the host's `port`, with no TCP and no
    /// forwarder: the ceiling of what any forwarder can move.
    VsockStream {
        /// The host's vsock port (under QEMU, the unix socket `<uds>_<port>`).
        port: u32,
        /// Which way the bytes go.
        direction: StreamDirection,
        /// Bytes to send when uploading, at most [`STREAM_MAX_BYTES`].
        bytes: u64,
        /// Overall deadline.
        timeout_ms: u64,
    },
}

/// Most bytes one stream probe may upload (4 GiB).
pub const STREAM_MAX_BYTES: u64 = 4 << 30;
/// Longest a stream probe may run, in milliseconds (the host waits a little longer).
pub const STREAM_MAX_MS: u64 = 600_000;

/// Which way a stream probe's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamDirection {
    /// Far end to guest: the guest reads until the far end closes.
    Download,
    /// Guest to far end: the guest writes its bytes and closes.
    Upload,
}

/// Most clients a guest pgbench run may use (max_connections leaves room for apps).
pub const PGBENCH_MAX_CLIENTS: u16 = 64;
/// Longest guest pgbench run, in seconds.
pub const PGBENCH_MAX_SECONDS: u32 = 600;

/// pgbench's built-in scripts that a guest run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgbenchMode {
    /// `-S`: one indexed SELECT per transaction.
    SelectOnly,
    /// The default TPC-B-like script: three UPDATEs, a SELECT and an INSERT.
    TpcbLike,
}

impl PgbenchMode {
    /// pgbench's name for the script (`-b NAME`).
    pub fn builtin(self) -> &'static str {
        match self {
            PgbenchMode::SelectOnly => "select-only",
            PgbenchMode::TpcbLike => "tpcb-like",
        }
    }
}
