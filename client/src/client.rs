//! The [`Client`] handle: routing, retries and exactly-once sessions.
//!
//! A request is routed to the leader of its key's shard as the cached shard
//! map knows it (any replica when no leader is known). `NotLeader` redirects at
//! once; transient failures back off with jitter, bounded by `retries_max` and
//! by `request_timeout`, which covers the whole call. Writes keep one session
//! sequence number across all their retries. Typed operations live in `ops.rs`;
//! how a request reaches a node is the [`Transport`]'s business (`transport.rs`;
//! QUIC in `conn.rs`). Every random draw — the client id, backoff jitter — comes
//! from one RNG, seeded from the OS or, through [`Client::connect_with`], by the
//! caller, so a seeded client behaves the same on every run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use plexus_proto::{
    AdminOp, Consistency, ErrorReply, NodeId, NodeInfo, Op, Reply, Request, Response, ShardId, ShardMap,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::backoff::jittered;
use crate::config::ClientConfig;
use crate::conn::NODE_CONNECTIONS_MAX;
use crate::down::DownMarks;
use crate::error::ClientError;
use crate::session::{SeqGuard, SessionTracker};
use crate::transport::{QuicTransport, Transport};

/// Transient failures between two refreshes of the shard map during one call.
pub const REFRESH_EVERY_FAILURES: u32 = 3;
/// Consecutive `NotLeader` redirects followed without backoff before backing off.
pub const REDIRECTS_IMMEDIATE_MAX: u32 = 2;
/// Floor on the time one node gets to answer a shard map refresh, in milliseconds.
const REFRESH_NODE_TIMEOUT_MS_MIN: u64 = 200;
/// Shard id sent with admin requests, which belong to no shard; nodes ignore it.
const ADMIN_SHARD: ShardId = 0;

/// A handle to a plexus cluster. Cloning is cheap and clones share one set of
/// connections, one shard map cache, one session and one in-flight limit.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// Consistency used by the typed read operations.
    pub(crate) consistency: Consistency,
}

pub(crate) struct Inner {
    cfg: ClientConfig,
    transport: Arc<dyn Transport>,
    /// The client's only source of randomness (backoff jitter; the client id was its first draw).
    rng: Mutex<StdRng>,
    /// The node the client first reached; admin calls and map refreshes try it first.
    home: String,
    map: RwLock<Arc<ShardMap>>,
    /// Node addresses that just failed at the transport level, and until when to pass them over
    /// (at most `NODE_CONNECTIONS_MAX` entries; expired ones are dropped as new ones arrive).
    down: Mutex<DownMarks>,
    sessions: SessionTracker,
    permits: Semaphore,
    closed: AtomicBool,
}

/// Refuses a shard map no request could be routed with.
fn check_map(map: &ShardMap) -> Result<(), ClientError> {
    if map.shard_count == 0 {
        return Err(ClientError::InvalidData("shard map has zero shards".into()));
    }
    Ok(())
}

/// What to do after a failed attempt.
enum Next {
    /// Try again at once (a redirect, or a fresh shard map).
    Now,
    /// Wait out a jittered backoff first.
    Backoff,
}

/// Where one call may be sent.
enum Route<'a> {
    /// The leader (or a replica) of the op's shard.
    Shard,
    /// Any node: admin calls that belong to no shard.
    AnyNode,
    /// This node only.
    Node(&'a str),
}

impl Client {
    /// Connects over QUIC to the first seed that answers `Hello` and caches its shard map.
    /// Randomness (the client id, backoff jitter) is seeded from the operating system.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        cfg.validate()?;
        let transport = QuicTransport::new(&cfg)?;
        // Like `rand::random`, which the client used before, this panics only on a system
        // without any entropy source.
        Self::start(cfg, Arc::new(transport), StdRng::from_entropy()).await
    }

    /// Connects through `transport` instead of QUIC, drawing every random choice from an RNG
    /// seeded with `rng_seed`: two clients built with the same seed get the same client id and
    /// the same backoff delays. The transport brings its own security, so `cfg.ca_pem` is not
    /// checked (and `cfg.token`, `cfg.connect_timeout` matter only if the transport reads them);
    /// every other setting is validated as [`Client::connect`] does.
    pub async fn connect_with(
        cfg: ClientConfig,
        transport: Arc<dyn Transport>,
        rng_seed: u64,
    ) -> Result<Client, ClientError> {
        cfg.validate_settings()?;
        Self::start(cfg, transport, StdRng::seed_from_u64(rng_seed)).await
    }

    /// Reaches the first usable seed through `transport`; `cfg` is already validated.
    async fn start(cfg: ClientConfig, transport: Arc<dyn Transport>, mut rng: StdRng) -> Result<Client, ClientError> {
        let mut last = None;
        for seed in &cfg.seeds {
            // A seed whose map is unusable (a node still starting, say) counts as a failed seed.
            let reached = match transport.connect(seed).await {
                Ok(Some(ok)) => check_map(&ok.shard_map).map(|()| Some(ok.shard_map)),
                // Only a seed listed twice finds its connection already made; its map is fetched below.
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let map = match reached {
                Ok(map) => map,
                Err(e) => {
                    debug!(seed = %seed, error = %e, "seed unusable");
                    last = Some(e);
                    continue;
                }
            };
            let fetch_map = map.is_none();
            let inner = Inner {
                home: seed.clone(),
                map: RwLock::new(Arc::new(map.unwrap_or_default())),
                down: Mutex::new(DownMarks::new(NODE_CONNECTIONS_MAX)),
                sessions: SessionTracker::new(rng.gen::<u64>()),
                rng: Mutex::new(rng),
                permits: Semaphore::new(cfg.in_flight_max),
                closed: AtomicBool::new(false),
                transport,
                cfg,
            };
            let client = Client {
                inner: Arc::new(inner),
                consistency: Consistency::Linearizable,
            };
            if fetch_map {
                client.refresh_shard_map().await?;
            }
            return Ok(client);
        }
        // `validate` refused an empty seed list, so the loop ran and set `last`.
        Err(last.unwrap_or_else(|| ClientError::Config("no seeds".into())))
    }

    /// A copy of the cached shard map.
    pub fn shard_map(&self) -> ShardMap {
        ShardMap::clone(&self.inner.map_snapshot())
    }

    /// The random id that identifies this client's writes to the session tables.
    pub fn client_id(&self) -> u64 {
        self.inner.sessions.client_id()
    }

    /// Asks known nodes, in turn, for their shard map and caches the first answer.
    pub async fn refresh_shard_map(&self) -> Result<(), ClientError> {
        self.inner.check_open()?;
        match tokio::time::timeout(self.inner.cfg.request_timeout, self.inner.refresh()).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends `op` with routing and retries; reads use `consistency`, writes get a session.
    pub async fn call(&self, op: Op, consistency: Consistency) -> Result<Reply, ClientError> {
        self.inner.check_open()?;
        let route = if op.shard_key().is_some() {
            Route::Shard
        } else {
            Route::AnyNode
        };
        self.inner.call_timed(op, consistency, route).await
    }

    /// Sends an admin `op` to the node at `addr` only (retrying connection failures there).
    pub(crate) async fn call_node(&self, addr: &str, op: AdminOp) -> Result<Reply, ClientError> {
        self.inner.check_open()?;
        self.inner
            .call_timed(Op::Admin(op), Consistency::Linearizable, Route::Node(addr))
            .await
    }

    /// Sends one raw request to the node at `addr`: no routing, no retries,
    /// no session, at most `attempt_timeout`. For tools and tests that must ask
    /// one particular replica (a stale read from a follower, say); applications
    /// use the typed calls.
    pub async fn call_at(&self, addr: &str, req: Request) -> Result<Response, ClientError> {
        self.inner.check_open()?;
        self.inner.attempt(addr, req).await
    }

    /// A handle sharing this client whose typed reads use `c`.
    pub fn with_consistency(&self, c: Consistency) -> Client {
        Client {
            inner: self.inner.clone(),
            consistency: c,
        }
    }

    /// Closes every connection; later calls on any clone fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Waiters on the in-flight limit wake up and see the client is closed.
        self.inner.permits.close();
        self.inner.transport.close().await;
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), ClientError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(ClientError::Closed)
        } else {
            Ok(())
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        // Every use is one draw; a panic cannot leave the generator torn.
        self.rng.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn map_snapshot(&self) -> Arc<ShardMap> {
        // The map is replaced or edited whole under the lock; a panic cannot leave it torn.
        self.map.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Validates a shard map from the network and makes it the cached one.
    fn install_map(&self, map: ShardMap) -> Result<(), ClientError> {
        check_map(&map)?;
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        Ok(())
    }

    /// Records what a `NotLeader` answer said about `shard`'s leader.
    fn note_leader(&self, shard: ShardId, leader: Option<NodeId>, leader_addr: Option<&str>) {
        let mut guard = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let map = Arc::make_mut(&mut guard);
        if let (Some(id), Some(addr)) = (leader, leader_addr) {
            let room = map.nodes.len() < NODE_CONNECTIONS_MAX;
            match map.nodes.iter_mut().find(|n| n.id == id) {
                Some(n) => n.client_addr = addr.to_string(),
                // The cap keeps a confused or hostile node from growing the cached map without end.
                None if room => map.nodes.push(NodeInfo {
                    id,
                    client_addr: addr.to_string(),
                }),
                None => {}
            }
        }
        if let Some(p) = map.shards.iter_mut().find(|p| p.shard == shard) {
            p.leader = leader;
        }
    }

    /// Records the node at `addr` as `shard`'s leader: it just served a leader-only request.
    /// Only a change takes the write lock (and copies the map), so the usual call, from the
    /// leader the cache already names, is a read.
    fn note_served(&self, shard: ShardId, addr: &str) {
        let id = {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            let Some(id) = map.nodes.iter().find(|n| n.client_addr == addr).map(|n| n.id) else {
                return;
            };
            if map.shards.iter().any(|p| p.shard == shard && p.leader == Some(id)) {
                return;
            }
            id
        };
        self.note_leader(shard, Some(id), None);
    }

    /// Forgets `shard`'s cached leader if it is the node at `addr`, so the next
    /// attempt asks a replica (which names the current leader) instead of
    /// retrying a node that is down or no longer serves the shard.
    fn forget_leader(&self, shard: ShardId, addr: &str) {
        let mut guard = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let leader_addr = guard
            .shards
            .iter()
            .find(|p| p.shard == shard)
            .and_then(|p| p.leader)
            .and_then(|id| guard.node_addr(id));
        if leader_addr == Some(addr) {
            let map = Arc::make_mut(&mut guard);
            if let Some(p) = map.shards.iter_mut().find(|p| p.shard == shard) {
                p.leader = None;
            }
        }
    }

    /// One request to one node, bounded by `attempt_timeout`.
    async fn attempt(&self, addr: &str, req: Request) -> Result<Response, ClientError> {
        match tokio::time::timeout(self.cfg.attempt_timeout, self.transport.request(addr, req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::AttemptTimeout {
                addr: addr.to_string(),
                after: self.cfg.attempt_timeout,
            }),
        }
    }

    /// Passes `addr` over wherever another node can be asked instead: for `NODE_DOWN_MS` after
    /// a first transport failure, longer after each further one (`down.rs`).
    fn mark_down(&self, addr: &str) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        down.mark(addr, Instant::now());
    }

    /// Forgets `addr`'s transport failures: it answered.
    fn mark_up(&self, addr: &str) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        down.clear(addr);
    }

    /// Whether `addr` is being passed over after transport failures.
    fn is_down(&self, addr: &str) -> bool {
        let down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        down.is_down(addr, Instant::now())
    }

    /// Candidate nodes for a call that may go anywhere: home first, then the map's nodes, then the seeds.
    fn any_nodes(&self, map: &ShardMap) -> Vec<String> {
        let mut out = vec![self.home.clone()];
        for a in map.nodes.iter().map(|n| &n.client_addr).chain(self.cfg.seeds.iter()) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The node for attempt number `attempt` of a call to `shard`.
    fn shard_target(&self, map: &ShardMap, shard: ShardId, attempt: u32) -> String {
        let placement = map.shards.iter().find(|p| p.shard == shard);
        if let Some(addr) = placement.and_then(|p| p.leader).and_then(|id| map.node_addr(id)) {
            // A leader that just failed at the transport level is probably gone: ask a replica,
            // which names the new leader, instead of waiting on a dead address.
            if !self.is_down(addr) {
                return addr.to_string();
            }
        }
        // No usable leader: rotate through the replicas that are not down (all of them if every
        // one is); a follower answers with the leader's address.
        let replicas: Vec<&str> = placement
            .map(|p| p.replicas.iter().filter_map(|id| map.node_addr(*id)).collect())
            .unwrap_or_default();
        let up: Vec<&str> = replicas.iter().copied().filter(|a| !self.is_down(a)).collect();
        let replicas = if up.is_empty() { replicas } else { up };
        if !replicas.is_empty() {
            return replicas[attempt as usize % replicas.len()].to_string();
        }
        let any = self.any_nodes(map);
        any[attempt as usize % any.len()].clone()
    }

    async fn refresh(&self) -> Result<(), ClientError> {
        let mut last = ClientError::Config("no node to ask for the shard map".into());
        let candidates = self.any_nodes(&self.map_snapshot());
        // Split the time so one hung node cannot use it all, without starving any node of a fair try.
        let per_node = (self.cfg.request_timeout / u32::try_from(candidates.len()).unwrap_or(u32::MAX))
            .max(Duration::from_millis(REFRESH_NODE_TIMEOUT_MS_MIN));
        for addr in candidates {
            let req = Request {
                shard: ADMIN_SHARD,
                consistency: Consistency::Linearizable,
                session: None,
                op: Op::Admin(AdminOp::ShardMap),
            };
            let answer = tokio::time::timeout(per_node, self.transport.request(&addr, req)).await;
            match answer.unwrap_or(Err(ClientError::Timeout)) {
                Ok(Ok(Reply::ShardMap(m))) => return self.install_map(m),
                Ok(Ok(other)) => {
                    last = ClientError::UnexpectedReply {
                        op: "shard_map",
                        reply: format!("{other:?}"),
                    };
                }
                Ok(Err(e)) => last = ClientError::Server(e),
                Err(e) => last = e,
            }
            debug!(addr = %addr, error = %last, "shard map refresh failed at node");
        }
        Err(last)
    }

    async fn call_timed(&self, op: Op, consistency: Consistency, route: Route<'_>) -> Result<Reply, ClientError> {
        let span = tracing::debug_span!(
            "request",
            client_id = self.sessions.client_id(),
            seq = tracing::field::Empty
        );
        let fut = async {
            // Waiting for an in-flight slot counts against the request's time limit.
            let _permit = self.permits.acquire().await.map_err(|_| ClientError::Closed)?;
            let guard = matches!(op, Op::Write(_)).then(|| self.sessions.begin());
            if let Some(g) = &guard {
                tracing::Span::current().record("seq", g.seq());
            }
            self.attempts(&op, consistency, guard.as_ref(), &route).await
        };
        match tokio::time::timeout(self.cfg.request_timeout, fut.instrument(span)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The retry loop for one call.
    async fn attempts(
        &self,
        op: &Op,
        consistency: Consistency,
        session: Option<&SeqGuard<'_>>,
        route: &Route<'_>,
    ) -> Result<Reply, ClientError> {
        let mut attempt: u32 = 0;
        let mut failures: u32 = 0;
        let mut failures_since_refresh: u32 = 0;
        let mut redirect: Option<String> = None;
        let mut redirects_in_row: u32 = 0;
        let mut wrong_shard_refreshed = false;
        loop {
            // A client closed mid-call must not keep redialling through a closed endpoint.
            self.check_open()?;
            let map = self.map_snapshot();
            let shard = op.shard(map.shard_count).unwrap_or(ADMIN_SHARD);
            // A redirect to a node that just failed at the transport level is not followed: it
            // is probably a stale hint, and the replicas rotation finds the leader without it.
            let hint = redirect.take().filter(|a| !self.is_down(a));
            let addr = match (hint, route) {
                (_, Route::Node(a)) => a.to_string(),
                (Some(a), _) => a,
                (None, Route::Shard) => self.shard_target(&map, shard, attempt),
                (None, Route::AnyNode) => {
                    let any = self.any_nodes(&map);
                    any[attempt as usize % any.len()].clone()
                }
            };
            let req = Request {
                shard,
                consistency,
                session: session.map(SeqGuard::session),
                op: op.clone(),
            };
            let result = self.attempt(&addr, req).await;
            if result.is_ok() {
                self.mark_up(&addr);
            }
            if !matches!(result, Ok(Err(ErrorReply::NotLeader { .. }))) {
                redirects_in_row = 0;
            }
            let (err, next) = match result {
                Ok(Ok(reply)) => {
                    // Only the leader serves a write or a linearizable read: remember it, so the
                    // next call goes straight there even if no redirect ever named it (a
                    // replica asked while the cached leader was down, that has since become the
                    // leader, answers without one).
                    let leader_only = matches!(op, Op::Write(_))
                        || (matches!(op, Op::Read(_)) && consistency == Consistency::Linearizable);
                    if leader_only && matches!(route, Route::Shard) {
                        self.note_served(shard, &addr);
                    }
                    return Ok(reply);
                }
                Ok(Err(ErrorReply::NotLeader {
                    shard: s,
                    leader,
                    leader_addr,
                })) => {
                    self.note_leader(s, leader, leader_addr.as_deref());
                    // A known, different leader is worth trying at once; otherwise an election is under way.
                    redirect = leader_addr.clone().filter(|a| *a != addr);
                    redirects_in_row += 1;
                    // Nodes that disagree about the leader could bounce the call between them; after a
                    // few immediate hops, follow the redirect only after a backoff.
                    let next = if redirect.is_some() && redirects_in_row <= REDIRECTS_IMMEDIATE_MAX {
                        Next::Now
                    } else {
                        Next::Backoff
                    };
                    (
                        ClientError::Server(ErrorReply::NotLeader {
                            shard: s,
                            leader,
                            leader_addr,
                        }),
                        next,
                    )
                }
                Ok(Err(e @ ErrorReply::WrongShard { .. })) => {
                    // Our map disagrees with the node's: refresh once and route again; a second miss is final.
                    if wrong_shard_refreshed {
                        return Err(ClientError::Server(e));
                    }
                    wrong_shard_refreshed = true;
                    if let Err(re) = self.refresh().await {
                        debug!(error = %re, "shard map refresh after wrong shard failed");
                        return Err(ClientError::Server(e));
                    }
                    (ClientError::Server(e), Next::Now)
                }
                Ok(Err(e @ ErrorReply::ShardUnavailable(_))) => {
                    self.forget_leader(shard, &addr);
                    (ClientError::Server(e), Next::Backoff)
                }
                Ok(Err(e)) if e.is_retryable() => (ClientError::Server(e), Next::Backoff),
                Ok(Err(e)) => return Err(ClientError::Server(e)),
                Err(e) if e.is_transient() => {
                    self.forget_leader(shard, &addr);
                    self.mark_down(&addr);
                    (e, Next::Backoff)
                }
                Err(e) => return Err(e),
            };
            attempt += 1;
            if attempt > self.cfg.retries_max {
                return Err(ClientError::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            debug!(addr = %addr, attempt, error = %err, "retrying");
            if matches!(next, Next::Backoff) {
                failures += 1;
                failures_since_refresh += 1;
                if failures_since_refresh == REFRESH_EVERY_FAILURES {
                    failures_since_refresh = 0;
                    if let Err(e) = self.refresh().await {
                        debug!(error = %e, "shard map refresh during retries failed");
                    }
                }
                let delay = jittered(self.cfg.backoff_base, self.cfg.backoff_max, failures, &mut *self.rng());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
}
