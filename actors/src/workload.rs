//! Workloads: application services a node runs above its replicas (the social feed, identity
//! matching), each in a crate of its own above this one.
//!
//! A workload serves some of the protocol's operations (`Workload::serves`). The gateway admits
//! and routes such a request like any other, checks that this node leads the request's shard,
//! and hands it to the workload with the node's registry, through which the workload reads and
//! proposes on any shard. This crate knows the seam, not the workloads: the binary and the
//! simulator decide which ones a node runs (`NodeSeams::workloads`).

use std::sync::Arc;

use futures::future::BoxFuture;
use plexus_proto::{Op, Request, Response};
use plexus_raft::replica::Replica;

use crate::registry::Registry;

/// An application service on the node.
pub trait Workload: Send + Sync + 'static {
    /// Its name, for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether it serves `op`.
    fn serves(&self, op: &Op) -> bool;

    /// Runs one request. `replica` is this node's replica of the request's shard, which leads
    /// it (the gateway checked) at the time of the call.
    fn execute(&self, registry: Arc<Registry>, replica: Replica, req: Request) -> BoxFuture<'static, Response>;

    /// Its counters for the node's metrics, each `(name, help, value)`, names starting with
    /// `plexus_`; none by default.
    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }
}

/// One counter of a workload: `(name, help, value)`.
pub type Counter = (&'static str, &'static str, u64);

/// The workloads a node runs.
pub type Workloads = Vec<Arc<dyn Workload>>;
