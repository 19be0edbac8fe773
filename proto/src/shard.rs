//! The stable mapping from keys to shards.
//!
//! A key's shard is `fnv1a64(key_bytes) % shard_count`. FNV-1a is specified
//! in a few lines, so clients in any language compute the same shard; it must
//! never change for an existing cluster because data lives where it hashed.

use serde::{Deserialize, Serialize};

/// Index of a virtual shard, `0..shard_count`.
pub type ShardId = u32;

/// What a request is routed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardKey {
    /// A vertex or timeline owner id, hashed as its 8 little-endian bytes.
    Id(u64),
    /// A named object (a filter), hashed as its UTF-8 bytes.
    Name(String),
    /// One shard itself (for a scan of that shard), `shard % shard_count`.
    Shard(ShardId),
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The shard that owns `key` in a cluster of `shard_count` shards.
///
/// # Panics
/// Never: a zero `shard_count` maps everything to shard 0 (a cluster always
/// has at least one shard; the config loader rejects zero).
pub fn shard_for_key(key: &ShardKey, shard_count: u32) -> ShardId {
    let h = match key {
        ShardKey::Id(id) => fnv1a64(&id.to_le_bytes()),
        ShardKey::Name(name) => fnv1a64(name.as_bytes()),
        ShardKey::Shard(s) => u64::from(*s),
    };
    (h % u64::from(shard_count.max(1))) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Reference values from the FNV specification's test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        for id in 0..1000u64 {
            let s = shard_for_key(&ShardKey::Id(id), 64);
            assert!(s < 64);
            assert_eq!(s, shard_for_key(&ShardKey::Id(id), 64));
        }
        assert_eq!(shard_for_key(&ShardKey::Name("seen".into()), 1), 0);
    }
}
