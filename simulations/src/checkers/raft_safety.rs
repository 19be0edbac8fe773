//! Raft election safety: at most one leader per group and leader id. The simulator samples every
//! replica's role and vote on a short period; two nodes seen leading one group under one leader
//! id, or a node leading under a leader id that names another node, is a violation. Sampling can
//! miss a short-lived second leader; it never reports a false one.
//!
//! Why the leader id and not the term: openraft 0.9 (built without `single-term-leader`) orders
//! leader ids as `(term, node)`, so a candidate may win the term its lower-id rival already won,
//! and two leaders in one term one after the other are allowed (their log ids differ in the node
//! part). The property that makes that safe, that committed entries never change, is checked by
//! `committed_entries`.

use std::collections::{BTreeMap, BTreeSet};

/// `(group, term, node named by the leader's vote)` → the nodes seen leading under it.
pub type LeaderSamples = BTreeMap<(u32, u64, u64), BTreeSet<u64>>;

/// Checks the samples.
pub fn check(samples: &LeaderSamples) -> Vec<String> {
    samples
        .iter()
        .filter(|((_, _, named), leaders)| leaders.len() > 1 || leaders.iter().any(|l| l != named))
        .map(|((group, term, named), leaders)| {
            format!("group {group} had leaders {leaders:?} under leader id (term {term}, node {named})")
        })
        .collect()
}
