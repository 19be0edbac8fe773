//! Idle groups go quiet on a real 3-node cluster over QUIC: once every group is quiet the peer
//! links carry about one ping per peer per heartbeat period instead of a heartbeat per group and
//! follower; a write and a linearizable read to a quiet group are served (and wake it); and when
//! the node leading quiet groups stops without handing them over, the others stop waiting for its
//! pings and elect new leaders.

mod common;

use std::time::{Duration, Instant};

use plexus_actors::config::RaftTimings;
use plexus_actors::NodeHandle;
use plexus_proto::Cursor;

const SHARDS: u32 = 6;
/// The shards and the meta group.
const GROUPS: u64 = SHARDS as u64 + 1;
const HEARTBEAT_MS: u64 = 100;

/// Heartbeats every 100 ms, groups quiet after 300 ms idle, no balancing and no handover (a stop
/// leaves its groups to an election, as a crash would).
fn quiet_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 600,
        leader_balance_interval_ms: 0,
        handover_timeout_ms: 0,
        quiesce_after_ms: 300,
        ..Default::default()
    }
}

/// Quiet groups over `nodes`: (led quietly, followed quietly).
fn quiet_totals(nodes: &[NodeHandle]) -> (u64, u64) {
    nodes
        .iter()
        .map(NodeHandle::quiet_stats)
        .fold((0, 0), |(l, f), s| (l + s.leading, f + s.following))
}

/// Waits, at most `within`, until `leading` groups are led quietly and `following` followed so.
async fn wait_quiet(nodes: &[NodeHandle], leading: u64, following: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let totals = quiet_totals(nodes);
        if totals == (leading, following) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "quiet groups (led, followed) {totals:?}, expected ({leading}, {following})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn msgs_sent(nodes: &[NodeHandle]) -> u64 {
    nodes.iter().map(|n| n.peer_stats().msgs_sent).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_go_quiet_wake_for_requests_and_fail_over_when_their_leader_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::TestCluster::start(tmp.path(), 3, SHARDS, quiet_timings()).await;
    let client = cluster.client().await;
    for owner in 0..12u64 {
        client
            .timeline_append(owner, format!("before-{owner}").into_bytes())
            .await
            .unwrap();
    }
    let nodes = &cluster.nodes;

    // Every group, each followed by two replicas.
    wait_quiet(nodes, GROUPS, 2 * GROUPS, Duration::from_secs(15)).await;
    let transitions: u64 = nodes.iter().map(|n| n.quiet_stats().quieted_total).sum();
    assert!(transitions >= GROUPS, "{transitions} quiet transitions");

    // Quiet for 1 s: each node pings its two peers once per heartbeat period (10 per peer),
    // against 7 groups x 2 followers x 10 heartbeats = 140 heartbeats when loud.
    let before = msgs_sent(nodes);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let sent = msgs_sent(nodes) - before;
    assert_eq!(quiet_totals(nodes), (GROUPS, 2 * GROUPS), "a group woke while idle");
    assert!(sent <= 3 * 2 * 12, "{sent} peer messages in 1 s of quiet");

    // A write and a linearizable read on a quiet group are served, and wake it.
    let owner = 3u64;
    client.timeline_append(owner, b"while-quiet".to_vec()).await.unwrap();
    let page = client.timeline_read(owner, Cursor::Latest, 10).await.unwrap();
    let items: Vec<&[u8]> = page.entries.iter().map(|e| e.item.as_slice()).collect();
    assert_eq!(items, vec![b"while-quiet".as_slice(), b"before-3".as_slice()]);
    // It goes quiet again once idle.
    wait_quiet(nodes, GROUPS, 2 * GROUPS, Duration::from_secs(15)).await;

    // Stop the node leading the most groups, without a handover: its followers keep no group
    // quiet past the silence of its pings, elect new leaders, and serve every owner.
    let stopping = (0..nodes.len())
        .max_by_key(|i| common::led_groups(&nodes[*i]).len())
        .unwrap();
    let led = common::led_groups(&nodes[stopping]);
    assert!(!led.is_empty());
    let mut cluster = cluster;
    let stopped = cluster.nodes.remove(stopping);
    let stopped_id = stopped.registry.node_id;
    let t0 = Instant::now();
    stopped.shutdown().await;
    let rest = &cluster.nodes;
    loop {
        let leaderless: Vec<u32> = led
            .iter()
            .copied()
            .filter(|g| {
                !rest.iter().any(|n| {
                    n.registry
                        .get(*g)
                        .is_some_and(|r| r.is_leader() && r.leader() != Some(stopped_id))
                })
            })
            .collect();
        if leaderless.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "groups {leaderless:?} have no leader {:?} after node {stopped_id} stopped",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for owner in 0..12u64 {
        client.timeline_append(owner, b"after".to_vec()).await.unwrap();
        let page = client.timeline_read(owner, Cursor::Latest, 10).await.unwrap();
        assert_eq!(page.entries[0].item, b"after".to_vec(), "owner {owner}");
        assert!(
            page.entries
                .iter()
                .any(|e| e.item == format!("before-{owner}").into_bytes()),
            "owner {owner} lost its first entry"
        );
    }
    cluster.shutdown().await;
}
