//! Reads of the replicated EMPI state across shards: grouped by shard, answered from this node's
//! replicas where it hosts them and from peers otherwise, a few at a time.
//!
//! The blocking index is read stale (the nearest replica's applied state): a candidate written
//! a few milliseconds ago may be missed, as it would be by a concurrent upsert anyway. Records
//! and identities are read at their shard's leader (`Fresh::Leader`), since they carry steward
//! constraints that must hold from the moment the steward's call returns: a follower a few
//! entries behind would let automatic matching join a pair a steward has just unlinked. A
//! `match`, which writes nothing, reads them stale too. Writes go to the leaders.

use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) use plexus_actors::registry::Fresh;
use plexus_actors::registry::Registry;
use plexus_proto::{
    block_shard_key, master_shard_key, record_shard_key, shard_for_key, EmpiBlocks, EmpiMaster, EmpiRead, EmpiRecord,
    EmpiState, ErrorReply, MasterId, ReadOp, Reply, Response, ShardId, ShardKey,
};

/// Keys or ids named in one read, at most (the state machine's per-read caps are larger).
pub const KEYS_PER_READ_MAX: usize = 512;

pub(crate) fn unexpected(what: &str, reply: Reply) -> ErrorReply {
    ErrorReply::Internal(format!("unexpected answer to {what}: {reply:?}"))
}

/// Reads of many shards, answered in order (`Registry::read_many`).
pub(crate) async fn read_many(registry: &Arc<Registry>, reads: Vec<(ShardId, ReadOp)>, fresh: Fresh) -> Vec<Response> {
    registry.read_many(reads, fresh).await
}

/// `items` grouped by the shard `key` routes each to, in chunks of at most `KEYS_PER_READ_MAX`.
pub(crate) fn by_shard<T: Clone>(
    shard_count: u32,
    items: &[T],
    key: impl Fn(&T) -> ShardKey,
) -> Vec<(ShardId, Vec<T>)> {
    let mut groups: BTreeMap<ShardId, Vec<T>> = BTreeMap::new();
    for item in items {
        groups
            .entry(shard_for_key(&key(item), shard_count))
            .or_default()
            .push(item.clone());
    }
    groups
        .into_iter()
        .flat_map(|(s, v)| v.chunks(KEYS_PER_READ_MAX).map(|c| (s, c.to_vec())).collect::<Vec<_>>())
        .collect()
}

/// What the index holds for `blocks`: per block its records (oversize blocks are left out, as
/// bulk linking skips them), and how many blocks the shards' Bloom filters rejected.
pub(crate) async fn blocks(
    registry: &Arc<Registry>,
    blocks: &[String],
) -> Result<(BTreeMap<String, Vec<String>>, u32), ErrorReply> {
    let groups = by_shard(registry.shard_count, blocks, |b| block_shard_key(b));
    let reads = groups
        .into_iter()
        .map(|(s, blocks)| (s, ReadOp::Empi(EmpiRead::Blocks { blocks })))
        .collect();
    let mut out = BTreeMap::new();
    let mut rejected = 0;
    for r in read_many(registry, reads, Fresh::Stale).await {
        match r? {
            Reply::EmpiState(EmpiState::Blocks(EmpiBlocks {
                found,
                oversize,
                rejected: n,
            })) => {
                rejected += n;
                out.extend(found.into_iter().filter(|(b, _)| !oversize.contains(b)));
            }
            other => return Err(unexpected("an index read", other)),
        }
    }
    Ok((out, rejected))
}

/// The records named (absent ones left out), read at their leaders.
pub(crate) async fn records(
    registry: &Arc<Registry>,
    keys: &[String],
) -> Result<BTreeMap<String, EmpiRecord>, ErrorReply> {
    records_as(registry, keys, Fresh::Leader).await
}

/// The records named (absent ones left out), as fresh as asked.
pub(crate) async fn records_as(
    registry: &Arc<Registry>,
    keys: &[String],
    fresh: Fresh,
) -> Result<BTreeMap<String, EmpiRecord>, ErrorReply> {
    let groups = by_shard(registry.shard_count, keys, |k| record_shard_key(k));
    let reads: Vec<(ShardId, ReadOp)> = groups
        .iter()
        .map(|(s, keys)| (*s, ReadOp::Empi(EmpiRead::Records { keys: keys.clone() })))
        .collect();
    let mut out = BTreeMap::new();
    for ((_, keys), r) in groups.into_iter().zip(read_many(registry, reads, fresh).await) {
        match r? {
            Reply::EmpiState(EmpiState::Records(found)) if found.len() == keys.len() => {
                out.extend(keys.into_iter().zip(found).filter_map(|(k, r)| Some((k, r?))));
            }
            other => return Err(unexpected("a records read", other)),
        }
    }
    Ok(out)
}

/// The identities named (absent ones left out), read at their leaders.
pub(crate) async fn masters(
    registry: &Arc<Registry>,
    ids: &[MasterId],
) -> Result<BTreeMap<MasterId, EmpiMaster>, ErrorReply> {
    masters_as(registry, ids, Fresh::Leader).await
}

/// The identities named (absent ones left out), as fresh as asked.
pub(crate) async fn masters_as(
    registry: &Arc<Registry>,
    ids: &[MasterId],
    fresh: Fresh,
) -> Result<BTreeMap<MasterId, EmpiMaster>, ErrorReply> {
    let groups = by_shard(registry.shard_count, ids, |m| master_shard_key(*m));
    let reads: Vec<(ShardId, ReadOp)> = groups
        .iter()
        .map(|(s, ids)| (*s, ReadOp::Empi(EmpiRead::Masters { ids: ids.clone() })))
        .collect();
    let mut out = BTreeMap::new();
    for ((_, ids), r) in groups.into_iter().zip(read_many(registry, reads, fresh).await) {
        match r? {
            Reply::EmpiState(EmpiState::Masters(found)) if found.len() == ids.len() => {
                out.extend(ids.into_iter().zip(found).filter_map(|(id, m)| Some((id, m?))));
            }
            other => return Err(unexpected("a masters read", other)),
        }
    }
    Ok(out)
}
