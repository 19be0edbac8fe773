//! The fault schedule of the safety phase.
//!
//! What it is: a loop that, at random intervals around `fault_every_ms`, injects one fault from
//! the switched-on kinds, holds it for a random time and undoes it: crash and restart a node
//! (half of the crashes wait, up to `GAP_WAIT_MS_MAX`, for a node whose disk holds written but
//! unsynced log entries and crash that one, so crashes inside the WAL's write→fsync gap are
//! common on slow disks),
//! isolate a node (symmetric partition), block one directed link (one-way partition), crash a
//! node, flip a byte in its WAL and check that it refuses to start, or cut the power: every
//! running node crashes at one instant and they all restart after the hold (the cut strikes, within
//! `GAP_WAIT_MS_MAX`, at a random moment when at least `POWER_LOSS_GAP_NODES_MIN` nodes hold
//! unsynced log bytes, so it usually finds writes in flight on a majority), or hand every group a
//! node leads to a caught-up follower (a graceful stop's handover: `TimeoutNow` and transfer
//! votes, which bypass the leader lease and so must still respect every other voting rule), or
//! probe the read lease: cut a leader off from its peers, write through its successor and read
//! at the cut-off leader (`lease_probe`). Network loss, delay, duplication and
//! reordering and slow or torn disks are rates in force the whole phase (see `net` and `disk`).
//! One fault at a time: apart from a power cut, a replication-3 shard never loses two replicas to
//! crashes at once (a corrupted node stays down, which is at most one).
//!
//! Every kind is valid for correct code: a node acknowledges a log entry only after its fsync,
//! so even a power cut of every node loses nothing that was committed or acknowledged; only its
//! availability suffers for the hold.
//!
//! What it is not: the network or disk model themselves.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::lease_probe;
use crate::params::{salt, SimParams};
use crate::trace::Trace;

/// Longest time one fault is held, in milliseconds.
pub const FAULT_HOLD_MS_MAX: u64 = 4_000;
/// Longest time a power cut keeps the nodes down, in milliseconds: a quick reboot, so that more
/// cuts fit in a run.
pub const POWER_LOSS_HOLD_MS_MAX: u64 = 1_000;
/// How long a crash aimed at the write→fsync gap waits for the node's disk to hold unsynced
/// bytes before it crashes the node anyway, in milliseconds.
pub const GAP_WAIT_MS_MAX: u64 = 500;
/// Poll period of that wait.
const GAP_POLL: Duration = Duration::from_millis(1);
/// Unsynced bytes that make a node worth crashing in its gap: more than a lone committed-index
/// record (20 bytes in the WAL), so what is lost includes log entries.
pub const GAP_BYTES_MIN: u64 = 24;
/// Nodes in their write→fsync gap that a power cut waits for (two of a group's three replicas
/// are a majority).
pub const POWER_LOSS_GAP_NODES_MIN: usize = 2;
/// A power cut strikes at one poll in this many of those that find enough nodes in their gap,
/// so it lands anywhere in a gap rather than at its start (when the newest entries are written
/// but not yet replicated, let alone committed).
pub const POWER_LOSS_ONE_IN_POLLS: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Crash,
    Isolate,
    OneWay,
    Corrupt,
    PowerLoss,
    Handover,
    LeaseProbe,
}

/// Draws and applies faults.
pub struct FaultSchedule {
    rng: StdRng,
    kinds: Vec<Kind>,
    every_ms: u64,
    trace: Trace,
    injected: u64,
    corrupted: bool,
    lease_probes: u64,
}

impl FaultSchedule {
    /// The schedule of `params`.
    pub fn new(params: &SimParams, trace: Trace) -> Self {
        let mut kinds = Vec::new();
        let f = &params.faults;
        if f.crashes {
            kinds.push(Kind::Crash);
        }
        if f.partitions {
            kinds.push(Kind::Isolate);
        }
        if f.one_way {
            kinds.push(Kind::OneWay);
        }
        if f.corruption {
            kinds.push(Kind::Corrupt);
        }
        if f.power_loss {
            // Twice as likely as each other kind: a cut tests durability only when it lands
            // inside write→fsync gaps, which takes a few tries.
            kinds.extend([Kind::PowerLoss, Kind::PowerLoss]);
        }
        if f.handovers {
            kinds.push(Kind::Handover);
        }
        if f.lease_probes {
            kinds.push(Kind::LeaseProbe);
        }
        Self {
            rng: StdRng::seed_from_u64(params.seed ^ salt::FAULTS),
            kinds,
            every_ms: params.fault_every_ms,
            trace,
            injected: 0,
            corrupted: false,
            lease_probes: 0,
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// Injects faults until `end` (virtual time); every fault is undone before it returns.
    /// Returns violations it saw directly (a corrupted disk that was not detected).
    pub async fn run_until(&mut self, cluster: &mut Cluster, end: tokio::time::Instant) -> Vec<String> {
        let mut violations = Vec::new();
        loop {
            let pause = self.rng.gen_range(self.every_ms / 2..=self.every_ms * 3 / 2);
            let at = tokio::time::Instant::now() + Duration::from_millis(pause);
            if self.kinds.is_empty() || at >= end {
                tokio::time::sleep_until(end).await;
                return violations;
            }
            tokio::time::sleep_until(at).await;
            let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
            let hold = Duration::from_millis(self.rng.gen_range(200..=FAULT_HOLD_MS_MAX));
            let up: Vec<u64> = cluster.ids().into_iter().filter(|id| cluster.is_up(*id)).collect();
            if up.is_empty() {
                continue;
            }
            let node = up[self.rng.gen_range(0..up.len())];
            self.injected += 1;
            match kind {
                Kind::Crash => {
                    let aim_at_gap = self.rng.gen_bool(0.5);
                    let node = if aim_at_gap {
                        in_gap(cluster).await.unwrap_or(node)
                    } else {
                        node
                    };
                    let unsynced = cluster.disk(node).map_or(0, |d| d.unsynced_bytes());
                    self.trace.event(format_args!(
                        "fault crash node {node} for {hold:?} aimed_at_gap={aim_at_gap} unsynced_bytes={unsynced}"
                    ));
                    cluster.crash(node).await;
                    tokio::time::sleep(hold).await;
                    // A failed restart is recorded by the heal phase (it retries every node).
                    let _ = cluster.start(node).await;
                }
                Kind::Isolate => {
                    self.trace.event(format_args!("fault isolate node {node} for {hold:?}"));
                    cluster.isolate(node);
                    tokio::time::sleep(hold).await;
                    cluster.net.heal();
                    self.trace.event(format_args!("fault heal"));
                }
                Kind::OneWay => {
                    let others: Vec<u64> = cluster.ids().into_iter().filter(|o| *o != node).collect();
                    let to = others[self.rng.gen_range(0..others.len())];
                    self.trace.event(format_args!("fault block {node}->{to} for {hold:?}"));
                    cluster.net.block(node, to);
                    tokio::time::sleep(hold).await;
                    cluster.net.heal();
                    self.trace.event(format_args!("fault heal"));
                }
                Kind::Corrupt if !self.corrupted => {
                    cluster.crash(node).await;
                    let flipped = cluster.disk(node).and_then(|d| d.corrupt());
                    self.trace
                        .event(format_args!("fault corrupt node {node} at {flipped:?}"));
                    if flipped.is_some() {
                        self.corrupted = true;
                    }
                    tokio::time::sleep(hold).await;
                    let started = cluster.start(node).await;
                    if let (Some((path, offset)), Ok(())) = (flipped, started) {
                        violations.push(format!(
                            "node {node} started although byte {offset} of {} was corrupted",
                            path.display()
                        ));
                    }
                }
                Kind::Corrupt => {
                    self.trace
                        .event(format_args!("fault skipped: a disk was already corrupted"));
                }
                Kind::Handover => {
                    // The first step of a graceful stop, without the stop: the node keeps
                    // running, so the moved groups may come back by election later. Bounded by
                    // the hold, as a real stop is by `handover_timeout_ms`.
                    let Some(registry) = cluster.registry(node) else {
                        continue;
                    };
                    let report = plexus_actors::handover::hand_over_all(&registry, hold).await;
                    self.trace.event(format_args!(
                        "fault handover from node {node}: moved {:?} failed {:?} peers_stopping {:?}",
                        report.moved, report.failed, report.peers_stopping
                    ));
                }
                Kind::LeaseProbe => {
                    // Held for the longest hold: the cut-off leader's successor needs an
                    // election timeout (up to about 1.2 s here) and a commit before the probe reads.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(FAULT_HOLD_MS_MAX);
                    self.lease_probes += 1;
                    let n = self.lease_probes;
                    let found = lease_probe::probe(cluster, node, n, deadline, &mut self.rng, &self.trace).await;
                    violations.extend(found);
                }
                Kind::PowerLoss => {
                    // Only this schedule crashes and starts nodes, so `up` still holds after the wait.
                    let in_gap = self.power_cut_moment(cluster).await;
                    let hold = hold.min(Duration::from_millis(POWER_LOSS_HOLD_MS_MAX));
                    self.trace.event(format_args!(
                        "fault power loss of nodes {up:?} for {hold:?} in_gap={in_gap:?}"
                    ));
                    cluster.crash_all(&up).await;
                    tokio::time::sleep(hold).await;
                    for id in up {
                        // A failed restart is recorded by the heal phase (it retries every node).
                        let _ = cluster.start(id).await;
                    }
                }
            }
        }
    }
}

impl FaultSchedule {
    /// Waits, up to `GAP_WAIT_MS_MAX`, for a random poll among those that find at least
    /// `POWER_LOSS_GAP_NODES_MIN` running nodes with unsynced log bytes; returns those nodes
    /// (perhaps fewer, or none, when the wait ran out).
    async fn power_cut_moment(&mut self, cluster: &Cluster) -> Vec<u64> {
        let mut found = Vec::new();
        for _ in 0..GAP_WAIT_MS_MAX {
            found = gap_nodes(cluster);
            if found.len() >= POWER_LOSS_GAP_NODES_MIN && self.rng.gen_range(0..POWER_LOSS_ONE_IN_POLLS) == 0 {
                return found;
            }
            tokio::time::sleep(GAP_POLL).await;
        }
        found
    }
}

/// The running nodes whose disks hold at least `GAP_BYTES_MIN` unsynced bytes.
fn gap_nodes(cluster: &Cluster) -> Vec<u64> {
    cluster
        .ids()
        .into_iter()
        .filter(|id| cluster.is_up(*id))
        .filter(|id| cluster.disk(*id).is_some_and(|d| d.unsynced_bytes() >= GAP_BYTES_MIN))
        .collect()
}

/// The first running node (in id order) whose disk holds at least `GAP_BYTES_MIN` unsynced
/// bytes, polled for up to `GAP_WAIT_MS_MAX`; `None` if none did.
async fn in_gap(cluster: &Cluster) -> Option<u64> {
    for _ in 0..GAP_WAIT_MS_MAX {
        if let Some(&first) = gap_nodes(cluster).first() {
            return Some(first);
        }
        tokio::time::sleep(GAP_POLL).await;
    }
    None
}
