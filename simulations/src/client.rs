//! The simulated clients' transport: `plexus-client`'s [`Transport`] seam over the simulated
//! network, so the workload runs the real client library — its shard routing, `NotLeader`
//! redirects, retries with jittered backoff, shard map refreshes, request timeouts and
//! exactly-once sessions — exactly as an application would.
//!
//! What it is: [`SimTransport`], which maps each node's client address (the address the node
//! reports in its shard map, given to `start_core`) to its node id and carries every `Hello` and
//! request as one [`SimNet::client_exchange`]: loss, delay, a node that is down or cut off all
//! mean no answer. It keeps a connection per address, as the QUIC transport does: dialling is a
//! `Hello` exchange bounded by the client's `connect_timeout`; a connection made to an earlier
//! incarnation of a node is reset when that node has restarted (QUIC's stateless reset), a
//! connection error. A request that is never answered is ended by the client's own
//! `attempt_timeout` ([`ATTEMPT_TIMEOUT_MS`]). Either way the client retries elsewhere under
//! the same session sequence number — the path that exactly-once writes exist for — within its
//! overall `request_timeout`. [`connect`] builds one client on it, with the
//! sim's settings and a seed for the client's RNG.
//!
//! What it is not: QUIC. Streams, flow control, TLS and retransmission are not modelled; a lost
//! message is lost for good (a harsher network than QUIC's, which retransmits).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use plexus_client::{BoxFuture, Client, ClientConfig, ClientError, Transport};
use plexus_proto::{HelloOk, Request, Response};

use crate::net::{SimNet, StaleConnection};

/// Overall limit on one client call, retries and backoff included, in milliseconds: room for
/// every attempt to run into [`ATTEMPT_TIMEOUT_MS`] plus the backoffs between them.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Limit on one dial (the `Hello` exchange), in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Retries after a call's first attempt (so 8 attempts in all).
pub const RETRIES_MAX: u32 = 7;
/// Backoff before the first retry, doubling per failure, in milliseconds.
pub const BACKOFF_BASE_MS: u64 = 20;
/// Longest backoff between attempts, in milliseconds.
pub const BACKOFF_MAX_MS: u64 = 1_000;
/// The client's limit on one attempt, in milliseconds (the library's default is 2 s; slow
/// simulated disks and partitions make 3 s the better fit here).
pub const ATTEMPT_TIMEOUT_MS: u64 = 3_000;
/// Token the simulated nodes are configured with (the simulated gateway does not check it).
const TOKEN: &str = "simulated-cluster-token";

/// The client transport of one simulated client.
pub struct SimTransport {
    net: Arc<SimNet>,
    /// Client address → node id, for every node of the cluster.
    nodes: BTreeMap<String, u64>,
    connect_timeout: Duration,
    /// Client address → the node incarnation this client's connection was made to. Its size is
    /// bounded by the cluster's node count.
    conns: Mutex<BTreeMap<String, u64>>,
}

impl SimTransport {
    /// A transport reaching `nodes` (client address → node id) over `net`.
    pub fn new(net: Arc<SimNet>, nodes: BTreeMap<String, u64>, connect_timeout: Duration) -> Self {
        Self {
            net,
            nodes,
            connect_timeout,
            conns: Mutex::new(BTreeMap::new()),
        }
    }

    fn conns(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        // Every change is one insert or remove; a panicking holder leaves the map consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, addr: &str) -> Result<u64, ClientError> {
        self.nodes.get(addr).copied().ok_or_else(|| ClientError::Connect {
            addr: addr.to_string(),
            reason: "resolve: no such node".into(),
        })
    }

    /// The incarnation of the connection to `addr`, dialling (a `Hello` exchange) if there is
    /// none; the `HelloOk` comes back only when this call dialled.
    async fn connection(&self, addr: &str) -> Result<(u64, Option<HelloOk>), ClientError> {
        if let Some(epoch) = self.conns().get(addr) {
            return Ok((*epoch, None));
        }
        let node = self.node(addr)?;
        let hello = self
            .net
            .client_exchange(node, None, |core| Box::pin(async move { core.hello() }));
        match tokio::time::timeout(self.connect_timeout, hello).await {
            Ok(Ok((ok, epoch))) => {
                self.conns().insert(addr.to_string(), epoch);
                Ok((epoch, Some(ok)))
            }
            // A fresh dial names no incarnation, so it is never reset.
            Ok(Err(StaleConnection)) => Err(ClientError::Connect {
                addr: addr.to_string(),
                reason: "reset during the handshake".into(),
            }),
            Err(_) => Err(ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("timed out after {:?}", self.connect_timeout),
            }),
        }
    }

    async fn send(&self, addr: &str, req: Request) -> Result<Response, ClientError> {
        let (epoch, _) = self.connection(addr).await?;
        let node = self.node(addr)?;
        let exchange = self.net.client_exchange(node, Some(epoch), move |core| {
            Box::pin(async move { core.execute(req).await })
        });
        let lost = |reason: &str| ClientError::Connection {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        // A lost request or answer never completes; the client's attempt limit ends the wait.
        match exchange.await {
            Ok((answer, _)) => Ok(answer),
            Err(StaleConnection) => {
                self.conns().remove(addr);
                Err(lost("connection reset: the node restarted"))
            }
        }
    }
}

impl Transport for SimTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<HelloOk>, ClientError>> {
        Box::pin(async move { self.connection(addr).await.map(|(_, ok)| ok) })
    }

    fn request<'a>(&'a self, addr: &'a str, req: Request) -> BoxFuture<'a, Result<Response, ClientError>> {
        Box::pin(self.send(addr, req))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.conns().clear();
        Box::pin(async {})
    }
}

/// The client settings every simulated client uses (close to the library's defaults, with a
/// shorter call limit so faults show up as timeouts within a run).
pub fn config(seeds: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(seeds, String::new(), TOKEN.into());
    cfg.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    cfg.attempt_timeout = Duration::from_millis(ATTEMPT_TIMEOUT_MS);
    cfg.connect_timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    cfg.retries_max = RETRIES_MAX;
    cfg.backoff_base = Duration::from_millis(BACKOFF_BASE_MS);
    cfg.backoff_max = Duration::from_millis(BACKOFF_MAX_MS);
    cfg
}

/// Connects one real `plexus_client::Client` over `net` to the nodes in `nodes` (client
/// address → node id), trying them as seeds in address order, its RNG seeded with `rng_seed`.
pub async fn connect(net: Arc<SimNet>, nodes: BTreeMap<String, u64>, rng_seed: u64) -> Result<Client, ClientError> {
    let cfg = config(nodes.keys().cloned().collect());
    let transport = SimTransport::new(net, nodes, cfg.connect_timeout);
    Client::connect_with(cfg, Arc::new(transport), rng_seed).await
}
