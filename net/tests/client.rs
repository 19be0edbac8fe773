//! Client connections over real QUIC on 127.0.0.1: the hello handshake, request
//! streams, and hostile input that must be answered without disturbing anyone.

mod common;

use common::*;
use std::sync::Arc;

use plexus_net::{
    BoxFuture, ClientHandler, NetLimits, NodeEndpoint, CLOSE_BAD_HELLO, CLOSE_CONN_DROPPED, CLOSE_TOO_MANY_CONNS,
    CLOSE_UNAUTHORIZED, SERVER_NAME,
};
use plexus_proto::frame::encode;
use plexus_proto::{ErrorReply, FrameKind, HelloOk, Reply, Request, Response, ShardMap, PROTOCOL_VERSION};

fn expect_app_close(err: quinn::ConnectionError, code: u32, reason: &[u8]) {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(code));
            assert_eq!(&close.reason[..], reason);
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// A frame header claiming `len` body bytes of `kind`, with no body.
fn header(len: u32, version: u8, kind: u8) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend([version, kind]);
    h
}

fn bad(reason: &str) -> plexus_proto::Response {
    Err(ErrorReply::BadRequest(reason.to_string()))
}

#[tokio::test]
async fn hello_with_the_right_token_then_requests() {
    let ca = fresh_ca("hello");
    let (n, _) = node(7, &material(&ca, 7), NetLimits::default());
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
    let conn = connect(&ep, n.local_addr()).await.unwrap();
    assert_eq!(
        hello(&conn, TOKEN).await,
        Ok(HelloOk {
            node_id: 7,
            shard_map: ShardMap {
                shard_count: 8,
                nodes: vec![],
                shards: vec![]
            }
        })
    );
    assert_eq!(call(&conn, &request(3)).await, Ok(Reply::Count(3)));
    // Many streams at once on one connection, each with its own answer.
    let answers = futures::future::join_all((0..300u32).map(|i| {
        let conn = conn.clone();
        async move { call(&conn, &request(i)).await }
    }))
    .await;
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a, Ok(Reply::Count(i as u64)));
    }
    n.shutdown().await;
}

/// The node accepts UDP payloads up to `udp_payload_bytes_max` (quinn's default is 1472), so path
/// MTU discovery from a client that allows as much climbs past Ethernet's 1452 on loopback.
#[tokio::test]
async fn mtu_discovery_climbs_past_ethernet_size_on_loopback() {
    let ca = fresh_ca("mtu");
    let limits = NetLimits::default();
    assert!(limits.udp_payload_bytes_max > 1472);
    let (n, _) = node(7, &material(&ca, 7), limits.clone());
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.udp_payload_bytes_max);
    let mut transport = quinn::TransportConfig::default();
    transport.mtu_discovery_config(Some(mtu));
    let mut cfg = client_config(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
    cfg.transport_config(Arc::new(transport));
    let conn = ep
        .connect_with(cfg, n.local_addr(), SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    assert!(hello(&conn, TOKEN).await.is_ok());
    // Round trips, not sleeps, give discovery its probes; on loopback it needs a handful.
    let mut rounds = 0;
    while conn.stats().path.current_mtu <= 1472 && rounds < 2_000 {
        assert_eq!(call(&conn, &request(1)).await, Ok(Reply::Count(1)));
        rounds += 1;
    }
    let current = conn.stats().path.current_mtu;
    assert!(current > 1472, "mtu still {current} after {rounds} round trips");
    assert!(current <= limits.udp_payload_bytes_max, "mtu {current}");
    n.shutdown().await;
}

#[tokio::test]
async fn wrong_token_is_unauthorized_and_closed() {
    let ca = fresh_ca("token");
    let (n, _) = node(1, &material(&ca, 1), NetLimits::default());
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
    let conn = connect(&ep, n.local_addr()).await.unwrap();
    assert_eq!(
        hello(&conn, "guess").await,
        Err(ErrorReply::Unauthorized("wrong token".into()))
    );
    expect_app_close(conn.closed().await, CLOSE_UNAUTHORIZED, b"unauthorized");
    n.shutdown().await;
}

#[tokio::test]
async fn first_stream_must_be_a_hello() {
    let ca = fresh_ca("nohello");
    let (n, _) = node(1, &material(&ca, 1), NetLimits::default());
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
    let conn = connect(&ep, n.local_addr()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(FrameKind::Request, &request(1), 1 << 20).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let ack: plexus_proto::HelloAck = plexus_proto::frame::read_msg(&mut recv, FrameKind::HelloAck, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        ack,
        Err(ErrorReply::BadRequest(
            "expected a hello frame: unexpected frame kind Request, expected Hello".into()
        ))
    );
    expect_app_close(conn.closed().await, CLOSE_BAD_HELLO, b"bad hello");
    n.shutdown().await;
}

#[tokio::test]
async fn hostile_streams_get_bad_request_and_the_connection_keeps_serving() {
    let ca = fresh_ca("hostile");
    let (n, _) = node(1, &material(&ca, 1), NetLimits::default());
    let (_ep, conn) = client(&ca.cert_pem, n.local_addr()).await;

    // Garbage: "this i" reads as a header whose version byte is b' ' (32).
    assert_eq!(
        raw_request(&conn, b"this is not a frame at all").await,
        bad("unsupported protocol version 32 (this build speaks 1)")
    );
    assert_eq!(call(&conn, &request(1)).await, Ok(Reply::Count(1)));

    // A header announcing more than the limit is refused before any body is read.
    assert_eq!(
        raw_request(
            &conn,
            &header(4 * 1024 * 1024 + 1, PROTOCOL_VERSION, FrameKind::Request as u8)
        )
        .await,
        bad("frame of 4194305 bytes exceeds the limit of 4194304 bytes")
    );
    assert_eq!(
        raw_request(&conn, &header(0, PROTOCOL_VERSION, 99)).await,
        bad("unknown frame kind 99")
    );
    // A valid frame of the wrong kind.
    let hello = plexus_proto::Hello {
        token: TOKEN.into(),
        client_name: "again".into(),
    };
    assert_eq!(
        raw_request(&conn, &encode(FrameKind::Hello, &hello, 1 << 20).unwrap()).await,
        bad("expected a request frame, got Hello")
    );
    // A valid frame whose op is enum tag 99: shard 0, linearizable, no session, op 99.
    let mut unknown_op = header(4, PROTOCOL_VERSION, FrameKind::Request as u8);
    unknown_op.extend([0, 0, 0, 99]);
    assert_eq!(
        raw_request(&conn, &unknown_op).await,
        bad("malformed request: unknown operation tag 99")
    );
    // A truncated body: the header promises 10 bytes, the stream ends after 2.
    let mut truncated = header(10, PROTOCOL_VERSION, FrameKind::Request as u8);
    truncated.extend([0, 0]);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&truncated).await.unwrap();
    send.finish().unwrap();
    // The server cannot answer a frame it never got; it drops the stream without a response.
    let got = plexus_proto::frame::read_frame(&mut recv, 1 << 20).await;
    assert!(matches!(got, Err(plexus_proto::FrameError::Closed)), "{got:?}");

    assert_eq!(call(&conn, &request(2)).await, Ok(Reply::Count(2)));
    assert!(conn.close_reason().is_none());
    n.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_actually_sent_is_refused() {
    let ca = fresh_ca("oversized");
    let limits = NetLimits {
        client_frame_bytes_max: 64 * 1024,
        ..NetLimits::default()
    };
    let (n, _) = node(1, &material(&ca, 1), limits);
    let (_ep, conn) = client(&ca.cert_pem, n.local_addr()).await;
    let big = plexus_proto::Request {
        op: plexus_proto::Op::Write(plexus_proto::WriteOp::TimelineAppend {
            owner: 1,
            item: vec![7; 100_000],
        }),
        ..request(0)
    };
    let bytes = encode(FrameKind::Request, &big, 1 << 20).unwrap();
    assert_eq!(bytes.len(), 6 + 100_009);
    assert_eq!(
        raw_request(&conn, &bytes).await,
        bad("frame of 100009 bytes exceeds the limit of 65536 bytes")
    );
    assert_eq!(call(&conn, &request(5)).await, Ok(Reply::Count(5)));
    n.shutdown().await;
}

#[tokio::test]
async fn client_that_does_not_trust_the_ca_fails_the_handshake() {
    let ca = fresh_ca("trusted");
    let other = fresh_ca("untrusted");
    let (n, _) = node(1, &material(&ca, 1), NetLimits::default());
    let ep = client_endpoint(&other.cert_pem, plexus_proto::ALPN_CLIENT, None);
    match connect(&ep, n.local_addr()).await {
        Err(quinn::ConnectionError::TransportError(e)) => {
            assert_eq!(
                e.to_string(),
                "the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer"
            )
        }
        other => panic!("expected a handshake failure, got {other:?}"),
    }
    n.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let ca = fresh_ca("conns");
    let limits = NetLimits {
        client_conns_max: 1,
        ..NetLimits::default()
    };
    let (n, _) = node(1, &material(&ca, 1), limits);
    let (_ep, first) = client(&ca.cert_pem, n.local_addr()).await;
    let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
    let second = connect(&ep, n.local_addr()).await.unwrap();
    expect_app_close(
        second.closed().await,
        CLOSE_TOO_MANY_CONNS,
        b"too many client connections",
    );
    assert_eq!(call(&first, &request(4)).await, Ok(Reply::Count(4)));
    n.shutdown().await;
}

/// A well-behaved client keeps getting answers while others misbehave in every way above.
#[tokio::test]
async fn a_good_client_is_served_throughout() {
    let ca = fresh_ca("steady");
    let other = fresh_ca("other");
    let (n, _) = node(1, &material(&ca, 1), NetLimits::default());
    let addr = n.local_addr();
    let (_good_ep, good) = client(&ca.cert_pem, addr).await;
    let steady = {
        let good = good.clone();
        tokio::spawn(async move {
            for i in 0..200u32 {
                assert_eq!(call(&good, &request(i)).await, Ok(Reply::Count(u64::from(i))));
                tokio::task::yield_now().await;
            }
        })
    };
    let hostile = async {
        for _ in 0..5 {
            let ep = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_CLIENT, None);
            let c = connect(&ep, addr).await.unwrap();
            assert_eq!(
                hello(&c, "bad").await,
                Err(ErrorReply::Unauthorized("wrong token".into()))
            );
            let (_e, c) = client(&ca.cert_pem, addr).await;
            assert_eq!(
                raw_request(&c, b"\xff\xff\xff\xff\xff\xff garbage").await,
                bad("unsupported protocol version 255 (this build speaks 1)")
            );
            let untrusting = client_endpoint(&other.cert_pem, plexus_proto::ALPN_CLIENT, None);
            assert!(connect(&untrusting, addr).await.is_err());
            let nocert_peer = client_endpoint(&ca.cert_pem, plexus_proto::ALPN_PEER, None);
            let p = connect(&nocert_peer, addr).await.unwrap();
            p.closed().await;
        }
    };
    hostile.await;
    steady.await.unwrap();
    assert_eq!(call(&good, &request(9)).await, Ok(Reply::Count(9)));
    assert!(good.close_reason().is_none());
    n.shutdown().await;
}

/// A node that crashes sends no CONNECTION_CLOSE: its clients keep a connection the next process
/// on that address knows nothing of. Started again with the same key, the node answers their
/// next packet with a stateless reset they accept (its reset key derives from the node key), so
/// they see the connection end at once and redial, instead of after the idle timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_its_crashed_incarnations_connections() {
    let ca = fresh_ca("reset");
    let tls = material(&ca, 1);
    // The first incarnation runs on a runtime of its own, so that it can die as a killed process
    // does: its tasks dropped unpolled, nothing more sent.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (first, _) = {
        let _in = doomed.enter();
        node(1, &tls, NetLimits::default())
    };
    let addr = first.local_addr();
    let (_ep, conn) = client(&ca.cert_pem, addr).await;
    assert_eq!(call(&conn, &request(3)).await, Ok(Reply::Count(3)));
    doomed.shutdown_background();
    drop(first);

    // Same address, same key. The old socket may take a moment to be released.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let second = loop {
        match plexus_net::NodeEndpoint::bind(1, addr, &tls, TOKEN.to_string(), NetLimits::default()) {
            Ok(ep) => break ep,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    };
    second.serve(Arc::new(EchoPeer::default()), Arc::new(EchoClient { node_id: 1 }));

    // A request on the old connection draws the reset. So may the client's delayed ACK of the
    // last answer, when the new incarnation is bound before it goes out: then the connection is
    // reset already and no stream opens.
    let started = std::time::Instant::now();
    if let Ok((mut send, _recv)) = conn.open_bi().await {
        let _ = send
            .write_all(&encode(FrameKind::Request, &request(4), 1 << 20).unwrap())
            .await;
        let _ = send.finish();
    }
    let why = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed())
        .await
        .expect("the old connection was not reset within 5 s (the idle timeout is 30 s)");
    assert!(matches!(why, quinn::ConnectionError::Reset), "{why:?}");
    eprintln!("old connection reset {:?} after the request", started.elapsed());

    // A new connection to the new incarnation is served.
    let (_ep2, conn2) = client(&ca.cert_pem, addr).await;
    assert_eq!(call(&conn2, &request(5)).await, Ok(Reply::Count(5)));
    second.shutdown().await;
}

/// Runs each client connection in a task it keeps and can abort, as a node's gateway actor does.
struct HeldClient {
    echo: EchoClient,
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl ClientHandler for HeldClient {
    fn hello(&self) -> HelloOk {
        self.echo.hello()
    }
    fn handle(&self, req: Request) -> BoxFuture<'static, Response> {
        self.echo.handle(req)
    }
    fn run_connection(&self, serve: BoxFuture<'static, ()>) {
        self.tasks.lock().unwrap().push(tokio::spawn(serve).abort_handle());
    }
}

#[tokio::test]
async fn a_connection_no_longer_served_is_closed_with_its_reason() {
    let ca = fresh_ca("held");
    let n = NodeEndpoint::bind(
        1,
        localhost(),
        &material(&ca, 1),
        TOKEN.to_string(),
        NetLimits::default(),
    )
    .unwrap();
    let held = Arc::new(HeldClient {
        echo: EchoClient { node_id: 1 },
        tasks: Default::default(),
    });
    n.serve(Arc::new(EchoPeer::default()), held.clone());
    let (_ep, conn) = client(&ca.cert_pem, n.local_addr()).await;
    assert_eq!(call(&conn, &request(2)).await, Ok(Reply::Count(2)));

    // The connection's runner stops (a gateway actor failed): the client learns at once, with a
    // code that tells it to redial, instead of waiting out its idle timeout.
    for task in held.tasks.lock().unwrap().drain(..) {
        task.abort();
    }
    expect_app_close(
        conn.closed().await,
        CLOSE_CONN_DROPPED,
        b"connection no longer served; redial",
    );
    n.shutdown().await;
}
