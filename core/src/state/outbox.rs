//! A cross-shard outbox: messages this shard owes other shards. The graph's outbox carries
//! in-edge updates (`EdgeUpdate`), the feed's carries fan-out (`FeedMsg`), identity matching's
//! carries index and membership changes (`EmpiMsg`); each is its own `Outbox<T>` with its own
//! sequences.
//!
//! Each destination shard has its own sequence, starting at 1, so the
//! receiver can apply exactly once by remembering the last sequence it
//! applied from each source. Entries stay until the destination confirms
//! them with `OutboxTrim`, so nothing committed is lost across leader changes
//! or crashes. This module does not deliver: a leader-side task reads
//! `outbox_pending` and proposes `EdgeDelivery` (or `FeedDelivery`) on the destination, which
//! applies it through a `Delivered` table.

use std::collections::{BTreeMap, VecDeque};

use plexus_proto::ShardId;
use serde::{Deserialize, Serialize};

use crate::command::{EdgeUpdate, EmpiMsg, FeedMsg};

/// Largest sequence number a restored outbox may hold.
const SEQ_MAX: u64 = 1 << 63;

/// What an outbox carries: its size in bytes, for caps and delivery batches.
pub(crate) trait OutboxItem: Clone {
    /// Approximate bytes this item holds.
    fn bytes(&self) -> usize;
}

impl OutboxItem for EdgeUpdate {
    fn bytes(&self) -> usize {
        17
    }
}

impl OutboxItem for FeedMsg {
    fn bytes(&self) -> usize {
        FeedMsg::bytes(self)
    }
}

impl OutboxItem for EmpiMsg {
    fn bytes(&self) -> usize {
        EmpiMsg::bytes(self)
    }
}

/// Undelivered items for one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DestQueue<T> {
    /// Sequence number of `entries[0]` (or of the next push when empty).
    first_seq: u64,
    /// Items in sequence order.
    entries: VecDeque<T>,
}

impl<T> DestQueue<T> {
    /// Sequence number the next push gets.
    fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }
}

/// Every destination's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outbox<T> {
    /// Per destination; kept when empty because its sequence must continue.
    dests: BTreeMap<ShardId, DestQueue<T>>,
    /// Entries over all destinations; derived, not serialised.
    #[serde(skip)]
    total: usize,
    /// `OutboxItem::bytes` over all entries; derived, not serialised.
    #[serde(skip)]
    bytes: usize,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            dests: BTreeMap::new(),
            total: 0,
            bytes: 0,
        }
    }
}

impl<T: OutboxItem> Outbox<T> {
    /// Entries waiting over all destinations.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// Approximate bytes waiting over all destinations.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `update` for `dest`; answers its sequence number. The caller
    /// checks the limit first, so that a refused write changes nothing.
    pub(crate) fn push(&mut self, dest: ShardId, item: T) -> u64 {
        let q = self.dests.entry(dest).or_insert_with(|| DestQueue {
            first_seq: 1,
            entries: VecDeque::new(),
        });
        let seq = q.next_seq();
        self.bytes += item.bytes();
        q.entries.push_back(item);
        self.total += 1;
        seq
    }

    /// Drops `dest`'s entries up to and including `upto_seq`; answers how
    /// many were dropped. A sequence beyond what was ever queued trims all.
    pub(crate) fn trim(&mut self, dest: ShardId, upto_seq: u64) -> u64 {
        let Some(q) = self.dests.get_mut(&dest) else {
            return 0;
        };
        let mut dropped = 0u64;
        while q.first_seq <= upto_seq {
            let Some(item) = q.entries.pop_front() else { break };
            self.bytes -= item.bytes();
            q.first_seq += 1;
            dropped += 1;
        }
        self.total -= dropped as usize;
        dropped
    }

    /// Per destination that still has entries, its first ones: at most `items_max`, and no more
    /// than `bytes_max` bytes except that the first entry always goes (an entry larger than the
    /// budget must still be delivered).
    pub(crate) fn pending(&self, items_max: usize, bytes_max: usize) -> Vec<(ShardId, u64, Vec<T>)> {
        if items_max == 0 {
            return Vec::new();
        }
        self.dests
            .iter()
            .filter(|(_, q)| !q.entries.is_empty())
            .map(|(dest, q)| {
                let mut bytes = 0usize;
                let items = q
                    .entries
                    .iter()
                    .take(items_max)
                    .enumerate()
                    .take_while(|(i, item)| {
                        bytes += item.bytes();
                        *i == 0 || bytes <= bytes_max
                    })
                    .map(|(_, item)| item.clone())
                    .collect();
                (*dest, q.first_seq, items)
            })
            .collect()
    }

    /// Recomputes the derived total after decoding and checks sequences.
    pub(crate) fn restore(&mut self) -> Result<(), String> {
        let mut total = 0usize;
        let mut bytes = 0usize;
        for (dest, q) in &self.dests {
            // Sequences past 2^63 cannot come from counting pushes; refusing
            // them keeps every later `+ 1` far from overflow.
            if q.first_seq == 0 || q.first_seq.saturating_add(q.entries.len() as u64) > SEQ_MAX {
                return Err(format!("outbox to shard {dest} has an invalid sequence"));
            }
            total += q.entries.len();
            bytes += q.entries.iter().map(OutboxItem::bytes).sum::<usize>();
        }
        self.total = total;
        self.bytes = bytes;
        Ok(())
    }

    /// Debug check: the derived totals match.
    pub(crate) fn check(&self) -> bool {
        self.total == self.dests.values().map(|q| q.entries.len()).sum::<usize>()
            && self.bytes
                == self
                    .dests
                    .values()
                    .flat_map(|q| &q.entries)
                    .map(OutboxItem::bytes)
                    .sum::<usize>()
    }
}

/// The receiving side: per source shard, the last sequence number applied here, so a batch
/// delivered again (a retry, a new leader) is applied once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delivered {
    upto: BTreeMap<ShardId, u64>,
}

impl Delivered {
    /// Checks a batch of `len` items from `from_shard` numbered from `first_seq`: answers how many
    /// leading items were applied before (to skip) and the new high-water mark, without recording
    /// it (`record` does, once the batch is applied). A batch starting past the next expected
    /// number is refused: something in between was lost.
    pub(crate) fn admit(&self, from_shard: ShardId, first_seq: u64, len: usize) -> Result<(usize, u64), String> {
        let upto = self.upto(from_shard);
        if len == 0 {
            return Ok((0, upto));
        }
        if first_seq == 0 {
            return Err("delivery sequence numbers start at 1".into());
        }
        let last_seq = first_seq
            .checked_add(len as u64 - 1)
            .ok_or_else(|| "delivery sequence overflows".to_string())?;
        if first_seq > upto.saturating_add(1) {
            return Err(format!(
                "gap: shard {from_shard} delivered up to {upto}, batch starts at {first_seq}"
            ));
        }
        // Items numbered first_seq..=upto were applied before; first_seq >= 1, so
        // `upto - first_seq + 1` cannot overflow.
        let skip = if first_seq > upto {
            0
        } else {
            (upto - first_seq + 1).min(len as u64) as usize
        };
        Ok((skip, upto.max(last_seq)))
    }

    /// Records that `from_shard`'s items up to `upto` are applied.
    pub(crate) fn record(&mut self, from_shard: ShardId, upto: u64) {
        debug_assert!(upto >= self.upto(from_shard));
        self.upto.insert(from_shard, upto);
    }

    /// The last sequence applied from `from_shard`.
    pub(crate) fn upto(&self, from_shard: ShardId) -> u64 {
        self.upto.get(&from_shard).copied().unwrap_or(0)
    }

    /// `(source shard, last applied)` pairs, ascending by shard.
    pub(crate) fn pairs(&self) -> Vec<(ShardId, u64)> {
        self.upto.iter().map(|(s, u)| (*s, *u)).collect()
    }

    /// The table from `pairs`; a shard named twice is an error.
    pub(crate) fn from_pairs(pairs: &[(ShardId, u64)]) -> Result<Self, String> {
        let upto: BTreeMap<ShardId, u64> = pairs.iter().copied().collect();
        if upto.len() != pairs.len() {
            return Err("names a shard twice".into());
        }
        Ok(Self { upto })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(src: u64, dst: u64, add: bool) -> EdgeUpdate {
        EdgeUpdate { src, dst, add }
    }

    #[test]
    fn sequences_per_destination_and_trim() {
        let mut o: Outbox<EdgeUpdate> = Outbox::default();
        assert_eq!(o.push(2, up(1, 10, true)), 1);
        assert_eq!(o.push(2, up(1, 11, true)), 2);
        assert_eq!(o.push(5, up(1, 12, true)), 1);
        assert_eq!(o.push(2, up(1, 10, false)), 3);
        assert_eq!(o.len(), 4);
        assert_eq!(
            o.pending(2, usize::MAX),
            vec![
                (2, 1, vec![up(1, 10, true), up(1, 11, true)]),
                (5, 1, vec![up(1, 12, true)])
            ]
        );
        assert_eq!(o.trim(2, 2), 2);
        assert_eq!(o.trim(2, 2), 0);
        assert_eq!(o.trim(9, 2), 0);
        assert_eq!(
            o.pending(10, usize::MAX),
            vec![(2, 3, vec![up(1, 10, false)]), (5, 1, vec![up(1, 12, true)])]
        );
        assert_eq!(o.trim(5, u64::MAX), 1);
        assert_eq!(o.pending(10, usize::MAX), vec![(2, 3, vec![up(1, 10, false)])]);
        // A drained destination keeps counting.
        assert_eq!(o.push(5, up(3, 12, true)), 2);
        assert_eq!(o.len(), 2);
        assert!(o.pending(0, usize::MAX).is_empty());
        assert!(o.check());
        assert_eq!(o.bytes(), 2 * 17);
        // A byte budget cuts a batch, but never below one item.
        o.push(2, up(1, 13, true));
        assert_eq!(
            o.pending(10, 20),
            vec![(2, 3, vec![up(1, 10, false)]), (5, 2, vec![up(3, 12, true)])]
        );
        assert_eq!(o.pending(10, 0)[0].2.len(), 1);
        assert_eq!(o.pending(10, 34)[0].2.len(), 2);
    }

    #[test]
    fn deliveries_are_admitted_once_and_in_order() {
        let mut d = Delivered::default();
        assert_eq!(d.admit(3, 1, 2), Ok((0, 2)));
        d.record(3, 2);
        // A redelivery of 1..=3 skips the two applied items.
        assert_eq!(d.admit(3, 1, 3), Ok((2, 3)));
        assert_eq!(d.admit(3, 2, 1), Ok((1, 2)));
        assert!(d.admit(3, 4, 1).unwrap_err().contains("gap"));
        assert!(d.admit(3, 0, 1).unwrap_err().contains("start at 1"));
        assert_eq!(d.admit(3, 9, 0), Ok((0, 2)));
        assert!(d.admit(4, u64::MAX, 2).unwrap_err().contains("overflows"));
        assert_eq!(d.upto(4), 0);
    }
}
