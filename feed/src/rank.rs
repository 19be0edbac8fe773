//! Ranking a window of posts: a score per post, then rank order.
//!
//! A post's score is `similarity_weight × similarity(reader, author) + recency`, where the
//! similarity comes from the scoring pool (cosine between the reader's and the author's GraphSAGE
//! embeddings when the nodes have a model, `[scoring] model`, else between the reader's
//! neighbour mean over the follow graph's feature vectors and the author's vector; 0 for an
//! author without features) and `recency` halves every
//! `half_life_ms` of the post's age. The age is measured from the window's upper bound, not from
//! the clock, so the same window ranks the same way on every page. Pure: no IO, no clock.

use std::collections::BTreeMap;

use plexus_proto::{PostRef, UserId};

use crate::cursor::RankKey;

/// How posts are scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankParams {
    /// Weight of the reader–author similarity.
    pub similarity_weight: f32,
    /// The recency term halves every this many milliseconds of age.
    pub half_life_ms: u64,
}

/// The recency term of a post written at `post_millis`, seen from `reference_millis`: 1 for a
/// post at the reference, halving every `half_life_ms` before it.
pub fn recency(post_millis: u64, reference_millis: u64, half_life_ms: u64) -> f32 {
    let age = reference_millis.saturating_sub(post_millis) as f64;
    (0.5f64).powf(age / half_life_ms.max(1) as f64) as f32
}

/// Scores `posts` and sorts them into rank order (best first; equal scores newest first).
/// `similarity` maps authors to their similarity with the reader; a missing author counts 0.
/// With `ranked` false every score is 0, so the order is newest first.
pub fn rank(
    posts: &[PostRef],
    similarity: &BTreeMap<UserId, f32>,
    reference: PostRef,
    params: RankParams,
    ranked: bool,
) -> Vec<RankKey> {
    let reference_millis = reference.millis();
    let mut out: Vec<RankKey> = posts
        .iter()
        .map(|p| {
            let score = if ranked {
                let sim = similarity.get(&p.author).copied().unwrap_or(0.0);
                let s = params.similarity_weight * sim + recency(p.millis(), reference_millis, params.half_life_ms);
                // A NaN or infinite score would break the order's totality; such a post ranks last.
                if s.is_finite() {
                    s
                } else {
                    f32::MIN
                }
            } else {
                0.0
            };
            RankKey { score, post: *p }
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.post.cmp(&a.post)));
    debug_assert!(out.windows(2).all(|w| w[1].after(&w[0])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_proto::ENTRY_SEQ_BITS;

    const PARAMS: RankParams = RankParams {
        similarity_weight: 1.0,
        half_life_ms: 1_000,
    };

    fn post(author: u64, millis: u64) -> PostRef {
        PostRef {
            author,
            id: millis << ENTRY_SEQ_BITS,
        }
    }

    #[test]
    fn recency_halves_per_half_life() {
        assert_eq!(recency(10_000, 10_000, 1_000), 1.0);
        assert_eq!(recency(9_000, 10_000, 1_000), 0.5);
        assert_eq!(recency(8_000, 10_000, 1_000), 0.25);
        assert_eq!(
            recency(11_000, 10_000, 1_000),
            1.0,
            "a post past the reference is as new as it"
        );
    }

    #[test]
    fn similarity_outweighs_a_little_age_and_ties_go_to_the_newer_post() {
        let sims = BTreeMap::from([(7, 0.9), (8, 0.0)]);
        let posts = vec![post(8, 10_000), post(7, 9_000), post(9, 10_000)];
        let reference = PostRef::first_of(10_001 << ENTRY_SEQ_BITS);
        let order: Vec<u64> = rank(&posts, &sims, reference, PARAMS, true)
            .iter()
            .map(|k| k.post.author)
            .collect();
        // 7: 0.9 + 0.5; 8 and 9: 0 + ~1, equal, so the higher author (same id) first.
        assert_eq!(order, vec![7, 9, 8]);
        let chrono: Vec<u64> = rank(&posts, &sims, reference, PARAMS, false)
            .iter()
            .map(|k| k.post.author)
            .collect();
        assert_eq!(chrono, vec![9, 8, 7]);
    }
}
