//! Three nodes in Docker containers, each with its own address on a private network, and a
//! client on the host. While the client writes and reads, the leader of a shard is cut off
//! the network (its process keeps running, as in a real partition, which loopback processes
//! cannot show): the other two must elect a leader and go on acknowledging writes; once the
//! node is back, every acknowledged write must be on every replica, reads must have been
//! linearizable throughout, and every node must stop cleanly on SIGTERM.
//!
//! Needs a Docker Engine (this project's machines have one; `.ci/run` checks for it). On a
//! machine without one, `PLEXUS_E2E_DOCKER=skip` skips this test and says so; without that,
//! a missing engine is a failure, so a CI run can never pass it by accident.

mod common;

use std::time::Duration;

use common::docker::{engine, DockerCluster, SHARDS};
use common::workload::{leader_of, Workload};
use plexus_proto::{shard_for_key, ShardKey};

const OWNERS: u64 = 16;
/// How long the leader stays cut off: several election timeouts (1-2 s by default).
const PARTITION: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_loses_no_acknowledged_write() {
    match engine() {
        Ok(version) => eprintln!("docker engine {version}"),
        Err(why) if std::env::var("PLEXUS_E2E_DOCKER").as_deref() == Ok("skip") => {
            eprintln!("SKIPPED (PLEXUS_E2E_DOCKER=skip): no Docker Engine: {why}");
            return;
        }
        Err(why) => panic!("this test needs a running Docker Engine ({why}); PLEXUS_E2E_DOCKER=skip skips it"),
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = DockerCluster::start(tmp.path());
    let client = cluster.ready_client(Duration::from_secs(120)).await;

    let workload = Workload::start(&client, OWNERS);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let shard0 = shard_for_key(&ShardKey::Id(0), SHARDS);
    let (victim, _) = leader_of(&client, shard0).await.expect("shard 0 has a leader");
    let before = workload.acked_count(0);
    eprintln!("cutting node {victim}, leader of shard {shard0}, off the network ({before} writes of owner 0 acked)");
    cluster.disconnect(victim);
    tokio::time::sleep(PARTITION).await;
    let during = workload.acked_count(0) - before;
    let (new_leader, _) = leader_of(&client, shard0)
        .await
        .expect("shard 0 has a leader while its old one is cut off");
    cluster.reconnect(victim);
    eprintln!("node {victim} back; {during} writes of owner 0 acked meanwhile; shard {shard0} led by {new_leader}");
    assert_ne!(new_leader, victim, "the cut-off node still leads shard {shard0}");
    assert!(
        during > 0,
        "no write of owner 0 (shard {shard0}) was acknowledged while its old leader was cut off"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Every acknowledged write is on every replica (after catch-up; the node that was cut off
    // is a replica of shard 0 and must catch up too), and reads were linearizable throughout.
    workload.finish(&client, Duration::from_secs(60)).await;

    client.close().await;
    let unclean = cluster.stop_all();
    assert!(
        unclean.is_empty(),
        "nodes that did not stop cleanly on SIGTERM: {unclean:?}"
    );
}
