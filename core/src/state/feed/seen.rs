//! A reader's seen filter: which posts the user has marked seen, as two generations of
//! split-block Bloom filters.
//!
//! A Bloom filter that only grows fills up and then answers "seen" for everything. This one
//! rotates instead: inserts go to the current generation; once it holds the items it was sized
//! for, it becomes the previous generation (the one before is dropped) and a new current one
//! starts. A lookup asks both, so the last `items_per_generation` to `2 × items_per_generation`
//! posts marked seen are remembered, and each generation is sized at half the target false
//! positive rate so the two together stay within it. Posts older than that fall out of the
//! home timeline (capped) long before, so forgetting them costs nothing.

use plexus_proto::PostRef;
use serde::{Deserialize, Serialize};

use crate::state::bloom::{blocks_for, BlockBloom};
use crate::state::hash::filter_key_hash;

/// Blocks of one generation, at most (256 KiB): bounds what a limit setting can cost per user.
const SEEN_BLOCKS_MAX: u32 = 8_192;

/// How seen filters are sized: the same on every replica (it is state-machine configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenSizing {
    /// Posts one generation holds before the filter rotates.
    pub items_per_generation: u64,
    /// Target false-positive rate of a lookup, in parts per million (5000 = 0.5%).
    pub fp_rate_ppm: u32,
}

impl SeenSizing {
    /// Blocks of one generation: sized at half the target rate, since a lookup asks two.
    fn blocks(&self) -> u32 {
        let fp_rate = f64::from(self.fp_rate_ppm.clamp(1, 500_000)) / 1e6 / 2.0;
        blocks_for(self.items_per_generation.max(1), fp_rate, SEEN_BLOCKS_MAX).unwrap_or(SEEN_BLOCKS_MAX)
    }
}

/// The hash a post is filed under.
pub(crate) fn post_hash(post: PostRef) -> u64 {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&post.author.to_le_bytes());
    key[8..].copy_from_slice(&post.id.to_le_bytes());
    filter_key_hash(&key)
}

/// One user's seen filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeenFilter {
    current: BlockBloom,
    previous: Option<BlockBloom>,
}

/// One generation in snapshot form: its bits and item count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenerationForm {
    #[serde(with = "serde_bytes")]
    bits: Vec<u8>,
    items: u64,
}

impl GenerationForm {
    fn of(b: &BlockBloom) -> Self {
        Self {
            bits: b.to_bytes(),
            items: b.items,
        }
    }

    fn restore(&self, capacity_items: u64) -> Result<BlockBloom, String> {
        BlockBloom::from_parts(&self.bits, capacity_items, self.items)
            .ok_or_else(|| "seen filter bits are not whole blocks".to_string())
    }
}

/// A seen filter in snapshot form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeenForm {
    current: GenerationForm,
    previous: Option<GenerationForm>,
}

impl SeenFilter {
    /// An empty filter.
    pub(crate) fn new(sizing: SeenSizing) -> Self {
        Self {
            current: BlockBloom::new(sizing.blocks(), sizing.items_per_generation.max(1)),
            previous: None,
        }
    }

    /// Whether `post` may have been marked seen (false positives at about the sized rate).
    pub(crate) fn contains(&self, post: PostRef) -> bool {
        let h = post_hash(post);
        self.current.contains(h) || self.previous.as_ref().is_some_and(|p| p.contains(h))
    }

    /// Marks `post` seen; whether it was not (as far as the filter can tell) before.
    ///
    /// A post the previous generation holds (or seems to: a false positive) still goes into the
    /// current one, so that it is not forgotten early when the previous generation is dropped.
    pub(crate) fn insert(&mut self, post: PostRef, sizing: SeenSizing) -> bool {
        let h = post_hash(post);
        if self.current.contains(h) {
            return false;
        }
        let was_seen = self.previous.as_ref().is_some_and(|p| p.contains(h));
        if self.current.is_full() {
            let fresh = BlockBloom::new(sizing.blocks(), sizing.items_per_generation.max(1));
            self.previous = Some(std::mem::replace(&mut self.current, fresh));
        }
        self.current.insert(h);
        self.current.items += 1;
        debug_assert!(self.current.contains(h));
        !was_seen
    }

    pub(crate) fn to_form(&self) -> SeenForm {
        SeenForm {
            current: GenerationForm::of(&self.current),
            previous: self.previous.as_ref().map(GenerationForm::of),
        }
    }

    /// Rebuilds a filter; capacities come from `sizing`, so a changed setting applies from the
    /// next rotation.
    pub(crate) fn from_form(form: SeenForm, sizing: SeenSizing) -> Result<Self, String> {
        let capacity = sizing.items_per_generation.max(1);
        let current = form.current.restore(capacity)?;
        let previous = form.previous.map(|p| p.restore(capacity)).transpose()?;
        Ok(Self { current, previous })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZING: SeenSizing = SeenSizing {
        items_per_generation: 1_000,
        fp_rate_ppm: 5_000,
    };

    fn post(i: u64) -> PostRef {
        PostRef {
            author: i % 97,
            id: (i << 20) | (i % 7),
        }
    }

    #[test]
    fn remembers_two_generations_and_stays_near_its_rate() {
        let mut f = SeenFilter::new(SIZING);
        for i in 0..2_500 {
            assert!(f.insert(post(i), SIZING) || f.contains(post(i)));
        }
        // The last two generations (at least the last 1,000 inserts and up to 2,000) are held.
        for i in 1_500..2_500 {
            assert!(f.contains(post(i)), "post {i} forgotten too early");
        }
        assert!(!f.insert(post(2_400), SIZING), "a seen post is not new");
        // False positives over posts never inserted stay within the 0.5% target (with slack for
        // sampling noise over 20,000 probes).
        let fp = (1_000_000..1_020_000).filter(|i| f.contains(post(*i))).count();
        assert!(fp < 20_000 * 8 / 1_000, "{fp} false positives in 20000");
        // The oldest generation was dropped: most of the first 500 are forgotten.
        let kept = (0..500).filter(|i| f.contains(post(*i))).count();
        assert!(kept < 50, "{kept} of the oldest 500 still held");
    }

    #[test]
    fn round_trips_through_its_form() {
        let mut f = SeenFilter::new(SIZING);
        for i in 0..1_200 {
            f.insert(post(i), SIZING);
        }
        let back = SeenFilter::from_form(f.to_form(), SIZING).unwrap();
        assert_eq!(back, f);
        let mut bad = f.to_form();
        bad.current.bits.pop();
        assert!(SeenFilter::from_form(bad, SIZING).is_err());
    }
}
