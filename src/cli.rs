//! Command-line definitions and dispatch.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Default cluster directory of `plexus up` and default home of client.toml.
pub const DEFAULT_DIR: &str = "plexus-data";

/// Errors reported by subcommands: a message for the operator.
pub type CliResult<T = ()> = Result<T, String>;

#[derive(Parser, Debug)]
#[command(name = "plexus", version, about = "Distributed runtime for social and identity data")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a local development cluster (one process per node) until interrupted.
    Up(UpArgs),
    /// Run one node from a config file.
    Node {
        /// Path of the node's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a cluster CA and node certificates for real deployments.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Show nodes and shards: pids, addresses, leaders, terms, applied indexes.
    Status(StatusArgs),
    /// Graph operations (follow graph).
    #[command(subcommand)]
    Graph(GraphCmd),
    /// Timeline operations.
    #[command(subcommand)]
    Timeline(TimelineCmd),
    /// Named Bloom filter operations.
    #[command(subcommand)]
    Filter(FilterCmd),
    /// The social feed: post, home feed, seen, delete, users, bulk import.
    #[command(subcommand)]
    Feed(crate::feed_cmd::FeedCmd),
    /// Identity matching: ingest, upsert, match, explain, link/unlink, identities, change events.
    #[command(subcommand)]
    Empi(crate::empi_cmd::EmpiCmd),
    /// Drive a running cluster and report throughput and latency.
    Bench(BenchArgs),
    /// Per-vertex feature vectors (the inputs of scoring).
    #[command(subcommand)]
    Features(crate::score_cmd::FeaturesCmd),
    /// Rank candidate vertices by feature similarity to a vertex.
    Score(crate::score_cmd::ScoreArgs),
    /// The kernel backend on this machine: `info`, and the aggregation `bench`.
    #[command(subcommand)]
    Kernels(crate::kernels_cmd::KernelsCmd),
    /// Run the deterministic simulator: a whole cluster with faults, on virtual time, per seed.
    Sim(crate::sim_cmd::SimArgs),
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Nodes to run (only when creating the cluster; a re-run uses the existing cluster).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Cluster directory: certificates, node data, logs and client.toml.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Virtual shards (only when creating the cluster).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Replicas per shard (only when creating the cluster).
    #[arg(long)]
    pub replication: Option<usize>,
    /// First UDP port to try for node endpoints (when creating the cluster).
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Make a new cluster CA: DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Cluster name written into the CA certificate.
        #[arg(long, default_value = "plexus")]
        name: String,
    },
    /// Make a node certificate signed by the CA: DIR/node-ID.pem and DIR/node-ID-key.pem.
    Node {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Node id.
        #[arg(long)]
        id: u64,
        /// Extra subject alternative names (host names or IPs the node is reached at).
        #[arg(long)]
        san: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct ClientOpts {
    /// Client config written by `plexus up` (seeds, CA, token).
    #[arg(long, default_value = "plexus-data/client.toml", global = true)]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DirectionArg {
    Out,
    In,
}

#[derive(Subcommand, Debug)]
pub enum GraphCmd {
    /// Add the edge A → B.
    Follow {
        a: u64,
        b: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove the edge A → B.
    Unfollow {
        a: u64,
        b: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List A's neighbours.
    Neighbors {
        a: u64,
        #[arg(long, value_enum, default_value = "out")]
        direction: DirectionArg,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Start after this vertex id (paging).
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
pub enum TimelineCmd {
    /// Append ITEM to OWNER's timeline and print the new entry id.
    Append {
        owner: u64,
        item: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Read a page of OWNER's timeline.
    Read {
        owner: u64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, conflicts_with = "after")]
        before: Option<u64>,
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
pub enum FilterCmd {
    /// Add keys to the named filter (created with defaults if absent).
    Add {
        name: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Test keys against the named filter.
    Contains {
        name: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Workload {
    Write,
    Read,
    /// The social feed: a power-law follow graph, one post per 50 ranked home reads.
    Feed,
    /// Identity matching: bulk link of synthetic records with ground truth, quality, match
    /// latency, ablation.
    Empi,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Distinct timeline owners.
    #[arg(long, default_value_t = 1000)]
    pub owners: u64,
    /// Item size in bytes for writes.
    #[arg(long, default_value_t = 64)]
    pub item_bytes: usize,
    /// Runtime threads of the benchmark client. 1 (the default) runs the client and every
    /// request loop on one thread, like redis-benchmark and the etcd driver: a load generator
    /// that shares a small machine with the nodes then does not wake a second thread per reply.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Feed: users in the generated follow graph.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Feed: follow edges, about.
    #[arg(long, default_value_t = 5_000_000)]
    pub edges: u64,
    /// Feed: users who read (their home timelines are materialised).
    #[arg(long, default_value_t = 10_000)]
    pub readers: u64,
    /// Feed: posts made before the measurement.
    #[arg(long, default_value_t = 20_000)]
    pub posts_before: u64,
    /// Feed: the seed of the graph, the readers and the operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Feed: authors with more followers are pulled at read time (the cluster's
    /// `feed.pulled_followers_min`; the Redis design uses it too).
    #[arg(long, default_value_t = 10_000)]
    pub pulled_followers_min: u64,
    /// Feed: home list length (the cluster's `feed.home_len_max`), for the Redis design.
    #[arg(long, default_value_t = 800)]
    pub home_len_max: usize,
    /// Feed: home reads per post in the measured mix.
    #[arg(long, default_value_t = 50)]
    pub reads_per_post: u32,
    /// Feed: read home feeds newest first instead of ranked.
    #[arg(long)]
    pub chronological: bool,
    /// Feed: run the classic Redis design against the redis-server at this address instead of plexus.
    #[arg(long)]
    pub redis: Option<String>,
    /// EMPI: synthetic records bulk-linked and scored against their ground truth.
    #[arg(long, default_value_t = 500_000)]
    pub records: usize,
    /// EMPI: records held during the match phase (more are generated and linked first); 0
    /// skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub match_records: usize,
    /// EMPI: match clients, one call in flight each.
    #[arg(long, default_value_t = 16)]
    pub match_clients: usize,
    /// EMPI: records per ingest batch.
    #[arg(long, default_value_t = 2_000)]
    pub batch: usize,
    /// EMPI: ingest batches in flight.
    #[arg(long, default_value_t = 2)]
    pub ingest_concurrency: usize,
    /// EMPI: skip the batch pipeline's ablation.
    #[arg(long)]
    pub no_ablation: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> CliResult {
    match cli.cmd {
        Cmd::Up(args) => crate::up::run(args),
        Cmd::Node { config } => crate::node_cmd::run(&config),
        Cmd::Certs(c) => crate::certs::run(c),
        Cmd::Status(a) => crate::client_cmds::status(&a.client),
        Cmd::Graph(c) => crate::client_cmds::graph(c),
        Cmd::Timeline(c) => crate::client_cmds::timeline(c),
        Cmd::Filter(c) => crate::client_cmds::filter(c),
        Cmd::Feed(c) => crate::feed_cmd::run(c),
        Cmd::Empi(c) => crate::empi_cmd::run(c),
        Cmd::Bench(a) => crate::bench::run(a),
        Cmd::Features(c) => crate::score_cmd::features(c),
        Cmd::Score(a) => crate::score_cmd::score(a),
        Cmd::Kernels(c) => crate::kernels_cmd::run(c),
        Cmd::Sim(a) => crate::sim_cmd::run(a),
    }
}

/// A multi-threaded tokio runtime for subcommands that need one.
pub fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Logging to stderr, filtered by `PLEXUS_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLEXUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    // Colour codes only on a terminal: log files and container logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
