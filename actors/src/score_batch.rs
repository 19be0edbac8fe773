//! The kernel work of one scoring batch: neighbour-mean aggregation of the
//! queries that need it, then cosine similarity and top-k per request.
//!
//! Inputs are dense, already gathered matrices ([`ScoreJob`]); this module
//! reads no state and talks to no peer, and it runs on a blocking thread
//! (`spawn_blocking`) because every kernel call is CPU- or GPU-bound. All
//! `NeighborMean` queries of one feature width in a batch go to the kernels
//! as one CSR block (one row per request), so a GPU launch carries the whole
//! batch; cosine scoring is one kernel call per request, because
//! `Kernels::cosine` takes one query. All `Sage` jobs of a batch go through the
//! node's GraphSAGE model as one graph (one block per layer), likewise.

use std::collections::BTreeMap;

use plexus_kernels::{top_k, AggOp, Csr, CsrRef, Features, Kernels, SageModel};
use plexus_proto::{ErrorReply, ScoreMode, VertexId};

/// One scoring request with its features gathered.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreJob {
    /// How the query is built from `query_rows`.
    pub mode: ScoreMode,
    /// Values per feature row (every row here has this width).
    pub dim: usize,
    /// `Cosine`: exactly one row, the query. `NeighborMean`: one or more
    /// rows (own, then out-neighbours) whose mean is the query. `Sage`: the
    /// vertex's own row, then its out-neighbours'.
    pub query_rows: Vec<f32>,
    /// Candidates with features of width `dim`, ascending and unique, so
    /// that top-k's ties by lower index are ties by lower id.
    pub candidate_ids: Vec<VertexId>,
    /// `candidate_ids.len() × dim` values, row-major, in `candidate_ids` order.
    pub candidates: Vec<f32>,
    /// Most results to return.
    pub k: usize,
}

/// The answer to one job: `(candidate, score)`, best first.
pub type ScoreResult = Result<Vec<(VertexId, f32)>, ErrorReply>;

impl ScoreJob {
    /// Values the job holds, the unit of `score_batch_values_max`.
    pub fn values(&self) -> usize {
        self.query_rows.len() + self.candidates.len()
    }

    /// `Ok` when the matrices have the shapes the fields promise.
    fn check(&self) -> Result<(), ErrorReply> {
        let rows = self.query_rows.len().checked_div(self.dim).unwrap_or(0);
        let shaped = rows >= 1
            && rows * self.dim == self.query_rows.len()
            && (self.mode != ScoreMode::Cosine || rows == 1)
            && self.candidates.len() == self.candidate_ids.len() * self.dim
            && self.candidate_ids.windows(2).all(|w| w[0] < w[1]);
        if shaped {
            Ok(())
        } else {
            Err(ErrorReply::Internal(format!(
                "malformed score job: dim {}, {} query values, {} candidates with {} values",
                self.dim,
                self.query_rows.len(),
                self.candidate_ids.len(),
                self.candidates.len()
            )))
        }
    }
}

fn kernel_err(e: plexus_kernels::KernelError) -> ErrorReply {
    ErrorReply::Internal(format!("scoring kernel: {e}"))
}

/// The mean query of every `NeighborMean` job in `group` (all of width
/// `dim`), computed by one aggregation over a block with one row per job.
fn mean_queries(kernels: &Kernels, jobs: &[&ScoreJob], dim: usize) -> Result<Vec<Vec<f32>>, ErrorReply> {
    let mut offsets = Vec::with_capacity(jobs.len() + 1);
    offsets.push(0u32);
    let mut x = Vec::new();
    for job in jobs {
        x.extend_from_slice(&job.query_rows);
        let rows = u32::try_from(x.len() / dim)
            .map_err(|_| ErrorReply::Internal("aggregation block exceeds u32 rows".into()))?;
        offsets.push(rows);
    }
    let sources = x.len() / dim;
    // Row i gathers its own job's rows; sources are numbered in stacking order.
    let cols: Vec<u32> = (0..offsets[jobs.len()]).collect();
    let csr = CsrRef::new(&offsets, &cols, sources).map_err(kernel_err)?;
    let features = Features::f32(&x, dim).map_err(kernel_err)?;
    let mut out = vec![0.0f32; jobs.len() * dim];
    kernels
        .aggregate(&csr, &features, AggOp::Mean, &mut out)
        .map_err(kernel_err)?;
    Ok(out.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

/// The best `k` of `candidates` (rows of `dim`) by cosine similarity to `query`.
fn rank(kernels: &Kernels, query: &[f32], candidates: &[f32], ids: &[VertexId], k: usize) -> ScoreResult {
    if ids.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let scores = kernels.cosine(query, candidates).map_err(kernel_err)?;
    Ok(top_k(&scores, k)
        .into_iter()
        .map(|(i, s)| (ids[i as usize], s))
        .collect())
}

/// Every `Sage` job of a batch through `model` as one graph: per job the rows are its vertex,
/// its out-neighbours and its candidates; the vertex's row aggregates its out-neighbours' rows,
/// every other row nothing (a zero aggregate, as PyG's mean of no neighbours). Each layer is one
/// block over all rows; the candidates are then ranked by cosine similarity of their embeddings
/// to the vertex's.
fn sage_batch(kernels: &Kernels, model: &SageModel, jobs: &[&ScoreJob]) -> Result<Vec<ScoreResult>, ErrorReply> {
    let mut offsets = vec![0u32];
    let mut cols: Vec<u32> = Vec::new();
    let mut x: Vec<f32> = Vec::new();
    let mut starts = Vec::with_capacity(jobs.len());
    for job in jobs {
        let base = x.len() / job.dim;
        let neighbours = job.query_rows.len() / job.dim - 1;
        starts.push(base);
        x.extend_from_slice(&job.query_rows);
        x.extend_from_slice(&job.candidates);
        let rows = x.len() / job.dim;
        let to_u32 =
            |v: usize| u32::try_from(v).map_err(|_| ErrorReply::Internal("model graph exceeds u32 rows".into()));
        cols.extend(
            (base + 1..=base + neighbours)
                .map(to_u32)
                .collect::<Result<Vec<u32>, _>>()?,
        );
        offsets.push(to_u32(cols.len())?);
        offsets.extend(std::iter::repeat_n(to_u32(cols.len())?, rows - base - 1));
    }
    let rows = offsets.len() - 1;
    let block = Csr::new(offsets, cols, rows).map_err(kernel_err)?;
    let mut h = x;
    for layer in 0..model.layers.len() {
        h = model.layer_forward(kernels, layer, &block, &h, 1).map_err(kernel_err)?;
    }
    let out = model.layers.last().map_or(0, |l| l.out_dim);
    Ok(jobs
        .iter()
        .zip(starts)
        .map(|(job, base)| {
            let first_candidate = base + job.query_rows.len() / job.dim;
            let query = &h[base * out..(base + 1) * out];
            let candidates = &h[first_candidate * out..(first_candidate + job.candidate_ids.len()) * out];
            rank(kernels, query, candidates, &job.candidate_ids, job.k)
        })
        .collect())
}

/// Answers every `Sage` job of a batch (`None` for the others).
fn sage_answers(kernels: &Kernels, model: Option<&SageModel>, jobs: &[ScoreJob]) -> Vec<Option<ScoreResult>> {
    let mut answers: Vec<Option<ScoreResult>> = vec![None; jobs.len()];
    let mut runnable = Vec::new();
    for (i, job) in jobs.iter().enumerate().filter(|(_, j)| j.mode == ScoreMode::Sage) {
        let in_dim = model.and_then(|m| m.layers.first()).map(|l| l.in_dim);
        answers[i] = match (job.check(), in_dim) {
            (Err(e), _) => Some(Err(e)),
            (Ok(()), None) => Some(Err(ErrorReply::BadRequest(
                "this node has no ranking model (set [scoring] model to a safetensors file)".into(),
            ))),
            (Ok(()), Some(d)) if d != job.dim => Some(Err(ErrorReply::BadRequest(format!(
                "features of width {} do not fit the model, which takes {d}",
                job.dim
            )))),
            (Ok(()), Some(_)) => {
                runnable.push(i);
                None
            }
        };
    }
    if let (Some(model), false) = (model, runnable.is_empty()) {
        let group: Vec<&ScoreJob> = runnable.iter().map(|&i| &jobs[i]).collect();
        match sage_batch(kernels, model, &group) {
            Ok(results) => {
                for (i, r) in runnable.into_iter().zip(results) {
                    answers[i] = Some(r);
                }
            }
            Err(e) => {
                for i in runnable {
                    answers[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    answers
}

/// Scores every job of a batch; one answer per job, in order. `model` serves `Sage` jobs.
pub fn run_batch(kernels: &Kernels, model: Option<&SageModel>, jobs: &[ScoreJob]) -> Vec<ScoreResult> {
    let sage = sage_answers(kernels, model, jobs);
    let mut queries: Vec<Result<Vec<f32>, ErrorReply>> =
        jobs.iter().map(|j| j.check().map(|()| j.query_rows.clone())).collect();
    // Group the well-formed NeighborMean jobs by width: one kernel call per width.
    let mut by_dim: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if job.mode == ScoreMode::NeighborMean && queries[i].is_ok() {
            by_dim.entry(job.dim).or_default().push(i);
        }
    }
    for (dim, members) in by_dim {
        let group: Vec<&ScoreJob> = members.iter().map(|&i| &jobs[i]).collect();
        match mean_queries(kernels, &group, dim) {
            Ok(means) => {
                for (i, mean) in members.into_iter().zip(means) {
                    queries[i] = Ok(mean);
                }
            }
            Err(e) => {
                for i in members {
                    queries[i] = Err(e.clone());
                }
            }
        }
    }
    jobs.iter()
        .zip(queries)
        .zip(sage)
        .map(|((job, query), sage)| match sage {
            Some(answer) => answer,
            None => rank(kernels, &query?, &job.candidates, &job.candidate_ids, job.k),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use plexus_kernels::Backend;

    use super::*;

    fn job(mode: ScoreMode, dim: usize, query_rows: &[f32], cands: &[(u64, &[f32])], k: usize) -> ScoreJob {
        ScoreJob {
            mode,
            dim,
            query_rows: query_rows.to_vec(),
            candidate_ids: cands.iter().map(|c| c.0).collect(),
            candidates: cands.iter().flat_map(|c| c.1.iter().copied()).collect(),
            k,
        }
    }

    #[test]
    fn a_mixed_batch_scores_each_job_exactly() {
        let kernels = Kernels::new(Backend::Scalar).unwrap();
        let cands: &[(u64, &[f32])] = &[(3, &[1.0, 0.0]), (5, &[0.0, 2.0]), (8, &[3.0, 3.0]), (9, &[0.0, 1.0])];
        let jobs = vec![
            // Cosine against (1, 0): 3 scores 1, 8 scores 1/√2, 5 and 9 tie at 0 (lower id first).
            job(ScoreMode::Cosine, 2, &[2.0, 0.0], cands, 4),
            // Mean of (1, 0) and (0, 1) is (0.5, 0.5): 8 scores 1, the others 1/√2.
            job(ScoreMode::NeighborMean, 2, &[1.0, 0.0, 0.0, 1.0], cands, 3),
            // Another width in the same batch: its own aggregation call.
            job(ScoreMode::NeighborMean, 1, &[-4.0], &[(1, &[2.0]), (2, &[-1.0])], 1),
            job(ScoreMode::Cosine, 2, &[1.0, 1.0], &[], 5),
        ];
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let want: Vec<Vec<(u64, f32)>> = vec![
            vec![(3, 1.0), (8, h), (5, 0.0), (9, 0.0)],
            vec![(8, 1.0), (3, h), (5, h)],
            vec![(2, 1.0)],
            vec![],
        ];
        let got = run_batch(&kernels, None, &jobs);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.into_iter().zip(want) {
            let g = g.unwrap();
            assert_eq!(
                g.iter().map(|p| p.0).collect::<Vec<_>>(),
                w.iter().map(|p| p.0).collect::<Vec<_>>()
            );
            for (a, b) in g.iter().zip(&w) {
                assert!((a.1 - b.1).abs() < 1e-6, "{g:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn a_malformed_job_fails_alone() {
        let kernels = Kernels::new(Backend::Scalar).unwrap();
        let good = job(ScoreMode::NeighborMean, 1, &[1.0], &[(4, &[1.0])], 1);
        let two_rows_for_cosine = job(ScoreMode::Cosine, 1, &[1.0, 2.0], &[(4, &[1.0])], 1);
        let unsorted = job(ScoreMode::Cosine, 1, &[1.0], &[(4, &[1.0]), (2, &[1.0])], 1);
        let got = run_batch(&kernels, None, &[two_rows_for_cosine, good, unsorted]);
        assert!(matches!(got[0], Err(ErrorReply::Internal(_))));
        assert_eq!(got[1], Ok(vec![(4, 1.0)]));
        assert!(matches!(got[2], Err(ErrorReply::Internal(_))));
    }

    fn layer(w_self: [f32; 4], w_neigh: [f32; 4]) -> plexus_kernels::SageLayer {
        plexus_kernels::SageLayer {
            in_dim: 2,
            out_dim: 2,
            agg: plexus_kernels::AggOp::Mean,
            w_neigh: w_neigh.to_vec(),
            bias: vec![0.0; 2],
            w_self: w_self.to_vec(),
            relu: false,
            l2_normalize: false,
        }
    }

    #[test]
    fn a_model_embeds_the_vertex_over_its_neighbours_and_each_candidate_alone() {
        let kernels = Kernels::new(Backend::Scalar).unwrap();
        const I: [f32; 4] = [1.0, 0.0, 0.0, 1.0];
        // Layer 0 adds the neighbour mean to the vertex's own features; layer 1 passes them on.
        let model = SageModel {
            layers: vec![layer(I, I), layer(I, [0.0; 4])],
        };
        let cands: &[(u64, &[f32])] = &[(3, &[1.0, 0.0]), (5, &[0.0, 2.0]), (8, &[3.0, 3.0]), (9, &[0.0, 1.0])];
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let jobs = vec![
            // (1, 0) + mean((0, 1), (0, 1)) = (1, 1): 8 scores 1, then 3, 5, 9 tie at 1/√2.
            job(ScoreMode::Sage, 2, &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0], cands, 2),
            // In the same graph: no features of its own (zeros), one neighbour (1, 0).
            job(ScoreMode::Sage, 2, &[0.0, 0.0, 1.0, 0.0], cands, 2),
            job(ScoreMode::Cosine, 2, &[0.0, 1.0], cands, 1),
            // A width the model does not take.
            job(ScoreMode::Sage, 1, &[1.0], &[(4, &[1.0])], 1),
        ];
        let got = run_batch(&kernels, Some(&model), &jobs);
        let close = |g: &ScoreResult, w: &[(u64, f32)]| {
            let g = g.as_ref().unwrap();
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < 1e-6)
        };
        assert!(close(&got[0], &[(8, 1.0), (3, h)]), "{:?}", got[0]);
        assert!(close(&got[1], &[(3, 1.0), (8, h)]), "{:?}", got[1]);
        assert!(close(&got[2], &[(5, 1.0)]), "{:?}", got[2]);
        assert!(
            matches!(&got[3], Err(ErrorReply::BadRequest(m)) if m.contains("width 1")),
            "{:?}",
            got[3]
        );
        // Without a model a Sage job is refused, and the others are answered.
        let got = run_batch(&kernels, None, &jobs[1..3]);
        assert!(matches!(&got[0], Err(ErrorReply::BadRequest(m)) if m.contains("no ranking model")));
        assert!(close(&got[1], &[(5, 1.0)]));
    }
}
