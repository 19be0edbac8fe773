//! Identity matching's transitions across a whole (small) cluster of shard states: every shard's
//! state machine, with a pump that delivers the EMPI outboxes between them the way leaders do,
//! and a checker of the cross-shard invariants once they are delivered.

use std::collections::BTreeMap;

use plexus_proto::{
    block_shard_key, master_shard_key, model_shard_key, record_shard_key, shard_for_key, EmpiBlocks, EmpiEvent,
    EmpiEventKind, EmpiMaster, EmpiRead, EmpiRecord, EmpiState, ErrorReply, MasterId, PersonRecord, ReadOp, Reply,
    Response, Session, ShardId, ShardKey,
};

use crate::canary::Canary;
use crate::command::{Command, EmpiBatch, EmpiPut};
use crate::state::{EmpiLimits, ShardState, StateLimits};

pub(super) const SHARDS: u32 = 4;
pub(super) const NOW: u64 = 1_000_000;

pub(super) fn on(key: &ShardKey) -> ShardId {
    shard_for_key(key, SHARDS)
}

/// The first `n` record keys `S:i` (i from 1) that live on `shard`.
pub(super) fn records_on(shard: ShardId, n: usize) -> Vec<String> {
    (1u32..)
        .map(|i| format!("S:{i}"))
        .filter(|k| on(&record_shard_key(k)) == shard)
        .take(n)
        .collect()
}

/// The first `n` blocking keys `b{i}` that live on `shard`.
pub(super) fn blocks_on(shard: ShardId, n: usize) -> Vec<String> {
    (1u32..)
        .map(|i| format!("b{i}"))
        .filter(|b| on(&block_shard_key(b)) == shard)
        .take(n)
        .collect()
}

/// The first `n` master ids (from 1) that live on `shard`.
pub(super) fn masters_on(shard: ShardId, n: usize) -> Vec<MasterId> {
    (1u64..)
        .filter(|m| on(&master_shard_key(*m)) == shard)
        .take(n)
        .collect()
}

/// The person named by `key` (`S:ID`), with a given name to tell versions apart.
pub(super) fn person(key: &str, given: &str) -> PersonRecord {
    let (source, id) = key.split_once(':').unwrap_or((key, ""));
    PersonRecord {
        source: source.into(),
        source_id: id.into(),
        given_name: Some(given.into()),
        ..PersonRecord::default()
    }
}

/// `v` in ascending order (record and blocking keys compare as strings).
pub(super) fn sorted(v: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).clone()).collect();
    v.sort();
    v
}

/// A put of `key` (its `base` filled in by `Cluster::put` from the stored record, as the
/// service reads it before placing).
pub(super) fn put(key: &str, master: MasterId, blocks: &[&String]) -> EmpiPut {
    EmpiPut {
        record: person(key, "ann"),
        master,
        blocks: blocks.iter().map(|b| (*b).clone()).collect(),
        base: None,
    }
}

/// Every shard of a cluster, each with its next log index.
pub(super) struct Cluster {
    pub(super) shards: Vec<(ShardState, u64)>,
    pub(super) now: u64,
}

impl Cluster {
    pub(super) fn new(empi: EmpiLimits) -> Self {
        let limits = StateLimits {
            empi,
            ..StateLimits::default()
        };
        Self {
            shards: (0..SHARDS)
                .map(|s| (ShardState::new(s, SHARDS, limits.clone()), 0))
                .collect(),
            now: NOW,
        }
    }

    pub(super) fn apply(&mut self, shard: ShardId, cmd: &Command) -> Response {
        let (state, index) = &mut self.shards[shard as usize];
        *index += 1;
        state.apply(*index, cmd)
    }

    /// Puts records on the shard of the first one, each against the version stored now.
    pub(super) fn put(&mut self, mut puts: Vec<EmpiPut>) -> Response {
        for p in &mut puts {
            p.base = self.record(&p.record.key_string()).map(|r| r.updated_millis);
        }
        self.put_as_is(puts)
    }

    /// Puts records on the shard of the first one with the `base` they carry.
    pub(super) fn put_as_is(&mut self, puts: Vec<EmpiPut>) -> Response {
        let shard = on(&record_shard_key(&puts[0].record.key_string()));
        self.now += 1;
        let cmd = Command::EmpiPut {
            puts,
            now_millis: self.now,
        };
        self.apply(shard, &cmd)
    }

    pub(super) fn merge(&mut self, from: MasterId, into: MasterId) -> Response {
        self.now += 1;
        let cmd = Command::EmpiMerge {
            from,
            into,
            now_millis: self.now,
        };
        self.apply(on(&master_shard_key(from)), &cmd)
    }

    pub(super) fn constrain(&mut self, key: &str, other: &str, link: bool) -> Response {
        self.now += 1;
        let cmd = Command::EmpiConstrain {
            key: key.into(),
            other: other.into(),
            link,
            now_millis: self.now,
        };
        self.apply(on(&record_shard_key(key)), &cmd)
    }

    pub(super) fn read(&self, read: EmpiRead) -> Response {
        let op = ReadOp::Empi(read);
        self.shards[on(&op.shard_key()) as usize].0.read(&op)
    }

    pub(super) fn record(&self, key: &str) -> Option<EmpiRecord> {
        match self.read(EmpiRead::Records { keys: vec![key.into()] }) {
            Ok(Reply::EmpiState(EmpiState::Records(mut r))) => r.pop().flatten(),
            other => panic!("record {key}: {other:?}"),
        }
    }

    pub(super) fn master(&self, id: MasterId) -> Option<EmpiMaster> {
        match self.read(EmpiRead::Masters { ids: vec![id] }) {
            Ok(Reply::EmpiState(EmpiState::Masters(mut m))) => m.pop().flatten(),
            other => panic!("master {id}: {other:?}"),
        }
    }

    pub(super) fn members(&self, id: MasterId) -> Vec<String> {
        self.master(id).map(|m| m.members).unwrap_or_default()
    }

    pub(super) fn blocks(&self, blocks: &[&String]) -> EmpiBlocks {
        let blocks = blocks.iter().map(|b| (*b).clone()).collect();
        match self.read(EmpiRead::Blocks { blocks }) {
            Ok(Reply::EmpiState(EmpiState::Blocks(b))) => b,
            other => panic!("blocks: {other:?}"),
        }
    }

    /// The events of `shard`'s log, as (master, record, kind), from the start of what it holds.
    pub(super) fn events(&self, shard: ShardId) -> Vec<(MasterId, Option<String>, EmpiEventKind)> {
        let read = EmpiRead::Events {
            shard,
            from_seq: 1,
            limit: 10_000,
        };
        match self.read(read) {
            Ok(Reply::EmpiState(EmpiState::Events(page))) => page
                .events
                .into_iter()
                .map(|e: EmpiEvent| (e.master, e.record, e.kind))
                .collect(),
            other => panic!("events of {shard}: {other:?}"),
        }
    }

    /// Delivers to `dest` what every source's EMPI outbox holds for it, gathered into one
    /// `EmpiDeliveries` as a node's pump does, and trims the sources; whether anything moved.
    pub(super) fn deliver_to(&mut self, dest: ShardId) -> bool {
        let mut batches = Vec::new();
        for from in 0..SHARDS {
            let pending = self.shards[from as usize].0.empi_outbox_pending(64, 1 << 20);
            if let Some((_, first_seq, items)) = pending.into_iter().find(|(d, _, _)| *d == dest) {
                batches.push(EmpiBatch {
                    from_shard: from,
                    first_seq,
                    items,
                });
            }
        }
        if batches.is_empty() {
            return false;
        }
        let sources: Vec<ShardId> = batches.iter().map(|b| b.from_shard).collect();
        let cmd = Command::EmpiDeliveries {
            batches,
            now_millis: self.now,
        };
        let reply = self.apply(dest, &cmd);
        let Ok(Reply::Counts(uptos)) = reply else {
            panic!("empi deliveries refused: {reply:?}")
        };
        for (from, upto) in sources.into_iter().zip(uptos) {
            let trims = vec![(dest, upto)];
            self.apply(from, &Command::EmpiOutboxTrims { trims }).unwrap();
        }
        true
    }

    /// Delivers every EMPI outbox until none holds anything, a round at a time (every
    /// destination once); answers how many rounds moved something.
    pub(super) fn pump(&mut self) -> usize {
        for round in 0..64 {
            let mut moved = false;
            for dest in 0..SHARDS {
                moved |= self.deliver_to(dest);
            }
            if !moved {
                return round;
            }
        }
        panic!("empi outboxes did not drain");
    }

    /// What should hold once every outbox is delivered, as a list of violations: each record's
    /// identity is live and lists it, each listed member names that identity, merged identities
    /// are empty, and the blocking index is exactly the records' blocking keys.
    pub(super) fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut records = BTreeMap::new();
        let mut masters = BTreeMap::new();
        let mut index = BTreeMap::new();
        for (s, _) in &self.shards {
            records.extend(s.empi.records.iter().map(|(k, r)| (k.clone(), r.clone())));
            masters.extend(s.empi.masters.iter().map(|(id, m)| (*id, m.clone())));
            for (b, keys) in s.empi.index.iter() {
                index.insert(b.clone(), keys.clone());
            }
            if s.empi_outbox_len() != 0 {
                out.push(format!("shard {} has undelivered messages", s.shard()));
            }
        }
        for (key, r) in &records {
            match masters.get(&r.master) {
                Some(m) if m.merged_into.is_none() && m.members.contains(key) => {}
                other => out.push(format!("record {key} names {} which holds {other:?}", r.master)),
            }
            for b in &r.blocks {
                if !index.get(b).is_some_and(|keys| keys.contains(key)) {
                    out.push(format!("record {key} is missing under {b}"));
                }
            }
        }
        for (id, m) in &masters {
            for key in &m.members {
                if records.get(key).is_none_or(|r| r.master != *id) {
                    out.push(format!("master {id} lists {key}, which names another"));
                }
            }
        }
        for (b, keys) in &index {
            for key in keys {
                if records.get(key).is_none_or(|r| !r.blocks.contains(b)) {
                    out.push(format!("{b} files {key}, which lacks it"));
                }
            }
        }
        out
    }
}

use EmpiEventKind::{Created, Linked, Merged, Unlinked};

#[test]
fn puts_fan_out_to_index_and_identity_shards_and_converge() {
    let mut c = Cluster::new(EmpiLimits::default());
    let [r1, r2] = [&records_on(0, 1)[0], &records_on(1, 1)[0]];
    let b0 = &blocks_on(0, 1)[0];
    let (b2, b3) = (&blocks_on(2, 1)[0], &blocks_on(3, 1)[0]);
    let m = masters_on(3, 1)[0];
    assert_eq!(c.put(vec![put(r1, m, &[b3, b0, b2, b0])]), Ok(Reply::Counts(vec![m])));
    // Only what lives on the record's shard is applied at once: the rest waits in the outbox.
    assert_eq!(c.blocks(&[b0]).found, vec![(b0.clone(), vec![r1.clone()])]);
    assert_eq!(c.master(m), None);
    assert_eq!(c.shards[0].0.empi_outbox_len(), 3);
    assert_eq!(c.put(vec![put(r2, m, &[b2])]), Ok(Reply::Counts(vec![m])));
    let to_3 = c.shards[0].0.empi_outbox_pending(64, usize::MAX).pop().unwrap();
    assert_eq!(c.pump(), 1);
    assert_eq!(c.violations(), Vec::<String>::new());
    let stored = c.record(r1).unwrap();
    assert_eq!(stored.blocks, sorted(&[b0, b2, b3]), "sorted, without repeats");
    assert_eq!((stored.master, stored.updated_millis), (m, NOW + 1));
    assert_eq!(c.blocks(&[b2]).found, vec![(b2.clone(), sorted(&[r1, r2]))]);
    assert_eq!(c.blocks(&[b3]).found, vec![(b3.clone(), vec![r1.clone()])]);
    assert_eq!(
        c.master(m),
        Some(EmpiMaster {
            id: m,
            members: sorted(&[r1, r2]),
            // The join of r1 waited in shard 0's outbox; r2's arrived first, at put time.
            created_millis: NOW + 2,
            merged_into: None,
        })
    );
    assert_eq!(
        c.events(3),
        vec![(m, Some(r1.clone()), Created), (m, Some(r2.clone()), Linked)]
    );
    // Delivering a batch again applies nothing (a retry after a lost answer).
    let before: Vec<u64> = c.shards.iter().map(|(s, _)| s.state_hash()).collect();
    assert_eq!((to_3.0, to_3.1, to_3.2.len()), (3, 1, 2), "r1's index entry and join");
    let again = EmpiBatch {
        from_shard: 0,
        first_seq: to_3.1,
        items: to_3.2,
    };
    let cmd = Command::EmpiDeliveries {
        batches: vec![again],
        now_millis: c.now,
    };
    assert_eq!(c.apply(3, &cmd), Ok(Reply::Counts(vec![2])));
    assert_eq!(c.shards[3].0.empi.events.next_seq(), 3);
    assert_eq!(
        c.shards.iter().map(|(s, _)| s.state_hash()).collect::<Vec<_>>()[..3],
        before[..3]
    );
    // The same record put again changes nothing but its time.
    assert_eq!(c.put(vec![put(r2, m, &[b2])]), Ok(Reply::Counts(vec![m])));
    assert_eq!(c.shards[1].0.empi_outbox_len(), 0);
    assert_eq!(c.record(r2).map(|r| r.updated_millis), Some(c.now));
}

#[test]
fn an_update_moves_blocking_keys_and_identity() {
    let mut c = Cluster::new(EmpiLimits::default());
    let r = &records_on(1, 1)[0];
    let other = &records_on(2, 1)[0];
    let [b1, b2, b3] = [&blocks_on(0, 1)[0], &blocks_on(2, 1)[0], &blocks_on(3, 1)[0]];
    let [m1, m2] = [masters_on(0, 1)[0], masters_on(2, 1)[0]];
    c.put(vec![put(r, m1, &[b1, b2])]).unwrap();
    c.put(vec![put(other, m2, &[b2])]).unwrap();
    c.pump();
    // Unlinked from a record outside m2 (one unlinked from `other` would be kept out of m2).
    let stranger = &records_on(3, 1)[0];
    assert_eq!(c.constrain(r, stranger, false), Ok(Reply::Changed(true)));
    let mut update = put(r, m2, &[b2, b3]);
    update.record.given_name = Some("anne".into());
    c.put(vec![update]).unwrap();
    c.pump();
    assert_eq!(c.violations(), Vec::<String>::new());
    let stored = c.record(r).unwrap();
    assert_eq!(stored.record.given_name.as_deref(), Some("anne"));
    assert_eq!(stored.unlinks, vec![stranger.clone()], "steward constraints are kept");
    assert_eq!(stored.blocks, sorted(&[b2, b3]));
    let found = c.blocks(&[b1]);
    assert!(found.found.is_empty() && found.rejected == 0, "{found:?}");
    assert_eq!(c.blocks(&[b3]).found, vec![(b3.clone(), vec![r.clone()])]);
    assert_eq!(c.members(m1), Vec::<String>::new());
    assert_eq!(c.members(m2), sorted(&[r, other]));
    assert_eq!(
        c.events(0),
        vec![(m1, Some(r.clone()), Created), (m1, Some(r.clone()), Unlinked)]
    );
    assert_eq!(
        c.events(2),
        vec![(m2, Some(other.clone()), Created), (m2, Some(r.clone()), Linked)]
    );
}

#[test]
fn a_merge_moves_members_and_a_join_racing_it_lands_at_the_survivor() {
    let mut c = Cluster::new(EmpiLimits::default());
    let [from, into] = [masters_on(1, 1)[0], masters_on(2, 1)[0]];
    let [r1, r2] = [&records_on(0, 1)[0], &records_on(1, 1)[0]];
    let [r3, late] = [&records_on(3, 1)[0], &records_on(2, 1)[0]];
    c.put(vec![put(r1, from, &[])]).unwrap();
    c.put(vec![put(r2, from, &[])]).unwrap();
    c.put(vec![put(r3, into, &[])]).unwrap();
    c.pump();
    // A record joins `from` while the merge is applied: its join is still in the outbox.
    c.put(vec![put(late, from, &[])]).unwrap();
    assert_eq!(c.merge(from, into), Ok(Reply::Count(2)));
    let merged = c.master(from).unwrap();
    assert_eq!((merged.merged_into, merged.members.len()), (Some(into), 0));
    c.pump();
    assert_eq!(c.violations(), Vec::<String>::new());
    assert_eq!(c.members(into), sorted(&[r1, r2, late, r3]));
    for r in [r1, r2, late] {
        assert_eq!(c.record(r).map(|r| r.master), Some(into));
    }
    assert_eq!(
        c.events(1),
        // r2 lives on `from`'s shard, so its join applied with its put; r1's was delivered.
        vec![
            (from, Some(r2.clone()), Created),
            (from, Some(r1.clone()), Linked),
            (from, None, Merged { into }),
        ]
    );
    assert_eq!(
        c.events(2),
        // r2's reassign applied within the merge (its record is on `from`'s shard) and r1's on
        // delivery to shard 0; both joins reach `into` in one delivery, shard 0's batch first.
        // The late join bounces off `from` and comes back last.
        vec![
            (into, Some(r3.clone()), Created),
            (into, Some(r1.clone()), Linked),
            (into, Some(r2.clone()), Linked),
            (into, Some(late.clone()), Linked),
        ]
    );
    // Merging again or an identity into itself does nothing.
    assert_eq!(c.merge(from, into), Ok(Reply::Count(0)));
    assert_eq!(c.merge(into, into), Ok(Reply::Count(0)));
    // An identity whose first join is still on its way is merged all the same: the join, when
    // it arrives, goes on to `into` (a steward link read the record's new identity before its
    // shard had it).
    let unborn = masters_on(1, 5)[4];
    assert_eq!(c.merge(unborn, into), Ok(Reply::Count(0)));
    assert_eq!(c.master(unborn).and_then(|m| m.merged_into), Some(into));
    let newcomer = &records_on(3, 7)[6];
    c.put(vec![put(newcomer, unborn, &[])]).unwrap();
    c.pump();
    assert_eq!(c.record(newcomer).map(|r| r.master), Some(into));
    assert!(c.members(into).contains(newcomer));
    assert!(c.members(unborn).is_empty());
    let wrong = Command::EmpiMerge {
        from: into,
        into: from,
        now_millis: c.now,
    };
    assert_eq!(c.apply(0, &wrong), Err(ErrorReply::WrongShard { got: 0, expected: 2 }));
    // A record put on a merged identity later still follows it.
    let later = &records_on(0, 2)[1];
    c.put(vec![put(later, from, &[])]).unwrap();
    c.pump();
    assert_eq!(c.record(later).map(|r| r.master), Some(into));
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn a_merge_never_undoes_a_newer_put_that_moved_a_member() {
    let mut c = Cluster::new(EmpiLimits::default());
    let [from, into] = [masters_on(1, 1)[0], masters_on(2, 1)[0]];
    let elsewhere = masters_on(3, 1)[0];
    let r = &records_on(0, 1)[0];
    c.put(vec![put(r, from, &[])]).unwrap();
    c.pump();
    // The merge sends the record a reassign; before it arrives, a put moves the record on.
    assert_eq!(c.merge(from, into), Ok(Reply::Count(1)));
    c.put(vec![put(r, elsewhere, &[])]).unwrap();
    c.pump();
    assert_eq!(c.record(r).map(|r| r.master), Some(elsewhere));
    assert_eq!(c.members(elsewhere), sorted(&[r]));
    assert_eq!(c.members(into), Vec::<String>::new());
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn a_merge_that_would_close_a_cycle_on_one_shard_is_refused() {
    let mut c = Cluster::new(EmpiLimits::default());
    let [a, b, d] = masters_on(1, 3)[..] else { panic!() };
    let r = &records_on(2, 1)[0];
    let rb = &records_on(2, 2)[1];
    c.put(vec![put(r, a, &[])]).unwrap();
    c.put(vec![put(rb, b, &[])]).unwrap();
    c.pump();
    assert_eq!(c.merge(a, b), Ok(Reply::Count(1)));
    c.pump();
    assert!(matches!(c.merge(b, a), Err(ErrorReply::BadRequest(m)) if m.contains("cycle")));
    // A chain is fine: b into d moves a's former member too.
    assert_eq!(c.merge(b, d), Ok(Reply::Count(2)));
    c.pump();
    assert_eq!(c.members(d), sorted(&[r, rb]));
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn steward_constraints_reach_both_sides_and_wait_for_unknown_records() {
    let mut c = Cluster::new(EmpiLimits::default());
    let [x, y] = [&records_on(0, 1)[0], &records_on(3, 1)[0]];
    // The pair's owner orders its changes: the smaller key.
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    let m = masters_on(0, 1)[0];
    c.put(vec![put(x, m, &[])]).unwrap();
    c.put(vec![put(y, m, &[])]).unwrap();
    // Made at the other side: applied there at once, then at the owner, which mirrors it back.
    assert_eq!(c.constrain(hi, lo, true), Ok(Reply::Changed(true)));
    assert_eq!(c.record(hi).map(|r| r.links), Some(vec![lo.clone()]));
    assert_eq!(c.record(lo).map(|r| r.links), Some(vec![]), "not delivered yet");
    assert_eq!(c.pump(), 2);
    assert_eq!(c.record(lo).map(|r| r.links), Some(vec![hi.clone()]));
    assert_eq!(c.constrain(hi, lo, true), Ok(Reply::Changed(false)));
    c.pump();
    // Opposite changes at once from both sides end, on both, where the owner's order ends: the
    // owner relinks (no change there), then applies the other side's unlink.
    assert_eq!(c.constrain(hi, lo, false), Ok(Reply::Changed(true)));
    assert_eq!(c.constrain(lo, hi, true), Ok(Reply::Changed(false)));
    c.pump();
    for (key, other) in [(x, y), (y, x)] {
        let r = c.record(key).unwrap();
        assert_eq!((r.links, r.unlinks), (vec![], vec![other.clone()]), "{key}");
    }
    // A record that is not stored yet keeps what arrives for it until its first put.
    let unborn = &records_on(2, 1)[0];
    assert_eq!(c.constrain(x, unborn, true), Ok(Reply::Changed(true)));
    c.pump();
    assert_eq!(c.record(unborn), None);
    assert_eq!(c.shards[2].0.empi.pending.len(), 1);
    c.put(vec![put(unborn, m, &[])]).unwrap();
    assert_eq!(c.record(unborn).map(|r| r.links), Some(vec![x.clone()]));
    assert!(c.shards[2].0.empi.pending.is_empty());
    // An update keeps the constraints, and a linked record keeps its identity whatever the
    // put says (one placed before the link arrived must not undo it).
    let elsewhere = masters_on(1, 1)[0];
    assert_eq!(
        c.put(vec![put(x, elsewhere, &[])]),
        Ok(Reply::Counts(vec![m])),
        "the answer names the identity the record holds, not the put's"
    );
    c.pump();
    let kept = c.record(x).unwrap();
    assert_eq!((kept.links, kept.unlinks), (vec![unborn.clone()], vec![y.clone()]));
    assert_eq!(kept.master, m, "a linked record is pinned");
    assert!(!c.members(elsewhere).contains(x));
    // Without links, the same put moves it.
    c.put(vec![put(y, elsewhere, &[])]).unwrap();
    c.pump();
    assert_eq!(c.record(y).map(|r| r.master), Some(elsewhere));
    assert_eq!(c.violations(), Vec::<String>::new());
    // Refusals: an unknown record here, a record of another shard, itself.
    let ghost = &records_on(0, 3)[2];
    assert!(matches!(c.constrain(ghost, x, true), Err(ErrorReply::NotFound(_))));
    let cmd = Command::EmpiConstrain {
        key: y.clone(),
        other: x.clone(),
        link: true,
        now_millis: 0,
    };
    assert_eq!(c.apply(0, &cmd), Err(ErrorReply::WrongShard { got: 0, expected: 3 }));
    assert!(matches!(c.constrain(x, x, true), Err(ErrorReply::BadRequest(_))));
    c.pump();
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn the_pending_constraints_are_bounded() {
    let mut c = Cluster::new(EmpiLimits {
        pending_constraints_max: 1,
        record_constraints_max: 2,
        ..EmpiLimits::default()
    });
    let x = &records_on(0, 1)[0];
    c.put(vec![put(x, 1, &[])]).unwrap();
    let unknown = records_on(1, 3);
    assert_eq!(c.constrain(x, &unknown[0], true), Ok(Reply::Changed(true)));
    assert_eq!(c.constrain(x, &unknown[1], false), Ok(Reply::Changed(true)));
    // x holds two constraints: a third other is refused, changing a known one is not.
    assert!(matches!(
        c.constrain(x, &unknown[2], true),
        Err(ErrorReply::BadRequest(_))
    ));
    assert_eq!(c.constrain(x, &unknown[1], true), Ok(Reply::Changed(true)));
    c.pump();
    // Only the first unknown record's constraint was kept; the second found the map full.
    let pending: Vec<&String> = c.shards[1].0.empi.pending.keys().collect();
    assert_eq!(pending, vec![&unknown[0]]);
}

#[test]
fn the_canary_loses_the_join_of_a_record_that_changes_identity() {
    for canary in [None, Some(Canary::EmpiSkipsMemberJoin)] {
        let mut c = Cluster::new(EmpiLimits::default());
        for (s, _) in &mut c.shards {
            s.set_canary(canary);
        }
        let r = &records_on(0, 1)[0];
        let [m1, m2] = [masters_on(1, 1)[0], masters_on(2, 1)[0]];
        c.put(vec![put(r, m1, &[])]).unwrap();
        c.pump();
        assert_eq!(c.members(m1), vec![r.clone()], "a new record still joins ({canary:?})");
        c.put(vec![put(r, m2, &[])]).unwrap();
        c.pump();
        let expected_events = match canary {
            None => vec![(m2, Some(r.clone()), Created)],
            Some(_) => vec![],
        };
        assert_eq!(c.events(2), expected_events, "{canary:?}");
        let violations = c.violations();
        match canary {
            None => assert_eq!(violations, Vec::<String>::new()),
            Some(_) => assert_eq!(violations, vec![format!("record {r} names {m2} which holds None")]),
        }
    }
}

#[test]
fn model_versions_only_move_forward() {
    let mut c = Cluster::new(EmpiLimits {
        model_bytes_max: 8,
        ..EmpiLimits::default()
    });
    let shard = on(&model_shard_key());
    let set = |version, model: &[u8]| Command::EmpiSetModel {
        version,
        model: model.to_vec(),
    };
    assert_eq!(c.read(EmpiRead::Model), Ok(Reply::EmpiState(EmpiState::Model(None))));
    assert_eq!(c.apply(shard, &set(2, b"{\"a\":2}")), Ok(Reply::Changed(true)));
    assert_eq!(c.apply(shard, &set(1, b"{}")), Ok(Reply::Changed(false)));
    assert_eq!(c.apply(shard, &set(2, b"{}")), Ok(Reply::Changed(false)));
    assert!(matches!(c.apply(shard, &set(9, b"{\"ab\":99}")), Err(ErrorReply::BadRequest(m)) if m.contains("bytes")));
    assert_eq!(
        c.read(EmpiRead::Model),
        Ok(Reply::EmpiState(EmpiState::Model(Some((2, b"{\"a\":2}".to_vec())))))
    );
    assert_eq!(c.apply(shard, &set(3, b"{}")), Ok(Reply::Changed(true)));
    let elsewhere = (shard + 1) % SHARDS;
    assert_eq!(
        c.apply(elsewhere, &set(4, b"{}")),
        Err(ErrorReply::WrongShard {
            got: elsewhere,
            expected: shard
        })
    );
    assert_eq!(
        c.read(EmpiRead::Model),
        Ok(Reply::EmpiState(EmpiState::Model(Some((3, b"{}".to_vec())))))
    );
}

#[test]
fn a_put_applies_only_over_the_version_it_was_placed_against() {
    let mut c = Cluster::new(EmpiLimits::default());
    let r = &records_on(1, 1)[0];
    let [m1, m2] = [masters_on(0, 1)[0], masters_on(2, 1)[0]];
    // Placed when there was no record: applies once; the same put again (a repeat of its
    // proposal) finds a record and is skipped.
    let first = put(r, m1, &[]);
    assert_eq!(c.put_as_is(vec![first.clone()]), Ok(Reply::Counts(vec![m1])));
    let v1 = c.record(r).map(|x| x.updated_millis);
    assert_eq!(c.put_as_is(vec![first]), Ok(Reply::Counts(vec![0])));
    // A newer put over v1 applies; a late one placed against v1 too, with other fields,
    // must not overwrite it.
    let mut newer = put(r, m2, &[]);
    newer.record.given_name = Some("anne".into());
    newer.base = v1;
    let mut late = put(r, m1, &[]);
    late.record.given_name = Some("annie".into());
    late.base = v1;
    assert_eq!(c.put_as_is(vec![newer]), Ok(Reply::Counts(vec![m2])));
    assert_eq!(c.put_as_is(vec![late]), Ok(Reply::Counts(vec![0])));
    c.pump();
    let held = c.record(r).unwrap();
    assert_eq!((held.record.given_name.as_deref(), held.master), (Some("anne"), m2));
    assert!(held.updated_millis > v1.unwrap());
    assert_eq!(c.violations(), Vec::<String>::new());
    // A steward constraint or an identity move is no write of the fields: a put placed before
    // it still applies.
    let before = held.updated_millis;
    let mut after_move = put(r, m1, &[]);
    after_move.base = Some(before);
    assert_eq!(c.constrain(r, &records_on(2, 1)[0], false), Ok(Reply::Changed(true)));
    assert_eq!(c.record(r).unwrap().updated_millis, before);
    assert_eq!(c.put_as_is(vec![after_move]), Ok(Reply::Counts(vec![m1])));
    c.pump();
    assert_eq!(c.record(r).map(|x| x.master), Some(m1));
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn a_put_in_a_session_applies_once_and_a_late_copy_is_refused() {
    let mut c = Cluster::new(EmpiLimits::default());
    let r = &records_on(1, 1)[0];
    let shard = on(&record_shard_key(r));
    let [m1, m2] = [masters_on(0, 1)[0], masters_on(2, 1)[0]];
    let in_session = |seq: u64, ack_below: u64, p: EmpiPut, now_millis: u64| Command::InSession {
        session: Session {
            client_id: 7,
            seq,
            ack_below,
        },
        cmd: Box::new(Command::EmpiPut {
            puts: vec![p],
            now_millis,
        }),
    };
    // Two copies of request 1 (a client's retry), each placed when nothing was stored: the
    // first applies, the second gets the first's answer, not a second application.
    let first = in_session(1, 1, put(r, m1, &[]), NOW);
    assert_eq!(c.apply(shard, &first), Ok(Reply::Counts(vec![m1])));
    let retry = in_session(1, 1, put(r, m2, &[]), NOW + 1);
    assert_eq!(c.apply(shard, &retry), Ok(Reply::Counts(vec![m1])));
    assert_eq!(c.record(r).map(|x| x.master), Some(m1));
    // Request 2 updates the record; a third copy of request 1, placed after it (over its
    // version, so the put's own guard would let it through), is refused by the session.
    let mut second = put(r, m2, &[]);
    second.record.given_name = Some("anne".into());
    second.base = c.record(r).map(|x| x.updated_millis);
    assert_eq!(
        c.apply(shard, &in_session(2, 2, second, NOW + 2)),
        Ok(Reply::Counts(vec![m2]))
    );
    let mut late = put(r, m1, &[]);
    late.record.given_name = Some("annie".into());
    late.base = c.record(r).map(|x| x.updated_millis);
    assert_eq!(
        c.apply(shard, &in_session(1, 1, late, NOW + 3)),
        Err(ErrorReply::StaleSession { client_id: 7, seq: 1 })
    );
    c.pump();
    let held = c.record(r).unwrap();
    assert_eq!((held.record.given_name.as_deref(), held.master), (Some("anne"), m2));
    assert_eq!(c.violations(), Vec::<String>::new());
    // Only a workload's write for one request takes a session, and sessions do not nest.
    let session = Session {
        client_id: 7,
        seq: 3,
        ack_below: 3,
    };
    let merge = Command::InSession {
        session,
        cmd: Box::new(Command::EmpiMerge {
            from: m2,
            into: m1,
            now_millis: NOW,
        }),
    };
    assert!(matches!(c.apply(0, &merge), Err(ErrorReply::BadRequest(_))));
    let nested = Command::InSession {
        session,
        cmd: Box::new(in_session(4, 3, put(r, m1, &[]), NOW)),
    };
    assert!(matches!(c.apply(shard, &nested), Err(ErrorReply::BadRequest(_))));
    assert_eq!(c.record(r).map(|x| x.master), Some(m2), "neither applied");
}

#[test]
fn master_ids_order_identities_by_age() {
    use super::{new_master_id, MASTER_ID_HASH_BITS};
    let a = new_master_id("S:1", 1_796_000_000_000);
    let b = new_master_id("S:2", 1_796_000_000_001);
    let c = new_master_id("S:3", 1_796_000_000_001);
    assert!(a < b && a < c, "an older identity has the smaller id");
    assert_ne!(b, c, "one millisecond's identities differ by their founding record");
    assert_eq!(
        new_master_id("S:1", 1_796_000_000_000),
        a,
        "ids are a function of record and time"
    );
    assert!(a >> MASTER_ID_HASH_BITS == 1_796_000_000_000 && a < 1 << 63);
    assert!(new_master_id("S:1", 0) >= 1);
}
