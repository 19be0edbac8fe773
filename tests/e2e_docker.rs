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

use common::docker::{engine, DockerCluster, NODES, SHARDS};
use common::workload::{leader_of, Workload};
use plexus_client::Client;
use plexus_proto::{shard_for_key, ShardKey};

const OWNERS: u64 = 16;
/// How long the leader stays cut off: several election timeouts (1-2 s by default).
const PARTITION: Duration = Duration::from_secs(8);

/// A ready cluster under `tmp` with the workload running for two seconds; `None` when there is
/// no Docker Engine and the user asked to skip.
async fn start(tmp: &tempfile::TempDir, tag: &str) -> Option<(DockerCluster, Client, Workload)> {
    if !docker_engine_or_skip() {
        return None;
    }
    let cluster = DockerCluster::start(tmp.path(), tag);
    let client = cluster.ready_client(Duration::from_secs(120)).await;
    let workload = Workload::start(&client, OWNERS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Some((cluster, client, workload))
}

/// Every acknowledged write is on every replica (after catch-up: a node that was cut off or
/// restarted must catch up too), reads were linearizable throughout, and every node stops
/// cleanly on SIGTERM.
async fn finish(cluster: DockerCluster, client: Client, workload: Workload) {
    workload.finish(&client, Duration::from_secs(60)).await;
    client.close().await;
    let unclean = cluster.stop_all();
    assert!(
        unclean.is_empty(),
        "nodes that did not stop cleanly on SIGTERM: {unclean:?}"
    );
}

/// Whether to run: an engine answers (true), or it does not and the user asked to skip (false).
fn docker_engine_or_skip() -> bool {
    match engine() {
        Ok(version) => {
            eprintln!("docker engine {version}");
            true
        }
        Err(why) if std::env::var("PLEXUS_E2E_DOCKER").as_deref() == Ok("skip") => {
            eprintln!("SKIPPED (PLEXUS_E2E_DOCKER=skip): no Docker Engine: {why}");
            false
        }
        Err(why) => panic!("this test needs a running Docker Engine ({why}); PLEXUS_E2E_DOCKER=skip skips it"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((cluster, client, workload)) = start(&tmp, "cut").await else {
        return;
    };

    let shard0 = shard_for_key(&ShardKey::Id(0), SHARDS);
    let (victim, _) = leader_of(&client, shard0).await.expect("shard 0 has a leader");
    let on_shard0 = |owner: u64| shard_for_key(&ShardKey::Id(owner), SHARDS) == shard0;
    let before = workload.acked_where(on_shard0);
    eprintln!("cutting node {victim}, leader of shard {shard0}, off the network ({before} writes to it acked)");
    cluster.disconnect(victim);
    tokio::time::sleep(PARTITION).await;
    let during = workload.acked_where(on_shard0) - before;
    let (new_leader, _) = leader_of(&client, shard0)
        .await
        .expect("shard 0 has a leader while its old one is cut off");
    cluster.reconnect(victim);
    eprintln!("node {victim} back; {during} writes to shard {shard0} acked meanwhile, now led by {new_leader}");
    assert_ne!(new_leader, victim, "the cut-off node still leads shard {shard0}");
    assert!(
        during > 0,
        "no write to shard {shard0} was acknowledged while its old leader was cut off"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    finish(cluster, client, workload).await;
}

/// An operator's rolling restart (an upgrade, say): each node in turn gets SIGTERM, must exit 0
/// (a graceful stop hands its groups over first), and starts again on the same data and
/// address, while the client keeps writing. Writes must be acknowledged while each node is
/// down, and nothing acknowledged may be missing from any replica at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_keeps_acknowledging_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((cluster, client, workload)) = start(&tmp, "roll").await else {
        return;
    };

    for id in 1..=NODES {
        let before = workload.acked_where(|_| true);
        let code = cluster.stop(id);
        assert_eq!(
            code,
            "0",
            "node {id} did not stop cleanly on SIGTERM: {}",
            cluster.log_tail(id)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let while_down = workload.acked_where(|_| true) - before;
        cluster.start_again(id);
        eprintln!("node {id} restarted; {while_down} writes acknowledged while it was down");
        assert!(while_down > 0, "no write was acknowledged while node {id} was down");
        // The next node stops only once this one answers again, as an operator's script would
        // wait: otherwise two of three replicas could be down at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while client.node_status(&cluster.addr(id)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "node {id} did not come back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    finish(cluster, client, workload).await;
}
