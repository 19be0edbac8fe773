//! Snapshots compact the log, and a node restarted from disk recovers from
//! its snapshot plus the log after it, with nothing lost.

mod common;

use std::time::{Duration, Instant};

use plexus_actors::config::RaftTimings;
use plexus_actors::start_node;
use plexus_proto::{shard_for_key, Cursor, ShardKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_restart_recovers_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let raft = RaftTimings {
        snapshot_logs_since_last: 50,
        logs_kept_behind_snapshot: 10,
        ..RaftTimings::default()
    };
    let cfg = common::single_node_config(tmp.path(), 1, raft);
    let node = start_node(cfg.clone()).await.unwrap();
    common::wait_for_leaders(&node).await;
    let client = common::client(&cfg).await;

    // 300 entries over 3 owners: the 800-entry cap never trims, so all must survive.
    let mut written = Vec::new();
    for i in 0..300u64 {
        let owner = i % 3;
        written.push((
            owner,
            client
                .timeline_append(owner, format!("e{i}").into_bytes())
                .await
                .unwrap(),
        ));
    }
    let shard = shard_for_key(&ShardKey::Id(0), 1);
    let replica = node.registry.get(shard).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (snap, purged) = {
            let m = replica.raft.metrics();
            let m = m.borrow();
            (m.snapshot.map(|l| l.index), m.purged.map(|l| l.index))
        };
        if snap.unwrap_or(0) >= 250 && purged.unwrap_or(0) >= 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot/purge: snapshot {snap:?}, purged {purged:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cfg.data_dir.join("snapshots").read_dir().unwrap().count() > 0,
        "no snapshot file on disk"
    );
    client.close().await;
    node.shutdown().await;

    // Restart from disk: state comes from the snapshot plus the log tail. The
    // old endpoint's UDP port is released when its last connection task ends,
    // a moment after shutdown returns, so binding it again may need a retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let node = loop {
        match start_node(cfg.clone()).await {
            Ok(n) => break n,
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("restart failed: {e}"),
        }
    };
    common::wait_for_leaders(&node).await;
    let client = common::client(&cfg).await;
    for owner in 0..3u64 {
        let page = client.timeline_read(owner, Cursor::Latest, 1000).await.unwrap();
        let mut got: Vec<u64> = page.entries.iter().map(|e| e.id).collect();
        got.reverse();
        let want: Vec<u64> = written.iter().filter(|(o, _)| *o == owner).map(|(_, id)| *id).collect();
        assert_eq!(got, want, "timeline {owner} differs after restart");
    }
    client.close().await;
    node.shutdown().await;
}
