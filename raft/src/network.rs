//! Raft RPCs between nodes, carried by whatever implements `RaftTransport`.
//!
//! Every group on a node shares the transport: the QUIC implementation
//! batches messages of many groups to the same peer into one frame, and the
//! simulator substitutes its own. This module only encodes requests, routes
//! them by group id and maps failures to openraft's error types.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use plexus_proto::{ReadOp, Response, ShardMap};
use serde::{Deserialize, Serialize};

use crate::quiesce::QuietClaim;
use crate::types::{Command, TypeConfig};

type NodeId = u64;

/// Most encoded bytes of one AppendEntries with more than one entry. openraft gives an
/// AppendEntries one heartbeat interval to be answered and then resends the same run of
/// entries: a follower far behind a leader of large entries (bulk EMPI puts) was sent runs of
/// many megabytes that a busy machine could not move in time, over and over. A longer run is
/// refused as too large, with a hint of how many entries fit, and openraft retries at once with
/// that many for its next few sends. A single entry goes whatever its size.
pub const APPEND_BYTES_MAX: usize = 1 << 20;

/// A boxed, sendable future (the transport is used as a trait object).
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a message did not reach its peer or got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (no address, connect failed, connection lost).
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// No answer within the deadline.
    #[error("peer {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    /// The local send queue for that peer is full.
    #[error("send queue to peer {0} is full")]
    Busy(NodeId),
    /// The peer answered with an error of its own.
    #[error("peer {0} failed: {1}")]
    Remote(NodeId, String),
}

/// Sends one opaque message to a peer node and returns its opaque answer.
pub trait RaftTransport: Send + Sync + 'static {
    /// Delivers `msg` to node `to` and waits at most `timeout` for its answer.
    fn call(&self, to: NodeId, msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>>;

    /// `call` for consensus messages (appends, votes): a transport may give them a
    /// lane of their own so they never wait behind slow requests.
    fn call_consensus(&self, to: NodeId, msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
        self.call(to, msg, timeout)
    }
}

/// A message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// AppendEntries for `group`.
    Append(u32, AppendEntriesRequest<TypeConfig>),
    /// RequestVote for `group`.
    Vote(u32, VoteRequest<NodeId>),
    /// One chunk of a snapshot for `group`.
    Snapshot(u32, InstallSnapshotRequest<TypeConfig>),
    /// Propose `cmd` on `group` if this node leads it (cross-shard delivery).
    Propose(u32, Command),
    /// This node's view of the shard map.
    ShardMap,
    /// Serve `op` on `group` from this node's replica's applied state
    /// (a stale read: no leadership check), for cross-shard scoring.
    Read(u32, ReadOp),
    /// The leader of `group` is handing leadership over and this node's log is
    /// caught up with it: start an election now instead of after the timeout.
    TimeoutNow(u32),
    /// The sending node has begun a graceful stop: for this many milliseconds, do not hand it
    /// the leadership of any group (it would only have to hand it on again).
    Stopping(u64),
    /// RequestVote for `group` from a candidate that the group's leader asked to stand
    /// (`TimeoutNow`): granted without regard to the leader lease, so that a handover works
    /// for any number of voters and without waiting the lease out. Answered by `Vote`.
    TransferVote(u32, VoteRequest<NodeId>),
    /// The sending node's periodic quiescence ping (`quiesce.rs`): it is alive, and it leads each
    /// claimed group, idle, with the claimed vote and last entry. Answered by `Quiet`.
    Quiet(Vec<QuietClaim>),
    /// Serve `op` on `group` linearizably if this node leads it (a workload's read of another
    /// shard); a follower answers `NotLeader`. Answered by `Read`.
    LeaderRead(u32, ReadOp),
}

/// The answer to a `PeerRequest`.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// Answer to `Propose`.
    Propose(Response),
    /// Answer to `ShardMap`.
    ShardMap(Box<ShardMap>),
    /// The receiving node hosts no replica of that group.
    NoSuchGroup(u32),
    /// Answer to `Read`.
    Read(Response),
    /// Answer to `TimeoutNow`: the election started, or why not.
    TimeoutNow(Result<(), String>),
    /// Answer to `Stopping`: noted.
    Stopping,
    /// The receiving node has begun a graceful stop and did not act on the request (it answers
    /// `TimeoutNow` so); the sender should treat it as stopping for this many milliseconds.
    NodeStopping(u64),
    /// Answer to `Quiet`: the claimed groups whose replicas here took the claim as a heartbeat
    /// and keep their election timers off for as long as the claim is renewed.
    Quiet(Vec<u32>),
}

/// Encodes a peer message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(msg).map_err(|e| format!("encode peer message: {e}"))
}

/// Decodes a peer message; malformed bytes are an error, never a panic.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed peer message: {e}"))
}

/// The term of the election this replica stands in because its leader asked it to
/// (`TimeoutNow`), or 0 for none; that election's vote requests go out as
/// `PeerRequest::TransferVote`. Terms only grow, so the mark covers that one election and no
/// later one.
pub type TransferTerm = Arc<AtomicU64>;

/// Creates per-target clients for one group.
#[derive(Clone)]
pub struct NetworkFactory {
    group: u32,
    transport: Arc<dyn RaftTransport>,
    transfer_term: TransferTerm,
}

impl NetworkFactory {
    /// A factory for `group` over `transport`; `transfer_term` is shared with the replica.
    pub fn new(group: u32, transport: Arc<dyn RaftTransport>, transfer_term: TransferTerm) -> Self {
        Self {
            group,
            transport,
            transfer_term,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        GroupNetwork {
            group: self.group,
            target,
            transport: self.transport.clone(),
            transfer_term: self.transfer_term.clone(),
        }
    }
}

/// The link from one group replica to the same group on `target`.
pub struct GroupNetwork {
    group: u32,
    target: NodeId,
    transport: Arc<dyn RaftTransport>,
    transfer_term: TransferTerm,
}

fn to_rpc_err<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        TransportError::Unreachable(..) | TransportError::Busy(_) => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl GroupNetwork {
    async fn roundtrip<E: std::error::Error>(
        &self,
        req: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, BasicNode, E>> {
        let bytes = self.encode(&req).map_err(RPCError::Network)?;
        self.send(&req, bytes, option).await
    }

    fn encode(&self, req: &PeerRequest) -> Result<Vec<u8>, NetworkError> {
        encode(req).map_err(|e| NetworkError::new(&TransportError::Remote(self.target, e)))
    }

    /// Sends the encoded `req` and decodes the answer.
    async fn send<E: std::error::Error>(
        &self,
        req: &PeerRequest,
        bytes: Vec<u8>,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, BasicNode, E>> {
        let req_is_consensus = matches!(
            req,
            PeerRequest::Append(..) | PeerRequest::Vote(..) | PeerRequest::TransferVote(..)
        );
        // Snapshot chunks are large: they take the ordinary lane, not the consensus one.
        let call = match req_is_consensus {
            true => self.transport.call_consensus(self.target, bytes, option.hard_ttl()),
            false => self.transport.call(self.target, bytes, option.hard_ttl()),
        };
        let answer = call.await.map_err(to_rpc_err)?;
        decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Remote(self.target, e))))
    }

    fn unexpected<E: std::error::Error>(&self, what: &str) -> RPCError<NodeId, BasicNode, E> {
        let e = TransportError::Remote(
            self.target,
            format!("unexpected answer to {what} for group {}", self.group),
        );
        RPCError::Network(NetworkError::new(&e))
    }
}

/// For an AppendEntries of `entries` entries encoded in `bytes` bytes: `None` when it may go,
/// else how many entries to send instead (a proportional share of `APPEND_BYTES_MAX`, at least 1).
fn entries_that_fit(entries: usize, bytes: usize) -> Option<u64> {
    if entries <= 1 || bytes <= APPEND_BYTES_MAX {
        return None;
    }
    let share = (entries as u128 * APPEND_BYTES_MAX as u128 / bytes as u128) as u64;
    Some(share.clamp(1, entries as u64 - 1))
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let req = PeerRequest::Append(self.group, rpc);
        let bytes = self.encode(&req).map_err(RPCError::Network)?;
        if let Some(hint) = entries_that_fit(entries, bytes.len()) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        match self.send(&req, bytes, &option).await? {
            PeerResponse::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected("append")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.roundtrip(PeerRequest::Snapshot(self.group, rpc), &option).await? {
            PeerResponse::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected("snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let transfer = self.transfer_term.load(Ordering::Acquire);
        let req = match transfer != 0 && rpc.vote.leader_id.term == transfer {
            true => PeerRequest::TransferVote(self.group, rpc),
            false => PeerRequest::Vote(self.group, rpc),
        };
        match self.roundtrip(req, &option).await? {
            PeerResponse::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected("vote")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{entries_that_fit, APPEND_BYTES_MAX};

    #[test]
    fn a_long_run_of_large_entries_is_split_in_proportion() {
        assert_eq!(entries_that_fit(300, APPEND_BYTES_MAX), None);
        assert_eq!(
            entries_that_fit(1, 50 * APPEND_BYTES_MAX),
            None,
            "one entry goes whatever its size"
        );
        assert_eq!(entries_that_fit(300, 16 * APPEND_BYTES_MAX), Some(18));
        assert_eq!(entries_that_fit(2, 100 * APPEND_BYTES_MAX), Some(1));
        // Barely over: one entry fewer at most, never the same run again.
        assert_eq!(entries_that_fit(10, APPEND_BYTES_MAX + 1), Some(9));
    }
}
