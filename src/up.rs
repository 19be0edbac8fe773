//! `plexus up`: a local development cluster, one OS process per node.
//!
//! The first run creates `DIR/cluster.toml` (nodes, ports, token, shard count),
//! the CA and node certificates under `DIR/certs`, one `DIR/node-N/node.toml`
//! per node and `DIR/client.toml`. Later runs read `cluster.toml` and bring
//! the same cluster back with its data. The command prints a line containing
//! `ready` once every shard has a leader, and on SIGINT/SIGTERM stops its
//! nodes with SIGTERM (SIGKILL after a grace period).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexus_actors::NodeConfig;
use plexus_client::{Client, ClientConfig};
use plexus_net::certs::{make_ca, make_node_cert};
use plexus_proto::NodeStatus;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

use crate::certs::{read_pair, write_pair};
use crate::cli::{runtime, CliResult, UpArgs};

/// How long `up` waits for every shard to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long stopping nodes get before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Largest cluster `up` will start on one machine.
const LOCAL_NODES_MAX: usize = 16;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClusterFile {
    pub shard_count: u32,
    pub replication: usize,
    pub token: String,
    pub nodes: Vec<NodeEntry>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NodeEntry {
    pub id: u64,
    pub addr: SocketAddr,
}

#[derive(Serialize)]
struct NodeToml<'a> {
    node_id: u64,
    listen: SocketAddr,
    data_dir: &'a str,
    token: &'a str,
    shard_count: u32,
    replication: usize,
    tls: TlsToml,
    peers: &'a [NodeEntry],
    metrics_addr: SocketAddr,
    /// 1: each node on a single-threaded runtime, since the nodes share this machine's cores.
    worker_threads: usize,
}

#[derive(Serialize)]
struct TlsToml {
    ca_cert: String,
    node_cert: String,
    node_key: String,
}

#[derive(Serialize)]
struct ClientToml {
    seeds: Vec<String>,
    ca_cert: String,
    token: String,
}

fn free_ports(base: u16, n: usize) -> CliResult<Vec<u16>> {
    let mut out = Vec::new();
    let mut port = base;
    while out.len() < n {
        if port == u16::MAX {
            return Err(format!("no {n} free UDP ports at or above {base}"));
        }
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
        port += 1;
    }
    Ok(out)
}

/// The first TCP port at or above `from` that is free on loopback and not in `taken`: a node's
/// metrics listener goes on the TCP port with its QUIC (UDP) port's number when that is free.
fn free_tcp_port(from: u16, taken: &[u16]) -> CliResult<u16> {
    (from..u16::MAX)
        .find(|p| !taken.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or_else(|| format!("no free TCP port at or above {from} for a metrics listener"))
}

fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write(path: &Path, text: &str) -> CliResult {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Creates the cluster files on the first run.
fn create(args: &UpArgs) -> CliResult<ClusterFile> {
    let n = args.nodes.unwrap_or(3);
    if n == 0 || n > LOCAL_NODES_MAX {
        return Err(format!("--nodes must be in 1..={LOCAL_NODES_MAX}"));
    }
    let replication = args.replication.unwrap_or(n.min(3));
    if replication == 0 || replication > n {
        return Err(format!("--replication must be in 1..={n}"));
    }
    let shard_count = args.shards.unwrap_or(64);
    if shard_count == 0 {
        return Err("--shards must be at least 1".into());
    }
    let ports = free_ports(args.base_port, n)?;
    let cluster = ClusterFile {
        shard_count,
        replication,
        token: random_token(),
        nodes: ports
            .iter()
            .enumerate()
            .map(|(i, p)| NodeEntry {
                id: i as u64 + 1,
                addr: SocketAddr::from(([127, 0, 0, 1], *p)),
            })
            .collect(),
    };
    let certs = args.dir.join("certs");
    let ca = make_ca("plexus-local").map_err(|e| e.to_string())?;
    write_pair(&certs, "ca", &ca)?;
    for node in &cluster.nodes {
        let cert = make_node_cert(&ca, node.id, &[]).map_err(|e| e.to_string())?;
        write_pair(&certs, &format!("node-{}", node.id), &cert)?;
    }
    let mut metrics_ports = Vec::new();
    for node in &cluster.nodes {
        metrics_ports.push(free_tcp_port(node.addr.port(), &metrics_ports)?);
    }
    for (node, metrics_port) in cluster.nodes.iter().zip(&metrics_ports) {
        let dir = args.dir.join(format!("node-{}", node.id));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let cfg = NodeToml {
            node_id: node.id,
            listen: node.addr,
            data_dir: "data",
            token: &cluster.token,
            shard_count,
            replication,
            tls: TlsToml {
                ca_cert: "../certs/ca.pem".into(),
                node_cert: format!("../certs/node-{}.pem", node.id),
                node_key: format!("../certs/node-{}-key.pem", node.id),
            },
            peers: &cluster.nodes,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], *metrics_port)),
            worker_threads: 1,
        };
        write(
            &dir.join("node.toml"),
            &toml::to_string(&cfg).map_err(|e| e.to_string())?,
        )?;
    }
    let client = ClientToml {
        seeds: cluster.nodes.iter().map(|n| n.addr.to_string()).collect(),
        ca_cert: "certs/ca.pem".into(),
        token: cluster.token.clone(),
    };
    write(
        &args.dir.join("client.toml"),
        &toml::to_string(&client).map_err(|e| e.to_string())?,
    )?;
    // cluster.toml is written last: its presence means the directory is complete.
    write(
        &args.dir.join("cluster.toml"),
        &toml::to_string(&cluster).map_err(|e| e.to_string())?,
    )?;
    Ok(cluster)
}

fn load_or_create(args: &UpArgs) -> CliResult<ClusterFile> {
    let path = args.dir.join("cluster.toml");
    if !path.exists() {
        if args.dir.join("certs").exists() {
            return Err(format!(
                "{} holds a half-created cluster (no cluster.toml); remove the directory or pick another --dir",
                args.dir.display()
            ));
        }
        std::fs::create_dir_all(&args.dir).map_err(|e| format!("create {}: {e}", args.dir.display()))?;
        return create(args);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let cluster: ClusterFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(n) = args.nodes {
        if n != cluster.nodes.len() {
            return Err(format!(
                "the cluster in {} has {} nodes; changing the node count of an existing cluster is not supported",
                args.dir.display(),
                cluster.nodes.len()
            ));
        }
    }
    // Fail early on a directory whose certificates went missing.
    read_pair(&args.dir.join("certs"), "ca")?;
    Ok(cluster)
}

struct NodeProc {
    id: u64,
    child: Child,
    log: PathBuf,
}

fn spawn_node(dir: &Path, id: u64) -> CliResult<NodeProc> {
    use std::os::unix::process::CommandExt;
    let node_dir = dir.join(format!("node-{id}"));
    let log = node_dir.join("node.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("locate plexus binary: {e}"))?;
    let child = Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(node_dir.join("node.toml"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Own process group: a terminal's Ctrl-C reaches `up`, which stops nodes in order.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start node {id}: {e}"))?;
    Ok(NodeProc { id, child, log })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn check_alive(procs: &mut [NodeProc]) -> CliResult {
    for p in procs.iter_mut() {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!(
                "node {} exited ({status}); last log lines from {}:\n{}",
                p.id,
                p.log.display(),
                tail(&p.log, 15)
            ));
        }
    }
    Ok(())
}

/// Shards (and the meta group) that have a leader, or `None` while some
/// node does not answer yet.
async fn groups_with_leader(client: &Client, cluster: &ClusterFile) -> Option<BTreeSet<u32>> {
    let mut statuses = Vec::with_capacity(cluster.nodes.len());
    for node in &cluster.nodes {
        statuses.push(client.node_status(&node.addr.to_string()).await.ok()?);
    }
    Some(led_groups(&statuses))
}

/// The groups whose leader says so itself, at the highest term any replica
/// reports. A follower's word is not enough: a node restarted from disk
/// still names the leader of its last committed vote before any election
/// has run, and a node restored as leader from its own vote is no leader
/// once a peer has moved to a higher term.
fn led_groups(statuses: &[NodeStatus]) -> BTreeSet<u32> {
    let mut top_term: BTreeMap<u32, u64> = BTreeMap::new();
    for s in statuses.iter().flat_map(|n| &n.shards) {
        let t = top_term.entry(s.shard).or_insert(0);
        *t = (*t).max(s.term);
    }
    statuses
        .iter()
        .flat_map(|n| n.shards.iter().map(move |s| (n.node_id, s)))
        .filter(|(id, s)| s.leader == Some(*id) && top_term.get(&s.shard) == Some(&s.term))
        .map(|(_, s)| s.shard)
        .collect()
}

fn stop_all(procs: &mut [NodeProc]) {
    for p in procs.iter() {
        // SAFETY: kill(2) on a child pid we spawned and have not reaped.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("node {} did not stop in {STOP_GRACE:?}; killing it", p.id);
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

pub fn run(args: UpArgs) -> CliResult {
    let cluster = load_or_create(&args)?;
    let mut procs = Vec::new();
    for node in &cluster.nodes {
        match spawn_node(&args.dir, node.id) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop_all(&mut procs);
                return Err(e);
            }
        }
    }
    println!(
        "starting {} nodes ({} shards, replication {}) in {}",
        cluster.nodes.len(),
        cluster.shard_count,
        cluster.replication,
        args.dir.display()
    );
    let rt = runtime()?;
    let result = rt.block_on(supervise(&args, &cluster, &mut procs));
    stop_all(&mut procs);
    if result.is_ok() {
        println!("stopped {} nodes", procs.len());
    }
    result
}

async fn supervise(args: &UpArgs, cluster: &ClusterFile, procs: &mut [NodeProc]) -> CliResult {
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signal handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signal handler: {e}"))?;
    let client_toml = args.dir.join("client.toml");
    let started = Instant::now();
    let expected = cluster.shard_count as usize + 1; // every shard plus the meta group
    let mut client: Option<Client> = None;
    loop {
        check_alive(procs)?;
        if client.is_none() {
            if let Ok(cfg) = ClientConfig::load(&client_toml) {
                client = Client::connect(cfg).await.ok();
            }
        }
        if let Some(c) = &client {
            if let Some(led) = groups_with_leader(c, cluster).await {
                if led.len() >= expected {
                    break;
                }
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "cluster not ready after {READY_TIMEOUT:?}; see {}/node-*/node.log",
                args.dir.display()
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
    println!(
        "ready: {} nodes, every one of {} shards has a leader ({:.1}s); client config: {}",
        cluster.nodes.len(),
        cluster.shard_count,
        started.elapsed().as_secs_f64(),
        client_toml.display()
    );
    let metrics: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|n| {
            let cfg = NodeConfig::load(&args.dir.join(format!("node-{}", n.id)).join("node.toml")).ok()?;
            Some(format!("node {} http://{}/metrics", n.id, cfg.metrics_addr?))
        })
        .collect();
    if !metrics.is_empty() {
        println!("metrics: {}", metrics.join(", "));
    }
    if let Some(c) = client {
        c.close().await;
    }
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut reported = BTreeSet::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = poll.tick() => {
                for p in procs.iter_mut() {
                    if reported.contains(&p.id) {
                        continue;
                    }
                    if let Ok(Some(status)) = p.child.try_wait() {
                        eprintln!("node {} exited unexpectedly ({status}); see {}", p.id, p.log.display());
                        reported.insert(p.id);
                    }
                }
            }
        }
    }
    println!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use plexus_proto::ReplicaStatus;

    use super::*;

    fn node(id: u64, shards: &[(u32, Option<u64>, u64)]) -> NodeStatus {
        NodeStatus {
            node_id: id,
            pid: 1,
            addr: String::new(),
            scoring_backend: None,
            shards: shards
                .iter()
                .map(|&(shard, leader, term)| ReplicaStatus {
                    shard,
                    leader,
                    term,
                    replicas: vec![1, 2, 3],
                    applied_index: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn a_group_is_led_only_when_its_leader_says_so_at_the_top_term() {
        let statuses = [
            // Shard 0: node 1 leads at term 3 and the others agree.
            // Shard 1: the followers name node 1 from an old vote, but node 1 does not lead it.
            // Shard 2: node 2 restored itself as leader at term 4, but node 3 is at term 5.
            node(1, &[(0, Some(1), 3), (1, None, 2), (2, None, 4)]),
            node(2, &[(0, Some(1), 3), (1, Some(1), 2), (2, Some(2), 4)]),
            node(3, &[(0, Some(1), 3), (1, Some(1), 2), (2, None, 5)]),
        ];
        assert_eq!(led_groups(&statuses), BTreeSet::from([0]));
    }

    #[test]
    fn no_status_no_leaders() {
        assert!(led_groups(&[]).is_empty());
        assert!(led_groups(&[node(1, &[(0, Some(2), 1)])]).is_empty());
    }
}
