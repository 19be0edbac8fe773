//! plexus's sans-IO core: the decisions that do not need a socket, a disk or a clock.
//!
//! - `state`: the deterministic shard state machine (filters, timelines, graph partitions,
//!   feature vectors, the exactly-once session table, the cross-shard outbox). Applying a
//!   command is pure: time arrives inside the command, stamped by the proposing leader.
//! - `command`: the replicated `Command`, the payload of one Raft log entry.
//! - `canary`: the simulator's deliberate bugs, named so the state machines can carry theirs.
//!
//! It is not Raft, storage or networking, and it cannot become them by accident: this crate
//! depends on no async runtime, no Raft library, no actor system and no QUIC stack, so code
//! here has no clock, socket or thread to reach for (`cargo tree -p plexus-core` shows it).
//! `plexus-raft` feeds the state machine committed entries and persists its snapshots.

pub mod canary;
pub mod command;
pub mod state;

pub use command::{Command, EdgeUpdate, EmpiBatch, EmpiMsg, EmpiPut, FeedBatch, FeedMsg, META_GROUP};
