//! Connections to nodes: one QUIC connection per node address, dialled
//! lazily, greeted with `Hello` once, and redialled when it dies.
//!
//! This module moves single requests: one bidi stream, one `Request` frame,
//! one `Response` frame. It is the inside of [`crate::QuicTransport`], the
//! default [`crate::Transport`]. It knows nothing of shards, retries or
//! sessions; `client.rs` decides where each attempt goes and whether to try
//! again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use plexus_proto::frame::{read_msg, write_msg};
use plexus_proto::{FrameError, FrameKind, Hello, HelloAck, HelloOk, Request, Response, ALPN_CLIENT, FRAME_BYTES_MAX};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, VarInt};
use tracing::debug;

use crate::config::{ca_certs, ClientConfig};
use crate::error::ClientError;

/// The TLS name every node certificate carries as a SAN; it is what the client verifies.
pub const SERVER_NAME: &str = "plexus-node";
/// Largest request frame body the client sends, in bytes (the node's default client frame limit).
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest response or `HelloAck` frame body the client accepts, in bytes.
pub const RESPONSE_BYTES_MAX: usize = FRAME_BYTES_MAX;
/// Most distinct node addresses one client keeps connections to.
pub const NODE_CONNECTIONS_MAX: usize = 1_024;
/// Keep-alive interval on an idle connection, in milliseconds; well under the idle timeout.
const KEEP_ALIVE_MS: u64 = 5_000;
/// A connection with no traffic (keep-alives included) for this long is dead, in milliseconds.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// The round-trip time QUIC assumes before it has measured one, in milliseconds. A handshake
/// packet that is lost (sent to a node whose endpoint is not bound yet, as when the client dials
/// a node that is just starting) is sent again after about three times this; with quinn's default
/// of 333 ms that was a second, and a client reached a restarted node a second late. Measured
/// round trips replace it as soon as the first answer comes.
const INITIAL_RTT_MS: u64 = 100;
/// How long [`Pool::close`] waits for connections to drain, in milliseconds.
const CLOSE_DRAIN_MS: u64 = 1_000;
/// QUIC application close code for an orderly client shutdown.
const CLOSE_CODE_DONE: u32 = 0;
/// QUIC application close code a node sends when it shuts down (docs/PROTOCOL.md).
const NODE_CLOSE_SHUTDOWN: u32 = 0;

/// A node's connection slot; the async lock makes concurrent callers share one dial.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

/// The client's QUIC endpoints and its per-node connections.
pub(crate) struct Pool {
    quic: quinn::ClientConfig,
    hello: Hello,
    connect_timeout: Duration,
    /// One endpoint per address family (IPv4, IPv6), bound on first use.
    endpoints: Mutex<[Option<quinn::Endpoint>; 2]>,
    nodes: Mutex<HashMap<String, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both guarded values are plain maps or arrays replaced whole; a panic cannot leave them torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// Builds the TLS and QUIC settings; binds nothing yet.
    pub(crate) fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        Ok(Self {
            quic: quic_client_config(&cfg.ca_pem)?,
            hello: Hello {
                token: cfg.token.clone(),
                client_name: format!("plexus-client/{}", env!("CARGO_PKG_VERSION")),
            },
            connect_timeout: cfg.connect_timeout,
            endpoints: Mutex::new([None, None]),
            nodes: Mutex::new(HashMap::new()),
        })
    }

    /// The live connection to `addr`, dialling (and saying `Hello`) if there is none.
    /// The `HelloOk` is returned only when this call made the connection.
    pub(crate) async fn connection(&self, addr: &str) -> Result<(quinn::Connection, Option<HelloOk>), ClientError> {
        let slot = self.slot(addr)?;
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            match c.close_reason() {
                None => return Ok((c.clone(), None)),
                Some(ConnectionError::ApplicationClosed(close))
                    if close.error_code == VarInt::from_u32(NODE_CLOSE_SHUTDOWN) =>
                {
                    // The node said it is stopping: redialling now would only wait out the connect
                    // timeout. Report it so the caller asks another replica; the next call redials.
                    *guard = None;
                    return Err(ClientError::Connection {
                        addr: addr.to_string(),
                        reason: "the node shut down".into(),
                    });
                }
                Some(reason) => debug!(addr, ?reason, "connection closed; redialling"),
            }
        }
        *guard = None;
        let dialled = tokio::time::timeout(self.connect_timeout, self.dial(addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("timed out after {:?}", self.connect_timeout),
            })?;
        let (conn, ok) = dialled?;
        *guard = Some(conn.clone());
        Ok((conn, Some(ok)))
    }

    /// Sends one request to `addr` on a fresh stream and reads its response.
    pub(crate) async fn request(&self, addr: &str, req: &Request) -> Result<Response, ClientError> {
        let (conn, _) = self.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(addr, e))?;
        write_msg(&mut send, FrameKind::Request, req, REQUEST_BYTES_MAX)
            .await
            .map_err(|e| frame_err(addr, e))?;
        send.finish().map_err(|e| lost(addr, e))?;
        read_msg(&mut recv, FrameKind::Response, RESPONSE_BYTES_MAX)
            .await
            .map_err(|e| frame_err(addr, e))
    }

    /// Closes every connection and endpoint, waiting a bounded time for them to drain.
    pub(crate) async fn close(&self) {
        let endpoints: Vec<quinn::Endpoint> = lock(&self.endpoints).iter().flatten().cloned().collect();
        for ep in &endpoints {
            ep.close(VarInt::from_u32(CLOSE_CODE_DONE), b"client closed");
        }
        lock(&self.nodes).clear();
        for ep in &endpoints {
            // A peer that never acknowledges the close must not hang the caller.
            let _ = tokio::time::timeout(Duration::from_millis(CLOSE_DRAIN_MS), ep.wait_idle()).await;
        }
    }

    fn slot(&self, addr: &str) -> Result<Arc<Slot>, ClientError> {
        let mut nodes = lock(&self.nodes);
        if let Some(s) = nodes.get(addr) {
            return Ok(s.clone());
        }
        if nodes.len() >= NODE_CONNECTIONS_MAX {
            // Make room by dropping slots whose connection is gone and that nobody is dialling.
            nodes.retain(|_, s| match s.conn.try_lock() {
                Ok(c) => c.as_ref().is_some_and(|c| c.close_reason().is_none()),
                Err(_) => true,
            });
            if nodes.len() >= NODE_CONNECTIONS_MAX {
                return Err(ClientError::TooManyNodes {
                    max: NODE_CONNECTIONS_MAX,
                });
            }
        }
        let s = Arc::new(Slot::default());
        nodes.insert(addr.to_string(), s.clone());
        Ok(s)
    }

    fn endpoint(&self, family_of: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
        let (i, bind): (usize, SocketAddr) = match family_of {
            SocketAddr::V4(_) => (0, (Ipv4Addr::UNSPECIFIED, 0).into()),
            SocketAddr::V6(_) => (1, (Ipv6Addr::UNSPECIFIED, 0).into()),
        };
        let mut eps = lock(&self.endpoints);
        if let Some(ep) = &eps[i] {
            return Ok(ep.clone());
        }
        let ep = client_endpoint(bind).map_err(|e| ClientError::Connect {
            addr: bind.to_string(),
            reason: format!("bind udp socket: {e}"),
        })?;
        eps[i] = Some(ep.clone());
        Ok(ep)
    }

    async fn dial(&self, addr: &str) -> Result<(quinn::Connection, HelloOk), ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| connect_err(format!("resolve: {e}")))?
            .next()
            .ok_or_else(|| connect_err("resolve: no address".into()))?;
        let ep = self.endpoint(sock)?;
        let connecting = ep
            .connect_with(self.quic.clone(), sock, SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = connecting.await.map_err(|e| handshake_err(addr, e))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| handshake_err(addr, e))?;
        write_msg(&mut send, FrameKind::Hello, &self.hello, REQUEST_BYTES_MAX)
            .await
            .map_err(|e| frame_err(addr, e))?;
        send.finish().map_err(|e| lost(addr, e))?;
        let ack: HelloAck = read_msg(&mut recv, FrameKind::HelloAck, RESPONSE_BYTES_MAX)
            .await
            .map_err(|e| frame_err(addr, e))?;
        match ack {
            Ok(ok) => {
                debug!(addr, node_id = ok.node_id, "connected");
                Ok((conn, ok))
            }
            Err(e) => {
                conn.close(VarInt::from_u32(CLOSE_CODE_DONE), b"hello refused");
                Err(ClientError::Server(e))
            }
        }
    }
}

/// Requested size of the client's UDP socket buffers, in bytes. Every node connection shares one
/// socket, and the replies of many nodes arrive in bursts that overflow the kernel's default
/// (about 208 KiB); each dropped datagram costs a QUIC loss detection and resend. The kernel caps
/// the size at `net.core.rmem_max` / `wmem_max`.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Largest UDP payload the client accepts and that path MTU discovery tries to reach, in bytes:
/// a node's default (`udp_payload_bytes_max`, see plexus-net), which puts a 50-entry timeline page
/// in one datagram on loopback or jumbo frames. Paths with a smaller MTU settle below it.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 4096;

/// A client endpoint on a UDP socket with `UDP_SOCKET_BUFFER_BYTES` buffers where the kernel allows.
fn client_endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(UDP_PAYLOAD_BYTES_MAX)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    quinn::Endpoint::new(config, None, udp_socket(bind)?, Arc::new(quinn::TokioRuntime))
}

fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps the sizes at its `net.core.*mem_max` without an error, and a
    // smaller buffer only means more drops under bursts.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// rustls + quinn client settings that trust only the cluster CA and speak the client ALPN.
fn quic_client_config(ca_pem: &str) -> Result<quinn::ClientConfig, ClientError> {
    // These fail only for a local setup no node could fix, so they are configuration errors.
    let tls_err = |e: String| ClientError::Config(format!("tls setup: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| ClientError::Config(format!("ca_cert: {e}")))?;
    }
    // The provider is named explicitly so the client never depends on a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| tls_err(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    transport.max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    transport.initial_rtt(Duration::from_millis(INITIAL_RTT_MS));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(UDP_PAYLOAD_BYTES_MAX);
    transport.mtu_discovery_config(Some(mtu));
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// Classifies a failure while establishing a connection: TLS or plain connect.
fn handshake_err(addr: &str, e: ConnectionError) -> ClientError {
    let tls = match &e {
        ConnectionError::TransportError(t) => is_crypto_code(t.code),
        ConnectionError::ConnectionClosed(c) => is_crypto_code(c.error_code),
        _ => false,
    };
    if tls {
        ClientError::Tls {
            addr: addr.to_string(),
            reason: e.to_string(),
        }
    } else {
        ClientError::Connect {
            addr: addr.to_string(),
            reason: e.to_string(),
        }
    }
}

fn lost(addr: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// Stream-level I/O failures and early ends are connection trouble (worth a
/// retry); a frame that arrived but is malformed is a protocol error.
fn frame_err(addr: &str, e: FrameError) -> ClientError {
    match e {
        FrameError::Io(io) => lost(addr, io),
        FrameError::Closed => lost(addr, "stream ended before a response"),
        other => ClientError::Protocol(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_socket_gets_the_largest_receive_buffer_the_kernel_allows() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let socket = udp_socket((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Linux grants min(wanted, rmem_max) and reports twice that.
        let floor = UDP_SOCKET_BUFFER_BYTES.min(rmem_max);
        assert!(granted >= floor, "granted {granted} bytes, want at least {floor}");
    }
}
