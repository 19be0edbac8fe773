//! Snapshot round trips, corrupt snapshots, and a property test that a
//! state restored from a snapshot midway converges with one that was not.

use plexus_proto::{Cursor, Direction, FilterSpec, NodeInfo, Session, ShardPlacement, ENTRY_SEQ_BITS};
use proptest::prelude::*;

use super::tests::{ids_on, name_on, Harness, HERE};
use super::*;

fn client(session: Option<Session>, op: WriteOp, now_millis: u64) -> Command {
    Command::Client {
        session,
        op,
        now_millis,
    }
}

/// A state holding every kind of data: a shard map, filters with sealed and
/// tail parts (several block filters), timelines, local and cross-shard
/// edges, delivered in-edges, a pending outbox and cached session answers.
fn rich_state() -> Harness {
    let mut h = Harness::new(StateLimits::default());
    let map = ShardMap {
        shard_count: 4,
        nodes: vec![NodeInfo {
            id: 7,
            client_addr: "10.0.0.7:7000".into(),
        }],
        shards: vec![ShardPlacement {
            shard: 0,
            replicas: vec![7],
            leader: None,
        }],
    };
    h.cmd(Command::SetShardMap(map)).unwrap();
    let f = name_on(HERE, "seen");
    let spec = FilterSpec {
        expected_items: 20,
        fp_rate_ppm: 10_000,
    };
    h.cmd(client(None, WriteOp::FilterCreate { name: f.clone(), spec }, 5))
        .unwrap();
    let keys = |r: std::ops::Range<u32>| r.map(|i| format!("k{i}").into_bytes()).collect::<Vec<_>>();
    h.cmd(client(
        None,
        WriteOp::FilterAdd {
            name: f.clone(),
            keys: keys(0..30),
        },
        5,
    ))
    .unwrap();
    h.cmd(client(None, WriteOp::FilterSeal { name: f.clone() }, 5)).unwrap();
    h.cmd(client(
        None,
        WriteOp::FilterAdd {
            name: f,
            keys: keys(30..70),
        },
        5,
    ))
    .unwrap();
    let owners = ids_on(HERE, 2);
    for (i, owner) in owners.iter().enumerate() {
        for j in 0..3u8 {
            let op = WriteOp::TimelineAppend {
                owner: *owner,
                item: vec![i as u8, j],
            };
            h.cmd(client(None, op, 100 + u64::from(j))).unwrap();
        }
    }
    let local = ids_on(HERE, 3);
    let remote = ids_on(2, 2);
    for (src, dst) in [
        (local[0], local[1]),
        (local[0], remote[0]),
        (local[1], remote[1]),
        (local[2], local[0]),
    ] {
        h.cmd(client(None, WriteOp::Follow { src, dst }, 200)).unwrap();
    }
    let items = vec![EdgeUpdate {
        src: ids_on(3, 1)[0],
        dst: local[2],
        add: true,
    }];
    h.cmd(Command::EdgeDelivery {
        from_shard: 3,
        first_seq: 1,
        items,
    })
    .unwrap();
    let s = Session {
        client_id: 9,
        seq: 4,
        ack_below: 2,
    };
    h.cmd(client(
        Some(s),
        WriteOp::TimelineAppend {
            owner: owners[0],
            item: b"s".to_vec(),
        },
        300,
    ))
    .unwrap();
    h
}

/// Reads that together observe every kind of data in `rich_state`.
fn probe_reads() -> Vec<ReadOp> {
    let f = name_on(HERE, "seen");
    let keys = (0..80u32).map(|i| format!("k{i}").into_bytes()).collect();
    let mut reads = vec![ReadOp::FilterContains { name: f, keys }];
    for owner in ids_on(HERE, 2) {
        reads.push(ReadOp::TimelineRead {
            owner,
            cursor: Cursor::Latest,
            limit: 10,
        });
    }
    for vertex in ids_on(HERE, 3) {
        for direction in [Direction::Out, Direction::In] {
            reads.push(ReadOp::Neighbors {
                vertex,
                direction,
                after: None,
                limit: 10,
            });
            reads.push(ReadOp::NeighborSet { vertex, direction });
        }
    }
    reads
}

#[test]
fn snapshot_roundtrip_is_exact() {
    let h = rich_state();
    assert_eq!(h.s.outbox_len(), 2);
    assert!(h
        .s
        .filters
        .values()
        .next()
        .is_some_and(|f| f.sealed_len() == 1 && f.tail_len() == 2));
    let bytes = h.s.to_snapshot();
    let back = ShardState::from_snapshot(&bytes, StateLimits::default()).unwrap();
    assert_eq!(back, h.s);
    assert_eq!(back.state_hash(), h.s.state_hash());
    assert_eq!(back.to_snapshot(), bytes);
    assert_eq!(back.last_applied(), h.s.last_applied());
    assert_eq!(back.shard_map(), h.s.shard_map());
    assert_eq!(back.outbox_pending(100), h.s.outbox_pending(100));
    for read in probe_reads() {
        assert_eq!(back.read(&read), h.s.read(&read), "{read:?}");
    }
    // A retried session write is still answered from the restored cache.
    let mut back = Harness {
        s: back,
        index: h.index,
    };
    let owner = ids_on(HERE, 1)[0];
    let s = Session {
        client_id: 9,
        seq: 4,
        ack_below: 2,
    };
    let retry = back.cmd(client(
        Some(s),
        WriteOp::TimelineAppend {
            owner,
            item: b"s".to_vec(),
        },
        999,
    ));
    assert_eq!(retry, Ok(Reply::Appended(300 << ENTRY_SEQ_BITS)));
}

#[test]
fn state_hash_tracks_content() {
    let (a, b) = (rich_state(), rich_state());
    assert_eq!(a.s.state_hash(), b.s.state_hash());
    let mut c = rich_state();
    c.cmd(Command::Noop).unwrap();
    assert_ne!(c.s.state_hash(), a.s.state_hash());
    let empty = ShardState::new(HERE, 4, StateLimits::default());
    assert_eq!(
        empty.state_hash(),
        ShardState::new(HERE, 4, StateLimits::default()).state_hash()
    );
    assert_ne!(empty.state_hash(), a.s.state_hash());
}

#[test]
fn every_flipped_byte_is_detected() {
    let bytes = rich_state().s.to_snapshot();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x5a;
        assert!(
            ShardState::from_snapshot(&bad, StateLimits::default()).is_err(),
            "flip at {i}"
        );
    }
}

#[test]
fn every_truncation_is_detected() {
    let bytes = rich_state().s.to_snapshot();
    for len in 0..bytes.len() {
        assert!(
            ShardState::from_snapshot(&bytes[..len], StateLimits::default()).is_err(),
            "length {len}"
        );
    }
    let mut longer = bytes;
    longer.push(0);
    assert!(matches!(
        ShardState::from_snapshot(&longer, StateLimits::default()),
        Err(StateError::BadLength { .. })
    ));
}

#[test]
fn garbage_is_refused_with_the_right_error() {
    let limits = StateLimits::default;
    assert!(matches!(
        ShardState::from_snapshot(b"", limits()),
        Err(StateError::TooShort(0))
    ));
    assert!(matches!(
        ShardState::from_snapshot(&[7u8; 64], limits()),
        Err(StateError::BadMagic)
    ));
    for version in [0u8, 6] {
        let mut other = rich_state().s.to_snapshot();
        other[8] = version;
        assert!(matches!(
            ShardState::from_snapshot(&other, limits()),
            Err(StateError::UnsupportedVersion(v)) if v == u32::from(version)
        ));
    }
    let mut bad_crc = rich_state().s.to_snapshot();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert!(matches!(
        ShardState::from_snapshot(&bad_crc, limits()),
        Err(StateError::Checksum { .. })
    ));
    // Well-framed, correctly checksummed nonsense must fail to decode.
    let framed = snapshot::frame_for_test(&[0xff; 64]);
    assert!(matches!(
        ShardState::from_snapshot(&framed, limits()),
        Err(StateError::Decode(_))
    ));
}

/// One random command over small pools of keys, so commands interact.
fn command() -> impl Strategy<Value = Command> {
    let owners = ids_on(HERE, 3);
    let srcs = ids_on(HERE, 4);
    let dsts: Vec<u64> = ids_on(HERE, 4)
        .into_iter()
        .chain(ids_on(1, 3))
        .chain(ids_on(2, 2))
        .collect();
    let from1 = ids_on(1, 2);
    let from3 = ids_on(3, 2);
    let names = vec![name_on(HERE, "a"), name_on(HERE, "b")];
    let here_v = ids_on(HERE, 4);
    let key = (0u8..40).prop_map(|k| vec![b'k', k]);
    let op = prop_oneof![
        (
            prop::sample::select(owners.clone()),
            prop::collection::vec(any::<u8>(), 0..4)
        )
            .prop_map(|(owner, item)| WriteOp::TimelineAppend { owner, item }),
        (prop::sample::select(owners), 1u64..4, 0u64..4).prop_map(|(owner, ms, k)| WriteOp::TimelineDelete {
            owner,
            id: (ms << ENTRY_SEQ_BITS) + k
        }),
        (prop::sample::select(srcs.clone()), prop::sample::select(dsts.clone()))
            .prop_map(|(src, dst)| WriteOp::Follow { src, dst }),
        (prop::sample::select(srcs), prop::sample::select(dsts)).prop_map(|(src, dst)| WriteOp::Unfollow { src, dst }),
        (prop::sample::select(names.clone()), 1u64..40).prop_map(|(name, n)| WriteOp::FilterCreate {
            name,
            spec: FilterSpec {
                expected_items: n,
                fp_rate_ppm: 20_000
            }
        }),
        (prop::sample::select(names.clone()), prop::collection::vec(key, 0..6))
            .prop_map(|(name, keys)| WriteOp::FilterAdd { name, keys }),
        prop::sample::select(names).prop_map(|name| WriteOp::FilterSeal { name }),
        (
            prop::sample::select(ids_on(HERE, 3)),
            prop::collection::vec(prop::sample::select(vec![0.0f32, -0.0, 1.5, f32::NAN]), 0..3)
        )
            .prop_map(|(vertex, features)| WriteOp::SetFeatures { vertex, features }),
    ];
    let session = prop::option::of(
        (1u64..4, 1u64..8, 0u64..5).prop_map(|(client_id, seq, ack_below)| Session {
            client_id,
            seq,
            ack_below,
        }),
    );
    let delivery = (
        any::<bool>(),
        1u64..6,
        prop::collection::vec((0usize..2, 0usize..4, any::<bool>()), 0..4),
    )
        .prop_map(move |(one, first_seq, raw)| {
            let (from_shard, pool) = if one { (1, &from1) } else { (3, &from3) };
            let items = raw
                .into_iter()
                .map(|(s, d, add)| EdgeUpdate {
                    src: pool[s],
                    dst: here_v[d],
                    add,
                })
                .collect();
            Command::EdgeDelivery {
                from_shard,
                first_seq,
                items,
            }
        });
    prop_oneof![
        6 => (session, op, 1u64..4).prop_map(|(session, op, now_millis)| Command::Client { session, op, now_millis }),
        2 => delivery,
        1 => (1u32..3, 0u64..6).prop_map(|(to_shard, upto_seq)| Command::OutboxTrim { to_shard, upto_seq }),
        1 => Just(Command::Noop),
    ]
}

fn small_limits() -> StateLimits {
    StateLimits {
        timeline_len_max: 3,
        sessions_max: 2,
        session_responses_max: 2,
        outbox_entries_max: 4,
        ..StateLimits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn restored_midway_converges(cmds in prop::collection::vec(command(), 0..60), split in 0usize..60) {
        let split = split.min(cmds.len());
        let mut a = ShardState::new(HERE, 4, small_limits());
        let mut b = ShardState::new(HERE, 4, small_limits());
        for (i, cmd) in cmds.iter().enumerate() {
            if i == split {
                let restored = ShardState::from_snapshot(&b.to_snapshot(), small_limits()).unwrap();
                prop_assert_eq!(&restored, &b);
                b = restored;
            }
            let index = i as u64 + 1;
            prop_assert_eq!(a.apply(index, cmd), b.apply(index, cmd));
        }
        prop_assert_eq!(a.state_hash(), b.state_hash());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.to_snapshot(), b.to_snapshot());
    }

    #[test]
    fn framed_garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = ShardState::from_snapshot(&snapshot::frame_for_test(&body), StateLimits::default());
    }
}
