//! Everything a run is made of, derived from its seed.
//!
//! What it is: `SimParams::derive(seed, options)` draws cluster size, shard count, Raft timings
//! and snapshot thresholds, clock skews, network and disk fault rates, the fault schedule's kinds
//! and pacing and the workload mix from one `StdRng` seeded with the seed, in a fixed order
//! (new draws go at the end, so adding one leaves every earlier parameter of a seed as it was). `SimOptions` are the few things a
//! person may pin on the command line (faults off, a cluster shape for speed measurements).
//!
//! What it is not: the fault schedule itself; `faults` draws that while the run goes, from its
//! own RNG seeded from the same seed.

use plexus_raft::sim_hooks::Canary;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::disk::DiskFaults;
use crate::empi_workload::EmpiMix;
use crate::feed_workload::FeedMix;
use crate::net::NetFaults;

/// Salts that split one seed into independent RNG streams.
pub mod salt {
    /// Parameters.
    pub const PARAMS: u64 = 0x5041_5241_4d53;
    /// The network.
    pub const NET: u64 = 0x4e45_5400;
    /// Node `i`'s disk is `DISK + i`.
    pub const DISK: u64 = 0x4449_534b_0000;
    /// The fault schedule.
    pub const FAULTS: u64 = 0x4641_554c_5453;
    /// Client `i` is `CLIENT + i`.
    pub const CLIENT: u64 = 0x434c_4945_0000;
    /// Feed client `i` is `FEED_CLIENT + i`.
    pub const FEED_CLIENT: u64 = 0x4645_4544_0000;
    /// EMPI client `i` is `EMPI_CLIENT + i` (the subscriber is the last).
    pub const EMPI_CLIENT: u64 = 0x454d_5049_0000;
    /// The EMPI scenario's population of person records.
    pub const EMPI_DATA: u64 = 0x454d_5049_4441;
}

/// What a person may pin for a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimOptions {
    /// Run the safety phase without any fault (a baseline, and for speed measurements).
    pub no_faults: bool,
    /// Pin the number of nodes.
    pub nodes: Option<u64>,
    /// Pin the number of shards.
    pub shards: Option<u32>,
    /// Pin the safety phase's length, in simulated seconds.
    pub safety_secs: Option<u64>,
    /// Print every trace line to stderr.
    pub verbose: bool,
    /// Run every node with this deliberate bug (the checkers must catch it).
    pub canary: Option<Canary>,
}

/// Which faults the safety phase injects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSwitches {
    /// Node crashes and restarts.
    pub crashes: bool,
    /// Symmetric partitions (one node isolated from the rest).
    pub partitions: bool,
    /// One-way partitions (one directed link blocked).
    pub one_way: bool,
    /// One flipped byte in a crashed node's WAL, which must stop it from starting.
    pub corruption: bool,
    /// Power cuts: every running node crashes at one instant (each disk loses its unsynced
    /// writes), then they all restart. Nothing acknowledged may be lost, since it was fsynced
    /// on a majority first.
    pub power_loss: bool,
    /// Leadership handovers: a node hands every group it leads to caught-up followers, as a
    /// graceful stop does first (transfer votes, `TimeoutNow`), while writes go on.
    pub handovers: bool,
    /// Lease probes (`lease_probe`): a leader is cut off from its peers while clients still
    /// reach it, and must not answer a linearizable read without a write its successor
    /// acknowledged meanwhile.
    pub lease_probes: bool,
}

/// How the clients behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadMix {
    /// Concurrent clients.
    pub clients: u64,
    /// Relative weights of follow, unfollow, has-edge, timeline append, timeline read,
    /// filter add and filter contains.
    pub weights: [u32; 7],
    /// Longest pause between one client's operations, in milliseconds.
    pub think_ms_max: u64,
}

/// One run's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimParams {
    /// The seed everything comes from.
    pub seed: u64,
    /// Cluster size.
    pub nodes: u64,
    /// Virtual shards.
    pub shard_count: u32,
    /// Replicas per shard.
    pub replication: usize,
    /// Leader heartbeat period, in milliseconds.
    pub heartbeat_ms: u64,
    /// Per node (index = id - 1), its fixed election timeout in milliseconds.
    pub election_ms: Vec<u64>,
    /// Per node, its clock's offset from true time in milliseconds.
    pub clock_skew_ms: Vec<i64>,
    /// Network faults during the safety phase.
    pub net: NetFaults,
    /// Disk faults, for every node.
    pub disk: DiskFaults,
    /// Which other faults the safety phase injects.
    pub faults: FaultSwitches,
    /// Mean pause between two fault events, in milliseconds.
    pub fault_every_ms: u64,
    /// The workload.
    pub workload: WorkloadMix,
    /// Length of the safety phase, in simulated seconds.
    pub safety_secs: u64,
    /// How long the healed cluster may take to converge, in simulated seconds.
    pub liveness_secs_max: u64,
    /// Deadline of one request inside a node, in milliseconds.
    pub request_timeout_ms: u64,
    /// Entries applied since a group's last snapshot that make it build the next one; small
    /// values make snapshot builds, log purges and snapshot installs on lagging replicas common.
    pub snapshot_logs_since_last: u64,
    /// Entries a group keeps in its log behind its snapshot.
    pub logs_kept_behind_snapshot: u64,
    /// How long a group must be idle before it goes quiet, in milliseconds (0: never); short
    /// values make groups go quiet and wake between one client's operations, under every fault.
    pub quiesce_after_ms: u64,
    /// The feed scenario's clients.
    pub feed: FeedMix,
    /// The identity-matching scenario's clients.
    pub empi: EmpiMix,
}

impl SimParams {
    /// Draws the parameters of `seed`.
    pub fn derive(seed: u64, options: &SimOptions) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ salt::PARAMS);
        let nodes = options.nodes.unwrap_or_else(|| rng.gen_range(3..=5));
        let shard_count = options.shards.unwrap_or_else(|| [4, 8, 16][rng.gen_range(0..3)]);
        let heartbeat_ms = 100;
        // Distinct per node, and fixed (openraft draws in [min, max) and gets max = min + 1),
        // so openraft's thread-local RNG has nothing to choose.
        let election_ms = (0..nodes).map(|i| 500 + i * 150 + rng.gen_range(0..100)).collect();
        let skew_max = rng.gen_range(0..=2_000);
        let clock_skew_ms = (0..nodes).map(|_| rng.gen_range(-skew_max..=skew_max)).collect();
        let faulty = !options.no_faults;
        let net = if faulty {
            NetFaults {
                loss_ppm: rng.gen_range(0..=30_000),
                dup_ppm: rng.gen_range(0..=20_000),
                delay_us_min: 100,
                delay_us_max: rng.gen_range(1_000..=40_000),
            }
        } else {
            NetFaults::healthy()
        };
        let mut disk = DiskFaults {
            torn_writes: faulty && rng.gen_bool(0.7),
            slow_ms_max: if faulty { rng.gen_range(0..=20) } else { 0 },
            stall_ms_max: 0,
            stall_one_in: 1,
            sync_ms_min: 0,
        };
        let mut faults = FaultSwitches {
            crashes: faulty && rng.gen_bool(0.8),
            partitions: faulty && rng.gen_bool(0.7),
            one_way: faulty && rng.gen_bool(0.5),
            corruption: faulty && nodes >= 4 && rng.gen_bool(0.3),
            power_loss: false,
            handovers: false,
            lease_probes: false,
        };
        let workload = WorkloadMix {
            clients: rng.gen_range(2..=4),
            weights: [
                rng.gen_range(1..=6),
                rng.gen_range(0..=3),
                rng.gen_range(1..=4),
                rng.gen_range(1..=6),
                rng.gen_range(1..=4),
                rng.gen_range(1..=4),
                rng.gen_range(1..=4),
            ],
            think_ms_max: rng.gen_range(5..=60),
        };
        let fault_every_ms = rng.gen_range(800..=3_000);
        // Drawn last, so that adding them left every earlier parameter of a seed as it was.
        if faulty && rng.gen_bool(0.6) {
            disk.stall_ms_max = rng.gen_range(50..=300);
            disk.stall_one_in = rng.gen_range(5..=50);
        }
        faults.power_loss = faulty && rng.gen_bool(0.8);
        // Some disks take a while for every fsync (a cloud volume, a busy spindle): the WAL's
        // write→fsync gap is then open on every node most of the time, which is when a power cut
        // finds written but unsynced log entries everywhere.
        if faulty && rng.gen_bool(0.8) {
            disk.sync_ms_min = rng.gen_range(10..=60);
        }
        let snapshot_logs_since_last = [5, 10, 25, 200][rng.gen_range(0..4)];
        let logs_kept_behind_snapshot = rng.gen_range(0..=10);
        // Drawn after everything else, so every earlier parameter of a seed is as it was.
        faults.handovers = faulty && rng.gen_bool(0.7);
        // Drawn after the handovers, for the same reason.
        faults.lease_probes = faulty && rng.gen_bool(0.7);
        // Drawn after the lease probes, for the same reason.
        let quiesce_after_ms = match rng.gen_range(0..5) {
            0 => 0,
            n => [100, 200, 500, 1_000][n - 1],
        };
        // Drawn after the quiescence, for the same reason. A low threshold makes some feed
        // users pulled authors in most runs.
        let feed = FeedMix {
            clients: rng.gen_range(1..=3),
            users_per_client: rng.gen_range(2..=4),
            weights: [
                rng.gen_range(2..=6),
                rng.gen_range(0..=2),
                rng.gen_range(2..=6),
                rng.gen_range(0..=2),
                rng.gen_range(1..=4),
                rng.gen_range(0..=2),
            ],
            pulled_followers_min: [2, 3, 5, 1_000][rng.gen_range(0..4)],
            think_ms_max: rng.gen_range(10..=80),
        };
        // Drawn after the feed, for the same reason. Few operations: the scenario's matching
        // runs unoptimised in debug test builds, and the seed-range tests run many seeds.
        let empi = EmpiMix {
            clients: rng.gen_range(2..=3),
            records_per_client: rng.gen_range(6..=10),
            ops_per_client: rng.gen_range(6..=10),
            weights: [
                rng.gen_range(2..=4),
                rng.gen_range(3..=5),
                rng.gen_range(1..=2),
                rng.gen_range(1..=3),
                rng.gen_range(0..=1),
            ],
            repoint_pct: rng.gen_range(50..=80),
            events_page: rng.gen_range(4..=32),
            think_ms_max: rng.gen_range(50..=300),
            poll_ms_max: rng.gen_range(300..=1_000),
        };
        Self {
            seed,
            nodes,
            shard_count,
            replication: 3.min(nodes as usize),
            heartbeat_ms,
            election_ms,
            clock_skew_ms,
            net,
            disk,
            faults,
            fault_every_ms,
            workload,
            safety_secs: options.safety_secs.unwrap_or(15),
            liveness_secs_max: 30,
            request_timeout_ms: 2_000,
            snapshot_logs_since_last,
            logs_kept_behind_snapshot,
            quiesce_after_ms,
            feed,
            empi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_one_set_of_parameters() {
        let o = SimOptions::default();
        assert_eq!(SimParams::derive(7, &o), SimParams::derive(7, &o));
        let p = SimParams::derive(7, &o);
        assert!((3..=5).contains(&p.nodes));
        assert_eq!(p.election_ms.len() as u64, p.nodes);
        let pinned = SimParams::derive(
            7,
            &SimOptions {
                no_faults: true,
                nodes: Some(5),
                shards: Some(64),
                ..SimOptions::default()
            },
        );
        assert_eq!((pinned.nodes, pinned.shard_count, pinned.net.loss_ppm), (5, 64, 0));
        assert_eq!(pinned.faults, FaultSwitches::default());
    }
}
