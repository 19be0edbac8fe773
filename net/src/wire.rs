//! Bodies of the node ↔ node frames (`PeerBatch`, `PeerBatchReply`).
//!
//! A batch is one frame on its own bidirectional stream; the reply carries one
//! result per message, in order. Messages are opaque bytes: what they mean
//! (Raft RPCs, forwarded writes) is the caller's business, not this crate's.
//! On the wire a message is a postcard byte string (varint length, then the
//! bytes), the same encoding postcard gives a `Vec<u8>`, but written in one copy.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One opaque message, serialised as a byte string rather than element by element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireBytes(pub Vec<u8>);

impl Serialize for WireBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WireBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WireBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<WireBytes, E> {
                Ok(WireBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<WireBytes, E> {
                Ok(WireBytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// The body of a `PeerBatch` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerBatch {
    /// The sending node's id; the receiver checks it against the sender's certificate.
    pub from: u64,
    /// The messages, answered in this order.
    pub msgs: Vec<WireBytes>,
}

/// The body of a `PeerBatchReply` frame: one result per message of the batch, in order.
pub type PeerBatchReply = Vec<Result<WireBytes, String>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_encode_like_a_vec_u8() {
        let a = postcard::to_stdvec(&WireBytes(vec![1, 2, 3])).unwrap();
        let b = postcard::to_stdvec(&vec![1u8, 2, 3]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, [3, 1, 2, 3]);
    }

    #[test]
    fn batch_round_trips() {
        let batch = PeerBatch {
            from: 7,
            msgs: vec![WireBytes(b"a".to_vec()), WireBytes(vec![])],
        };
        let bytes = postcard::to_stdvec(&batch).unwrap();
        assert_eq!(bytes, [7, 2, 1, b'a', 0]);
        let back: PeerBatch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, batch);
        let reply: PeerBatchReply = vec![Ok(WireBytes(b"x".to_vec())), Err("no".into())];
        let bytes = postcard::to_stdvec(&reply).unwrap();
        assert_eq!(postcard::from_bytes::<PeerBatchReply>(&bytes).unwrap(), reply);
    }

    #[test]
    fn truncated_batch_is_an_error() {
        // Claims a 200-byte message but carries one byte.
        assert!(postcard::from_bytes::<PeerBatch>(&[7, 1, 200, 1, 9]).is_err());
    }
}
