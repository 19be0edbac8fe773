//! The replicated command: the payload of one Raft log entry, and what it carries between shards.
//!
//! It is not openraft's type configuration (`plexus_raft::TypeConfig` names this type as its
//! `D`): the state machines here know nothing of Raft.

use plexus_proto::{FeedPost, MasterId, PersonRecord, PostRef, Session, ShardId, ShardMap, UserId, VertexId, WriteOp};
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
    /// Feed messages from `from_shard`'s feed outbox, numbered from `first_seq`; sequence
    /// numbers already applied are skipped. `now_millis` (the proposing leader's clock) tells
    /// which home timelines are still materialised.
    FeedDelivery {
        /// Source shard.
        from_shard: ShardId,
        /// Feed-outbox sequence number of `items[0]`.
        first_seq: u64,
        /// The messages, in outbox order.
        items: Vec<FeedMsg>,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// The destination shard has applied this shard's feed-outbox entries for `to_shard` up to
    /// and including `upto_seq`; drop them.
    FeedOutboxTrim {
        /// Destination shard.
        to_shard: ShardId,
        /// Last delivered sequence number.
        upto_seq: u64,
    },
    /// Feed messages from several source shards to this one in one entry, each batch as
    /// `FeedDelivery` would carry it (a node's pump gathers the outboxes of every shard it
    /// leads, so one entry per destination replaces one per pair of shards). Answers
    /// `Counts`, each batch's new delivered-up-to in order; a batch with a gap or a stray
    /// recipient refuses the whole entry.
    FeedDeliveries {
        /// The batches, at most one per source shard.
        batches: Vec<FeedBatch>,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// The destinations have applied this shard's feed-outbox entries up to these sequence
    /// numbers: drop them, for every `(destination shard, last delivered)` at once.
    FeedOutboxTrims {
        /// Per destination, its last delivered sequence number.
        trims: Vec<(ShardId, u64)>,
    },
    /// Mark `user` active at `now_millis`. A timeline that was not materialised (never, or not
    /// within the active window) starts empty and the answer is `Bool(false)`: the feed service
    /// then rebuilds it with `FeedRebuild`; a materialised one answers `Bool(true)`.
    FeedActivate {
        /// The reader.
        user: UserId,
        /// The feed service's clock, in Unix milliseconds.
        now_millis: u64,
    },
    /// Merge posts pulled from the followed authors' timelines into `user`'s home timeline (a
    /// rebuild after `FeedActivate` answered false); posts already there or deleted since are
    /// skipped. Answers `Count(posts added)`.
    FeedRebuild {
        /// The reader.
        user: UserId,
        /// The posts, any order.
        posts: Vec<FeedPost>,
        /// The feed service's clock, in Unix milliseconds.
        now_millis: u64,
    },
    /// EMPI: store records of this shard with the identities and blocking keys the EMPI service
    /// decided; each replaces the record of the same `SOURCE:ID` (keeping its steward
    /// constraints), and its index and membership changes go out through the EMPI outbox. A put
    /// whose `base` is not the stored record's version (another put wrote it since the service
    /// read it, or this is a repeat of a put that applied) is skipped: it is superseded. Answers
    /// `Counts`, per put the identity the record holds once it applied (not always the put's:
    /// a record a steward linked keeps its own), or 0 where it was superseded; a record of
    /// another shard refuses the whole entry.
    EmpiPut {
        /// The records.
        puts: Vec<EmpiPut>,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// EMPI: a steward's constraint between a record of this shard and another (`link`: they
    /// stay together; else: never joined by automatic matching); the other record's shard gets
    /// the same constraint through the outbox. Answers `Changed`.
    EmpiConstrain {
        /// The record of this shard.
        key: String,
        /// The other record.
        other: String,
        /// Link (true) or unlink (false).
        link: bool,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// EMPI: move a record of this shard to another identity (a steward's split). Answers
    /// `Changed`.
    EmpiReassign {
        /// The record.
        key: String,
        /// Its new identity.
        master: MasterId,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// EMPI: merge identity `from` (of this shard) into `into`: `from` records `Merged` and sends
    /// each member to `into`. Answers `Count(members moved)`.
    EmpiMerge {
        /// The identity merged away.
        from: MasterId,
        /// The surviving identity.
        into: MasterId,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// EMPI: messages from several source shards' EMPI outboxes, as `FeedDeliveries` carries
    /// the feed's. Answers `Counts`.
    EmpiDeliveries {
        /// The batches, at most one per source shard.
        batches: Vec<EmpiBatch>,
        /// Leader wall clock at proposal, in Unix milliseconds.
        now_millis: u64,
    },
    /// EMPI: drop delivered EMPI-outbox entries, per destination. Answers `Count(dropped)`.
    EmpiOutboxTrims {
        /// Per destination, its last delivered sequence number.
        trims: Vec<(ShardId, u64)>,
    },
    /// EMPI: store the matching model (on the model's shard); a version not above the stored
    /// one changes nothing. Answers `Changed`.
    EmpiSetModel {
        /// Its version.
        version: u64,
        /// The model (JSON, as `plexus-empi` writes it).
        model: Vec<u8>,
    },
    /// Meta group only: set the cluster's shard map at bootstrap.
    SetShardMap(ShardMap),
    /// Nothing; used to commit a leader's first entry or as a barrier.
    Noop,
    /// A workload's command proposed for one client request under the client's exactly-once
    /// session (the EMPI service's upsert put and steward constraint): a retry of the request is
    /// answered from the session table, and a late copy of one the client has moved past is
    /// `StaleSession`, neither applied again. Only `EmpiPut` and `EmpiConstrain` may be wrapped;
    /// anything else is `BadRequest`, not applied.
    InSession {
        /// The client's session, as its request carried it.
        session: Session,
        /// The command.
        cmd: Box<Command>,
    },
}

impl Command {
    /// The variant's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Client { .. } => "Client",
            Command::EdgeDelivery { .. } => "EdgeDelivery",
            Command::OutboxTrim { .. } => "OutboxTrim",
            Command::FeedDelivery { .. } => "FeedDelivery",
            Command::FeedOutboxTrim { .. } => "FeedOutboxTrim",
            Command::FeedDeliveries { .. } => "FeedDeliveries",
            Command::FeedOutboxTrims { .. } => "FeedOutboxTrims",
            Command::FeedActivate { .. } => "FeedActivate",
            Command::FeedRebuild { .. } => "FeedRebuild",
            Command::EmpiPut { .. } => "EmpiPut",
            Command::EmpiConstrain { .. } => "EmpiConstrain",
            Command::EmpiReassign { .. } => "EmpiReassign",
            Command::EmpiMerge { .. } => "EmpiMerge",
            Command::EmpiDeliveries { .. } => "EmpiDeliveries",
            Command::EmpiOutboxTrims { .. } => "EmpiOutboxTrims",
            Command::EmpiSetModel { .. } => "EmpiSetModel",
            Command::SetShardMap(_) => "SetShardMap",
            Command::Noop => "Noop",
            Command::InSession { .. } => "InSession",
        }
    }

    /// This command under `session`, if there is one (`InSession`).
    pub fn in_session(self, session: Option<Session>) -> Command {
        match session {
            Some(session) => Command::InSession {
                session,
                cmd: Box::new(self),
            },
            None => self,
        }
    }

    /// Whether `InSession` may wrap this command: a workload's write for one client request.
    pub fn takes_session(&self) -> bool {
        matches!(self, Command::EmpiPut { .. } | Command::EmpiConstrain { .. })
    }
}

/// One source shard's feed messages for one destination, numbered from `first_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBatch {
    /// Source shard.
    pub from_shard: ShardId,
    /// Feed-outbox sequence number of `items[0]`.
    pub first_seq: u64,
    /// The messages, in outbox order.
    pub items: Vec<FeedMsg>,
}

/// A message of the feed workload from an author's shard to a reader's shard, carried by the
/// feed outbox (exactly once and in order per pair of shards, like edge updates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedMsg {
    /// A new post for the home timelines of `recipients` (users of the destination shard).
    Post {
        /// The post.
        post: FeedPost,
        /// Followers (and the author) on the destination shard, ascending.
        recipients: Vec<UserId>,
    },
    /// An author's latest posts for a new follower's home timeline.
    Backfill {
        /// The new follower.
        user: UserId,
        /// The author's latest posts (every one by the same author).
        posts: Vec<FeedPost>,
    },
    /// `user` unfollowed `author`: drop the author's posts from the user's home timeline.
    Purge {
        /// The former follower.
        user: UserId,
        /// The author.
        author: UserId,
    },
    /// A post was deleted: drop it from the home timelines of `recipients`, and remember it so a
    /// late copy cannot bring it back.
    Delete {
        /// The deleted post.
        post: PostRef,
        /// Followers (and the author) on the destination shard, ascending.
        recipients: Vec<UserId>,
    },
    /// `author` has crossed the follower threshold: from now on readers pull its posts.
    Pulled {
        /// The author.
        author: UserId,
    },
}

impl FeedMsg {
    /// Approximate bytes the message holds, the unit of the feed outbox's cap.
    pub fn bytes(&self) -> usize {
        const POST_OVERHEAD_BYTES: usize = 24;
        match self {
            FeedMsg::Post { post, recipients } => POST_OVERHEAD_BYTES + post.text.len() + 8 * recipients.len(),
            FeedMsg::Backfill { posts, .. } => {
                8 + posts.iter().map(|p| POST_OVERHEAD_BYTES + p.text.len()).sum::<usize>()
            }
            FeedMsg::Purge { .. } | FeedMsg::Pulled { .. } => 16,
            FeedMsg::Delete { recipients, .. } => 16 + 8 * recipients.len(),
        }
    }
}

/// One record as the EMPI service decided to store it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmpiPut {
    /// The record.
    pub record: PersonRecord,
    /// Its identity.
    pub master: MasterId,
    /// Its blocking keys.
    pub blocks: Vec<String>,
    /// The version (`updated_millis`) of the stored record the service placed it against;
    /// `None`: there was none. A put applies only over that version, so a late repeat of an
    /// older put never overwrites a newer one.
    pub base: Option<u64>,
}

/// One source shard's EMPI messages for one destination, numbered from `first_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmpiBatch {
    /// Source shard.
    pub from_shard: ShardId,
    /// EMPI-outbox sequence number of `items[0]`.
    pub first_seq: u64,
    /// The messages, in outbox order.
    pub items: Vec<EmpiMsg>,
}

/// A message of identity matching between shards, carried by the EMPI outbox (exactly once and
/// in order per pair of shards).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmpiMsg {
    /// Index `key` under blocking key `block` (to the block's shard).
    IndexAdd {
        /// The blocking key.
        block: String,
        /// The record.
        key: String,
    },
    /// Drop `key` from blocking key `block`.
    IndexRemove {
        /// The blocking key.
        block: String,
        /// The record.
        key: String,
    },
    /// `key` joined identity `master` (to the master's shard, which records the event; a merged
    /// master answers by sending the record on to the survivor). What older outboxes hold;
    /// records now send `MemberEnter`, which this is with no steward unlinks.
    MemberJoin {
        /// The identity.
        master: MasterId,
        /// The record.
        key: String,
    },
    /// `key` left identity `master`.
    MemberLeave {
        /// The identity.
        master: MasterId,
        /// The record.
        key: String,
    },
    /// Move record `key` from identity `from` to identity `master` (to the record's shard; after
    /// a merge). Applied only while the record still names `from`: a put that moved it since
    /// is newer and wins.
    Reassign {
        /// The record.
        key: String,
        /// The identity it is moved from (the merged one).
        from: MasterId,
        /// Its new identity.
        master: MasterId,
    },
    /// A steward's constraint, for the other record's side (to the record's shard).
    Constrain {
        /// The record of the destination shard.
        key: String,
        /// The other record.
        other: String,
        /// Link or unlink.
        link: bool,
    },
    /// `key` joins identity `master`, with its steward constraints as its shard holds them
    /// when it moves (to the master's shard). The identity takes it unless it is unlinked from
    /// a member, or a member from it (as far as the identity has heard, and the record is not
    /// linked to that member: its own view is the fresher one, since a link replaces an
    /// unlink); then it answers `EnterRefused`, so no placement decided before an unlink,
    /// whenever it lands, joins the pair. A merged identity sends the record on to the
    /// survivor.
    MemberEnter {
        /// The identity.
        master: MasterId,
        /// The record.
        key: String,
        /// Its steward unlinks, sorted.
        unlinks: Vec<String>,
        /// Its steward links, sorted.
        links: Vec<String>,
    },
    /// Identity `from` did not take record `key` because of its unlink with `apart_from` (to the
    /// record's shard). If the record still names `from` and is not linked to `apart_from` by
    /// now, it moves to `master`, an identity of its own; if a link replaced the unlink, it
    /// enters `from` again with its constraints as they are now.
    EnterRefused {
        /// The record.
        key: String,
        /// The identity that refused it.
        from: MasterId,
        /// Its own identity to go to.
        master: MasterId,
        /// The member (or record) it is unlinked from.
        apart_from: String,
    },
    /// Record `key`'s steward unlinks changed (to the shard of `master`, the identity it names,
    /// which keeps its members' unlinks for the check of `MemberEnter`).
    MemberUnlinks {
        /// The identity.
        master: MasterId,
        /// The record.
        key: String,
        /// Its steward unlinks now, sorted.
        unlinks: Vec<String>,
    },
}

impl EmpiMsg {
    /// Approximate bytes the message holds, the unit of the EMPI outbox's cap.
    pub fn bytes(&self) -> usize {
        match self {
            EmpiMsg::IndexAdd { block, key } | EmpiMsg::IndexRemove { block, key } => 8 + block.len() + key.len(),
            EmpiMsg::MemberJoin { key, .. } | EmpiMsg::MemberLeave { key, .. } | EmpiMsg::Reassign { key, .. } => {
                16 + key.len()
            }
            EmpiMsg::Constrain { key, other, .. } => 9 + key.len() + other.len(),
            EmpiMsg::MemberEnter {
                key, unlinks, links, ..
            } => 16 + key.len() + unlinks.iter().chain(links).map(|u| 8 + u.len()).sum::<usize>(),
            EmpiMsg::EnterRefused { key, apart_from, .. } => 16 + key.len() + apart_from.len(),
            EmpiMsg::MemberUnlinks { key, unlinks, .. } => {
                16 + key.len() + unlinks.iter().map(|u| 8 + u.len()).sum::<usize>()
            }
        }
    }
}
