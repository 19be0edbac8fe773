//! Routing, retries, sessions, TLS and timeouts against scripted test nodes.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_client::{Client, ClientError, Direction, ErrorReply, Reply};
use plexus_proto::{AdminOp, Op, Request, Session, ShardMap, WriteOp};
use support::{config, handler, make_certs, map_with, single_node, TestServer};

fn session_of(r: &Request) -> Session {
    r.session.expect("writes carry a session")
}

#[tokio::test]
async fn not_leader_redirects_to_the_leader_and_caches_it() {
    let certs = make_certs();
    let map = Arc::new(Mutex::new(ShardMap::default()));
    let b_addr = Arc::new(Mutex::new(String::new()));
    let redirect = b_addr.clone();
    let a = TestServer::start(
        &certs,
        1,
        map.clone(),
        handler(move |req| {
            Some(Err(ErrorReply::NotLeader {
                shard: req.shard,
                leader: Some(2),
                leader_addr: Some(redirect.lock().unwrap().clone()),
            }))
        }),
    );
    let b = TestServer::start(&certs, 2, map.clone(), handler(|_| Some(Ok(Reply::Changed(true)))));
    *b_addr.lock().unwrap() = b.addr_string();
    // The cached map is stale: it names A as the leader.
    *map.lock().unwrap() = map_with(1, &[(1, a.addr_string()), (2, b.addr_string())], Some(1));

    let client = Client::connect(config(&certs, vec![a.addr_string()])).await.unwrap();
    assert!(client.follow(1, 2).await.unwrap());
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 1);
    // The redirected attempt is the same write: same session sequence number.
    assert_eq!(session_of(&a.requests()[0]), session_of(&b.requests()[0]));
    assert_eq!(client.shard_map().shards[0].leader, Some(2));

    // The next write goes straight to the new leader.
    assert!(client.follow(1, 3).await.unwrap());
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 2);
}

#[tokio::test]
async fn busy_then_success_retries_with_the_same_seq() {
    let certs = make_certs();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let s = single_node(
        &certs,
        handler(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Some(Err(ErrorReply::Busy("queue full".into())))
            } else {
                Some(Ok(Reply::Appended(77)))
            }
        }),
    );
    let client = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    assert_eq!(client.timeline_append(5, b"x".to_vec()).await.unwrap(), 77);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2);
    let expected = Session {
        client_id: client.client_id(),
        seq: 1,
        ack_below: 1,
    };
    assert_eq!(session_of(&reqs[0]), expected);
    assert_eq!(session_of(&reqs[1]), expected);
    assert_eq!(
        reqs[0].op,
        Op::Write(WriteOp::TimelineAppend {
            owner: 5,
            item: b"x".to_vec()
        })
    );
}

#[tokio::test]
async fn ack_below_advances_past_answered_writes_only() {
    let certs = make_certs();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    let g = gate.clone();
    let h: support::Handler = Arc::new(move |req: Request| {
        let (g, seen_tx) = (g.clone(), seen_tx.clone());
        Box::pin(async move {
            let held = matches!(req.op, Op::Write(WriteOp::Follow { src: 999, .. }));
            let _ = seen_tx.send(req);
            if held {
                g.acquire().await.unwrap().forget();
            }
            Some(Ok(Reply::Changed(true)))
        })
    });
    let s = single_node(&certs, h);
    let client = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    let id = client.client_id();

    for n in 1..=3u64 {
        client.follow(1, n).await.unwrap();
        let r = seen_rx.recv().await.unwrap();
        assert_eq!(
            session_of(&r),
            Session {
                client_id: id,
                seq: n,
                ack_below: n
            }
        );
    }
    // Reads carry no session.
    client.has_edge(1, 2).await.ok();
    assert_eq!(seen_rx.recv().await.unwrap().session, None);

    // Seq 4 stays unanswered while seq 5 completes: 5 must not acknowledge 4.
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.follow(999, 1).await }
    });
    assert_eq!(
        session_of(&seen_rx.recv().await.unwrap()),
        Session {
            client_id: id,
            seq: 4,
            ack_below: 4
        }
    );
    client.follow(1, 5).await.unwrap();
    assert_eq!(
        session_of(&seen_rx.recv().await.unwrap()),
        Session {
            client_id: id,
            seq: 5,
            ack_below: 4
        }
    );
    gate.add_permits(1);
    assert!(held.await.unwrap().unwrap());
    client.follow(1, 6).await.unwrap();
    assert_eq!(
        session_of(&seen_rx.recv().await.unwrap()),
        Session {
            client_id: id,
            seq: 6,
            ack_below: 6
        }
    );
}

#[tokio::test]
async fn retries_stop_at_retries_max() {
    let certs = make_certs();
    let s = single_node(&certs, handler(|_| Some(Err(ErrorReply::Busy("full".into())))));
    let mut cfg = config(&certs, vec![s.addr_string()]);
    cfg.retries_max = 2;
    let client = Client::connect(cfg).await.unwrap();
    match client.follow(1, 2).await {
        Err(ClientError::RetriesExhausted { attempts: 3, last }) => {
            assert!(
                matches!(*last, ClientError::Server(ErrorReply::Busy(ref m)) if m == "full"),
                "{last}"
            )
        }
        other => panic!("expected RetriesExhausted after 3 attempts, got {other:?}"),
    }
    // Three write attempts (all with seq 1), interleaved with no map refresh (only 2 backoffs < 3).
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| session_of(r).seq == 1));
}

#[tokio::test]
async fn non_retryable_server_errors_are_returned_at_once() {
    let certs = make_certs();
    let s = single_node(
        &certs,
        handler(|_| Some(Err(ErrorReply::NotFound("filter seen".into())))),
    );
    let client = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    match client.filter_contains("seen", vec![b"k".to_vec()]).await {
        Err(ClientError::Server(ErrorReply::NotFound(m))) => assert_eq!(m, "filter seen"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(s.requests().len(), 1);
}

/// A node whose real map has 4 shards while its Hello advertised 1.
fn wrong_shard_node(certs: &support::Certs, always_wrong: bool) -> TestServer {
    let map = Arc::new(Mutex::new(ShardMap::default()));
    let real = Arc::new(Mutex::new(ShardMap::default()));
    let r = real.clone();
    let s = TestServer::start(
        certs,
        1,
        map.clone(),
        handler(move |req| match &req.op {
            Op::Admin(AdminOp::ShardMap) => Some(Ok(Reply::ShardMap(r.lock().unwrap().clone()))),
            op => {
                let expected = op.shard(4).unwrap();
                if always_wrong || req.shard != expected {
                    Some(Err(ErrorReply::WrongShard {
                        got: req.shard,
                        expected,
                    }))
                } else {
                    Some(Ok(Reply::Count(3)))
                }
            }
        }),
    );
    *map.lock().unwrap() = map_with(1, &[(1, s.addr_string())], Some(1));
    *real.lock().unwrap() = map_with(4, &[(1, s.addr_string())], Some(1));
    s
}

/// A vertex that lives on a shard other than 0 in a 4-shard map.
fn vertex_off_shard_zero() -> u64 {
    (0..)
        .find(|v| {
            Op::Read(plexus_proto::ReadOp::Degree {
                vertex: *v,
                direction: Direction::Out,
            })
            .shard(4)
                != Some(0)
        })
        .unwrap()
}

#[tokio::test]
async fn wrong_shard_refreshes_the_map_and_routes_again() {
    let certs = make_certs();
    let s = wrong_shard_node(&certs, false);
    let client = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    assert_eq!(client.shard_map().shard_count, 1);
    let v = vertex_off_shard_zero();
    assert_eq!(client.degree(v, Direction::Out).await.unwrap(), 3);
    assert_eq!(client.shard_map().shard_count, 4);
    let ops: Vec<(u32, bool)> = s
        .requests()
        .iter()
        .map(|r| (r.shard, matches!(r.op, Op::Admin(_))))
        .collect();
    let expected = Op::Read(plexus_proto::ReadOp::Degree {
        vertex: v,
        direction: Direction::Out,
    })
    .shard(4)
    .unwrap();
    assert_eq!(ops, vec![(0, false), (0, true), (expected, false)]);
}

#[tokio::test]
async fn a_second_wrong_shard_is_an_error() {
    let certs = make_certs();
    let s = wrong_shard_node(&certs, true);
    let client = Client::connect(config(&certs, vec![s.addr_string()])).await.unwrap();
    let v = vertex_off_shard_zero();
    match client.degree(v, Direction::Out).await {
        Err(ClientError::Server(ErrorReply::WrongShard { .. })) => {}
        other => panic!("expected WrongShard, got {other:?}"),
    }
    assert_eq!(s.requests().len(), 3);
}

#[tokio::test]
async fn a_node_outside_the_ca_is_a_tls_error() {
    let certs = make_certs();
    let other_ca = make_certs();
    let s = single_node(&certs, handler(|_| Some(Ok(Reply::Done))));
    match Client::connect(config(&other_ca, vec![s.addr_string()])).await {
        Err(ClientError::Tls { addr, reason }) => {
            assert_eq!(addr, s.addr_string());
            assert!(reason.contains("invalid peer certificate"), "{reason}");
        }
        Err(e) => panic!("expected a TLS error, got {e:?}"),
        Ok(_) => panic!("expected a TLS error, got a client"),
    }
    assert_eq!(s.hello_count(), 0);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let certs = make_certs();
    let s = single_node(&certs, handler(|_| Some(Ok(Reply::Done))));
    let mut cfg = config(&certs, vec![s.addr_string()]);
    cfg.token = "nope".into();
    match Client::connect(cfg).await {
        Err(ClientError::Server(ErrorReply::Unauthorized(m))) => assert_eq!(m, "bad token"),
        Err(e) => panic!("expected Unauthorized, got {e:?}"),
        Ok(_) => panic!("expected Unauthorized, got a client"),
    }
}

#[tokio::test]
async fn connect_skips_dead_seeds() {
    let certs = make_certs();
    let s = single_node(&certs, handler(|_| Some(Ok(Reply::Count(4)))));
    // A bound socket that never reads: nothing answers there, and no other test can take its port.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = hole.local_addr().unwrap().to_string();
    let mut cfg = config(&certs, vec![dead, s.addr_string()]);
    cfg.connect_timeout = Duration::from_millis(300);
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.degree(1, Direction::In).await.unwrap(), 4);
}

#[tokio::test]
async fn an_unanswered_request_times_out_within_the_request_timeout() {
    let certs = make_certs();
    let s = single_node(&certs, handler(|_| None));
    let mut cfg = config(&certs, vec![s.addr_string()]);
    cfg.request_timeout = Duration::from_millis(300);
    let client = Client::connect(cfg).await.unwrap();
    let start = Instant::now();
    let r = client.follow(1, 2).await;
    let took = start.elapsed();
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(300) + Duration::from_secs(2), "{took:?}");
    // The abandoned write's sequence number is released, so the next write acknowledges past it.
    let r = client.degree(1, Direction::Out).await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    let w = client.follow(1, 3).await;
    assert!(matches!(w, Err(ClientError::Timeout)), "{w:?}");
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        session_of(&reqs[0]),
        Session {
            client_id: client.client_id(),
            seq: 1,
            ack_below: 1
        }
    );
    assert_eq!(reqs[1].session, None);
    assert_eq!(
        session_of(&reqs[2]),
        Session {
            client_id: client.client_id(),
            seq: 2,
            ack_below: 2
        }
    );
}

#[tokio::test]
async fn an_unreachable_leader_is_forgotten_and_a_replica_is_asked() {
    let certs = make_certs();
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = hole.local_addr().unwrap().to_string();
    let map = Arc::new(Mutex::new(ShardMap::default()));
    let b = TestServer::start(&certs, 2, map.clone(), handler(|_| Some(Ok(Reply::Changed(true)))));
    // The map names the unreachable node 1 as leader; node 2 is the other replica.
    *map.lock().unwrap() = map_with(1, &[(1, dead.clone()), (2, b.addr_string())], Some(1));
    let mut cfg = config(&certs, vec![b.addr_string()]);
    cfg.connect_timeout = Duration::from_millis(200);
    let client = Client::connect(cfg).await.unwrap();
    assert!(client.follow(1, 2).await.unwrap());
    assert_eq!(b.requests().len(), 1);
    // The dead leader is forgotten, and node 2, which served the write, is remembered in its place.
    assert_eq!(client.shard_map().shards[0].leader, Some(2));
}

#[tokio::test]
async fn nodes_bouncing_a_redirect_exhaust_retries_with_one_seq() {
    let certs = make_certs();
    let map = Arc::new(Mutex::new(ShardMap::default()));
    let addrs = Arc::new(Mutex::new((String::new(), String::new())));
    let (to_b, to_a) = (addrs.clone(), addrs.clone());
    let a = TestServer::start(
        &certs,
        1,
        map.clone(),
        handler(move |req| {
            let leader_addr = Some(to_b.lock().unwrap().1.clone());
            Some(Err(ErrorReply::NotLeader {
                shard: req.shard,
                leader: Some(2),
                leader_addr,
            }))
        }),
    );
    let b = TestServer::start(
        &certs,
        2,
        map.clone(),
        handler(move |req| {
            let leader_addr = Some(to_a.lock().unwrap().0.clone());
            Some(Err(ErrorReply::NotLeader {
                shard: req.shard,
                leader: Some(1),
                leader_addr,
            }))
        }),
    );
    *addrs.lock().unwrap() = (a.addr_string(), b.addr_string());
    *map.lock().unwrap() = map_with(1, &[(1, a.addr_string()), (2, b.addr_string())], Some(1));
    let mut cfg = config(&certs, vec![a.addr_string()]);
    cfg.retries_max = 4;
    let client = Client::connect(cfg).await.unwrap();
    match client.follow(1, 2).await {
        Err(ClientError::RetriesExhausted { attempts: 5, last }) => {
            assert!(
                matches!(*last, ClientError::Server(ErrorReply::NotLeader { .. })),
                "{last}"
            )
        }
        other => panic!("expected RetriesExhausted after 5 attempts, got {other:?}"),
    }
    let writes: Vec<Request> = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .filter(|r| r.session.is_some())
        .collect();
    assert_eq!(writes.len(), 5);
    assert!(writes.iter().all(|r| session_of(r).seq == 1));
}

#[tokio::test]
async fn a_seed_with_an_empty_map_is_skipped() {
    let certs = make_certs();
    let empty = TestServer::start(&certs, 9, Arc::new(Mutex::new(ShardMap::default())), handler(|_| None));
    let s = single_node(&certs, handler(|_| Some(Ok(Reply::Count(8)))));
    let client = Client::connect(config(&certs, vec![empty.addr_string(), s.addr_string()]))
        .await
        .unwrap();
    assert_eq!(client.shard_map().shard_count, 1);
    assert_eq!(client.degree(1, Direction::Out).await.unwrap(), 8);
    assert_eq!(empty.requests().len(), 0);
    // With only that seed, connecting fails with the reason.
    match Client::connect(config(&certs, vec![empty.addr_string()])).await {
        Err(ClientError::InvalidData(m)) => assert_eq!(m, "shard map has zero shards"),
        Err(e) => panic!("expected InvalidData, got {e:?}"),
        Ok(_) => panic!("expected InvalidData, got a client"),
    }
}

/// Names `a`, `b` and `c` nodes 1 to 3 of a one-shard map that says node 2 (B) leads, and
/// connects a client through A whose attempts give up after 300 ms (B is silent).
async fn led_by_silent_b(certs: &support::Certs, map: &Mutex<ShardMap>, [a, b, c]: [&TestServer; 3]) -> Client {
    *map.lock().unwrap() = map_with(
        1,
        &[(1, a.addr_string()), (2, b.addr_string()), (3, c.addr_string())],
        Some(2),
    );
    let mut cfg = config(certs, vec![a.addr_string()]);
    cfg.attempt_timeout = Duration::from_millis(300);
    Client::connect(cfg).await.unwrap()
}

#[tokio::test]
async fn a_redirect_to_a_node_that_just_failed_is_not_followed() {
    let certs = make_certs();
    let map = Arc::new(Mutex::new(ShardMap::default()));
    let b_addr = Arc::new(Mutex::new(String::new()));
    // B, the leader in the client's map, has stopped answering.
    let b = TestServer::start(&certs, 2, map.clone(), handler(|_| None));
    *b_addr.lock().unwrap() = b.addr_string();
    // A and C do not know the new leader yet: each first points at B, then serves.
    let follower = |hint: Arc<Mutex<String>>| {
        let asked = AtomicU32::new(0);
        handler(move |req| match asked.fetch_add(1, Ordering::SeqCst) {
            0 => Some(Err(ErrorReply::NotLeader {
                shard: req.shard,
                leader: None,
                leader_addr: Some(hint.lock().unwrap().clone()),
            })),
            _ => Some(Ok(Reply::Changed(true))),
        })
    };
    let a = TestServer::start(&certs, 1, map.clone(), follower(b_addr.clone()));
    let c = TestServer::start(&certs, 3, map.clone(), follower(b_addr.clone()));
    let client = led_by_silent_b(&certs, &map, [&a, &b, &c]).await;
    assert!(client.follow(1, 2).await.unwrap());
    // One attempt at B found it silent; the hints naming B afterwards were not followed.
    assert_eq!(b.requests().len(), 1, "the client went back to the silent node");
    assert_eq!(a.requests().len() + c.requests().len(), 3);
}

#[tokio::test]
async fn a_replica_that_serves_a_write_is_remembered_as_the_leader() {
    let certs = make_certs();
    let map = Arc::new(Mutex::new(ShardMap::default()));
    // B, the leader in the client's map, has stopped answering; A and C both serve, as the one
    // that took over would, without ever saying who leads.
    let b = TestServer::start(&certs, 2, map.clone(), handler(|_| None));
    let a = TestServer::start(&certs, 1, map.clone(), handler(|_| Some(Ok(Reply::Changed(true)))));
    let c = TestServer::start(&certs, 3, map.clone(), handler(|_| Some(Ok(Reply::Changed(true)))));
    let client = led_by_silent_b(&certs, &map, [&a, &b, &c]).await;
    assert!(client.follow(1, 2).await.unwrap());
    let served_by = if a.requests().is_empty() { 3 } else { 1 };
    assert_eq!(b.requests().len(), 1);
    // Once B's pass-over ends, the client must not go back to B as if it still led.
    assert_eq!(client.shard_map().shards[0].leader, Some(served_by));
}
