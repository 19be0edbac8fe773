//! Peer links over real QUIC with mutual TLS on 127.0.0.1.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use plexus_net::{NetError, NetLimits, NodeEndpoint, PeerLinks, CLOSE_PEER_CERT_REQUIRED};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn mtls_call_works_and_batches() {
    let ca = fresh_ca("batching");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let (b, b_handler) = node(2, &material(&ca, 2), NetLimits::default());
    let links = a.peer_links();
    links.set_peer(2, b.local_addr());

    assert_eq!(links.call(2, b"ping".to_vec(), T).await.unwrap(), b"from-1:ping");

    let calls = (0..1000u32).map(|i| {
        let links = links.clone();
        async move { links.call(2, i.to_string().into_bytes(), T).await }
    });
    let replies = futures::future::join_all(calls).await;
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.unwrap(), format!("from-1:{i}").into_bytes());
    }
    let stats = links.stats();
    assert_eq!(stats.msgs_sent, 1001);
    assert_eq!(stats.batches_failed, 0);
    assert!(stats.batches_sent < stats.msgs_sent, "no batching happened: {stats:?}");
    assert_eq!(b_handler.calls.load(Ordering::Relaxed), 1001);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn remote_errors_come_back_per_message() {
    let ca = fresh_ca("errors");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let (b, _) = node(2, &material(&ca, 2), NetLimits::default());
    let links = a.peer_links();
    links.set_peer(2, b.local_addr());
    let (ok, bad) = tokio::join!(links.call(2, b"x".to_vec(), T), links.call(2, b"fail-7".to_vec(), T));
    assert_eq!(ok.unwrap(), b"from-1:x");
    match bad {
        Err(NetError::Remote(reason)) => assert_eq!(reason, "refused fail-7"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn accepting_side_reuses_the_connection() {
    let ca = fresh_ca("reuse");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let (b, _) = node(2, &material(&ca, 2), NetLimits::default());
    a.peer_links().set_peer(2, b.local_addr());
    assert_eq!(a.peer_links().call(2, b"hi".to_vec(), T).await.unwrap(), b"from-1:hi");
    // b never learned a's address: it can only answer through the connection a opened, identified by a's cert.
    assert_eq!(
        b.peer_links().call(1, b"back".to_vec(), T).await.unwrap(),
        b"from-2:back"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unknown_and_unreachable_peers() {
    let ca = fresh_ca("unknown");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let links = a.peer_links();
    assert!(matches!(
        links.call(9, b"x".to_vec(), T).await,
        Err(NetError::UnknownPeer(9))
    ));

    // A bound UDP socket that never answers QUIC: the dial times out after the dial timeout,
    // not after the (much longer) idle timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let limits = NetLimits {
        dial_timeout_ms: 300,
        ..NetLimits::default()
    };
    assert!(limits.idle_timeout_ms > 10 * limits.dial_timeout_ms);
    let (c, _) = node(3, &material(&ca, 3), limits);
    c.peer_links().set_peer(4, silent.local_addr().unwrap());
    match c.peer_links().call(4, b"x".to_vec(), T).await {
        Err(NetError::Unreachable { peer: 4, reason }) => assert_eq!(reason, "handshake timed out after 300 ms"),
        other => panic!("expected unreachable, got {other:?}"),
    }
    // Within the backoff window the link fails fast instead of dialing again.
    match c.peer_links().call(4, b"y".to_vec(), T).await {
        Err(NetError::Unreachable { peer: 4, reason }) => {
            assert!(
                reason.starts_with("handshake timed out after 300 ms (next dial in "),
                "{reason}"
            )
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn once_a_dial_failed_calls_fail_at_once_while_redials_run_in_the_background() {
    let ca = fresh_ca("redial");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let limits = NetLimits {
        dial_timeout_ms: 2_000,
        ..NetLimits::default()
    };
    let (c, _) = node(3, &material(&ca, 3), limits);
    c.peer_links().set_peer(4, silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    assert!(c.peer_links().call(4, b"x".to_vec(), T).await.is_err());
    assert!(
        started.elapsed() >= Duration::from_millis(2_000),
        "the first dial is waited for"
    );
    // Past the backoff, the next dial runs in the background: callers (who may have another
    // replica to ask) are not held for its two seconds, each time the peer is asked.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let started = std::time::Instant::now();
        match c.peer_links().call(4, b"y".to_vec(), T).await {
            Err(NetError::Unreachable { peer: 4, reason }) => {
                // The last redial's failure, or the one before with the redial under way.
                assert!(reason.starts_with("handshake timed out after 2000 ms"), "{reason}")
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(1_000),
            "a call waited {:?} for a redial",
            started.elapsed()
        );
    }
    c.shutdown().await;
}

#[tokio::test]
async fn dialing_an_address_that_is_another_node_fails() {
    let ca = fresh_ca("wrong");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let (b, handler) = node(2, &material(&ca, 2), NetLimits::default());
    a.peer_links().set_peer(3, b.local_addr());
    assert!(matches!(
        a.peer_links().call(3, b"x".to_vec(), T).await,
        Err(NetError::WrongPeer {
            expected: 3,
            got: Some(2)
        })
    ));
    assert_eq!(handler.calls.load(Ordering::Relaxed), 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn peer_with_cert_from_another_ca_is_refused() {
    let ca = fresh_ca("real");
    let other = fresh_ca("impostor");
    let (a, handler) = node(1, &material(&ca, 1), NetLimits::default());
    // The impostor trusts the real CA (so it accepts a's server certificate) but its own cert is from another CA.
    let mut impostor_tls = material(&other, 2);
    impostor_tls.ca_pem = ca.cert_pem.clone();
    let impostor = NodeEndpoint::bind(2, localhost(), &impostor_tls, TOKEN.into(), NetLimits::default()).unwrap();
    let links = impostor.peer_links();
    links.set_peer(1, a.local_addr());
    // TLS 1.3 lets the dialer finish its handshake before the server has checked the client certificate,
    // so the refusal arrives as the connection's close while the first batch is in flight.
    match links.call(1, b"let me in".to_vec(), T).await {
        Err(NetError::ConnectionLost { peer: 1, reason }) => assert_eq!(
            reason,
            "aborted by peer: the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer"
        ),
        other => panic!("expected the connection to be refused, got {other:?}"),
    }
    assert_eq!(handler.calls.load(Ordering::Relaxed), 0);

    // The same refusal seen by a raw client: the handshake fails with a TLS alert.
    let foreign = make_foreign_node_cert(&other);
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_PEER, Some(&foreign));
    let result = match connect(&ep, a.local_addr()).await {
        Err(e) => e,
        Ok(conn) => conn.closed().await,
    };
    match result {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(&close.reason[..], b"invalid peer certificate: UnknownIssuer")
        }
        other => panic!("expected a tls refusal, got {other:?}"),
    }
    assert_eq!(handler.calls.load(Ordering::Relaxed), 0);
    a.shutdown().await;
    impostor.shutdown().await;
}

fn make_foreign_node_cert(ca: &plexus_net::CertKey) -> plexus_net::CertKey {
    plexus_net::make_node_cert(ca, 5, &[]).unwrap()
}

#[tokio::test]
async fn peer_alpn_without_client_cert_is_closed_with_a_reason() {
    let ca = fresh_ca("nocert");
    let (a, handler) = node(1, &material(&ca, 1), NetLimits::default());
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_PEER, None);
    let conn = connect(&ep, a.local_addr()).await.unwrap();
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(CLOSE_PEER_CERT_REQUIRED));
            assert_eq!(&close.reason[..], b"peer certificate required");
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    assert_eq!(handler.calls.load(Ordering::Relaxed), 0);
    a.shutdown().await;
}

#[tokio::test]
async fn full_queue_answers_busy() {
    let ca = fresh_ca("busy");
    let limits = NetLimits {
        peer_queue_msgs_max: 1,
        peer_batches_in_flight_max: 1,
        ..NetLimits::default()
    };
    let (a, _) = node(1, &material(&ca, 1), limits);
    let (b, _) = node(2, &material(&ca, 2), NetLimits::default());
    let links = a.peer_links();
    links.set_peer(2, b.local_addr());
    let calls = (0..50u32).map(|i| {
        let links = links.clone();
        async move { links.call(2, i.to_string().into_bytes(), T).await }
    });
    let results = futures::future::join_all(calls).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(NetError::Busy(2, 1))))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(busy > 0, "{results:?}");
    assert_eq!(busy + ok, 50, "{results:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn calls_after_shutdown_fail() {
    let ca = fresh_ca("shutdown");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    a.shutdown().await;
    assert!(matches!(
        a.peer_links().call(2, vec![], T).await,
        Err(NetError::Shutdown)
    ));
}

#[tokio::test]
async fn oversized_message_is_refused_locally() {
    let ca = fresh_ca("big");
    let limits = NetLimits {
        frame_bytes_max: 1024,
        ..NetLimits::default()
    };
    let (a, _) = node(1, &material(&ca, 1), limits);
    a.peer_links().set_peer(2, "127.0.0.1:9".parse().unwrap());
    assert!(matches!(
        a.peer_links().call(2, vec![0; 1000], T).await,
        Err(NetError::TooLarge { len: 1000, max: 1024 })
    ));
    a.shutdown().await;
}

#[tokio::test]
async fn a_restarted_peer_is_reached_on_its_new_connection() {
    let ca = fresh_ca("restart");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let b_tls = material(&ca, 2);
    let (b, _) = node(2, &b_tls, NetLimits::default());
    b.peer_links().set_peer(1, a.local_addr());
    assert_eq!(b.peer_links().call(1, b"one".to_vec(), T).await.unwrap(), b"from-2:one");
    assert_eq!(a.peer_links().call(2, b"x".to_vec(), T).await.unwrap(), b"from-1:x");
    b.shutdown().await;

    // Node 2 comes back on another port and dials node 1, which only knows it by its connection.
    let (b2, b2_handler) = node(2, &b_tls, NetLimits::default());
    b2.peer_links().set_peer(1, a.local_addr());
    assert_eq!(
        b2.peer_links().call(1, b"two".to_vec(), T).await.unwrap(),
        b"from-2:two"
    );
    assert_eq!(a.peer_links().call(2, b"y".to_vec(), T).await.unwrap(), b"from-1:y");
    assert_eq!(b2_handler.calls.load(Ordering::Relaxed), 1);
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test]
async fn hostile_peer_batches_are_refused() {
    use plexus_net::wire::{PeerBatch, PeerBatchReply, WireBytes};
    use plexus_proto::frame::{encode, read_frame, read_msg};
    use plexus_proto::FrameKind;

    let ca = fresh_ca("hostile-peer");
    let (a, handler) = node(1, &material(&ca, 1), NetLimits::default());
    let five = plexus_net::make_node_cert(&ca, 5, &[]).unwrap();
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_PEER, Some(&five));
    let conn = connect(&ep, a.local_addr()).await.unwrap();

    // A batch that claims another sender than its certificate is refused message by message.
    let forged = PeerBatch {
        from: 9,
        msgs: vec![WireBytes(b"a".to_vec()), WireBytes(b"b".to_vec())],
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(FrameKind::PeerBatch, &forged, 1 << 20).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let reply: PeerBatchReply = read_msg(&mut recv, FrameKind::PeerBatchReply, 1 << 20).await.unwrap();
    let reason = "batch claims to come from node 9 but the certificate names node 5".to_string();
    assert_eq!(reply, vec![Err(reason.clone()), Err(reason)]);
    assert_eq!(handler.calls.load(Ordering::Relaxed), 0);

    // Garbage resets the stream; the connection keeps working.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"\x01\x00\x00\x00\x01\x10\xff").await.unwrap();
    send.finish().unwrap();
    match read_frame(&mut recv, 1 << 20).await {
        Err(plexus_proto::FrameError::Io(e)) => assert_eq!(e.to_string(), "stream reset by peer: error 2"),
        other => panic!("expected a reset, got {other:?}"),
    }
    let honest = PeerBatch {
        from: 5,
        msgs: vec![WireBytes(b"hi".to_vec())],
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(FrameKind::PeerBatch, &honest, 1 << 20).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let reply: PeerBatchReply = read_msg(&mut recv, FrameKind::PeerBatchReply, 1 << 20).await.unwrap();
    assert_eq!(reply, vec![Ok(WireBytes(b"from-5:hi".to_vec()))]);
    a.shutdown().await;
}

/// Notifications shared between a `GatePeer` and its test.
#[derive(Default)]
struct Gate {
    arrived: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

/// Echoes, except that a message starting with `slow` is held until the test releases it.
struct GatePeer(std::sync::Arc<Gate>);

impl plexus_net::PeerHandler for GatePeer {
    fn handle(&self, from: u64, msg: Vec<u8>) -> plexus_net::BoxFuture<'static, Result<Vec<u8>, String>> {
        let gate = self.0.clone();
        Box::pin(async move {
            if msg.starts_with(b"slow") {
                gate.arrived.notify_one();
                gate.release.notified().await;
            }
            let mut out = format!("from-{from}:").into_bytes();
            out.extend_from_slice(&msg);
            Ok(out)
        })
    }
}

#[tokio::test]
async fn consensus_lane_is_not_held_back_by_a_slow_bulk_request() {
    use plexus_net::Lane;
    let ca = fresh_ca("lanes");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    let gate = std::sync::Arc::new(Gate::default());
    let b = NodeEndpoint::bind(
        2,
        localhost(),
        &material(&ca, 2),
        TOKEN.to_string(),
        NetLimits::default(),
    )
    .unwrap();
    b.serve(
        std::sync::Arc::new(GatePeer(gate.clone())),
        std::sync::Arc::new(EchoClient { node_id: 2 }),
    );
    let links = a.peer_links();
    links.set_peer(2, b.local_addr());

    let slow = tokio::spawn({
        let links = links.clone();
        async move { links.call_on(Lane::Bulk, 2, b"slow".to_vec(), T).await }
    });
    gate.arrived.notified().await;
    // The bulk request is parked in the remote handler; consensus traffic still flows.
    for i in 0..20 {
        let reply = links
            .call_on(Lane::Consensus, 2, format!("c{i}").into_bytes(), T)
            .await
            .unwrap();
        assert_eq!(reply, format!("from-1:c{i}").into_bytes());
    }
    assert!(
        !slow.is_finished(),
        "the slow request was answered before it was released"
    );
    gate.release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap(), b"from-1:slow");
    a.shutdown().await;
    b.shutdown().await;
}

/// `links.call(peer, msg, limit)` on a task of its own, so the test can go on meanwhile.
fn call_in_background(
    links: PeerLinks,
    peer: u64,
    msg: &[u8],
    limit: Duration,
) -> tokio::task::JoinHandle<Result<Vec<u8>, NetError>> {
    let msg = msg.to_vec();
    tokio::spawn(async move { links.call(peer, msg, limit).await })
}

#[tokio::test]
async fn a_dial_to_a_peer_not_yet_up_takes_the_connection_that_peer_opens() {
    let ca = fresh_ca("late-peer");
    // A port with nothing bound to it yet: b starts there later.
    let b_addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // An assumed round trip of a second: a's lost handshake packet goes again only after about
    // three, far beyond the call's own limit.
    let slow_handshake = NetLimits {
        initial_rtt_ms: 1_000,
        ..NetLimits::default()
    };
    let (a, _) = node(1, &material(&ca, 1), slow_handshake);
    a.peer_links().set_peer(2, b_addr);
    // a's dial sends its first handshake packet into the void.
    let first = call_in_background(a.peer_links(), 2, b"early", Duration::from_millis(1_500));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (b, _) = node_at(2, b_addr, &material(&ca, 2), NetLimits::default());
    b.peer_links().set_peer(1, a.local_addr());
    assert_eq!(
        b.peer_links().call(1, b"hello".to_vec(), T).await.unwrap(),
        b"from-2:hello"
    );
    // b's connection reached a at once; a's waiting call goes out on it instead of waiting out
    // its own handshake.
    assert_eq!(first.await.unwrap().unwrap(), b"from-1:early");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_arrives_before_the_node_serves_waits_until_it_does() {
    let ca = fresh_ca("not-yet-serving");
    let (a, _) = node(1, &material(&ca, 1), NetLimits::default());
    // b is bound and reaches its peers, as a node opening its groups does, but does not serve yet.
    let b = NodeEndpoint::bind(
        2,
        localhost(),
        &material(&ca, 2),
        TOKEN.to_string(),
        NetLimits::default(),
    )
    .unwrap();
    b.peer_links().set_peer(1, a.local_addr());
    assert_eq!(b.peer_links().call(1, b"up".to_vec(), T).await.unwrap(), b"from-2:up");
    // a answers back on the connection b opened: its batch waits for b to begin serving instead
    // of failing at once (a failed first vote costs an election timeout).
    let early = call_in_background(a.peer_links(), 2, b"early", T);
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.serve(
        std::sync::Arc::new(EchoPeer::default()),
        std::sync::Arc::new(EchoClient { node_id: 2 }),
    );
    assert_eq!(early.await.unwrap().unwrap(), b"from-1:early");
    a.shutdown().await;
    b.shutdown().await;
}
