//! Typed operations: thin wrappers that build an [`Op`], send it with
//! [`Client::call`] and check the reply has the shape the operation promises.
//!
//! Nothing here routes or retries; a reply of the wrong shape is reported as
//! [`ClientError::UnexpectedReply`] rather than guessed at.

use plexus_proto::{
    AdminOp, Consistency, Cursor, Direction, EntryId, FilterSpec, NodeStatus, Op, OwnerId, Page, ReadOp, Reply,
    VertexId, WriteOp,
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

    /// Creates the named filter (a no-op if it exists with the same spec).
    pub async fn filter_create(&self, name: &str, spec: FilterSpec) -> Result<(), ClientError> {
        match self
            .write(WriteOp::FilterCreate {
                name: name.to_string(),
                spec,
            })
            .await?
        {
            Reply::Done => Ok(()),
            r => Err(unexpected("filter_create", r)),
        }
    }

    /// Adds `keys` to the named filter.
    pub async fn filter_add(&self, name: &str, keys: Vec<Vec<u8>>) -> Result<(), ClientError> {
        match self
            .write(WriteOp::FilterAdd {
                name: name.to_string(),
                keys,
            })
            .await?
        {
            Reply::Done => Ok(()),
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

    /// Seals the named filter's mutable part into an immutable one.
    pub async fn filter_seal(&self, name: &str) -> Result<(), ClientError> {
        match self.write(WriteOp::FilterSeal { name: name.to_string() }).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected("filter_seal", r)),
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
