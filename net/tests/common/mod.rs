//! Shared fixtures for the integration tests: certificates, echo handlers and a
//! minimal raw QUIC client that speaks the client protocol frame by frame.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use plexus_net::tls::{ca_roots, crypto_provider, parse_certs, parse_key};
use plexus_net::{
    make_ca, make_node_cert, BoxFuture, CertKey, ClientHandler, NetLimits, NodeEndpoint, PeerHandler, TlsMaterial,
    SERVER_NAME,
};
use plexus_proto::frame::{encode, read_msg};
use plexus_proto::{FrameKind, Hello, HelloAck, HelloOk, Op, Reply, Request, Response, ShardMap};
use quinn::crypto::rustls::QuicClientConfig;

pub const TOKEN: &str = "s3cret-token";

/// Node material for `node_id` signed by `ca`.
pub fn material(ca: &CertKey, node_id: u64) -> TlsMaterial {
    let node = make_node_cert(ca, node_id, &[]).unwrap();
    TlsMaterial {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: node.cert_pem,
        key_pem: node.key_pem,
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Answers `from-<id>:<msg>`; a message starting with `fail` gets an error naming it.
#[derive(Default)]
pub struct EchoPeer {
    pub calls: AtomicU64,
}

impl PeerHandler for EchoPeer {
    fn handle(&self, from: u64, msg: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            if msg.starts_with(b"fail") {
                return Err(format!("refused {}", String::from_utf8_lossy(&msg)));
            }
            let mut out = format!("from-{from}:").into_bytes();
            out.extend_from_slice(&msg);
            Ok(out)
        })
    }
}

/// Answers every request with `Count(shard)`, so a test can tell answers apart.
pub struct EchoClient {
    pub node_id: u64,
}

impl ClientHandler for EchoClient {
    fn hello(&self) -> HelloOk {
        HelloOk {
            node_id: self.node_id,
            shard_map: ShardMap {
                shard_count: 8,
                nodes: vec![],
                shards: vec![],
            },
        }
    }
    fn handle(&self, req: Request) -> BoxFuture<'static, Response> {
        Box::pin(async move { Ok(Reply::Count(u64::from(req.shard))) })
    }
}

/// A bound and serving node with echo handlers.
pub fn node(id: u64, tls: &TlsMaterial, limits: NetLimits) -> (NodeEndpoint, Arc<EchoPeer>) {
    node_at(id, localhost(), tls, limits)
}

/// `node`, bound to `addr`.
pub fn node_at(id: u64, addr: SocketAddr, tls: &TlsMaterial, limits: NetLimits) -> (NodeEndpoint, Arc<EchoPeer>) {
    let ep = NodeEndpoint::bind(id, addr, tls, TOKEN.to_string(), limits).unwrap();
    let peer = Arc::new(EchoPeer::default());
    ep.serve(peer.clone(), Arc::new(EchoClient { node_id: id }));
    (ep, peer)
}

/// A quinn client config that trusts `ca_pem`, speaks `alpn`, and presents `client_cert` if given.
pub fn client_config(ca_pem: &str, alpn: &[u8], client_cert: Option<&CertKey>) -> quinn::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(ca_roots(ca_pem).unwrap());
    let mut cfg = match client_cert {
        Some(ck) => builder
            .with_client_auth_cert(parse_certs(&ck.cert_pem).unwrap(), parse_key(&ck.key_pem).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).unwrap()))
}

/// A quinn client endpoint that trusts `ca_pem`, speaks `alpn`, and presents `client_cert` if given.
pub fn client_endpoint(ca_pem: &str, alpn: &[u8], client_cert: Option<&CertKey>) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(localhost()).unwrap();
    ep.set_default_client_config(client_config(ca_pem, alpn, client_cert));
    ep
}

pub async fn connect(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<quinn::Connection, quinn::ConnectionError> {
    ep.connect(addr, SERVER_NAME).unwrap().await
}

pub async fn hello(conn: &quinn::Connection, token: &str) -> HelloAck {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let bytes = encode(
        FrameKind::Hello,
        &Hello {
            token: token.into(),
            client_name: "test".into(),
        },
        1 << 20,
    )
    .unwrap();
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    read_msg(&mut recv, FrameKind::HelloAck, 1 << 20).await.unwrap()
}

/// A client connection past a successful hello.
pub async fn client(ca_pem: &str, addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let ep = client_endpoint(ca_pem, plexus_proto::ALPN_CLIENT, None);
    let conn = connect(&ep, addr).await.unwrap();
    assert!(hello(&conn, TOKEN).await.is_ok());
    (ep, conn)
}

/// Sends raw bytes on a new stream and reads the one response frame.
pub async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The server may stop the stream before reading all of it; that is not the test's concern.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_msg(&mut recv, FrameKind::Response, 1 << 20).await.unwrap()
}

pub fn request(shard: u32) -> Request {
    Request {
        shard,
        consistency: Default::default(),
        session: None,
        op: Op::Admin(plexus_proto::AdminOp::ShardMap),
    }
}

pub async fn call(conn: &quinn::Connection, req: &Request) -> Response {
    raw_request(conn, &encode(FrameKind::Request, req, 1 << 20).unwrap()).await
}

pub fn fresh_ca(name: &str) -> CertKey {
    make_ca(name).unwrap()
}
