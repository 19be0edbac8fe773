//! Leader balancing: a node that leads every group hands groups to the others, a few per
//! round, until no node leads two more groups than another, and writes keep working.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use plexus_actors::balance::{balance_once, MOVES_PER_ROUND_MAX};
use plexus_actors::handover::hand_over_to;
use plexus_actors::NodeHandle;
use plexus_proto::NodeId;

const SHARDS: u32 = 6;

/// How many groups each node leads, as each leader says of itself.
fn leader_counts(nodes: &[NodeHandle]) -> BTreeMap<NodeId, usize> {
    nodes
        .iter()
        .map(|n| (n.registry.node_id, common::led_groups(n).len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leading_everything_hands_groups_to_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    // The rounds are driven by hand, so the periodic balancer is off on every node.
    let cluster = common::TestCluster::start(tmp.path(), 3, SHARDS, common::quick_timings()).await;
    let nodes = &cluster.nodes;
    let groups = nodes[0].registry.hosted_groups();
    assert_eq!(groups.len(), SHARDS as usize + 1);

    // Move every group to node 3.
    let deadline = Instant::now() + Duration::from_secs(60);
    while leader_counts(nodes)[&3] < groups.len() {
        assert!(Instant::now() < deadline, "could not move every group to node 3");
        for node in &nodes[..2] {
            for g in &groups {
                let _ = hand_over_to(&node.registry, *g, 3, Duration::from_secs(3)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Node 3's rounds spread the groups; nodes 1 and 2 lead too few to move any.
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = leader_counts(nodes);
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        if max - min <= 1 && counts.values().sum::<usize>() == groups.len() {
            break;
        }
        assert!(Instant::now() < deadline, "leaders still unbalanced: {counts:?}");
        for node in &nodes[..2] {
            assert!(
                balance_once(&node.registry).await.is_empty(),
                "a node with few groups moved one"
            );
        }
        let moved = balance_once(&nodes[2].registry).await;
        assert!(moved.len() <= MOVES_PER_ROUND_MAX);
        assert!(moved.iter().all(|(_, to)| *to != 3));
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 7 groups from 7/0/0 to 3/2/2 take four moves: one full round, then the rest of a second
    // once leases end, give or take rounds that found no lease over yet.
    eprintln!("balanced after {rounds} rounds");

    // Every group still takes writes.
    let client = cluster.client().await;
    for owner in 0..24u64 {
        client.timeline_append(owner, b"x".to_vec()).await.unwrap();
    }
    client.close().await;
    cluster.shutdown().await;
}
