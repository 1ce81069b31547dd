//! `sovereign probe`'s checks as the command line spells them, and their wire form.

use clap::Subcommand;

/// The checks `probe` can run in the guest: network paths, and pgbench on the local
/// socket.
#[derive(Debug, Subcommand)]
pub enum ProbeCheck {
    /// Resolve NAME with the guest's resolver (gvproxy's DNS).
    Dns {
        /// Host name, e.g. host.containers.internal.
        name: String,
    },
    /// Connect to ADDRESS (host:port) from the guest, send --send, print the answer.
    Tcp {
        /// Where to connect, e.g. 192.168.127.254:8080 (the host's loopback via gvproxy).
        address: String,
        /// Bytes to send first (escapes like \r\n are not interpreted; use a real newline).
        #[arg(long, default_value = "")]
        send: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Accept one connection on the guest's network address at PORT and answer --reply.
    Serve {
        /// TCP port in the guest.
        port: u16,
        /// What to send to the client.
        #[arg(long, default_value = "sovereign\n")]
        reply: String,
        /// Wait at most this many seconds for the client.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Run pgbench inside the guest over the unix socket, on tables a `pgbench -i` made
    /// in the postgres database (the baseline for the same run over the tailnet).
    Pgbench {
        /// The built-in script.
        #[arg(long, value_enum, default_value = "select-only")]
        mode: PgbenchScript,
        /// Clients (and threads), 1 to 64.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        clients: u16,
        /// How long to run, 1 to 600 seconds.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=600))]
        seconds: u32,
    },
    /// Move bulk data over TCP between the guest and ADDRESS through the forwarder and
    /// gvproxy (the far end serves or sinks it and times it); prints the guest's figure.
    Stream {
        /// Where to connect, e.g. 192.168.127.254:5201 (the host's loopback via gvproxy).
        address: String,
        #[command(flatten)]
        transfer: StreamTransfer,
    },
    /// The same over a vsock connection of its own to the host's PORT (no TCP, no
    /// forwarder): the ceiling any forwarder works under. Under QEMU the host end is the
    /// unix socket `<run dir>/vsock.sock_PORT`.
    VsockStream {
        /// The host's vsock port (not 1024 to 1026, which the VM's own channels use).
        #[arg(value_parser = clap::value_parser!(u32).range(1027..))]
        port: u32,
        #[command(flatten)]
        transfer: StreamTransfer,
    },
}

/// Which way a stream goes, how much and for how long.
#[derive(Debug, clap::Args)]
pub struct StreamTransfer {
    /// Send this many bytes from the guest (default: receive until the far end closes).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=protocol::messages::STREAM_MAX_BYTES))]
    upload: Option<u64>,
    /// Give up after this many seconds, 1 to 600.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
}

impl StreamTransfer {
    /// The wire fields: direction, bytes, deadline in ms.
    fn to_wire(&self) -> (protocol::messages::StreamDirection, u64, u64) {
        use protocol::messages::StreamDirection;
        let ms = self.timeout.saturating_mul(1000);
        match self.upload {
            Some(bytes) => (StreamDirection::Upload, bytes, ms),
            None => (StreamDirection::Download, 0, ms),
        }
    }
}

/// pgbench's built-in scripts, as `probe pgbench --mode` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PgbenchScript {
    /// One indexed SELECT per transaction.
    SelectOnly,
    /// Three UPDATEs, a SELECT and an INSERT per transaction.
    TpcbLike,
}

impl ProbeCheck {
    /// The wire form of the check.
    pub fn to_probe(&self) -> protocol::messages::Probe {
        use protocol::messages::Probe;
        match self {
            ProbeCheck::Dns { name } => Probe::Dns { name: name.clone() },
            ProbeCheck::Tcp {
                address,
                send,
                timeout,
            } => Probe::Tcp {
                address: address.clone(),
                send: send.clone(),
                timeout_ms: timeout.saturating_mul(1000),
            },
            ProbeCheck::Serve {
                port,
                reply,
                timeout,
            } => Probe::Serve {
                port: *port,
                reply: reply.clone(),
                timeout_ms: timeout.saturating_mul(1000),
            },
            ProbeCheck::Pgbench {
                mode,
                clients,
                seconds,
            } => Probe::Pgbench {
                mode: match mode {
                    PgbenchScript::SelectOnly => protocol::messages::PgbenchMode::SelectOnly,
                    PgbenchScript::TpcbLike => protocol::messages::PgbenchMode::TpcbLike,
                },
                clients: *clients,
                seconds: *seconds,
            },
            ProbeCheck::Stream { address, transfer } => {
                let (direction, bytes, timeout_ms) = transfer.to_wire();
                Probe::Stream {
                    address: address.clone(),
                    direction,
                    bytes,
                    timeout_ms,
                }
            }
            ProbeCheck::VsockStream { port, transfer } => {
                let (direction, bytes, timeout_ms) = transfer.to_wire();
                Probe::VsockStream {
                    port: *port,
                    direction,
                    bytes,
                    timeout_ms,
                }
            }
        }
    }
}
