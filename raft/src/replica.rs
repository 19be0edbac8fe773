//! One replica of one Raft group on this node: the openraft instance, its
//! log and state-machine stores, and the calls the node makes on it.
//!
//! It turns openraft's results into client answers (`Response`), so callers
//! above never see openraft error types.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use plexus_proto::{Consistency, ErrorReply, NodeId, ReadOp, ReplicaStatus, Response, ShardId};
use tokio::time::Instant;

use crate::log_store::LogStore;
use crate::network::{NetworkFactory, PeerRequest, PeerResponse, RaftTransport, TransferTerm};
use crate::quiesce::{FollowerView, LeaderView, QuietClaim};
use crate::sim_hooks::{Canary, SimHooks, LEASE_TOO_LONG_FACTOR};
use crate::sm_store::{SharedState, StateMachineStore};
use crate::types::{Command, TypeConfig};
use crate::wal::{GroupLog, SnapshotStore, Wal};
use plexus_core::state::StateLimits;

/// Timing and compaction settings shared by every group on a node.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// Leader heartbeat period, in milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout, in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Log entries applied since the last snapshot that trigger a new one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (to catch up slow followers without a snapshot).
    pub logs_kept_behind_snapshot: u64,
    /// How long after a quorum acknowledged it a leader serves linearizable reads without a
    /// heartbeat round of their own, in milliseconds; 0 makes every read confirm leadership with
    /// a quorum. Safe only well inside `election_timeout_min_ms` (the node config requires at most
    /// half of it): see `Replica::read`.
    pub read_lease_ms: u64,
    /// Shard state limits.
    pub limits: StateLimits,
    /// Total shards in the cluster.
    pub shard_count: u32,
    /// Simulation-only hooks; the default (every hook off) is the only value outside the
    /// simulator.
    pub sim_hooks: SimHooks,
    /// Notified (node-wide) whenever an apply leaves this group's feed or EMPI outbox
    /// non-empty, for the node's workload pump; `None`: the group's own outbox signal is used.
    pub pump_ready: Option<Arc<tokio::sync::Notify>>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 10_000,
            logs_kept_behind_snapshot: 1_000,
            read_lease_ms: 500,
            limits: StateLimits::default(),
            shard_count: 64,
            sim_hooks: SimHooks::default(),
            pump_ready: None,
        }
    }
}

/// Why a replica could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The persisted state could not be read.
    #[error("storage for group {0}: {1}")]
    Storage(u32, String),
    /// openraft refused its configuration or failed to start.
    #[error("raft for group {0}: {1}")]
    Raft(u32, String),
}

/// A running group replica. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    /// Group id (a shard id, or `META_GROUP`).
    pub group: u32,
    /// This node.
    pub node_id: NodeId,
    /// The openraft handle.
    pub raft: Raft<TypeConfig>,
    state: SharedState,
    /// Only the simulator sets this; `StaleRead` breaks `read` (and the gateway's check).
    canary: Option<Canary>,
    /// Set while this replica hands its leadership over (`handover.rs`): proposals are refused.
    pub(crate) handing_over: Arc<AtomicBool>,
    /// Proposals and linearizable reads that passed the `handing_over` gate and have not
    /// returned (`handover.rs` waits for them before it picks a successor).
    pub(crate) requests_in_flight: Arc<AtomicUsize>,
    /// The read lease (`ReplicaOptions::read_lease_ms`), `None` when off.
    read_lease: Option<Duration>,
    /// Until when reads may not use the lease: a handover's transfer election skips the
    /// followers' lease, so a leader that handed over (or tried to) must not rely on it until
    /// that election is surely decided (`end_handover`).
    pub(crate) lease_paused_until: Arc<Mutex<Option<Instant>>>,
    /// The group's log store (shared with openraft), for the handover's view of the last entry.
    pub(crate) log: LogStore,
    /// Set by the first `shutdown`; openraft warns about a second call.
    stopped: Arc<AtomicBool>,
    /// The term of an election this replica stands in at its leader's request (`handover.rs`).
    pub(crate) transfer_term: TransferTerm,
    /// Moves with every proposal and linearizable read, so that quiescence (`quiesce.rs`) can
    /// tell an idle group from a busy one.
    activity: Arc<AtomicU64>,
    /// Notified when applying or installing left the cross-shard outbox non-empty.
    outbox_ready: Arc<tokio::sync::Notify>,
}

impl Replica {
    /// Starts the replica from its durable log and latest snapshot.
    pub async fn open(
        group: u32,
        node_id: NodeId,
        log: LogStore,
        snapshots: Arc<SnapshotStore>,
        transport: Arc<dyn RaftTransport>,
        opts: &ReplicaOptions,
    ) -> Result<Self, ReplicaError> {
        let config = Config {
            cluster_name: format!("plexus-group-{group}"),
            heartbeat_interval: opts.heartbeat_ms,
            election_timeout_min: opts.election_timeout_min_ms,
            election_timeout_max: opts.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: opts.logs_kept_behind_snapshot,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Raft(group, e.to_string()))?;
        let sm = StateMachineStore::open(group, opts.shard_count, opts.limits.clone(), snapshots)
            .map(|sm| sm.with_hooks(&opts.sim_hooks).with_pump_ready(opts.pump_ready.clone()))
            .map_err(|e| ReplicaError::Storage(group, e.to_string()))?;
        let outbox_ready = sm.outbox_ready();
        let log = log.with_canary(opts.sim_hooks.canary);
        let log_for_handover = log.clone();
        let state = sm.shared();
        let transfer_term = TransferTerm::default();
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            NetworkFactory::new(group, transport, transfer_term.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| ReplicaError::Raft(group, e.to_string()))?;
        Ok(Self {
            group,
            node_id,
            raft,
            state,
            canary: opts.sim_hooks.canary,
            handing_over: Arc::new(AtomicBool::new(false)),
            requests_in_flight: Arc::new(AtomicUsize::new(0)),
            read_lease: (opts.read_lease_ms > 0).then(|| {
                // The `LeaseTooLong` canary bug (simulation only) stretches the lease past the
                // election timeout.
                let factor = match opts.sim_hooks.canary {
                    Some(Canary::LeaseTooLong) => LEASE_TOO_LONG_FACTOR,
                    _ => 1,
                };
                Duration::from_millis(opts.read_lease_ms.saturating_mul(factor))
            }),
            lease_paused_until: Arc::new(Mutex::new(None)),
            log: log_for_handover,
            stopped: Arc::new(AtomicBool::new(false)),
            transfer_term,
            activity: Arc::new(AtomicU64::new(0)),
            outbox_ready,
        })
    }

    /// Makes this node's replica the founder of the group with `members`
    /// (each id mapped to its address). A group that already has a log or a
    /// vote is left as it is, so this is safe to call on every start.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> Result<(), ReplicaError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Raft(self.group, e.to_string()))?
        {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another start of this node or a peer's vote got there first.
            Err(RaftError::APIError(_)) => Ok(()),
            Err(e) => Err(ReplicaError::Raft(self.group, e.to_string())),
        }
    }

    /// The canary bug this replica runs with (always `None` outside the simulator).
    pub fn canary(&self) -> Option<Canary> {
        self.canary
    }

    /// Notified whenever an apply or a snapshot install leaves the cross-shard outbox non-empty
    /// (a permit is kept if nobody is waiting).
    pub fn outbox_ready(&self) -> &Arc<tokio::sync::Notify> {
        &self.outbox_ready
    }

    /// The applied state, for reads and status.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this replica currently leads its group.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// Replicates `cmd` and returns the state machine's answer once applied.
    pub async fn propose(&self, cmd: Command, timeout: Duration) -> Response {
        // Counted before the gate is read, both sequentially consistent with the handover's
        // store and load: either this proposal sees the gate closed, or the handover sees it.
        let _in_flight = InFlight::enter(&self.requests_in_flight);
        self.activity.fetch_add(1, Ordering::Relaxed);
        if self.handing_over.load(Ordering::SeqCst) {
            // A write appended now could leave the handover target's log behind ours, and then
            // we could not vote for it; the client retries and finds the new leader.
            return Err(ErrorReply::NotLeader {
                shard: self.group,
                leader: None,
                leader_addr: None,
            });
        }
        match tokio::time::timeout(timeout, self.raft.client_write(cmd)).await {
            Err(_) => Err(ErrorReply::Timeout(format!(
                "write to shard {} not committed in {timeout:?}",
                self.group
            ))),
            Ok(Ok(resp)) => resp.data,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(ErrorReply::NotLeader {
                shard: self.group,
                leader: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            }),
            Ok(Err(RaftError::APIError(e))) => Err(ErrorReply::Internal(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(ErrorReply::ShardUnavailable(self.group).with_context(e)),
        }
    }

    /// Serves a read: a linearizable read first confirms leadership (read index) and waits until
    /// that index is applied. Leadership is confirmed by the leader's read lease when it holds
    /// one: a quorum acknowledged it less than `read_lease_ms` ago, and each of those voters
    /// refuses other candidates for the longer leader lease (`election_timeout_max_ms`) and
    /// stands itself only after an election timeout. Otherwise (no recent quorum, a handover
    /// under way or just ended, lease off) by a heartbeat round to a quorum.
    pub async fn read(&self, op: &ReadOp, consistency: Consistency, timeout: Duration) -> Response {
        // The `StaleRead` canary bug skips the read index and serves whatever is applied here.
        if consistency == Consistency::Linearizable && self.canary != Some(Canary::StaleRead) {
            // Counted before the gate is read, like a proposal: a handover either sees this read
            // (and waits for it before a transfer election can skip the followers' lease) or this
            // read sees the handover and goes without the lease.
            let _in_flight = InFlight::enter(&self.requests_in_flight);
            self.activity.fetch_add(1, Ordering::Relaxed);
            let lease = self.read_lease.filter(|_| self.lease_usable());
            match tokio::time::timeout(timeout, self.raft.ensure_linearizable_leased(lease)).await {
                Err(_) => {
                    return Err(ErrorReply::Timeout(format!(
                        "read index on shard {} timed out",
                        self.group
                    )))
                }
                Ok(Ok(_)) => {}
                Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(ErrorReply::NotLeader {
                        shard: self.group,
                        leader: f.leader_id,
                        leader_addr: f.leader_node.map(|n| n.addr),
                    })
                }
                Ok(Err(e)) => return Err(ErrorReply::ShardUnavailable(self.group).with_context(e)),
            }
        }
        self.read_applied(op)
    }

    /// Serves `op` from this replica's applied state, now: a stale read with no await, for
    /// callers that gather many small reads (the feed's pulls and texts, scoring's features).
    pub fn read_applied(&self, op: &ReadOp) -> Response {
        match self.state.read() {
            Ok(s) => s.read(op),
            Err(_) => Err(ErrorReply::Internal(format!(
                "state of shard {} is poisoned",
                self.group
            ))),
        }
    }

    /// Answers a Raft RPC from a peer.
    pub async fn handle_peer(&self, req: PeerRequest, timeout: Duration) -> PeerResponse {
        match req {
            PeerRequest::Append(_, rpc) => PeerResponse::Append(self.raft.append_entries(rpc).await),
            PeerRequest::Vote(_, rpc) => PeerResponse::Vote(self.raft.vote(rpc).await),
            PeerRequest::TransferVote(_, rpc) => PeerResponse::Vote(self.raft.vote_transfer(rpc).await),
            PeerRequest::Snapshot(_, rpc) => PeerResponse::Snapshot(self.raft.install_snapshot(rpc).await),
            PeerRequest::Propose(_, cmd) => PeerResponse::Propose(self.propose(cmd, timeout).await),
            // Node-wide messages, answered by the node before any replica sees them.
            PeerRequest::ShardMap | PeerRequest::Stopping(_) | PeerRequest::Quiet(_) => {
                PeerResponse::NoSuchGroup(self.group)
            }
            PeerRequest::Read(_, op) => PeerResponse::Read(self.read(&op, Consistency::Stale, timeout).await),
            PeerRequest::LeaderRead(_, op) if self.is_leader() => {
                PeerResponse::Read(self.read(&op, Consistency::Linearizable, timeout).await)
            }
            PeerRequest::LeaderRead(..) => PeerResponse::Read(Err(ErrorReply::NotLeader {
                shard: self.group as ShardId,
                leader: self.leader(),
                leader_addr: None,
            })),
            PeerRequest::TimeoutNow(_) => PeerResponse::TimeoutNow(self.elect_now().await),
        }
    }

    /// This replica's Raft status.
    pub fn status(&self) -> ReplicaStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        ReplicaStatus {
            shard: self.group as ShardId,
            leader: m.current_leader,
            term: m.current_term,
            replicas: m.membership_config.membership().voter_ids().collect(),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        }
    }

    /// What quiescence's leader side needs of this replica; `instance` names this start of it.
    pub fn leader_view(&self, instance: u64) -> LeaderView {
        let m = self.raft.metrics();
        let m = m.borrow();
        // A replica whose Raft has stopped still shows its last state: it leads nothing.
        let is_leader = m.state == ServerState::Leader && m.running_state.is_ok();
        let followers_matched = match (&m.replication, is_leader) {
            (Some(progress), true) => m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != self.node_id)
                .map(|id| (id, progress.get(&id).copied().flatten()))
                .collect(),
            _ => BTreeMap::new(),
        };
        LeaderView {
            group: self.group,
            instance,
            is_leader,
            vote: m.vote,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied,
            followers_matched,
            activity: self.activity.load(Ordering::Relaxed),
            busy: self.handing_over.load(Ordering::SeqCst),
        }
    }

    /// What quiescence's follower side needs of this replica; `instance` names this start of it.
    pub fn follower_view(&self, instance: u64) -> FollowerView {
        let m = self.raft.metrics();
        let m = m.borrow();
        FollowerView {
            instance,
            is_leader: m.state == ServerState::Leader && m.running_state.is_ok(),
            vote: m.vote,
        }
    }

    /// Takes a quiet claim as a heartbeat from the claiming leader: an `AppendEntries` with no
    /// entries whose `prev_log_id` and `leader_commit` are the claimed last entry, exactly what
    /// that leader's next heartbeat would carry. True if the replica accepted it (its log holds
    /// that entry under that vote).
    pub async fn take_heartbeat(&self, claim: &QuietClaim) -> bool {
        let req = openraft::raft::AppendEntriesRequest {
            vote: claim.vote,
            prev_log_id: Some(claim.last),
            entries: Vec::new(),
            leader_commit: Some(claim.last),
        };
        matches!(
            self.raft.append_entries(req).await,
            Ok(openraft::raft::AppendEntriesResponse::Success)
        )
    }

    /// Turns the leader's periodic heartbeats and the follower's election timer on or off
    /// (quiescence; both are on unless a quiet group turned them off). openraft's tick, which
    /// wakes the Raft core every 1.5 heartbeat periods for nothing but those two (and a leader's
    /// step-down after a membership change that removes it, which plexus never makes), is off
    /// while either is.
    pub fn set_quiet(&self, heartbeat: bool, elect: bool) {
        let rc = self.raft.runtime_config();
        rc.heartbeat(heartbeat);
        rc.elect(elect);
        rc.tick(heartbeat && elect);
    }

    /// Stops the replica's Raft tasks (its stores stay on disk). Only the first call does
    /// anything: a stopping node stops the groups it still leads before the rest.
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.raft.shutdown().await;
    }
}

/// Helper to attach a cause to an availability error in logs.
trait WithContext {
    fn with_context(self, e: impl std::fmt::Display) -> Self;
}

impl WithContext for ErrorReply {
    fn with_context(self, e: impl std::fmt::Display) -> Self {
        tracing::debug!(error = %e, "replica unavailable");
        self
    }
}

/// Opens the log of `group` from the node's recovered WAL state.
pub fn open_log(group: u32, wal: &Wal, recovered: GroupLog) -> Result<LogStore, ReplicaError> {
    LogStore::new(group, wal.clone(), recovered).map_err(|e| ReplicaError::Storage(group, e.to_string()))
}

/// Placement of a shard's replicas: `replication` consecutive nodes (in id
/// order) starting at `shard % nodes`. Deterministic, so every node computes
/// the same map from the same member list.
pub fn place(shard: ShardId, nodes: &[NodeId], replication: usize) -> Vec<NodeId> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let n = sorted.len();
    let r = replication.min(n);
    (0..r).map(|i| sorted[(shard as usize + i) % n]).collect()
}

/// One proposal or read counted in `Replica::requests_in_flight` until dropped (answered, failed,
/// timed out or cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
