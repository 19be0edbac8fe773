//! Replication for plexus: what one shard replica is made of.
//!
//! The deterministic shard state machine it replicates is `plexus_core::state`.
//!
//! - `wal`: the node's write-ahead log shared by every Raft group on the node
//!   (one fsync covers a batch of many groups) and the snapshot files.
//! - `log_store`, `sm_store`: openraft's storage traits over those.
//! - `network`: Raft RPC encoding over the `RaftTransport` seam.
//! - `replica`: one running group replica and the calls the node makes on it.
//! - `handover`: a stopping leader passes its group to a caught-up follower.
//! - `quiesce`: idle groups stop heartbeating; one ping per peer vouches for them (sans-IO).
//! - `types`: the openraft type configuration (the `Command` it carries is `plexus-core`'s).
//! - `sim_hooks`: simulation-only canary bugs and an applied-entry observer,
//!   off unless the simulator switches them on.
//!
//! It does not know about QUIC, actors or clients: the network reaches it
//! through the `RaftTransport` trait so the simulator can substitute one.

pub mod handover;
pub mod log_store;
pub mod network;
pub mod quiesce;
pub mod replica;
pub mod sim_hooks;
pub mod sm_store;
pub mod types;
pub mod wal;

pub use types::*;
