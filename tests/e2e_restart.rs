//! Stop every node, start the cluster again from the same directory: all
//! data is there.

mod common;

use std::time::Duration;

use plexus_proto::{Cursor, Direction};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_all_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let port = common::base_port(2).to_string();
    let args = ["--nodes", "3", "--shards", "4", "--base-port", &port];
    let up = common::up(&dir, &args, Duration::from_secs(180));
    let c = common::client(&dir).await;
    let mut ids = Vec::new();
    for i in 0..30u64 {
        ids.push((
            i % 5,
            c.timeline_append(i % 5, format!("item-{i}").into_bytes())
                .await
                .unwrap(),
        ));
    }
    for v in 1..10u64 {
        c.follow(v, v + 100).await.unwrap();
    }
    c.filter_add("seen", vec![b"a".to_vec(), b"b".to_vec()]).await.unwrap();
    let before: Vec<_> = futures_pages(&c).await;
    c.close().await;
    // Every node serves Prometheus metrics on the address `plexus up` gave it. Each acknowledged
    // write (30 appends, 9 follows, 1 filter add) was answered `ok` by one node (a retry can add
    // more), and every node hosts all 5 groups (4 shards and the meta group) at replication 3.
    let mut writes_ok = 0.0;
    for id in 1..=3 {
        let text = common::scrape_metrics(&dir, id);
        writes_ok +=
            plexus_actors::metrics::sample(&text, r#"plexus_requests_total{op="write",outcome="ok"}"#).unwrap();
        let groups = text.lines().filter(|l| l.starts_with("plexus_shard_term{")).count();
        assert_eq!(groups, 5, "node {id} reports a term for each group it hosts");
        assert!(plexus_actors::metrics::sample(&text, "plexus_wal_fsyncs_total").unwrap() > 0.0);
    }
    assert!(writes_ok >= 40.0, "{writes_ok} writes counted ok, 40 acknowledged");
    up.stop();

    // Same directory, no size arguments: the same cluster comes back.
    let up = common::up(&dir, &[], Duration::from_secs(180));
    let c = common::client(&dir).await;
    let after: Vec<_> = futures_pages(&c).await;
    assert_eq!(before, after, "timelines differ after a full restart");
    for (owner, id) in &ids {
        let page = c.timeline_read(*owner, Cursor::Latest, 100).await.unwrap();
        assert!(page.entries.iter().any(|e| e.id == *id), "entry {id} of {owner} lost");
    }
    for v in 1..10u64 {
        assert!(c.has_edge(v, v + 100).await.unwrap(), "edge {v} lost");
        // The in-edge half travels through the source shard's outbox, which
        // survives the restart; it must arrive.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (ins, _) = c.neighbors(v + 100, Direction::In, None, 10).await.unwrap();
            if ins == vec![v] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "in-edge of {} never arrived: {ins:?}",
                v + 100
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let found = c
        .filter_contains("seen", vec![b"a".to_vec(), b"b".to_vec()])
        .await
        .unwrap();
    assert_eq!(found, vec![true, true]);

    // Whoever the restart left leading what, the leader balancer spreads the 5 groups (4 shards
    // and the meta group) to 2/2/1.
    let addrs: Vec<String> = c.shard_map().nodes.iter().map(|n| n.client_addr.clone()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts = Vec::new();
        for addr in &addrs {
            let st = c.node_status(addr).await.unwrap();
            counts.push(st.shards.iter().filter(|s| s.leader == Some(st.node_id)).count());
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        if max - min <= 1 && counts.iter().sum::<usize>() == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leaders not spread a minute after the restart: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.close().await;

    // `plexus bench` drives the restarted cluster on one client thread (its default) and on two,
    // and refuses a thread count of zero before it connects.
    let config = dir.join("client.toml");
    let bench = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("bench")
            .arg("--config")
            .arg(&config)
            .args(["--concurrency", "4", "--duration", "1", "--owners", "3", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    for extra in [
        &["--workload", "read"][..],
        &["--workload", "write", "--client-threads", "2"],
    ] {
        let out = bench(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "bench {extra:?}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["ops"].as_u64().unwrap() > 0, "bench {extra:?}: {report}");
        assert_eq!(report["errors"], 0, "bench {extra:?}: {report}");
    }
    let out = bench(&["--workload", "read", "--client-threads", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--client-threads must be in 1..=64"), "{stderr}");
    up.stop();
}

async fn futures_pages(c: &plexus_client::Client) -> Vec<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for owner in 0..5u64 {
        let page = c.timeline_read(owner, Cursor::Latest, 100).await.unwrap();
        out.push(page.entries.into_iter().map(|e| (e.id, e.item)).collect());
    }
    out
}
