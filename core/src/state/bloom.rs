//! The split-block Bloom filter (SBBF) that holds a named filter's mutable
//! tail, and its sizing.
//!
//! The layout is Parquet's (and Impala's): 256-bit blocks of eight 32-bit
//! words; the block comes from the upper 32 bits of the key hash, and one bit
//! in each word from the lower 32 bits times a per-word salt. A probe touches
//! one cache line. This is not a whole named filter: `filter.rs` chains these
//! and seals them into binary fuse filters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// Parquet's SBBF salt constants, one per word of a block.
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// Words per block.
pub(crate) const BLOCK_WORDS: usize = 8;
/// Bytes per block.
pub(crate) const BLOCK_BYTES: usize = BLOCK_WORDS * 4;

/// One block filter of a chain: its bits and how many items it was sized for.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BlockBloom {
    /// The blocks; never empty.
    blocks: Vec<[u32; BLOCK_WORDS]>,
    /// Distinct items this filter accepts before the chain adds another.
    pub(crate) capacity_items: u64,
    /// Distinct items inserted so far.
    pub(crate) items: u64,
}

impl fmt::Debug for BlockBloom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bits themselves are noise in a debug print; their size is not.
        f.debug_struct("BlockBloom")
            .field("blocks", &self.blocks.len())
            .field("capacity_items", &self.capacity_items)
            .field("items", &self.items)
            .finish()
    }
}

/// The bit of each word of a block that `lo` selects.
fn mask(lo: u32) -> [u32; BLOCK_WORDS] {
    let mut m = [0u32; BLOCK_WORDS];
    for (word, salt) in m.iter_mut().zip(SALT) {
        *word = 1u32 << (lo.wrapping_mul(salt) >> 27);
    }
    m
}

impl BlockBloom {
    /// An empty filter of `blocks` blocks (at least one) for `capacity_items`.
    pub(crate) fn new(blocks: u32, capacity_items: u64) -> Self {
        Self {
            blocks: vec![[0; BLOCK_WORDS]; blocks.max(1) as usize],
            capacity_items,
            items: 0,
        }
    }

    /// Rebuilds a filter from its snapshot form; `None` if the bytes are not
    /// a whole, non-empty number of blocks.
    pub(crate) fn from_parts(bytes: &[u8], capacity_items: u64, items: u64) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_BYTES) || bytes.len() / BLOCK_BYTES > u32::MAX as usize
        {
            return None;
        }
        let blocks = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|b| {
                let mut block = [0u32; BLOCK_WORDS];
                for (word, w) in block.iter_mut().zip(b.chunks_exact(4)) {
                    *word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                }
                block
            })
            .collect();
        Some(Self {
            blocks,
            capacity_items,
            items,
        })
    }

    /// The bits as little-endian bytes, block after block.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.blocks.len() * BLOCK_BYTES);
        for block in &self.blocks {
            for word in block {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// Size of the bit array in bytes.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.blocks.len() * BLOCK_BYTES
    }

    fn block_index(&self, hash: u64) -> usize {
        // Multiply-shift maps the upper 32 bits onto 0..len without a division
        // and without requiring a power-of-two block count.
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    /// Sets the key's bits. Counting items is the caller's business because
    /// only the chain knows whether the key is new.
    pub(crate) fn insert(&mut self, hash: u64) {
        let m = mask(hash as u32);
        let i = self.block_index(hash);
        for (word, bit) in self.blocks[i].iter_mut().zip(m) {
            *word |= bit;
        }
    }

    /// Whether every bit of the key is set.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        let m = mask(hash as u32);
        let block = &self.blocks[self.block_index(hash)];
        block.iter().zip(m).all(|(word, bit)| word & bit != 0)
    }

    /// Whether the filter has taken all the items it was sized for.
    pub(crate) fn is_full(&self) -> bool {
        self.items >= self.capacity_items
    }
}

/// Expected false-positive rate of an SBBF whose blocks hold `load` keys on
/// average.
///
/// Keys land in blocks as a Poisson process; a block holding `k` keys has
/// each of a probe's eight bits set with probability `1 - (31/32)^k`. Only
/// `libm::exp` and basic IEEE operations are used, both bit-reproducible
/// everywhere, so every replica sizes a filter identically.
fn fp_rate_at_load(load: f64) -> f64 {
    // Terms beyond this many keys per block are below f64 resolution for the
    // loads the sizing search visits (at most 256 keys per block).
    const TERMS_MAX: u32 = 2_048;
    let mut pmf = libm::exp(-load);
    let mut unset = 1.0f64;
    let mut rate = 0.0f64;
    for k in 0..TERMS_MAX {
        let set = 1.0 - unset;
        let s2 = set * set;
        let s4 = s2 * s2;
        rate += pmf * s4 * s4;
        unset *= 31.0 / 32.0;
        pmf = pmf * load / f64::from(k + 1);
        if f64::from(k) > load && pmf < 1e-20 {
            break;
        }
    }
    rate
}

/// Most distinct rates whose sizing is remembered process-wide.
const SIZING_CACHE_ENTRIES_MAX: usize = 4_096;

/// The most keys per block (on average) that keep the false-positive rate
/// at or below `fp_rate`.
///
/// The search costs tens of thousands of float operations and every filter
/// of a snapshot needs it, while real clusters use few distinct rates, so
/// results are memoised. The memo cannot change a result, only its cost, so
/// it does not make applying impure.
pub(crate) fn keys_per_block_max(fp_rate: f64) -> f64 {
    static CACHE: OnceLock<Mutex<BTreeMap<u64, f64>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(BTreeMap::new()));
    // A poisoned memo only means another thread panicked mid-insert; the
    // map itself is still valid, so keep using it.
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&fp_rate.to_bits()) {
        return *v;
    }
    let v = search_keys_per_block(fp_rate);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() < SIZING_CACHE_ENTRIES_MAX {
        map.insert(fp_rate.to_bits(), v);
    }
    v
}

fn search_keys_per_block(fp_rate: f64) -> f64 {
    // Bisection over a fixed number of steps: deterministic and precise to
    // far better than one key per thousand blocks.
    let (mut lo, mut hi) = (1e-6f64, 256.0f64);
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if fp_rate_at_load(mid) <= fp_rate {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Blocks needed to hold `items` keys at `fp_rate`; `None` past `blocks_max`.
pub(crate) fn blocks_for(items: u64, fp_rate: f64, blocks_max: u32) -> Option<u32> {
    let per_block = keys_per_block_max(fp_rate);
    let blocks = libm::ceil(items as f64 / per_block).max(1.0);
    if blocks > f64::from(blocks_max) {
        None
    } else {
        Some(blocks as u32)
    }
}

/// How many keys `blocks` blocks hold at `fp_rate`, rounded down, at least 1.
pub(crate) fn items_for(blocks: u32, fp_rate: f64) -> u64 {
    let items = libm::floor(keys_per_block_max(fp_rate) * f64::from(blocks));
    (items as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::hash::filter_key_hash;

    #[test]
    fn mask_sets_one_bit_per_word() {
        for lo in [0u32, 1, 0xdead_beef, u32::MAX] {
            assert!(mask(lo).iter().all(|w| w.count_ones() == 1));
        }
        // Salted multiplications of zero all land on bit 0.
        assert_eq!(mask(0), [1; BLOCK_WORDS]);
    }

    #[test]
    fn inserted_keys_are_found_and_roundtrip_bytes() {
        let mut b = BlockBloom::new(4, 100);
        for i in 0u32..100 {
            b.insert(filter_key_hash(&i.to_le_bytes()));
        }
        for i in 0u32..100 {
            assert!(b.contains(filter_key_hash(&i.to_le_bytes())));
        }
        let back = BlockBloom::from_parts(&b.to_bytes(), 100, 0).expect("whole blocks");
        assert_eq!(back.to_bytes(), b.to_bytes());
        assert!(BlockBloom::from_parts(&[0u8; 31], 1, 0).is_none());
        assert!(BlockBloom::from_parts(&[], 1, 0).is_none());
    }

    #[test]
    fn sizing_is_monotone_and_pinned() {
        // The memo answers exactly what the search computes.
        let at_half_percent = keys_per_block_max(0.005);
        assert_eq!(at_half_percent, search_keys_per_block(0.005));
        assert_eq!(keys_per_block_max(0.005), at_half_percent);
        // Block counts are replicated state (they shape every snapshot), so
        // they are pinned exactly: the default spec's first filter, and 10k keys.
        assert_eq!(blocks_for(100_000, 0.0025, 1 << 20), Some(5_497));
        assert_eq!(blocks_for(10_000, 0.005, 1 << 20), Some(477));
        let at_quarter_percent = keys_per_block_max(0.0025);
        assert!(at_quarter_percent < at_half_percent);
        assert!(fp_rate_at_load(at_half_percent) <= 0.005);
        assert!(fp_rate_at_load(at_half_percent * 1.001) > 0.005);
        assert_eq!(blocks_for(0, 0.005, 10), Some(1));
        assert_eq!(blocks_for(1_000_000_000, 0.005, 10), None);
        assert!(items_for(blocks_for(10_000, 0.005, 1 << 20).unwrap_or(0), 0.005) >= 10_000);
    }
}
