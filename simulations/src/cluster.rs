//! The simulated cluster: real node cores on the simulated network and disks, started, crashed
//! and restarted by the simulator.
//!
//! What it is: one `SimDisk` per node (it outlives the node's crashes), the node configs, and the
//! node lifecycle. A node runs `plexus_actors::start_core` — registry, supervision tree, openraft
//! groups, gateway — with the sim transport, a skewed virtual clock, its `SimDisk` and a WAL
//! writer that runs as a task. A crash takes the node off the network, crashes its disk (only
//! durable bytes survive) and then stops its replicas in group order; a restart recovers from
//! the same disk.
//!
//! What it is not: the fault schedule (`faults`) or the workload (`workload`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plexus_actors::clock::Clock;
use plexus_actors::config::{FeedConfig, GatewayLimits, PeerConfig, RaftTimings, TlsPaths};
use plexus_actors::restart::RestartPolicy;
use plexus_actors::{start_core, NodeConfig, NodeCore, NodeSeams};
use plexus_empi_service::EmpiService;
use plexus_feed::{FeedService, FeedSettings};
use plexus_raft::sim_hooks::{Canary, SimHooks};
use plexus_raft::wal::{WalOptions, WriterMode};

use crate::checkers::committed_entries::AppliedEntries;

use crate::disk::SimDisk;
use crate::net::SimNet;
use crate::params::{salt, SimParams};
use crate::trace::Trace;

/// The nodes' `[feed]` settings for a run.
pub fn feed_config(params: &SimParams) -> FeedConfig {
    FeedConfig {
        pulled_followers_min: params.feed.pulled_followers_min,
        follow_backfill_posts: crate::feed_workload::FEED_BACKFILL_POSTS,
        // Small windows, so ranked reads page through several of them.
        rank_candidates_max: 16,
        ..FeedConfig::default()
    }
}

/// Wall-clock time as a simulated node sees it: virtual time plus the node's skew.
struct SimClock {
    start: tokio::time::Instant,
    skew_ms: i64,
}

/// Unix time (ms) at which every simulation starts, so timeline ids look like real ones.
const EPOCH_MS: u64 = 1_700_000_000_000;

impl Clock for SimClock {
    fn now_millis(&self) -> u64 {
        let virtual_ms = EPOCH_MS + self.start.elapsed().as_millis() as u64;
        virtual_ms.saturating_add_signed(self.skew_ms)
    }
}

struct SimNode {
    cfg: NodeConfig,
    disk: SimDisk,
    core: Option<Arc<NodeCore>>,
    /// Set when the node refused to start (corruption detected): it stays down for the run.
    refused: Option<String>,
}

/// How long a crashed replica's shutdown may take before the simulator stops waiting.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A running simulated cluster.
pub struct Cluster {
    /// The network.
    pub net: Arc<SimNet>,
    trace: Trace,
    nodes: BTreeMap<u64, SimNode>,
    start: tokio::time::Instant,
    skew_ms: BTreeMap<u64, i64>,
    canary: Option<Canary>,
    applied: AppliedEntries,
    shard_count: u32,
    /// Times groups went quiet on node incarnations that have crashed since.
    quieted_by_crashed: u64,
}

fn fake_addr(id: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, (id >> 8) as u8, id as u8], 7000))
}

impl Cluster {
    /// Builds (without starting) the cluster of `params`; every node runs with `canary` and
    /// reports what it applies and every snapshot it builds, installs or loads to `applied`.
    pub fn new(
        params: &SimParams,
        net: Arc<SimNet>,
        trace: Trace,
        canary: Option<Canary>,
        applied: AppliedEntries,
    ) -> Self {
        let peers: Vec<PeerConfig> = (1..=params.nodes)
            .map(|id| PeerConfig {
                id,
                addr: fake_addr(id),
            })
            .collect();
        let mut nodes = BTreeMap::new();
        let mut skew_ms = BTreeMap::new();
        // Read leases on, as in production: half the shortest election timeout of any node, the
        // longest a lease may safely be when the nodes' timeouts differ.
        let read_lease_ms = params.election_ms.iter().min().copied().unwrap_or(0) / 2;
        for id in 1..=params.nodes {
            let i = (id - 1) as usize;
            let election = params.election_ms[i];
            let cfg = NodeConfig {
                node_id: id,
                listen: fake_addr(id),
                data_dir: PathBuf::from(format!("/sim/node-{id}")),
                token: "simulated-cluster-token".into(),
                shard_count: params.shard_count,
                replication: params.replication,
                tls: TlsPaths {
                    ca_cert: PathBuf::from("/sim/none"),
                    node_cert: PathBuf::from("/sim/none"),
                    node_key: PathBuf::from("/sim/none"),
                },
                peers: peers.clone(),
                raft: RaftTimings {
                    heartbeat_ms: params.heartbeat_ms,
                    election_timeout_min_ms: election,
                    election_timeout_max_ms: election + 1,
                    snapshot_logs_since_last: params.snapshot_logs_since_last,
                    logs_kept_behind_snapshot: params.logs_kept_behind_snapshot,
                    read_lease_ms,
                    // Crashes are abrupt here; the handover runs only in `NodeHandle::shutdown`.
                    handover_timeout_ms: 0,
                    // The balancer runs only under `start_node`; the simulator starts cores.
                    leader_balance_interval_ms: 0,
                    quiesce_after_ms: params.quiesce_after_ms,
                },
                gateway: GatewayLimits {
                    requests_in_flight_max: 1_024,
                    request_timeout_ms: params.request_timeout_ms,
                },
                feed: feed_config(params),
                worker_threads: None,
                wal_task_yields: None,
                wal_zero_ahead_bytes: None,
                fsync: true,
                metrics_addr: None,
                scoring: Default::default(),
            };
            let disk = SimDisk::new(params.seed ^ (salt::DISK + id), params.disk.clone());
            nodes.insert(
                id,
                SimNode {
                    cfg,
                    disk,
                    core: None,
                    refused: None,
                },
            );
            skew_ms.insert(id, params.clock_skew_ms[i]);
        }
        Self {
            net,
            trace,
            nodes,
            start: tokio::time::Instant::now(),
            skew_ms,
            canary,
            applied,
            shard_count: params.shard_count,
            quieted_by_crashed: 0,
        }
    }

    /// Virtual shards of the cluster.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Blocks every link between `node` and the other nodes, both ways (clients still reach
    /// it); `net.heal()` undoes it.
    pub fn isolate(&self, node: u64) {
        for other in self.ids() {
            if other != node {
                self.net.block(node, other);
                self.net.block(other, node);
            }
        }
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Every node's client address (the one its shard map reports) → its id.
    pub fn client_addrs(&self) -> BTreeMap<String, u64> {
        self.nodes.keys().map(|id| (fake_addr(*id).to_string(), *id)).collect()
    }

    /// `op` answered from the applied state of the first running replica of `shard` (no read
    /// index: for the checks after the cluster has converged); `None` if none answers it.
    pub fn read_applied(&self, shard: u32, op: &plexus_proto::ReadOp) -> Option<plexus_proto::Reply> {
        self.ids().into_iter().filter_map(|id| self.core(id)).find_map(|core| {
            let replica = core.registry.get(shard)?;
            let state = replica.state().read().ok()?;
            state.read(op).ok()
        })
    }

    /// The registry of `id` while it runs (what a handover fault drives).
    pub fn registry(&self, id: u64) -> Option<std::sync::Arc<plexus_actors::registry::Registry>> {
        self.nodes
            .get(&id)
            .and_then(|n| n.core.as_ref())
            .map(|c| c.registry.clone())
    }

    /// Whether `id` is running.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.core.is_some())
    }

    /// Whether `id` refused to start for the rest of the run, and why.
    pub fn refused(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).and_then(|n| n.refused.as_deref())
    }

    /// The core of `id`, if it runs.
    pub fn core(&self, id: u64) -> Option<Arc<NodeCore>> {
        self.nodes.get(&id).and_then(|n| n.core.clone())
    }

    /// The disk of `id`.
    pub fn disk(&self, id: u64) -> Option<&SimDisk> {
        self.nodes.get(&id).map(|n| &n.disk)
    }

    /// Starts `id` from its disk. A node that finds its storage corrupt refuses to start and
    /// stays down; that is returned as `Err` with the reason.
    pub async fn start(&mut self, id: u64) -> Result<(), String> {
        let Some(node) = self.nodes.get(&id) else {
            return Err(format!("no node {id}"));
        };
        if node.core.is_some() {
            return Ok(());
        }
        let epoch = self.net.next_epoch(id);
        let seams = NodeSeams {
            transport: self.net.transport(id, epoch),
            clock: Arc::new(SimClock {
                start: self.start,
                skew_ms: self.skew_ms.get(&id).copied().unwrap_or(0),
            }),
            disk: node.disk.handle(),
            wal_writer: WriterMode::Task,
            wal_options: WalOptions {
                // Small segments so that rolling, checkpoints and deletion all happen.
                segment_bytes_max: 256 << 10,
                batch_linger_us: 0,
                ..WalOptions::default()
            },
            scoring: false,
            restart_policy: RestartPolicy::default(),
            sim_hooks: SimHooks {
                canary: self.canary,
                on_apply: Some(self.applied.apply_observer(id)),
                on_snapshot: Some(self.applied.snapshot_observer(id)),
            },
            workloads: vec![
                Arc::new(FeedService::new(FeedSettings::from(&node.cfg.feed))),
                Arc::new(EmpiService::new()),
            ],
        };
        let cfg = node.cfg.clone();
        match start_core(&cfg, fake_addr(id).to_string(), seams).await {
            Ok(core) => {
                let core = Arc::new(core);
                self.net.attach(id, epoch, core.clone());
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.core = Some(core);
                }
                self.trace.event(format_args!("node {id} started epoch={epoch}"));
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                self.trace.event(format_args!("node {id} refused to start: {reason}"));
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.refused = Some(reason.clone());
                }
                Err(reason)
            }
        }
    }

    /// Times a group went quiet on its leader, summed over every node incarnation of the run.
    pub fn quieted_total(&self) -> u64 {
        let running: u64 = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.quiet_stats().quieted_total)
            .sum();
        self.quieted_by_crashed + running
    }

    /// Crashes `id`: off the network, disk crashed (unsynced bytes lost or torn), replicas
    /// stopped in group order, supervision tree stopped.
    pub async fn crash(&mut self, id: u64) {
        self.crash_all(&[id]).await;
    }

    /// Crashes every node of `ids` at one instant (a power cut): all of them go off the network
    /// and lose their unsynced bytes before any of them is stopped, so none can fsync or send
    /// in between; then each is stopped as `crash` does.
    pub async fn crash_all(&mut self, ids: &[u64]) {
        let mut cut = Vec::new();
        for &id in ids {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let Some(core) = node.core.take() else {
                continue;
            };
            self.net.detach(id);
            let report = node.disk.crash();
            self.trace.event(format_args!(
                "node {id} crashed lost_bytes={} torn_bytes={} lost_files={}",
                report.lost_bytes, report.torn_bytes, report.lost_files
            ));
            self.quieted_by_crashed += core.quiet_stats().quieted_total;
            cut.push(core);
        }
        for core in cut {
            // Stop replicas one at a time in group order before the supervisor (whose children
            // are kept in a randomly seeded map) gets to them.
            for replica in core.registry.all() {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, replica.shutdown()).await;
            }
            core.stop();
        }
    }
}
