//! Quality measures against ground truth: pairwise precision, recall and F1 of predicted clusters, and
//! blocking pair completeness and reduction ratio. Never "accuracy": with millions of non-matching pairs
//! it is near 1 for any linker, including one that links nothing.
//!
//! Everything is counted from contingency tables (cluster × person), so it is linear in the records,
//! not quadratic in the pairs. This module knows nothing of how clusters were made.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Pairwise quality of a clustering.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairwiseMetrics {
    /// Pairs of records of one true person.
    pub true_pairs: u64,
    /// Pairs of records put in one cluster.
    pub predicted_pairs: u64,
    /// Pairs in both.
    pub true_positives: u64,
    /// `true_positives / predicted_pairs` (1 when nothing is predicted).
    pub precision: f64,
    /// `true_positives / true_pairs` (1 when there is nothing to find).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Compares predicted cluster labels with true person ids, record by record (equal slices' lengths;
/// extra entries of the longer are ignored).
pub fn pairwise<P: Eq + std::hash::Hash + Copy, T: Eq + std::hash::Hash + Copy>(
    predicted: &[P],
    truth: &[T],
) -> PairwiseMetrics {
    let n = predicted.len().min(truth.len());
    let mut by_cluster: HashMap<P, u64> = HashMap::new();
    let mut by_person: HashMap<T, u64> = HashMap::new();
    let mut by_both: HashMap<(P, T), u64> = HashMap::new();
    for i in 0..n {
        *by_cluster.entry(predicted[i]).or_insert(0) += 1;
        *by_person.entry(truth[i]).or_insert(0) += 1;
        *by_both.entry((predicted[i], truth[i])).or_insert(0) += 1;
    }
    let predicted_pairs: u64 = by_cluster.values().map(|&c| pairs(c)).sum();
    let true_pairs: u64 = by_person.values().map(|&c| pairs(c)).sum();
    let true_positives: u64 = by_both.values().map(|&c| pairs(c)).sum();
    let precision = if predicted_pairs == 0 {
        1.0
    } else {
        true_positives as f64 / predicted_pairs as f64
    };
    let recall = if true_pairs == 0 {
        1.0
    } else {
        true_positives as f64 / true_pairs as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    PairwiseMetrics {
        true_pairs,
        predicted_pairs,
        true_positives,
        precision,
        recall,
        f1,
    }
}

/// How well blocking kept the true pairs and how much it pruned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockingMetrics {
    /// Pairs of records of one true person.
    pub true_pairs: u64,
    /// True pairs among the candidates.
    pub covered_true_pairs: u64,
    /// `covered_true_pairs / true_pairs`.
    pub pair_completeness: f64,
    /// Candidate pairs compared.
    pub candidate_pairs: u64,
    /// `1 - candidate_pairs / all pairs`.
    pub reduction_ratio: f64,
}

/// Blocking metrics: `is_candidate(a, b)` says whether the pair was compared; it is asked only for true
/// pairs (records of one person), enumerated person by person.
pub fn blocking<T: Eq + std::hash::Hash + Copy>(
    truth: &[T],
    candidate_pairs: u64,
    is_candidate: impl Fn(u32, u32) -> bool,
) -> BlockingMetrics {
    let mut members: HashMap<T, Vec<u32>> = HashMap::new();
    for (i, &t) in truth.iter().enumerate() {
        members.entry(t).or_default().push(i as u32);
    }
    let (mut true_pairs, mut covered) = (0u64, 0u64);
    for m in members.values() {
        for (x, &a) in m.iter().enumerate() {
            for &b in &m[x + 1..] {
                true_pairs += 1;
                if is_candidate(a, b) {
                    covered += 1;
                }
            }
        }
    }
    let all = pairs(truth.len() as u64);
    BlockingMetrics {
        true_pairs,
        covered_true_pairs: covered,
        pair_completeness: if true_pairs == 0 {
            1.0
        } else {
            covered as f64 / true_pairs as f64
        },
        candidate_pairs,
        reduction_ratio: if all == 0 {
            0.0
        } else {
            1.0 - candidate_pairs as f64 / all as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_example() {
        // Truth: person A = {0,1,2}, B = {3,4}, C = {5}.  True pairs: 3 + 1 = 4.
        // Predicted: {0,1}, {2,3,4}, {5}. Predicted pairs: 1 + 3 = 4; true positives: 0-1, 3-4 = 2.
        let truth = ['A', 'A', 'A', 'B', 'B', 'C'];
        let predicted = [1, 1, 2, 2, 2, 3];
        let m = pairwise(&predicted, &truth);
        assert_eq!((m.true_pairs, m.predicted_pairs, m.true_positives), (4, 4, 2));
        assert_eq!(m.precision, 0.5);
        assert_eq!(m.recall, 0.5);
        assert_eq!(m.f1, 0.5);
        let perfect = pairwise(&truth, &truth);
        assert_eq!((perfect.precision, perfect.recall, perfect.f1), (1.0, 1.0, 1.0));
        let singletons = pairwise(&[1, 2, 3, 4, 5, 6], &truth);
        assert_eq!(
            (singletons.precision, singletons.recall, singletons.f1),
            (1.0, 0.0, 0.0)
        );
    }

    #[test]
    fn blocking_completeness_and_reduction() {
        let truth = [0, 0, 0, 1, 1, 2];
        // Candidates: 0-1, 1-2 and 3-4 are true pairs; 0-2 is missed. Plus 2 false candidates = 5.
        let cand = |a: u32, b: u32| matches!((a, b), (0, 1) | (1, 2) | (3, 4));
        let b = blocking(&truth, 5, cand);
        assert_eq!((b.true_pairs, b.covered_true_pairs), (4, 3));
        assert_eq!(b.pair_completeness, 0.75);
        assert!((b.reduction_ratio - (1.0 - 5.0 / 15.0)).abs() < 1e-12);
    }
}
