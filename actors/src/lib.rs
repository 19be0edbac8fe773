//! The plexus node: the ractor supervision tree and what it supervises.
//!
//! A node supervisor starts one shard supervisor per hosted Raft group, a
//! gateway actor for client requests and the scoring actor pool. Shard actors own replicas
//! (`plexus-raft`) and register them in the `Registry`, which the gateway
//! (client requests, via `plexus-net`) and the peer service (Raft RPCs) read.
//!
//! This crate does not parse command lines or manage processes (that is the
//! `plexus` binary) and holds no replicated state of its own.

pub mod balance;
pub mod clock;
pub mod config;
pub mod deadlines;
pub mod gateway;
pub mod handover;
pub mod metrics;
pub mod metrics_http;
pub mod node;
pub mod peer;
pub mod pump;
pub mod quiesce;
pub mod registry;
pub mod restart;
pub mod score;
pub mod score_batch;
pub mod scoring;
pub mod shard;
pub mod silent;
pub mod stopping;
pub mod workload;

pub use config::NodeConfig;
pub use node::{start_core, start_node, start_node_with, NodeCore, NodeError, NodeHandle, NodeSeams};
pub use workload::{Workload, Workloads};
