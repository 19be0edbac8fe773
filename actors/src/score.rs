//! Serving `Op::Score` at the node hosting the scored vertex's shard:
//! gather the features the request needs, then hand the dense job to the
//! scoring pool.
//!
//! The query vertex's features and out-neighbours come from this node's
//! replica of its shard; candidates' and neighbours' features come from
//! whichever replica of their shard is nearest: this node's when it hosts
//! one, else a peer's through `PeerRequest::Read`. Every read is stale (a
//! replica's applied state, no read-index round), so a score may miss
//! features written just before it; scores are a ranking signal, and a
//! linearizable read per shard would cost a quorum round each.
//!
//! This module does not compute scores (`score_batch` does) or batch
//! (`scoring` does).

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use plexus_core::state::{FEATURES_DIM_MAX, FEATURES_READ_VERTICES_MAX};
use plexus_proto::{
    shard_for_key, Consistency, Direction, ErrorReply, ReadOp, Reply, Response, ScoreMode, ScoreRequest, ShardId,
    ShardKey, VertexId, SCORE_CANDIDATES_MAX, SCORE_K_MAX,
};
use plexus_raft::network::{decode, encode, PeerRequest, PeerResponse};
use plexus_raft::replica::Replica;

use crate::registry::Registry;
use crate::score_batch::ScoreJob;

/// Out-neighbours a `NeighborMean` query averages at most: the lowest ids.
pub const SCORE_NEIGHBORS_MAX: u32 = 4096;
/// Feature reads of one request in flight at once (local or to peers).
pub const SCORE_READS_IN_FLIGHT_MAX: usize = 16;

/// Feature vectors by vertex; vertices without features are absent.
type FeatureMap = BTreeMap<VertexId, Vec<f32>>;

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

/// Refuses requests over the protocol's limits before any read.
fn check_limits(req: &ScoreRequest) -> Result<(), ErrorReply> {
    if req.candidates.len() > SCORE_CANDIDATES_MAX {
        return Err(bad(format!(
            "{} candidates exceed the limit of {SCORE_CANDIDATES_MAX}",
            req.candidates.len()
        )));
    }
    if req.k == 0 || req.k > SCORE_K_MAX {
        return Err(bad(format!("k {} is outside 1..={SCORE_K_MAX}", req.k)));
    }
    Ok(())
}

/// Checks a features answer for `asked` vertices from a replica (possibly a
/// peer's: hostile until checked) and adds the present vectors to `into`.
fn take_features(asked: &[VertexId], resp: Response, into: &mut FeatureMap) -> Result<(), ErrorReply> {
    let got = match resp? {
        Reply::Features(got) => got,
        other => {
            return Err(ErrorReply::Internal(format!(
                "unexpected answer to a features read: {other:?}"
            )))
        }
    };
    if got.len() != asked.len() {
        return Err(ErrorReply::Internal(format!(
            "features read answered {} vectors for {} vertices",
            got.len(),
            asked.len()
        )));
    }
    for (v, x) in asked.iter().zip(got) {
        let Some(x) = x else { continue };
        if x.is_empty() || x.len() > FEATURES_DIM_MAX || x.iter().any(|f| !f.is_finite()) {
            return Err(ErrorReply::Internal(format!(
                "replica answered invalid features for vertex {v}"
            )));
        }
        into.insert(*v, x);
    }
    Ok(())
}

/// One features read of `vertices` (all on `shard`, at most
/// `FEATURES_READ_VERTICES_MAX`): locally when this node hosts the shard,
/// else from each replica holder in turn until one answers.
async fn read_chunk(registry: &Registry, shard: ShardId, vertices: Vec<VertexId>) -> Result<FeatureMap, ErrorReply> {
    let op = ReadOp::Features {
        vertices: vertices.clone(),
    };
    let mut out = FeatureMap::new();
    if let Some(resp) = registry.read_local_applied(shard, &op) {
        take_features(&vertices, resp, &mut out)?;
        return Ok(out);
    }
    let msg = encode(&PeerRequest::Read(shard, op)).map_err(ErrorReply::Internal)?;
    let mut last = ErrorReply::ShardUnavailable(shard);
    for peer in registry
        .replicas_of(shard)
        .into_iter()
        .filter(|n| *n != registry.node_id)
    {
        let answer = match registry
            .transport
            .call(peer, msg.clone(), registry.request_timeout)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(peer, shard, error = %e, "features read from peer failed");
                last = ErrorReply::Timeout(e.to_string());
                continue;
            }
        };
        match decode::<PeerResponse>(&answer).map_err(ErrorReply::Internal)? {
            PeerResponse::Read(resp @ Ok(_)) => {
                take_features(&vertices, resp, &mut out)?;
                return Ok(out);
            }
            PeerResponse::Read(Err(e)) if e.is_retryable() => last = e,
            PeerResponse::Read(Err(e)) => return Err(e),
            PeerResponse::NoSuchGroup(_) => last = ErrorReply::ShardUnavailable(shard),
            other => return Err(ErrorReply::Internal(format!("unexpected peer answer {other:?}"))),
        }
    }
    Err(last)
}

/// The features of `vertices` (on any shards), read shard by shard in
/// chunks, at most `SCORE_READS_IN_FLIGHT_MAX` reads at once.
async fn fetch_features(registry: &Registry, vertices: &BTreeSet<VertexId>) -> Result<FeatureMap, ErrorReply> {
    let mut by_shard: BTreeMap<ShardId, Vec<VertexId>> = BTreeMap::new();
    for v in vertices {
        by_shard
            .entry(shard_for_key(&ShardKey::Id(*v), registry.shard_count))
            .or_default()
            .push(*v);
    }
    let reads = by_shard.into_iter().flat_map(|(shard, vs)| {
        vs.chunks(FEATURES_READ_VERTICES_MAX)
            .map(|c| (shard, c.to_vec()))
            .collect::<Vec<_>>()
    });
    let mut results = stream::iter(reads)
        .map(|(shard, chunk)| read_chunk(registry, shard, chunk))
        .buffer_unordered(SCORE_READS_IN_FLIGHT_MAX);
    let mut all = FeatureMap::new();
    while let Some(part) = results.next().await {
        all.extend(part?);
    }
    Ok(all)
}

/// A local stale read that must answer `Reply::Features` for one vertex.
async fn own_features(
    registry: &Registry,
    replica: &Replica,
    vertex: VertexId,
) -> Result<Option<Vec<f32>>, ErrorReply> {
    let mut got = FeatureMap::new();
    let op = ReadOp::Features { vertices: vec![vertex] };
    let resp = replica.read(&op, Consistency::Stale, registry.request_timeout).await;
    take_features(&[vertex], resp, &mut got)?;
    Ok(got.remove(&vertex))
}

/// The first `SCORE_NEIGHBORS_MAX` out-neighbours of `vertex`, ascending.
async fn out_neighbors(registry: &Registry, replica: &Replica, vertex: VertexId) -> Result<Vec<VertexId>, ErrorReply> {
    let op = ReadOp::Neighbors {
        vertex,
        direction: Direction::Out,
        after: None,
        limit: SCORE_NEIGHBORS_MAX,
    };
    match replica.read(&op, Consistency::Stale, registry.request_timeout).await? {
        Reply::Vertices { ids, .. } => Ok(ids),
        other => Err(ErrorReply::Internal(format!(
            "unexpected answer to a neighbours read: {other:?}"
        ))),
    }
}

/// Builds the dense job for `req` from gathered features.
///
/// The query rows are the vertex's own vector (then, for `NeighborMean` and
/// `Sage`, its out-neighbours' in ascending id order), all of the width of the
/// first present row; rows of another width are skipped, and so are candidates
/// without a vector of that width. No query row at all is `NotFound`. For
/// `Sage` the first row is always the vertex's own (zeros when it has none).
pub fn build_job(
    req: &ScoreRequest,
    own: Option<Vec<f32>>,
    neighbors: &[VertexId],
    features: &FeatureMap,
) -> Result<ScoreJob, ErrorReply> {
    let mut rows: Vec<&[f32]> = own.as_deref().into_iter().collect();
    if req.mode != ScoreMode::Cosine {
        rows.extend(neighbors.iter().filter_map(|n| features.get(n).map(Vec::as_slice)));
    }
    let Some(dim) = rows.first().map(|r| r.len()) else {
        return Err(ErrorReply::NotFound(match req.mode {
            ScoreMode::Cosine => format!("features of vertex {}", req.vertex),
            ScoreMode::NeighborMean | ScoreMode::Sage => {
                format!("features of vertex {} or its out-neighbours", req.vertex)
            }
        }));
    };
    // A model's first row is the vertex itself: zeros where it has no features of its own.
    let zeros = vec![0.0f32; dim];
    if req.mode == ScoreMode::Sage && own.is_none() {
        rows.insert(0, &zeros);
    }
    let query_rows: Vec<f32> = rows
        .iter()
        .filter(|r| r.len() == dim)
        .flat_map(|r| r.iter().copied())
        .collect();
    let ids: BTreeSet<VertexId> = req.candidates.iter().copied().collect();
    let mut candidate_ids = Vec::with_capacity(ids.len());
    let mut candidates = Vec::with_capacity(ids.len() * dim);
    for id in ids {
        if let Some(x) = features.get(&id).filter(|x| x.len() == dim) {
            candidate_ids.push(id);
            candidates.extend_from_slice(x);
        }
    }
    Ok(ScoreJob {
        mode: req.mode,
        dim,
        query_rows,
        candidate_ids,
        candidates,
        k: req.k as usize,
    })
}

/// Serves `req` on this node, whose `replica` belongs to `req.vertex`'s shard.
pub async fn execute_score(registry: &Registry, replica: &Replica, req: ScoreRequest) -> Response {
    check_limits(&req)?;
    let Some(pool) = registry.scoring() else {
        return Err(ErrorReply::Internal("this node runs no scoring pool".into()));
    };
    let ticket = pool.admit()?;
    let own = own_features(registry, replica, req.vertex).await?;
    let neighbors = match req.mode {
        ScoreMode::Cosine => Vec::new(),
        ScoreMode::NeighborMean | ScoreMode::Sage => out_neighbors(registry, replica, req.vertex).await?,
    };
    let wanted: BTreeSet<VertexId> = req.candidates.iter().chain(&neighbors).copied().collect();
    let features = fetch_features(registry, &wanted).await?;
    let job = build_job(&req, own, &neighbors, &features)?;
    pool.score(ticket, job, registry.request_timeout)
        .await
        .map(Reply::Scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(mode: ScoreMode, candidates: &[u64], k: u32) -> ScoreRequest {
        ScoreRequest {
            vertex: 1,
            candidates: candidates.to_vec(),
            k,
            mode,
        }
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            check_limits(&req(ScoreMode::Cosine, &[], 0)),
            Err(bad("k 0 is outside 1..=1024".into()))
        );
        assert_eq!(
            check_limits(&req(ScoreMode::Cosine, &[], 1025)),
            Err(bad("k 1025 is outside 1..=1024".into()))
        );
        let many: Vec<u64> = (0..4097).collect();
        assert_eq!(
            check_limits(&req(ScoreMode::Cosine, &many, 5)),
            Err(bad("4097 candidates exceed the limit of 4096".into()))
        );
        assert_eq!(check_limits(&req(ScoreMode::NeighborMean, &many[..4096], 1024)), Ok(()));
    }

    #[test]
    fn jobs_skip_missing_and_mismatched_features() {
        let features: FeatureMap = [
            (2, vec![1.0, 0.0]),
            (3, vec![5.0]),
            (4, vec![0.0, 1.0]),
            (7, vec![2.0, 2.0]),
            (8, vec![9.0, 9.0, 9.0]),
        ]
        .into_iter()
        .collect();
        // Candidates deduplicated and sorted; 3 and 8 have other widths, 5 none.
        let r = req(ScoreMode::NeighborMean, &[7, 5, 3, 2, 7, 8], 2);
        let job = build_job(&r, Some(vec![1.0, 1.0]), &[3, 4, 6], &features).unwrap();
        assert_eq!(
            job,
            ScoreJob {
                mode: ScoreMode::NeighborMean,
                dim: 2,
                query_rows: vec![1.0, 1.0, 0.0, 1.0],
                candidate_ids: vec![2, 7],
                candidates: vec![1.0, 0.0, 2.0, 2.0],
                k: 2,
            }
        );
        // Without own features, the first neighbour with features sets the width.
        let job = build_job(&r, None, &[3, 4], &features).unwrap();
        assert_eq!((job.dim, job.query_rows, job.candidate_ids), (1, vec![5.0], vec![3]));
        // Cosine ignores neighbours and needs the vertex's own vector.
        let cos = req(ScoreMode::Cosine, &[2], 1);
        assert_eq!(
            build_job(&cos, None, &[4], &features),
            Err(ErrorReply::NotFound("features of vertex 1".into()))
        );
        assert_eq!(
            build_job(&r, None, &[6], &features),
            Err(ErrorReply::NotFound(
                "features of vertex 1 or its out-neighbours".into()
            ))
        );
    }

    #[test]
    fn hostile_features_answers_are_refused() {
        let mut into = FeatureMap::new();
        assert!(take_features(&[1, 2], Ok(Reply::Features(vec![None])), &mut into).is_err());
        assert!(take_features(&[1], Ok(Reply::Features(vec![Some(vec![f32::NAN])])), &mut into).is_err());
        assert!(take_features(&[1], Ok(Reply::Features(vec![Some(vec![])])), &mut into).is_err());
        assert!(take_features(&[1], Ok(Reply::Count(1)), &mut into).is_err());
        assert_eq!(
            take_features(&[1], Err(ErrorReply::ShardUnavailable(3)), &mut into),
            Err(ErrorReply::ShardUnavailable(3))
        );
        assert!(into.is_empty());
        take_features(&[1, 2], Ok(Reply::Features(vec![None, Some(vec![0.5])])), &mut into).unwrap();
        assert_eq!(into, [(2, vec![0.5])].into_iter().collect());
    }
}
