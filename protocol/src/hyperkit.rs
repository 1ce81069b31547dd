//! gvproxy's "hyperkit" stream framing for Ethernet frames: a 2-byte little-endian
//! length, then the frame. The same framing runs both ways over the vsock connection
//! that follows the `POST /connect` handshake.
//!
//! The decoder never trusts the peer: a zero length or a length above what the MTU
//! allows is an error (the stream is then out of sync and must be reconnected).

use thiserror::Error;

/// Length of the frame header.
pub const HEADER_LEN: usize = 2;

/// Ethernet header (destination, source, ethertype) plus one 802.1Q tag.
pub const ETHERNET_OVERHEAD: usize = 14 + 4;

/// The request that turns a vsock connection into a frame stream. gvproxy hijacks the
/// connection and never answers it.
pub const CONNECT_REQUEST: &[u8] = b"POST /connect HTTP/1.1\r\nHost: sovereign\r\n\r\n";

/// Largest Ethernet frame acceptable on a link with this MTU.
pub fn max_frame_len(mtu: u16) -> usize {
    usize::from(mtu) + ETHERNET_OVERHEAD
}

/// Why a frame header or frame is unacceptable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("zero-length Ethernet frame in the gvproxy stream")]
    Empty,
    #[error("Ethernet frame of {len} bytes exceeds the {max}-byte limit for this MTU")]
    Oversize {
        /// Frame length.
        len: usize,
        /// Limit from [`max_frame_len`].
        max: usize,
    },
}

/// Validates a frame length against `max`.
pub fn check_len(len: usize, max: usize) -> Result<usize, FrameError> {
    match len {
        0 => Err(FrameError::Empty),
        n if n > max => Err(FrameError::Oversize { len: n, max }),
        n => Ok(n),
    }
}

/// Decodes a header into the frame length it announces, validated against `max`.
pub fn decode_header(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    check_len(usize::from(u16::from_le_bytes(header)), max)
}

/// Encodes the header for a frame of `len` bytes, validated against `max` (which must
/// itself fit in a u16: the wire cannot express more).
pub fn encode_header(len: usize, max: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    let max = max.min(usize::from(u16::MAX));
    let len = check_len(len, max)?;
    let len = u16::try_from(len).map_err(|_| FrameError::Oversize { len, max })?;
    Ok(len.to_le_bytes())
}

/// Splits the first frame off a buffer: `Ok(None)` when more bytes are needed,
/// otherwise the frame and the bytes consumed (header included).
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(&[a, b]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = decode_header([a, b], max)?;
    Ok(buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .map(|frame| (frame, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1518;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![];
        for f in frames {
            out.extend_from_slice(&encode_header(f.len(), MAX).unwrap());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn header_is_little_endian() {
        assert_eq!(encode_header(0x0102, MAX).unwrap(), [0x02, 0x01]);
        assert_eq!(decode_header([0x02, 0x01], MAX).unwrap(), 0x0102);
        assert_eq!(max_frame_len(1500), 1518);
    }

    #[test]
    fn zero_length_is_rejected() {
        assert_eq!(decode_header([0, 0], MAX), Err(FrameError::Empty));
        assert_eq!(encode_header(0, MAX), Err(FrameError::Empty));
        assert_eq!(split_frame(&[0, 0, 1, 2], MAX), Err(FrameError::Empty));
    }

    #[test]
    fn oversize_is_rejected_from_the_header() {
        let hdr = u16::try_from(MAX + 1).unwrap().to_le_bytes();
        assert_eq!(
            split_frame(&hdr, MAX),
            Err(FrameError::Oversize {
                len: MAX + 1,
                max: MAX
            })
        );
        assert!(
            encode_header(70_000, 100_000).is_err(),
            "cannot exceed u16 on the wire"
        );
    }

    #[test]
    fn truncated_and_split_frames() {
        let stream = framed(&[b"abcdefghijklmn", b"0123456789abcdefgh"]);
        for cut in 0..16 {
            assert_eq!(split_frame(&stream[..cut], MAX).unwrap(), None, "{cut}");
        }
        let (f1, used) = split_frame(&stream, MAX).unwrap().unwrap();
        assert_eq!(f1, b"abcdefghijklmn");
        let (f2, used2) = split_frame(&stream[used..], MAX).unwrap().unwrap();
        assert_eq!(f2, b"0123456789abcdefgh");
        assert_eq!(used + used2, stream.len());
    }
}
