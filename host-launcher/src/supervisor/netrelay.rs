//! gvproxy's frame port on crosvm. gvproxy's own `-listen vsock://:1024` accepts a
//! connection from any CID, so another VM on the phone could join this VM's network (and
//! reach the host through gvproxy's NAT). Instead the supervisor listens on vsock port
//! 1024 itself, closes any connection whose peer CID is not the spec's, and relays the
//! others, byte for byte, to gvproxy listening on a unix socket in the run directory.
//! Under QEMU vhost-device-vsock already delivers only this guest's connections to
//! `<uds>_1024`, so no relay runs there (and the guest's network does not depend on the
//! supervisor staying alive).
//!
//! The relay never resets the guest's end: when gvproxy goes away (or cannot be
//! reached), it shuts down its writing side, so the guest reads an end of stream and
//! dials again, and reads what the guest still sends until the guest closes.

use crate::control::ControlListener;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Buffer for each direction of a relayed connection: frames are up to one MTU, and
/// larger reads keep the copy cheap under bulk transfers.
const RELAY_BUFFER: usize = 64 * 1024;

/// How long a relay that is closing keeps reading the guest's end, waiting for the
/// guest to close it after the end of stream.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Bytes a relayed connection moved, and why it ended.
#[derive(Debug)]
pub struct RelayEnd {
    /// Bytes from the guest to gvproxy.
    pub to_gvproxy: u64,
    /// Bytes from gvproxy to the guest.
    pub to_guest: u64,
    /// `Ok` when a side closed, the error otherwise.
    pub ended: std::io::Result<()>,
}

/// Copies `from` to `to` until `from` ends, counting in `moved`.
async fn pump<R, W>(from: &mut R, to: &mut W, moved: &mut u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        *moved += n as u64;
    }
}

/// Reads and discards until `from` ends, errs, or `limit` passes.
async fn drain<R: AsyncRead + Unpin>(from: &mut R, limit: Duration) {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Relays the guest's connection to a new connection to gvproxy at `target` until
/// either side ends, then closes the guest's end without a reset.
pub async fn relay_one<S>(guest: S, target: PathBuf) -> RelayEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut guest_rd, mut guest_wr) = tokio::io::split(guest);
    let (mut to_gvproxy, mut to_guest) = (0, 0);
    let ended = match UnixStream::connect(&target).await {
        Ok(gvproxy) => {
            let (mut gv_rd, mut gv_wr) = gvproxy.into_split();
            tokio::select! {
                r = pump(&mut guest_rd, &mut gv_wr, &mut to_gvproxy) => r,
                r = pump(&mut gv_rd, &mut guest_wr, &mut to_guest) => r,
            }
        }
        Err(e) => Err(e),
    };
    let _ = guest_wr.shutdown().await;
    drain(&mut guest_rd, CLOSE_GRACE).await;
    RelayEnd {
        to_gvproxy,
        to_guest,
        ended,
    }
}

/// Accepts this VM's connections on the network port (connections from another CID
/// are refused by `accept_from`) and relays each to `target`. Runs for the
/// supervisor's lifetime.
pub async fn serve(mut listener: ControlListener, cid: u32, target: PathBuf) {
    loop {
        match listener.accept_from(cid, "network port").await {
            Ok((stream, _)) => {
                let target = target.clone();
                tokio::spawn(async move {
                    let end = relay_one(stream, target).await;
                    let (out, back) = (end.to_gvproxy, end.to_guest);
                    match end.ended {
                        Ok(()) => {
                            log::info!("network relay closed: {out} bytes to gvproxy, {back} back")
                        }
                        Err(e) => log::warn!(
                            "network relay ended: {e} ({out} bytes to gvproxy, {back} back)"
                        ),
                    }
                });
            }
            Err(e) => {
                log::warn!("network port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_both_ways_until_a_side_closes() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gvproxy-net.sock");
        let gvproxy = tokio::net::UnixListener::bind(&sock).unwrap();
        let (guest_end, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let relay = tokio::spawn(relay_one(relay_end, sock.clone()));
        let (mut gv, _) = gvproxy.accept().await.unwrap();
        let (mut guest_r, mut guest_w) = tokio::io::split(guest_end);
        guest_w
            .write_all(b"POST /connect HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = [0u8; 26];
        gv.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"POST /connect HTTP/1.1\r\n\r\n");
        let frame = vec![7u8; 100_000];
        gv.write_all(&frame).await.unwrap();
        let mut back = vec![0u8; frame.len()];
        guest_r.read_exact(&mut back).await.unwrap();
        assert_eq!(back, frame);
        drop(gv);
        let mut rest = Vec::new();
        guest_r.read_to_end(&mut rest).await.unwrap();
        guest_w.shutdown().await.unwrap();
        let end = relay.await.unwrap();
        assert!(end.ended.is_ok(), "{:?}", end.ended);
        assert_eq!((end.to_gvproxy, end.to_guest), (26, 100_000));
    }

    /// A unix socket closed with unread data resets its peer: the guest's end must
    /// instead read an end of stream when gvproxy dies with frames it never read (the
    /// reset is what vhost-device-vsock ignores).
    #[tokio::test]
    async fn gvproxy_dying_with_unread_frames_ends_the_guests_stream_without_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gvproxy-net.sock");
        let gvproxy = tokio::net::UnixListener::bind(&sock).unwrap();
        let (guest_end, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let relay = tokio::spawn(relay_one(relay_end, sock.clone()));
        let (gv, _) = gvproxy.accept().await.unwrap();
        let (mut guest_r, mut guest_w) = tokio::io::split(guest_end);
        guest_w.write_all(&[1u8; 4096]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(gv); // with 4096 bytes unread: the relay's end is reset
        let mut rest = Vec::new();
        let read = guest_r.read_to_end(&mut rest).await;
        assert!(read.is_ok(), "the guest's end was reset: {read:?}");
        // The guest may still write until it closes; the relay reads and discards.
        guest_w.write_all(&[2u8; 4096]).await.unwrap();
        guest_w.shutdown().await.unwrap();
        drop((guest_r, guest_w));
        let end = relay.await.unwrap();
        assert!(end.ended.is_err(), "the reset is reported: {:?}", end.ended);
    }

    #[tokio::test]
    async fn no_gvproxy_ends_the_guests_stream_without_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (guest_end, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let (mut guest_r, mut guest_w) = tokio::io::split(guest_end);
        guest_w
            .write_all(b"POST /connect HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let relay = tokio::spawn(relay_one(relay_end, dir.path().join("absent.sock")));
        let mut rest = Vec::new();
        let read = guest_r.read_to_end(&mut rest).await;
        assert!(read.is_ok(), "the guest's end was reset: {read:?}");
        drop((guest_r, guest_w));
        let end = relay.await.unwrap();
        assert!(end.ended.is_err());
    }
}
