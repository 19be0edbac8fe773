//! One seed's run, start to finish, on a current-thread tokio runtime with a paused clock.
//!
//! Phases: boot (every node starts, every group elects a leader), safety (clients run while the
//! fault schedule injects faults), heal (faults stop, partitions heal, crashed nodes restart,
//! clients finish), liveness (the cluster must converge within `liveness_secs_max`), then the
//! checkers read the history and the final state.
//!
//! What it is not: a benchmark. `wall_secs` is measured only to report speed and never enters
//! the trace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use plexus_core::state::StateLimits;
use plexus_proto::{shard_for_key, Cursor, Direction, ReadOp, Reply, ShardKey};
use plexus_raft::META_GROUP;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::checkers::committed_entries::AppliedEntries;
use crate::checkers::raft_safety::LeaderSamples;
use crate::checkers::{self, FinalState, ReplicaEnd};
use crate::cluster::Cluster;
use crate::empi_workload::{self, EmpiHistory};
use crate::faults::FaultSchedule;
use crate::feed_workload::{self, FeedHistory};
use crate::net::{NetFaults, SimNet};
use crate::panics;
use crate::params::{salt, SimOptions, SimParams};
use crate::trace::Trace;
use crate::workload::{self, History, Universe};

/// How long booting may take before the run is a violation, in simulated seconds.
const BOOT_SECS_MAX: u64 = 30;
/// Period of the Raft role sampler.
const SAMPLE_PERIOD: Duration = Duration::from_millis(25);
/// Period of the convergence probe in the liveness phase.
const PROBE_PERIOD: Duration = Duration::from_millis(250);
/// How long clients get to finish their last operation after the safety phase, in seconds.
const CLIENT_DRAIN_SECS_MAX: u64 = 60;

/// The result of one seed.
#[derive(Clone, Debug, Serialize)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// FNV-1a 64 of the event trace, as 16 hex digits.
    pub trace_hash: String,
    /// What the checkers found, each prefixed with the checker's name (`linearizable: ...`);
    /// empty when every property held.
    pub violations: Vec<String>,
    /// The canary bug the nodes ran with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Keys (`timeline 1500`, `edge 1000->2001`, `filter f1-0 key "k1-7"`) whose linearizability
    /// search ran past its bound (not violations).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked_keys: Vec<String>,
    /// Virtual time the run took.
    pub simulated_secs: f64,
    /// Real time the run took.
    pub wall_secs: f64,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Shards in the cluster.
    pub shards: u32,
    /// Lines in the trace.
    pub trace_lines: u64,
    /// Client operations completed.
    pub ops: u64,
    /// Client operations that succeeded.
    pub ops_ok: u64,
    /// Faults injected.
    pub faults: u64,
    /// Times a group went quiet (stopped heartbeating, `plexus_raft::quiesce`), over all nodes.
    pub quieted: u64,
    /// The last trace lines, for a failing seed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace_tail: Vec<String>,
}

/// Runs `seed` and reports it. Builds its own runtime, so it must not be called from async code.
pub fn run_seed(seed: u64, options: &SimOptions) -> SeedReport {
    let wall = std::time::Instant::now();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    // tokio's own RNG picks `select!` branches and work-stealing victims; seeding it from the
    // seed closes that leak (`.cargo/config.toml` sets the cfg for every build).
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build();
    let mut report = match runtime {
        Ok(rt) => {
            let outcome = panics::collect(move || {
                let report = rt.block_on(simulate(seed, options));
                // Whatever the nodes still run is dropped with the runtime.
                rt.shutdown_background();
                report
            });
            outcome.unwrap_or_else(|e| failed(seed, options, format!("simulator: the run itself panicked: {e}")))
        }
        Err(e) => failed(seed, options, format!("runtime: cannot build the runtime: {e}")),
    };
    report.wall_secs = wall.elapsed().as_secs_f64();
    report
}

/// The report of a run that could not even finish.
fn failed(seed: u64, options: &SimOptions, why: String) -> SeedReport {
    SeedReport {
        seed,
        trace_hash: String::new(),
        violations: vec![why],
        canary: options.canary.map(|c| c.name().to_string()),
        unchecked_keys: Vec::new(),
        simulated_secs: 0.0,
        wall_secs: 0.0,
        nodes: 0,
        shards: 0,
        trace_lines: 0,
        ops: 0,
        ops_ok: 0,
        faults: 0,
        quieted: 0,
        trace_tail: Vec::new(),
    }
}

async fn simulate(seed: u64, options: &SimOptions) -> SeedReport {
    let params = SimParams::derive(seed, options);
    let trace = Trace::new(options.verbose);
    trace.event(format_args!("params {params:?}"));
    if let Some(canary) = options.canary {
        trace.event(format_args!("canary {canary}"));
    }
    let net = SimNet::new(seed ^ salt::NET, NetFaults::healthy(), trace.clone());
    let limits = StateLimits {
        feed: crate::cluster::feed_config(&params).limits(),
        ..StateLimits::default()
    };
    let applied = AppliedEntries::new(params.shard_count, options.canary, limits);
    let mut cluster = Cluster::new(&params, net.clone(), trace.clone(), options.canary, applied.clone());
    let mut violations = Vec::new();
    for id in cluster.ids() {
        if let Err(e) = cluster.start(id).await {
            violations.push(format!("boot: node {id} failed to start on an empty disk: {e}"));
        }
    }
    if !wait_until(BOOT_SECS_MAX, || all_led(&cluster, &params)).await {
        violations.push(format!(
            "boot: not every group had a leader {BOOT_SECS_MAX}s after boot"
        ));
    }
    trace.event(format_args!("phase safety"));

    let samples: Arc<Mutex<LeaderSamples>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_leaders(net.clone(), samples.clone(), sampling.clone()));

    let universe = Universe::new(params.workload.clients);
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 1..=params.workload.clients {
        let rng = StdRng::seed_from_u64(seed ^ (salt::CLIENT + c));
        clients.push(tokio::spawn(workload::run_client(
            c,
            net.clone(),
            cluster.client_addrs(),
            rng,
            params.workload.weights,
            params.workload.think_ms_max,
            universe.clone(),
            history.clone(),
            stop.clone(),
            trace.clone(),
        )));
    }

    let feed_history: FeedHistory = Arc::default();
    for c in 1..=params.feed.clients {
        let rng = StdRng::seed_from_u64(seed ^ (salt::FEED_CLIENT + c));
        clients.push(tokio::spawn(feed_workload::run_feed_client(
            c,
            net.clone(),
            cluster.client_addrs(),
            rng,
            params.feed.clone(),
            feed_history.clone(),
            stop.clone(),
            trace.clone(),
        )));
    }

    let empi_history: EmpiHistory = Arc::default();
    let population = empi_workload::population(&params);
    for c in 1..=params.empi.clients {
        let rng = StdRng::seed_from_u64(seed ^ (salt::EMPI_CLIENT + c));
        clients.push(tokio::spawn(empi_workload::run_empi_client(
            c,
            net.clone(),
            cluster.client_addrs(),
            rng,
            params.empi.clone(),
            population.clone(),
            empi_history.clone(),
            stop.clone(),
            trace.clone(),
        )));
    }
    if params.empi.clients > 0 {
        let c = params.empi.clients + 1;
        let rng = StdRng::seed_from_u64(seed ^ (salt::EMPI_CLIENT + c));
        clients.push(tokio::spawn(empi_workload::run_empi_subscriber(
            c,
            net.clone(),
            cluster.client_addrs(),
            rng,
            params.empi.clone(),
            empi_history.clone(),
            stop.clone(),
            trace.clone(),
        )));
    }

    let mut schedule = FaultSchedule::new(&params, trace.clone());
    net.set_faults(params.net.clone());
    let safety_end = tokio::time::Instant::now() + Duration::from_secs(params.safety_secs);
    violations.extend(labeled("faults", schedule.run_until(&mut cluster, safety_end).await));

    trace.event(format_args!("phase heal"));
    net.set_faults(NetFaults::healthy());
    net.heal();
    for id in cluster.ids() {
        if !cluster.is_up(id) && cluster.refused(id).is_none() {
            if let Err(e) = cluster.start(id).await {
                violations.push(format!("liveness: node {id} could not restart after healing: {e}"));
            }
        }
    }
    stop.store(true, Ordering::Release);
    let drain = tokio::time::timeout(Duration::from_secs(CLIENT_DRAIN_SECS_MAX), async {
        for c in clients {
            let _ = c.await;
        }
    });
    if drain.await.is_err() {
        violations.push(format!(
            "liveness: clients did not finish within {CLIENT_DRAIN_SECS_MAX}s of healing"
        ));
    }

    trace.event(format_args!("phase liveness"));
    let healed = wait_until(params.liveness_secs_max, || {
        all_led(&cluster, &params) && settled(&cluster, &params)
    })
    .await;
    sampling.store(false, Ordering::Release);
    let _ = sampler.await;
    let (_, ends, pending) = converged(&cluster, &params);
    if !healed {
        violations.push(format!(
            "liveness: the cluster did not converge within {}s of healing (outbox entries pending: {pending})",
            params.liveness_secs_max
        ));
        violations.extend(labeled("convergence", checkers::convergence::check(&ends)));
    }
    let end = final_state(&cluster, &params, &universe, &history);
    let feed_end = feed_workload::final_feed(&cluster, &params, &net, &trace).await;
    let feed_history = feed_history.lock().map(|h| h.clone()).unwrap_or_default();
    violations.extend(labeled("feed", checkers::feed::check(&feed_history, &feed_end)));
    // A request its client gave up on may still be writing in a node after convergence: the
    // EMPI state is read when the cluster is converged again, with no await in between.
    if healed {
        wait_until(params.liveness_secs_max, || settled(&cluster, &params)).await;
    }
    let empi_history = empi_history.lock().map(|h| h.clone()).unwrap_or_default();
    let empi_end = empi_workload::final_empi(&cluster, &params, &population, &empi_history);
    trace.event(format_args!(
        "empi final records={} identities={} events={} pending={}",
        empi_end.records.len(),
        empi_end.masters.len(),
        empi_end.events.values().map(|(_, l)| l.len()).sum::<usize>(),
        empi_end.pending
    ));
    violations.extend(labeled("empi", checkers::empi::check(&empi_history, &empi_end)));
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let leader_samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    violations.extend(labeled("acked_writes", checkers::acked_writes::check(&history, &end)));
    violations.extend(labeled("exactly_once", checkers::exactly_once::check(&end)));
    violations.extend(labeled("read_your_writes", checkers::read_your_writes::check(&history)));
    let lin = checkers::linearizable::check(&history, &end);
    violations.extend(labeled("linearizable", lin.violations));
    violations.extend(labeled(
        "timeline_order",
        checkers::timeline_order::check(&history, &end),
    ));
    violations.extend(labeled("edges", checkers::edges::check(&end)));
    violations.extend(labeled("raft_safety", checkers::raft_safety::check(&leader_samples)));
    violations.extend(labeled(
        "committed_entries",
        checkers::committed_entries::check(&applied),
    ));
    let panicked = panics::take();
    for p in &panicked {
        trace.event(format_args!("panic {p}"));
    }
    violations.extend(labeled("panic", panicked));
    let ops_ok = history.iter().filter(|r| r.result.is_ok()).count() as u64
        + feed_history.iter().filter(|r| r.result.is_ok()).count() as u64
        + empi_history.iter().filter(|r| r.result.is_ok()).count() as u64;
    let quieted = cluster.quieted_total();
    trace.event(format_args!(
        "end ops={} ok={ops_ok} quieted={quieted} applied_reports={} snapshot_reports(built,installed,loaded)={:?} lin_keys={} lin_unchecked={:?} violations={}",
        history.len(),
        applied.reports(),
        applied.snapshot_reports(),
        lin.keys_checked,
        lin.unchecked,
        violations.len()
    ));
    SeedReport {
        seed,
        trace_hash: format!("{:016x}", trace.hash()),
        simulated_secs: trace.now_us() as f64 / 1e6,
        wall_secs: 0.0,
        nodes: params.nodes,
        shards: params.shard_count,
        trace_lines: trace.lines(),
        ops: (history.len() + feed_history.len() + empi_history.len()) as u64,
        ops_ok,
        faults: schedule.injected(),
        quieted,
        canary: options.canary.map(|c| c.name().to_string()),
        unchecked_keys: lin.unchecked,
        trace_tail: if violations.is_empty() {
            Vec::new()
        } else {
            trace.tail()
        },
        violations,
    }
}

/// Prefixes each of `violations` with the name of the checker (or phase) that found it.
fn labeled(name: &'static str, violations: Vec<String>) -> impl Iterator<Item = String> {
    violations.into_iter().map(move |v| format!("{name}: {v}"))
}

/// Polls `done` until it holds or `secs` simulated seconds pass.
async fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(PROBE_PERIOD).await;
    }
}

fn groups(params: &SimParams) -> impl Iterator<Item = u32> {
    (0..params.shard_count).chain(std::iter::once(META_GROUP))
}

/// Whether every group has a leader that a running node knows of and that runs.
fn all_led(cluster: &Cluster, params: &SimParams) -> bool {
    groups(params).all(|g| {
        cluster
            .ids()
            .into_iter()
            .filter_map(|id| cluster.core(id))
            .any(|core| core.registry.get(g).is_some_and(|r| r.is_leader()))
    })
}

/// Whether every shard's running replicas agree (`converged`), hashing their states only once
/// every outbox is empty and the replicas of each shard have applied the same index: hashing
/// serialises every state, and the liveness probe asks often.
fn settled(cluster: &Cluster, params: &SimParams) -> bool {
    for g in 0..params.shard_count {
        let mut applied = None;
        for id in cluster.ids() {
            if cluster.refused(id).is_some() {
                continue;
            }
            let Some(core) = cluster.core(id) else {
                return false;
            };
            if !core.registry.hosted_groups().contains(&g) {
                continue;
            }
            let Some(replica) = core.registry.get(g) else {
                return false;
            };
            let Ok(state) = replica.state().read() else {
                return false;
            };
            let pending = state.outbox_len() + state.feed_outbox_len() + state.empi_outbox_len();
            if pending > 0 || applied.is_some_and(|a| a != state.last_applied()) {
                return false;
            }
            applied = Some(state.last_applied());
        }
    }
    converged(cluster, params).0
}

/// Whether every shard's running replicas agree, with each shard's replica ends and the number
/// of outbox entries still undelivered.
fn converged(cluster: &Cluster, params: &SimParams) -> (bool, BTreeMap<u32, Vec<ReplicaEnd>>, usize) {
    let mut ends: BTreeMap<u32, Vec<ReplicaEnd>> = BTreeMap::new();
    let mut ok = true;
    let mut pending = 0;
    for g in 0..params.shard_count {
        for id in cluster.ids() {
            if cluster.refused(id).is_some() {
                continue;
            }
            let Some(core) = cluster.core(id) else {
                ok = false;
                continue;
            };
            if !core.registry.hosted_groups().contains(&g) {
                continue;
            }
            let Some(replica) = core.registry.get(g) else {
                ok = false;
                continue;
            };
            let Ok(state) = replica.state().read() else {
                ok = false;
                continue;
            };
            pending += state.outbox_len() + state.feed_outbox_len() + state.empi_outbox_len();
            ends.entry(g)
                .or_default()
                .push((id, state.last_applied(), state.state_hash()));
        }
    }
    ok &= pending == 0 && checkers::convergence::check(&ends).is_empty();
    (ok, ends, pending)
}

/// Samples every running replica's role and term until `running` is cleared.
async fn sample_leaders(net: Arc<SimNet>, samples: Arc<Mutex<LeaderSamples>>, running: Arc<AtomicBool>) {
    while running.load(Ordering::Acquire) {
        for (id, core) in net.cores() {
            for replica in core.registry.all() {
                let m = replica.raft.metrics();
                let m = m.borrow();
                if m.state == ServerState::Leader {
                    let named = m.vote.leader_id().voted_for().unwrap_or(0);
                    if let Ok(mut s) = samples.lock() {
                        s.entry((replica.group, m.current_term, named))
                            .or_insert_with(BTreeSet::new)
                            .insert(id);
                    }
                }
            }
        }
        tokio::time::sleep(SAMPLE_PERIOD).await;
    }
}

/// Reads what the workload touched from one running replica of each shard.
fn final_state(cluster: &Cluster, params: &SimParams, universe: &Universe, history: &History) -> FinalState {
    let read = |key: ShardKey, op: ReadOp| cluster.read_applied(shard_for_key(&key, params.shard_count), &op);
    let mut end = FinalState::default();
    for owner in &universe.owners {
        let op = ReadOp::TimelineRead {
            owner: *owner,
            cursor: Cursor::After(0),
            limit: 1_000,
        };
        if let Some(Reply::Page(p)) = read(ShardKey::Id(*owner), op) {
            end.timelines
                .insert(*owner, p.entries.into_iter().map(|e| (e.id, e.item)).collect());
        }
    }
    for v in &universe.vertices {
        for (direction, map) in [(Direction::Out, &mut end.out_edges), (Direction::In, &mut end.in_edges)] {
            let op = ReadOp::Neighbors {
                vertex: *v,
                direction,
                after: None,
                limit: 10_000,
            };
            if let Some(Reply::Vertices { ids, .. }) = read(ShardKey::Id(*v), op) {
                map.insert(*v, ids.into_iter().collect());
            }
        }
    }
    let acked: Vec<(String, Vec<u8>)> = history
        .lock()
        .map(|h| {
            h.iter()
                .filter(|r| r.result.is_ok())
                .filter_map(|r| match &r.action {
                    workload::Action::FilterAdd(n, k) => Some((n.clone(), k.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, key) in acked {
        let op = ReadOp::FilterContains {
            name: name.clone(),
            keys: vec![key.clone()],
        };
        let hit = matches!(read(ShardKey::Name(name.clone()), op), Some(Reply::Bools(b)) if b.first() == Some(&true));
        end.filter_hits.insert((name, key), hit);
    }
    end
}
