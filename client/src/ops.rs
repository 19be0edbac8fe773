//! Typed operations: thin wrappers that build an [`Op`], send it with
//! [`Client::call`] and check the reply has the shape the operation promises.
//!
//! Nothing here routes or retries; a reply of the wrong shape is reported as
//! [`ClientError::UnexpectedReply`] rather than guessed at.

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::{
    shard_for_key, AdminOp, Consistency, Cursor, Direction, EntryId, FilterSpec, NodeStatus, Op, OwnerId, Page, ReadOp,
    Reply, ScoreMode, ScoreRequest, ShardKey, VertexId, WriteOp,
};
use roaring::RoaringTreemap;

use crate::client::Client;
use crate::error::ClientError;

fn unexpected(op: &'static str, reply: Reply) -> ClientError {
    ClientError::UnexpectedReply {
        op,
        reply: format!("{reply:?}"),
    }
}

/// Vertices per features read: the server's limit (`FEATURES_READ_VERTICES_MAX` in plexus-core).
pub const FEATURES_READ_CHUNK: usize = 256;

impl Client {
    async fn write(&self, op: WriteOp) -> Result<Reply, ClientError> {
        // Writes are always replicated through the leader; the consistency field is ignored for them.
        self.call(Op::Write(op), Consistency::Linearizable).await
    }

    async fn read(&self, op: ReadOp) -> Result<Reply, ClientError> {
        self.call(Op::Read(op), self.consistency).await
    }

    /// Adds the edge `src → dst`; true if it was new.
    pub async fn follow(&self, src: VertexId, dst: VertexId) -> Result<bool, ClientError> {
        match self.write(WriteOp::Follow { src, dst }).await? {
            Reply::Changed(b) => Ok(b),
            r => Err(unexpected("follow", r)),
        }
    }

    /// Adds `src → dst` for every `dst` (at most `FOLLOW_BATCH_MAX`), all or none, in one
    /// replicated write; how many edges were new. For bulk loads.
    pub async fn follow_many(&self, src: VertexId, dsts: Vec<VertexId>) -> Result<u64, ClientError> {
        match self.write(WriteOp::FollowMany { src, dsts }).await? {
            Reply::Count(n) => Ok(n),
            r => Err(unexpected("follow_many", r)),
        }
    }

    /// Removes the edge `src → dst`; true if it existed.
    pub async fn unfollow(&self, src: VertexId, dst: VertexId) -> Result<bool, ClientError> {
        match self.write(WriteOp::Unfollow { src, dst }).await? {
            Reply::Changed(b) => Ok(b),
            r => Err(unexpected("unfollow", r)),
        }
    }

    /// One page of `v`'s neighbours in ascending order, and the `after` for the next page (`None` at the end).
    pub async fn neighbors(
        &self,
        v: VertexId,
        dir: Direction,
        after: Option<VertexId>,
        limit: u32,
    ) -> Result<(Vec<VertexId>, Option<VertexId>), ClientError> {
        match self
            .read(ReadOp::Neighbors {
                vertex: v,
                direction: dir,
                after,
                limit,
            })
            .await?
        {
            Reply::Vertices { ids, next_after } => Ok((ids, next_after)),
            r => Err(unexpected("neighbors", r)),
        }
    }

    /// `v`'s whole neighbour set.
    pub async fn neighbor_set(&self, v: VertexId, dir: Direction) -> Result<RoaringTreemap, ClientError> {
        match self
            .read(ReadOp::NeighborSet {
                vertex: v,
                direction: dir,
            })
            .await?
        {
            Reply::Bitmap(bytes) => RoaringTreemap::deserialize_from(&bytes[..])
                .map_err(|e| ClientError::InvalidData(format!("neighbor set bitmap: {e}"))),
            r => Err(unexpected("neighbor_set", r)),
        }
    }

    /// Vertices adjacent (in `dir`) to both `a` and `b`; the two sets are fetched concurrently.
    pub async fn common_neighbors(
        &self,
        a: VertexId,
        b: VertexId,
        dir: Direction,
    ) -> Result<RoaringTreemap, ClientError> {
        let (sa, sb) = tokio::try_join!(self.neighbor_set(a, dir), self.neighbor_set(b, dir))?;
        Ok(sa & sb)
    }

    /// Number of `v`'s neighbours.
    pub async fn degree(&self, v: VertexId, dir: Direction) -> Result<u64, ClientError> {
        match self
            .read(ReadOp::Degree {
                vertex: v,
                direction: dir,
            })
            .await?
        {
            Reply::Count(n) => Ok(n),
            r => Err(unexpected("degree", r)),
        }
    }

    /// Whether the edge `src → dst` exists.
    pub async fn has_edge(&self, src: VertexId, dst: VertexId) -> Result<bool, ClientError> {
        match self.read(ReadOp::HasEdge { src, dst }).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected("has_edge", r)),
        }
    }

    /// Appends `item` to `owner`'s timeline and returns the entry id it was given.
    pub async fn timeline_append(&self, owner: OwnerId, item: Vec<u8>) -> Result<EntryId, ClientError> {
        match self.write(WriteOp::TimelineAppend { owner, item }).await? {
            Reply::Appended(id) => Ok(id),
            r => Err(unexpected("timeline_append", r)),
        }
    }

    /// One page of `owner`'s timeline from `cursor`.
    pub async fn timeline_read(&self, owner: OwnerId, cursor: Cursor, limit: u32) -> Result<Page, ClientError> {
        match self.read(ReadOp::TimelineRead { owner, cursor, limit }).await? {
            Reply::Page(p) => Ok(p),
            r => Err(unexpected("timeline_read", r)),
        }
    }

    /// Deletes entry `id` of `owner`'s timeline; true if it existed.
    pub async fn timeline_delete(&self, owner: OwnerId, id: EntryId) -> Result<bool, ClientError> {
        match self.write(WriteOp::TimelineDelete { owner, id }).await? {
            Reply::Changed(b) => Ok(b),
            r => Err(unexpected("timeline_delete", r)),
        }
    }

    /// Creates the named filter; `false` if it already existed with the same spec.
    pub async fn filter_create(&self, name: &str, spec: FilterSpec) -> Result<bool, ClientError> {
        match self
            .write(WriteOp::FilterCreate {
                name: name.to_string(),
                spec,
            })
            .await?
        {
            Reply::Changed(changed) => Ok(changed),
            r => Err(unexpected("filter_create", r)),
        }
    }

    /// Adds `keys` to the named filter; `true` if any key was not yet present.
    pub async fn filter_add(&self, name: &str, keys: Vec<Vec<u8>>) -> Result<bool, ClientError> {
        match self
            .write(WriteOp::FilterAdd {
                name: name.to_string(),
                keys,
            })
            .await?
        {
            Reply::Changed(changed) => Ok(changed),
            r => Err(unexpected("filter_add", r)),
        }
    }

    /// For each key, whether it may be in the named filter (no false negatives).
    pub async fn filter_contains(&self, name: &str, keys: Vec<Vec<u8>>) -> Result<Vec<bool>, ClientError> {
        let n = keys.len();
        match self
            .read(ReadOp::FilterContains {
                name: name.to_string(),
                keys,
            })
            .await?
        {
            Reply::Bools(v) if v.len() == n => Ok(v),
            Reply::Bools(v) => Err(ClientError::InvalidData(format!(
                "filter_contains: {} answers for {n} keys",
                v.len()
            ))),
            r => Err(unexpected("filter_contains", r)),
        }
    }

    /// Seals the named filter's mutable part into an immutable one; `false` if it was empty.
    pub async fn filter_seal(&self, name: &str) -> Result<bool, ClientError> {
        match self.write(WriteOp::FilterSeal { name: name.to_string() }).await? {
            Reply::Changed(changed) => Ok(changed),
            r => Err(unexpected("filter_seal", r)),
        }
    }

    /// Replaces `vertex`'s feature vector (an empty one removes it); true if the stored vector changed.
    pub async fn set_features(&self, vertex: VertexId, features: Vec<f32>) -> Result<bool, ClientError> {
        match self.write(WriteOp::SetFeatures { vertex, features }).await? {
            Reply::Changed(changed) => Ok(changed),
            r => Err(unexpected("set_features", r)),
        }
    }

    /// The feature vectors of `vertices` (`None` where a vertex has none), in the order asked.
    ///
    /// Vertices may live on any shards: one read per shard (in chunks of
    /// [`FEATURES_READ_CHUNK`] vertices, each vertex asked once) is sent in
    /// turn, so the answer is not one snapshot of the cluster.
    pub async fn features(&self, vertices: &[VertexId]) -> Result<Vec<Option<Vec<f32>>>, ClientError> {
        let shard_count = self.shard_map().shard_count;
        let mut by_shard: BTreeMap<u32, BTreeSet<VertexId>> = BTreeMap::new();
        for v in vertices {
            by_shard
                .entry(shard_for_key(&ShardKey::Id(*v), shard_count))
                .or_default()
                .insert(*v);
        }
        let by_shard: Vec<Vec<VertexId>> = by_shard.into_values().map(|vs| vs.into_iter().collect()).collect();
        let mut found: BTreeMap<VertexId, Option<Vec<f32>>> = BTreeMap::new();
        for chunk in by_shard.iter().flat_map(|vs| vs.chunks(FEATURES_READ_CHUNK)) {
            let asked = chunk.to_vec();
            match self
                .read(ReadOp::Features {
                    vertices: asked.clone(),
                })
                .await?
            {
                Reply::Features(got) if got.len() == asked.len() => found.extend(asked.into_iter().zip(got)),
                Reply::Features(got) => {
                    return Err(ClientError::InvalidData(format!(
                        "features: {} vectors for {} vertices",
                        got.len(),
                        asked.len()
                    )))
                }
                r => return Err(unexpected("features", r)),
            }
        }
        Ok(vertices.iter().map(|v| found.get(v).cloned().flatten()).collect())
    }

    /// Ranks `candidates` by cosine similarity to `vertex`'s query vector (see [`ScoreMode`]): the best
    /// `k` as `(candidate, score)`, highest first, equal scores by lower id. Candidates without features
    /// are skipped. Served by any replica of `vertex`'s shard from its applied state.
    pub async fn score(
        &self,
        vertex: VertexId,
        candidates: Vec<VertexId>,
        k: u32,
        mode: ScoreMode,
    ) -> Result<Vec<(VertexId, f32)>, ClientError> {
        let op = Op::Score(ScoreRequest {
            vertex,
            candidates,
            k,
            mode,
        });
        match self.call(op, self.consistency).await? {
            Reply::Scores(s) => Ok(s),
            r => Err(unexpected("score", r)),
        }
    }

    /// The status of the node at `addr` (`host:port`), asked of that node itself.
    pub async fn node_status(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        match self.call_node(addr, AdminOp::Status).await? {
            Reply::Status(s) => Ok(s),
            r => Err(unexpected("node_status", r)),
        }
    }
}
