//! Raft election safety: at most one leader per group and term. The simulator samples every
//! replica's role and term on a short period; two nodes seen leading one group in one term is a
//! violation. Sampling can miss a short-lived second leader; it never reports a false one.

use std::collections::{BTreeMap, BTreeSet};

/// `(group, term)` → the nodes seen leading it.
pub type LeaderSamples = BTreeMap<(u32, u64), BTreeSet<u64>>;

/// Checks the samples.
pub fn check(samples: &LeaderSamples) -> Vec<String> {
    samples
        .iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|((group, term), leaders)| format!("group {group} had leaders {leaders:?} in term {term}"))
        .collect()
}
