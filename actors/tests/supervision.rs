//! A panicking shard actor is restarted by its supervisor and recovers its
//! replica from the WAL and snapshot with nothing committed lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use plexus_actors::config::{GatewayLimits, PeerConfig, RaftTimings, TlsPaths};
use plexus_actors::{start_node, NodeConfig};
use plexus_client::{Client, ClientConfig};
use plexus_proto::{shard_for_key, Cursor, ShardKey};

fn write_certs(dir: &std::path::Path) -> TlsPaths {
    let ca = plexus_net::certs::make_ca("test").unwrap();
    let node = plexus_net::certs::make_node_cert(&ca, 1, &[]).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("node.pem"), &node.cert_pem).unwrap();
    std::fs::write(dir.join("node-key.pem"), &node.key_pem).unwrap();
    TlsPaths {
        ca_cert: dir.join("ca.pem"),
        node_cert: dir.join("node.pem"),
        node_key: dir.join("node-key.pem"),
    }
}

fn free_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_shard_actor_restarts_without_losing_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let tls = write_certs(tmp.path());
    let cfg = NodeConfig {
        node_id: 1,
        listen: addr,
        data_dir: tmp.path().join("data"),
        token: "test-token-0123456789".into(),
        shard_count: 4,
        replication: 1,
        tls: tls.clone(),
        peers: vec![PeerConfig { id: 1, addr }],
        raft: RaftTimings {
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_ms: 100,
            ..Default::default()
        },
        gateway: GatewayLimits::default(),
        fsync: true,
    };
    let node = start_node(cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.all_groups_have_leaders() {
        assert!(Instant::now() < deadline, "no leaders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca_pem = std::fs::read_to_string(&tls.ca_cert).unwrap();
    let client = Client::connect(ClientConfig::new(
        vec![addr.to_string()],
        ca_pem,
        "test-token-0123456789".into(),
    ))
    .await
    .unwrap();
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
