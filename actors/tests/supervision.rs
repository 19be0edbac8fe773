//! A panicking shard actor is restarted by its supervisor and recovers its
//! replica from the WAL and snapshot with nothing committed lost.

mod common;

use std::time::{Duration, Instant};

use plexus_actors::config::RaftTimings;
use plexus_actors::start_node;
use plexus_proto::{shard_for_key, Cursor, ShardKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_shard_actor_restarts_without_losing_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::single_node_config(tmp.path(), 4, RaftTimings::default());
    let node = start_node(cfg.clone()).await.unwrap();
    common::wait_for_leaders(&node).await;
    let client = common::client(&cfg).await;
    let owner = 7;
    let shard = shard_for_key(&ShardKey::Id(owner), 4);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            client
                .timeline_append(owner, format!("e{i}").into_bytes())
                .await
                .unwrap(),
        );
    }

    assert_eq!(node.registry.starts(shard), 1);
    node.inject_panic(shard);
    // The supervisor replaces the replica; wait until the new one is registered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.registry.starts(shard) < 2 {
        assert!(Instant::now() < deadline, "shard actor was not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(page) = client.timeline_read(owner, Cursor::Latest, 100).await {
            let got: Vec<u64> = page.entries.iter().rev().map(|e| e.id).collect();
            assert_eq!(got, ids, "committed entries changed across the restart");
            break;
        }
        assert!(Instant::now() < deadline, "shard never came back after the panic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it keeps taking writes.
    let next = client.timeline_append(owner, b"after".to_vec()).await.unwrap();
    assert!(next > *ids.last().unwrap());
    client.close().await;
    node.shutdown().await;
}

/// Waits, at most 30 s, until `cond` holds.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gateway_actor_closes_its_connections_and_a_restarted_one_serves_new_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::single_node_config(tmp.path(), 4, RaftTimings::default());
    let node = start_node(cfg.clone()).await.unwrap();
    common::wait_for_leaders(&node).await;
    let client = common::client(&cfg).await;
    let first = client.timeline_append(3, b"before".to_vec()).await.unwrap();
    assert_eq!(node.client_connections(), 1);
    let gateway = node.gateway_actor_id().expect("a gateway actor runs");

    // The gateway actor runs every client connection: when it fails, they end with it, and the
    // node supervisor starts another actor, which runs the connections that come next.
    node.inject_gateway_panic();
    wait_until("the gateway actor was not restarted", || {
        node.gateway_actor_id().is_some_and(|id| id != gateway)
    })
    .await;
    wait_until("the failed actor's connection is still served", || {
        node.client_connections() == 0
    })
    .await;

    // The client redials on its next call and is served through the new actor; nothing written
    // before is lost.
    let second = client.timeline_append(3, b"after".to_vec()).await.unwrap();
    assert!(second > first);
    assert_eq!(node.client_connections(), 1);
    let page = client.timeline_read(3, Cursor::Latest, 10).await.unwrap();
    let got: Vec<u64> = page.entries.iter().rev().map(|e| e.id).collect();
    assert_eq!(got, vec![first, second]);
    client.close().await;
    node.shutdown().await;
}
