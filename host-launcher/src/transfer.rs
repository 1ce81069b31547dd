//! The CLI's end of a bulk transfer ([`crate::ipc::Request::Transfer`]): sends the
//! request on the supervisor socket, waits for the guest to open its data connection,
//! then reads (export, dump) or writes (restore) the chunked stream
//! ([`protocol::bulk`]) and returns the guest's final word. Blocking I/O: the CLI does
//! nothing else meanwhile, and the chunk codec is `std::io`.

use crate::ipc::{Reply, Request};
use crate::rundir::RunDir;
use protocol::bulk::{ChunkReader, ChunkWriter};
use protocol::control::{encode_frame, payload_len, HEADER_LEN};
use protocol::transfer::{Direction, Transfer, TransferAnswer};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How often progress is printed on a long transfer.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a transfer did not complete.
#[derive(Debug, Error)]
pub enum TransferError {
    #[error("no supervisor at {path}: is the VM running? ({source})")]
    NotRunning {
        /// The supervisor socket.
        path: String,
        /// The connect error.
        source: io::Error,
    },
    #[error("the supervisor socket: {0}")]
    Socket(#[from] io::Error),
    #[error("the supervisor sent an unreadable reply: {0}")]
    Reply(String),
    #[error("{0}")]
    Refused(String),
    #[error("the stream broke after {bytes} bytes: {source}")]
    Stream {
        /// Payload bytes that went through.
        bytes: u64,
        /// Why it broke.
        source: io::Error,
    },
}

/// Reads exactly one reply frame (and nothing after it).
fn read_reply(stream: &mut UnixStream) -> Result<Reply, TransferError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header)?;
    let len = payload_len(header).map_err(|e| TransferError::Reply(e.to_string()))?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    serde_json::from_slice(&payload).map_err(|e| TransferError::Reply(e.to_string()))
}

/// The guest's final answer, or why there is none.
fn final_answer(reply: Reply) -> Result<TransferAnswer, TransferError> {
    match reply {
        Reply::Transfer(a) => Ok(a),
        Reply::Error { message } => Err(TransferError::Refused(message)),
        other => Err(TransferError::Reply(format!("{other:?}"))),
    }
}

/// Counts bytes and says how far a transfer got every [`PROGRESS_EVERY`], on stderr.
struct Progress<T> {
    inner: T,
    what: String,
    bytes: u64,
    started: Instant,
    said: Instant,
}

impl<T> Progress<T> {
    fn new(inner: T, what: &str) -> Self {
        Progress {
            inner,
            what: what.to_string(),
            bytes: 0,
            started: Instant::now(),
            said: Instant::now(),
        }
    }

    fn count(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.said.elapsed() >= PROGRESS_EVERY {
            self.said = Instant::now();
            eprintln!(
                "  ... {}: {:.1} MiB in {:.0} s",
                self.what,
                self.bytes as f64 / f64::from(1u32 << 20),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl<T: Write> Write for Progress<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Progress<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

/// Runs `transfer` against the VM of `run`: a guest → host transfer writes its payload
/// to `out`, a host → guest one reads it from `input`. Returns the guest's answer; an
/// `Err` means the payload did not go through whole (a partial `out` must not be used).
pub fn run(
    run: &RunDir,
    transfer: Transfer,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<TransferAnswer, TransferError> {
    let path = run.supervisor_socket();
    let mut stream = UnixStream::connect(&path).map_err(|source| TransferError::NotRunning {
        path: path.display().to_string(),
        source,
    })?;
    let direction = transfer.direction();
    let frame = encode_frame(&Request::Transfer { transfer })
        .map_err(|e| TransferError::Reply(e.to_string()))?;
    stream.write_all(&frame)?;
    match read_reply(&mut stream)? {
        Reply::TransferStarted => {}
        other => return final_answer(other),
    }
    match direction {
        Direction::ToHost => {
            let mut reader = ChunkReader::new(&mut stream);
            let mut out = Progress::new(out, "received");
            if let Err(source) = io::copy(&mut reader, &mut out) {
                return Err(TransferError::Stream {
                    bytes: reader.payload_bytes(),
                    source,
                });
            }
            out.flush()?;
        }
        Direction::ToGuest => {
            let mut writer = ChunkWriter::new(&mut stream);
            let mut input = Progress::new(input, "sent");
            let sent = io::copy(&mut input, &mut writer).and_then(|_| writer.finish());
            if let Err(source) = sent {
                // The guest may have stopped reading and said why: prefer its word.
                if let Ok(reply) = read_reply(&mut stream) {
                    return final_answer(reply);
                }
                return Err(TransferError::Stream {
                    bytes: input.bytes,
                    source,
                });
            }
            stream.shutdown(Shutdown::Write)?;
        }
    }
    final_answer(read_reply(&mut stream)?)
}
