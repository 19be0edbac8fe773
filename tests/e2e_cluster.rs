//! Three node processes on loopback: write through the client while the
//! leader of a shard is SIGKILLed and restarted; every acknowledged write must
//! then be on every replica, and reads must be linearizable throughout.

mod common;

use std::time::{Duration, Instant};

use common::workload::{leader_of, Workload};
use plexus_proto::{shard_for_key, Direction, ShardKey};

const SHARDS: u32 = 8;
const OWNERS: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let port = common::base_port(1).to_string();
    let shards = SHARDS.to_string();
    let up = common::up(
        &dir,
        &["--nodes", "3", "--shards", &shards, "--base-port", &port],
        Duration::from_secs(180),
    );
    let client = common::client(&dir).await;

    let workload = Workload::start(&client, OWNERS);

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Find and SIGKILL the leader of owner 0's shard.
    let shard0 = shard_for_key(&ShardKey::Id(0), SHARDS);
    let (victim_id, victim_pid) = leader_of(&client, shard0).await.expect("shard 0 has a leader");
    eprintln!("killing node {victim_id} (pid {victim_pid}), leader of shard {shard0}");
    common::signal(victim_pid, "KILL");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = common::start_node(&dir, victim_id);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Every acknowledged write is on every replica (after catch-up; the node that was killed
    // is a replica of shard 0 and must catch up too), and reads were linearizable throughout.
    workload.finish(&client, Duration::from_secs(60)).await;

    // Cross-shard follows converge on both halves.
    let pairs: Vec<(u64, u64)> = (0..20).map(|i| (100 + i, 200 + i * 7)).collect();
    for (a, b) in &pairs {
        assert!(client.follow(*a, *b).await.unwrap());
    }
    for (a, b) in &pairs {
        assert!(client.has_edge(*a, *b).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ins, _) = client.neighbors(*b, Direction::In, None, 100).await.unwrap();
            if ins.contains(a) {
                break;
            }
            assert!(Instant::now() < deadline, "in-edge {a} -> {b} never arrived");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    client.close().await;
    let _ = restarted.stop();
    up.stop();
}
