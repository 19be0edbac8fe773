//! The follow-graph partition of one shard: out-edges of the vertices it
//! owns, in-edges of the vertices it owns, and how far each other shard's
//! in-edge updates have been applied.
//!
//! An edge `src → dst` lives in `out(src)` on src's shard and in `in(dst)` on
//! dst's shard. When those differ, the in-half travels through the source
//! shard's outbox and arrives here as an `EdgeDelivery`, applied exactly once
//! per sequence number. This module does not route requests or deliver.

use std::collections::BTreeMap;
use std::io::Read as _;

use plexus_proto::{shard_for_key, Direction, ErrorReply, Reply, ShardId, ShardKey, VertexId};
use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};

use super::outbox::{Delivered, Outbox};
use crate::canary::Canary;
use crate::command::EdgeUpdate;

/// Where this state machine sits in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// This shard.
    pub(crate) shard: ShardId,
    /// Shards in the cluster.
    pub(crate) shard_count: u32,
}

impl Placement {
    /// The shard owning vertex `v`.
    pub(crate) fn shard_of(&self, v: VertexId) -> ShardId {
        shard_for_key(&ShardKey::Id(v), self.shard_count)
    }
}

/// Adjacency sets keyed by vertex; a vertex with no edges has no key.
type Adjacency = BTreeMap<VertexId, RoaringTreemap>;

/// One shard's graph partition.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Graph {
    out: Adjacency,
    inn: Adjacency,
    /// Per source shard, the last outbox sequence applied here.
    delivered: Delivered,
}

/// The graph in snapshot form: treemaps in roaring's portable format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GraphForm {
    out: Vec<(VertexId, Vec<u8>)>,
    inn: Vec<(VertexId, Vec<u8>)>,
    delivered_upto: Vec<(ShardId, u64)>,
}

fn insert(adj: &mut Adjacency, v: VertexId, n: VertexId) -> bool {
    adj.entry(v).or_default().insert(n)
}

fn remove(adj: &mut Adjacency, v: VertexId, n: VertexId) -> bool {
    let Some(set) = adj.get_mut(&v) else {
        return false;
    };
    let removed = set.remove(n);
    if set.is_empty() {
        adj.remove(&v);
    }
    removed
}

fn busy(outbox: &Outbox<EdgeUpdate>) -> ErrorReply {
    ErrorReply::Busy(format!("edge outbox holds {} undelivered updates", outbox.len()))
}

impl Graph {
    /// Adds `src → dst` (src is owned here); whether the edge is new. The `HalfFollow` canary
    /// (simulation only) drops the in-half of a cross-shard follow.
    pub(crate) fn follow(
        &mut self,
        here: Placement,
        src: VertexId,
        dst: VertexId,
        outbox: &mut Outbox<EdgeUpdate>,
        outbox_entries_max: usize,
        canary: Option<Canary>,
    ) -> Result<bool, ErrorReply> {
        let u = EdgeUpdate { src, dst, add: true };
        self.change(here, u, outbox, outbox_entries_max, canary == Some(Canary::HalfFollow))
    }

    /// Removes `src → dst` (src is owned here); whether the edge existed.
    pub(crate) fn unfollow(
        &mut self,
        here: Placement,
        src: VertexId,
        dst: VertexId,
        outbox: &mut Outbox<EdgeUpdate>,
        outbox_entries_max: usize,
    ) -> Result<bool, ErrorReply> {
        self.change(
            here,
            EdgeUpdate { src, dst, add: false },
            outbox,
            outbox_entries_max,
            false,
        )
    }

    fn change(
        &mut self,
        here: Placement,
        u: EdgeUpdate,
        outbox: &mut Outbox<EdgeUpdate>,
        outbox_entries_max: usize,
        drop_in_half: bool,
    ) -> Result<bool, ErrorReply> {
        if u.src == u.dst {
            return Err(ErrorReply::BadRequest(format!("vertex {} cannot follow itself", u.src)));
        }
        let exists = self.out.get(&u.src).is_some_and(|s| s.contains(u.dst));
        if exists == u.add {
            return Ok(false);
        }
        let dst_shard = here.shard_of(u.dst);
        let local = dst_shard == here.shard;
        // Refuse before touching anything, so a Busy write is not half done.
        if !local && outbox.len() >= outbox_entries_max {
            return Err(busy(outbox));
        }
        if u.add {
            insert(&mut self.out, u.src, u.dst);
        } else {
            remove(&mut self.out, u.src, u.dst);
        }
        if local {
            self.apply_in(&u);
        } else if !drop_in_half {
            outbox.push(dst_shard, u.clone());
        }
        debug_assert_eq!(self.has_edge(u.src, u.dst), u.add);
        Ok(true)
    }

    fn apply_in(&mut self, u: &EdgeUpdate) {
        if u.add {
            insert(&mut self.inn, u.dst, u.src);
        } else {
            remove(&mut self.inn, u.dst, u.src);
        }
    }

    /// Applies in-edge updates from `from_shard`'s outbox numbered from
    /// `first_seq`, skipping those already applied; answers the new
    /// `delivered_upto` and how many leading items were skipped. A batch that starts past the
    /// next expected number, or holds an update that does not belong here, is refused whole.
    pub(crate) fn deliver(
        &mut self,
        here: Placement,
        from_shard: ShardId,
        first_seq: u64,
        items: &[EdgeUpdate],
    ) -> Result<(u64, usize), ErrorReply> {
        let (skip, new_upto) = self
            .delivered
            .admit(from_shard, first_seq, items.len())
            .map_err(ErrorReply::BadRequest)?;
        if let Some(bad) = items
            .iter()
            .find(|u| u.src == u.dst || here.shard_of(u.dst) != here.shard || here.shard_of(u.src) != from_shard)
        {
            return Err(ErrorReply::BadRequest(format!(
                "edge update {} -> {} does not belong from shard {from_shard} to shard {}",
                bad.src, bad.dst, here.shard
            )));
        }
        for u in &items[skip..] {
            self.apply_in(u);
        }
        if !items.is_empty() {
            self.delivered.record(from_shard, new_upto);
        }
        Ok((new_upto, skip))
    }

    fn adjacency(&self, direction: Direction) -> &Adjacency {
        match direction {
            Direction::Out => &self.out,
            Direction::In => &self.inn,
        }
    }

    /// `vertex`'s neighbour set in `direction`, if it has any neighbours.
    pub(crate) fn set(&self, vertex: VertexId, direction: Direction) -> Option<&RoaringTreemap> {
        self.adjacency(direction).get(&vertex)
    }

    /// A page of neighbours in ascending order after `after` (exclusive).
    /// `limit` must already be capped and non-zero.
    pub(crate) fn neighbors(
        &self,
        vertex: VertexId,
        direction: Direction,
        after: Option<VertexId>,
        limit: usize,
    ) -> Reply {
        let empty = Reply::Vertices {
            ids: Vec::new(),
            next_after: None,
        };
        let Some(set) = self.adjacency(direction).get(&vertex) else {
            return empty;
        };
        let mut it = set.iter();
        if let Some(a) = after {
            match a.checked_add(1) {
                Some(start) => it.advance_to(start),
                None => return empty,
            }
        }
        let ids: Vec<VertexId> = it.by_ref().take(limit).collect();
        let next_after = if it.next().is_some() { ids.last().copied() } else { None };
        Reply::Vertices { ids, next_after }
    }

    /// The whole neighbour set in roaring's portable format.
    pub(crate) fn neighbor_set(&self, vertex: VertexId, direction: Direction) -> Result<Vec<u8>, ErrorReply> {
        let empty = RoaringTreemap::new();
        let set = self.adjacency(direction).get(&vertex).unwrap_or(&empty);
        let mut out = Vec::with_capacity(set.serialized_size());
        set.serialize_into(&mut out)
            .map_err(|e| ErrorReply::Internal(format!("serialising a bitmap: {e}")))?;
        Ok(out)
    }

    /// Number of neighbours.
    pub(crate) fn degree(&self, vertex: VertexId, direction: Direction) -> u64 {
        self.adjacency(direction).get(&vertex).map_or(0, RoaringTreemap::len)
    }

    /// Whether `out(src)` holds `dst`.
    pub(crate) fn has_edge(&self, src: VertexId, dst: VertexId) -> bool {
        self.out.get(&src).is_some_and(|s| s.contains(dst))
    }

    /// The last sequence applied from `from_shard`.
    #[cfg(test)]
    pub(crate) fn delivered_upto(&self, from_shard: ShardId) -> u64 {
        self.delivered.upto(from_shard)
    }

    pub(crate) fn to_form(&self) -> Result<GraphForm, std::io::Error> {
        let encode = |adj: &Adjacency| -> Result<Vec<(VertexId, Vec<u8>)>, std::io::Error> {
            adj.iter()
                .map(|(v, set)| {
                    let mut bytes = Vec::with_capacity(set.serialized_size());
                    set.serialize_into(&mut bytes)?;
                    Ok((*v, bytes))
                })
                .collect()
        };
        Ok(GraphForm {
            out: encode(&self.out)?,
            inn: encode(&self.inn)?,
            delivered_upto: self.delivered.pairs(),
        })
    }

    /// Rebuilds the graph, refusing malformed bitmaps, empty sets, self
    /// loops and vertices out of order (which would mean a non-canonical
    /// encoding, so replicas' digests could differ).
    pub(crate) fn from_form(form: GraphForm) -> Result<Self, String> {
        fn decode(list: Vec<(VertexId, Vec<u8>)>, what: &str) -> Result<Adjacency, String> {
            let mut adj = Adjacency::new();
            for (v, bytes) in list {
                let mut reader: &[u8] = &bytes;
                let set = RoaringTreemap::deserialize_from(&mut reader)
                    .map_err(|e| format!("{what} set of vertex {v}: {e}"))?;
                let mut rest = [0u8; 1];
                if reader.read(&mut rest).map_err(|e| e.to_string())? != 0 {
                    return Err(format!("{what} set of vertex {v} has trailing bytes"));
                }
                if set.is_empty() || set.contains(v) {
                    return Err(format!("{what} set of vertex {v} is empty or holds the vertex itself"));
                }
                if adj.last_key_value().is_some_and(|(last, _)| *last >= v) {
                    return Err(format!("{what} sets are not in ascending vertex order at {v}"));
                }
                adj.insert(v, set);
            }
            Ok(adj)
        }
        let delivered = Delivered::from_pairs(&form.delivered_upto).map_err(|e| format!("delivered_upto {e}"))?;
        Ok(Self {
            out: decode(form.out, "out")?,
            inn: decode(form.inn, "in")?,
            delivered,
        })
    }
}
