//! The fault schedule of the safety phase.
//!
//! What it is: a loop that, at random intervals around `fault_every_ms`, injects one fault from
//! the switched-on kinds, holds it for a random time and undoes it: crash and restart a node
//! (half of the crashes wait, up to `GAP_WAIT_MS_MAX`, for a node whose disk holds written but
//! unsynced log entries and crash that one, so crashes inside the WAL's write→fsync gap are
//! common on slow disks),
//! isolate a node (symmetric partition), block one directed link (one-way partition), or crash a
//! node, flip a byte in its WAL and check that it refuses to start. Network loss, delay,
//! duplication and reordering and slow or torn disks are rates in force the whole phase (see
//! `net` and `disk`). One fault at a time, so a replication-3 shard never loses two replicas to
//! crashes at once (a corrupted node stays down, which is at most one).
//!
//! What it is not: the network or disk model themselves.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::params::{salt, SimParams};
use crate::trace::Trace;

/// Longest time one fault is held, in milliseconds.
pub const FAULT_HOLD_MS_MAX: u64 = 4_000;
/// How long a crash aimed at the write→fsync gap waits for the node's disk to hold unsynced
/// bytes before it crashes the node anyway, in milliseconds.
pub const GAP_WAIT_MS_MAX: u64 = 500;
/// Poll period of that wait.
const GAP_POLL: Duration = Duration::from_millis(1);
/// Unsynced bytes that make a node worth crashing in its gap: more than a lone committed-index
/// record (20 bytes in the WAL), so what is lost includes log entries.
pub const GAP_BYTES_MIN: u64 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Crash,
    Isolate,
    OneWay,
    Corrupt,
}

/// Draws and applies faults.
pub struct FaultSchedule {
    rng: StdRng,
    kinds: Vec<Kind>,
    every_ms: u64,
    trace: Trace,
    injected: u64,
    corrupted: bool,
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
        Self {
            rng: StdRng::seed_from_u64(params.seed ^ salt::FAULTS),
            kinds,
            every_ms: params.fault_every_ms,
            trace,
            injected: 0,
            corrupted: false,
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
                    for other in cluster.ids() {
                        if other != node {
                            cluster.net.block(node, other);
                            cluster.net.block(other, node);
                        }
                    }
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
            }
        }
    }
}

/// The first running node (in id order) whose disk holds at least `GAP_BYTES_MIN` unsynced
/// bytes, polled for up to `GAP_WAIT_MS_MAX`; `None` if none did.
async fn in_gap(cluster: &Cluster) -> Option<u64> {
    for _ in 0..GAP_WAIT_MS_MAX {
        let found = cluster
            .ids()
            .into_iter()
            .filter(|id| cluster.is_up(*id))
            .find(|id| cluster.disk(*id).is_some_and(|d| d.unsynced_bytes() >= GAP_BYTES_MIN));
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(GAP_POLL).await;
    }
    None
}
