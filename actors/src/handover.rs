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
use plexus_raft::handover::HandoverError;
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
    /// Groups led here that were not handed over because every voter they could go to is
    /// stopping too (a whole-cluster stop): no failure, nobody could take them.
    pub peers_stopping: Vec<u32>,
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
            Err(HandoverError::PeersStopping(group)) => report.peers_stopping.push(group),
            Err(e) => report.failed.push((replica.group, e.to_string())),
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
    hand_over(registry, &replica, Some(&[to]), Instant::now() + timeout)
        .await
        .map_err(|e| e.to_string())
}

/// Hands over one group, to a caught-up follower among `to` (in that order of preference) or,
/// with `to` of `None`, to any caught-up follower. `Ok(None)` when there was nothing to hand
/// over or no acceptable follower had caught up. A peer that is stopping (it said so, or it
/// refused `TimeoutNow` for that reason) is never a target, and when every target left is
/// stopping the handover ends at once with [`HandoverError::PeersStopping`].
pub(crate) async fn hand_over(
    registry: &Registry,
    replica: &Replica,
    to: Option<&[NodeId]>,
    deadline: Instant,
) -> Result<Option<NodeId>, HandoverError> {
    let group = replica.group;
    // With named targets, wait for one of them to catch up, not for any voter; `begin_handover`
    // fails at once when every one of them is stopping.
    let eligible = |peer: NodeId| !registry.peer_is_stopping(peer) && to.is_none_or(|to| to.contains(&peer));
    let outcome = async {
        let Some(caught_up) = replica.begin_handover(deadline, &eligible).await? else {
            return Ok(None);
        };
        let targets: Vec<NodeId> = match to {
            Some(to) => to.iter().copied().filter(|t| caught_up.contains(t)).collect(),
            None => caught_up,
        };
        let mut why = Vec::new();
        let mut stopping = 0;
        // A follower that was caught up may have died or begun to stop since; the next one may
        // still stand.
        for target in &targets {
            if !eligible(*target) {
                stopping += 1;
                continue;
            }
            match timeout_now(registry, group, *target, deadline).await {
                Ok(()) => {}
                Err(TimeoutNowError::Stopping) => {
                    stopping += 1;
                    continue;
                }
                Err(TimeoutNowError::Failed(e)) => {
                    why.push(e);
                    continue;
                }
            }
            // The target stands. If it announces its own stop before it wins (a whole-cluster
            // stop, where it took the request just before its own signal), waiting for it is
            // pointless: it will not keep the group.
            let target_stopping = || !eligible(*target);
            return replica.await_new_leader(deadline, &target_stopping).await.map(Some);
        }
        if stopping > 0 && stopping == targets.len() {
            return Err(HandoverError::PeersStopping(group));
        }
        if why.is_empty() {
            return Ok(None);
        }
        Err(HandoverError::NoneStood(group, why.join("; ")))
    }
    .await;
    // Moved or not, the replica takes proposals again whenever it leads: after a failure it keeps
    // serving for whatever time the node has left (the group re-elects normally if the node
    // stops), and after a success it must serve if it is ever elected again.
    replica.end_handover();
    outcome
}

/// Why a follower did not stand when asked.
enum TimeoutNowError {
    /// It has begun a graceful stop (noted in the registry).
    Stopping,
    /// Anything else: unreachable, no answer in time, an error of its own.
    Failed(String),
}

/// Asks `target` to stand for election in `group` now; a bounded wait per target, so one dead
/// follower cannot use up the whole handover. A target that answers that it is stopping is
/// noted as such, as if it had sent its stop notice.
async fn timeout_now(
    registry: &Registry,
    group: u32,
    target: NodeId,
    deadline: Instant,
) -> Result<(), TimeoutNowError> {
    let failed = TimeoutNowError::Failed;
    let msg = encode(&PeerRequest::TimeoutNow(group)).map_err(failed)?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_millis(TIMEOUT_NOW_WAIT_MS));
    let answer = registry
        .transport
        .call_consensus(target, msg, wait)
        .await
        .map_err(|e| failed(format!("timeout-now to node {target}: {e}")))?;
    match decode::<PeerResponse>(&answer).map_err(failed)? {
        PeerResponse::TimeoutNow(Ok(())) => Ok(()),
        PeerResponse::TimeoutNow(Err(e)) => Err(failed(format!("node {target} did not stand: {e}"))),
        PeerResponse::NodeStopping(for_ms) => {
            registry.note_peer_stopping(target, for_ms);
            Err(TimeoutNowError::Stopping)
        }
        other => Err(failed(format!(
            "node {target}: unexpected answer to timeout-now: {other:?}"
        ))),
    }
}
