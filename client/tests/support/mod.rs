//! A small in-process plexus node for the client tests: real quinn and TLS
//! with rcgen-made certificates, speaking Hello/HelloAck and Request/Response.
//! Each test supplies a handler that scripts the node's answers; it is not a
//! model of the real server.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_client::ClientConfig;
use plexus_proto::frame::{read_msg, write_msg};
use plexus_proto::{
    ErrorReply, FrameKind, Hello, HelloAck, HelloOk, NodeInfo, Request, Response, ShardMap, ShardPlacement,
    ALPN_CLIENT, FRAME_BYTES_MAX,
};
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const TOKEN: &str = "test-token";

/// A cluster CA and one node certificate signed by it.
pub struct Certs {
    pub ca_pem: String,
    pub node_cert: CertificateDer<'static>,
    pub node_key: Vec<u8>,
}

pub fn make_certs() -> Certs {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "plexus test ca");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let node_params = rcgen::CertificateParams::new(vec!["plexus-node".to_string()]).unwrap();
    let node_key = rcgen::KeyPair::generate().unwrap();
    let node_cert = node_params.signed_by(&node_key, &issuer).unwrap();
    Certs {
        ca_pem: ca_cert.pem(),
        node_cert: node_cert.der().clone(),
        node_key: node_key.serialize_der(),
    }
}

/// Scripted answers: `None` means "never answer this request".
pub type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Option<Response>> + Send>> + Send + Sync>;

/// Wraps a synchronous answer function as a [`Handler`].
pub fn handler(f: impl Fn(Request) -> Option<Response> + Send + Sync + 'static) -> Handler {
    Arc::new(move |req| {
        let r = f(req);
        Box::pin(async move { r })
    })
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub endpoint: quinn::Endpoint,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<Mutex<Vec<quinn::Connection>>>,
    hellos: Arc<AtomicUsize>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves: HelloAck carries `node_id` and the current `map`.
    pub fn start(certs: &Certs, node_id: u64, map: Arc<Mutex<ShardMap>>, handler: Handler) -> TestServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.node_key.clone()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certs.node_cert.clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
        let cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let server = TestServer {
            addr: endpoint.local_addr().unwrap(),
            endpoint: endpoint.clone(),
            requests: Arc::default(),
            connections: Arc::default(),
            hellos: Arc::default(),
        };
        let (requests, connections, hellos) = (
            server.requests.clone(),
            server.connections.clone(),
            server.hellos.clone(),
        );
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (requests, connections, hellos) = (requests.clone(), connections.clone(), hellos.clone());
                let (map, handler) = (map.clone(), handler.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    connections.lock().unwrap().push(conn.clone());
                    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                        return;
                    };
                    let Ok(hello) = read_msg::<_, Hello>(&mut recv, FrameKind::Hello, FRAME_BYTES_MAX).await else {
                        return;
                    };
                    hellos.fetch_add(1, Ordering::SeqCst);
                    let ack: HelloAck = if hello.token == TOKEN {
                        Ok(HelloOk {
                            node_id,
                            shard_map: map.lock().unwrap().clone(),
                        })
                    } else {
                        Err(ErrorReply::Unauthorized("bad token".into()))
                    };
                    let _ = write_msg(&mut send, FrameKind::HelloAck, &ack, FRAME_BYTES_MAX).await;
                    let _ = send.finish();
                    if ack.is_err() {
                        let _ = send.stopped().await;
                        conn.close(1u32.into(), b"unauthorized");
                        return;
                    }
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let (requests, handler) = (requests.clone(), handler.clone());
                        tokio::spawn(async move {
                            let Ok(req) = read_msg::<_, Request>(&mut recv, FrameKind::Request, FRAME_BYTES_MAX).await
                            else {
                                return;
                            };
                            requests.lock().unwrap().push(req.clone());
                            match handler(req).await {
                                Some(resp) => {
                                    let _ = write_msg(&mut send, FrameKind::Response, &resp, FRAME_BYTES_MAX).await;
                                    let _ = send.finish();
                                }
                                // Hold the stream open without answering, as a hung node would.
                                None => std::future::pending::<()>().await,
                            }
                        });
                    }
                });
            }
        });
        server
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Connections that completed the QUIC handshake.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Hello frames received.
    pub fn hello_count(&self) -> usize {
        self.hellos.load(Ordering::SeqCst)
    }

    /// Closes every open connection, as a restarting node would.
    pub fn drop_connections(&self) {
        for c in self.connections.lock().unwrap().iter() {
            c.close(2u32.into(), b"going away");
        }
    }
}

/// A map of `shard_count` shards all placed on `nodes` (id, addr) with `leader`.
pub fn map_with(shard_count: u32, nodes: &[(u64, String)], leader: Option<u64>) -> ShardMap {
    ShardMap {
        shard_count,
        nodes: nodes
            .iter()
            .map(|(id, a)| NodeInfo {
                id: *id,
                client_addr: a.clone(),
            })
            .collect(),
        shards: (0..shard_count)
            .map(|s| ShardPlacement {
                shard: s,
                replicas: nodes.iter().map(|n| n.0).collect(),
                leader,
            })
            .collect(),
    }
}

/// One node serving everything with `h`, its map naming itself as node 1 and leader of 1 shard.
pub fn single_node(certs: &Certs, h: Handler) -> TestServer {
    let map = Arc::new(Mutex::new(ShardMap::default()));
    let s = TestServer::start(certs, 1, map.clone(), h);
    *map.lock().unwrap() = map_with(1, &[(1, s.addr_string())], Some(1));
    s
}

/// A client config for `seeds` with quick backoff and a generous overall timeout.
pub fn config(certs: &Certs, seeds: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(seeds, certs.ca_pem.clone(), TOKEN.to_string());
    cfg.request_timeout = Duration::from_secs(10);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.backoff_base = Duration::from_millis(1);
    cfg.backoff_max = Duration::from_millis(10);
    cfg
}
