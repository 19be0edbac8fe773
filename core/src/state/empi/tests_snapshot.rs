//! Identity matching's state through snapshots (round trips, old versions, hostile forms), and a
//! property test: any interleaving of EMPI writes, partial deliveries and restores from
//! snapshots converges, once delivered, to records, identities and an index that agree.

use plexus_proto::{master_shard_key, model_shard_key, shard_for_key, EmpiEventKind, MasterId, ShardId, WriteOp};
use proptest::prelude::*;

use super::tests::{blocks_on, masters_on, on, put, records_on, Cluster, SHARDS};
use super::EmpiForm;
use crate::command::Command;
use crate::state::snapshot::{empty_empi, frame_for_test, frame_version_for_test};
use crate::state::{EmpiLimits, ShardState, StateError, StateLimits};

fn limits() -> StateLimits {
    StateLimits {
        empi: EmpiLimits {
            bloom: super::EmpiBloomSizing {
                base_items: 2,
                fp_rate_ppm: 10_000,
            },
            ..EmpiLimits::default()
        },
        ..StateLimits::default()
    }
}

/// A cluster holding every kind of EMPI state, with messages still in the outboxes: records
/// with constraints and pending ones, a chained Bloom filter, a merged identity, events, a model.
fn rich_cluster() -> Cluster {
    let mut c = Cluster::new(limits().empi);
    let keys: Vec<String> = (0..SHARDS).flat_map(|s| records_on(s, 2)).collect();
    let blocks: Vec<String> = (0..SHARDS).flat_map(|s| blocks_on(s, 3)).collect();
    let masters: Vec<MasterId> = (0..SHARDS).map(|s| masters_on(s, 1)[0]).collect();
    for (i, k) in keys.iter().enumerate() {
        let bs: Vec<&String> = blocks.iter().skip(i % 3).step_by(2).collect();
        c.put(vec![put(k, masters[i % 4], &bs)]).unwrap();
    }
    c.pump();
    c.constrain(&keys[0], &keys[3], true).unwrap();
    c.constrain(&keys[1], &records_on(2, 3)[2], false).unwrap();
    c.merge(masters[1], masters[0]).unwrap();
    let model = Command::EmpiSetModel {
        version: 7,
        model: b"{\"m\":[0.9]}".to_vec(),
    };
    c.apply(shard_for_key(&model_shard_key(), SHARDS), &model).unwrap();
    c
}

#[test]
fn empi_state_survives_a_snapshot_and_hashes_equal() {
    let mut c = rich_cluster();
    assert!(c.shards.iter().any(|(s, _)| s.empi_outbox_len() > 0));
    assert!(c.shards.iter().any(|(s, _)| s.empi.index.bloom_shape().0 > 1));
    for (state, _) in &mut c.shards {
        let bytes = state.to_snapshot();
        let back = ShardState::from_snapshot(&bytes, limits()).unwrap();
        assert_eq!(&back, state);
        assert_eq!(back.state_hash(), state.state_hash());
        assert_eq!(back.to_snapshot(), bytes);
        *state = back;
    }
    c.pump();
    assert_eq!(c.violations(), Vec::<String>::new());
    assert_eq!(
        c.shards[0]
            .0
            .empi
            .masters
            .values()
            .filter(|m| m.merged_into.is_some())
            .count(),
        0
    );
    let merged = c.master(masters_on(1, 1)[0]).unwrap();
    assert_eq!(merged.merged_into, Some(masters_on(0, 1)[0]));
}

#[test]
fn the_state_hash_covers_empi_state() {
    let (a, b) = (rich_cluster(), rich_cluster());
    for s in 0..SHARDS as usize {
        assert_eq!(a.shards[s].0.state_hash(), b.shards[s].0.state_hash());
    }
    let shard = shard_for_key(&model_shard_key(), SHARDS);
    let mut c = rich_cluster();
    let (state, index) = &mut c.shards[shard as usize];
    let mut other = state.clone();
    // Same log position, different model: only the EMPI part differs.
    let model = Command::EmpiSetModel {
        version: 8,
        model: b"{}".to_vec(),
    };
    state.apply(*index + 1, &model).unwrap();
    other.apply(*index + 1, &Command::Noop).unwrap();
    assert_ne!(state.state_hash(), other.state_hash());
}

#[test]
fn a_version_three_snapshot_loads_without_empi_state() {
    let mut s = ShardState::new(0, SHARDS, StateLimits::default());
    let owner = (1u64..)
        .find(|v| shard_for_key(&plexus_proto::ShardKey::Id(*v), SHARDS) == 0)
        .unwrap();
    let op = WriteOp::TimelineAppend {
        owner,
        item: b"old".to_vec(),
    };
    let cmd = Command::Client {
        session: None,
        op,
        now_millis: 5,
    };
    s.apply(1, &cmd).unwrap();
    // A version-3 body is today's without the trailing (empty) EMPI form.
    let snapshot = s.to_snapshot();
    let mut body = snapshot[20..snapshot.len() - 4].to_vec();
    let tail = empty_empi();
    assert!(body.ends_with(&tail));
    body.truncate(body.len() - tail.len());
    let v3 = frame_version_for_test(3, &body);
    assert_eq!(ShardState::from_snapshot(&v3, StateLimits::default()).unwrap(), s);
    // The same body framed as version 4 lacks its EMPI form.
    assert!(matches!(
        ShardState::from_snapshot(&frame_for_test(&body), StateLimits::default()),
        Err(StateError::Decode(_))
    ));
}

#[test]
fn a_version_four_snapshot_loads_without_member_unlinks() {
    let mut c = Cluster::new(EmpiLimits::default());
    let (a, b) = (&records_on(0, 1)[0], &records_on(1, 1)[0]);
    let m = masters_on(2, 1)[0];
    c.put(vec![put(a, m, &[])]).unwrap();
    c.pump();
    let shard = on(&master_shard_key(m)) as usize;
    let state = &c.shards[shard].0;
    // A version-4 body is today's without the trailing (empty) list of member unlinks.
    let snapshot = state.to_snapshot();
    let mut body = snapshot[20..snapshot.len() - 4].to_vec();
    assert_eq!(body.pop(), Some(0), "no member holds an unlink yet");
    let v4 = frame_version_for_test(4, &body);
    assert_eq!(&ShardState::from_snapshot(&v4, StateLimits::default()).unwrap(), state);
    // Once a member's unlink is kept, the list is there and round-trips.
    c.constrain(a, b, false).unwrap();
    c.pump();
    let state = &c.shards[shard].0;
    assert_eq!(state.empi.apart.len(), 1);
    let back = ShardState::from_snapshot(&state.to_snapshot(), StateLimits::default()).unwrap();
    assert_eq!(&back, state);
}

/// Loads shard `shard` of `c` with its EMPI form replaced by `edit`'s version of it.
fn load_edited(c: &Cluster, shard: usize, edit: impl FnOnce(&mut EmpiForm)) -> Result<ShardState, StateError> {
    let state = &c.shards[shard].0;
    let snapshot = state.to_snapshot();
    let mut body = snapshot[20..snapshot.len() - 4].to_vec();
    let mut form = state.empi.to_form();
    let encoded = postcard::to_stdvec(&form).unwrap();
    assert!(body.ends_with(&encoded));
    body.truncate(body.len() - encoded.len());
    edit(&mut form);
    body.extend(postcard::to_stdvec(&form).unwrap());
    ShardState::from_snapshot(&frame_for_test(&body), limits())
}

#[test]
fn decoded_empi_state_is_checked() {
    let mut c = rich_cluster();
    c.pump();
    let unborn = &records_on(2, 3)[2];
    assert_eq!(c.shards[2].0.empi.pending.keys().collect::<Vec<_>>(), vec![unborn]);
    let invalid = |shard: usize, edit: &dyn Fn(&mut EmpiForm)| {
        matches!(load_edited(&c, shard, edit), Err(StateError::Invalid(_)))
    };
    assert_eq!(load_edited(&c, 0, |_| {}).unwrap(), c.shards[0].0);
    assert!(invalid(0, &|f| f.records.reverse()));
    assert!(invalid(0, &|f| {
        f.records[0].links = vec!["A:0".into()];
        f.records[0].unlinks = vec!["A:0".into()];
    }));
    assert!(invalid(0, &|f| f.records[0].blocks = vec!["b2".into(), "b1".into()]));
    assert!(invalid(0, &|f| {
        let other = f.records[1].record.clone();
        f.records[0].record = other;
    }));
    assert!(invalid(0, &|f| f.masters[0].merged_into = Some(f.masters[0].id)));
    assert!(invalid(1, &|f| f.masters[0].members.push("S:0".into())));
    assert!(invalid(0, &|f| f.events.swap(0, 1)));
    assert!(invalid(0, &|f| f.events_next_seq += 1));
    assert!(invalid(0, &|f| {
        f.events.clear();
        f.events_next_seq = u64::MAX;
    }));
    assert!(invalid(0, &|f| {
        f.events.clear();
        f.events_next_seq = 0;
    }));
    assert!(invalid(0, &|f| f.events[0].shard = 3));
    assert!(invalid(0, &|f| f.index.clear_bloom_for_test()));
    assert!(invalid(0, &|f| f.delivered.push(f.delivered[0])));
    // Pending constraints only for records not stored, and never empty.
    assert!(invalid(2, &|f| f.pending[0].0 = f.records[0].record.key_string()));
    assert!(invalid(2, &|f| f.pending[0].1 = Default::default()));
    assert!(invalid(2, &|f| f.pending.push(f.pending[0].clone())));
    // Member unlinks only for members of live identities here, ascending, never empty.
    let kept = (0..SHARDS as usize)
        .find(|&s| !c.shards[s].0.empi.apart.is_empty())
        .expect("the rich cluster has a member with an unlink");
    assert!(invalid(kept, &|f| f.apart[0].1[0].1.clear()));
    assert!(invalid(kept, &|f| f.apart[0].1[0].0 = "S:nobody".into()));
    assert!(invalid(kept, &|f| f.apart.push(f.apart[0].clone())));
    assert!(invalid(kept, &|f| f.apart[0].0 = MasterId::MAX));
    assert!(invalid(kept, &|f| f.apart[0].1.clear()));
    // A record foreign to the shard.
    assert!(invalid(1, &|f| {
        let mut r = f.records[0].clone();
        r.record.source_id = records_on(0, 1)[0].split_once(':').unwrap().1.into();
        f.records = vec![r];
    }));
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Step {
    Put {
        rec: usize,
        master: usize,
        blocks: Vec<usize>,
    },
    Merge {
        a: usize,
        b: usize,
    },
    Reassign {
        rec: usize,
        master: usize,
    },
    Constrain {
        rec: usize,
        other: usize,
        link: bool,
    },
    Deliver {
        dest: ShardId,
    },
    Restore {
        shard: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..8, 0usize..6, prop::collection::vec(0usize..6, 0..4))
            .prop_map(|(rec, master, blocks)| Step::Put { rec, master, blocks }),
        1 => (0usize..6, 0usize..6).prop_map(|(a, b)| Step::Merge { a, b }),
        1 => (0usize..8, 0usize..6).prop_map(|(rec, master)| Step::Reassign { rec, master }),
        1 => (0usize..8, 0usize..8, any::<bool>()).prop_map(|(rec, other, link)| Step::Constrain { rec, other, link }),
        3 => (0..SHARDS).prop_map(|dest| Step::Deliver { dest }),
        1 => (0usize..4).prop_map(|shard| Step::Restore { shard }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_converges_once_delivered(steps in prop::collection::vec(step(), 0..48)) {
        let mut c = Cluster::new(limits().empi);
        let recs: Vec<String> = (0..SHARDS).flat_map(|s| records_on(s, 2)).collect();
        let masters: Vec<MasterId> = (0..SHARDS).flat_map(|s| masters_on(s, 2)).take(6).collect();
        let blocks: Vec<String> = (0..SHARDS).flat_map(|s| blocks_on(s, 2)).take(6).collect();
        for s in steps {
            match s {
                Step::Put { rec, master, blocks: bs } => {
                    let bs: Vec<&String> = bs.iter().map(|b| &blocks[*b]).collect();
                    c.put(vec![put(&recs[rec], masters[master], &bs)]).unwrap();
                }
                // The service merges into the older identity; here, the smaller id, so merges
                // never form a cycle.
                Step::Merge { a, b } => {
                    let (from, into) = (masters[a].max(masters[b]), masters[a].min(masters[b]));
                    c.merge(from, into).unwrap();
                }
                Step::Reassign { rec, master } => {
                    let cmd = Command::EmpiReassign { key: recs[rec].clone(), master: masters[master], now_millis: c.now };
                    let shard = shard_for_key(&plexus_proto::record_shard_key(&recs[rec]), SHARDS);
                    c.apply(shard, &cmd).unwrap();
                }
                Step::Constrain { rec, other, link } => {
                    let r = c.constrain(&recs[rec], &recs[other], link);
                    prop_assert!(r.is_ok() || rec == other || c.record(&recs[rec]).is_none(), "{r:?}");
                }
                Step::Deliver { dest } => {
                    c.deliver_to(dest);
                }
                Step::Restore { shard } => {
                    let state = &c.shards[shard].0;
                    let back = ShardState::from_snapshot(&state.to_snapshot(), limits()).unwrap();
                    prop_assert_eq!(&back, state);
                    c.shards[shard].0 = back;
                }
            }
        }
        c.pump();
        prop_assert_eq!(c.violations(), Vec::<String>::new());
        // The two sides of every constraint agree.
        for (s, _) in &c.shards {
            for (key, r) in &s.empi.records {
                for (list, link) in [(&r.links, true), (&r.unlinks, false)] {
                    for other in list {
                        let Some(theirs) = c.record(other) else {
                            // Still pending on the other side until that record is put.
                            continue;
                        };
                        let theirs = Some(theirs);
                        let mirrored = theirs.as_ref().map(|t| if link { &t.links } else { &t.unlinks });
                        prop_assert!(mirrored.is_some_and(|l| l.contains(key)), "{key} {link} {other}: {theirs:?}");
                    }
                }
            }
        }
        // Every shard's events are numbered from 1 without gaps, and a merged identity logged
        // its merge.
        for (s, _) in &c.shards {
            let seqs: Vec<u64> = s.empi.events.from(1, usize::MAX).map(|e| e.seq).collect();
            prop_assert_eq!(seqs, (1..s.empi.events.next_seq()).collect::<Vec<_>>());
            for (id, m) in &s.empi.masters {
                let logged = s.empi.events.from(1, usize::MAX)
                    .any(|e| e.master == *id && matches!(e.kind, EmpiEventKind::Merged { .. }));
                prop_assert_eq!(logged, m.merged_into.is_some());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Damaged EMPI forms (bytes changed in the body's EMPI tail, checksum recomputed) are
    /// answered with an error or a state, never a panic.
    #[test]
    fn damaged_empi_forms_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let c = rich_cluster();
        let state = &c.shards[0].0;
        let snapshot = state.to_snapshot();
        let mut body = snapshot[20..snapshot.len() - 4].to_vec();
        let tail = postcard::to_stdvec(&state.empi.to_form()).unwrap().len();
        let start = body.len() - tail;
        for (at, byte) in edits {
            let i = start + at.index(tail);
            body[i] = byte;
        }
        let _ = ShardState::from_snapshot(&frame_for_test(&body), limits());
    }
}
