//! Length-prefixed, versioned frames with a hard size limit.
//!
//! ```text
//! 0      4        5       6
//! | len  | version | kind  | body (len bytes, postcard) |
//! | u32 LE          u8      u8
//! ```
//! `len` counts only the body. A frame whose `len` exceeds the reader's limit
//! is refused before any of its body is read, so a hostile peer cannot make a
//! node allocate more than the limit.

use serde::{de::DeserializeOwned, Serialize};
#[cfg(feature = "io")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version byte carried by every frame; a reader refuses any other value.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 6;
/// Default hard limit on a frame body, in bytes (16 MiB).
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → node: the first frame on a connection, carrying the token.
    Hello = 1,
    /// Node → client: answer to `Hello`.
    HelloAck = 2,
    /// Client → node: one request.
    Request = 3,
    /// Node → client: the answer to one request.
    Response = 4,
    /// Node → node: a batch of Raft (or other peer) messages.
    PeerBatch = 16,
    /// Node → node: the answers to a `PeerBatch`, in the same order.
    PeerBatchReply = 17,
}

impl FrameKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::Request,
            4 => Self::Response,
            16 => Self::PeerBatch,
            17 => Self::PeerBatchReply,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The body length exceeds the limit in force.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The version byte is not one this build speaks.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The frame kind is valid but not the one expected here.
    #[error("unexpected frame kind {got:?}, expected {expected:?}")]
    UnexpectedKind {
        /// Kind received.
        got: FrameKind,
        /// Kind the protocol state expects.
        expected: FrameKind,
    },
    /// The body does not decode as the expected message.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// The stream ended cleanly before a frame started.
    #[error("stream closed")]
    Closed,
    /// The underlying stream failed or ended inside a frame.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame of `kind`.
pub fn encode<T: Serialize>(kind: FrameKind, msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    // Sized first (a pass that copies nothing), so an oversized message is refused before any
    // allocation and the frame is written into one buffer instead of one grown by doubling.
    let len = postcard::experimental::serialized_size(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    out.resize(FRAME_HEADER_BYTES, 0);
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    debug_assert_eq!(
        out.len(),
        FRAME_HEADER_BYTES + len,
        "postcard's size pass and its output agree"
    );
    // `len <= max <= u32::MAX` is checked by callers' limits (all well under 4 GiB).
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4] = PROTOCOL_VERSION;
    out[5] = kind as u8;
    Ok(out)
}

/// Parses a frame header, returning the kind and the body length.
pub fn decode_header(h: &[u8; FRAME_HEADER_BYTES], max: usize) -> Result<(FrameKind, usize), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if h[4] != PROTOCOL_VERSION {
        return Err(FrameError::Version(h[4]));
    }
    let kind = FrameKind::from_u8(h[5])?;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok((kind, len))
}

/// Decodes a body as `T`, refusing trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

/// Reads one frame: its kind and raw body.
#[cfg(feature = "io")]
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<(FrameKind, Vec<u8>), FrameError> {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    // Distinguish a clean close before the header from a truncated header.
    let n = r.read(&mut h).await?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    r.read_exact(&mut h[n..]).await?;
    let (kind, len) = decode_header(&h, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// Reads one frame and checks it is of `expected` kind, decoding its body.
#[cfg(feature = "io")]
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    expected: FrameKind,
    max: usize,
) -> Result<T, FrameError> {
    let (kind, body) = read_frame(r, max).await?;
    if kind != expected {
        return Err(FrameError::UnexpectedKind { got: kind, expected });
    }
    decode_body(&body)
}

/// Writes `msg` as one frame of `kind`.
#[cfg(feature = "io")]
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: FrameKind,
    msg: &T,
    max: usize,
) -> Result<(), FrameError> {
    let bytes = encode(kind, msg, max)?;
    w.write_all(&bytes).await?;
    Ok(())
}

#[cfg(all(test, feature = "io"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let bytes = encode(FrameKind::Request, &(7u32, "hi".to_string()), 1024).unwrap();
        assert_eq!(&bytes[0..4], &4u32.to_le_bytes());
        assert_eq!(bytes[4], PROTOCOL_VERSION);
        assert_eq!(bytes[5], 3);
        let mut r = &bytes[..];
        let v: (u32, String) = read_msg(&mut r, FrameKind::Request, 1024).await.unwrap();
        assert_eq!(v, (7, "hi".to_string()));
    }

    #[tokio::test]
    async fn refuses_oversized_before_reading_body() {
        let mut h = [0u8; 6];
        h[0..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        h[4] = PROTOCOL_VERSION;
        h[5] = 3;
        let mut r = &h[..];
        let e = read_frame(&mut r, 1024).await.unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { max: 1024, .. }), "{e}");
    }

    #[test]
    fn encode_refuses_a_body_over_the_limit_and_fills_one_up_to_it() {
        // A 1021-byte vector encodes as a 2-byte varint length and its bytes: 1023 body bytes.
        let body = vec![7u8; 1021];
        let frame = encode(FrameKind::Response, &body, 1023).unwrap();
        assert_eq!(
            (frame.len(), frame.capacity()),
            (FRAME_HEADER_BYTES + 1023, FRAME_HEADER_BYTES + 1023)
        );
        assert_eq!(&frame[0..4], &1023u32.to_le_bytes());
        let e = encode(FrameKind::Response, &body, 1022).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { len: 1023, max: 1022 }), "{e}");
    }

    #[tokio::test]
    async fn refuses_bad_version_and_kind() {
        let mut r = &[0u8, 0, 0, 0, 9, 3][..];
        assert!(matches!(read_frame(&mut r, 10).await, Err(FrameError::Version(9))));
        let mut r = &[0u8, 0, 0, 0, PROTOCOL_VERSION, 99][..];
        assert!(matches!(read_frame(&mut r, 10).await, Err(FrameError::UnknownKind(99))));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut body = postcard::to_stdvec(&5u8).unwrap();
        body.push(1);
        assert!(matches!(decode_body::<u8>(&body), Err(FrameError::Malformed(_))));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_body::<crate::msg::Request>(&bytes);
            if bytes.len() >= 6 {
                let h: [u8; 6] = bytes[0..6].try_into().unwrap();
                let _ = decode_header(&h, 1024);
            }
        }
    }
}
