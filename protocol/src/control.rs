//! Control channel framing: a u32 big-endian length, then exactly that many bytes of one
//! JSON message. Frames above [`MAX_CONTROL_FRAME`] are refused on both ends, so a
//! confused or hostile peer can never make the other side allocate without bound.

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// Largest JSON payload a control frame may carry (64 KiB).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// How often each side sends a heartbeat when it has nothing else to say.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A peer that sent no complete message for this long is gone, whatever the transport
/// says (a vsock whose other end vanished need not deliver a close): drop the
/// connection and (guest) dial again. Three heartbeats missed.
pub const PEER_SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why a control frame could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("control frame of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Announced or attempted payload length.
        len: usize,
        /// The cap, [`MAX_CONTROL_FRAME`].
        max: usize,
    },
    #[error("empty control frame")]
    Empty,
    #[error("control frame is not a valid message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Serialises `msg` into one frame (header + JSON).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut out, msg)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_CONTROL_FRAME {
        return Err(CodecError::Oversize {
            len,
            max: MAX_CONTROL_FRAME,
        });
    }
    let len = u32::try_from(len).map_err(|_| CodecError::Oversize {
        len,
        max: MAX_CONTROL_FRAME,
    })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads the payload length from a header, refusing empty and oversize frames before
/// any payload is buffered.
pub fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > MAX_CONTROL_FRAME {
        return Err(CodecError::Oversize {
            len,
            max: MAX_CONTROL_FRAME,
        });
    }
    Ok(len)
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more), or the message
/// and the number of bytes it used.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, CodecError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let len = payload_len(h)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let msg = serde_json::from_slice(payload)?;
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Accumulates bytes from a stream and yields whole messages; the I/O stays with the
/// caller. Holds at most one frame's worth of bytes beyond what was consumed.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next whole message, if one is buffered. After an error the stream is
    /// out of sync and the connection must be closed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        match decode_frame(&self.buf)? {
            Some((msg, used)) => {
                self.buf.drain(..used);
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Bytes buffered but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{GuestMessage, Hello, HostMessage};

    fn hello() -> GuestMessage {
        GuestMessage::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            cid: 10,
            kernel_release: "6.12.48-sovereign".into(),
            boot_time_ms: 1234,
            session: None,
        })
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(&hello()).unwrap();
        assert_eq!(
            &frame[..4],
            &u32::try_from(frame.len() - 4).unwrap().to_be_bytes()
        );
        let (msg, used) = decode_frame::<GuestMessage>(&frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(msg, hello());
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        let frame = encode_frame(&hello()).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode_frame::<GuestMessage>(&frame[..cut])
                    .unwrap()
                    .is_none(),
                "{cut}"
            );
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let header = u32::try_from(MAX_CONTROL_FRAME + 1).unwrap().to_be_bytes();
        let err = decode_frame::<GuestMessage>(&header).unwrap_err();
        assert!(matches!(err, CodecError::Oversize { len, .. } if len == MAX_CONTROL_FRAME + 1));
        assert!(err.to_string().contains("65537"));
        let huge = HostMessage::Query {
            id: 1,
            sql: "x".repeat(MAX_CONTROL_FRAME),
        };
        assert!(matches!(
            encode_frame(&huge),
            Err(CodecError::Oversize { .. })
        ));
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        assert!(matches!(
            decode_frame::<GuestMessage>(&[0, 0, 0, 0]),
            Err(CodecError::Empty)
        ));
        let mut garbage = vec![0, 0, 0, 5];
        garbage.extend_from_slice(b"\xff{]x!");
        assert!(matches!(
            decode_frame::<GuestMessage>(&garbage),
            Err(CodecError::Json(_))
        ));
        let mut unknown = vec![];
        let body = br#"{"type":"launch_missiles"}"#;
        unknown.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        unknown.extend_from_slice(body);
        decode_frame::<GuestMessage>(&unknown).unwrap_err();
    }

    #[test]
    fn reader_splits_a_stream_fed_byte_by_byte() {
        let mut stream = encode_frame(&hello()).unwrap();
        stream.extend(encode_frame(&GuestMessage::Pong).unwrap());
        let mut reader = FrameReader::new();
        let mut got = vec![];
        for b in stream {
            reader.push(&[b]);
            while let Some(m) = reader.next_message::<GuestMessage>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![hello(), GuestMessage::Pong]);
        assert_eq!(reader.buffered(), 0);
    }
}
