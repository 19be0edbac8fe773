//! A table of peers, each until a deadline: what `stopping.rs` (stop notices) and `silent.rs`
//! (peers that said nothing) both keep. Expired entries are dropped whenever one is added, so
//! the table holds at most the peers whose deadlines are live.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use plexus_proto::NodeId;
use tokio::time::Instant;

/// Peers, each with the end of its entry.
#[derive(Debug, Default)]
pub struct PeerDeadlines {
    until: Mutex<BTreeMap<NodeId, Instant>>,
}

impl PeerDeadlines {
    fn table(&self) -> MutexGuard<'_, BTreeMap<NodeId, Instant>> {
        self.until.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `peer` until `until` at least (a later entry never shortens an earlier one), and
    /// drops the entries expired at `now`.
    pub fn hold(&self, peer: NodeId, until: Instant, now: Instant) {
        let mut table = self.table();
        table.retain(|_, end| *end > now);
        let end = table.entry(peer).or_insert(until);
        *end = (*end).max(until);
    }

    /// Drops `peer`'s entry.
    pub fn release(&self, peer: NodeId) {
        self.table().remove(&peer);
    }

    /// Whether `peer`'s entry is live at `now`.
    pub fn holds(&self, peer: NodeId, now: Instant) -> bool {
        self.table().get(&peer).is_some_and(|end| *end > now)
    }

    /// The peers whose entries are live at `now`, ascending.
    pub fn live(&self, now: Instant) -> Vec<NodeId> {
        self.table()
            .iter()
            .filter(|(_, end)| **end > now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Entries held, live or not yet dropped (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table().len()
    }
}
