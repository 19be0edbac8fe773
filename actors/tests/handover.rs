//! A graceful stop hands leadership over: every group the stopping node leads gets a new
//! leader on another node through an ordinary election that the old leader's vote decides,
//! instead of waiting out an election timeout, and no acknowledged write is lost.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use plexus_actors::config::RaftTimings;
use plexus_actors::handover::hand_over_to;
use plexus_actors::NodeHandle;
use plexus_client::Cursor;
use plexus_proto::{shard_for_key, NodeId, ShardKey};
use plexus_raft::handover::HandoverError;
use plexus_raft::META_GROUP;

const SHARDS: u32 = 6;
/// Entries appended to each timeline before the handover.
const ENTRIES_BEFORE: usize = 20;

/// Leases of 2 s, heartbeats every 100 ms, elections after 1.5-2 s without a leader, room for
/// slow handovers, and no leader balancing (it would hand groups back behind a test's back).
fn long_lease_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 100,
        election_timeout_min_ms: 1_500,
        election_timeout_max_ms: 2_000,
        handover_timeout_ms: 10_000,
        leader_balance_interval_ms: 0,
        ..Default::default()
    }
}

/// The index of a node that leads some group, and that group.
fn a_leader_and_its_group(nodes: &[NodeHandle]) -> (usize, u32) {
    (0..nodes.len())
        .find_map(|i| common::led_groups(&nodes[i]).first().map(|g| (i, *g)))
        .expect("some node leads a group")
}

/// Waits, at most `within`, until each of `nodes` names `leader` as the leader of `group`.
async fn wait_all_see_leader(nodes: &[&NodeHandle], group: u32, leader: NodeId, within: Duration) {
    let deadline = Instant::now() + within;
    for node in nodes {
        loop {
            let known = node.registry.get(group).and_then(|r| r.leader());
            if known == Some(leader) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} sees leader {known:?} of group {group}, not {leader}",
                node.registry.node_id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_its_groups_to_caught_up_followers() {
    let tmp = tempfile::tempdir().unwrap();
    // Followers hold a 2 s lease on the leader and elect only after 1.5-2 s more, so without a
    // handover the stopping node's groups would have no leader for seconds; with one, they move
    // at once, right after the cluster's first elections.
    let cluster = common::TestCluster::start(tmp.path(), 3, SHARDS, long_lease_timings()).await;
    let client = cluster.client().await;
    let mut nodes = cluster.nodes;

    // The node that leads the most groups stops; leadership was spread at founding, so it leads some.
    let idx = (0..nodes.len())
        .max_by_key(|i| common::led_groups(&nodes[*i]).len())
        .unwrap();
    let stopping_id = nodes[idx].registry.node_id;
    let led = common::led_groups(&nodes[idx]);
    assert!(!led.is_empty(), "node {stopping_id} leads nothing");

    // Acknowledged writes on timelines whose shards the stopping node leads.
    let owners: Vec<u64> = (0..10_000u64)
        .filter(|o| led.contains(&shard_for_key(&ShardKey::Id(*o), SHARDS)))
        .take(3)
        .collect();
    assert!(!owners.is_empty());
    for owner in &owners {
        for i in 0..ENTRIES_BEFORE {
            client
                .timeline_append(*owner, format!("{owner}-{i}").into_bytes())
                .await
                .unwrap();
        }
    }

    let report = nodes[idx].hand_over_leadership().await;
    assert!(report.failed.is_empty(), "handover failures: {:?}", report.failed);
    let moved: BTreeSet<u32> = report.moved.iter().map(|(g, _)| *g).collect();
    assert_eq!(moved, led, "every group the node led moved");
    for (group, leader) in &report.moved {
        assert_ne!(*leader, stopping_id, "group {group} still led by the stopping node");
    }
    assert!(
        common::led_groups(&nodes[idx]).is_empty(),
        "the stopping node still leads some group"
    );

    // The other replicas learn the new leader from the election itself: well within the
    // election timeout that a leaderless group would need.
    let staying: Vec<&NodeHandle> = nodes.iter().filter(|n| n.registry.node_id != stopping_id).collect();
    for (group, leader) in &report.moved {
        wait_all_see_leader(&staying, *group, *leader, Duration::from_millis(1_000)).await;
    }

    // Stop the node; the groups it led take writes from their new leaders, and every
    // acknowledged entry is still there.
    nodes.remove(idx).shutdown().await;
    for owner in &owners {
        client.timeline_append(*owner, b"after".to_vec()).await.unwrap();
        let page = client.timeline_read(*owner, Cursor::Latest, 100).await.unwrap();
        assert_eq!(page.entries.len(), ENTRIES_BEFORE + 1, "timeline {owner}");
    }
    client.close().await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_refuses_to_be_made_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::TestCluster::start(tmp.path(), 3, 2, common::quick_timings()).await;
    let nodes = &cluster.nodes;
    let (leader, group) = a_leader_and_its_group(nodes);
    let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != leader).collect();
    let (stopping, willing) = (&nodes[others[0]], &nodes[others[1]]);

    // A follower that has begun to stop answers TimeoutNow with a refusal: the handover ends
    // at once with that reason, and the group keeps its leader and takes proposals again.
    stopping.registry.set_stopping();
    let started = Instant::now();
    let refused = hand_over_to(
        &nodes[leader].registry,
        group,
        stopping.registry.node_id,
        Duration::from_secs(20),
    )
    .await;
    let why = refused.expect_err("a stopping node was made leader");
    assert!(why.contains("is stopping"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal waited out the deadline"
    );
    assert!(common::led_groups(&nodes[leader]).contains(&group));
    // The refusal counts as the follower's stop notice.
    assert!(nodes[leader].registry.peer_is_stopping(stopping.registry.node_id));

    // A follower that is not stopping takes the group.
    let moved = hand_over_to(
        &nodes[leader].registry,
        group,
        willing.registry.node_id,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(moved, Some(willing.registry.node_id));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_announced_its_stop_is_handed_no_group() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::TestCluster::start(tmp.path(), 3, 4, common::quick_timings()).await;
    let client = cluster.client().await;
    let nodes = &cluster.nodes;
    let leader = (0..nodes.len())
        .max_by_key(|i| common::led_groups(&nodes[*i]).len())
        .unwrap();
    let led = common::led_groups(&nodes[leader]);
    let group = *led.iter().next().unwrap();
    let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != leader).collect();
    let (first, second) = (&nodes[others[0]], &nodes[others[1]]);

    // The first follower announces its stop over QUIC. It has not itself begun to stop, so it
    // would still stand if asked: only the notice keeps the leader from asking it.
    first.announce_stopping().await;
    assert!(nodes[leader].registry.peer_is_stopping(first.registry.node_id));
    assert!(!nodes[leader].registry.peer_is_stopping(second.registry.node_id));
    let to_first = hand_over_to(
        &nodes[leader].registry,
        group,
        first.registry.node_id,
        Duration::from_secs(5),
    )
    .await;
    let why = to_first.expect_err("a group was handed to a peer that announced its stop");
    assert!(why.contains("is stopping"), "{why}");
    assert!(common::led_groups(&nodes[leader]).contains(&group));

    // With every other voter stopping, the node hands nothing over and says why, at once
    // instead of after failed attempts, and keeps serving the groups it leads.
    second.announce_stopping().await;
    let report = nodes[leader].hand_over_leadership().await;
    assert!(report.moved.is_empty(), "moved: {:?}", report.moved);
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    let skipped: BTreeSet<u32> = report.peers_stopping.iter().copied().collect();
    assert_eq!(skipped, led);
    assert_eq!(common::led_groups(&nodes[leader]), led);
    let owner = (0..10_000u64)
        .find(|o| led.contains(&shard_for_key(&ShardKey::Id(*o), 4)))
        .unwrap();
    client.timeline_append(owner, b"still served".to_vec()).await.unwrap();
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_new_leader_ends_when_the_target_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::TestCluster::start(tmp.path(), 3, 2, common::quick_timings()).await;
    let nodes = &cluster.nodes;
    let (leader, group) = a_leader_and_its_group(nodes);
    let replica = nodes[leader].registry.get(group).unwrap();

    // Nobody stands, so leadership never moves: a target that is stopping ends the wait with
    // that reason long before the deadline; one that is not runs into the deadline.
    let far = tokio::time::Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    let stopping = replica.await_new_leader(far, &|| true).await;
    assert_eq!(stopping, Err(HandoverError::PeersStopping(group)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the wait ran towards its deadline"
    );
    let near = tokio::time::Instant::now() + Duration::from_millis(100);
    let not_moved = replica.await_new_leader(near, &|| false).await;
    assert_eq!(not_moved, Err(HandoverError::NotMoved(group)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_voter_group_is_handed_over_inside_the_leader_lease() {
    let tmp = tempfile::tempdir().unwrap();
    // Leases of 2 s and heartbeats every 100 ms: an ordinary vote request would be refused by
    // every follower (they heard from the leader a moment ago) and by the leader itself (elected
    // moments ago), so only transfer votes can move the group now.
    let cluster = common::TestCluster::start(tmp.path(), 5, 2, long_lease_timings()).await;
    let nodes = &cluster.nodes;
    assert_eq!(
        nodes[0].registry.meta_members.len(),
        5,
        "the meta group has five voters"
    );
    let leader = (0..nodes.len())
        .find(|i| common::led_groups(&nodes[*i]).contains(&META_GROUP))
        .expect("the meta group has a leader");
    let leader_id = nodes[leader].registry.node_id;
    let target = *nodes[leader]
        .registry
        .meta_members
        .iter()
        .find(|id| **id != leader_id)
        .unwrap();

    let moved = hand_over_to(&nodes[leader].registry, META_GROUP, target, Duration::from_secs(10)).await;
    assert_eq!(moved, Ok(Some(target)));
    // Every voter follows the new leader.
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_see_leader(&all, META_GROUP, target, Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handovers_under_a_stream_of_writes_all_move_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::TestCluster::start(tmp.path(), 3, 1, common::quick_timings()).await;
    let client = cluster.client().await;
    let nodes = &cluster.nodes;
    // Writers keep proposals in flight on shard 0 the whole time, so every handover starts with
    // writes that passed the gate but have not reached the log yet.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (client, stop) = (client.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if client.timeline_append(w, b"x".to_vec()).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..12 {
        let leader = (0..nodes.len())
            .find(|i| common::led_groups(&nodes[*i]).contains(&0))
            .unwrap_or_else(|| panic!("round {round}: shard 0 has no leader"));
        let to = nodes[(leader + 1) % nodes.len()].registry.node_id;
        let moved = hand_over_to(&nodes[leader].registry, 0, to, Duration::from_secs(5)).await;
        assert_eq!(moved, Ok(Some(to)), "round {round}");
        // The new leader must see itself elected before the next round looks for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let new = nodes.iter().find(|n| n.registry.node_id == to).unwrap();
        while !common::led_groups(new).contains(&0) {
            assert!(Instant::now() < deadline, "round {round}: node {to} never led");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0, "a writer got nothing acknowledged");
    }
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_stop_asks_no_peer_to_stand_though_its_signal_comes_moments_later() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::TestCluster::start(tmp.path(), 3, 4, common::quick_timings()).await;
    let mut nodes = cluster.nodes;
    let leader = (0..nodes.len())
        .max_by_key(|i| common::led_groups(&nodes[*i]).len())
        .unwrap();
    let led = common::led_groups(&nodes[leader]);
    assert!(!led.is_empty());
    let mut first = nodes.remove(leader);
    // Each follower's replica of every group the first node leads, and its term now.
    let followers: Vec<(u32, NodeId, plexus_raft::replica::Replica, u64)> = nodes
        .iter()
        .flat_map(|n| {
            led.iter()
                .filter_map(move |g| n.registry.get(*g).map(|r| (*g, n.registry.node_id, r)))
        })
        .map(|(g, id, r)| {
            let term = r.status().term;
            (g, id, r, term)
        })
        .collect();

    // The stop signal reaches the leader first and the other nodes 20 ms later, as when
    // `plexus up` or `docker compose stop` signals every node in turn. Asked at once, a follower
    // that had not begun to stop would stand and stop moments later with its election
    // unfinished, and its vote would hold up every such group at the next start.
    let (report, _) = futures::join!(first.begin_stop(), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        futures::future::join_all(nodes.iter_mut().map(|n| n.begin_stop())).await
    });
    assert!(report.moved.is_empty(), "handed to stopping peers: {:?}", report.moved);
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    let skipped: BTreeSet<u32> = report.peers_stopping.iter().copied().collect();
    assert_eq!(skipped, led);
    for (group, id, replica, term) in &followers {
        assert_eq!(replica.status().term, *term, "node {id} stood for group {group}");
    }
    first.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}
