//! The host end of the guest's control channel: a listener (AF_VSOCK port 1025 with
//! crosvm; the `<uds>_1025` unix socket that vhost-device-vsock connects to under QEMU)
//! and one task pair per connection that turns frames into [`ControlEvent`]s and
//! [`HostMessage`]s into frames. Framing is `protocol::control`'s; an oversize, empty or
//! unknown frame closes the connection.

use protocol::control::{encode_frame, CodecError, FrameReader};
use protocol::{GuestMessage, HostMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Why a control (or supervisor socket) exchange failed.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the control connection is closed")]
    Closed,
    #[error("the guest did not take a frame within {0:?}")]
    WriteTimeout(std::time::Duration),
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address (socket path or vsock port).
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), ControlError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads the next message; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R, T>(
    r: &mut R,
    reader: &mut FrameReader,
) -> Result<Option<T>, ControlError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut buf = [0u8; 8192];
    loop {
        if let Some(msg) = reader.next_message()? {
            return Ok(Some(msg));
        }
        let n = r.read(&mut buf).await?;
        if n == 0 {
            if reader.buffered() > 0 {
                return Err(ControlError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a frame ({} bytes buffered)",
                        reader.buffered()
                    ),
                )));
            }
            return Ok(None);
        }
        reader.push(&buf[..n]);
    }
}

/// A byte stream the control channel runs on (unix or vsock).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Where an AF_VSOCK connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockPeer {
    /// The VM (or host) that dialled.
    pub cid: u32,
    /// Its source port.
    pub port: u32,
}

/// Why a connection from `peer` is not the VM `cid`'s PID 1, when it is not: on
/// AF_VSOCK every other VM of the host could dial the launcher's ports, and inside the
/// VM only PID 1 can bind a source port below 1024 (see the guest's `vsock_dial`). A
/// unix-socket peer (vhost-device-vsock under QEMU) has neither: only this VM's device
/// reaches that socket, and the control channel's session token tells PID 1 apart.
pub fn refused_peer(peer: Option<VsockPeer>, cid: u32) -> Option<String> {
    let p = peer?;
    if p.cid != cid {
        return Some(format!("from CID {}: this VM is CID {cid}", p.cid));
    }
    if !protocol::ports::RESERVED_SOURCE_PORTS.contains(&p.port) {
        return Some(format!(
            "from CID {cid} port {}: only the guest's PID 1 dials, from ports {}-{}",
            p.port,
            protocol::ports::RESERVED_SOURCE_PORTS.start(),
            protocol::ports::RESERVED_SOURCE_PORTS.end()
        ));
    }
    None
}

/// Where the guest's control connections arrive.
#[derive(Debug)]
pub enum ControlListener {
    /// The unix socket vhost-device-vsock connects to (the guest's CID is implied).
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Its path, removed on drop.
        path: PathBuf,
    },
    /// AF_VSOCK on the host (crosvm with /dev/vhost-vsock).
    Vsock(tokio_vsock::VsockListener),
}

impl ControlListener {
    /// Listens on a unix socket path (a stale file there is removed first).
    pub fn unix(path: &Path) -> Result<ControlListener, ControlError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            what: path.display().to_string(),
            source,
        })?;
        Ok(ControlListener::Unix {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Listens on AF_VSOCK `port` for any CID.
    pub fn vsock(port: u32) -> Result<ControlListener, ControlError> {
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
        let l = tokio_vsock::VsockListener::bind(addr).map_err(|source| ControlError::Bind {
            what: format!("vsock port {port}"),
            source,
        })?;
        Ok(ControlListener::Vsock(l))
    }

    /// Accepts the next connection from PID 1 of the VM whose CID is `cid` (returned
    /// with the peer's CID on AF_VSOCK); any other is closed at once and logged as `what`
    /// refused it ([`refused_peer`]).
    pub async fn accept_from(
        &mut self,
        cid: u32,
        what: &str,
    ) -> std::io::Result<(Box<dyn Stream>, Option<u32>)> {
        loop {
            let (stream, peer) = self.accept().await?;
            match refused_peer(peer, cid) {
                Some(why) => log::warn!("{what}: refused a connection {why}"),
                None => return Ok((stream, peer.map(|p| p.cid))),
            }
        }
    }

    /// Accepts the next connection, with where it came from on AF_VSOCK.
    async fn accept(&mut self) -> std::io::Result<(Box<dyn Stream>, Option<VsockPeer>)> {
        match self {
            ControlListener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Box::new(s), None))
            }
            ControlListener::Vsock(l) => {
                let (s, addr) = l.accept().await?;
                let peer = VsockPeer {
                    cid: addr.cid(),
                    port: addr.port(),
                };
                Ok((Box::new(s), Some(peer)))
            }
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        if let ControlListener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What a connection task reports to the supervisor.
#[derive(Debug)]
pub enum ControlEvent {
    /// A guest connected.
    Opened(Connection),
    /// A message arrived on connection `conn`.
    Message {
        /// Connection id.
        conn: u64,
        /// The message (boxed: a device report is large).
        msg: Box<GuestMessage>,
    },
    /// Connection `conn` ended.
    Closed {
        /// Connection id.
        conn: u64,
        /// Why (EOF, bad frame...).
        reason: String,
    },
}

/// A message for the writer task and where to report whether it was written.
type Outgoing = (HostMessage, oneshot::Sender<Result<(), ControlError>>);

/// How long one frame may take to write; a guest that stops reading loses its
/// connection instead of stalling the supervisor.
pub const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The supervisor's handle on one guest connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Unique per supervisor run.
    pub id: u64,
    /// Source CID on AF_VSOCK; `None` on the vhost-device-vsock unix socket.
    pub peer_cid: Option<u32>,
    tx: mpsc::Sender<Outgoing>,
    tasks: std::sync::Arc<[tokio::task::AbortHandle; 2]>,
}

impl Connection {
    /// Sends a message and waits until it was written.
    pub async fn send(&self, msg: HostMessage) -> Result<(), ControlError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((msg, ack))
            .await
            .map_err(|_| ControlError::Closed)?;
        done.await.map_err(|_| ControlError::Closed)?
    }

    /// Queues a message without waiting (heartbeats): false when the connection is
    /// gone or its queue is full, which means the guest is not reading.
    pub fn post(&self, msg: HostMessage) -> bool {
        let (ack, _done) = oneshot::channel();
        self.tx.try_send((msg, ack)).is_ok()
    }

    /// Closes the connection now: both tasks end and the socket is dropped.
    pub fn close(&self) {
        for t in self.tasks.iter() {
            t.abort();
        }
    }
}

/// Starts the reader and writer tasks of a new connection; events go to `events`.
pub fn spawn_connection(
    id: u64,
    stream: Box<dyn Stream>,
    peer_cid: Option<u32>,
    events: mpsc::Sender<ControlEvent>,
) -> Connection {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(16);
    let writer = tokio::spawn(async move {
        while let Some((msg, ack)) = rx.recv().await {
            let r = match tokio::time::timeout(WRITE_DEADLINE, write_frame(&mut wr, &msg)).await {
                Ok(r) => r,
                Err(_) => Err(ControlError::WriteTimeout(WRITE_DEADLINE)),
            };
            if let Err(e) = &r {
                log::warn!("control connection {id}: {e}; the connection ends");
            }
            let failed = r.is_err();
            let _ = ack.send(r);
            if failed {
                break;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut reader = FrameReader::new();
        let reason = loop {
            match read_frame::<_, GuestMessage>(&mut rd, &mut reader).await {
                Ok(Some(msg)) => {
                    if events
                        .send(ControlEvent::Message {
                            conn: id,
                            msg: Box::new(msg),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break "the guest closed the connection".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        let _ = events.send(ControlEvent::Closed { conn: id, reason }).await;
    });
    Connection {
        id,
        peer_cid,
        tx,
        tasks: std::sync::Arc::new([writer.abort_handle(), reader.abort_handle()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_vms_own_pid_1_is_let_in() {
        let peer = |cid, port| Some(VsockPeer { cid, port });
        assert_eq!(refused_peer(peer(10, 1023), 10), None);
        assert_eq!(refused_peer(peer(10, 600), 10), None);
        for (p, what) in [
            (peer(11, 1023), "another VM"),
            (peer(2, 1023), "the host itself"),
            (peer(1, 1023), "loopback"),
            (
                peer(10, 1024),
                "a guest process without CAP_NET_BIND_SERVICE",
            ),
            (peer(10, 49152), "an ephemeral port"),
        ] {
            assert!(refused_peer(p, 10).is_some(), "{what}");
        }
        assert!(refused_peer(peer(10, 40000), 10)
            .unwrap()
            .contains("only the guest's PID 1 dials"));
        assert_eq!(
            refused_peer(None, 10),
            None,
            "vhost-device-vsock's unix socket: the session token decides"
        );
    }
    use protocol::messages::{DeviceReport, Hello};

    #[tokio::test]
    async fn a_test_client_talks_to_the_server_side() {
        let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        let conn = spawn_connection(7, Box::new(server), None, ev_tx);

        let hello = GuestMessage::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            cid: 10,
            kernel_release: "6.12".into(),
            boot_time_ms: 1,
            session: None,
        });
        write_frame(&mut client, &hello).await.unwrap();
        write_frame(
            &mut client,
            &GuestMessage::DeviceReport(DeviceReport::default()),
        )
        .await
        .unwrap();
        match ev_rx.recv().await.unwrap() {
            ControlEvent::Message { conn: 7, msg } => assert_eq!(*msg, hello),
            other => panic!("{other:?}"),
        }
        match ev_rx.recv().await.unwrap() {
            ControlEvent::Message { msg, .. } => {
                assert!(matches!(*msg, GuestMessage::DeviceReport(_)))
            }
            other => panic!("{other:?}"),
        }

        conn.send(HostMessage::Ping).await.unwrap();
        let mut reader = FrameReader::new();
        let got: HostMessage = read_frame(&mut client, &mut reader).await.unwrap().unwrap();
        assert_eq!(got, HostMessage::Ping);

        // An unknown message type closes the connection instead of being guessed at.
        let body = br#"{"type":"launch_missiles"}"#;
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        client.write_all(&frame).await.unwrap();
        match ev_rx.recv().await.unwrap() {
            ControlEvent::Closed { conn: 7, reason } => {
                assert!(reason.contains("not a valid message"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_guest_that_stops_reading_loses_its_connection_in_bounded_time() {
        let (server, _client) = tokio::net::UnixStream::pair().unwrap();
        let (ev_tx, _ev_rx) = mpsc::channel(8);
        let conn = spawn_connection(3, Box::new(server), None, ev_tx);
        let big = HostMessage::Query {
            id: 1,
            sql: "x".repeat(60_000),
        };
        let start = std::time::Instant::now();
        let mut outcome = Ok(());
        for _ in 0..100 {
            outcome = conn.send(big.clone()).await;
            if outcome.is_err() {
                break;
            }
        }
        assert!(
            matches!(outcome, Err(ControlError::WriteTimeout(_))),
            "{outcome:?}"
        );
        assert!(start.elapsed() < WRITE_DEADLINE + std::time::Duration::from_secs(2));
        assert!(!conn.post(HostMessage::Heartbeat), "the writer is gone");
    }

    #[tokio::test]
    async fn close_ends_the_connection_for_the_peer() {
        let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let (ev_tx, _ev_rx) = mpsc::channel(8);
        let conn = spawn_connection(4, Box::new(server), None, ev_tx);
        assert!(conn.post(HostMessage::Heartbeat));
        let mut reader = FrameReader::new();
        let got: HostMessage = read_frame(&mut client, &mut reader).await.unwrap().unwrap();
        assert_eq!(got, HostMessage::Heartbeat);
        conn.close();
        let end: Option<HostMessage> = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_frame(&mut client, &mut reader),
        )
        .await
        .expect("the peer sees the close")
        .unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn oversize_frames_close_before_buffering() {
        let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        let _conn = spawn_connection(1, Box::new(server), Some(10), ev_tx);
        client.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        match ev_rx.recv().await.unwrap() {
            ControlEvent::Closed { reason, .. } => assert!(reason.contains("exceeds"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unix_listener_accepts_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_1025");
        std::fs::write(&path, b"stale").unwrap();
        let mut l = ControlListener::unix(&path).unwrap();
        let c = tokio::spawn({
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(&path).await.unwrap() }
        });
        let (_s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, None);
        c.await.unwrap();
        drop(l);
        assert!(!path.exists());
    }
}
