//! The node's single QUIC endpoint: binding, limits, the accept loop and shutdown.
//!
//! Every incoming connection is routed by its negotiated ALPN: `plexus-peer/1`
//! to the peer side (a CA-signed node certificate is required) and
//! `plexus-client/1` to `client_conn.rs`. The same endpoint dials peers, so a
//! node has one UDP socket. What requests and peer messages mean is decided by
//! the handlers the node passes to `serve`; this module only moves bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plexus_proto::{HelloOk, Request, Response, ALPN_CLIENT, ALPN_PEER};
use quinn::{Connection, VarInt};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::client_conn::{serve_client, ClientCtx};
use crate::error::NetError;
use crate::peer_conn::{lock, serve_peer_conn, PeerShared};
use crate::peer_links::PeerLinks;
use crate::tls::{self, negotiated_alpn, peer_chain, peer_node_id, TlsMaterial};

/// Application close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the client's token was wrong.
pub const CLOSE_UNAUTHORIZED: u32 = 1;
/// Application close code: the first client stream did not carry a valid `Hello` in time.
pub const CLOSE_BAD_HELLO: u32 = 2;
/// Application close code: a peer-ALPN connection presented no node certificate.
pub const CLOSE_PEER_CERT_REQUIRED: u32 = 3;
/// Application close code: the dialed node's certificate names another node.
pub const CLOSE_WRONG_PEER: u32 = 4;
/// Application close code: the node serves `client_conns_max` clients already.
pub const CLOSE_TOO_MANY_CONNS: u32 = 5;
/// Application close code: no supported ALPN was negotiated.
pub const CLOSE_UNKNOWN_ALPN: u32 = 6;
/// Application close code: the node stopped serving this client connection while it keeps
/// running (its gateway actor stopped or failed and was restarted); a client redials at once.
pub const CLOSE_CONN_DROPPED: u32 = 7;
/// How long `shutdown` waits for connections to drain, in milliseconds. Every connection's
/// CONNECTION_CLOSE goes out on the driver's next poll, so the wait only lets closing periods
/// (3 PTOs) run out. A dial still in its handshake to a peer that is already gone has a backed-off
/// PTO of seconds and never drains; in a whole-cluster stop that cost the last node 2 s.
pub const SHUTDOWN_WAIT_MS: u64 = 500;

/// Every limit of the transport; `Default` gives the production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetLimits {
    /// Largest peer frame body, in bytes.
    pub frame_bytes_max: usize,
    /// Largest client frame body, in bytes.
    pub client_frame_bytes_max: usize,
    /// Concurrent bidirectional streams a client connection may open.
    pub client_streams_max: u32,
    /// Concurrent bidirectional streams (batches) a peer connection may open.
    pub peer_streams_max: u32,
    /// A connection with no traffic for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// A dial (QUIC handshake) to a peer that has not completed in this long is given up, in
    /// milliseconds, and retried after the redial backoff. Short, because a dial started while
    /// the peer was down retransmits its first packet on a doubling timer (about 1, 2, 4 s), so
    /// a peer that comes back is found only on the next retransmission: with the idle timeout
    /// (30 s) as the dial's limit, a restarted node waited seconds for its peers to reconnect.
    pub dial_timeout_ms: u64,
    /// The round-trip time QUIC assumes before it has measured one, in milliseconds. A lost
    /// handshake packet (a peer dialled before its endpoint is bound, as when nodes start
    /// together) is sent again after about three times this: a second with quinn's default of
    /// 333 ms, which held a restarting node's first messages to its peers for that long. Measured
    /// round trips replace it as soon as the first answer comes.
    pub initial_rtt_ms: u64,
    /// Most messages in one peer batch.
    pub peer_batch_msgs_max: usize,
    /// Most message bytes in one peer batch.
    pub peer_batch_bytes_max: usize,
    /// Most messages queued for one peer before `call` answers `Busy`.
    pub peer_queue_msgs_max: usize,
    /// Most batches in flight to one peer on the bulk lane.
    pub peer_batches_in_flight_max: usize,
    /// Most batches in flight to one peer on the consensus lane. 1 makes the messages of
    /// all groups queue behind the batch on the wire and leave as one batch: measured on
    /// the 3-node local cluster, 8.4-8.6k writes/s against 6.2-7.4k with 8 in flight.
    pub peer_consensus_batches_in_flight_max: usize,
    /// Most client connections served at once.
    pub client_conns_max: usize,
    /// Largest UDP payload the endpoint accepts and that QUIC's path MTU discovery tries to reach,
    /// in bytes (1200..=65527). A path with a smaller MTU settles below it (1500-byte Ethernet at
    /// 1452). 4096 puts a 50-entry timeline page (3.3 KB) in one datagram on loopback or jumbo
    /// frames: measured on the local cluster, 50-51k reads/s against 45-46k at quinn's default of
    /// 1452 (1.19 datagrams per read instead of 1.37). 8192 measured worse (42k). The endpoint's
    /// receive buffer grows with it (about 8 MiB at 4096).
    pub udp_payload_bytes_max: u16,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self {
            frame_bytes_max: 16 * 1024 * 1024,
            client_frame_bytes_max: 4 * 1024 * 1024,
            client_streams_max: 256,
            peer_streams_max: 256,
            idle_timeout_ms: 30_000,
            dial_timeout_ms: 2_000,
            initial_rtt_ms: 100,
            peer_batch_msgs_max: 256,
            peer_batch_bytes_max: 4 * 1024 * 1024,
            peer_queue_msgs_max: 8192,
            peer_batches_in_flight_max: 8,
            peer_consensus_batches_in_flight_max: 1,
            client_conns_max: 10_000,
            udp_payload_bytes_max: 4096,
        }
    }
}

impl NetLimits {
    /// Checks that no limit is zero and that frames fit the wire's 32-bit length.
    pub fn validate(&self) -> Result<(), NetError> {
        let nonzero = [
            ("frame_bytes_max", self.frame_bytes_max as u64),
            ("client_frame_bytes_max", self.client_frame_bytes_max as u64),
            ("client_streams_max", self.client_streams_max.into()),
            ("peer_streams_max", self.peer_streams_max.into()),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("dial_timeout_ms", self.dial_timeout_ms),
            ("initial_rtt_ms", self.initial_rtt_ms),
            ("peer_batch_msgs_max", self.peer_batch_msgs_max as u64),
            ("peer_batch_bytes_max", self.peer_batch_bytes_max as u64),
            ("peer_queue_msgs_max", self.peer_queue_msgs_max as u64),
            ("peer_batches_in_flight_max", self.peer_batches_in_flight_max as u64),
            (
                "peer_consensus_batches_in_flight_max",
                self.peer_consensus_batches_in_flight_max as u64,
            ),
            ("client_conns_max", self.client_conns_max as u64),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(NetError::InvalidLimits(format!("{name} must be positive")));
        }
        let wire_max = u32::MAX as usize;
        if self.frame_bytes_max > wire_max || self.client_frame_bytes_max > wire_max {
            return Err(NetError::InvalidLimits(format!(
                "frame limits must not exceed {wire_max} bytes"
            )));
        }
        if !(UDP_PAYLOAD_BYTES_MIN..=UDP_PAYLOAD_BYTES_LIMIT).contains(&self.udp_payload_bytes_max) {
            return Err(NetError::InvalidLimits(format!(
                "udp_payload_bytes_max must be in {UDP_PAYLOAD_BYTES_MIN}..={UDP_PAYLOAD_BYTES_LIMIT}, not {}",
                self.udp_payload_bytes_max
            )));
        }
        if self.frame_bytes_max <= crate::peer_links::BATCH_OVERHEAD_BYTES + crate::peer_links::MSG_OVERHEAD_BYTES {
            return Err(NetError::InvalidLimits(
                "frame_bytes_max is too small to carry a batch".into(),
            ));
        }
        Ok(())
    }
}

/// Answers messages from peers. The node implements it (Raft RPCs, forwarded requests).
pub trait PeerHandler: Send + Sync + 'static {
    /// Handles one message from node `from`; the error text travels back to the caller.
    fn handle(&self, from: u64, msg: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Answers client connections. The node implements it (the gateway).
pub trait ClientHandler: Send + Sync + 'static {
    /// The node's id + shard map, sent in HelloAck.
    fn hello(&self) -> HelloOk;
    /// Handles one request.
    fn handle(&self, req: Request) -> BoxFuture<'static, Response>;
    /// Runs one accepted client connection: `serve` checks its hello, then answers its request
    /// streams until the client leaves, and dropping it closes the connection. The default
    /// spawns it as a task of its own; a node hands it to its supervised gateway actor, so that
    /// the actor's stop or failure ends every client connection it runs.
    fn run_connection(&self, serve: BoxFuture<'static, ()>) {
        tokio::spawn(serve);
    }
}

/// The endpoint's stateless-reset key and connection-id key, derived from the node's private key
/// so that every incarnation of the node has the same ones.
///
/// A node that crashes sends no CONNECTION_CLOSE, so its clients and peers keep their
/// connections to it. When it starts again on the same address, their next packets carry
/// connection ids the new process does not know. It answers each with a stateless reset
/// (RFC 9000, section 10.3) if the id passes its connection-id check (a keyed hash quinn embeds in
/// every id it issues), and the other side accepts the reset if its token, an HMAC of the id under
/// the reset key, is the one the old process gave out. With both keys the same in every
/// incarnation, the other side closes the connection at once and redials. With quinn's default
/// random keys the new process dropped those packets as foreign, and clients kept sending into the
/// void until their idle timeout: a client of a node restarted after a crash reached it again only
/// about 30 s later.
///
/// Both keys are HMACs of fixed labels under the private key: as secret as the key, revealing
/// nothing about it. A node given a new key gets new ones.
fn incarnation_keys(tls: &TlsMaterial) -> (ring::hmac::Key, u64) {
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tls.key_pem.as_bytes());
    let reset = ring::hmac::sign(&secret, b"plexus stateless reset key v1");
    let cid = ring::hmac::sign(&secret, b"plexus connection id key v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    (
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref()),
        u64::from_le_bytes(cid_key),
    )
}

/// The node's QUIC endpoint: serves peers and clients and dials peers.
pub struct NodeEndpoint {
    shared: Arc<PeerShared>,
    token: Arc<str>,
    local_addr: SocketAddr,
    client_conns: Arc<AtomicUsize>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NodeEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEndpoint")
            .field("node_id", &self.shared.node_id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl NodeEndpoint {
    /// Binds the UDP socket and builds the TLS configurations. Must run inside a tokio runtime.
    pub fn bind(
        node_id: u64,
        listen: SocketAddr,
        tls: &TlsMaterial,
        token: String,
        limits: NetLimits,
    ) -> Result<Self, NetError> {
        limits.validate()?;
        // Until a connection proves what it is (a Hello or a node certificate), it may open one stream;
        // `set_max_concurrent_bi_streams` raises the limit afterwards.
        let server = tls::server_config(tls, tls::transport(1, &limits)?)?;
        let dial = tls::peer_client_config(tls, tls::transport(limits.peer_streams_max, &limits)?)?;
        let socket = udp_socket(listen)?;
        let (reset_key, cid_key) = incarnation_keys(tls);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config
            .cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)))
            .max_udp_payload_size(limits.udp_payload_bytes_max)
            .map_err(|e| NetError::InvalidLimits(format!("udp_payload_bytes_max: {e}")))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))?;
        let local_addr = endpoint.local_addr()?;
        info!(node = node_id, %local_addr, "endpoint bound");
        Ok(Self {
            shared: Arc::new(PeerShared::new(node_id, endpoint, limits, dial)),
            token: token.into(),
            local_addr,
            client_conns: Arc::new(AtomicUsize::new(0)),
            accept_task: Mutex::new(None),
        })
    }

    /// The count of client connections being served, shared with the accept loop (for metrics).
    pub fn client_connections(&self) -> Arc<AtomicUsize> {
        self.client_conns.clone()
    }

    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Spawns the accept loop: ALPN plexus-peer/1 → peer connection (must present a cert chaining to the CA, else the
    /// connection is closed with a clear application close reason); ALPN plexus-client/1 → client connection.
    ///
    /// A second call replaces the peer handler but keeps the first accept loop and client handler.
    pub fn serve(&self, peers: Arc<dyn PeerHandler>, clients: Arc<dyn ClientHandler>) {
        *self.shared.handler.write().unwrap_or_else(|e| e.into_inner()) = Some(peers);
        self.shared.serving.notify_waiters();
        let mut task = lock(&self.accept_task);
        if task.is_some() {
            warn!("serve called twice; keeping the running accept loop");
            return;
        }
        let ctx = Arc::new(ClientCtx {
            token: self.token.clone(),
            limits: self.shared.limits.clone(),
            handler: clients,
            conns: self.client_conns.clone(),
        });
        let shared = self.shared.clone();
        let span = tracing::info_span!("endpoint", node = shared.node_id);
        *task = Some(tokio::spawn(accept_loop(shared, ctx).instrument(span)));
    }

    /// A handle for calling peers; shares this endpoint (one endpoint per node).
    pub fn peer_links(&self) -> PeerLinks {
        PeerLinks {
            shared: self.shared.clone(),
        }
    }

    /// Closes every connection with a reason and waits (at most `SHUTDOWN_WAIT_MS`) for them to drain.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        // The peer handler usually holds (through the node's registry) a
        // `PeerLinks` that holds `shared`: drop it so that cycle cannot keep
        // the endpoint, and its UDP port, alive after shutdown.
        *shared.handler.write().unwrap_or_else(|e| e.into_inner()) = None;
        // Batches waiting for the node to serve give up now.
        shared.serving.notify_waiters();
        // Dropping the queues' senders stops the flushers once they drain.
        lock(&shared.queues).clear();
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        shared.close_all(CLOSE_SHUTDOWN, b"node shutting down");
        shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        if tokio::time::timeout(Duration::from_millis(SHUTDOWN_WAIT_MS), shared.endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!(wait_ms = SHUTDOWN_WAIT_MS, "endpoint did not drain in time");
        }
        info!(node = shared.node_id, "endpoint shut down");
    }
}

async fn accept_loop(shared: Arc<PeerShared>, ctx: Arc<ClientCtx>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let remote = incoming.remote_address();
        let (shared, ctx) = (shared.clone(), ctx.clone());
        let span = tracing::info_span!("conn", %remote);
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => route(shared, ctx, conn).await,
                    // A refused certificate lands here: the TLS alert already told the other side why.
                    Err(e) => debug!(reason = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
    }
    debug!("accept loop stopped");
}

async fn route(shared: Arc<PeerShared>, ctx: Arc<ClientCtx>, conn: Connection) {
    let alpn = negotiated_alpn(&conn);
    match alpn.as_deref() {
        Some(a) if a == ALPN_PEER => accept_peer(shared, conn).await,
        Some(a) if a == ALPN_CLIENT => {
            let span = tracing::info_span!("client_conn", conn = conn.stable_id());
            let handler = ctx.handler.clone();
            handler.run_connection(Box::pin(serve_client(ctx, conn).instrument(span)));
        }
        _ => conn.close(VarInt::from_u32(CLOSE_UNKNOWN_ALPN), b"unknown alpn"),
    }
}

async fn accept_peer(shared: Arc<PeerShared>, conn: Connection) {
    // The TLS layer already refused certificates that do not chain to the CA; what is left is "none at all"
    // and CA-signed certificates that are not node certificates.
    if peer_chain(&conn).is_none() {
        warn!("peer connection without a client certificate refused");
        conn.close(VarInt::from_u32(CLOSE_PEER_CERT_REQUIRED), b"peer certificate required");
        return;
    }
    let Some(peer) = peer_node_id(&conn) else {
        warn!("peer certificate names no node");
        conn.close(
            VarInt::from_u32(CLOSE_PEER_CERT_REQUIRED),
            b"peer certificate names no node",
        );
        return;
    };
    if peer == shared.node_id {
        conn.close(VarInt::from_u32(CLOSE_WRONG_PEER), b"peer certificate names this node");
        return;
    }
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(shared.limits.peer_streams_max));
    shared.register(peer, conn.clone());
    let span = tracing::info_span!("peer_conn", node = shared.node_id, peer, conn = conn.stable_id());
    info!(peer, "peer connected");
    serve_peer_conn(shared, conn, peer).instrument(span).await;
}

/// Smallest UDP payload QUIC allows, in bytes.
pub const UDP_PAYLOAD_BYTES_MIN: u16 = 1200;
/// Largest UDP payload there is (IPv6), in bytes.
pub const UDP_PAYLOAD_BYTES_LIMIT: u16 = 65_527;

/// Requested size of the UDP socket's kernel send and receive buffers, in bytes. Every client
/// and peer connection of a node shares one socket; the kernel's default (about 208 KiB) drops
/// datagrams under bursts of replies, each drop costing a QUIC loss detection and resend. The
/// kernel caps the size at `net.core.rmem_max` / `wmem_max`.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// The endpoint's UDP socket, bound to `listen`, with `UDP_SOCKET_BUFFER_BYTES` buffers where the
/// kernel allows (it says at start-up when it does not).
fn udp_socket(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Linux caps both sizes at its `net.core.*mem_max` without an error and reports back twice
    // what it granted (its bookkeeping overhead), so what it granted is read back and halved.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let reported_per_granted = if cfg!(target_os = "linux") { 2 } else { 1 };
    let granted = socket.recv_buffer_size().unwrap_or(0) / reported_per_granted;
    if granted < UDP_SOCKET_BUFFER_BYTES {
        info!(
            granted_bytes = granted,
            wanted_bytes = UDP_SOCKET_BUFFER_BYTES,
            "udp receive buffer capped by the kernel; raise net.core.rmem_max and wmem_max to avoid drops under load"
        );
    }
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's cap on socket receive buffers, in bytes.
    fn rmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn limits_out_of_range_are_refused_by_name() {
        assert!(NetLimits::default().validate().is_ok());
        for (limits, name) in [
            (
                NetLimits {
                    udp_payload_bytes_max: UDP_PAYLOAD_BYTES_MIN - 1,
                    ..NetLimits::default()
                },
                "udp_payload_bytes_max",
            ),
            (
                NetLimits {
                    udp_payload_bytes_max: UDP_PAYLOAD_BYTES_LIMIT + 1,
                    ..NetLimits::default()
                },
                "udp_payload_bytes_max",
            ),
            (
                NetLimits {
                    client_streams_max: 0,
                    ..NetLimits::default()
                },
                "client_streams_max",
            ),
        ] {
            match limits.validate() {
                Err(NetError::InvalidLimits(why)) => assert!(why.contains(name), "{why}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_udp_socket_gets_the_largest_receive_buffer_the_kernel_allows() {
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Linux grants min(wanted, rmem_max) and reports twice that.
        let floor = UDP_SOCKET_BUFFER_BYTES.min(rmem_max());
        assert!(granted >= floor, "granted {granted} bytes, want at least {floor}");
        assert!(socket.local_addr().unwrap().port() != 0);
    }
}
