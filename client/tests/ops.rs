//! Typed operations, concurrency on one connection, reconnection and close,
//! against a scripted test node.

mod support;

use std::sync::Arc;

use plexus_client::{
    Client, ClientError, Consistency, Cursor, Direction, FeedCursor, FeedPage, FeedPost, FilterSpec, NodeStatus, Page,
    PostRef, RankedPost, Reply, RoaringTreemap, ScoreMode, ScoreRequest, TimelineEntry,
};
use plexus_proto::{
    AdminOp, EmpiEvent, EmpiEventKind, EmpiIngested, EmpiMaster, EmpiMatch, EmpiReply, EmpiRequest, FeedRequest, Op,
    PersonRecord, ReadOp, Request, Response, WriteOp,
};
use support::{config, handler, make_certs, single_node};

fn bitmap(ids: &[u64]) -> Vec<u8> {
    let t: RoaringTreemap = ids.iter().copied().collect();
    let mut out = Vec::new();
    t.serialize_into(&mut out).unwrap();
    out
}

fn status() -> NodeStatus {
    NodeStatus {
        node_id: 1,
        pid: 4242,
        addr: "n1".into(),
        scoring_backend: Some("cpu-avx2".into()),
        shards: vec![],
    }
}

/// Canned answers for every operation, derived from the request so tests can check what was sent.
fn answer(req: Request) -> Option<Response> {
    Some(Ok(match req.op {
        Op::Write(WriteOp::Follow { src, dst }) => Reply::Changed(src < dst),
        Op::Write(WriteOp::Unfollow { .. }) => Reply::Changed(false),
        Op::Write(WriteOp::TimelineAppend { owner, item }) => Reply::Appended(owner * 1000 + item.len() as u64),
        Op::Write(WriteOp::TimelineDelete { id, .. }) => Reply::Changed(id == 9),
        Op::Write(WriteOp::FilterCreate { .. } | WriteOp::FilterAdd { .. } | WriteOp::FilterSeal { .. }) => {
            Reply::Changed(true)
        }
        Op::Read(ReadOp::FilterContains { keys, .. }) => Reply::Bools(keys.iter().map(|k| k.len() % 2 == 0).collect()),
        Op::Read(ReadOp::TimelineRead { owner, cursor, limit }) => Reply::Page(Page {
            entries: vec![TimelineEntry {
                id: owner,
                item: format!("{cursor:?}/{limit}").into_bytes(),
            }],
            has_more: true,
        }),
        Op::Read(ReadOp::Neighbors {
            vertex, after, limit, ..
        }) => {
            let first = after.map_or(0, |a| a + 1);
            Reply::Vertices {
                ids: (first..first + u64::from(limit)).collect(),
                next_after: Some(vertex),
            }
        }
        Op::Read(ReadOp::NeighborSet { vertex: 10, .. }) => Reply::Bitmap(bitmap(&[1, 2, 3, 5, 1 << 40])),
        Op::Read(ReadOp::NeighborSet { vertex: 20, .. }) => Reply::Bitmap(bitmap(&[2, 3, 4, 1 << 40])),
        Op::Read(ReadOp::NeighborSet { .. }) => Reply::Bitmap(vec![1, 2, 3]),
        Op::Read(ReadOp::Degree { vertex, direction }) => {
            Reply::Count(vertex * 3 + u64::from(direction == Direction::In))
        }
        Op::Read(ReadOp::HasEdge { src, dst }) => Reply::Bool(src < dst),
        Op::Admin(AdminOp::Status) => Reply::Status(status()),
        Op::Admin(AdminOp::ShardMap) => return Some(Err(plexus_client::ErrorReply::Internal("unused".into()))),
        Op::Write(WriteOp::SetFeatures { features, .. }) => Reply::Changed(!features.is_empty()),
        Op::Read(ReadOp::Features { vertices }) => Reply::Features(
            vertices
                .iter()
                .map(|v| (v % 2 == 0).then(|| vec![*v as f32, 1.0]))
                .collect(),
        ),
        Op::Score(r) => Reply::Scores(
            r.candidates
                .iter()
                .take(r.k as usize)
                .map(|c| (*c, *c as f32 / 10.0))
                .collect(),
        ),
        Op::Write(WriteOp::FeedPost { author, text }) => Reply::Appended(author * 100 + text.len() as u64),
        Op::Write(WriteOp::FeedDelete { id, .. }) => Reply::Changed(id % 2 == 0),
        Op::Write(WriteOp::FeedSeen { posts, .. }) => Reply::Changed(posts.len() > 1),
        Op::Write(WriteOp::FeedUserAdd { user }) => Reply::Changed(user != 1),
        Op::Write(WriteOp::FollowMany { dsts, .. }) => Reply::Count(dsts.len() as u64),
        Op::Feed(FeedRequest::Home {
            user,
            limit,
            cursor,
            ranked,
        }) => Reply::FeedPage(FeedPage {
            posts: vec![RankedPost {
                post: FeedPost {
                    post: PostRef {
                        author: user,
                        id: u64::from(limit),
                    },
                    text: format!("{cursor:?}").into_bytes(),
                },
                score: if ranked { 0.5 } else { 0.0 },
            }],
            next: Some("h1.next".into()),
            newest: Some(9),
        }),
        Op::Empi(req) => Reply::Empi(empi_answer(*req)),
        Op::Read(_) => return Some(Err(plexus_client::ErrorReply::Internal("node-internal read".into()))),
    }))
}

fn empi_answer(req: EmpiRequest) -> EmpiReply {
    match req {
        EmpiRequest::Upsert { record } => EmpiReply::Upserted {
            key: record.key_string(),
            master: record.source_id.len() as u64,
            created: true,
            merged: vec![7],
        },
        EmpiRequest::Match { record, k } => EmpiReply::Matches(vec![EmpiMatch {
            key: format!("{}:{k}", record.source),
            master: 3,
            weight: 12.5,
            probability: 0.99,
            linked: true,
        }]),
        EmpiRequest::Ingest { records } => EmpiReply::Ingested(
            records
                .iter()
                .map(|r| match r.given_name {
                    Some(_) => EmpiIngested::Linked {
                        key: r.key_string(),
                        master: 1,
                    },
                    None => EmpiIngested::Refused {
                        key: r.key_string(),
                        reason: "no name".into(),
                    },
                })
                .collect(),
        ),
        EmpiRequest::Link { .. } | EmpiRequest::Unlink { .. } => EmpiReply::Done,
        EmpiRequest::Events { cursor, limit } => EmpiReply::Events {
            events: vec![EmpiEvent {
                shard: 2,
                seq: u64::from(limit),
                master: 5,
                record: Some(cursor.clone()),
                kind: EmpiEventKind::Merged { into: 4 },
                millis: 1,
            }],
            cursor: format!("{cursor}+"),
        },
        EmpiRequest::Clusters { after, .. } => EmpiReply::Clusters {
            masters: vec![EmpiMaster {
                id: after.unwrap_or(0) + 1,
                members: vec!["a:1".into()],
                created_millis: 0,
                merged_into: None,
            }],
            next: None,
        },
        EmpiRequest::Split { key } => EmpiReply::Split {
            master: 99,
            unlinked: vec![format!("{key}-other")],
            key,
        },
        EmpiRequest::Explain { .. } | EmpiRequest::Get { .. } => EmpiReply::Done,
    }
}

#[tokio::test]
async fn empi_operations_send_the_right_op_and_decode_the_reply() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    let rec = |id: &str, given: Option<&str>| PersonRecord {
        source: "H".into(),
        source_id: id.into(),
        given_name: given.map(Into::into),
        ..PersonRecord::default()
    };
    let u = c.empi_upsert(rec("1234", Some("ann"))).await.unwrap();
    assert_eq!(
        (u.key.as_str(), u.master, u.created, u.merged),
        ("H:1234", 4, true, vec![7])
    );
    let m = c.empi_match(rec("9", None), 5).await.unwrap();
    assert_eq!((m[0].key.as_str(), m[0].linked), ("H:5", true));
    let out = c.empi_ingest(vec![rec("1", Some("a")), rec("2", None)]).await.unwrap();
    assert!(matches!(&out[0], EmpiIngested::Linked { key, .. } if key == "H:1"));
    assert!(matches!(&out[1], EmpiIngested::Refused { reason, .. } if reason == "no name"));
    c.empi_steward("H:1", "H:2", false).await.unwrap();
    let (events, cursor) = c.empi_events("e1:0", 10).await.unwrap();
    assert_eq!((events[0].seq, cursor.as_str()), (10, "e1:0+"));
    assert_eq!(events[0].kind, EmpiEventKind::Merged { into: 4 });
    let (masters, next) = c.empi_clusters(Some(41), 100).await.unwrap();
    assert_eq!((masters[0].id, next), (42, None));
    // A reply of the wrong shape is an error, not a panic.
    assert!(matches!(
        c.empi_get("H:1").await,
        Err(ClientError::UnexpectedReply { op: "empi_get", .. })
    ));
    // An upsert and a steward action carry a session (the node writes them under it, so a
    // retry never applies twice); a match, an ingest batch and the reads do not.
    let sessions: Vec<bool> = s.requests().iter().map(|r| r.session.is_some()).collect();
    assert_eq!(sessions, vec![true, false, false, true, false, false, false]);
    assert_eq!(c.empi_split("H:3").await.unwrap(), (99, vec!["H:3-other".to_string()]));
    let ops: Vec<Op> = s.requests().into_iter().map(|r| r.op).collect();
    assert_eq!(
        ops[3],
        Op::Empi(Box::new(EmpiRequest::Unlink {
            a: "H:1".into(),
            b: "H:2".into()
        }))
    );
    assert_eq!(ops.len(), 8);
    assert_eq!(ops[7], Op::Empi(Box::new(EmpiRequest::Split { key: "H:3".into() })));
}

#[tokio::test]
async fn feed_operations_send_the_right_op_and_decode_the_reply() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    assert_eq!(c.feed_post(3, "hello").await.unwrap(), PostRef { author: 3, id: 305 });
    assert!(c.feed_delete(3, 8).await.unwrap());
    assert!(!c.feed_seen(4, vec![PostRef { author: 3, id: 305 }]).await.unwrap());
    assert!(c.feed_user_add(2).await.unwrap());
    assert_eq!(c.follow_many(2, vec![3, 4, 5]).await.unwrap(), 3);
    let page = c
        .feed_home(4, 20, FeedCursor::Before("h1.x".into()), true)
        .await
        .unwrap();
    assert_eq!(page.posts[0].post.post, PostRef { author: 4, id: 20 });
    assert_eq!(page.posts[0].post.text, br#"Before("h1.x")"#);
    assert_eq!(
        (page.posts[0].score, page.next.as_deref(), page.newest),
        (0.5, Some("h1.next"), Some(9))
    );
    let ops: Vec<Op> = s.requests().into_iter().map(|r| r.op).collect();
    assert_eq!(
        ops[0],
        Op::Write(WriteOp::FeedPost {
            author: 3,
            text: b"hello".to_vec()
        })
    );
    assert_eq!(
        ops[4],
        Op::Write(WriteOp::FollowMany {
            src: 2,
            dsts: vec![3, 4, 5]
        })
    );
    assert_eq!(
        ops[5],
        Op::Feed(FeedRequest::Home {
            user: 4,
            limit: 20,
            cursor: FeedCursor::Before("h1.x".into()),
            ranked: true
        })
    );
    // Writes carry a session; a feed read does not.
    let sessions: Vec<bool> = s.requests().iter().map(|r| r.session.is_some()).collect();
    assert_eq!(sessions, vec![true, true, true, true, true, false]);
}

#[tokio::test]
async fn typed_operations_send_the_right_op_and_decode_the_reply() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    assert!(c.follow(1, 2).await.unwrap());
    assert!(!c.unfollow(1, 2).await.unwrap());
    assert_eq!(c.timeline_append(7, b"abc".to_vec()).await.unwrap(), 7003);
    assert!(c.timeline_delete(7, 9).await.unwrap());
    let page = c.timeline_read(7, Cursor::Before(100), 20).await.unwrap();
    assert_eq!(
        page,
        Page {
            entries: vec![TimelineEntry {
                id: 7,
                item: b"Before(100)/20".to_vec()
            }],
            has_more: true
        }
    );
    assert!(c.filter_create("seen", FilterSpec::default()).await.unwrap());
    assert!(c.filter_add("seen", vec![b"a".to_vec()]).await.unwrap());
    assert!(c.filter_seal("seen").await.unwrap());
    assert_eq!(
        c.filter_contains("seen", vec![b"a".to_vec(), b"bb".to_vec()])
            .await
            .unwrap(),
        vec![false, true]
    );
    assert_eq!(
        c.neighbors(4, Direction::Out, Some(10), 3).await.unwrap(),
        (vec![11, 12, 13], Some(4))
    );
    assert_eq!(c.degree(5, Direction::In).await.unwrap(), 16);
    assert!(c.has_edge(1, 2).await.unwrap());
    assert_eq!(c.node_status(&s.addr_string()).await.unwrap(), status());

    let ops: Vec<Op> = s.requests().into_iter().map(|r| r.op).collect();
    assert_eq!(ops[0], Op::Write(WriteOp::Follow { src: 1, dst: 2 }));
    assert_eq!(
        ops[4],
        Op::Read(ReadOp::TimelineRead {
            owner: 7,
            cursor: Cursor::Before(100),
            limit: 20
        })
    );
    assert_eq!(
        ops[5],
        Op::Write(WriteOp::FilterCreate {
            name: "seen".into(),
            spec: FilterSpec::default()
        })
    );
    assert_eq!(ops[12], Op::Admin(AdminOp::Status));
    assert_eq!(ops.len(), 13);
}

#[tokio::test]
async fn feature_and_score_operations() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    assert!(c.set_features(3, vec![0.5, -1.0]).await.unwrap());
    assert!(!c.set_features(3, vec![]).await.unwrap());
    assert_eq!(
        c.features(&[4, 5, 4]).await.unwrap(),
        vec![Some(vec![4.0, 1.0]), None, Some(vec![4.0, 1.0])]
    );
    assert_eq!(
        c.score(9, vec![7, 8, 1], 2, ScoreMode::NeighborMean).await.unwrap(),
        vec![(7, 0.7), (8, 0.8)]
    );
    let ops: Vec<Op> = s.requests().into_iter().map(|r| r.op).collect();
    assert_eq!(
        ops[0],
        Op::Write(WriteOp::SetFeatures {
            vertex: 3,
            features: vec![0.5, -1.0]
        })
    );
    let reads: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::Read(_))).collect();
    // Reads grouped by shard, each vertex asked once.
    let mut asked: Vec<u64> = reads
        .iter()
        .flat_map(|o| match o {
            Op::Read(ReadOp::Features { vertices }) => vertices.clone(),
            _ => vec![],
        })
        .collect();
    asked.sort_unstable();
    assert_eq!(asked, vec![4, 5]);
    assert_eq!(
        ops.last(),
        Some(&Op::Score(ScoreRequest {
            vertex: 9,
            candidates: vec![7, 8, 1],
            k: 2,
            mode: ScoreMode::NeighborMean
        }))
    );
}

#[tokio::test]
async fn reads_use_the_handle_consistency() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    c.degree(1, Direction::Out).await.unwrap();
    c.with_consistency(Consistency::Stale)
        .degree(1, Direction::Out)
        .await
        .unwrap();
    c.call(Op::Read(ReadOp::HasEdge { src: 1, dst: 2 }), Consistency::Stale)
        .await
        .unwrap();
    let cons: Vec<Consistency> = s.requests().iter().map(|r| r.consistency).collect();
    assert_eq!(
        cons,
        vec![Consistency::Linearizable, Consistency::Stale, Consistency::Stale]
    );
}

#[tokio::test]
async fn common_neighbors_is_the_intersection() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    let common = c.common_neighbors(10, 20, Direction::Out).await.unwrap();
    assert_eq!(common.iter().collect::<Vec<u64>>(), vec![2, 3, 1 << 40]);
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn malformed_replies_are_errors_not_panics() {
    let certs = make_certs();
    let s = single_node(
        &certs,
        handler(|req| match req.op {
            Op::Read(ReadOp::FilterContains { .. }) => Some(Ok(Reply::Bools(vec![true]))),
            Op::Read(ReadOp::Degree { .. }) => Some(Ok(Reply::Bool(true))),
            other => answer(Request { op: other, ..req }),
        }),
    );
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    match c.neighbor_set(30, Direction::Out).await {
        Err(ClientError::InvalidData(m)) => assert!(m.starts_with("neighbor set bitmap"), "{m}"),
        other => panic!("expected InvalidData, got {other:?}"),
    }
    match c.filter_contains("f", vec![vec![1], vec![2]]).await {
        Err(ClientError::InvalidData(m)) => assert_eq!(m, "filter_contains: 1 answers for 2 keys"),
        other => panic!("expected InvalidData, got {other:?}"),
    }
    match c.degree(1, Direction::Out).await {
        Err(ClientError::UnexpectedReply { op, reply }) => assert_eq!((op, reply.as_str()), ("degree", "Bool(true)")),
        other => panic!("expected UnexpectedReply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_share_one_connection() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    let tasks: Vec<_> = (0..200u64)
        .map(|v| {
            let c = c.clone();
            tokio::spawn(async move { (v, c.degree(v, Direction::Out).await) })
        })
        .collect();
    for t in tasks {
        let (v, r) = t.await.unwrap();
        assert_eq!(r.unwrap(), v * 3);
    }
    assert_eq!(s.requests().len(), 200);
    assert_eq!(s.connection_count(), 1);
    assert_eq!(s.hello_count(), 1);
}

#[tokio::test]
async fn in_flight_max_bounds_concurrency_without_failing_requests() {
    let certs = make_certs();
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, p) = (live.clone(), peak.clone());
    let h: support::Handler = Arc::new(move |req: Request| {
        let (l, p) = (l.clone(), p.clone());
        Box::pin(async move {
            let now = l.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            // Let other requests arrive while this one is held.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            l.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            answer(req)
        })
    });
    let s = single_node(&certs, h);
    let mut cfg = config(&certs, vec![s.addr_string()]);
    cfg.in_flight_max = 3;
    let c = Client::connect(cfg).await.unwrap();
    let tasks: Vec<_> = (0..30u64)
        .map(|v| {
            let c = c.clone();
            tokio::spawn(async move { c.degree(v, Direction::Out).await })
        })
        .collect();
    for (v, t) in (0..30u64).zip(tasks) {
        assert_eq!(t.await.unwrap().unwrap(), v * 3);
    }
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=3).contains(&peak), "peak {peak}");
}

#[tokio::test]
async fn a_dropped_connection_is_redialled() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    assert_eq!(c.degree(2, Direction::Out).await.unwrap(), 6);
    s.drop_connections();
    assert_eq!(c.degree(3, Direction::Out).await.unwrap(), 9);
    assert_eq!(s.connection_count(), 2);
    assert_eq!(s.hello_count(), 2);
}

#[tokio::test]
async fn calls_after_close_fail_with_closed() {
    let certs = make_certs();
    let s = single_node(&certs, handler(answer));
    let c = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    let other = c.with_consistency(Consistency::Stale);
    c.close().await;
    assert!(matches!(
        other.degree(1, Direction::Out).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(c.follow(1, 2).await, Err(ClientError::Closed)));
    assert!(matches!(c.refresh_shard_map().await, Err(ClientError::Closed)));
}
