//! Typed client messages: the bodies of `Hello`, `HelloAck`, `Request` and
//! `Response` frames. Field order is wire order (postcard), so fields are only
//! ever appended in a new protocol version, never reordered.

use serde::{Deserialize, Serialize};

use crate::empi::{EmpiRead, EmpiReply, EmpiRequest, EmpiState};
use crate::feed::{FeedCandidates, FeedPage, FeedPost, FeedRequest, PostRef, UserId};
use crate::shard::{shard_for_key, ShardId, ShardKey};

/// A node's id in the cluster (also its openraft node id).
pub type NodeId = u64;
/// A graph vertex.
pub type VertexId = u64;
/// The owner of a timeline.
pub type OwnerId = u64;
/// A timeline entry id: `millis << 20 | seq`, strictly increasing per timeline.
pub type EntryId = u64;

/// Bits of an entry id taken by the per-shard sequence.
pub const ENTRY_SEQ_BITS: u32 = 20;

/// First frame of a client connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster's client token (from `client.toml`).
    pub token: String,
    /// Free-form client name for logs.
    pub client_name: String,
}

/// Answer to `Hello`.
pub type HelloAck = Result<HelloOk, ErrorReply>;

/// A successful handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The node that answered.
    pub node_id: NodeId,
    /// That node's current view of the shard map.
    pub shard_map: ShardMap,
}

/// One client request; the body of a `Request` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The shard the client routed this request to; checked by the node.
    pub shard: ShardId,
    /// Read consistency (ignored for writes, which are always replicated).
    pub consistency: Consistency,
    /// Exactly-once session for writes; `None` for reads and admin calls.
    pub session: Option<Session>,
    /// What to do.
    pub op: Op,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Served by the leader after a read-index round: linearizable.
    #[default]
    Linearizable,
    /// Served by any replica from its applied state: may be stale (a follower of a group
    /// that just went idle learns the last commits within one Raft heartbeat, 250 ms by default).
    Stale,
}

/// Identifies a write for exactly-once application.
///
/// `seq` is unique per `client_id` and increases; `ack_below` promises the
/// client has seen the answers of every `seq < ack_below`, so the state
/// machine may forget them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random id chosen by the client at start-up.
    pub client_id: u64,
    /// This request's sequence number.
    pub seq: u64,
    /// Every answer below this sequence number has been received.
    pub ack_below: u64,
}

/// An operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A replicated write.
    Write(WriteOp),
    /// A read of one shard.
    Read(ReadOp),
    /// A cluster-level call answered by the node itself.
    Admin(AdminOp),
    /// Rank candidates by feature similarity to a vertex (answered `Reply::Scores`).
    ///
    /// Routed by `vertex`; served by any replica of its shard from applied
    /// (possibly stale) state, never under a session.
    Score(ScoreRequest),
    /// A call of the feed service (answered `Reply::FeedPage`), routed by its user and served by
    /// the node leading that user's shard.
    Feed(FeedRequest),
    /// A call of the EMPI service (answered `Reply::Empi`), served by the node leading the shard
    /// it is routed to.
    Empi(Box<EmpiRequest>),
}

impl Op {
    /// The key this operation is routed by, if it touches a shard.
    pub fn shard_key(&self) -> Option<ShardKey> {
        match self {
            Op::Write(w) => Some(w.shard_key()),
            Op::Read(r) => Some(r.shard_key()),
            Op::Admin(_) => None,
            Op::Score(s) => Some(ShardKey::Id(s.vertex)),
            Op::Feed(f) => Some(ShardKey::Id(f.user())),
            Op::Empi(e) => Some(e.shard_key()),
        }
    }

    /// Every kind of operation, in the order of the enum's variants (its wire tags).
    pub const KINDS: [&'static str; 6] = ["write", "read", "admin", "score", "feed", "empi"];

    /// The index of this operation's kind in `Op::KINDS` (its wire tag).
    pub fn kind(&self) -> usize {
        match self {
            Op::Write(_) => 0,
            Op::Read(_) => 1,
            Op::Admin(_) => 2,
            Op::Score(_) => 3,
            Op::Feed(_) => 4,
            Op::Empi(_) => 5,
        }
    }

    /// Whether the client gives this operation an exactly-once session: every replicated write,
    /// and the EMPI calls that write for one request (`EmpiRequest::takes_session`).
    pub fn takes_session(&self) -> bool {
        match self {
            Op::Write(_) => true,
            Op::Empi(e) => e.takes_session(),
            Op::Read(_) | Op::Admin(_) | Op::Score(_) | Op::Feed(_) => false,
        }
    }

    /// The shard this operation belongs to in a cluster of `shard_count` shards.
    pub fn shard(&self, shard_count: u32) -> Option<ShardId> {
        self.shard_key().map(|k| shard_for_key(&k, shard_count))
    }
}

/// Parameters of a new named Bloom filter.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterSpec {
    /// Items the mutable filter is sized for before it should be sealed.
    pub expected_items: u64,
    /// Target false-positive rate, in parts per million (5000 = 0.5%).
    pub fp_rate_ppm: u32,
}

impl Default for FilterSpec {
    fn default() -> Self {
        Self {
            expected_items: 100_000,
            fp_rate_ppm: 5_000,
        }
    }
}

/// Replicated writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Create a named filter; a no-op if it exists with the same spec.
    FilterCreate {
        /// Filter name.
        name: String,
        /// Sizing.
        spec: FilterSpec,
    },
    /// Add keys to a named filter, creating it with defaults if absent.
    FilterAdd {
        /// Filter name.
        name: String,
        /// Keys to add.
        #[serde(with = "crate::bytes::byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// Seal the filter's mutable part into an immutable binary fuse filter.
    FilterSeal {
        /// Filter name.
        name: String,
    },
    /// Append an item to a timeline; answers `Reply::Appended`.
    TimelineAppend {
        /// Timeline owner.
        owner: OwnerId,
        /// Opaque item bytes.
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
    },
    /// Delete an entry; answers `Reply::Changed`.
    TimelineDelete {
        /// Timeline owner.
        owner: OwnerId,
        /// Entry to delete.
        id: EntryId,
    },
    /// Add the edge `src → dst`; answers `Reply::Changed`.
    Follow {
        /// Follower.
        src: VertexId,
        /// Followee.
        dst: VertexId,
    },
    /// Remove the edge `src → dst`; answers `Reply::Changed`.
    Unfollow {
        /// Follower.
        src: VertexId,
        /// Followee.
        dst: VertexId,
    },
    /// Replace a vertex's feature vector (an empty vector removes it);
    /// answers `Reply::Changed`. Values must be finite.
    SetFeatures {
        /// The vertex.
        vertex: VertexId,
        /// Its features (at most the server's `features_dim_max` values).
        features: Vec<f32>,
    },
    /// Post to the feed: append `text` to the author's timeline and fan it out to the home
    /// timelines of the author's followers; answers `Reply::Appended(post id)` once the post is
    /// durable in the author's timeline (fan-out follows asynchronously).
    FeedPost {
        /// The author, a registered feed user.
        author: UserId,
        /// The post's text.
        #[serde(with = "serde_bytes")]
        text: Vec<u8>,
    },
    /// Delete a post from its author's timeline and from every home timeline it reached;
    /// answers `Reply::Changed(it existed)`.
    FeedDelete {
        /// The author.
        author: UserId,
        /// The post's id.
        id: EntryId,
    },
    /// Mark posts seen by `user` (its seen filter); answers `Reply::Changed(any was new)`.
    FeedSeen {
        /// The reader.
        user: UserId,
        /// The posts (at most `FEED_SEEN_ITEMS_MAX`).
        posts: Vec<PostRef>,
    },
    /// Register a feed user (following or being followed registers one too); answers
    /// `Reply::Changed(it is new)`.
    FeedUserAdd {
        /// The user.
        user: UserId,
    },
    /// Add the edges `src → dst` for every `dst` (at most `FOLLOW_BATCH_MAX`), all or none;
    /// answers `Reply::Count(edges that were new)`. For bulk loads: one command per follower.
    FollowMany {
        /// Follower.
        src: VertexId,
        /// Followees.
        dsts: Vec<VertexId>,
    },
}

impl WriteOp {
    /// The routing key: filters by name, timelines by owner, edges by source.
    pub fn shard_key(&self) -> ShardKey {
        match self {
            WriteOp::FilterCreate { name, .. } | WriteOp::FilterAdd { name, .. } | WriteOp::FilterSeal { name } => {
                ShardKey::Name(name.clone())
            }
            WriteOp::TimelineAppend { owner, .. } | WriteOp::TimelineDelete { owner, .. } => ShardKey::Id(*owner),
            WriteOp::Follow { src, .. } | WriteOp::Unfollow { src, .. } | WriteOp::FollowMany { src, .. } => {
                ShardKey::Id(*src)
            }
            WriteOp::SetFeatures { vertex, .. } => ShardKey::Id(*vertex),
            WriteOp::FeedPost { author, .. } | WriteOp::FeedDelete { author, .. } => ShardKey::Id(*author),
            WriteOp::FeedSeen { user, .. } | WriteOp::FeedUserAdd { user } => ShardKey::Id(*user),
        }
    }
}

/// Edge direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Direction {
    /// Vertices this vertex follows.
    #[default]
    Out,
    /// Vertices following this vertex.
    In,
}

/// Where a timeline page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Cursor {
    /// The newest entries.
    #[default]
    Latest,
    /// Entries with ids strictly below this one, newest first.
    Before(EntryId),
    /// Entries with ids strictly above this one, oldest first.
    After(EntryId),
}

/// Reads of one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadOp {
    /// Which keys may be in the filter (false positives possible, no false negatives).
    FilterContains {
        /// Filter name.
        name: String,
        /// Keys to test.
        #[serde(with = "crate::bytes::byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// A page of a timeline.
    TimelineRead {
        /// Timeline owner.
        owner: OwnerId,
        /// Where the page starts.
        cursor: Cursor,
        /// Most entries to return (capped by the server).
        limit: u32,
    },
    /// A page of a vertex's neighbours, in ascending id order.
    Neighbors {
        /// The vertex.
        vertex: VertexId,
        /// Out- or in-neighbours.
        direction: Direction,
        /// Start after this id (exclusive), for paging.
        after: Option<VertexId>,
        /// Most ids to return (capped by the server).
        limit: u32,
    },
    /// The whole neighbour set as a portable roaring treemap.
    NeighborSet {
        /// The vertex.
        vertex: VertexId,
        /// Out- or in-neighbours.
        direction: Direction,
    },
    /// Number of neighbours.
    Degree {
        /// The vertex.
        vertex: VertexId,
        /// Out- or in-degree.
        direction: Direction,
    },
    /// Whether `src → dst` exists (asked of `src`'s shard).
    HasEdge {
        /// Follower.
        src: VertexId,
        /// Followee.
        dst: VertexId,
    },
    /// Feature vectors of vertices that all live on one shard, answered
    /// `Reply::Features` in request order. Routed by the first vertex (an
    /// empty list by vertex 0); a vertex of another shard is `WrongShard`.
    Features {
        /// The vertices.
        vertices: Vec<VertexId>,
    },
    /// Node-internal, for the feed service: one window of `user`'s home timeline and what the
    /// service needs to complete it; answered `Reply::FeedCandidates`.
    FeedCandidates {
        /// The reader.
        user: UserId,
        /// Only posts ordered below this one (exclusive); `None`: from the newest.
        below: Option<PostRef>,
        /// Only posts at or above this one; `None`: no lower bound.
        floor: Option<PostRef>,
        /// Most posts to return (capped by the server).
        max: u32,
        /// The reading node's clock, to tell whether the timeline is still materialised.
        now_millis: u64,
    },
    /// Node-internal, for the feed service: the latest posts of authors that all live on this
    /// shard (routed by the first), each within the window; answered `Reply::FeedPosts`,
    /// newest first per author, authors in request order.
    FeedLatest {
        /// The authors.
        authors: Vec<UserId>,
        /// Most posts per author (capped by the server).
        per_author: u32,
        /// Only posts ordered below this one (exclusive).
        below: Option<PostRef>,
        /// Only posts at or above this one.
        floor: Option<PostRef>,
        /// With the posts' texts (false: references only, texts empty).
        texts: bool,
        /// A rebuild's reader: only authors this shard knows `follower` follows (the in-edge is
        /// here) answer, so each author's deletes from now on reach the reader's home. The
        /// others' posts reach it with the backfill sent when the in-edge arrives.
        follower: Option<UserId>,
    },
    /// Node-internal, for the feed service: the texts of these posts, from `owner`'s home
    /// timeline, or from the timelines of their authors where those live on this shard; answered
    /// `Reply::FeedPosts` with the posts found, in request order. Routed by `owner`.
    FeedTexts {
        /// A reader (whose home timeline is looked in) or an author of this shard.
        owner: UserId,
        /// The posts (at most the server's candidates limit).
        posts: Vec<PostRef>,
    },
    /// Which of these posts `user`'s seen filter may hold (false positives possible, about
    /// 0.5%; no false negatives); answered `Reply::Bools` in request order.
    FeedSeenContains {
        /// The reader.
        user: UserId,
        /// The posts (at most `FEED_SEEN_ITEMS_MAX`).
        posts: Vec<PostRef>,
    },
    /// Node-internal, for the EMPI service: a read of identity matching's state on one shard;
    /// answered `Reply::EmpiState`.
    Empi(EmpiRead),
}

impl ReadOp {
    /// The routing key.
    pub fn shard_key(&self) -> ShardKey {
        match self {
            ReadOp::FilterContains { name, .. } => ShardKey::Name(name.clone()),
            ReadOp::TimelineRead { owner, .. } => ShardKey::Id(*owner),
            ReadOp::Neighbors { vertex, .. } | ReadOp::NeighborSet { vertex, .. } | ReadOp::Degree { vertex, .. } => {
                ShardKey::Id(*vertex)
            }
            ReadOp::HasEdge { src, .. } => ShardKey::Id(*src),
            ReadOp::Features { vertices } => ShardKey::Id(vertices.first().copied().unwrap_or(0)),
            ReadOp::FeedCandidates { user, .. } | ReadOp::FeedSeenContains { user, .. } => ShardKey::Id(*user),
            ReadOp::FeedLatest { authors, .. } => ShardKey::Id(authors.first().copied().unwrap_or(0)),
            ReadOp::FeedTexts { owner, .. } => ShardKey::Id(*owner),
            ReadOp::Empi(e) => e.shard_key(),
        }
    }
}

/// Most followees in one `WriteOp::FollowMany`.
pub const FOLLOW_BATCH_MAX: usize = 10_000;

/// Most candidates in one `ScoreRequest`.
pub const SCORE_CANDIDATES_MAX: usize = 4096;
/// Largest `k` of one `ScoreRequest`.
pub const SCORE_K_MAX: u32 = 1024;

/// How a `ScoreRequest` builds its query vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ScoreMode {
    /// The vertex's own features.
    #[default]
    Cosine,
    /// The mean of the vertex's own and its out-neighbours' features (one
    /// GraphSAGE-style mean aggregation step).
    NeighborMean,
    /// The node's GraphSAGE model (`[scoring] model`, a safetensors file) over the vertex's
    /// 1-hop neighbourhood: the vertex aggregates its out-neighbours, every other vertex (its
    /// neighbours and the candidates) only itself, through every layer; candidates are ranked by
    /// cosine similarity of their embeddings to the vertex's. A node without a model answers
    /// `BadRequest`.
    Sage,
}

/// Rank `candidates` by cosine similarity to a query built from `vertex`.
///
/// Candidates are deduplicated; those without features (or whose feature
/// width differs from the query's) are skipped. The answer holds the best
/// `k`, highest score first, equal scores by lower id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// The vertex the query comes from; the routing key.
    pub vertex: VertexId,
    /// Vertices to rank (at most `SCORE_CANDIDATES_MAX`), on any shards.
    pub candidates: Vec<VertexId>,
    /// How many to return (1..=`SCORE_K_MAX`).
    pub k: u32,
    /// How the query vector is built.
    pub mode: ScoreMode,
}

/// Calls answered by any node without a shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminOp {
    /// This node's view of the shard map.
    ShardMap,
    /// This node's status: its shards' roles, terms and applied indexes.
    Status,
}

/// The answer to one request; the body of a `Response` frame.
pub type Response = Result<Reply, ErrorReply>;

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The write was applied and has no other result.
    Done,
    /// The entry id assigned by `TimelineAppend`.
    Appended(EntryId),
    /// Whether the write changed the state (false: it was already so).
    Changed(bool),
    /// One answer per key, in request order.
    Bools(Vec<bool>),
    /// A timeline page.
    Page(Page),
    /// A page of neighbour ids.
    Vertices {
        /// Ids, ascending.
        ids: Vec<VertexId>,
        /// Pass as `after` to get the next page; `None` at the end.
        next_after: Option<VertexId>,
    },
    /// A count.
    Count(u64),
    /// A yes/no answer.
    Bool(bool),
    /// A roaring treemap in its portable serialisation.
    Bitmap(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The shard map.
    ShardMap(ShardMap),
    /// A node's status.
    Status(NodeStatus),
    /// One feature vector (or `None`: the vertex has none) per vertex asked, in request order.
    Features(Vec<Option<Vec<f32>>>),
    /// `(candidate, score)` pairs, best first; equal scores by lower id.
    Scores(Vec<(VertexId, f32)>),
    /// One window of a home timeline (node-internal).
    FeedCandidates(FeedCandidates),
    /// Posts with their texts.
    FeedPosts(Vec<FeedPost>),
    /// A home-feed page.
    FeedPage(FeedPage),
    /// Several counts, in the order of what they count.
    Counts(Vec<u64>),
    /// An answer of the EMPI service.
    Empi(EmpiReply),
    /// Identity matching's state on one shard (node-internal).
    EmpiState(EmpiState),
}

/// One timeline page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Page {
    /// Entries, newest first for `Latest`/`Before`, oldest first for `After`.
    pub entries: Vec<TimelineEntry>,
    /// Whether more entries lie beyond this page in the reading direction.
    pub has_more: bool,
}

/// One timeline entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Monotone id.
    pub id: EntryId,
    /// Opaque item bytes.
    #[serde(with = "serde_bytes")]
    pub item: Vec<u8>,
}

/// Cluster membership and shard placement, as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardMap {
    /// Number of virtual shards, fixed at cluster creation.
    pub shard_count: u32,
    /// Member nodes.
    pub nodes: Vec<NodeInfo>,
    /// One entry per shard, indexed by shard id.
    pub shards: Vec<ShardPlacement>,
}

impl ShardMap {
    /// The client address of `node`, if known.
    pub fn node_addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.iter().find(|n| n.id == node).map(|n| n.client_addr.as_str())
    }
}

/// A member node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// `host:port` of its QUIC endpoint.
    pub client_addr: String,
}

/// Where a shard lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// Shard id.
    pub shard: ShardId,
    /// Nodes holding a replica.
    pub replicas: Vec<NodeId>,
    /// Current leader as last known, if any.
    pub leader: Option<NodeId>,
}

/// One node's status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: NodeId,
    /// OS process id.
    pub pid: u32,
    /// Its QUIC address.
    pub addr: String,
    /// The scoring backend in use ("cpu-avx2", "cuda", ...), if scoring runs.
    pub scoring_backend: Option<String>,
    /// Replicas this node hosts.
    pub shards: Vec<ReplicaStatus>,
}

/// One replica's Raft state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Shard id (`u32::MAX` for the meta group).
    pub shard: ShardId,
    /// Leader as this replica knows it.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Voting members.
    pub replicas: Vec<NodeId>,
    /// Last applied log index.
    pub applied_index: u64,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorReply {
    /// This node does not lead the shard; retry at `leader_addr`.
    #[error("node is not the leader of shard {shard} (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        /// Shard asked for.
        shard: ShardId,
        /// Leader known to this node.
        leader: Option<NodeId>,
        /// Its address.
        leader_addr: Option<String>,
    },
    /// The request was routed to the wrong shard for its key.
    #[error("request for shard {got} belongs to shard {expected}")]
    WrongShard {
        /// Shard the client named.
        got: ShardId,
        /// Shard the key hashes to.
        expected: ShardId,
    },
    /// The shard has no replica on this node or no leader right now.
    #[error("shard {0} is unavailable (no leader or no replica here)")]
    ShardUnavailable(ShardId),
    /// The token was wrong or the connection has not said `Hello`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The request is malformed or violates a limit.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request names something that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A bounded queue is full; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The operation did not finish in time; it may or may not have applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The write's session entry was already forgotten (the client acked it).
    #[error("session sequence {seq} was already acknowledged by client {client_id}")]
    StaleSession {
        /// Client id.
        client_id: u64,
        /// Sequence number.
        seq: u64,
    },
    /// The node failed in a way the client cannot fix.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ErrorReply {
    /// Whether retrying the same request (possibly elsewhere) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorReply::NotLeader { .. }
                | ErrorReply::ShardUnavailable(_)
                | ErrorReply::Busy(_)
                | ErrorReply::Timeout(_)
        )
    }
}
