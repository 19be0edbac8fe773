//! Before a graceful stop, the node hands every group it leads to a caught-up follower
//! (`plexus_raft::handover` has the protocol), all groups at once and within one deadline, so
//! clients see a new leader within milliseconds instead of after an election timeout.
//!
//! What it is not: required for safety. A group whose handover fails (no follower caught up,
//! a peer down, the deadline passed) elects a new leader after the usual timeout, as it would
//! after a crash; the node stops either way.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use plexus_proto::NodeId;
use plexus_raft::network::{decode, encode, PeerRequest, PeerResponse};
use plexus_raft::replica::Replica;
use tokio::time::Instant;

use crate::registry::Registry;

/// How long one follower gets to answer `TimeoutNow`, in milliseconds.
const TIMEOUT_NOW_WAIT_MS: u64 = 500;

/// What a node-wide handover achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HandoverReport {
    /// Groups whose leadership moved to another node, with the new leader.
    pub moved: Vec<(u32, NodeId)>,
    /// Groups led here whose handover failed, with why.
    pub failed: Vec<(u32, String)>,
}

/// Hands over every group this node leads, waiting at most `timeout` in all.
pub async fn hand_over_all(registry: &Arc<Registry>, timeout: Duration) -> HandoverReport {
    let deadline = Instant::now() + timeout;
    let led = registry.led_replicas();
    let outcomes = join_all(led.iter().map(|r| hand_over(registry, r, None, deadline))).await;
    let mut report = HandoverReport::default();
    for (replica, outcome) in led.iter().zip(outcomes) {
        match outcome {
            Ok(Some(leader)) => report.moved.push((replica.group, leader)),
            Ok(None) => {}
            Err(e) => report.failed.push((replica.group, e)),
        }
    }
    report
}

/// Hands the leadership of `group` to node `to`, waiting at most `timeout`; `Ok(None)` when this
/// node does not lead the group or `to` did not catch up in time.
pub async fn hand_over_to(
    registry: &Arc<Registry>,
    group: u32,
    to: NodeId,
    timeout: Duration,
) -> Result<Option<NodeId>, String> {
    let Some(replica) = registry.get(group) else {
        return Ok(None);
    };
    hand_over(registry, &replica, Some(&[to]), Instant::now() + timeout).await
}

/// Hands over one group, to a caught-up follower among `to` (in that order of preference) or,
/// with `to` of `None`, to any caught-up follower. `Ok(None)` when there was nothing to hand
/// over or no acceptable follower had caught up.
pub(crate) async fn hand_over(
    registry: &Registry,
    replica: &Replica,
    to: Option<&[NodeId]>,
    deadline: Instant,
) -> Result<Option<NodeId>, String> {
    let outcome = async {
        let Some(caught_up) = replica.begin_handover(deadline).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let targets: Vec<NodeId> = match to {
            Some(to) => to.iter().copied().filter(|t| caught_up.contains(t)).collect(),
            None => caught_up,
        };
        let mut why = Vec::new();
        // A follower that was caught up may have died since; the next one may still stand.
        for target in targets {
            match timeout_now(registry, replica.group, target, deadline).await {
                Ok(()) => {
                    return replica
                        .await_new_leader(deadline)
                        .await
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
                Err(e) => why.push(e),
            }
        }
        if why.is_empty() {
            return Ok(None);
        }
        Err(format!("group {}: {}", replica.group, why.join("; ")))
    }
    .await;
    // Moved or not, the replica takes proposals again whenever it leads: after a failure it keeps
    // serving for whatever time the node has left (the group re-elects normally if the node
    // stops), and after a success it must serve if it is ever elected again.
    replica.end_handover();
    outcome
}

/// Asks `target` to stand for election in `group` now; a bounded wait per target, so one dead
/// follower cannot use up the whole handover.
async fn timeout_now(registry: &Registry, group: u32, target: NodeId, deadline: Instant) -> Result<(), String> {
    let msg = encode(&PeerRequest::TimeoutNow(group))?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_millis(TIMEOUT_NOW_WAIT_MS));
    let answer = registry
        .transport
        .call_consensus(target, msg, wait)
        .await
        .map_err(|e| format!("timeout-now to node {target}: {e}"))?;
    match decode::<PeerResponse>(&answer)? {
        PeerResponse::TimeoutNow(Ok(())) => Ok(()),
        PeerResponse::TimeoutNow(Err(e)) => Err(format!("node {target} did not stand: {e}")),
        other => Err(format!("node {target}: unexpected answer to timeout-now: {other:?}")),
    }
}
