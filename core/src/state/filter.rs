//! Named dynamic Bloom filters: a scalable chain of split-block Bloom filters
//! for the mutable tail, sealed on request into immutable xorf `BinaryFuse8`s.
//!
//! A filter answers "maybe present" or "certainly absent"; it never forgets a
//! key. The tail keeps the exact 64-bit hashes of its keys so that sealing can
//! build a fuse filter (≈9 bits per key, ≈0.39% false positives) from them,
//! after which the tail's bits and hashes are dropped. This module is not the
//! state machine: it neither routes nor checks request limits beyond its own.

use std::collections::BTreeSet;
use std::fmt;

use plexus_proto::{ErrorReply, FilterSpec};
use serde::{Deserialize, Serialize};
use xorf::{BinaryFuse8, Filter as _};

use super::bloom::{blocks_for, items_for, BlockBloom, BLOCK_BYTES};
use super::hash::filter_key_hash;

/// Largest bit array of one block filter in the chain, in bytes.
pub const FILTER_BLOCK_BYTES_MAX: usize = 16 << 20;
/// Most block filters in one filter's mutable tail; past them, adds are
/// refused until the filter is sealed. Four doubling filters hold 15 times
/// `expected_items`, which bounds the tail's bits and exact hashes.
pub const FILTER_TAIL_BLOOMS_MAX: usize = 4;
/// Most sealed fuse filters per named filter; each adds ≈0.39% false positives.
pub const FILTER_SEALED_MAX: usize = 32;
/// Longest filter name, in bytes.
pub const FILTER_NAME_BYTES_MAX: usize = 256;
/// Smallest accepted `FilterSpec::fp_rate_ppm`.
pub const FILTER_FP_RATE_PPM_MIN: u32 = 10;
/// Largest accepted `FilterSpec::fp_rate_ppm`.
pub const FILTER_FP_RATE_PPM_MAX: u32 = 500_000;

const BLOCKS_MAX: u32 = (FILTER_BLOCK_BYTES_MAX / BLOCK_BYTES) as u32;

/// Blocks and item capacity of each block filter a chain may add, in order.
///
/// Filter `i` holds twice the items of filter `i - 1` at half its target
/// false-positive rate (`p / 2^(i+1)`), so the whole tail stays at or below
/// the spec's rate however many filters it grows (Almeida et al., "Scalable
/// Bloom Filters"). Filters that would exceed `FILTER_BLOCK_BYTES_MAX` are
/// cut to that size and their capacity to what it holds.
type Plan = [(u32, u64); FILTER_TAIL_BLOOMS_MAX];

fn plan_for(spec: &FilterSpec) -> Result<Plan, ErrorReply> {
    if spec.expected_items == 0 {
        return Err(ErrorReply::BadRequest(
            "filter expected_items must be at least 1".into(),
        ));
    }
    if !(FILTER_FP_RATE_PPM_MIN..=FILTER_FP_RATE_PPM_MAX).contains(&spec.fp_rate_ppm) {
        return Err(ErrorReply::BadRequest(format!(
            "filter fp_rate_ppm {} is outside {FILTER_FP_RATE_PPM_MIN}..={FILTER_FP_RATE_PPM_MAX}",
            spec.fp_rate_ppm
        )));
    }
    let mut plan = [(0u32, 0u64); FILTER_TAIL_BLOOMS_MAX];
    let mut fp_rate = f64::from(spec.fp_rate_ppm) / 1e6;
    for (i, slot) in plan.iter_mut().enumerate() {
        fp_rate *= 0.5;
        let items = spec.expected_items.saturating_mul(1u64 << i);
        *slot = match blocks_for(items, fp_rate, BLOCKS_MAX) {
            Some(blocks) => (blocks, items),
            None if i == 0 => {
                return Err(ErrorReply::BadRequest(format!(
                    "filter of {} items at {} ppm needs more than {FILTER_BLOCK_BYTES_MAX} bytes",
                    spec.expected_items, spec.fp_rate_ppm
                )))
            }
            None => (BLOCKS_MAX, items_for(BLOCKS_MAX, fp_rate)),
        };
    }
    Ok(plan)
}

/// A sealed, immutable part of a filter.
#[derive(Clone)]
pub(crate) struct Sealed(BinaryFuse8);

impl PartialEq for Sealed {
    fn eq(&self, other: &Self) -> bool {
        self.0.descriptor == other.0.descriptor && self.0.fingerprints == other.0.fingerprints
    }
}

impl Eq for Sealed {}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("fingerprint_bytes", &self.0.fingerprints.len())
            .finish()
    }
}

/// A sealed filter in snapshot form: xorf's descriptor fields and bytes.
///
/// xorf's own serde form flattens the descriptor, which postcard cannot
/// encode, and would trust its indexes; this form is checked on load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedForm {
    seed: u64,
    segment_length: u32,
    segment_length_mask: u32,
    segment_count_length: u32,
    fingerprints: Vec<u8>,
}

impl Sealed {
    fn to_form(&self) -> SealedForm {
        let d = &self.0.descriptor;
        SealedForm {
            seed: d.seed,
            segment_length: d.segment_length,
            segment_length_mask: d.segment_length_mask,
            segment_count_length: d.segment_count_length,
            fingerprints: self.0.fingerprints.to_vec(),
        }
    }

    /// Rebuilds a fuse filter, refusing descriptors whose probes could index
    /// past the fingerprints or overflow (xorf's `contains` trusts them).
    fn from_form(form: SealedForm) -> Result<Self, &'static str> {
        let sl = form.segment_length;
        if sl == 0 || !sl.is_power_of_two() || form.segment_length_mask != sl - 1 {
            return Err("sealed filter segment length is not a power of two with its mask");
        }
        if !form.segment_count_length.is_multiple_of(sl) {
            return Err("sealed filter segment count length is not whole segments");
        }
        // Probes reach at most segment_count_length + 2 * segment_length - 1,
        // computed in u32 by xorf, so that sum must fit and be backed by bytes.
        let reach = u64::from(form.segment_count_length) + 2 * u64::from(sl);
        if reach > u64::from(u32::MAX) || (form.fingerprints.len() as u64) < reach {
            return Err("sealed filter fingerprints are shorter than its descriptor's reach");
        }
        Ok(Self(BinaryFuse8 {
            descriptor: xorf::Descriptor {
                seed: form.seed,
                segment_length: sl,
                segment_length_mask: form.segment_length_mask,
                segment_count_length: form.segment_count_length,
            },
            fingerprints: form.fingerprints.into_boxed_slice(),
        }))
    }
}

/// One block filter of the tail in snapshot form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BloomForm {
    bits: Vec<u8>,
    capacity_items: u64,
    items: u64,
}

/// A named filter in snapshot form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FilterForm {
    expected_items: u64,
    fp_rate_ppm: u32,
    sealed: Vec<SealedForm>,
    tail: Vec<BloomForm>,
    tail_hashes: Vec<u64>,
}

/// One named filter.
#[derive(Clone, PartialEq)]
pub(crate) struct NamedFilter {
    spec: FilterSpec,
    /// Derived from `spec`; kept to avoid re-running the sizing search.
    plan: Plan,
    sealed: Vec<Sealed>,
    /// The scalable chain; the last one takes new keys. Empty after a seal
    /// until the next add, so an idle sealed filter costs no tail memory.
    tail: Vec<BlockBloom>,
    /// Exact hashes of the tail's keys, for sealing; one per counted item.
    tail_hashes: BTreeSet<u64>,
}

impl fmt::Debug for NamedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedFilter")
            .field("spec", &self.spec)
            .field("sealed", &self.sealed)
            .field("tail", &self.tail)
            .field("tail_hashes", &self.tail_hashes.len())
            .finish()
    }
}

impl NamedFilter {
    /// A new, empty filter; `BadRequest` for a spec out of bounds.
    pub(crate) fn new(spec: FilterSpec) -> Result<Self, ErrorReply> {
        let plan = plan_for(&spec)?;
        Ok(Self {
            spec,
            plan,
            sealed: Vec::new(),
            tail: Vec::new(),
            tail_hashes: BTreeSet::new(),
        })
    }

    /// The spec the filter was created with.
    pub(crate) fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    fn contains_hash(&self, h: u64) -> bool {
        self.sealed.iter().any(|s| s.0.contains(&h)) || self.tail.iter().any(|b| b.contains(h))
    }

    /// Whether `key` may have been added.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.contains_hash(filter_key_hash(key))
    }

    /// New keys the tail can still take before it must be sealed.
    fn capacity_left(&self) -> u64 {
        let current = self.tail.last().map_or(0, |b| b.capacity_items.saturating_sub(b.items));
        self.plan[self.tail.len()..]
            .iter()
            .fold(current, |acc, (_, items)| acc.saturating_add(*items))
    }

    /// Adds keys; true if any key was absent by the filter's own test before
    /// its insertion (so false means every key already tested present,
    /// possibly falsely). The whole batch is refused, unapplied, if the tail
    /// might fill up part way.
    pub(crate) fn add(&mut self, keys: &[Vec<u8>]) -> Result<bool, ErrorReply> {
        if (keys.len() as u64) > self.capacity_left() {
            return Err(ErrorReply::BadRequest(format!(
                "filter tail can take {} more keys, {} given: seal the filter",
                self.capacity_left(),
                keys.len()
            )));
        }
        let mut changed = false;
        for key in keys {
            let h = filter_key_hash(key);
            // A sealed filter never forgets, so a key it reports needs
            // nothing more.
            if self.sealed.iter().any(|s| s.0.contains(&h)) {
                continue;
            }
            changed |= !self.tail.iter().any(|b| b.contains(h));
            // A tail hit may be a false positive of the bits, so the exact
            // hash set decides whether the key is new to the tail.
            if !self.tail_hashes.insert(h) {
                continue;
            }
            let bloom = match self.tail.last_mut() {
                Some(b) if !b.is_full() => b,
                _ => {
                    // capacity_left() covered this key, so the plan has a slot.
                    let (blocks, items) = self.plan[self.tail.len()];
                    self.tail.push(BlockBloom::new(blocks, items));
                    let last = self.tail.len() - 1;
                    &mut self.tail[last]
                }
            };
            bloom.insert(h);
            bloom.items += 1;
        }
        debug_assert_eq!(
            self.tail_hashes.len() as u64,
            self.tail.iter().map(|b| b.items).sum::<u64>()
        );
        Ok(changed)
    }

    /// Seals the tail into a fuse filter; false if the tail was empty.
    pub(crate) fn seal(&mut self) -> Result<bool, ErrorReply> {
        if self.tail_hashes.is_empty() {
            return Ok(false);
        }
        if self.sealed.len() >= FILTER_SEALED_MAX {
            return Err(ErrorReply::BadRequest(format!(
                "filter already has {FILTER_SEALED_MAX} sealed parts"
            )));
        }
        // A BTreeSet iterates sorted and distinct, as the fuse build requires.
        let keys: Vec<u64> = self.tail_hashes.iter().copied().collect();
        let fuse = BinaryFuse8::try_from(&keys)
            .map_err(|e| ErrorReply::Internal(format!("sealing {} keys failed: {e}", keys.len())))?;
        self.sealed.push(Sealed(fuse));
        self.tail.clear();
        self.tail_hashes.clear();
        Ok(true)
    }

    /// Number of sealed parts.
    #[cfg(test)]
    pub(crate) fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    /// Number of block filters in the tail.
    #[cfg(test)]
    pub(crate) fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// Total bytes of the tail's bit arrays.
    #[cfg(test)]
    pub(crate) fn tail_bytes(&self) -> usize {
        self.tail.iter().map(BlockBloom::bytes).sum()
    }

    pub(crate) fn to_form(&self) -> FilterForm {
        FilterForm {
            expected_items: self.spec.expected_items,
            fp_rate_ppm: self.spec.fp_rate_ppm,
            sealed: self.sealed.iter().map(Sealed::to_form).collect(),
            tail: self
                .tail
                .iter()
                .map(|b| BloomForm {
                    bits: b.to_bytes(),
                    capacity_items: b.capacity_items,
                    items: b.items,
                })
                .collect(),
            tail_hashes: self.tail_hashes.iter().copied().collect(),
        }
    }

    /// Rebuilds a filter from a snapshot, checking every structural
    /// invariant the code above relies on.
    pub(crate) fn from_form(form: FilterForm) -> Result<Self, String> {
        let spec = FilterSpec {
            expected_items: form.expected_items,
            fp_rate_ppm: form.fp_rate_ppm,
        };
        let mut f = Self::new(spec).map_err(|e| e.to_string())?;
        if form.sealed.len() > FILTER_SEALED_MAX || form.tail.len() > FILTER_TAIL_BLOOMS_MAX {
            return Err("filter has too many parts".into());
        }
        for s in form.sealed {
            f.sealed.push(Sealed::from_form(s)?);
        }
        for (i, b) in form.tail.into_iter().enumerate() {
            let (blocks, capacity) = f.plan[i];
            if b.capacity_items != capacity || b.bits.len() != blocks as usize * BLOCK_BYTES || b.items > capacity {
                return Err(format!("filter tail block {i} does not match its spec"));
            }
            let bloom = BlockBloom::from_parts(&b.bits, b.capacity_items, b.items)
                .ok_or_else(|| format!("filter tail block {i} is not whole blocks"))?;
            f.tail.push(bloom);
        }
        if f.tail.iter().rev().skip(1).any(|b| !b.is_full()) {
            return Err("filter tail block other than the last is not full".into());
        }
        let hashes_len = form.tail_hashes.len();
        f.tail_hashes = form.tail_hashes.into_iter().collect();
        if f.tail_hashes.len() != hashes_len
            || hashes_len as u64 != f.tail.iter().map(|b| b.items).sum::<u64>()
            || f.tail_hashes.iter().any(|h| !f.tail.iter().any(|b| b.contains(*h)))
        {
            return Err("filter tail hashes disagree with its bits".into());
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("item-{i}").into_bytes()
    }

    fn keys(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        range.map(key).collect()
    }

    #[test]
    fn spec_bounds() {
        assert!(NamedFilter::new(FilterSpec {
            expected_items: 0,
            fp_rate_ppm: 5_000
        })
        .is_err());
        assert!(NamedFilter::new(FilterSpec {
            expected_items: 10,
            fp_rate_ppm: 9
        })
        .is_err());
        assert!(NamedFilter::new(FilterSpec {
            expected_items: 10,
            fp_rate_ppm: 500_001
        })
        .is_err());
        assert!(NamedFilter::new(FilterSpec {
            expected_items: 1 << 40,
            fp_rate_ppm: 5_000
        })
        .is_err());
        assert!(NamedFilter::new(FilterSpec::default()).is_ok());
    }

    #[test]
    fn no_false_negatives_over_10k_keys() {
        let mut f = NamedFilter::new(FilterSpec {
            expected_items: 10_000,
            fp_rate_ppm: 5_000,
        })
        .unwrap();
        assert_eq!(f.add(&keys(0..10_000)), Ok(true));
        assert_eq!(f.tail_len(), 1);
        assert!((0..10_000).all(|i| f.contains(&key(i))));
        // Adding them again changes nothing by the filter's own test.
        assert_eq!(f.add(&keys(0..10_000)), Ok(false));
        assert_eq!(f.tail_len(), 1);
    }

    #[test]
    fn measured_fp_rate_is_near_target() {
        let mut f = NamedFilter::new(FilterSpec {
            expected_items: 10_000,
            fp_rate_ppm: 5_000,
        })
        .unwrap();
        f.add(&keys(0..10_000)).unwrap();
        let probes = 100_000u64;
        let hits = (1_000_000..1_000_000 + probes).filter(|i| f.contains(&key(*i))).count() as u64;
        // The first block filter targets half the spec's rate (the chain's
        // bound is the spec's rate); both must hold with room for noise.
        assert!(
            hits * 1_000_000 < probes * 5_000 * 2,
            "{hits} false positives in {probes}"
        );
        assert!(
            hits > 0,
            "a 0.25% filter with no false positive in 100k probes is suspicious"
        );
    }

    #[test]
    fn chain_grows_when_full_and_keeps_every_key() {
        let mut f = NamedFilter::new(FilterSpec {
            expected_items: 100,
            fp_rate_ppm: 5_000,
        })
        .unwrap();
        f.add(&keys(0..100)).unwrap();
        assert_eq!(f.tail_len(), 1);
        f.add(&keys(100..101)).unwrap();
        assert_eq!(f.tail_len(), 2);
        f.add(&keys(101..1_000)).unwrap();
        // 100 + 200 + 400 < 1000 <= 100 + 200 + 400 + 800.
        assert_eq!(f.tail_len(), 4);
        assert!((0..1_000).all(|i| f.contains(&key(i))));
    }

    #[test]
    fn full_tail_refuses_whole_batch() {
        let mut f = NamedFilter::new(FilterSpec {
            expected_items: 1,
            fp_rate_ppm: 5_000,
        })
        .unwrap();
        // 1 + 2 + 4 + 8 = 15 keys fit before a seal is required.
        assert_eq!(f.capacity_left(), 15);
        assert!(matches!(f.add(&keys(0..16)), Err(ErrorReply::BadRequest(_))));
        assert_eq!(f.tail_len(), 0);
        f.add(&keys(0..15)).unwrap();
        assert_eq!(f.tail_len(), FILTER_TAIL_BLOOMS_MAX);
        assert!(f.add(&keys(15..16)).is_err());
        assert_eq!(f.seal(), Ok(true));
        assert_eq!(f.add(&keys(15..16)), Ok(true));
    }

    #[test]
    fn seal_keeps_every_key_and_fp_after_seal() {
        let mut f = NamedFilter::new(FilterSpec {
            expected_items: 20_000,
            fp_rate_ppm: 5_000,
        })
        .unwrap();
        f.add(&keys(0..10_000)).unwrap();
        assert_eq!(f.seal(), Ok(true));
        assert_eq!((f.sealed_len(), f.tail_len(), f.tail_bytes()), (1, 0, 0));
        assert!((0..10_000).all(|i| f.contains(&key(i))));
        let probes = 100_000u64;
        let hits = (1_000_000..1_000_000 + probes).filter(|i| f.contains(&key(*i))).count() as u64;
        // BinaryFuse8 is ≈0.39%; allow twice that.
        assert!(
            hits * 1_000_000 < probes * 3_900 * 2,
            "{hits} false positives in {probes}"
        );
        // Keys already sealed are not new; more keys go to a fresh tail.
        assert_eq!(f.add(&keys(0..10)), Ok(false));
        assert_eq!(f.tail_len(), 0);
        assert_eq!(f.add(&keys(10_000..10_010)), Ok(true));
        assert_eq!(f.tail_len(), 1);
        assert_eq!(f.seal(), Ok(true));
        assert_eq!(f.seal(), Ok(false));
        assert!((0..10_010).all(|i| f.contains(&key(i))));
    }

    #[test]
    fn seal_of_one_and_two_keys() {
        for n in 1..=2 {
            let mut f = NamedFilter::new(FilterSpec::default()).unwrap();
            f.add(&keys(0..n)).unwrap();
            assert_eq!(f.seal(), Ok(true));
            assert!((0..n).all(|i| f.contains(&key(i))));
        }
    }

    #[test]
    fn fuse_build_is_deterministic() {
        // Guards against xorf's `uniform-random` feature being unified in,
        // which would fill unused fingerprints from the thread RNG and make
        // replicas' snapshots differ.
        let build = || {
            let mut f = NamedFilter::new(FilterSpec::default()).unwrap();
            f.add(&keys(0..5_000)).unwrap();
            f.seal().unwrap();
            f.to_form()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn form_roundtrip_and_rejects_bad_descriptor() {
        let mut f = NamedFilter::new(FilterSpec {
            expected_items: 50,
            fp_rate_ppm: 5_000,
        })
        .unwrap();
        f.add(&keys(0..40)).unwrap();
        f.seal().unwrap();
        f.add(&keys(40..120)).unwrap();
        let form = f.to_form();
        assert_eq!(NamedFilter::from_form(form.clone()).unwrap(), f);

        let mut bad = form.clone();
        bad.sealed[0].fingerprints.truncate(3);
        assert!(NamedFilter::from_form(bad).is_err());
        let mut bad = form.clone();
        bad.sealed[0].segment_length = 3;
        assert!(NamedFilter::from_form(bad).is_err());
        let mut bad = form.clone();
        bad.tail_hashes.pop();
        assert!(NamedFilter::from_form(bad).is_err());
        let mut bad = form;
        bad.tail[0].bits.pop();
        assert!(NamedFilter::from_form(bad).is_err());
    }
}
