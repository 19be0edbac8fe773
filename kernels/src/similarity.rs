//! Cosine similarity of one query against a batch of candidates, and deterministic top-k selection.
//! Scores are `f32`; a zero vector (query or candidate) scores 0 rather than NaN. Not an index: every
//! candidate is scored.

use std::cmp::Ordering;

use crate::error::KernelError;

/// Candidates per thread below which scoring stays on the calling thread.
const CANDIDATES_PER_THREAD_MIN: usize = 256;

/// Dot product with eight independent partial sums, which the compiler vectorises on any target.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Cosine similarity of `query` against every row of `candidates` (`n × query.len()`), on up to
/// `threads` threads.
pub fn cosine_scores(query: &[f32], candidates: &[f32], threads: usize) -> Result<Vec<f32>, KernelError> {
    let dim = query.len();
    if dim == 0 || !candidates.len().is_multiple_of(dim) {
        return Err(KernelError::Shape(format!(
            "{} candidate values for dim {dim}",
            candidates.len()
        )));
    }
    let n = candidates.len() / dim;
    let qn = dot(query, query).sqrt();
    let mut out = vec![0.0f32; n];
    let score = |c: &[f32]| {
        let denom = dot(c, c).sqrt() * qn;
        if denom > 0.0 {
            dot(c, query) / denom
        } else {
            0.0
        }
    };
    let workers = threads.max(1).min(n.div_ceil(CANDIDATES_PER_THREAD_MIN)).max(1);
    let per = n.div_ceil(workers).max(1);
    std::thread::scope(|s| {
        for (o, c) in out.chunks_mut(per).zip(candidates.chunks(per * dim)) {
            let score = &score;
            s.spawn(move || {
                for (v, row) in o.iter_mut().zip(c.chunks_exact(dim)) {
                    *v = score(row);
                }
            });
        }
    });
    Ok(out)
}

/// Orders by score, highest first, NaN after every number; equal scores by lower index first.
fn rank(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0)),
        (true, true) => a.0.cmp(&b.0),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    }
}

/// The `k` best `(index, score)` pairs, highest score first; ties go to the lower index, so the result
/// is fully deterministic. Returns fewer than `k` when there are fewer scores.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = scores.iter().enumerate().map(|(i, &s)| (i as u32, s)).collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, rank);
        all.truncate(k);
    }
    all.sort_by(rank);
    all
}

/// Cosine scores followed by [`top_k`].
pub fn cosine_top_k(
    query: &[f32],
    candidates: &[f32],
    k: usize,
    threads: usize,
) -> Result<Vec<(u32, f32)>, KernelError> {
    Ok(top_k(&cosine_scores(query, candidates, threads)?, k))
}
