//! Records this node linked in recent bulk batches, as extra candidates for the next batches.
//!
//! A record's index entries reach the blocking keys' shards through the EMPI outbox, tens of
//! milliseconds after its write; a bulk ingest sends its next batch sooner than that, and would
//! miss the previous batch's records as candidates. Every bulk batch is routed to one node (the
//! leader of the model's shard), which keeps what it linked for `RECENT_TTL` (at most
//! `RECENT_RECORDS_MAX` records) and offers it as candidates beside what the index answers.
//! Identities may have been merged since: the reader resolves each through its survivor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use plexus_empi::normalize::NormalizedRecord;
use plexus_proto::{EmpiRecord, MasterId, PersonRecord};
use tokio::time::Instant;

/// How long a linked record is offered.
pub const RECENT_TTL: Duration = Duration::from_secs(30);
/// Records offered at most (the oldest go first).
pub const RECENT_RECORDS_MAX: usize = 200_000;

/// One recently linked record, in arrival order.
struct Entry {
    at: Instant,
    key: String,
    /// Which copy of the record this is (a record linked again gets a new one).
    generation: u64,
}

/// The overlay.
#[derive(Default)]
pub(crate) struct Recent {
    by_block: BTreeMap<String, Vec<String>>,
    /// Per record: the copy offered, and its generation.
    records: BTreeMap<String, (Known, u64)>,
    order: VecDeque<Entry>,
    generation: u64,
}

impl Recent {
    /// Offers a linked record.
    pub(crate) fn add(
        &mut self,
        record: PersonRecord,
        norm: Arc<NormalizedRecord>,
        master: MasterId,
        blocks: Vec<String>,
    ) {
        self.expire();
        let key = record.key_string();
        if let Some(((old, _), _)) = self.records.remove(&key) {
            self.unindex(&key, &old.blocks);
        }
        self.generation += 1;
        for b in &blocks {
            self.by_block.entry(b.clone()).or_default().push(key.clone());
        }
        let stored = EmpiRecord {
            record,
            master,
            links: Vec::new(),
            unlinks: Vec::new(),
            blocks: blocks.clone(),
            updated_millis: 0,
        };
        self.records
            .insert(key.clone(), ((Arc::new(stored), norm), self.generation));
        self.order.push_back(Entry {
            at: Instant::now(),
            key,
            generation: self.generation,
        });
        while self.order.len() > RECENT_RECORDS_MAX {
            self.pop_oldest();
        }
    }

    /// Withdraws a record offered as linked to `master` whose write then failed.
    pub(crate) fn forget(&mut self, key: &str, master: MasterId) {
        if self.records.get(key).is_some_and(|((r, _), _)| r.master == master) {
            if let Some(((old, _), _)) = self.records.remove(key) {
                self.unindex(key, &old.blocks);
            }
        }
    }

    fn unindex(&mut self, key: &str, blocks: &[String]) {
        for b in blocks {
            if let Some(v) = self.by_block.get_mut(b) {
                v.retain(|k| k != key);
                if v.is_empty() {
                    self.by_block.remove(b);
                }
            }
        }
    }

    fn pop_oldest(&mut self) {
        let Some(e) = self.order.pop_front() else { return };
        // A newer copy of the same record has its own entry: leave it.
        if self.records.get(&e.key).is_some_and(|(_, g)| *g == e.generation) {
            if let Some(((old, _), _)) = self.records.remove(&e.key) {
                self.unindex(&e.key, &old.blocks);
            }
        }
    }

    fn expire(&mut self) {
        while self.order.front().is_some_and(|e| e.at.elapsed() > RECENT_TTL) {
            self.pop_oldest();
        }
    }

    /// The recent records under `block`.
    pub(crate) fn members(&self, block: &str) -> &[String] {
        self.by_block.get(block).map_or(&[], Vec::as_slice)
    }

    /// A recent record.
    pub(crate) fn get(&self, key: &str) -> Option<&Known> {
        self.records.get(key).map(|(r, _)| r)
    }

    /// What the overlay offers for these blocks: per block its recent records, and those records.
    pub(crate) fn around<'a>(&self, blocks: impl IntoIterator<Item = &'a String>) -> Offered {
        let mut offered = Offered::default();
        for b in blocks {
            let members = self.members(b);
            if members.is_empty() {
                continue;
            }
            for k in members {
                if let Some(r) = self.get(k) {
                    offered.records.entry(k.clone()).or_insert_with(|| r.clone());
                }
            }
            offered.blocks.insert(b.clone(), members.to_vec());
        }
        offered
    }
}

/// A copy of what the overlay offers around some blocks (taken under its lock, used after).
#[derive(Default)]
pub(crate) struct Offered {
    /// Per block, its recent records.
    pub(crate) blocks: BTreeMap<String, Vec<String>>,
    /// Those records.
    pub(crate) records: BTreeMap<String, Known>,
}

/// A record as held and its normal form, shared between the overlay and the batches it offers
/// them to.
pub(crate) type Known = (Arc<EmpiRecord>, Arc<NormalizedRecord>);

#[cfg(test)]
mod tests {
    use plexus_empi::context::MatchContext;
    use plexus_empi::schema::RecordExt;

    use super::*;

    fn add(r: &mut Recent, ctx: &MatchContext, id: &str, master: MasterId, blocks: &[&str]) {
        let rec = PersonRecord::new("S", id);
        let norm = Arc::new(ctx.normalize(&rec));
        r.add(rec, norm, master, blocks.iter().map(|b| b.to_string()).collect());
    }

    #[test]
    fn a_record_is_offered_under_its_latest_blocks_and_withdrawn_when_its_write_failed() {
        let ctx = MatchContext::untrained().unwrap();
        let mut r = Recent::default();
        add(&mut r, &ctx, "1", 10, &["a", "b"]);
        add(&mut r, &ctx, "2", 20, &["b"]);
        assert_eq!(r.members("b"), ["S:1", "S:2"]);
        // Linked again under other blocks: the old ones no longer offer it.
        add(&mut r, &ctx, "1", 11, &["c"]);
        assert_eq!(r.members("a"), [] as [String; 0]);
        assert_eq!(r.members("b"), ["S:2"]);
        let offered = r.around(["c".to_string(), "b".to_string()].iter());
        assert_eq!(offered.records.len(), 2);
        assert_eq!(offered.records["S:1"].0.master, 11);
        // A failed write withdraws only the copy it placed.
        r.forget("S:1", 10);
        assert!(r.get("S:1").is_some());
        r.forget("S:1", 11);
        assert!(r.get("S:1").is_none());
        assert_eq!(r.members("c"), [] as [String; 0]);
        // The oldest copies go first past the cap, but a newer copy of the record stays.
        for i in 0..RECENT_RECORDS_MAX {
            add(&mut r, &ctx, &format!("n{i}"), 1, &["z"]);
        }
        assert!(r.get("S:2").is_none());
        assert!(r.get(&format!("S:n{}", RECENT_RECORDS_MAX - 1)).is_some());
    }
}
