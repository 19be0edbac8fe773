//! Helpers for in-process node tests: one-node and multi-node clusters with
//! real certificates, real QUIC and real fsync, and a real client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use plexus_actors::config::{GatewayLimits, PeerConfig, RaftTimings, TlsPaths};
use plexus_actors::{NodeConfig, NodeHandle};
use plexus_client::{Client, ClientConfig};

pub const TOKEN: &str = "test-token-0123456789";

/// The CA and one certificate per node id, written under `dir`.
pub fn write_cluster_certs(dir: &Path, ids: &[u64]) -> Vec<TlsPaths> {
    let ca = plexus_net::certs::make_ca("test").unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    ids.iter()
        .map(|id| {
            let node = plexus_net::certs::make_node_cert(&ca, *id, &[]).unwrap();
            let (cert, key) = (
                dir.join(format!("node-{id}.pem")),
                dir.join(format!("node-{id}-key.pem")),
            );
            std::fs::write(&cert, &node.cert_pem).unwrap();
            std::fs::write(&key, &node.key_pem).unwrap();
            TlsPaths {
                ca_cert: dir.join("ca.pem"),
                node_cert: cert,
                node_key: key,
            }
        })
        .collect()
}

/// Configs for nodes 1..=`nodes` on loopback under `dir` (certificates written there).
pub fn cluster_configs(
    dir: &Path,
    nodes: u64,
    shards: u32,
    replication: usize,
    raft: RaftTimings,
    fsync: bool,
) -> Vec<NodeConfig> {
    let ids: Vec<u64> = (1..=nodes).collect();
    let addrs: Vec<SocketAddr> = ids.iter().map(|_| free_addr()).collect();
    let tls = write_cluster_certs(dir, &ids);
    let peers: Vec<PeerConfig> = ids
        .iter()
        .zip(&addrs)
        .map(|(id, addr)| PeerConfig { id: *id, addr: *addr })
        .collect();
    ids.iter()
        .enumerate()
        .map(|(i, id)| NodeConfig {
            node_id: *id,
            listen: addrs[i],
            data_dir: dir.join(format!("data-{id}")),
            token: TOKEN.into(),
            shard_count: shards,
            replication,
            tls: tls[i].clone(),
            peers: peers.clone(),
            raft: raft.clone(),
            gateway: GatewayLimits::default(),
            feed: Default::default(),
            worker_threads: None,
            wal_task_yields: None,
            wal_zero_ahead_bytes: None,
            fsync,
            metrics_addr: None,
            scoring: Default::default(),
        })
        .collect()
}

/// Waits (up to 60 s) until every node knows a leader for each group it hosts.
pub async fn wait_for_cluster_leaders(nodes: &[NodeHandle]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes.iter().all(|n| n.all_groups_have_leaders()) {
        assert!(Instant::now() < deadline, "no leaders after 60s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback UDP address for a node of this test process, free when checked. It is picked below
/// the kernel's ephemeral range (32768 and up by default): a port from that range, freed after the
/// check, could be handed to any socket another test binds to port 0 (quinn's client endpoints do)
/// before the node binds it, which failed a CI run with "Address already in use". Below the
/// range only another pick could take it, and the counter keeps this process's picks distinct.
fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let salt = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (salt.wrapping_add(n) % 22_000) as u16;
        if let Ok(s) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            return s.local_addr().unwrap();
        }
    }
}

/// A one-node, `shards`-shard cluster config under `dir` (certificates written there), with
/// short election timeouts.
pub fn single_node_config(dir: &Path, shards: u32, raft: RaftTimings) -> NodeConfig {
    let raft = RaftTimings {
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        heartbeat_ms: 100,
        ..raft
    };
    cluster_configs(dir, 1, shards, 1, raft, true).remove(0)
}

/// Waits (up to 60 s) until `node` knows a leader for each group it hosts.
pub async fn wait_for_leaders(node: &NodeHandle) {
    wait_for_cluster_leaders(std::slice::from_ref(node)).await;
}

pub async fn client(cfg: &NodeConfig) -> Client {
    let ca_pem = std::fs::read_to_string(&cfg.tls.ca_cert).unwrap();
    Client::connect(ClientConfig::new(vec![cfg.listen.to_string()], ca_pem, TOKEN.into()))
        .await
        .unwrap()
}

/// Short election timeouts for tests that move leadership by hand, with the periodic leader
/// balancer off so that it cannot move groups behind the test's back.
pub fn quick_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 600,
        leader_balance_interval_ms: 0,
        ..Default::default()
    }
}

/// A running in-process cluster of 3-way replicated shards with fsync on.
pub struct TestCluster {
    pub nodes: Vec<NodeHandle>,
    seeds: Vec<String>,
    ca_pem: String,
}

impl TestCluster {
    /// Starts nodes 1..=`nodes` under `dir` and waits until every group has a leader.
    pub async fn start(dir: &Path, nodes: u64, shards: u32, raft: RaftTimings) -> Self {
        let cfgs = cluster_configs(dir, nodes, shards, 3, raft, true);
        let ca_pem = std::fs::read_to_string(&cfgs[0].tls.ca_cert).unwrap();
        let seeds = cfgs.iter().map(|c| c.listen.to_string()).collect();
        let mut started = Vec::new();
        for cfg in cfgs {
            started.push(plexus_actors::start_node(cfg).await.unwrap());
        }
        wait_for_cluster_leaders(&started).await;
        Self {
            nodes: started,
            seeds,
            ca_pem,
        }
    }

    /// A client seeded with every node.
    pub async fn client(&self) -> Client {
        Client::connect(ClientConfig::new(self.seeds.clone(), self.ca_pem.clone(), TOKEN.into()))
            .await
            .unwrap()
    }

    /// Stops every node gracefully.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

/// Groups `node` leads right now.
pub fn led_groups(node: &NodeHandle) -> std::collections::BTreeSet<u32> {
    node.registry
        .hosted_groups()
        .into_iter()
        .filter(|g| node.registry.get(*g).is_some_and(|r| r.is_leader()))
        .collect()
}
