//! The blocking index of one shard: which records are filed under each blocking key this shard
//! owns, and a Bloom filter of the blocking keys present, asked before any lookup.
//!
//! The filter is a chain of split-block Bloom filters (`bloom.rs`), grown like a scalable Bloom
//! filter: filter `i` holds `base_items × 2^i` keys at `fp_rate / 2^(i+1)`, so the chain as a
//! whole stays within the target rate however far it grows. A removed blocking key stays in the
//! bits (a Bloom filter cannot forget), which only adds false positives; when the chain would
//! grow while more than half of what it holds is such dead keys, it is rebuilt from the index
//! instead, so churn cannot grow it without bound. The rebuild walks the ordered index and is
//! part of the apply that triggers it, so every replica rebuilds at the same entry with the same
//! bits. This module is not the routing or the messages that change it: `apply.rs` does those.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::state::bloom::{blocks_for, items_for, BlockBloom, BLOCK_BYTES};
use crate::state::hash::filter_key_hash;

/// Largest bit array of one filter of the chain, in bytes.
pub const EMPI_BLOOM_FILTER_BYTES_MAX: usize = 16 << 20;
/// Most filters in the chain; past it the last filter takes keys beyond its capacity (its false
/// positive rate rises, and it never answers a false negative).
pub const EMPI_BLOOM_CHAIN_MAX: usize = 12;

const BLOOM_BLOCKS_MAX: u32 = (EMPI_BLOOM_FILTER_BYTES_MAX / BLOCK_BYTES) as u32;

/// How the blocking-key Bloom filter is sized: the same on every replica (it is state-machine
/// configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmpiBloomSizing {
    /// Blocking keys the first filter of the chain holds; each later one holds twice the last.
    pub base_items: u64,
    /// Target false-positive rate of a lookup, in parts per million (10000 = 1%).
    pub fp_rate_ppm: u32,
}

impl EmpiBloomSizing {
    /// Blocks and item capacity of filter `i` of the chain.
    fn plan(&self, i: usize) -> (u32, u64) {
        let shift = i.min(62) as u32;
        let items = self.base_items.max(1).saturating_mul(1u64 << shift);
        let fp_rate = f64::from(self.fp_rate_ppm.clamp(1, 500_000)) / 1e6 / f64::from(2u32 << shift.min(30));
        match blocks_for(items, fp_rate, BLOOM_BLOCKS_MAX) {
            Some(blocks) => (blocks, items),
            None => (BLOOM_BLOCKS_MAX, items_for(BLOOM_BLOCKS_MAX, fp_rate)),
        }
    }
}

/// The chain of Bloom filters over the blocking keys ever indexed since the last rebuild.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyBloom {
    /// Oldest first; the last takes new keys. Empty until the first key.
    chain: Vec<BlockBloom>,
}

impl KeyBloom {
    /// Whether the key with hash `h` may be present (never false for one that is).
    pub(crate) fn contains(&self, h: u64) -> bool {
        self.chain.iter().any(|b| b.contains(h))
    }

    /// Keys counted into the chain (live and dead).
    fn items(&self) -> u64 {
        self.chain.iter().map(|b| b.items).sum()
    }

    /// Whether the next new key needs a new filter.
    fn must_grow(&self) -> bool {
        self.chain.last().is_none_or(BlockBloom::is_full) && self.chain.len() < EMPI_BLOOM_CHAIN_MAX
    }

    /// Sets the bits of the key with hash `h`, unless the chain already reports it.
    fn insert(&mut self, h: u64, sizing: EmpiBloomSizing) {
        if self.contains(h) {
            return;
        }
        if self.must_grow() {
            let (blocks, items) = sizing.plan(self.chain.len());
            self.chain.push(BlockBloom::new(blocks, items));
        }
        // Invariant: must_grow() pushed a filter when the chain was empty.
        let Some(last) = self.chain.last_mut() else {
            unreachable!("the chain has a filter after growing")
        };
        last.insert(h);
        last.items += 1;
    }
}

/// One filter of the chain in snapshot form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BloomForm {
    #[serde(with = "serde_bytes")]
    bits: Vec<u8>,
    items: u64,
}

/// The blocking index in snapshot form: blocking keys ascending, each with its records ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexForm {
    blocks: Vec<(String, Vec<String>)>,
    bloom: Vec<BloomForm>,
}

#[cfg(test)]
impl IndexForm {
    /// Drops the Bloom filter's bits, leaving the index: a form whose filter misses keys.
    pub(crate) fn clear_bloom_for_test(&mut self) {
        self.bloom.clear();
    }
}

/// What `BlockIndex::lookup` found for one blocking key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// The Bloom filter rejected the key: it was never indexed (since the last rebuild).
    Rejected,
    /// The filter passed it but the index holds nothing (removed, or a false positive).
    Absent,
    /// The records filed under it, ascending.
    Found(&'a BTreeSet<String>),
}

/// The blocking index and its Bloom filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockIndex {
    /// Per blocking key, its records; a key with no record has no entry.
    blocks: BTreeMap<String, BTreeSet<String>>,
    bloom: KeyBloom,
}

impl BlockIndex {
    /// Files `key` under `block`; whether it was not already.
    pub(crate) fn add(&mut self, block: &str, key: &str, sizing: EmpiBloomSizing) -> bool {
        let set = self.blocks.entry(block.to_string()).or_default();
        if !set.insert(key.to_string()) {
            return false;
        }
        let h = filter_key_hash(block.as_bytes());
        if !self.bloom.contains(h) && self.bloom.must_grow() && self.bloom.items() > 2 * self.blocks.len() as u64 {
            self.rebuild_bloom(sizing);
        } else {
            self.bloom.insert(h, sizing);
        }
        debug_assert!(self.bloom.contains(h));
        true
    }

    /// Drops `key` from `block`; whether it was there. The Bloom filter keeps the block's bits.
    pub(crate) fn remove(&mut self, block: &str, key: &str) -> bool {
        let Some(set) = self.blocks.get_mut(block) else {
            return false;
        };
        let removed = set.remove(key);
        if set.is_empty() {
            self.blocks.remove(block);
        }
        removed
    }

    /// A fresh chain holding exactly the blocking keys indexed now, in key order.
    fn rebuild_bloom(&mut self, sizing: EmpiBloomSizing) {
        let mut bloom = KeyBloom::default();
        for block in self.blocks.keys() {
            bloom.insert(filter_key_hash(block.as_bytes()), sizing);
        }
        self.bloom = bloom;
    }

    /// Looks `block` up, asking the Bloom filter first.
    pub(crate) fn lookup(&self, block: &str) -> Lookup<'_> {
        if !self.bloom.contains(filter_key_hash(block.as_bytes())) {
            return Lookup::Rejected;
        }
        self.blocks.get(block).map_or(Lookup::Absent, Lookup::Found)
    }

    /// Blocking keys indexed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Filters in the Bloom chain, and the keys counted into it (live and dead).
    #[cfg(test)]
    pub(crate) fn bloom_shape(&self) -> (usize, u64) {
        (self.bloom.chain.len(), self.bloom.items())
    }

    /// The blocking keys with their records, ascending.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &BTreeSet<String>)> {
        self.blocks.iter()
    }

    pub(crate) fn to_form(&self) -> IndexForm {
        IndexForm {
            blocks: self
                .blocks
                .iter()
                .map(|(b, keys)| (b.clone(), keys.iter().cloned().collect()))
                .collect(),
            bloom: self
                .bloom
                .chain
                .iter()
                .map(|b| BloomForm {
                    bits: b.to_bytes(),
                    items: b.items,
                })
                .collect(),
        }
    }

    /// Rebuilds the index, refusing a non-canonical form or a filter that misses an indexed
    /// key. `owned` says whether a blocking key belongs to this shard.
    pub(crate) fn from_form(
        form: IndexForm,
        sizing: EmpiBloomSizing,
        owned: impl Fn(&str) -> bool,
    ) -> Result<Self, String> {
        if form.bloom.len() > EMPI_BLOOM_CHAIN_MAX {
            return Err(format!("empi bloom chain of {} filters", form.bloom.len()));
        }
        let mut chain = Vec::with_capacity(form.bloom.len());
        for (i, f) in form.bloom.into_iter().enumerate() {
            let (_, capacity) = sizing.plan(i);
            let b = BlockBloom::from_parts(&f.bits, capacity, f.items)
                .ok_or_else(|| format!("empi bloom filter {i} is not whole blocks"))?;
            chain.push(b);
        }
        let bloom = KeyBloom { chain };
        let mut blocks = BTreeMap::new();
        for (block, keys) in form.blocks {
            if blocks
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= block)
            {
                return Err(format!("empi index not in ascending order at {block:?}"));
            }
            if keys.is_empty() || keys.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("empi index entry {block:?} is empty or not ascending"));
            }
            if !owned(&block) {
                return Err(format!("empi blocking key {block:?} does not belong to this shard"));
            }
            if !bloom.contains(filter_key_hash(block.as_bytes())) {
                return Err(format!("empi bloom filter misses blocking key {block:?}"));
            }
            blocks.insert(block, keys.into_iter().collect());
        }
        Ok(Self { blocks, bloom })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZING: EmpiBloomSizing = EmpiBloomSizing {
        base_items: 64,
        fp_rate_ppm: 10_000,
    };

    #[test]
    fn the_chain_grows_and_churn_rebuilds_it() {
        let mut ix = BlockIndex::default();
        assert_eq!(ix.lookup("b0"), Lookup::Rejected);
        // Filters of 64, 128 and 256 keys: fill all three.
        let mut n = 0;
        while !(ix.bloom.chain.len() == 3 && ix.bloom.must_grow()) {
            assert!(ix.add(&format!("b{n}"), "S:1", SIZING));
            n += 1;
        }
        assert!(!ix.add("b0", "S:1", SIZING), "filed twice");
        assert_eq!(ix.bloom_shape(), (3, 64 + 128 + 256));
        // A key the chain falsely reported present is not counted, so a few more than 448 went in.
        assert!((448..460).contains(&n), "{n} keys filled the chain");
        for i in 0..n {
            assert!(matches!(ix.lookup(&format!("b{i}")), Lookup::Found(s) if s.len() == 1));
        }
        let rejected = (10_000..12_000)
            .filter(|i| ix.lookup(&format!("b{i}")) == Lookup::Rejected)
            .count();
        // The chain's target is 1%; 2000 probes of absent keys.
        assert!(rejected > 1_960, "only {rejected} of 2000 absent keys rejected");
        // Removing leaves the bits: a removed key passes the filter but is absent.
        for i in 0..n - 8 {
            assert!(ix.remove(&format!("b{i}"), "S:1"));
        }
        assert!(!ix.remove("b0", "S:1"));
        assert_eq!(ix.lookup("b0"), Lookup::Absent);
        assert_eq!(ix.len(), 8);
        // The next new key would grow a fourth filter while the chain holds far more dead keys
        // than live ones, so it is rebuilt from the 9 live keys instead.
        ix.add("new", "S:2", SIZING);
        assert_eq!(ix.bloom_shape(), (1, 9));
        assert_eq!(ix.lookup("b0"), Lookup::Rejected, "a dead key is gone after a rebuild");
        assert!(matches!(ix.lookup("new"), Lookup::Found(_)));
        assert!(matches!(ix.lookup(&format!("b{}", n - 1)), Lookup::Found(_)));
    }

    #[test]
    fn round_trips_and_refuses_bad_forms() {
        let mut ix = BlockIndex::default();
        for i in 0..100 {
            ix.add(&format!("b{}", i % 30), &format!("S:{i}"), SIZING);
        }
        let all = |_: &str| true;
        let back = BlockIndex::from_form(ix.to_form(), SIZING, all).unwrap();
        assert_eq!(back, ix);
        let mut unordered = ix.to_form();
        unordered.blocks.swap(0, 1);
        assert!(BlockIndex::from_form(unordered, SIZING, all).is_err());
        let mut empty_entry = ix.to_form();
        empty_entry.blocks[0].1.clear();
        assert!(BlockIndex::from_form(empty_entry, SIZING, all).is_err());
        let mut no_bits = ix.to_form();
        no_bits.bloom.clear();
        assert!(BlockIndex::from_form(no_bits, SIZING, all)
            .unwrap_err()
            .contains("misses"));
        let mut torn = ix.to_form();
        torn.bloom[0].bits.pop();
        assert!(BlockIndex::from_form(torn, SIZING, all).is_err());
        assert!(BlockIndex::from_form(ix.to_form(), SIZING, |b| b != "b7").is_err());
    }
}
