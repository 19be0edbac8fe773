//! Identity matching's replicated state on one shard (the master patient index): the person
//! records this shard owns, the blocking-index entries and master identities routed to it, the
//! change events of those identities, the EMPI outbox, and the matching model on its shard.
//!
//! How a record reaches its identity. The EMPI service decides a record's identity and blocking
//! keys and proposes `EmpiPut` on the record's shard. Its apply stores the record and sends what
//! changed to the shards that own the rest: `IndexRemove`/`IndexAdd` for the blocking keys that
//! went or came, `MemberLeave` to the old identity and `MemberEnter` to the new one. A message for
//! this shard is applied in the same apply; the others travel the EMPI outbox, exactly once and
//! in order per pair of shards, like the feed's fan-out. The identity's shard adds the member and
//! logs the event, so the change stream is a per-shard log of what its applies did.
//!
//! Merges. `EmpiMerge` on the merged identity's shard marks it merged, logs `Merged`, empties it
//! and sends `Reassign` for each member to the member's shard, which moves the record and so
//! sends `MemberLeave`/`MemberEnter` like a put. A merged identity is kept for good: a join that
//! was in flight when it merged is answered with a `Reassign` to the survivor, so the record
//! follows. Merges must not form a cycle (the service merges into the older identity, ties by
//! id); a cycle within one shard is refused, one across shards would forward its records round
//! it for ever.
//!
//! Steward constraints. A link or unlink between two records is held by both, and stewards may
//! change it from either side at once, so the pair's smaller key owns it: the owner applies
//! changes in its log's order and mirrors each to the other side, and a change made on the other
//! side is applied there at once and sent to the owner, whose mirror settles it. Both sides end
//! with the owner's last change. A constraint for a record not stored yet waits (`pending`, a
//! bounded map) for the record's first put.
//!
//! Unlinks at the identity. The service's placement guard respects the unlinks it reads, but a
//! placement or merge decided just before an unlink may land after it, and a record's move
//! reaches its new identity only through the outbox. So the identity's shard is where an
//! unlink is finally kept: a record enters an identity (`MemberEnter`) carrying its unlinks, the
//! identity keeps its members' unlinks (`apart`, updated by `MemberUnlinks` when a member's
//! constraints change), and a newcomer unlinked from a member, or that a member is unlinked
//! from, is not taken (`EnterRefused`): the record's shard, whose view of its own constraints
//! is the freshest, moves it to an identity of its own, or, where a link has replaced the
//! unlink by then, lets it enter again. Two members that a new unlink separates are left for
//! the steward's call, which moves one of them.
//!
//! This module is state and its pure transitions (`apply.rs`, `read.rs`); deciding identities,
//! scoring and the reads that gather candidates across shards belong to `plexus-empi`.

mod apply;
mod index;
mod read;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_reads;
#[cfg(test)]
mod tests_snapshot;
#[cfg(test)]
mod tests_unlinks;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use plexus_proto::{
    block_shard_key, master_shard_key, record_shard_key, shard_for_key, EmpiEvent, EmpiEventKind, EmpiMaster,
    EmpiRecord, MasterId, ShardId, ShardKey,
};
use serde::{Deserialize, Serialize};

use super::graph::Placement;
use super::outbox::{Delivered, Outbox};
use crate::command::EmpiMsg;
use index::{BlockIndex, IndexForm};
pub use index::{EmpiBloomSizing, EMPI_BLOOM_CHAIN_MAX, EMPI_BLOOM_FILTER_BYTES_MAX};

/// Identity matching's settings. They are cluster configuration, not replicated state: every
/// replica of a group must be given the same values (they reach it in `StateLimits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmpiLimits {
    /// Most records in one `EmpiPut`.
    pub put_records_max: usize,
    /// Most blocking keys of one record.
    pub record_blocks_max: usize,
    /// Longest blocking key, in bytes.
    pub block_bytes_max: usize,
    /// Longest record key (`SOURCE:ID`), in bytes.
    pub key_bytes_max: usize,
    /// Longest optional field of a record, in bytes.
    pub field_bytes_max: usize,
    /// Most steward constraints (links and unlinks together) `EmpiConstrain` gives one record.
    pub record_constraints_max: usize,
    /// Most records not yet known here that may hold constraints sent by the other side.
    pub pending_constraints_max: usize,
    /// Most records one blocking key's list in a `Blocks` answer holds (the first, by key).
    pub block_records_max: usize,
    /// Most blocking keys in one `Blocks` read.
    pub blocks_read_max: usize,
    /// Most record keys in one `Blocks` answer, over all its blocking keys.
    pub blocks_read_records_max: usize,
    /// Most keys in one `Records` read.
    pub records_read_max: usize,
    /// Most ids in one `Masters` read.
    pub masters_read_max: usize,
    /// Most identities in one `MasterPage` answer.
    pub masters_page_max: u32,
    /// Most member keys in one `MasterPage` answer (it ends early past them, never empty).
    pub page_members_max: usize,
    /// Most events in one `Events` answer.
    pub events_page_max: u32,
    /// Events each shard keeps; appending past it drops the oldest.
    pub events_retained_max: usize,
    /// Bytes the EMPI outbox may hold before puts, constraints, reassigns and merges are
    /// refused (`Busy`).
    pub outbox_bytes_max: usize,
    /// Largest matching model, in bytes.
    pub model_bytes_max: usize,
    /// Sizing of the blocking-key Bloom filter.
    pub bloom: EmpiBloomSizing,
}

impl Default for EmpiLimits {
    fn default() -> Self {
        Self {
            put_records_max: plexus_proto::EMPI_INGEST_RECORDS_MAX,
            record_blocks_max: 64,
            block_bytes_max: 256,
            key_bytes_max: 256,
            field_bytes_max: 1_024,
            record_constraints_max: 1_000,
            pending_constraints_max: 10_000,
            block_records_max: 1_000,
            blocks_read_max: 4_096,
            blocks_read_records_max: 100_000,
            records_read_max: 10_000,
            masters_read_max: 10_000,
            masters_page_max: plexus_proto::EMPI_CLUSTERS_PAGE_MAX,
            page_members_max: 100_000,
            events_page_max: plexus_proto::EMPI_EVENTS_PAGE_MAX,
            events_retained_max: 100_000,
            outbox_bytes_max: 64 << 20,
            // Half a frame (`FRAME_BYTES_MAX` is 16 MiB), so the command carrying it fits one.
            model_bytes_max: 8 << 20,
            bloom: EmpiBloomSizing {
                base_items: 16_384,
                fp_rate_ppm: 10_000,
            },
        }
    }
}

/// A master identity as this shard holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Master {
    pub(crate) members: BTreeSet<String>,
    pub(crate) created_millis: u64,
    pub(crate) merged_into: Option<MasterId>,
}

impl Master {
    pub(crate) fn to_proto(&self, id: MasterId) -> EmpiMaster {
        EmpiMaster {
            id,
            members: self.members.iter().cloned().collect(),
            created_millis: self.created_millis,
            merged_into: self.merged_into,
        }
    }
}

/// Steward constraints of one record: the records it is linked to and unlinked from, each
/// ascending, never both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Constraints {
    pub(crate) links: Vec<String>,
    pub(crate) unlinks: Vec<String>,
}

impl Constraints {
    /// Links (or unlinks) `other`, dropping the opposite constraint; whether anything changed.
    pub(crate) fn set(links: &mut Vec<String>, unlinks: &mut Vec<String>, other: &str, link: bool) -> bool {
        let (add, drop) = if link { (links, unlinks) } else { (unlinks, links) };
        let dropped = match drop.binary_search_by(|k| k.as_str().cmp(other)) {
            Ok(i) => {
                drop.remove(i);
                true
            }
            Err(_) => false,
        };
        let added = match add.binary_search_by(|k| k.as_str().cmp(other)) {
            Ok(_) => false,
            Err(i) => {
                add.insert(i, other.to_string());
                true
            }
        };
        dropped || added
    }

    fn validate(links: &[String], unlinks: &[String], what: &str) -> Result<(), String> {
        let ascending = |v: &[String]| v.windows(2).all(|w| w[0] < w[1]);
        if !ascending(links) || !ascending(unlinks) {
            return Err(format!("empi constraints of {what:?} not ascending"));
        }
        if let Some(k) = links.iter().find(|k| unlinks.binary_search(k).is_ok()) {
            return Err(format!("empi record {what:?} is both linked and unlinked to {k:?}"));
        }
        Ok(())
    }
}

/// Largest event number a restored log may hold: far beyond what counting appends reaches, and
/// far from overflow.
const EVENT_SEQ_MAX: u64 = 1 << 63;

/// One shard's log of identity changes, numbered from 1 without gaps, the oldest dropped past
/// the retention cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventLog {
    /// The number the next event gets.
    next_seq: u64,
    /// The retained events, numbered `next_seq - len .. next_seq`.
    events: VecDeque<EmpiEvent>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            next_seq: 1,
            events: VecDeque::new(),
        }
    }
}

impl EventLog {
    /// The oldest number still held (`next_seq` when none is).
    pub(crate) fn first_retained(&self) -> u64 {
        self.next_seq - self.events.len() as u64
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends an event, dropping the oldest past `retained_max` (at least one is kept).
    pub(crate) fn push(
        &mut self,
        shard: ShardId,
        master: MasterId,
        record: Option<String>,
        kind: EmpiEventKind,
        millis: u64,
        retained_max: usize,
    ) {
        self.events.push_back(EmpiEvent {
            shard,
            seq: self.next_seq,
            master,
            record,
            kind,
            millis,
        });
        self.next_seq += 1;
        while self.events.len() > retained_max.max(1) {
            self.events.pop_front();
        }
    }

    /// Events numbered from `from_seq` (or the oldest held, if later), at most `limit`.
    pub(crate) fn from(&self, from_seq: u64, limit: usize) -> impl Iterator<Item = &EmpiEvent> {
        let skip = from_seq.saturating_sub(self.first_retained());
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.events.iter().skip(skip).take(limit)
    }

    /// Whether the numbers are contiguous and end just before `next_seq`.
    fn check(&self, shard: ShardId) -> bool {
        let first = self.first_retained();
        first >= 1
            && self
                .events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == first + i as u64 && e.shard == shard)
    }
}

/// Identity matching's part of one shard's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EmpiStore {
    /// Records this shard owns, by `SOURCE:ID`.
    pub(in crate::state) records: BTreeMap<String, EmpiRecord>,
    /// Blocking-index entries this shard owns.
    pub(in crate::state) index: BlockIndex,
    /// Master identities this shard owns.
    pub(in crate::state) masters: BTreeMap<MasterId, Master>,
    /// Changes of those identities.
    pub(in crate::state) events: EventLog,
    /// Constraints that arrived for records of this shard not stored yet; a put takes them.
    pub(in crate::state) pending: BTreeMap<String, Constraints>,
    /// Messages owed to other shards.
    pub(in crate::state) outbox: Outbox<EmpiMsg>,
    /// Per source shard, the last EMPI-outbox sequence applied here.
    pub(in crate::state) delivered: Delivered,
    /// The matching model and its version (only on the model's shard).
    pub(in crate::state) model: Option<(u64, Vec<u8>)>,
    /// Per live identity of this shard, its members that a steward unlinked from other records,
    /// with those records (sorted): what `MemberEnter` checks a newcomer against.
    pub(in crate::state) apart: BTreeMap<MasterId, BTreeMap<String, Vec<String>>>,
}

/// The EMPI state in snapshot form: every map as a vector in ascending key order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct EmpiForm {
    records: Vec<EmpiRecord>,
    index: IndexForm,
    masters: Vec<EmpiMaster>,
    events_next_seq: u64,
    events: Vec<EmpiEvent>,
    pending: Vec<(String, Constraints)>,
    outbox: Outbox<EmpiMsg>,
    delivered: Vec<(ShardId, u64)>,
    model: Option<(u64, serde_bytes::ByteBuf)>,
    /// Appended in snapshot version 5.
    apart: Vec<(MasterId, Vec<MemberUnlinks>)>,
}

/// One member's steward unlinks, as an identity keeps them: (record, records it is unlinked from).
type MemberUnlinks = (String, Vec<String>);

/// Bits of a master id below its creation time.
const MASTER_ID_HASH_BITS: u32 = 20;

/// A new identity's id: its creation time in milliseconds above 20 bits of a hash of the
/// founding record, so that ids order identities by age (ties broken by the hash) and a merge,
/// always of the larger id into the smaller, can never close a cycle across shards, whatever
/// each node has seen. Never 0 (a put's answer uses 0 for "superseded").
pub fn new_master_id(key: &str, now_millis: u64) -> MasterId {
    let h = plexus_proto::shard::fnv1a64(format!("master/{key}/{now_millis}").as_bytes());
    let millis = now_millis & ((1u64 << (63 - MASTER_ID_HASH_BITS)) - 1);
    ((millis << MASTER_ID_HASH_BITS) | (h & ((1 << MASTER_ID_HASH_BITS) - 1))).max(1)
}

/// The shard `key` routes to, in `here`'s cluster.
pub(crate) fn route(here: Placement, key: &ShardKey) -> ShardId {
    shard_for_key(key, here.shard_count)
}

/// Whether `key` routes to `here`.
fn owns(here: Placement, key: &ShardKey) -> bool {
    route(here, key) == here.shard
}

impl EmpiStore {
    pub(crate) fn to_form(&self) -> EmpiForm {
        EmpiForm {
            records: self.records.values().cloned().collect(),
            index: self.index.to_form(),
            masters: self.masters.iter().map(|(id, m)| m.to_proto(*id)).collect(),
            events_next_seq: self.events.next_seq,
            events: self.events.events.iter().cloned().collect(),
            pending: self.pending.iter().map(|(k, c)| (k.clone(), c.clone())).collect(),
            outbox: self.outbox.clone(),
            delivered: self.delivered.pairs(),
            model: self
                .model
                .as_ref()
                .map(|(v, m)| (*v, serde_bytes::ByteBuf::from(m.clone()))),
            apart: self
                .apart
                .iter()
                .map(|(m, members)| (*m, members.iter().map(|(k, u)| (k.clone(), u.clone())).collect()))
                .collect(),
        }
    }

    /// Whether record `key`, with the constraints `held` its shard holds, may not join identity
    /// `master`: it is unlinked from a member, or a member from it (unless the record is linked
    /// to that member: the member's unlink, as the identity heard it, was replaced since).
    /// Answers the member it is apart from.
    pub(in crate::state) fn apart_from(&self, master: MasterId, key: &str, held: &Constraints) -> Option<String> {
        let member_apart = self.apart.get(&master).and_then(|m| {
            m.iter().find(|(member, u)| {
                u.binary_search_by(|x| x.as_str().cmp(key)).is_ok()
                    && held.links.binary_search_by(|x| x.as_str().cmp(member)).is_err()
            })
        });
        if let Some((member, _)) = member_apart {
            return Some(member.clone());
        }
        let m = self.masters.get(&master)?;
        held.unlinks.iter().find(|u| m.members.contains(*u)).cloned()
    }

    /// Records member `key`'s unlinks for identity `master` (none: forgets it).
    pub(in crate::state) fn apart_set(&mut self, master: MasterId, key: &str, unlinks: Vec<String>) {
        if unlinks.is_empty() {
            if let Some(m) = self.apart.get_mut(&master) {
                m.remove(key);
                if m.is_empty() {
                    self.apart.remove(&master);
                }
            }
        } else {
            self.apart.entry(master).or_default().insert(key.to_string(), unlinks);
        }
    }

    /// Rebuilds the EMPI state from a snapshot, refusing non-canonical or inconsistent forms.
    pub(crate) fn from_form(form: EmpiForm, limits: &EmpiLimits, here: Placement) -> Result<Self, String> {
        let mut records = BTreeMap::new();
        for r in form.records {
            let key = r.record.key_string();
            if records
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= key)
            {
                return Err(format!("empi records not in ascending order at {key:?}"));
            }
            if !owns(here, &record_shard_key(&key)) {
                return Err(format!("empi record {key:?} does not belong to this shard"));
            }
            Constraints::validate(&r.links, &r.unlinks, &key)?;
            if r.blocks.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("empi record {key:?} has blocking keys out of order"));
            }
            records.insert(key, r);
        }
        let index = BlockIndex::from_form(form.index, limits.bloom, |b| owns(here, &block_shard_key(b)))?;
        let mut masters = BTreeMap::new();
        for m in form.masters {
            if masters.last_key_value().is_some_and(|(last, _)| *last >= m.id) {
                return Err(format!("empi masters not in ascending order at {}", m.id));
            }
            if !owns(here, &master_shard_key(m.id)) {
                return Err(format!("empi master {} does not belong to this shard", m.id));
            }
            if m.members.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("empi master {} has members out of order", m.id));
            }
            if (m.merged_into.is_some() && !m.members.is_empty()) || m.merged_into == Some(m.id) {
                return Err(format!("empi master {} is merged but keeps members or itself", m.id));
            }
            let master = Master {
                members: m.members.into_iter().collect(),
                created_millis: m.created_millis,
                merged_into: m.merged_into,
            };
            masters.insert(m.id, master);
        }
        let events = EventLog {
            next_seq: form.events_next_seq,
            events: form.events.into(),
        };
        let numbered = (1 + events.events.len() as u64..=EVENT_SEQ_MAX).contains(&form.events_next_seq);
        if !numbered || !events.check(here.shard) {
            return Err("empi events are not numbered contiguously before the next number".into());
        }
        let mut pending = BTreeMap::new();
        for (key, c) in form.pending {
            if pending
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= key)
            {
                return Err(format!("empi pending constraints not in ascending order at {key:?}"));
            }
            if records.contains_key(&key) || !owns(here, &record_shard_key(&key)) {
                return Err(format!(
                    "empi pending constraints for {key:?}, a stored or foreign record"
                ));
            }
            Constraints::validate(&c.links, &c.unlinks, &key)?;
            if c.links.is_empty() && c.unlinks.is_empty() {
                return Err(format!("empi pending constraints for {key:?} are empty"));
            }
            pending.insert(key, c);
        }
        let mut apart: BTreeMap<MasterId, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (id, members) in form.apart {
            if apart.last_key_value().is_some_and(|(last, _)| *last >= id) {
                return Err(format!("empi member unlinks not in ascending order at {id}"));
            }
            let Some(m) = masters.get(&id).filter(|m| m.merged_into.is_none()) else {
                return Err(format!("empi member unlinks for {id}, which is no live identity here"));
            };
            let mut kept: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (key, unlinks) in members {
                if kept.last_key_value().is_some_and(|(last, _)| *last >= key) || !m.members.contains(&key) {
                    return Err(format!(
                        "empi member unlinks of {id} name {key:?} out of order or no member"
                    ));
                }
                if unlinks.is_empty() || unlinks.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "empi member unlinks of {key:?} in {id} are empty or not ascending"
                    ));
                }
                kept.insert(key, unlinks);
            }
            if kept.is_empty() {
                return Err(format!("empi member unlinks of {id} are empty"));
            }
            apart.insert(id, kept);
        }
        let mut outbox = form.outbox;
        outbox.restore().map_err(|e| format!("empi {e}"))?;
        Ok(Self {
            records,
            index,
            masters,
            events,
            pending,
            outbox,
            delivered: Delivered::from_pairs(&form.delivered).map_err(|e| format!("empi delivered_upto {e}"))?,
            model: form.model.map(|(v, m)| (v, m.into_vec())),
            apart,
        })
    }

    /// Undelivered messages over all destinations: (messages, approximate bytes).
    pub(crate) fn outbox_size(&self) -> (usize, usize) {
        (self.outbox.len(), self.outbox.bytes())
    }

    /// Debug check of derived totals and the event numbering (cheap: runs after every apply).
    pub(crate) fn check(&self) -> bool {
        self.outbox.check()
            && self
                .events
                .events
                .front()
                .is_none_or(|e| e.seq == self.events.first_retained())
            && self
                .events
                .events
                .back()
                .is_none_or(|e| e.seq + 1 == self.events.next_seq)
            // Member unlinks are kept for live identities' members only (few: steward actions).
            && self.apart.iter().all(|(id, members)| {
                !members.is_empty()
                    && self.masters.get(id).is_some_and(|m| {
                        m.merged_into.is_none() && members.iter().all(|(k, u)| !u.is_empty() && m.members.contains(k))
                    })
            })
    }
}
