//! The node's table of running replicas, shared by the gateway, the peer
//! service and the shard actors.
//!
//! Shard actors own their replicas' lifecycles and (de)register them here;
//! requests look replicas up here instead of queueing through an actor's
//! mailbox, so the hot path has no extra hop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use plexus_proto::{
    Consistency, ErrorReply, NodeId, NodeInfo, NodeStatus, Op, ReadOp, Response, ShardMap, ShardPlacement,
};
use plexus_raft::network::{decode, encode, PeerRequest, PeerResponse, RaftTransport};
use plexus_raft::replica::{place, Replica};
use plexus_raft::{Command, META_GROUP};

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::scoring::ScoringPool;
use crate::silent::SilentPeers;
use crate::stopping::StoppingPeers;
use crate::workload::{Workload, Workloads};

/// The longest wait between two tries of `Registry::propose_patiently`.
pub const PATIENT_BACKOFF_MAX: Duration = Duration::from_millis(320);

/// Forwarding hops a proposal may take while chasing a moving leader.
pub const FORWARD_HOPS_MAX: usize = 3;

/// Reads of other shards one `Registry::read_many` has in flight at once.
pub const READS_IN_FLIGHT_MAX: usize = 16;

/// A stale read not answered within this long is also sent to the next replica (a hedged
/// request): a replica's applied state answers in well under a millisecond, so a silence this
/// long means a slow or missing peer, and the first answer wins.
pub const STALE_READ_HEDGE: Duration = Duration::from_millis(50);

/// How fresh a `Registry::read_many` read must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fresh {
    /// Any replica's applied state, this node's first.
    Stale,
    /// A linearizable read at the leader (this node's replica where it leads the shard): its
    /// lease or a read index first, since a leader just elected may not have applied every
    /// acknowledged write yet (the simulator caught an EMPI upsert that read no record an
    /// ingest had just linked, on a fresh leader's applied state).
    Leader,
}

/// Running replicas and cluster layout as this node knows it.
pub struct Registry {
    /// This node.
    pub node_id: NodeId,
    /// Virtual shards in the cluster.
    pub shard_count: u32,
    /// Member id → QUIC address.
    pub members: BTreeMap<NodeId, String>,
    /// Replica node ids per shard.
    pub placement: Vec<Vec<NodeId>>,
    /// Node ids that host the meta group.
    pub meta_members: Vec<NodeId>,
    /// How this node reaches its peers.
    pub transport: Arc<dyn RaftTransport>,
    /// Deadline for one request or proposal.
    pub request_timeout: Duration,
    /// Source of wall-clock time for commands.
    pub clock: Arc<dyn Clock>,
    /// This node's QUIC address.
    pub addr: String,
    replicas: RwLock<BTreeMap<u32, Replica>>,
    /// Times each group's replica was (re)started on this node.
    starts: RwLock<BTreeMap<u32, u64>>,
    /// The node's scoring pool, once started.
    scoring: OnceLock<Arc<ScoringPool>>,
    /// The workloads the node runs, once set.
    workloads: OnceLock<Workloads>,
    /// Set once a graceful stop has begun: the node no longer stands for elections on request.
    stopping: AtomicBool,
    /// Peers that announced a graceful stop (`stopping.rs`): not handed any group.
    peers_stopping: StoppingPeers,
    /// Peers whose last call got no answer (`silent.rs`): tried after the others.
    peers_silent: SilentPeers,
    /// How long peers should believe this node's stop notice, ms: the whole graceful stop (the
    /// handover and the rest of the shutdown), after which the node is gone or restarting.
    pub stop_notice_ms: u64,
}

/// What a stop notice covers beyond the handover: stopping the endpoint, the tree and the WAL.
const STOP_NOTICE_SLACK_MS: u64 = 5_000;

/// Meta-group replicas: at most this many of the lowest node ids.
pub const META_REPLICAS_MAX: usize = 5;

impl Registry {
    /// Builds the layout from the node config.
    pub fn new(cfg: &NodeConfig, transport: Arc<dyn RaftTransport>, clock: Arc<dyn Clock>, addr: String) -> Self {
        let ids = cfg.member_ids();
        let placement = (0..cfg.shard_count).map(|s| place(s, &ids, cfg.replication)).collect();
        Self {
            node_id: cfg.node_id,
            shard_count: cfg.shard_count,
            members: cfg.peers.iter().map(|p| (p.id, p.addr.to_string())).collect(),
            placement,
            meta_members: ids.iter().copied().take(META_REPLICAS_MAX).collect(),
            transport,
            request_timeout: Duration::from_millis(cfg.gateway.request_timeout_ms),
            clock,
            addr,
            replicas: RwLock::new(BTreeMap::new()),
            starts: RwLock::new(BTreeMap::new()),
            scoring: OnceLock::new(),
            workloads: OnceLock::new(),
            stopping: AtomicBool::new(false),
            peers_stopping: StoppingPeers::default(),
            peers_silent: SilentPeers::default(),
            stop_notice_ms: cfg.raft.handover_timeout_ms.saturating_add(STOP_NOTICE_SLACK_MS),
        }
    }

    /// Marks the node as stopping: from now on it refuses `TimeoutNow`, so a peer handing a
    /// group over tries another follower (or gives up at once) instead of making a node that
    /// is about to go away the leader. That is what keeps a whole-cluster stop from waiting out
    /// the handover deadline for groups handed back and forth between stopping nodes.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether a graceful stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Notes a peer's stop notice (`PeerRequest::Stopping`); a sender that is not another member
    /// of the cluster is ignored, so the table stays bounded by the membership.
    pub fn note_peer_stopping(&self, peer: NodeId, for_ms: u64) {
        if peer != self.node_id && self.members.contains_key(&peer) {
            self.peers_stopping.note(peer, for_ms, tokio::time::Instant::now());
        }
    }

    /// Whether `peer` announced a graceful stop whose notice has not run out.
    pub fn peer_is_stopping(&self, peer: NodeId) -> bool {
        self.peers_stopping.is_stopping(peer, tokio::time::Instant::now())
    }

    /// Installs the node's scoring pool; a second pool is refused (returned).
    pub fn set_scoring(&self, pool: Arc<ScoringPool>) -> Result<(), Arc<ScoringPool>> {
        self.scoring.set(pool)
    }

    /// Sets the workloads the node runs (once; a second call is refused and changes nothing).
    pub fn set_workloads(&self, workloads: Workloads) -> Result<(), Workloads> {
        self.workloads.set(workloads)
    }

    /// The workloads the node runs (none until set).
    pub fn workloads(&self) -> &[Arc<dyn Workload>] {
        self.workloads.get().map_or(&[], Vec::as_slice)
    }

    /// The workload that serves `op`, if the node runs one.
    pub fn workload_for(&self, op: &Op) -> Option<Arc<dyn Workload>> {
        self.workloads.get()?.iter().find(|w| w.serves(op)).cloned()
    }

    /// The node's scoring pool, if it has started.
    pub fn scoring(&self) -> Option<&Arc<ScoringPool>> {
        self.scoring.get()
    }

    /// Groups this node hosts a replica of (the meta group included).
    pub fn hosted_groups(&self) -> Vec<u32> {
        let mut groups: Vec<u32> = (0..self.shard_count)
            .filter(|s| self.placement[*s as usize].contains(&self.node_id))
            .collect();
        if self.meta_members.contains(&self.node_id) {
            groups.push(META_GROUP);
        }
        groups
    }

    /// The replica node ids of `group`.
    pub fn replicas_of(&self, group: u32) -> Vec<NodeId> {
        if group == META_GROUP {
            self.meta_members.clone()
        } else {
            self.placement.get(group as usize).cloned().unwrap_or_default()
        }
    }

    /// The running replica of `group`, if hosted and up.
    pub fn get(&self, group: u32) -> Option<Replica> {
        self.replicas.read().ok()?.get(&group).cloned()
    }

    /// The running replicas of hosted groups that this node leads now.
    pub fn led_replicas(&self) -> Vec<Replica> {
        self.hosted_groups()
            .into_iter()
            .filter_map(|g| self.get(g))
            .filter(Replica::is_leader)
            .collect()
    }

    /// Registers a started replica.
    pub fn insert(&self, replica: Replica) {
        if let Ok(mut s) = self.starts.write() {
            *s.entry(replica.group).or_default() += 1;
        }
        if let Ok(mut m) = self.replicas.write() {
            m.insert(replica.group, replica);
        }
    }

    /// How many times `group`'s replica has been started here (1 + restarts).
    pub fn starts(&self, group: u32) -> u64 {
        self.starts
            .read()
            .ok()
            .and_then(|s| s.get(&group).copied())
            .unwrap_or(0)
    }

    /// Deregisters a replica, returning it so the caller can shut it down.
    pub fn remove(&self, group: u32) -> Option<Replica> {
        self.replicas.write().ok()?.remove(&group)
    }

    /// Every running replica.
    pub fn all(&self) -> Vec<Replica> {
        self.replicas
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The QUIC address of `node`.
    pub fn addr_of(&self, node: NodeId) -> Option<String> {
        self.members.get(&node).cloned()
    }

    /// The shard map with leaders as this node knows them.
    pub fn shard_map(&self) -> ShardMap {
        let shards = (0..self.shard_count)
            .map(|s| ShardPlacement {
                shard: s,
                replicas: self.placement[s as usize].clone(),
                leader: self.get(s).and_then(|r| r.leader()),
            })
            .collect();
        ShardMap {
            shard_count: self.shard_count,
            nodes: self
                .members
                .iter()
                .map(|(id, a)| NodeInfo {
                    id: *id,
                    client_addr: a.clone(),
                })
                .collect(),
            shards,
        }
    }

    /// This node's status report.
    pub fn status(&self, scoring_backend: Option<String>) -> NodeStatus {
        NodeStatus {
            node_id: self.node_id,
            pid: std::process::id(),
            addr: self.addr.clone(),
            scoring_backend,
            shards: self.all().iter().map(|r| r.status()).collect(),
        }
    }

    /// The answer for a request this node cannot serve for `group`: a
    /// redirect to the leader it knows, or else to a replica holder, one that has not announced
    /// a stop if there is one (a client sent to a node that has stopped waits out an attempt).
    pub fn redirect(&self, group: u32) -> ErrorReply {
        let leader = self.get(group).and_then(|r| r.leader());
        let holder = || {
            let others: Vec<NodeId> = self
                .replicas_of(group)
                .into_iter()
                .filter(|n| *n != self.node_id)
                .collect();
            let up = others.iter().copied().find(|n| !self.peer_is_stopping(*n));
            up.or_else(|| others.first().copied())
        };
        let target = leader.or_else(holder).filter(|n| *n != self.node_id);
        match target {
            Some(n) => ErrorReply::NotLeader {
                shard: group,
                leader,
                leader_addr: self.addr_of(n),
            },
            None => ErrorReply::ShardUnavailable(group),
        }
    }

    /// Proposes `cmd` on `group` wherever its leader is: locally if this
    /// node leads it, else forwarded over the peer transport. It asks the
    /// leader it knows of first, then every other replica in placement order,
    /// following `NotLeader` hints, so one dead or partitioned replica never
    /// blocks delivery for good. Attempts are bounded by `FORWARD_HOPS_MAX`
    /// plus the group's size.
    pub async fn propose_anywhere(&self, group: u32, cmd: Command) -> Response {
        self.at_leader(group, LeaderCall::Propose(cmd)).await
    }

    /// `propose_anywhere`, tried again while the answer is retryable (no leader during an
    /// election, a leader that just moved) until `patience` has passed, waiting 10 ms after the
    /// first try and twice as long after each next one, up to `PATIENT_BACKOFF_MAX`. For
    /// workloads whose command is safe to apply twice, or exactly-once by itself.
    pub async fn propose_patiently(&self, group: u32, cmd: Command, patience: Duration) -> Response {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(10);
        loop {
            match self.propose_anywhere(group, cmd.clone()).await {
                Err(e) if e.is_retryable() && started.elapsed() + wait < patience => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(PATIENT_BACKOFF_MAX);
                }
                answer => return answer,
            }
        }
    }

    /// Reads `op` on `group` linearizably at its leader, wherever it is, as
    /// `propose_anywhere` proposes.
    pub async fn read_at_leader(&self, group: u32, op: ReadOp) -> Response {
        self.at_leader(group, LeaderCall::Read(op)).await
    }

    /// `op` on this node's replica of `group`, from its applied state, without cloning the
    /// replica or awaiting; `None` when this node hosts no running replica of it.
    pub fn read_local_applied(&self, group: u32, op: &ReadOp) -> Option<Response> {
        let replicas = self.replicas.read().unwrap_or_else(|e| e.into_inner());
        replicas.get(&group).map(|r| r.read_applied(op))
    }

    /// Reads of many shards, answered in order, `READS_IN_FLIGHT_MAX` of them at once. Stale
    /// reads this node can answer from its own replicas are answered at once (no task, no copy
    /// of the replica); the rest go to `read_stale_anywhere` or `read_at_leader`.
    pub async fn read_many(&self, reads: Vec<(u32, ReadOp)>, fresh: Fresh) -> Vec<Response> {
        use futures::stream::{self, StreamExt};
        let mut answers: Vec<Option<Response>> = Vec::with_capacity(reads.len());
        let mut remote = Vec::new();
        for (i, (shard, op)) in reads.into_iter().enumerate() {
            let here = match fresh {
                Fresh::Stale => self.read_local_applied(shard, &op),
                Fresh::Leader => None,
            };
            if here.is_none() {
                remote.push((i, shard, op));
            }
            answers.push(here);
        }
        let fetched = stream::iter(remote)
            .map(|(i, shard, op)| async move {
                let answer = match fresh {
                    Fresh::Stale => self.read_stale_anywhere(shard, op).await,
                    Fresh::Leader => self.read_at_leader(shard, op).await,
                };
                (i, answer)
            })
            .buffered(READS_IN_FLIGHT_MAX)
            .collect::<Vec<(usize, Response)>>()
            .await;
        for (i, r) in fetched {
            answers[i] = Some(r);
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(ErrorReply::Internal("a read went unanswered".into()))))
            .collect()
    }

    /// Reads `op` on `group` from the applied state of the nearest replica (this node's if it
    /// hosts one, else the other holders in placement order, silent peers last): stale, but no
    /// quorum round. A holder that has not answered within `STALE_READ_HEDGE` is joined by the
    /// next one, and the first answer wins, so one dead holder costs a read 50 ms, not its
    /// whole timeout.
    pub async fn read_stale_anywhere(&self, group: u32, op: ReadOp) -> Response {
        use futures::stream::{FuturesUnordered, StreamExt};
        if let Some(answer) = self.read_local_applied(group, &op) {
            return answer;
        }
        let msg = encode(&PeerRequest::Read(group, op)).map_err(ErrorReply::Internal)?;
        let others = self
            .replicas_of(group)
            .into_iter()
            .filter(|n| *n != self.node_id)
            .collect();
        let mut next = self.peers_silent.order(others, tokio::time::Instant::now()).into_iter();
        let ask = |peer: NodeId| {
            let msg = msg.clone();
            async move { (peer, self.transport.call(peer, msg, self.request_timeout).await) }
        };
        let mut asking = FuturesUnordered::new();
        // Asked and not answered yet: still so when another answers, they count as silent.
        let mut waiting: Vec<NodeId> = Vec::new();
        let mut last = ErrorReply::ShardUnavailable(group);
        loop {
            if asking.is_empty() {
                match next.next() {
                    Some(peer) => {
                        waiting.push(peer);
                        asking.push(ask(peer));
                    }
                    None => return Err(last),
                }
            }
            let more = next.len() > 0;
            tokio::select! {
                biased;
                Some((peer, answer)) = asking.next() => {
                    waiting.retain(|p| *p != peer);
                    let answer = match answer {
                        Ok(a) => {
                            self.peers_silent.answered(peer);
                            let now = tokio::time::Instant::now();
                            for p in &waiting {
                                self.peers_silent.failed(*p, now);
                            }
                            a
                        }
                        Err(e) => {
                            self.peers_silent.failed(peer, tokio::time::Instant::now());
                            last = ErrorReply::Timeout(e.to_string());
                            continue;
                        }
                    };
                    match decode::<PeerResponse>(&answer).map_err(ErrorReply::Internal)? {
                        PeerResponse::Read(Err(e)) if e.is_retryable() => last = e,
                        PeerResponse::Read(r) => return r,
                        PeerResponse::NoSuchGroup(_) => last = ErrorReply::ShardUnavailable(group),
                        other => return Err(ErrorReply::Internal(format!("unexpected peer answer {other:?}"))),
                    }
                }
                () = tokio::time::sleep(STALE_READ_HEDGE), if more => {
                    if let Some(peer) = next.next() {
                        waiting.push(peer);
                        asking.push(ask(peer));
                    }
                }
            }
        }
    }

    async fn at_leader(&self, group: u32, call: LeaderCall) -> Response {
        let local = self.get(group);
        if let Some(r) = local.as_ref().filter(|r| r.is_leader()) {
            return call.run(r, self.request_timeout).await;
        }
        let replicas = self.replicas_of(group);
        let mut queue: std::collections::VecDeque<NodeId> = std::collections::VecDeque::new();
        if let Some(l) = local.as_ref().and_then(|r| r.leader()) {
            queue.push_back(l);
        }
        let attempts_max = FORWARD_HOPS_MAX + replicas.len();
        // Silent peers last: a dead replica early in the placement would cost every call to a
        // group this node does not host its whole timeout.
        queue.extend(self.peers_silent.order(replicas, tokio::time::Instant::now()));
        let mut tried: Vec<NodeId> = Vec::new();
        let mut last = ErrorReply::ShardUnavailable(group);
        let msg = encode(&call.peer_request(group)).map_err(ErrorReply::Internal)?;
        while let Some(to) = queue.pop_front() {
            if tried.contains(&to) || tried.len() >= attempts_max {
                continue;
            }
            tried.push(to);
            if to == self.node_id {
                // Only a replica that leads can answer; a hint naming this node is stale.
                if let Some(r) = self.get(group).filter(|r| r.is_leader()) {
                    return call.run(&r, self.request_timeout).await;
                }
                continue;
            }
            let answer = match self.transport.call(to, msg.clone(), self.request_timeout).await {
                Ok(a) => {
                    self.peers_silent.answered(to);
                    a
                }
                Err(e) => {
                    self.peers_silent.failed(to, tokio::time::Instant::now());
                    last = ErrorReply::Timeout(e.to_string());
                    continue;
                }
            };
            let resp = match decode::<PeerResponse>(&answer) {
                Ok(PeerResponse::Propose(r) | PeerResponse::Read(r)) => r,
                Ok(PeerResponse::NoSuchGroup(_)) => continue,
                Ok(other) => {
                    last = ErrorReply::Internal(format!("unexpected peer answer {other:?}"));
                    continue;
                }
                Err(e) => {
                    last = ErrorReply::Internal(e);
                    continue;
                }
            };
            match resp {
                Err(ErrorReply::NotLeader { leader: Some(l), .. }) => {
                    last = ErrorReply::NotLeader {
                        shard: group,
                        leader: Some(l),
                        leader_addr: self.addr_of(l),
                    };
                    queue.push_front(l);
                }
                Err(e) if e.is_retryable() => last = e,
                r => return r,
            }
        }
        Err(last)
    }
}

/// What `Registry::at_leader` asks of a group's leader.
enum LeaderCall {
    /// Propose a command.
    Propose(Command),
    /// Read linearizably.
    Read(ReadOp),
}

impl LeaderCall {
    /// The same call for a peer to answer.
    fn peer_request(&self, group: u32) -> PeerRequest {
        match self {
            LeaderCall::Propose(cmd) => PeerRequest::Propose(group, cmd.clone()),
            LeaderCall::Read(op) => PeerRequest::LeaderRead(group, op.clone()),
        }
    }

    /// Runs the call on this node's leading replica.
    async fn run(&self, replica: &Replica, timeout: Duration) -> Response {
        match self {
            LeaderCall::Propose(cmd) => replica.propose(cmd.clone(), timeout).await,
            LeaderCall::Read(op) => replica.read(op, Consistency::Linearizable, timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use plexus_raft::network::{BoxFut, TransportError};

    /// A transport for a registry that never sends anything.
    struct Silent;

    impl RaftTransport for Silent {
        fn call(&self, to: NodeId, _msg: Vec<u8>, _timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
            Box::pin(async move { Err(TransportError::Unreachable(to, "test transport".into())) })
        }
    }

    /// A transport on which `deaf` never answers and every other peer answers a read with
    /// `Count(peer)`, counting the calls each peer got.
    struct OneDeaf {
        deaf: NodeId,
        calls: std::sync::Mutex<BTreeMap<NodeId, u32>>,
    }

    impl RaftTransport for OneDeaf {
        fn call(&self, to: NodeId, _msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
            *self.calls.lock().unwrap().entry(to).or_default() += 1;
            let deaf = to == self.deaf;
            Box::pin(async move {
                if deaf {
                    tokio::time::sleep(timeout).await;
                    return Err(TransportError::Timeout(to, timeout));
                }
                Ok(encode(&PeerResponse::Read(Ok(plexus_proto::Reply::Count(to)))).unwrap())
            })
        }
    }

    fn registry_of_node_1() -> Registry {
        registry_with(Arc::new(Silent))
    }

    fn registry_with(transport: Arc<dyn RaftTransport>) -> Registry {
        let cfg: NodeConfig = toml::from_str(
            r#"
            node_id = 1
            listen = "127.0.0.1:7401"
            data_dir = "data"
            token = "t"
            shard_count = 1
            replication = 3
            [tls]
            ca_cert = "ca.pem"
            node_cert = "n.pem"
            node_key = "n-key.pem"
            [[peers]]
            id = 1
            addr = "127.0.0.1:7401"
            [[peers]]
            id = 2
            addr = "127.0.0.1:7402"
            [[peers]]
            id = 3
            addr = "127.0.0.1:7403"
            "#,
        )
        .unwrap();
        Registry::new(&cfg, transport, Arc::new(SystemClock), "127.0.0.1:7401".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_read_does_not_wait_out_a_silent_replica() {
        let first = registry_of_node_1()
            .replicas_of(0)
            .into_iter()
            .find(|n| *n != 1)
            .unwrap();
        let transport = Arc::new(OneDeaf {
            deaf: first,
            calls: Default::default(),
        });
        let registry = registry_with(transport.clone());
        let op = ReadOp::TimelineRead {
            owner: 5,
            cursor: plexus_proto::Cursor::After(0),
            limit: 1,
        };
        // The first holder in placement order says nothing: the hedge asks the next one.
        let started = tokio::time::Instant::now();
        let answer = registry.read_stale_anywhere(0, op.clone()).await;
        assert!(
            matches!(answer, Ok(plexus_proto::Reply::Count(n)) if n != first),
            "{answer:?}"
        );
        assert_eq!(started.elapsed(), STALE_READ_HEDGE);
        // Having said nothing while another answered, the silent holder is asked last, and so
        // not at all here.
        let started = tokio::time::Instant::now();
        assert!(registry.read_stale_anywhere(0, op).await.is_ok());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(transport.calls.lock().unwrap().get(&first), Some(&1));
    }

    #[tokio::test]
    async fn a_redirect_without_a_leader_avoids_replicas_that_are_stopping() {
        let registry = registry_of_node_1();
        let hint = |r: &Registry| match r.redirect(0) {
            ErrorReply::NotLeader {
                leader: None,
                leader_addr,
                ..
            } => leader_addr,
            other => panic!("not a redirect: {other:?}"),
        };
        // No replica of shard 0 runs here, so no leader is known: the first other replica.
        assert_eq!(hint(&registry).as_deref(), Some("127.0.0.1:7402"));
        registry.note_peer_stopping(2, 10_000);
        assert_eq!(hint(&registry).as_deref(), Some("127.0.0.1:7403"));
        // With every other replica stopping, one of them is still better than nothing.
        registry.note_peer_stopping(3, 10_000);
        assert_eq!(hint(&registry).as_deref(), Some("127.0.0.1:7402"));
        // A notice from outside the membership is ignored.
        registry.note_peer_stopping(9, 10_000);
        assert!(!registry.peer_is_stopping(9));
    }
}
