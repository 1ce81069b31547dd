//! Bulk data (backup exports, app dumps) between host and guest, on its own vsock
//! connection ([`crate::ports::DATA_PORT`]) so that the control channel's 64 KiB frames
//! stay small and a stream of gigabytes never delays a heartbeat.
//!
//! The guest opens the connection and sends one control-style frame, a
//! [`TransferHeader`] naming the transfer the host asked for. From then on the payload
//! travels in chunks, in whichever direction the transfer goes: a u32 big-endian length
//! (at most [`MAX_CHUNK`]) and that many bytes; a zero length ends the stream and is
//! followed by the SHA-256 of every payload byte. A stream cut anywhere (before the end
//! marker, or inside the trailer) or changed on the way fails to read, so a partial
//! export or dump is never taken for a whole one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// Largest chunk a writer produces and a reader accepts.
pub const MAX_CHUNK: usize = 1 << 20;

/// The chunk size writers use: large enough that the 4-byte headers cost nothing.
const CHUNK: usize = 256 * 1024;

/// First frame on a data connection: which transfer this connection carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferHeader {
    /// The token the host put in [`crate::HostMessage::Transfer`].
    pub token: String,
}

/// Writes a payload as chunks; [`ChunkWriter::finish`] writes the end marker and the
/// SHA-256 trailer. Dropping a writer without `finish` leaves a stream every reader
/// refuses, which is what a failed producer should leave.
#[derive(Debug)]
pub struct ChunkWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> ChunkWriter<W> {
    /// A writer onto `inner`.
    pub fn new(inner: W) -> Self {
        ChunkWriter {
            inner,
            buf: Vec::with_capacity(CHUNK),
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = u32::try_from(self.buf.len()).map_err(io::Error::other)?;
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Payload bytes written so far.
    pub fn payload_bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the stream: the last chunk, the end marker and the SHA-256 of the payload
    /// (returned in hex with the byte count).
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        self.flush_chunk()?;
        let digest = self.hash.finalize_reset();
        self.inner.write_all(&0u32.to_be_bytes())?;
        self.inner.write_all(&digest)?;
        self.inner.flush()?;
        Ok((self.bytes, hex(&digest)))
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        self.bytes += n as u64;
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_chunk()?;
        self.inner.flush()
    }
}

/// Reads the payload of a chunked stream. It never reads past the trailer, so whatever
/// follows on the connection (an answer frame) stays there. At the end it checks the
/// SHA-256: a mismatch or a cut is an error, never a short but clean end.
#[derive(Debug)]
pub struct ChunkReader<R: Read> {
    inner: R,
    left_in_chunk: usize,
    hash: Sha256,
    bytes: u64,
    finished: Option<String>,
}

impl<R: Read> ChunkReader<R> {
    /// A reader of the stream on `inner`.
    pub fn new(inner: R) -> Self {
        ChunkReader {
            inner,
            left_in_chunk: 0,
            hash: Sha256::new(),
            bytes: 0,
            finished: None,
        }
    }

    /// Payload bytes read so far.
    pub fn payload_bytes(&self) -> u64 {
        self.bytes
    }

    /// The payload's SHA-256 in hex, once the whole stream was read and checked.
    pub fn sha256(&self) -> Option<&str> {
        self.finished.as_deref()
    }

    fn cut(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the stream was cut after {} payload bytes ({what})",
                self.bytes
            ),
        )
    }

    /// Reads the next chunk header; `false` at the end marker (after checking the
    /// trailer).
    fn next_chunk(&mut self) -> io::Result<bool> {
        let mut header = [0u8; 4];
        self.inner
            .read_exact(&mut header)
            .map_err(|_| self.cut("no end marker"))?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a chunk of {len} bytes exceeds the {MAX_CHUNK}-byte limit"),
            ));
        }
        if len > 0 {
            self.left_in_chunk = len;
            return Ok(true);
        }
        let mut trailer = [0u8; 32];
        self.inner
            .read_exact(&mut trailer)
            .map_err(|_| self.cut("inside the SHA-256 trailer"))?;
        let digest = self.hash.finalize_reset();
        if digest.as_slice() != trailer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the stream's SHA-256 is {} but the sender wrote {}: it changed on the way",
                    hex(&digest),
                    hex(&trailer)
                ),
            ));
        }
        self.finished = Some(hex(&digest));
        Ok(false)
    }
}

impl<R: Read> Read for ChunkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished.is_some() || buf.is_empty() {
            return Ok(0);
        }
        if self.left_in_chunk == 0 && !self.next_chunk()? {
            return Ok(0);
        }
        let want = buf.len().min(self.left_in_chunk);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.cut("inside a chunk"));
        }
        self.left_in_chunk -= n;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ChunkWriter::new(&mut out);
        for piece in payload.chunks(70_000) {
            w.write_all(piece).unwrap();
        }
        let (n, _) = w.finish().unwrap();
        assert_eq!(n, payload.len() as u64);
        out
    }

    #[test]
    fn a_whole_stream_reads_back_and_leaves_what_follows() {
        let payload: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = stream(&payload);
        wire.extend_from_slice(b"NEXT");
        let mut r = ChunkReader::new(&wire[..]);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, payload);
        assert_eq!(r.payload_bytes(), payload.len() as u64);
        let sha = r.sha256().unwrap().to_string();
        assert_eq!(sha, hex(&Sha256::digest(&payload)));
        let mut rest = Vec::new();
        r.inner.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn an_empty_payload_is_a_valid_stream() {
        let wire = stream(b"");
        assert_eq!(wire.len(), 4 + 32);
        let mut r = ChunkReader::new(&wire[..]);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
        assert!(r.sha256().is_some());
    }

    #[test]
    fn a_cut_anywhere_is_an_error_never_a_short_end() {
        let payload = vec![42u8; 300_000];
        let wire = stream(&payload);
        for cut in [0, 3, 4, 1000, 262_148, wire.len() - 33, wire.len() - 1] {
            let mut r = ChunkReader::new(&wire[..cut]);
            let mut got = Vec::new();
            let e = r.read_to_end(&mut got).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
            assert!(e.to_string().contains("cut after"), "{e}");
        }
    }

    #[test]
    fn a_changed_byte_or_an_oversize_chunk_is_refused() {
        let mut wire = stream(b"hello world");
        wire[6] ^= 1;
        let e = ChunkReader::new(&wire[..])
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("changed on the way"), "{e}");
        let mut huge = u32::try_from(MAX_CHUNK + 1).unwrap().to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        let e = ChunkReader::new(&huge[..])
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
