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
    AdminOp, Consistency, ErrorReply, NodeId, NodeInfo, Op, Reply, Request, Response, Session, ShardId, ShardMap,
    WriteOp,
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

    /// Sends the write `op` under a session the caller numbers itself, with the usual routing and
    /// retries. For loaders that must stay exactly-once across their own restarts (`plexus feed
    /// import`): they keep `session.client_id` and the sequence numbers in a checkpoint, so a
    /// write re-sent after a crash is answered from the server's session table instead of
    /// applied twice. The caller must keep `seq` unique per `client_id` and `ack_below` at most
    /// the lowest sequence number whose answer it has not yet received.
    pub async fn call_in_session(&self, op: WriteOp, session: Session) -> Result<Reply, ClientError> {
        self.inner.check_open()?;
        let fut = async {
            let _permit = self.inner.permits.acquire().await.map_err(|_| ClientError::Closed)?;
            let op = Op::Write(op);
            let fixed = SessionSource::Fixed(session);
            self.inner
                .attempts(&op, Consistency::Linearizable, Some(&fixed), &Route::Shard)
                .await
        };
        match tokio::time::timeout(self.inner.cfg.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
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
            let guard = op.takes_session().then(|| self.sessions.begin());
            if let Some(g) = &guard {
                tracing::Span::current().record("seq", g.seq());
            }
            let source = guard.map(SessionSource::Tracked);
            self.attempts(&op, consistency, source.as_ref(), &route).await
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
        session: Option<&SessionSource<'_>>,
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
                session: session.map(SessionSource::session),
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
                    let leader_only = matches!(op, Op::Write(_) | Op::Feed(_) | Op::Empi(_))
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

/// Where an attempt's session comes from.
enum SessionSource<'a> {
    /// The client's own numbering.
    Tracked(SeqGuard<'a>),
    /// Numbered by the caller (`Client::call_in_session`).
    Fixed(Session),
}

impl SessionSource<'_> {
    fn session(&self) -> Session {
        match self {
            SessionSource::Tracked(g) => g.session(),
            SessionSource::Fixed(s) => *s,
        }
    }
}

#[cfg(test)]
mod tests;
