//! The cross-shard edge outbox: in-edge updates this shard owes other shards.
//!
//! Each destination shard has its own sequence, starting at 1, so the
//! receiver can apply exactly once by remembering the last sequence it
//! applied from each source. Entries stay until the destination confirms
//! them with `OutboxTrim`, so nothing committed is lost across leader changes
//! or crashes. This module does not deliver: a leader-side task reads
//! `outbox_pending` and proposes `EdgeDelivery` on the destination.

use std::collections::{BTreeMap, VecDeque};

use plexus_proto::ShardId;
use serde::{Deserialize, Serialize};

use crate::command::EdgeUpdate;

/// Largest sequence number a restored outbox may hold.
const SEQ_MAX: u64 = 1 << 63;

/// Undelivered updates for one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DestQueue {
    /// Sequence number of `entries[0]` (or of the next push when empty).
    first_seq: u64,
    /// Updates in sequence order.
    entries: VecDeque<EdgeUpdate>,
}

impl DestQueue {
    /// Sequence number the next push gets.
    fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }
}

/// Every destination's queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outbox {
    /// Per destination; kept when empty because its sequence must continue.
    dests: BTreeMap<ShardId, DestQueue>,
    /// Entries over all destinations; derived, not serialised.
    #[serde(skip)]
    total: usize,
}

impl Outbox {
    /// Entries waiting over all destinations.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// Queues `update` for `dest`; answers its sequence number. The caller
    /// checks the limit first, so that a refused write changes nothing.
    pub(crate) fn push(&mut self, dest: ShardId, update: EdgeUpdate) -> u64 {
        let q = self.dests.entry(dest).or_insert_with(|| DestQueue {
            first_seq: 1,
            entries: VecDeque::new(),
        });
        let seq = q.next_seq();
        q.entries.push_back(update);
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
        while q.first_seq <= upto_seq && q.entries.pop_front().is_some() {
            q.first_seq += 1;
            dropped += 1;
        }
        self.total -= dropped as usize;
        dropped
    }

    /// Up to `items_max` entries per destination that still has any.
    pub(crate) fn pending(&self, items_max: usize) -> Vec<(ShardId, u64, Vec<EdgeUpdate>)> {
        if items_max == 0 {
            return Vec::new();
        }
        self.dests
            .iter()
            .filter(|(_, q)| !q.entries.is_empty())
            .map(|(dest, q)| (*dest, q.first_seq, q.entries.iter().take(items_max).cloned().collect()))
            .collect()
    }

    /// Recomputes the derived total after decoding and checks sequences.
    pub(crate) fn restore(&mut self) -> Result<(), String> {
        let mut total = 0usize;
        for (dest, q) in &self.dests {
            // Sequences past 2^63 cannot come from counting pushes; refusing
            // them keeps every later `+ 1` far from overflow.
            if q.first_seq == 0 || q.first_seq.saturating_add(q.entries.len() as u64) > SEQ_MAX {
                return Err(format!("outbox to shard {dest} has an invalid sequence"));
            }
            total += q.entries.len();
        }
        self.total = total;
        Ok(())
    }

    /// Debug check: the derived total matches.
    pub(crate) fn check(&self) -> bool {
        self.total == self.dests.values().map(|q| q.entries.len()).sum::<usize>()
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
        let mut o = Outbox::default();
        assert_eq!(o.push(2, up(1, 10, true)), 1);
        assert_eq!(o.push(2, up(1, 11, true)), 2);
        assert_eq!(o.push(5, up(1, 12, true)), 1);
        assert_eq!(o.push(2, up(1, 10, false)), 3);
        assert_eq!(o.len(), 4);
        assert_eq!(
            o.pending(2),
            vec![
                (2, 1, vec![up(1, 10, true), up(1, 11, true)]),
                (5, 1, vec![up(1, 12, true)])
            ]
        );
        assert_eq!(o.trim(2, 2), 2);
        assert_eq!(o.trim(2, 2), 0);
        assert_eq!(o.trim(9, 2), 0);
        assert_eq!(
            o.pending(10),
            vec![(2, 3, vec![up(1, 10, false)]), (5, 1, vec![up(1, 12, true)])]
        );
        assert_eq!(o.trim(5, u64::MAX), 1);
        assert_eq!(o.pending(10), vec![(2, 3, vec![up(1, 10, false)])]);
        // A drained destination keeps counting.
        assert_eq!(o.push(5, up(3, 12, true)), 2);
        assert_eq!(o.len(), 2);
        assert!(o.pending(0).is_empty());
        assert!(o.check());
    }
}
