//! The feed benchmark's data: a seeded power-law follow graph and the users who read.
//!
//! Authors are ranked by popularity (a seeded permutation of the users), and a follower picks
//! each followee with probability proportional to `1 / (rank + 1)`: a Zipf law, so a few dozen
//! authors gather tens of thousands of followers (past the pull threshold, as celebrities do)
//! while most have a handful. Out-degrees are exponential around the asked mean. One seed gives
//! the same graph, readers and posting authors on every run, for plexus and Redis alike.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Most followees one user gets.
pub const OUT_DEGREE_MAX: usize = 5_000;

/// A generated follow graph over users `1..=users`.
pub struct FeedGraph {
    /// Users, ids `1..=users`.
    pub users: u64,
    /// Per user (index `id - 1`), its followees ascending.
    pub followees: Vec<Vec<u64>>,
    /// Per author, how many followers it has.
    pub follower_counts: BTreeMap<u64, u64>,
}

impl FeedGraph {
    /// About `edges` edges over `users` users, from `seed`.
    pub fn generate(users: u64, edges: u64, seed: u64) -> FeedGraph {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = users as usize;
        let mut by_rank: Vec<u64> = (1..=users).collect();
        for i in (1..n).rev() {
            let j = rng.gen_range(0..=i);
            by_rank.swap(i, j);
        }
        let mut cumulative = Vec::with_capacity(n);
        let mut total = 0.0f64;
        for r in 0..n {
            total += 1.0 / (r as f64 + 1.0);
            cumulative.push(total);
        }
        let mean = edges as f64 / users.max(1) as f64;
        let mut followees = Vec::with_capacity(n);
        let mut follower_counts: BTreeMap<u64, u64> = BTreeMap::new();
        for u in 1..=users {
            let draw: f64 = rng.gen_range(f64::EPSILON..1.0);
            let degree = ((-draw.ln() * mean).round() as usize).clamp(1, OUT_DEGREE_MAX.min(n.saturating_sub(1)));
            let mut set = BTreeSet::new();
            let mut tries = 0;
            while set.len() < degree && tries < 4 * degree {
                tries += 1;
                let x = rng.gen_range(0.0..total);
                let rank = cumulative.partition_point(|c| *c < x).min(n - 1);
                let v = by_rank[rank];
                if v != u {
                    set.insert(v);
                }
            }
            for v in &set {
                *follower_counts.entry(*v).or_default() += 1;
            }
            followees.push(set.into_iter().collect());
        }
        FeedGraph {
            users,
            followees,
            follower_counts,
        }
    }

    /// Edges in the graph.
    pub fn edges(&self) -> u64 {
        self.followees.iter().map(|f| f.len() as u64).sum()
    }

    /// `readers` distinct users who read (and so have materialised home timelines), from `seed`.
    pub fn readers(&self, readers: u64, seed: u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7265_6164);
        let mut set = BTreeSet::new();
        let want = readers.min(self.users);
        while (set.len() as u64) < want {
            set.insert(rng.gen_range(1..=self.users));
        }
        set.into_iter().collect()
    }

    /// Per author, its followers among `readers`.
    pub fn reader_followers(&self, readers: &[u64]) -> BTreeMap<u64, Vec<u64>> {
        let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for r in readers {
            for a in &self.followees[(*r - 1) as usize] {
                out.entry(*a).or_default().push(*r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_is_seeded_power_law_and_without_self_loops() {
        let g = FeedGraph::generate(10_000, 200_000, 7);
        assert_eq!(g.followees.len(), 10_000);
        let edges = g.edges();
        assert!((150_000..=250_000).contains(&edges), "{edges} edges");
        assert!(g
            .followees
            .iter()
            .enumerate()
            .all(|(i, f)| !f.contains(&(i as u64 + 1))));
        let mut counts: Vec<u64> = g.follower_counts.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // A few authors hold a large share; the median one little.
        assert!(counts[0] > 2_000, "top author has {} followers", counts[0]);
        assert!(
            counts[counts.len() / 2] < 20,
            "median author has {}",
            counts[counts.len() / 2]
        );
        let again = FeedGraph::generate(10_000, 200_000, 7);
        assert_eq!(again.followees, g.followees);
        assert_eq!(g.readers(100, 1), again.readers(100, 1));
        assert_eq!(g.readers(100, 1).len(), 100);
    }
}
