//! A node's configuration file (`plexus node --config FILE`).
//!
//! Relative paths in the file are resolved against the file's directory, so a
//! cluster directory can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use plexus_core::state::{FeedLimits, SeenSizing, StateLimits};
use plexus_raft::wal::TASK_YIELDS_MAX;
use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node config.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Paths of the node's TLS material.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), signed by the CA.
    pub node_cert: PathBuf,
    /// This node's private key (PEM).
    pub node_key: PathBuf,
}

/// A cluster member.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerConfig {
    /// Node id (non-zero, unique).
    pub id: u64,
    /// Its QUIC `ip:port`.
    pub addr: SocketAddr,
}

/// The scoring pool's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoringConfig {
    /// A GraphSAGE model in a safetensors file, its tensors named as PyTorch Geometric's
    /// `SAGEConv` names them (`plexus_kernels::weights`), relative to the config file. With one,
    /// the scoring pool serves `ScoreMode::Sage` and the feed ranks by it; without, the feed
    /// ranks by neighbour-mean similarity. The node refuses to start with a file it cannot use.
    pub model: Option<PathBuf>,
    /// The prefix of the model's layer names (`convs.`, `layers.`, ...); unset tries the known
    /// ones.
    pub model_prefix: Option<String>,
}

/// Raft timings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftTimings {
    /// Leader heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, ms.
    pub election_timeout_min_ms: u64,
    /// Election timeout upper bound, ms.
    pub election_timeout_max_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the latest snapshot, so a slightly
    /// lagging follower catches up from the log instead of a snapshot.
    pub logs_kept_behind_snapshot: u64,
    /// How long after a quorum last acknowledged it a leader answers linearizable reads without
    /// a heartbeat round of their own, ms (0: every read confirms leadership with a quorum). At
    /// most half of `election_timeout_min_ms`: the rest is the margin for clock-rate differences
    /// between nodes.
    pub read_lease_ms: u64,
    /// On a graceful stop, how long the node may spend handing the groups it leads to caught-up
    /// followers before it stops anyway, ms (0: no handover; followers elect after a timeout).
    pub handover_timeout_ms: u64,
    /// How often the node hands groups it leads to followers that lead fewer, to keep leaders
    /// spread over the nodes, ms (0: never; see `balance`).
    pub leader_balance_interval_ms: u64,
    /// How long a group must be idle (no write, no linearizable read, nothing left to replicate)
    /// before it goes quiet: its leader stops heartbeating it and its followers stop counting
    /// down to an election, for as long as the leader's node keeps pinging theirs (one ping per
    /// peer every `heartbeat_ms` for all quiet groups), ms (0: groups never go quiet). The first
    /// request to a quiet group wakes it; a linearizable read there pays one heartbeat round.
    pub quiesce_after_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 10_000,
            logs_kept_behind_snapshot: 1_000,
            read_lease_ms: 500,
            // Time for a follower to catch up and win one vote, with room for a slow disk.
            handover_timeout_ms: 3_000,
            leader_balance_interval_ms: 2_000,
            quiesce_after_ms: 2_000,
        }
    }
}

/// Request limits at the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayLimits {
    /// Client requests being served at once by this node; more get `Busy`.
    pub requests_in_flight_max: usize,
    /// Deadline for one request inside the node, ms.
    pub request_timeout_ms: u64,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            requests_in_flight_max: 8_192,
            request_timeout_ms: 5_000,
        }
    }
}

/// The social feed's settings (`[feed]`). Every node of a cluster must be given the same values:
/// the shard state machines apply them, and replicas that disagree would diverge.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FeedConfig {
    /// An author with more followers than this is not fanned out: readers pull its posts.
    pub pulled_followers_min: u64,
    /// Posts kept in each home timeline.
    pub home_len_max: usize,
    /// Posts of the followee copied into a new follower's home timeline.
    pub follow_backfill_posts: usize,
    /// A reader's home timeline is kept up to date (materialised) while the reader has read it
    /// within this window, ms; after that fan-out skips it and the next read rebuilds it.
    pub active_window_ms: u64,
    /// Posts one generation of a reader's seen filter holds before it rotates (two are kept).
    pub seen_items_per_generation: u64,
    /// Target false-positive rate of the seen filter, parts per million (5000 = 0.5%).
    pub seen_fp_rate_ppm: u32,
    /// Largest post, in bytes.
    pub post_bytes_max: usize,
    /// Candidates one ranked page window holds at most (newest first).
    pub rank_candidates_max: usize,
    /// Weight of the similarity between reader and author in a post's score.
    pub rank_similarity_weight: f32,
    /// A post's recency term halves every this many ms (its age taken from the upper bound of
    /// the page's window, so a window ranks the same on every page).
    pub rank_recency_half_life_ms: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        let limits = FeedLimits::default();
        Self {
            pulled_followers_min: limits.pulled_followers_min,
            home_len_max: limits.home_len_max,
            follow_backfill_posts: limits.follow_backfill_posts,
            active_window_ms: limits.active_window_ms,
            seen_items_per_generation: limits.seen.items_per_generation,
            seen_fp_rate_ppm: limits.seen.fp_rate_ppm,
            post_bytes_max: limits.post_bytes_max,
            rank_candidates_max: 2_000,
            rank_similarity_weight: 1.0,
            rank_recency_half_life_ms: 6 * 3_600_000,
        }
    }
}

impl FeedConfig {
    /// The state machine's share of these settings.
    pub fn limits(&self) -> FeedLimits {
        FeedLimits {
            pulled_followers_min: self.pulled_followers_min,
            home_len_max: self.home_len_max,
            follow_backfill_posts: self.follow_backfill_posts,
            active_window_ms: self.active_window_ms,
            seen: SeenSizing {
                items_per_generation: self.seen_items_per_generation,
                fp_rate_ppm: self.seen_fp_rate_ppm,
            },
            post_bytes_max: self.post_bytes_max,
            ..FeedLimits::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=10_000).contains(&self.home_len_max) {
            return bad(format!("feed.home_len_max {} must be in 1..=10000", self.home_len_max));
        }
        if self.follow_backfill_posts > self.home_len_max {
            return bad(format!(
                "feed.follow_backfill_posts {} must be at most feed.home_len_max ({})",
                self.follow_backfill_posts, self.home_len_max
            ));
        }
        if !(1..=1_000_000).contains(&self.seen_items_per_generation) {
            return bad(format!(
                "feed.seen_items_per_generation {} must be in 1..=1000000",
                self.seen_items_per_generation
            ));
        }
        if !(1..=500_000).contains(&self.seen_fp_rate_ppm) {
            return bad(format!(
                "feed.seen_fp_rate_ppm {} must be in 1..=500000",
                self.seen_fp_rate_ppm
            ));
        }
        if !(1..=65_536).contains(&self.post_bytes_max) {
            return bad(format!(
                "feed.post_bytes_max {} must be in 1..=65536",
                self.post_bytes_max
            ));
        }
        let candidates_max = FeedLimits::default().candidates_max as usize;
        if !(1..=candidates_max).contains(&self.rank_candidates_max) {
            return bad(format!(
                "feed.rank_candidates_max {} must be in 1..={candidates_max}",
                self.rank_candidates_max
            ));
        }
        if !self.rank_similarity_weight.is_finite() || self.rank_recency_half_life_ms == 0 {
            return bad(
                "feed.rank_similarity_weight must be finite and feed.rank_recency_half_life_ms positive".into(),
            );
        }
        Ok(())
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's id; must appear in `peers`.
    pub node_id: u64,
    /// Address to bind the QUIC endpoint to.
    pub listen: SocketAddr,
    /// Where the WAL, snapshots and the lock file live.
    pub data_dir: PathBuf,
    /// Token clients must present.
    pub token: String,
    /// Virtual shards in the cluster (fixed at creation).
    #[serde(default = "default_shards")]
    pub shard_count: u32,
    /// Replicas per shard (1..=nodes).
    #[serde(default = "default_replication")]
    pub replication: usize,
    /// TLS material.
    pub tls: TlsPaths,
    /// Every member, this node included.
    pub peers: Vec<PeerConfig>,
    /// Raft timings.
    #[serde(default)]
    pub raft: RaftTimings,
    /// Gateway limits.
    #[serde(default)]
    pub gateway: GatewayLimits,
    /// The social feed's settings (the same on every node).
    #[serde(default)]
    pub feed: FeedConfig,
    /// The scoring pool's settings (the same model on every node, or none anywhere).
    #[serde(default)]
    pub scoring: ScoringConfig,
    /// Async worker threads for this node; unset = one per CPU core. 1 runs the node on a
    /// single-threaded runtime (tokio's `current_thread`): no hand-offs between workers, which is
    /// what several nodes sharing one machine want, so `plexus up` writes 1 (on the 2-core local
    /// cluster it gave 10% more writes/s than two workers per node). A node alone on a machine
    /// should leave it unset so Raft, QUIC and clients use every core.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// How many times the WAL writer, woken by a request, lets every other ready task run before
    /// it takes its batch, so that one burst of appends shares one fsync (0 to 64). Unset = the
    /// WAL's default (4).
    #[serde(default)]
    pub wal_task_yields: Option<u32>,
    /// Zeros the WAL keeps written ahead of its data, in bytes (0: none), so that an fdatasync
    /// rarely also has to write the file's size. Unset = the WAL's default (1 MiB).
    #[serde(default)]
    pub wal_zero_ahead_bytes: Option<u64>,
    /// fsync the WAL (never turn off outside benchmarks of the fsync cost itself).
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Where to serve Prometheus metrics over plain HTTP (`GET /metrics`), for example
    /// `"127.0.0.1:9464"`; unset = no metrics listener. Bind it to a private interface: it has
    /// no TLS and no token.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
}

fn default_shards() -> u32 {
    64
}
fn default_replication() -> usize {
    3
}
fn default_true() -> bool {
    true
}

impl NodeConfig {
    /// Reads and validates a config file, resolving relative paths.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca_cert,
            &mut cfg.tls.node_cert,
            &mut cfg.tls.node_key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = cfg.scoring.model.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shard_count == 0 || self.shard_count > 65_536 {
            return Err(ConfigError::Invalid(format!(
                "shard_count {} must be in 1..=65536",
                self.shard_count
            )));
        }
        if !self.peers.iter().any(|p| p.id == self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "node_id {} is not among peers",
                self.node_id
            )));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return Err(ConfigError::Invalid("peer ids must be unique and non-zero".into()));
        }
        if self.replication == 0 || self.replication > self.peers.len() {
            return Err(ConfigError::Invalid(format!(
                "replication {} must be in 1..={} (the number of nodes)",
                self.replication,
                self.peers.len()
            )));
        }
        if self.raft.read_lease_ms.saturating_mul(2) > self.raft.election_timeout_min_ms {
            return Err(ConfigError::Invalid(format!(
                "raft.read_lease_ms {} must be at most half of raft.election_timeout_min_ms ({})",
                self.raft.read_lease_ms, self.raft.election_timeout_min_ms
            )));
        }
        if self.raft.quiesce_after_ms != 0 && self.raft.quiesce_after_ms < self.raft.heartbeat_ms {
            return Err(ConfigError::Invalid(format!(
                "raft.quiesce_after_ms {} must be 0 (never quiet) or at least raft.heartbeat_ms ({})",
                self.raft.quiesce_after_ms, self.raft.heartbeat_ms
            )));
        }
        if self.token.len() < 16 {
            return Err(ConfigError::Invalid("token must be at least 16 characters".into()));
        }
        if let Some(yields) = self.wal_task_yields.filter(|y| *y > TASK_YIELDS_MAX) {
            return Err(ConfigError::Invalid(format!(
                "wal_task_yields {yields} must be at most {TASK_YIELDS_MAX}"
            )));
        }
        self.feed.validate()?;
        if self.worker_threads == Some(0) {
            return Err(ConfigError::Invalid(
                "worker_threads must be at least 1 (or unset)".into(),
            ));
        }
        Ok(())
    }

    /// The limits the node's shard state machines apply with (every node of a cluster must
    /// compute the same ones).
    pub fn state_limits(&self) -> StateLimits {
        StateLimits {
            feed: self.feed.limits(),
            ..StateLimits::default()
        }
    }

    /// Ids of every member, ascending.
    pub fn member_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example shipped in `deploy/`, which every test starts from.
    fn example() -> NodeConfig {
        let text = include_str!("../../deploy/node.example.toml");
        toml::from_str(text).expect("deploy/node.example.toml parses")
    }

    #[test]
    fn the_deploy_example_is_valid() {
        example().validate().expect("deploy/node.example.toml is valid");
    }

    #[test]
    fn wal_task_yields_and_worker_threads_out_of_range_are_refused() {
        let mut cfg = example();
        cfg.wal_task_yields = Some(TASK_YIELDS_MAX);
        cfg.worker_threads = Some(1);
        assert!(cfg.validate().is_ok(), "the bounds themselves are allowed");
        cfg.wal_task_yields = Some(TASK_YIELDS_MAX + 1);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("wal_task_yields 65 must be at most 64"), "{err}");
        cfg.wal_task_yields = None;
        cfg.worker_threads = Some(0);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("worker_threads must be at least 1"), "{err}");
    }

    #[test]
    fn a_read_lease_longer_than_half_the_shortest_election_timeout_is_refused() {
        let mut cfg = example();
        cfg.raft.election_timeout_min_ms = 1_000;
        cfg.raft.read_lease_ms = 500;
        assert!(cfg.validate().is_ok(), "exactly half is allowed");
        cfg.raft.read_lease_ms = 501;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("raft.read_lease_ms 501 must be at most half of raft.election_timeout_min_ms (1000)"),
            "{err}"
        );
        cfg.raft.read_lease_ms = 0;
        assert!(cfg.validate().is_ok(), "0 turns the lease off");
    }
}
