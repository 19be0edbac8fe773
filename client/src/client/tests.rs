//! Routing, retry and session tests of `Client` over a scripted in-memory transport.

use std::collections::BTreeMap;

use plexus_proto::{HelloOk, Session, ShardPlacement, WriteOp};

use super::*;
use crate::transport::BoxFuture;

#[test]
fn client_is_cheap_to_share_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Client>();
}

/// A scripted answer: `None` means the node never answers this request.
type Script = Box<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// An in-memory transport: each address answers by its script, and every request is
/// logged with the (virtual) time it was sent.
struct Fake {
    map: ShardMap,
    scripts: BTreeMap<String, Script>,
    log: Mutex<Vec<(String, Request, tokio::time::Instant)>>,
}

impl Fake {
    fn sent(&self) -> Vec<(String, Request, tokio::time::Instant)> {
        self.log.lock().unwrap().clone()
    }
}

impl Transport for Fake {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<HelloOk>, ClientError>> {
        let ok = self.scripts.contains_key(addr).then(|| HelloOk {
            node_id: self
                .map
                .nodes
                .iter()
                .find(|n| n.client_addr == addr)
                .map_or(0, |n| n.id),
            shard_map: self.map.clone(),
        });
        Box::pin(async move {
            ok.map(Some).ok_or_else(|| ClientError::Connect {
                addr: addr.to_string(),
                reason: "no such node".into(),
            })
        })
    }

    fn request<'a>(&'a self, addr: &'a str, req: Request) -> BoxFuture<'a, Result<Response, ClientError>> {
        Box::pin(async move {
            let answer = self.scripts.get(addr).map(|script| script(&req));
            self.log
                .lock()
                .unwrap()
                .push((addr.to_string(), req, tokio::time::Instant::now()));
            match answer {
                Some(Some(response)) => Ok(response),
                Some(None) => std::future::pending().await,
                None => Err(ClientError::Connect {
                    addr: addr.to_string(),
                    reason: "no such node".into(),
                }),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One shard on nodes 1 (`a:1`) and 2 (`b:1`); the map names node 1 its leader.
fn two_nodes(a: Script, b: Script) -> Arc<Fake> {
    let map = ShardMap {
        shard_count: 1,
        nodes: vec![
            NodeInfo {
                id: 1,
                client_addr: "a:1".into(),
            },
            NodeInfo {
                id: 2,
                client_addr: "b:1".into(),
            },
        ],
        shards: vec![ShardPlacement {
            shard: 0,
            replicas: vec![1, 2],
            leader: Some(1),
        }],
    };
    let scripts = BTreeMap::from([("a:1".to_string(), a), ("b:1".to_string(), b)]);
    Arc::new(Fake {
        map,
        scripts,
        log: Mutex::default(),
    })
}

/// A configuration without TLS material, which only the QUIC transport would need.
fn cfg() -> ClientConfig {
    ClientConfig::new(vec!["a:1".into()], String::new(), "token".into())
}

fn session_of(r: &Request) -> Session {
    r.session.expect("writes carry a session")
}

#[tokio::test(start_paused = true)]
async fn not_leader_is_followed_to_the_named_leader_with_the_same_seq() {
    let fake = two_nodes(
        Box::new(|req| {
            Some(Err(ErrorReply::NotLeader {
                shard: req.shard,
                leader: Some(2),
                leader_addr: Some("b:1".into()),
            }))
        }),
        Box::new(|_| Some(Ok(Reply::Changed(true)))),
    );
    let client = Client::connect_with(cfg(), fake.clone(), 7).await.unwrap();
    assert!(client.follow(1, 2).await.unwrap());
    let sent = fake.sent();
    assert_eq!(
        sent.iter().map(|(a, _, _)| a.as_str()).collect::<Vec<_>>(),
        ["a:1", "b:1"]
    );
    // The redirect is followed at once, not after a backoff.
    assert_eq!(sent[0].2, sent[1].2);
    assert_eq!(session_of(&sent[0].1), session_of(&sent[1].1));
    assert_eq!(client.shard_map().shards[0].leader, Some(2));
    // The next write goes straight to the leader the redirect named.
    assert!(client.follow(1, 3).await.unwrap());
    assert_eq!(fake.sent().last().map(|(a, _, _)| a.clone()), Some("b:1".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_retried_write_reuses_its_session_seq() {
    let busy = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let b = busy.clone();
    let fake = two_nodes(
        Box::new(move |_| {
            Some(if b.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(ErrorReply::Busy("queue full".into()))
            } else {
                Ok(Reply::Appended(77))
            })
        }),
        Box::new(|_| None),
    );
    let client = Client::connect_with(cfg(), fake.clone(), 7).await.unwrap();
    assert_eq!(client.timeline_append(5, b"x".to_vec()).await.unwrap(), 77);
    let sent = fake.sent();
    assert_eq!(sent.len(), 3);
    let expected = Session {
        client_id: client.client_id(),
        seq: 1,
        ack_below: 1,
    };
    for (addr, req, _) in &sent {
        assert_eq!(addr, "a:1");
        assert_eq!(session_of(req), expected);
        assert_eq!(
            req.op,
            Op::Write(WriteOp::TimelineAppend {
                owner: 5,
                item: b"x".to_vec()
            })
        );
    }
    // The next write is a new one.
    assert_eq!(client.timeline_append(5, b"y".to_vec()).await.unwrap(), 77);
    assert_eq!(session_of(&fake.sent()[3].1).seq, 2);
}

#[tokio::test]
async fn the_same_seed_draws_the_same_client_id() {
    let fake = || two_nodes(Box::new(|_| None), Box::new(|_| None));
    let a = Client::connect_with(cfg(), fake(), 42).await.unwrap();
    let b = Client::connect_with(cfg(), fake(), 42).await.unwrap();
    let c = Client::connect_with(cfg(), fake(), 43).await.unwrap();
    assert_eq!(a.client_id(), b.client_id());
    assert_ne!(a.client_id(), c.client_id());
}

/// The virtual times, relative to the first, at which `seed`'s client sent a write that
/// the node answered `Busy` until its retries ran out.
async fn backoff_pattern(seed: u64) -> Vec<Duration> {
    let fake = two_nodes(
        Box::new(|_| Some(Err(ErrorReply::Busy("queue full".into())))),
        Box::new(|_| None),
    );
    let mut cfg = cfg();
    // Few enough failures that no shard map refresh comes between the attempts.
    cfg.retries_max = 2;
    let client = Client::connect_with(cfg, fake.clone(), seed).await.unwrap();
    let err = client.follow(1, 2).await.unwrap_err();
    assert!(
        matches!(err, ClientError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    let sent = fake.sent();
    sent.iter().map(|(_, _, at)| *at - sent[0].2).collect()
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_waits_the_same_backoff_delays() {
    let a = backoff_pattern(42).await;
    assert_eq!(a.len(), 3);
    assert_eq!(a, backoff_pattern(42).await);
    assert_ne!(a, backoff_pattern(43).await);
    // Each delay is jittered within [ceiling/2, ceiling] of a doubling 20 ms ceiling.
    for (i, pair) in a.windows(2).enumerate() {
        let ceiling = Duration::from_millis(20 << i);
        let wait = pair[1] - pair[0];
        assert!(wait >= ceiling / 2 && wait <= ceiling, "retry {i}: {wait:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_never_answered_ends_at_request_timeout() {
    let fake = two_nodes(Box::new(|_| None), Box::new(|_| None));
    let client = Client::connect_with(cfg(), fake.clone(), 1).await.unwrap();
    let start = tokio::time::Instant::now();
    let err = client.follow(1, 2).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    let limit = client.inner.cfg.request_timeout;
    // The timer wheel may round the deadline up to its next millisecond.
    assert!(start.elapsed() >= limit && start.elapsed() <= limit + Duration::from_millis(1));
    // 5 s of 2 s attempts: the leader, then the other replica (the leader is passed over
    // while it counts as down), then the leader again once that has expired.
    let sent = fake.sent();
    assert_eq!(
        sent.iter().map(|(a, _, _)| a.as_str()).collect::<Vec<_>>(),
        ["a:1", "b:1", "a:1"]
    );
    assert!(sent.iter().all(|(_, r, _)| session_of(r) == session_of(&sent[0].1)));
}

#[tokio::test(start_paused = true)]
async fn a_hung_leader_costs_one_attempt_then_a_replica_names_the_new_one() {
    let fake = two_nodes(Box::new(|_| None), Box::new(|_| Some(Ok(Reply::Changed(true)))));
    let client = Client::connect_with(cfg(), fake.clone(), 3).await.unwrap();
    let start = tokio::time::Instant::now();
    assert!(client.follow(1, 2).await.unwrap());
    let sent = fake.sent();
    assert_eq!(
        sent.iter().map(|(a, _, _)| a.as_str()).collect::<Vec<_>>(),
        ["a:1", "b:1"]
    );
    let attempt = client.inner.cfg.attempt_timeout;
    let waited = sent[1].2 - sent[0].2;
    // One attempt limit plus one backoff (at most `backoff_base` after a first failure).
    assert!(
        waited >= attempt && waited <= attempt + client.inner.cfg.backoff_base,
        "{waited:?}"
    );
    assert!(start.elapsed() < client.inner.cfg.request_timeout);
    // While node 1 counts as down, the next write goes to node 2 without waiting on node 1.
    assert!(client.follow(1, 3).await.unwrap());
    assert_eq!(fake.sent().last().map(|(a, _, _)| a.clone()), Some("b:1".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_raw_call_to_a_node_that_never_answers_ends_at_the_attempt_limit() {
    let fake = two_nodes(Box::new(|_| None), Box::new(|_| None));
    let client = Client::connect_with(cfg(), fake, 5).await.unwrap();
    let start = tokio::time::Instant::now();
    let req = Request {
        shard: 0,
        consistency: Consistency::Stale,
        session: None,
        op: Op::Admin(AdminOp::Status),
    };
    let err = client.call_at("b:1", req).await.unwrap_err();
    assert!(
        matches!(err, ClientError::AttemptTimeout { ref addr, .. } if addr == "b:1"),
        "{err:?}"
    );
    let limit = client.inner.cfg.attempt_timeout;
    assert!(start.elapsed() >= limit && start.elapsed() <= limit + Duration::from_millis(1));
}

#[tokio::test]
async fn the_seam_needs_no_tls_material_but_quic_still_does() {
    let fake = two_nodes(Box::new(|_| None), Box::new(|_| None));
    assert!(Client::connect_with(cfg(), fake, 1).await.is_ok());
    let quic = Client::connect(cfg()).await;
    assert!(
        matches!(quic, Err(ClientError::Config(ref m)) if m.contains("ca_cert")),
        "{:?}",
        quic.err()
    );
    // Every other setting is still checked on the seam.
    let mut bad = cfg();
    bad.request_timeout = Duration::ZERO;
    let fake = two_nodes(Box::new(|_| None), Box::new(|_| None));
    assert!(matches!(
        Client::connect_with(bad, fake, 1).await,
        Err(ClientError::Config(_))
    ));
}
