//! Node assembly: storage, endpoint, registry and the supervision tree.
//!
//! ```text
//! NodeSupervisor ─┬─ ShardSupervisor(g) ── ShardActor(g)   one per hosted group
//!                 ├─ GatewayActor                            client connections
//!                 └─ ScoringActor × score_actors             batched kernel work
//! ```
//! `start_node` binds the QUIC endpoint, starts the node's core over it and
//! only then serves peers and clients.
//!
//! The core (`start_core`: WAL recovery, registry, supervision tree, gateway)
//! knows nothing of QUIC: it takes its seams — the Raft transport, the clock,
//! the disk and where the WAL writer runs — as `NodeSeams`, and answers
//! client requests (`NodeCore::execute`) and peer messages
//! (`NodeCore::handle_peer`) through the same code the endpoint calls. That is
//! how the simulator runs real nodes on a simulated network and disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use plexus_net::{ClientHandler, NetLimits, NodeEndpoint, PeerHandler, TlsMaterial};
use plexus_proto::{NodeId, Request, Response};
use plexus_raft::network::{encode, PeerRequest, RaftTransport};
use plexus_raft::replica::{open_log, Replica, ReplicaOptions};
use plexus_raft::sim_hooks::SimHooks;
use plexus_raft::wal::{Disk, GroupLog, OsDisk, SnapshotStore, Wal, WalOptions, WriterMode};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// How long a supervisor waits for its children to stop.
const CHILD_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a stopping node waits for its peers to acknowledge its stop notice, in milliseconds.
const STOP_NOTICE_WAIT_MS: u64 = 300;
/// How long a stopping node that leads groups waits, at most, for its peers' own stop notices
/// before it hands those groups over, in milliseconds. When a whole cluster is stopped at once
/// (`plexus up`, `docker compose stop`, a fleet-wide `systemctl stop`) the signals reach the
/// nodes a few milliseconds apart. A leader that handed over at once would ask a peer that had
/// not yet seen its own signal to stand; that peer would vote for itself and stop moments later,
/// its election unfinished. On the next start that vote outranks the old leader, and each group
/// it touched waits out an election timeout: `plexus up` was ready 1-2.5 s after a restart
/// instead of 0.1-0.4 s. The wait ends as soon as every peer has announced its stop, so only a
/// node stopping alone (a rolling restart) pays all of it.
pub const STOP_SETTLE_MS: u64 = 150;
/// How often the settle wait looks at the peers' stop notices, in milliseconds.
const STOP_SETTLE_POLL_MS: u64 = 5;

use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::gateway::{Gateway, GatewayActor, GatewayMsg, GatewaySlot};
use crate::handover::{hand_over_all, HandoverReport};
use crate::peer::{PeerService, QuicTransport};
use crate::quiesce::{Quiescence, QuietStats};
use crate::registry::Registry;
use crate::restart::RestartPolicy;
use crate::scoring::{ScoringLimits, ScoringPool};
use crate::shard::{ShardArgs, ShardSupervisor, SupervisorMsg};
use crate::workload::Workloads;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is unusable or locked by another process.
    #[error("data directory {0}: {1}")]
    DataDir(String, String),
    /// The WAL or snapshots could not be opened (corruption included).
    #[error("storage: {0}")]
    Storage(String),
    /// TLS material could not be read.
    #[error("tls: {0}")]
    Tls(String),
    /// The endpoint could not be bound.
    #[error("network: {0}")]
    Net(String),
    /// The supervision tree failed to start.
    #[error("actors: {0}")]
    Actors(String),
    /// The scoring model (`[scoring] model`) could not be read or is not a GraphSAGE model.
    #[error("scoring model {0}: {1}")]
    Model(String, String),
}

/// The GraphSAGE model `[scoring] model` names, if any: read and checked before anything else
/// starts, so a bad file stops the node with its reason instead of failing every ranked read.
pub fn load_model(cfg: &crate::config::ScoringConfig) -> Result<Option<plexus_kernels::SageModel>, NodeError> {
    let Some(path) = &cfg.model else {
        return Ok(None);
    };
    let err = |e: String| NodeError::Model(path.display().to_string(), e);
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let model = plexus_kernels::weights::load_sage(&bytes, cfg.model_prefix.as_deref(), plexus_kernels::AggOp::Mean)
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(
        path = %path.display(),
        layers = model.layers.len(),
        in_dim = model.layers.first().map_or(0, |l| l.in_dim),
        out_dim = model.layers.last().map_or(0, |l| l.out_dim),
        "scoring model loaded"
    );
    Ok(Some(model))
}

/// Messages to the node supervisor.
pub enum NodeMsg {
    /// Inject a panic into a shard actor (tests).
    InjectPanic(u32),
}

struct NodeArgs {
    registry: Arc<Registry>,
    wal: Wal,
    recovered: BTreeMap<u32, GroupLog>,
    snapshots: Arc<SnapshotStore>,
    opts: ReplicaOptions,
    policy: RestartPolicy,
    gateway_slot: GatewaySlot,
}

struct NodeSupervisor;

struct NodeState {
    shards: BTreeMap<u32, ActorRef<SupervisorMsg>>,
    registry: Arc<Registry>,
    gateway_slot: GatewaySlot,
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(&self, myself: ActorRef<NodeMsg>, mut args: NodeArgs) -> Result<NodeState, ActorProcessingErr> {
        let mut shards = BTreeMap::new();
        for group in args.registry.hosted_groups() {
            let log = open_log(group, &args.wal, args.recovered.remove(&group).unwrap_or_default())?;
            let shard_args = ShardArgs {
                group,
                registry: args.registry.clone(),
                log,
                snapshots: args.snapshots.clone(),
                opts: args.opts.clone(),
            };
            let (sup, _) = Actor::spawn_linked(
                None,
                ShardSupervisor,
                (shard_args, args.policy.clone()),
                myself.get_cell(),
            )
            .await?;
            shards.insert(group, sup);
        }
        let (gw, _) = Actor::spawn_linked(None, GatewayActor, (), myself.get_cell()).await?;
        if let Ok(mut slot) = args.gateway_slot.write() {
            *slot = Some(gw);
        }
        if let Some(pool) = args.registry.scoring() {
            pool.spawn_actors(myself.get_cell()).await?;
        }
        Ok(NodeState {
            shards,
            registry: args.registry,
            gateway_slot: args.gateway_slot,
        })
    }

    async fn handle(&self, _me: ActorRef<NodeMsg>, msg: NodeMsg, st: &mut NodeState) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::InjectPanic(group) => {
                if let Some(s) = st.shards.get(&group) {
                    let _ = s.cast(SupervisorMsg::InjectPanic);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<NodeMsg>, _st: &mut NodeState) -> Result<(), ActorProcessingErr> {
        // ractor does not stop linked children with their supervisor: stop
        // them (and so their replicas' Raft tasks) before this actor is gone.
        myself
            .stop_children_and_wait(Some("supervisor stopping".into()), Some(CHILD_STOP_WAIT))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let gateway_failed = st
                .gateway_slot
                .read()
                .ok()
                .and_then(|g| g.as_ref().map(|g| g.get_id() == cell.get_id()))
                .unwrap_or(false);
            let scoring = st
                .registry
                .scoring()
                .and_then(|p| p.slot_of(cell.get_id()).map(|slot| (p.clone(), slot)));
            if let Some((pool, slot)) = scoring {
                tracing::error!(error = %err, slot, "scoring actor failed; restarting it");
                pool.restart(slot, myself.get_cell()).await?;
            } else if gateway_failed {
                tracing::error!(error = %err, "gateway actor failed; restarting it");
                let (gw, _) = Actor::spawn_linked(None, GatewayActor, (), myself.get_cell()).await?;
                if let Ok(mut slot) = st.gateway_slot.write() {
                    *slot = Some(gw);
                }
            } else {
                // A shard supervisor only fails if its child could not even be
                // (re)opened; the shard stays down here and the node serves the rest.
                tracing::error!(error = %err, "shard supervisor failed; its shard is down on this node");
            }
        }
        Ok(())
    }
}

/// What a node's core runs on. Production passes the QUIC transport, the
/// system clock, `OsDisk` and a writer thread; the simulator passes its own.
pub struct NodeSeams {
    /// How the node's replicas reach their peers.
    pub transport: Arc<dyn RaftTransport>,
    /// Wall-clock time for stamping commands.
    pub clock: Arc<dyn Clock>,
    /// Where the WAL and the snapshots live.
    pub disk: Arc<dyn Disk>,
    /// Where the WAL writer runs.
    pub wal_writer: WriterMode,
    /// WAL tuning.
    pub wal_options: WalOptions,
    /// Whether to start the scoring pool (probing for a GPU happens off the async workers).
    pub scoring: bool,
    /// The node's restart policy for shard actors.
    pub restart_policy: RestartPolicy,
    /// Simulation-only hooks (canary bugs, an applied-entry observer). `start_node` always
    /// passes the default, every hook off: no config or flag can reach this.
    pub sim_hooks: SimHooks,
    /// The application services the node runs (the feed, identity matching).
    pub workloads: Workloads,
}

/// A running node without its network endpoint: registry, supervision tree
/// and gateway.
pub struct NodeCore {
    /// The node's registry (replicas, layout).
    pub registry: Arc<Registry>,
    /// The gateway: admission, then the gateway actor.
    pub gateway: Arc<Gateway>,
    /// The service answering peers' Raft RPCs and forwarded proposals.
    pub peers: Arc<PeerService>,
    supervisor: ActorRef<NodeMsg>,
    join: tokio::task::JoinHandle<()>,
    wal: Wal,
    /// Quiescence of idle groups and its periodic pass, unless `raft.quiesce_after_ms` is 0.
    quiescence: Option<(Arc<Quiescence>, tokio::task::JoinHandle<()>)>,
    /// The workload pump (`pump.rs`), delivering the feed and EMPI outboxes of the groups led
    /// here.
    pump: tokio::task::JoinHandle<()>,
}

/// A running node.
pub struct NodeHandle {
    /// The node's registry (replicas, layout).
    pub registry: Arc<Registry>,
    endpoint: NodeEndpoint,
    core: NodeCore,
    /// How long [`NodeHandle::shutdown`] may spend handing leadership over.
    handover_timeout: Duration,
    /// The leader balancer (`crate::balance`), when `leader_balance_interval_ms` is not 0.
    balancer: Option<tokio::task::JoinHandle<()>>,
    /// The metrics listener's address and task, when `metrics_addr` is set.
    metrics: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    _lock: std::fs::File,
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File, NodeError> {
    let err = |e: String| NodeError::DataDir(dir.display().to_string(), e);
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| err(e.to_string()))?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(err("locked by another running node".into()));
    }
    Ok(f)
}

/// Starts a node from its configuration, running no workloads (the runtime alone).
pub async fn start_node(cfg: NodeConfig) -> Result<NodeHandle, NodeError> {
    start_node_with(cfg, Arc::new(SystemClock), Workloads::new()).await
}

/// Starts a node with an explicit clock and the workloads it runs (`plexus node` passes the
/// feed and identity services).
pub async fn start_node_with(
    cfg: NodeConfig,
    clock: Arc<dyn Clock>,
    workloads: Workloads,
) -> Result<NodeHandle, NodeError> {
    let lock = lock_data_dir(&cfg.data_dir)?;
    let metrics_listener = match cfg.metrics_addr {
        Some(addr) => Some(
            crate::metrics_http::bind(addr)
                .await
                .map_err(|e| NodeError::Net(format!("metrics listener on {addr}: {e}")))?,
        ),
        None => None,
    };
    let tls = TlsMaterial::from_pem_files(&cfg.tls.ca_cert, &cfg.tls.node_cert, &cfg.tls.node_key)
        .map_err(|e| NodeError::Tls(e.to_string()))?;
    let endpoint = NodeEndpoint::bind(cfg.node_id, cfg.listen, &tls, cfg.token.clone(), NetLimits::default())
        .map_err(|e| NodeError::Net(e.to_string()))?;
    let links = endpoint.peer_links();
    for p in &cfg.peers {
        if p.id != cfg.node_id {
            links.set_peer(p.id, p.addr);
        }
    }
    let seams = NodeSeams {
        transport: Arc::new(QuicTransport::new(links)),
        clock,
        disk: Arc::new(OsDisk),
        // The writer runs among the node's tasks, syncing on its own fsync thread: submitting and
        // completing requests never cross threads (benches/etcd/README.md has the figures).
        wal_writer: WriterMode::Task,
        wal_options: WalOptions {
            fsync: cfg.fsync,
            task_yields: cfg.wal_task_yields.unwrap_or(WalOptions::default().task_yields),
            zero_ahead_bytes: cfg
                .wal_zero_ahead_bytes
                .unwrap_or(WalOptions::default().zero_ahead_bytes),
            ..WalOptions::default()
        },
        scoring: true,
        restart_policy: RestartPolicy::default(),
        sim_hooks: SimHooks::default(),
        workloads,
    };
    let core = start_core(&cfg, endpoint.local_addr().to_string(), seams).await?;
    endpoint.serve(core.peers.clone(), core.gateway.clone());
    tracing::info!(node = cfg.node_id, addr = %endpoint.local_addr(), groups = core.registry.hosted_groups().len(), "node started");
    let balancer = (cfg.raft.leader_balance_interval_ms > 0).then(|| {
        crate::balance::spawn(
            core.registry.clone(),
            Duration::from_millis(cfg.raft.leader_balance_interval_ms),
        )
    });
    let metrics = metrics_listener.map(|(listener, bound)| {
        tracing::info!(addr = %bound, "serving metrics at /metrics");
        (
            bound,
            crate::metrics_http::serve(listener, metrics_source(&core, &endpoint)),
        )
    });
    Ok(NodeHandle {
        registry: core.registry.clone(),
        endpoint,
        core,
        handover_timeout: Duration::from_millis(cfg.raft.handover_timeout_ms),
        balancer,
        metrics,
        _lock: lock,
    })
}

/// What the metrics listener renders on each scrape: a fresh snapshot of the node's figures.
fn metrics_source(core: &NodeCore, endpoint: &NodeEndpoint) -> crate::metrics_http::Render {
    let registry = core.registry.clone();
    let gateway = core.gateway.clone();
    let wal = core.wal.clone();
    let quiescence = core.quiescence.as_ref().map(|(q, _)| q.clone());
    let links = endpoint.peer_links();
    let client_conns = endpoint.client_connections();
    Arc::new(move || {
        let snap = crate::metrics::Snapshot {
            node_id: registry.node_id,
            replicas: registry.all().iter().map(Replica::status).collect(),
            quiet: quiescence.as_ref().map(|q| q.stats()).unwrap_or_default(),
            requests: gateway.metrics().read(),
            requests_in_flight: gateway.in_flight() as u64,
            client_connections: client_conns.load(Ordering::Relaxed) as u64,
            wal: wal.stats(),
            peers: links.stats(),
            scoring: registry.scoring().map(|pool| {
                let st = pool.stats();
                (st.batches.load(Ordering::Relaxed), st.requests.load(Ordering::Relaxed))
            }),
            workloads: registry.workloads().iter().flat_map(|w| w.counters()).collect(),
            process: crate::metrics::ProcessFigures::read(),
        };
        crate::metrics::render(&snap)
    })
}

/// Starts a node's core on `seams`: recovers the WAL and snapshots from
/// `cfg.data_dir` on the seams' disk, builds the registry and starts the
/// supervision tree. `addr` is the address this node reports for itself.
pub async fn start_core(cfg: &NodeConfig, addr: String, seams: NodeSeams) -> Result<NodeCore, NodeError> {
    let model = if seams.scoring { load_model(&cfg.scoring)? } else { None };
    let (wal, recovered) = Wal::open_with(
        &cfg.data_dir.join("wal"),
        seams.wal_options.clone(),
        seams.disk.clone(),
        seams.wal_writer,
    )
    .map_err(|e| NodeError::Storage(e.to_string()))?;
    if recovered.torn_tail_bytes > 0 {
        tracing::warn!(
            bytes = recovered.torn_tail_bytes,
            "dropped a torn, unacknowledged WAL tail"
        );
    }
    let snapshots = Arc::new(
        SnapshotStore::open_with(&cfg.data_dir.join("snapshots"), seams.disk.clone())
            .map_err(|e| NodeError::Storage(e.to_string()))?,
    );
    let registry = Arc::new(Registry::new(cfg, seams.transport, seams.clock, addr));
    // Invariant: the registry was made just now, so its workloads are not set yet.
    let _ = registry.set_workloads(seams.workloads);
    if seams.scoring {
        // Probing for a GPU loads libraries and may compile kernels: keep it off the async workers.
        let scoring = tokio::task::spawn_blocking(|| ScoringPool::auto(ScoringLimits::default()))
            .await
            .map_err(|e| NodeError::Actors(format!("scoring backend probe failed: {e}")))?;
        let scoring = match model {
            Some(m) => scoring.with_model(m),
            None => scoring,
        };
        let _ = registry.set_scoring(Arc::new(scoring));
    }
    let pump_ready = Arc::new(tokio::sync::Notify::new());
    let opts = ReplicaOptions {
        heartbeat_ms: cfg.raft.heartbeat_ms,
        election_timeout_min_ms: cfg.raft.election_timeout_min_ms,
        election_timeout_max_ms: cfg.raft.election_timeout_max_ms,
        snapshot_logs_since_last: cfg.raft.snapshot_logs_since_last,
        logs_kept_behind_snapshot: cfg.raft.logs_kept_behind_snapshot,
        read_lease_ms: cfg.raft.read_lease_ms,
        limits: cfg.state_limits(),
        shard_count: cfg.shard_count,
        sim_hooks: seams.sim_hooks,
        pump_ready: Some(pump_ready.clone()),
    };
    let gateway_slot = Arc::new(RwLock::new(None));
    let args = NodeArgs {
        registry: registry.clone(),
        wal: wal.clone(),
        recovered: recovered.groups,
        snapshots,
        opts,
        policy: seams.restart_policy,
        gateway_slot: gateway_slot.clone(),
    };
    let (supervisor, join) = Actor::spawn(None, NodeSupervisor, args)
        .await
        .map_err(|e| NodeError::Actors(e.to_string()))?;
    let gateway = Arc::new(Gateway::new(
        registry.clone(),
        gateway_slot,
        cfg.gateway.requests_in_flight_max,
    ));
    if gateway.actor().is_none() {
        return Err(NodeError::Actors("gateway did not start".into()));
    }
    let heartbeat = Duration::from_millis(cfg.raft.heartbeat_ms);
    let quiescence = (cfg.raft.quiesce_after_ms > 0).then(|| {
        let q = Quiescence::new(
            registry.clone(),
            Duration::from_millis(cfg.raft.quiesce_after_ms),
            // A follower stands for election only after its timeout: give up on a silent
            // leader's node no sooner.
            Duration::from_millis(cfg.raft.election_timeout_min_ms),
            heartbeat,
        );
        let pass = q.spawn(heartbeat);
        (q, pass)
    });
    let pump = crate::pump::spawn(registry.clone(), pump_ready);
    Ok(NodeCore {
        peers: Arc::new(PeerService::new(
            registry.clone(),
            quiescence.as_ref().map(|(q, _)| q.clone()),
        )),
        registry,
        gateway,
        supervisor,
        join,
        wal,
        quiescence,
        pump,
    })
}

impl NodeCore {
    /// Serves one client request exactly as the endpoint would (admission, then the replica).
    pub async fn execute(&self, req: Request) -> Response {
        self.gateway.handle(req).await
    }

    /// Answers a client's `Hello` exactly as the endpoint would.
    pub fn hello(&self) -> plexus_proto::HelloOk {
        self.gateway.hello()
    }

    /// Answers one peer message exactly as the endpoint would.
    pub async fn handle_peer(&self, from: u64, msg: Vec<u8>) -> Result<Vec<u8>, String> {
        self.peers.handle(from, msg).await
    }

    /// Quiescence figures (all zero when groups never go quiet).
    pub fn quiet_stats(&self) -> QuietStats {
        self.quiescence.as_ref().map(|(q, _)| q.stats()).unwrap_or_default()
    }

    /// Panics the shard actor of `group` (fault injection for tests).
    pub fn inject_panic(&self, group: u32) {
        let _ = self.supervisor.cast(NodeMsg::InjectPanic(group));
    }

    /// Asks the supervision tree to stop without waiting for it (the simulator's crash: the
    /// node is already cut off from its network and disk when this is called).
    pub fn stop(&self) {
        if let Some((_, pass)) = &self.quiescence {
            pass.abort();
        }
        self.pump.abort();
        self.supervisor.stop(Some("stopped".into()));
    }

    /// Stops the supervision tree (and so every replica) and then the WAL.
    pub async fn shutdown(self) {
        if let Some((_, pass)) = &self.quiescence {
            pass.abort();
        }
        self.pump.abort();
        self.supervisor.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(Duration::from_secs(10), self.join).await;
        self.wal.close_async().await;
    }
}

impl NodeHandle {
    /// The node's QUIC address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.endpoint.local_addr()
    }

    /// Where the metrics listener is bound (with the real port when `metrics_addr` had port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// Whether every hosted group has a known leader.
    pub fn all_groups_have_leaders(&self) -> bool {
        let hosted = self.registry.hosted_groups();
        hosted
            .iter()
            .all(|g| self.registry.get(*g).and_then(|r| r.leader()).is_some())
    }

    /// Quiescence figures (all zero when groups never go quiet).
    pub fn quiet_stats(&self) -> QuietStats {
        self.core.quiet_stats()
    }

    /// What the node's peer links have sent so far.
    pub fn peer_stats(&self) -> plexus_net::PeerStats {
        self.endpoint.peer_links().stats()
    }

    /// Panics the shard actor of `group` (fault injection for tests).
    pub fn inject_panic(&self, group: u32) {
        self.core.inject_panic(group);
    }

    /// Panics the gateway actor (fault injection for tests): every client connection it runs
    /// is closed, and the node supervisor starts another.
    pub fn inject_gateway_panic(&self) {
        if let Some(actor) = self.core.gateway.actor() {
            let _ = actor.cast(GatewayMsg::Panic);
        }
    }

    /// The id of the gateway actor running now, if any.
    pub fn gateway_actor_id(&self) -> Option<ractor::ActorId> {
        self.core.gateway.actor().map(|a| a.get_id())
    }

    /// Client connections the endpoint is serving now.
    pub fn client_connections(&self) -> usize {
        self.endpoint.client_connections().load(Ordering::Relaxed)
    }

    /// Hands the groups this node leads to caught-up followers (bounded by the configured
    /// `handover_timeout_ms`); the node keeps answering peers meanwhile, since the successors
    /// need its vote. Called by [`NodeHandle::shutdown`].
    pub async fn hand_over_leadership(&self) -> HandoverReport {
        if self.handover_timeout.is_zero() {
            return HandoverReport::default();
        }
        let started = tokio::time::Instant::now();
        let report = hand_over_all(&self.registry, self.handover_timeout).await;
        tracing::info!(
            moved = report.moved.len(),
            failed = report.failed.len(),
            ms = started.elapsed().as_millis() as u64,
            "leadership handed over"
        );
        // One line for all failures: in a whole-cluster stop every group fails the same way
        // (its followers are stopping too), and a line per group only buries that.
        if let Some((group, why)) = report.failed.first() {
            let groups: Vec<u32> = report.failed.iter().map(|(g, _)| *g).collect();
            tracing::warn!(
                failed = groups.len(),
                ?groups,
                first_group = group,
                first_reason = %why,
                "handover failed; followers will elect after a timeout"
            );
        }
        for (group, why) in &report.failed {
            tracing::debug!(group, reason = %why, "handover failed");
        }
        if !report.peers_stopping.is_empty() {
            tracing::info!(
                groups = ?report.peers_stopping,
                "not handed over: every other voter is stopping too"
            );
        }
        report
    }

    /// Tells every peer that this node has begun a graceful stop, so that none hands it a group
    /// from now on (`stopping.rs`), and waits at most `STOP_NOTICE_WAIT_MS` for their answers. A
    /// peer that does not answer is left alone: the notice only spares time, and a peer that
    /// misses it still has this node refuse `TimeoutNow`.
    pub async fn announce_stopping(&self) {
        let Ok(msg) = encode(&PeerRequest::Stopping(self.registry.stop_notice_ms)) else {
            return;
        };
        let wait = Duration::from_millis(STOP_NOTICE_WAIT_MS);
        let me = self.registry.node_id;
        let peers: Vec<NodeId> = self.registry.members.keys().copied().filter(|id| *id != me).collect();
        let answers = join_all(
            peers
                .iter()
                .map(|peer| self.registry.transport.call(*peer, msg.clone(), wait)),
        )
        .await;
        for (peer, answer) in peers.iter().zip(answers) {
            if let Err(e) = answer {
                tracing::debug!(peer, error = %e, "stop notice not delivered");
            }
        }
    }

    /// Stops the Raft instance of every group this node still leads: a leader left running
    /// after the endpoint closes would only keep failing to reach its followers until the core
    /// stops it. Its followers elect a new leader after their timeout either way.
    async fn stop_led_groups(&self) {
        let led = self.registry.led_replicas();
        join_all(led.iter().map(Replica::shutdown)).await;
    }

    /// The first step of a graceful stop, which [`NodeHandle::shutdown`] takes: stop balancing
    /// leaders, refuse to be made leader from now on, tell the peers, give their own stop notices
    /// up to `STOP_SETTLE_MS` to arrive, then hand over the groups this node leads to peers that
    /// are not stopping. The node keeps serving throughout.
    pub async fn begin_stop(&mut self) -> HandoverReport {
        // A balancing move must not race the handover of everything.
        if let Some(balancer) = self.balancer.take() {
            balancer.abort();
            let _ = balancer.await;
        }
        // Refuse to be made leader from now on: in a whole-cluster stop the peers are stopping
        // too, and a group handed to one of them would only have to be handed on again.
        self.registry.set_stopping();
        // Peers learn of the stop while the handover runs; in a whole-cluster stop that is what
        // lets each node give up at once on groups that no other voter may take.
        let (_, report) = futures::join!(self.announce_stopping(), async {
            self.await_peer_stop_notices(Duration::from_millis(STOP_SETTLE_MS))
                .await;
            self.hand_over_leadership().await
        });
        report
    }

    /// Waits until every peer has announced its own stop, or `settle` has passed; at once when
    /// this node leads nothing, since then there is nothing to hand over.
    async fn await_peer_stop_notices(&self, settle: Duration) {
        if self.registry.led_replicas().is_empty() {
            return;
        }
        let me = self.registry.node_id;
        let deadline = tokio::time::Instant::now() + settle;
        while tokio::time::Instant::now() < deadline {
            let all_stopping = self
                .registry
                .members
                .keys()
                .filter(|id| **id != me)
                .all(|id| self.registry.peer_is_stopping(*id));
            if all_stopping {
                return;
            }
            tokio::time::sleep(Duration::from_millis(STOP_SETTLE_POLL_MS)).await;
        }
    }

    /// Stops gracefully: hand leadership over, stop serving, stop every replica, flush the WAL.
    /// Returns what the handover did.
    pub async fn shutdown(mut self) -> HandoverReport {
        let report = self.begin_stop().await;
        self.stop_led_groups().await;
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
        self.endpoint.shutdown().await;
        self.core.shutdown().await;
        report
    }
}
