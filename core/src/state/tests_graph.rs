//! Exact-input, exact-output tests of the graph commands: follows on one
//! shard and across shards, the outbox, deliveries, trims and graph reads.

use plexus_proto::Direction;
use roaring::RoaringTreemap;

use super::tests::{ids_on, is_bad, Harness, HERE};
use super::*;

#[test]
fn follow_on_one_shard_updates_both_halves() {
    let mut h = Harness::new(StateLimits::default());
    let v = ids_on(HERE, 2);
    assert_eq!(
        h.write(WriteOp::Follow { src: v[0], dst: v[1] }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.write(WriteOp::Follow { src: v[0], dst: v[1] }),
        Ok(Reply::Changed(false))
    );
    assert_eq!(
        h.s.read(&ReadOp::HasEdge { src: v[0], dst: v[1] }),
        Ok(Reply::Bool(true))
    );
    assert_eq!(
        h.s.read(&ReadOp::HasEdge { src: v[1], dst: v[0] }),
        Ok(Reply::Bool(false))
    );
    assert_eq!(
        h.s.read(&ReadOp::Degree {
            vertex: v[1],
            direction: Direction::In
        }),
        Ok(Reply::Count(1))
    );
    assert_eq!(
        h.s.read(&ReadOp::Degree {
            vertex: v[0],
            direction: Direction::Out
        }),
        Ok(Reply::Count(1))
    );
    assert!(h.s.outbox_pending(10).is_empty());
    assert_eq!(
        h.write(WriteOp::Unfollow { src: v[0], dst: v[1] }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.write(WriteOp::Unfollow { src: v[0], dst: v[1] }),
        Ok(Reply::Changed(false))
    );
    assert_eq!(
        h.s.read(&ReadOp::Degree {
            vertex: v[1],
            direction: Direction::In
        }),
        Ok(Reply::Count(0))
    );
    assert_eq!(
        h.s.read(&ReadOp::HasEdge { src: v[0], dst: v[1] }),
        Ok(Reply::Bool(false))
    );
    assert!(is_bad(&h.write(WriteOp::Follow { src: v[0], dst: v[0] })));
}

#[test]
fn follow_across_shards_goes_through_the_outbox() {
    let mut h = Harness::new(StateLimits::default());
    let src = ids_on(HERE, 1)[0];
    let (d1, d2) = (ids_on(1, 1)[0], ids_on(2, 1)[0]);
    assert_eq!(h.write(WriteOp::Follow { src, dst: d1 }), Ok(Reply::Changed(true)));
    assert_eq!(h.write(WriteOp::Follow { src, dst: d2 }), Ok(Reply::Changed(true)));
    assert_eq!(h.write(WriteOp::Follow { src, dst: d1 }), Ok(Reply::Changed(false)));
    assert_eq!(h.write(WriteOp::Unfollow { src, dst: d1 }), Ok(Reply::Changed(true)));
    assert_eq!(
        h.s.outbox_pending(10),
        vec![
            (
                1,
                1,
                vec![
                    EdgeUpdate {
                        src,
                        dst: d1,
                        add: true
                    },
                    EdgeUpdate {
                        src,
                        dst: d1,
                        add: false
                    }
                ]
            ),
            (
                2,
                1,
                vec![EdgeUpdate {
                    src,
                    dst: d2,
                    add: true
                }]
            ),
        ]
    );
    assert_eq!(
        h.s.outbox_pending(1)[0],
        (
            1,
            1,
            vec![EdgeUpdate {
                src,
                dst: d1,
                add: true
            }]
        )
    );
    assert_eq!(
        h.cmd(Command::OutboxTrim {
            to_shard: 1,
            upto_seq: 1
        }),
        Ok(Reply::Count(1))
    );
    assert_eq!(
        h.cmd(Command::OutboxTrim {
            to_shard: 1,
            upto_seq: 1
        }),
        Ok(Reply::Count(0))
    );
    assert_eq!(
        h.s.outbox_pending(10),
        vec![
            (
                1,
                2,
                vec![EdgeUpdate {
                    src,
                    dst: d1,
                    add: false
                }]
            ),
            (
                2,
                1,
                vec![EdgeUpdate {
                    src,
                    dst: d2,
                    add: true
                }]
            ),
        ]
    );
    assert_eq!(h.s.outbox_len(), 2);
    assert_eq!(h.s.read(&ReadOp::HasEdge { src, dst: d2 }), Ok(Reply::Bool(true)));
}

#[test]
fn full_outbox_refuses_without_applying() {
    let limits = StateLimits {
        outbox_entries_max: 1,
        ..StateLimits::default()
    };
    let mut h = Harness::new(limits);
    let src = ids_on(HERE, 2);
    let dst = ids_on(1, 2);
    assert_eq!(
        h.write(WriteOp::Follow {
            src: src[0],
            dst: dst[0]
        }),
        Ok(Reply::Changed(true))
    );
    assert!(matches!(
        h.write(WriteOp::Follow {
            src: src[0],
            dst: dst[1]
        }),
        Err(ErrorReply::Busy(_))
    ));
    assert_eq!(
        h.s.read(&ReadOp::HasEdge {
            src: src[0],
            dst: dst[1]
        }),
        Ok(Reply::Bool(false))
    );
    // Same-shard edges need no outbox room.
    assert_eq!(
        h.write(WriteOp::Follow {
            src: src[0],
            dst: src[1]
        }),
        Ok(Reply::Changed(true))
    );
    assert!(matches!(
        h.write(WriteOp::Unfollow {
            src: src[0],
            dst: dst[0]
        }),
        Err(ErrorReply::Busy(_))
    ));
    assert_eq!(
        h.s.read(&ReadOp::HasEdge {
            src: src[0],
            dst: dst[0]
        }),
        Ok(Reply::Bool(true))
    );
    assert_eq!(h.s.outbox_len(), 1);
}

#[test]
fn delivery_skips_duplicates_and_refuses_gaps() {
    let mut h = Harness::new(StateLimits::default());
    let here = ids_on(HERE, 1)[0];
    let from = ids_on(3, 4);
    let add = |src: u64| EdgeUpdate {
        src,
        dst: here,
        add: true,
    };
    let deliver = |first_seq: u64, items: Vec<EdgeUpdate>| Command::EdgeDelivery {
        from_shard: 3,
        first_seq,
        items,
    };
    let in_ids = |h: &Harness| {
        h.s.read(&ReadOp::Neighbors {
            vertex: here,
            direction: Direction::In,
            after: None,
            limit: 10,
        })
    };

    assert_eq!(h.cmd(deliver(1, vec![add(from[0]), add(from[1])])), Ok(Reply::Count(2)));
    // A redelivered batch changes nothing.
    assert_eq!(h.cmd(deliver(1, vec![add(from[0]), add(from[1])])), Ok(Reply::Count(2)));
    // An overlapping batch applies only its new tail: seq 2 removes nothing again.
    let remove_first = EdgeUpdate {
        src: from[0],
        dst: here,
        add: false,
    };
    assert_eq!(
        h.cmd(deliver(2, vec![add(from[1]), remove_first.clone(), add(from[2])])),
        Ok(Reply::Count(4))
    );
    assert_eq!(
        in_ids(&h),
        Ok(Reply::Vertices {
            ids: vec![from[1], from[2]],
            next_after: None
        })
    );
    // A gap is refused and changes nothing.
    let gap = h.cmd(deliver(6, vec![add(from[3])]));
    assert!(
        matches!(&gap, Err(ErrorReply::BadRequest(m)) if m.starts_with("gap")),
        "{gap:?}"
    );
    assert_eq!(h.cmd(deliver(5, vec![])), Ok(Reply::Count(4)));
    // An update for a vertex that does not live here is refused whole.
    let stray = EdgeUpdate {
        src: from[3],
        dst: ids_on(1, 1)[0],
        add: true,
    };
    assert!(is_bad(&h.cmd(deliver(5, vec![add(from[3]), stray]))));
    assert!(is_bad(&h.cmd(deliver(0, vec![add(from[3])]))));
    assert_eq!(h.s.graph.delivered_upto(3), 4);
    assert_eq!(h.cmd(deliver(5, vec![add(from[3])])), Ok(Reply::Count(5)));
    assert_eq!(
        h.s.read(&ReadOp::Degree {
            vertex: here,
            direction: Direction::In
        }),
        Ok(Reply::Count(3))
    );
    // Another source shard has its own sequence.
    let other = ids_on(2, 1)[0];
    let cmd = Command::EdgeDelivery {
        from_shard: 2,
        first_seq: 1,
        items: vec![add(other)],
    };
    assert_eq!(h.cmd(cmd), Ok(Reply::Count(1)));
}

#[test]
fn neighbours_paging_set_degree() {
    let limits = StateLimits {
        neighbors_page_max: 3,
        ..StateLimits::default()
    };
    let mut h = Harness::new(limits);
    let src = ids_on(HERE, 1)[0];
    let mut dsts: Vec<u64> = ids_on(1, 3)
        .into_iter()
        .chain(ids_on(HERE, 4).into_iter().skip(1))
        .collect();
    for d in &dsts {
        assert_eq!(h.write(WriteOp::Follow { src, dst: *d }), Ok(Reply::Changed(true)));
    }
    dsts.sort_unstable();
    let read = |after: Option<u64>, limit: u32| {
        h.s.read(&ReadOp::Neighbors {
            vertex: src,
            direction: Direction::Out,
            after,
            limit,
        })
    };
    assert_eq!(
        read(None, 2),
        Ok(Reply::Vertices {
            ids: dsts[..2].to_vec(),
            next_after: Some(dsts[1])
        })
    );
    // The limit is capped at neighbors_page_max.
    assert_eq!(
        read(Some(dsts[1]), 100),
        Ok(Reply::Vertices {
            ids: dsts[2..5].to_vec(),
            next_after: Some(dsts[4])
        })
    );
    assert_eq!(
        read(Some(dsts[4]), 100),
        Ok(Reply::Vertices {
            ids: dsts[5..].to_vec(),
            next_after: None
        })
    );
    assert_eq!(
        read(Some(u64::MAX), 100),
        Ok(Reply::Vertices {
            ids: vec![],
            next_after: None
        })
    );
    assert!(is_bad(&read(None, 0)));
    let Ok(Reply::Bitmap(bytes)) = h.s.read(&ReadOp::NeighborSet {
        vertex: src,
        direction: Direction::Out,
    }) else {
        panic!("not a bitmap")
    };
    let set = RoaringTreemap::deserialize_from(&bytes[..]).unwrap();
    assert_eq!(set.iter().collect::<Vec<_>>(), dsts);
    let Ok(Reply::Bitmap(bytes)) = h.s.read(&ReadOp::NeighborSet {
        vertex: src,
        direction: Direction::In,
    }) else {
        panic!("not a bitmap")
    };
    assert!(RoaringTreemap::deserialize_from(&bytes[..]).unwrap().is_empty());
    assert_eq!(
        h.s.read(&ReadOp::Degree {
            vertex: src,
            direction: Direction::Out
        }),
        Ok(Reply::Count(6))
    );
    assert_eq!(h.s.read(&ReadOp::HasEdge { src, dst: dsts[0] }), Ok(Reply::Bool(true)));
}

#[test]
fn follow_many_adds_every_edge_or_none() {
    let limits = StateLimits {
        outbox_entries_max: 3,
        ..StateLimits::default()
    };
    let mut h = Harness::new(limits);
    let src = ids_on(HERE, 1)[0];
    let local = ids_on(HERE, 3)[1..].to_vec();
    let remote = ids_on(1, 4);
    let many = |dsts: Vec<u64>| WriteOp::FollowMany { src, dsts };
    assert_eq!(h.write(many(vec![local[0], remote[0], local[0]])), Ok(Reply::Count(2)));
    assert_eq!(h.s.outbox_len(), 1);
    // Three more cross-shard halves do not fit beside the one queued: nothing is applied.
    let refused = h.write(many(vec![local[1], remote[1], remote[2], remote[3]]));
    assert!(matches!(refused, Err(ErrorReply::Busy(_))), "{refused:?}");
    assert!(!h.s.graph.has_edge(src, local[1]));
    assert!(is_bad(&h.write(many(vec![local[1], src]))));
    assert!(is_bad(&h.write(many(vec![remote[0]; FOLLOW_BATCH_MAX + 1]))));
    assert_eq!(h.write(many(vec![local[1], remote[1], remote[0]])), Ok(Reply::Count(2)));
    assert!(h.s.graph.has_edge(src, remote[1]) && h.s.graph.has_edge(src, local[1]));
}
