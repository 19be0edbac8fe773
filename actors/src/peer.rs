//! The bridge between the QUIC peer links (`plexus-net`) and Raft: an
//! outgoing `RaftTransport` and the incoming `PeerHandler`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use plexus_net::{Lane, NetError, PeerHandler, PeerLinks};
use plexus_raft::network::{decode, encode, BoxFut, PeerRequest, PeerResponse, RaftTransport, TransportError};

use crate::quiesce::Quiescence;
use crate::registry::Registry;

/// Raft traffic over the node's QUIC peer links.
pub struct QuicTransport {
    links: PeerLinks,
}

impl QuicTransport {
    /// Wraps the endpoint's peer links.
    pub fn new(links: PeerLinks) -> Self {
        Self { links }
    }
}

impl QuicTransport {
    fn call_lane(
        &self,
        lane: Lane,
        to: u64,
        msg: Vec<u8>,
        timeout: Duration,
    ) -> BoxFut<Result<Vec<u8>, TransportError>> {
        let links = self.links.clone();
        Box::pin(async move {
            links.call_on(lane, to, msg, timeout).await.map_err(|e| match e {
                NetError::Timeout(..) => TransportError::Timeout(to, timeout),
                NetError::Busy(..) => TransportError::Busy(to),
                NetError::Remote(m) => TransportError::Remote(to, m),
                other => TransportError::Unreachable(to, other.to_string()),
            })
        })
    }
}

impl RaftTransport for QuicTransport {
    fn call(&self, to: u64, msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
        self.call_lane(Lane::Bulk, to, msg, timeout)
    }

    fn call_consensus(&self, to: u64, msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
        self.call_lane(Lane::Consensus, to, msg, timeout)
    }
}

/// Answers peers' Raft RPCs and forwarded proposals from the registry, and their quiescence
/// pings.
pub struct PeerService {
    registry: Arc<Registry>,
    quiescence: Option<Arc<Quiescence>>,
}

impl PeerService {
    /// A service over `registry`; without `quiescence` a ping's claims are all refused.
    pub fn new(registry: Arc<Registry>, quiescence: Option<Arc<Quiescence>>) -> Self {
        Self { registry, quiescence }
    }
}

impl PeerHandler for PeerService {
    fn handle(&self, from: u64, msg: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let registry = self.registry.clone();
        let quiescence = self.quiescence.clone();
        Box::pin(async move {
            let req: PeerRequest = decode(&msg)?;
            let group = match &req {
                PeerRequest::Append(g, _)
                | PeerRequest::Vote(g, _)
                | PeerRequest::TransferVote(g, _)
                | PeerRequest::Snapshot(g, _)
                | PeerRequest::Propose(g, _)
                | PeerRequest::Read(g, _)
                | PeerRequest::LeaderRead(g, _)
                | PeerRequest::TimeoutNow(g) => *g,
                PeerRequest::ShardMap => return encode(&PeerResponse::ShardMap(Box::new(registry.shard_map()))),
                PeerRequest::Stopping(for_ms) => {
                    tracing::info!(peer = from, for_ms, "peer is stopping: it is handed no groups");
                    registry.note_peer_stopping(from, *for_ms);
                    return encode(&PeerResponse::Stopping);
                }
                PeerRequest::Quiet(claims) => {
                    let accepted = match &quiescence {
                        Some(q) => q.on_ping(from, claims).await,
                        None => Vec::new(),
                    };
                    return encode(&PeerResponse::Quiet(accepted));
                }
            };
            if matches!(req, PeerRequest::TimeoutNow(_)) && registry.is_stopping() {
                return encode(&PeerResponse::NodeStopping(registry.stop_notice_ms));
            }
            let resp = match registry.get(group) {
                Some(replica) => replica.handle_peer(req, registry.request_timeout).await,
                None => {
                    tracing::debug!(from, group, "peer message for a group not running here");
                    PeerResponse::NoSuchGroup(group)
                }
            };
            encode(&resp)
        })
    }
}
