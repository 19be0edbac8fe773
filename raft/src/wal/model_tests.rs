//! Model-based test: random op sequences of several groups, with tiny segments (so rolling,
//! checkpoints and deletion happen constantly) and reopens at random points, must always
//! recover exactly what a plain in-memory replay of every acknowledged op gives. Deferred
//! committed pointers are mixed in: a clean close must write them too.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// An independent statement of the replay rules in the module documentation.
/// The model's groups that hold state: recovery reports a group that holds
/// nothing as absent.
fn live(model: &BTreeMap<u32, GroupLog>) -> BTreeMap<u32, GroupLog> {
    model
        .iter()
        .filter(|(_, g)| !g.is_empty())
        .map(|(k, g)| (*k, g.clone()))
        .collect()
}

fn model_apply(model: &mut BTreeMap<u32, GroupLog>, op: &WalOp) {
    match op {
        WalOp::Append { group, entries } => {
            let log = model.entry(*group).or_default();
            for (index, bytes) in entries {
                if log.purged_upto.is_none_or(|p| *index > p) {
                    log.entries.insert(*index, bytes.clone());
                }
            }
        }
        WalOp::Truncate { group, from_index } => {
            let log = model.entry(*group).or_default();
            log.entries.retain(|index, _| index < from_index);
        }
        WalOp::Purge {
            group,
            upto_index,
            meta,
        } => {
            let log = model.entry(*group).or_default();
            if log.purged_upto.is_none_or(|p| *upto_index > p) {
                log.purged_upto = Some(*upto_index);
                log.purged_meta = meta.clone();
                log.entries.retain(|index, _| index > upto_index);
            }
        }
        WalOp::Vote { group, bytes } => model.entry(*group).or_default().vote = Some(bytes.clone()),
        WalOp::Committed { group, bytes } => model.entry(*group).or_default().committed = Some(bytes.clone()),
    }
}

fn op_strategy() -> impl Strategy<Value = WalOp> {
    let group = 0u32..3;
    prop_oneof![
        4 => (group.clone(), 1u64..60, 1usize..6, any::<u8>()).prop_map(|(group, first, n, tag)| WalOp::Append {
            group,
            entries: (first..first + n as u64).map(|i| (i, vec![tag; (i % 7) as usize + 1])).collect(),
        }),
        1 => (group.clone(), 1u64..60).prop_map(|(group, from_index)| WalOp::Truncate { group, from_index }),
        2 => (group.clone(), 1u64..60, any::<u8>()).prop_map(|(group, upto_index, tag)| WalOp::Purge {
            group,
            upto_index,
            meta: vec![tag],
        }),
        1 => (group.clone(), any::<u8>()).prop_map(|(group, tag)| WalOp::Vote { group, bytes: vec![tag] }),
        1 => (group, any::<u8>()).prop_map(|(group, tag)| WalOp::Committed { group, bytes: vec![tag, tag] }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    /// A durable request of one to three ops.
    Ops(Vec<WalOp>),
    /// A deferred request of committed pointers.
    Deferred(Vec<WalOp>),
    /// A clean close and reopen.
    Reopen,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let committed = (0u32..3, any::<u8>()).prop_map(|(group, tag)| WalOp::Committed {
        group,
        bytes: vec![tag, 1],
    });
    prop_oneof![
        12 => prop::collection::vec(op_strategy(), 1..4).prop_map(Step::Ops),
        4 => prop::collection::vec(committed, 1..3).prop_map(Step::Deferred),
        1 => Just(Step::Reopen),
    ]
}

fn submit_sync(wal: &Wal, ops: Vec<WalOp>) {
    let (tx, rx) = std::sync::mpsc::channel();
    wal.submit(
        ops,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    )
    .unwrap();
    rx.recv().unwrap().unwrap();
}

fn options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 160,
        fsync: false,
        ..WalOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn recovery_matches_the_model(steps in prop::collection::vec(step_strategy(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), options()).unwrap();
        let mut model = BTreeMap::new();
        for step in steps {
            match step {
                Step::Ops(ops) => {
                    for op in &ops {
                        model_apply(&mut model, op);
                    }
                    submit_sync(&wal, ops);
                }
                Step::Deferred(ops) => {
                    for op in &ops {
                        model_apply(&mut model, op);
                    }
                    rt.block_on(wal.submit_deferred(ops)).unwrap();
                }
                Step::Reopen => {
                    wal.close();
                    let (reopened, recovered) = Wal::open(dir.path(), options()).unwrap();
                    prop_assert_eq!(&recovered.groups, &live(&model));
                    prop_assert_eq!(recovered.torn_tail_bytes, 0);
                    wal = reopened;
                }
            }
        }
        wal.close();
        let (wal, recovered) = Wal::open(dir.path(), options()).unwrap();
        wal.close();
        prop_assert_eq!(recovered.groups, live(&model));
    }
}
