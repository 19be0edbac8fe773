//! Leader balancing: every node, every `leader_balance_interval_ms`, hands a few of the groups
//! it leads to followers that lead fewer groups, so that leaders (and with them the write and
//! fsync load) stay spread over the nodes.
//!
//! Leadership drifts without it. A restarted node comes back as leader of the groups its last
//! committed vote names, a graceful stop hands every group to whichever follower caught up
//! first, and a crash leaves its groups to whoever wins the election: after a full restart of
//! a 3-node local cluster one node led 42 of 65 groups and another none.
//!
//! The decision ([`plan`]) is a pure function of a view of the cluster's groups: for each, the
//! leader and the voters. Each round a node asks every peer for its shard map (leaders of the
//! groups that peer hosts) and merges them with what it knows itself ([`merge_views`]), so
//! with more nodes than replicas it still counts every node's leaders; if a peer does not
//! answer, the round uses only the groups this node hosts. It moves a group only from itself,
//! only to a voter leading at least two fewer groups, and only while every group in the view
//! has a leader (not during elections). Each move lowers the sum of squared leader counts, so
//! the moves stop.
//!
//! A move is a handover (`crate::handover`): the group refuses proposals for the few
//! milliseconds a follower takes to catch up and win one vote; clients retry them. Only leaders
//! that have led for a lease period are moved, so balancing never chases a fresh election. What it is not: placement. Which nodes hold a group's replicas
//! is the shard map's business; this only chooses which replica leads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use plexus_proto::{NodeId, ShardMap};
use plexus_raft::network::{decode, encode, PeerRequest, PeerResponse};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::handover::hand_over;
use crate::registry::Registry;

/// Groups one node hands over per round, at most.
pub const MOVES_PER_ROUND_MAX: usize = 4;
/// How long one balancing handover may take before the group goes back to serving here.
const MOVE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long a peer gets to send its shard map for a round.
const PEER_MAP_TIMEOUT: Duration = Duration::from_millis(500);

/// One hosted group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    /// Group id.
    pub group: u32,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The group's voters.
    pub voters: Vec<NodeId>,
}

/// One planned move: `group`, led by this node, goes to the first caught-up node of `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The group to hand over.
    pub group: u32,
    /// Acceptable successors, best first.
    pub to: Vec<NodeId>,
}

/// Plans up to `moves_max` moves off node `me`. Deterministic: ties go to the lower node id and
/// then the lower group id.
pub fn plan(me: NodeId, groups: &[GroupView], moves_max: usize) -> Vec<Move> {
    if groups.iter().any(|g| g.leader.is_none()) {
        return Vec::new();
    }
    // Every voter counts, leading or not; a node's count is the groups it leads.
    let mut led: BTreeMap<NodeId, usize> = groups.iter().flat_map(|g| g.voters.iter().map(|v| (*v, 0))).collect();
    for l in groups.iter().filter_map(|g| g.leader) {
        *led.entry(l).or_insert(0) += 1;
    }
    let mut mine: Vec<&GroupView> = groups.iter().filter(|g| g.leader == Some(me)).collect();
    mine.sort_by_key(|g| g.group);
    let mut moves = Vec::new();
    while moves.len() < moves_max {
        let count = |n: &NodeId| led.get(n).copied().unwrap_or(0);
        let my_count = count(&me);
        // The group whose best successor leads the fewest groups.
        let best = mine
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let mut to: Vec<NodeId> = g
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| *v != me && count(v) + 1 < my_count)
                    .collect();
                to.sort_by_key(|v| (count(v), *v));
                Some((count(to.first()?), i, to))
            })
            .min_by_key(|(successor_count, i, _)| (*successor_count, mine[*i].group));
        let Some((_, i, to)) = best else {
            break;
        };
        let g = mine.remove(i);
        // Count the move as if it went to the preferred node, for the next pick.
        *led.entry(me).or_insert(0) -= 1;
        *led.entry(to[0]).or_insert(0) += 1;
        moves.push(Move { group: g.group, to });
    }
    moves
}

/// The groups this node hosts as it sees them, completed with the shards it does not host as
/// `peers` (their shard maps) report them: a shard's leader is the one named by a node that
/// hosts it (peers know leaders only of the shards they host). `None` if some shard that is not
/// hosted here has no peer naming its leader.
pub fn merge_views(local: Vec<GroupView>, placement: &[Vec<NodeId>], peers: &[ShardMap]) -> Option<Vec<GroupView>> {
    let mut out = local;
    for (shard, voters) in placement.iter().enumerate() {
        let shard = shard as u32;
        if out.iter().any(|g| g.group == shard) {
            continue;
        }
        let leader = peers
            .iter()
            .filter_map(|m| m.shards.iter().find(|p| p.shard == shard))
            .find_map(|p| p.leader)?;
        out.push(GroupView {
            group: shard,
            leader: Some(leader),
            voters: voters.clone(),
        });
    }
    Some(out)
}

/// Every other member's shard map, or `None` if one does not answer.
async fn peer_maps(registry: &Registry) -> Option<Vec<ShardMap>> {
    let msg = encode(&PeerRequest::ShardMap).ok()?;
    let others = registry.members.keys().copied().filter(|id| *id != registry.node_id);
    let answers = join_all(others.map(|id| registry.transport.call(id, msg.clone(), PEER_MAP_TIMEOUT))).await;
    answers
        .into_iter()
        .map(|a| match decode::<PeerResponse>(&a.ok()?) {
            Ok(PeerResponse::ShardMap(map)) => Some(*map),
            _ => None,
        })
        .collect()
}

/// What this node sees of the groups it hosts.
fn views(registry: &Registry) -> Vec<GroupView> {
    registry
        .hosted_groups()
        .into_iter()
        .map(|group| {
            let replica = registry.get(group);
            GroupView {
                group,
                leader: replica.as_ref().and_then(|r| r.leader()),
                voters: registry.replicas_of(group),
            }
        })
        .collect()
}

/// One balancing round: plans and runs this node's moves; returns the groups that moved, with
/// their new leaders.
pub async fn balance_once(registry: &Arc<Registry>) -> Vec<(u32, NodeId)> {
    let local = views(registry);
    let view = match peer_maps(registry).await {
        Some(maps) => merge_views(local.clone(), &registry.placement, &maps).unwrap_or(local),
        None => local,
    };
    // Only settled leaders (led for a lease period): a group just elected is left alone.
    let mut ready = Vec::new();
    for m in plan(registry.node_id, &view, MOVES_PER_ROUND_MAX) {
        if let Some(replica) = registry.get(m.group) {
            if replica.lease_over().await {
                ready.push((replica, m.to));
            }
        }
    }
    let deadline = Instant::now() + MOVE_TIMEOUT;
    let outcomes = join_all(
        ready
            .iter()
            .map(|(replica, to)| hand_over(registry, replica, Some(to), deadline)),
    )
    .await;
    let mut moved = Vec::new();
    for ((replica, _), outcome) in ready.iter().zip(outcomes) {
        match outcome {
            Ok(Some(leader)) => {
                tracing::info!(
                    group = replica.group,
                    to = leader,
                    "leadership moved to balance leaders"
                );
                moved.push((replica.group, leader));
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(group = replica.group, error = %e, "balancing handover failed"),
        }
    }
    moved
}

/// Runs [`balance_once`] every `interval` until the task is aborted.
pub fn spawn(registry: Arc<Registry>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; give the node one interval to settle first.
        tick.tick().await;
        loop {
            tick.tick().await;
            balance_once(&registry).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(group: u32, leader: NodeId) -> GroupView {
        view_of(group, leader, &[1, 2, 3])
    }

    fn view_of(group: u32, leader: NodeId, voters: &[NodeId]) -> GroupView {
        GroupView {
            group,
            leader: Some(leader),
            voters: voters.to_vec(),
        }
    }

    #[test]
    fn the_busiest_node_moves_groups_to_the_idlest() {
        // Node 1 leads 5, node 2 leads 2, node 3 none.
        let groups: Vec<GroupView> = [1, 1, 1, 1, 1, 2, 2]
            .iter()
            .enumerate()
            .map(|(g, l)| view(g as u32, *l))
            .collect();
        let moves = plan(1, &groups, 4);
        // 5/2/0 -> 4/2/1 -> 3/2/2; then 3 is not 2 more than 2, so it stops.
        assert_eq!(
            moves,
            vec![
                Move {
                    group: 0,
                    to: vec![3, 2]
                },
                Move {
                    group: 1,
                    to: vec![3, 2]
                },
            ]
        );
        // Node 2 leads two more than node 3 too, and moves one; node 3 leads the fewest.
        assert_eq!(plan(2, &groups, 4), vec![Move { group: 5, to: vec![3] }]);
        assert!(plan(3, &groups, 4).is_empty());
        // The round limit holds.
        assert_eq!(plan(1, &groups, 1).len(), 1);
    }

    #[test]
    fn nothing_moves_while_a_group_has_no_leader_or_counts_are_level() {
        let mut groups: Vec<GroupView> = (0..6).map(|g| view(g, 1)).collect();
        groups[5].leader = None;
        assert!(plan(1, &groups, 4).is_empty());
        let level: Vec<GroupView> = (0..7).map(|g| view(g, (g % 3 + 1) as NodeId)).collect();
        for me in 1..=3 {
            assert!(
                plan(me, &level, 4).is_empty(),
                "node {me} moved a group of a level cluster"
            );
        }
    }

    #[test]
    fn peers_fill_in_the_shards_not_hosted_here() {
        use plexus_proto::ShardPlacement;
        // 4 nodes; this node (1) hosts shards 0 and 1 and leads both; shard 2 lives on 2, 3, 4.
        let placement = vec![vec![1, 2, 3], vec![1, 3, 4], vec![2, 3, 4]];
        let local = vec![view(0, 1), view(1, 1)];
        let map = |node: NodeId, leader: Option<NodeId>| ShardMap {
            shard_count: 3,
            nodes: Vec::new(),
            shards: vec![ShardPlacement {
                shard: 2,
                replicas: vec![2, 3, 4],
                leader: if node == 1 { None } else { leader },
            }],
        };
        let merged = merge_views(local.clone(), &placement, &[map(2, None), map(3, Some(4))]).unwrap();
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[2].leader, Some(4));
        assert_eq!(merged[2].voters, vec![2, 3, 4]);
        // No peer names shard 2's leader: no global view.
        assert!(merge_views(local, &placement, &[map(2, None)]).is_none());
    }

    #[test]
    fn a_group_moves_only_to_its_own_voters() {
        // Node 1 leads three groups whose only other voter is node 2, which leads one; node 3
        // leads nothing but is no voter of node 1's groups.
        let groups = vec![
            view_of(0, 1, &[1, 2]),
            view_of(1, 1, &[1, 2]),
            view_of(2, 1, &[1, 2]),
            view_of(3, 2, &[2, 3]),
        ];
        assert_eq!(plan(1, &groups, 4), vec![Move { group: 0, to: vec![2] }]);
    }
}
