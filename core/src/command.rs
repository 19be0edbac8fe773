//! The replicated command: the payload of one Raft log entry, and what it carries between shards.
//!
//! It is not openraft's type configuration (`plexus_raft::TypeConfig` names this type as its
//! `D`): the state machines here know nothing of Raft.

use plexus_proto::{Session, ShardId, ShardMap, VertexId, WriteOp};
use serde::{Deserialize, Serialize};

/// Group id of the meta group (membership and shard placement).
pub const META_GROUP: u32 = u32::MAX;

/// One half of a cross-shard edge change, carried from the source vertex's
/// shard to the destination vertex's shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeUpdate {
    /// Follower (its shard owns the out-edge).
    pub src: VertexId,
    /// Followee (its shard owns the in-edge).
    pub dst: VertexId,
    /// True to add the in-edge, false to remove it.
    pub add: bool,
}

/// A replicated command: the payload of one Raft log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A client write. `now_millis` is the proposing leader's clock, stamped
    /// before proposal so that applying stays pure.
    Client {
        /// Exactly-once session, if the client gave one.
        session: Option<Session>,
        /// The write.
        op: WriteOp,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// In-edge updates from `from_shard`'s outbox, numbered from `first_seq`.
    /// Sequence numbers already applied are skipped, so redelivery is harmless.
    EdgeDelivery {
        /// Source shard.
        from_shard: ShardId,
        /// Outbox sequence number of `items[0]`.
        first_seq: u64,
        /// The updates, in outbox order.
        items: Vec<EdgeUpdate>,
    },
    /// The destination shard has applied this shard's outbox entries for
    /// `to_shard` up to and including `upto_seq`; drop them.
    OutboxTrim {
        /// Destination shard.
        to_shard: ShardId,
        /// Last delivered sequence number.
        upto_seq: u64,
    },
    /// Meta group only: set the cluster's shard map at bootstrap.
    SetShardMap(ShardMap),
    /// Nothing; used to commit a leader's first entry or as a barrier.
    Noop,
}
