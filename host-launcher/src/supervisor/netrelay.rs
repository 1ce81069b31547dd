//! gvproxy's frame port on crosvm. gvproxy's own `-listen vsock://:1024` accepts a
//! connection from any CID, so another VM on the phone could join this VM's network (and
//! reach the host through gvproxy's NAT). Instead the supervisor listens on vsock port
//! 1024 itself, closes any connection whose peer CID is not the spec's, and relays the
//! others, byte for byte, to gvproxy listening on a unix socket in the run directory.
//! Under QEMU vhost-device-vsock already delivers only this guest's connections to
//! `<uds>_1024`, so no relay runs there.

use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

/// Buffer for each direction of a relayed connection: frames are up to one MTU, and
/// larger reads keep the copy cheap under bulk transfers.
const RELAY_BUFFER: usize = 64 * 1024;

/// Copies bytes both ways between the guest's connection and a new connection to
/// gvproxy at `target`, until either side closes.
pub async fn relay_one<S>(mut guest: S, target: PathBuf) -> std::io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut gvproxy = UnixStream::connect(&target).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut guest, &mut gvproxy, RELAY_BUFFER, RELAY_BUFFER)
        .await
}

/// Accepts guest connections on vsock `port`, refuses peers other than `cid`, relays
/// the rest to `target`. Runs for the supervisor's lifetime.
pub async fn serve(listener: tokio_vsock::VsockListener, cid: u32, target: PathBuf) {
    loop {
        match listener.accept().await {
            Ok((_stream, addr))
                if crate::control::foreign_peer(Some(addr.cid()), cid).is_some() =>
            {
                log::warn!(
                    "network port: refused a connection from CID {}: this VM is CID {cid}",
                    addr.cid()
                );
            }
            Ok((stream, _)) => {
                let target = target.clone();
                tokio::spawn(async move {
                    match relay_one(stream, target).await {
                        Ok((out, back)) => {
                            log::info!("network relay closed: {out} bytes to gvproxy, {back} back")
                        }
                        Err(e) => log::warn!("network relay ended: {e}"),
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
        guest_w.shutdown().await.unwrap();
        let (to_gvproxy, to_guest) = relay.await.unwrap().unwrap();
        assert_eq!((to_gvproxy, to_guest), (26, 100_000));
    }
}
