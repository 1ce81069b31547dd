//! Bulk transfers (exports, dumps, restores from a file): the data port's listener and
//! the relay between a client of the supervisor socket and the guest's data
//! connection. A client asks for a transfer; the supervisor gives it a random token and
//! sends it to the guest with the request; the guest dials [`DATA_PORT`] and names the
//! token; the bytes are then copied one way, untouched (the chunk framing and its
//! SHA-256 are checked end to end, by the CLI and by PID 1). Peers whose CID is not the
//! spec's are refused at accept, like on the control port.

use super::clients::{ask_guest, Command, GUEST_BACKUP};
use super::requests::{Expect, GuestRequestError};
use crate::control::{write_frame, ControlListener, Stream};
use crate::ipc::Reply;
use protocol::bulk::TransferHeader;
use protocol::control::{payload_len, HEADER_LEN};
use protocol::ports::DATA_PORT;
use protocol::transfer::{Direction, Transfer};
use protocol::{GuestMessage, HostMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How long the guest may take to open the data connection after the request.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long a new data connection may take to name its transfer.
const HEADER_WAIT: Duration = Duration::from_secs(10);

/// Transfers waiting for the guest's data connection, by token.
#[derive(Default, Clone)]
pub struct Waiting(Arc<Mutex<HashMap<String, Handover>>>);

/// Where the data port hands a transfer its connection.
type Handover = oneshot::Sender<Box<dyn Stream>>;

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Waiting({n} transfers)")
    }
}

impl Waiting {
    fn add(&self, token: &str) -> oneshot::Receiver<Box<dyn Stream>> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.0.lock() {
            map.insert(token.to_string(), tx);
        }
        rx
    }

    fn take(&self, token: &str) -> Option<Handover> {
        self.0.lock().ok()?.remove(token)
    }
}

/// Why a data connection's first frame did not name a transfer.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("reading its header: {0}")]
    Read(#[from] std::io::Error),
    #[error("its header frame: {0}")]
    Frame(#[from] protocol::CodecError),
    #[error("its header is not a transfer header: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads exactly one frame, and nothing after it (the chunks that follow belong to
/// the relay).
async fn read_header(stream: &mut Box<dyn Stream>) -> Result<TransferHeader, HeaderError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(serde_json::from_slice(&payload)?)
}

/// Accepts data connections for the supervisor's lifetime: refuses other CIDs, reads
/// each one's header and hands it to the transfer that waits for its token.
pub async fn serve_data_port(mut listener: ControlListener, cid: u32, waiting: Waiting) {
    loop {
        let mut stream = match listener
            .accept_from(cid, &format!("data port {DATA_PORT}"))
            .await
        {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("data port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let waiting = waiting.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HEADER_WAIT, read_header(&mut stream)).await {
                Ok(Ok(h)) => match waiting.take(&h.token) {
                    Some(tx) => {
                        let _ = tx.send(stream);
                    }
                    None => log::warn!("data connection for an unknown transfer: closed"),
                },
                Ok(Err(e)) => log::warn!("data connection without a valid header: {e}"),
                Err(_) => log::warn!("data connection named no transfer within {HEADER_WAIT:?}"),
            }
        });
    }
}

/// A token nobody can guess (128 random bits, hex).
pub(crate) fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    protocol::bulk::hex(&bytes)
}

/// The reply for the guest's final word on a transfer.
fn final_reply(answer: Result<GuestMessage, GuestRequestError>) -> Reply {
    match answer {
        Ok(GuestMessage::TransferAnswer(a)) => Reply::Transfer(a),
        Ok(other) => Reply::Error {
            message: GuestRequestError::UnexpectedAnswer(Box::new(other)).to_string(),
        },
        Err(e) => Reply::Error {
            message: e.to_string(),
        },
    }
}

/// Serves a client's transfer: asks the guest, waits for its data connection, tells
/// the client to start, copies the bytes, then passes on the guest's answer.
pub async fn serve(
    client: &mut UnixStream,
    cmd: &mpsc::Sender<Command>,
    waiting: &Waiting,
    transfer: Transfer,
) -> Reply {
    let token = new_token();
    let connection = waiting.add(&token);
    let direction = transfer.direction();
    let msg = HostMessage::Transfer {
        id: 0,
        token: token.clone(),
        transfer,
    };
    let answer = ask_guest(cmd, msg, Expect::Transfer(0), GUEST_BACKUP);
    tokio::pin!(answer);
    let mut guest = tokio::select! {
        a = &mut answer => {
            // Refused (or failed) before any byte moved.
            waiting.take(&token);
            return final_reply(a);
        }
        c = tokio::time::timeout(CONNECT_WAIT, connection) => {
            waiting.take(&token);
            match c {
                Ok(Ok(stream)) => stream,
                _ => return Reply::Error {
                    message: format!("the guest did not open the data connection within {CONNECT_WAIT:?}"),
                },
            }
        }
    };
    if write_frame(client, &Reply::TransferStarted).await.is_err() {
        return Reply::Error {
            message: "the client left".into(),
        };
    }
    let moved = match direction {
        Direction::ToHost => tokio::io::copy(&mut guest, client).await,
        Direction::ToGuest => {
            let moved = tokio::io::copy(client, &mut guest).await;
            let _ = guest.shutdown().await;
            moved
        }
    };
    match moved {
        Ok(n) => log::info!("transfer relayed {n} bytes"),
        Err(e) => log::warn!("transfer relay ended early: {e}"),
    }
    drop(guest);
    final_reply(answer.await)
}
