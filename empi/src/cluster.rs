//! Clustering: links above a threshold become master identities, through a union of clusters guarded
//! against over-merging, with master ids that stay stable as records arrive and steward constraints that
//! automatic linking never overrides.
//!
//! Links are taken strongest first (ties by record index). Two clusters merge on a link unless a rule
//! refuses it ([`Refusal`]):
//! - a steward unlink (cannot-link) separates a member of one from a member of the other;
//! - weak link: the weight is under `threshold + size_penalty_bits · log2(|A|·|B|)`, because large
//!   clusters have many chances to pick up one spurious strong-looking link;
//! - national ids conflict: both clusters carry ids and no id of one equals, or is one edit from, an id of
//!   the other (one person has one id);
//! - sex conflict: both have a known sex and the sexes differ, unless some pair across them shares the
//!   birth date and the given name (exact or nickname), which is what a miscoded sex looks like (and
//!   what opposite-sex twins, whose given names differ, do not);
//! - given names conflict: both have given names and no pair of them is compatible (what counts as
//!   compatible is the caller's [`RecordFacts::given_compatible`]; the linker's: equal, nickname-equal,
//!   one edit apart or Jaro-Winkler at least 0.88), which keeps twins and family members who share an
//!   address, phone, family name (and, for twins, birth date) apart. Fellegi-Sunter alone cannot: it
//!   counts those shared household fields as independent evidence, and their weight outvotes one
//!   disagreeing given name.
//!
//! Master ids: a new cluster takes the next id of a counter; a merge keeps the older (smaller) id. In
//! bulk, singletons get provisional ids in record order and the final ids are renumbered in the order of
//! their oldest member, so ids depend only on the record order (the linker makes that order canonical).
//! Must-links (steward links) merge unconditionally. This module scores nothing: it takes weighted edges
//! and facts about records.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde::{Deserialize, Serialize};

use crate::date::Date;
use crate::normalize::Sex;
use crate::util::IdHasher;

/// A master identity's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MasterId(pub u64);

impl std::fmt::Display for MasterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "M{}", self.0)
    }
}

/// Members of each cluster looked at by the consistency rules; bigger clusters are checked on their
/// oldest members only, which keeps a merge check bounded.
pub const GUARD_MEMBERS_MAX: usize = 64;

/// A scored link between two records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// One record.
    pub a: u32,
    /// The other.
    pub b: u32,
    /// Match weight in bits.
    pub weight: f32,
}

/// Clustering settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Links at or above this weight (bits) are merge candidates.
    pub threshold_bits: f64,
    /// Extra bits a link needs per doubling of `|A|·|B|`.
    pub size_penalty_bits: f64,
    /// Whether the consistency rules (ids, sex/date, given names, size) apply; steward constraints
    /// always do.
    pub guard: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            threshold_bits: 3.0,
            size_penalty_bits: 0.5,
            guard: true,
        }
    }
}

/// What the consistency rules need to know about records.
pub trait RecordFacts {
    /// Normalised national id ("" when absent).
    fn national_id(&self, r: u32) -> &str;
    /// Sex.
    fn sex(&self, r: u32) -> Sex;
    /// Date of birth.
    fn birth(&self, r: u32) -> Option<Date>;
    /// Whether both have a given name.
    fn has_given(&self, r: u32) -> bool;
    /// Whether two given names are compatible (equal, nickname-equal or one typo apart).
    fn given_compatible(&self, a: u32, b: u32) -> bool;
    /// Whether two given names are the same name (equal or nickname-equal).
    fn given_same(&self, a: u32, b: u32) -> bool;
}

/// Why a merge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// A steward unlink separates the clusters.
    CannotLink,
    /// The link is weak for the clusters' sizes.
    WeakLink,
    /// Different national ids.
    NationalIdConflict,
    /// Different sexes, without a shared birth date and given name.
    SexConflict,
    /// No compatible given names.
    GivenNameConflict,
}

/// What a merge attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The records were already in one cluster.
    Together,
    /// Merged: `kept` survives, `absorbed` is gone.
    Merged {
        /// The surviving (older) master id.
        kept: MasterId,
        /// The retired one.
        absorbed: MasterId,
    },
    /// Refused, and why.
    Refused(Refusal),
}

#[derive(Debug, Clone)]
struct Cluster {
    master: MasterId,
    members: Vec<u32>,
}

/// Clusters of records and steward constraints.
#[derive(Debug, Clone, Default)]
pub struct Clusters {
    cluster_of: Vec<u32>,
    clusters: Vec<Cluster>,
    slot_of: HashMap<MasterId, u32, BuildHasherDefault<IdHasher>>,
    next_master: u64,
    cannot: HashMap<u32, Vec<u32>>,
    must: Vec<(u32, u32)>,
}

impl Clusters {
    /// No records.
    pub fn new() -> Clusters {
        Clusters {
            next_master: 1,
            ..Clusters::default()
        }
    }

    /// Clusters `n` records from scratch: must-links first, then `edges` strongest first under the
    /// guard, then master ids in order of each cluster's oldest record (see the module doc).
    pub fn bulk(
        n: usize,
        edges: &mut [Edge],
        must: &[(u32, u32)],
        cannot: &[(u32, u32)],
        facts: &dyn RecordFacts,
        config: &ClusterConfig,
    ) -> Clusters {
        let mut c = Clusters::new();
        for _ in 0..n {
            c.add_record();
        }
        for &(a, b) in cannot {
            c.cannot.entry(a).or_default().push(b);
            c.cannot.entry(b).or_default().push(a);
        }
        for &(a, b) in must {
            c.must.push((a, b));
            c.force_merge(a, b);
        }
        edges.sort_unstable_by(|x, y| y.weight.total_cmp(&x.weight).then(x.a.cmp(&y.a)).then(x.b.cmp(&y.b)));
        for e in edges.iter() {
            if f64::from(e.weight) < config.threshold_bits {
                break;
            }
            c.try_merge(e.a, e.b, f64::from(e.weight), facts, config);
        }
        c.renumber();
        c
    }

    /// Gives master ids 1.. in order of each cluster's current id (the oldest member's provisional id).
    fn renumber(&mut self) {
        let mut order: Vec<u32> = (0..self.clusters.len() as u32)
            .filter(|&s| !self.clusters[s as usize].members.is_empty())
            .collect();
        order.sort_unstable_by_key(|&s| self.clusters[s as usize].master);
        self.slot_of.clear();
        for (i, &s) in order.iter().enumerate() {
            let id = MasterId(i as u64 + 1);
            self.clusters[s as usize].master = id;
            self.slot_of.insert(id, s);
        }
        self.next_master = order.len() as u64 + 1;
    }

    /// Adds a record as its own cluster with a fresh master id; returns its index and id.
    pub fn add_record(&mut self) -> (u32, MasterId) {
        let r = self.cluster_of.len() as u32;
        let id = MasterId(self.next_master);
        self.next_master += 1;
        let slot = self.clusters.len() as u32;
        self.clusters.push(Cluster {
            master: id,
            members: vec![r],
        });
        self.cluster_of.push(slot);
        self.slot_of.insert(id, slot);
        (r, id)
    }

    /// Number of records.
    pub fn records(&self) -> usize {
        self.cluster_of.len()
    }

    /// The master id of record `r`.
    pub fn master_of(&self, r: u32) -> Option<MasterId> {
        let slot = *self.cluster_of.get(r as usize)?;
        Some(self.clusters[slot as usize].master)
    }

    /// Members of a master identity, oldest first is not guaranteed (merge order).
    pub fn members(&self, id: MasterId) -> &[u32] {
        match self.slot_of.get(&id) {
            Some(&s) => &self.clusters[s as usize].members,
            None => &[],
        }
    }

    /// Every live master id with its members, by id.
    pub fn iter(&self) -> impl Iterator<Item = (MasterId, &[u32])> {
        let mut ids: Vec<(MasterId, u32)> = self.slot_of.iter().map(|(&m, &s)| (m, s)).collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(move |(m, s)| (m, self.clusters[s as usize].members.as_slice()))
    }

    /// Number of live master identities.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Whether there are no identities.
    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Per record, a label equal for records of one identity (the master id's number), for evaluation.
    pub fn labels(&self) -> Vec<u64> {
        self.cluster_of
            .iter()
            .map(|&s| self.clusters[s as usize].master.0)
            .collect()
    }

    /// Whether a steward unlink separates the clusters of `a` and `b`.
    fn cannot_link(&self, sa: u32, sb: u32) -> bool {
        let (small, other) = if self.clusters[sa as usize].members.len() <= self.clusters[sb as usize].members.len() {
            (sa, sb)
        } else {
            (sb, sa)
        };
        self.clusters[small as usize].members.iter().any(|m| {
            self.cannot
                .get(m)
                .is_some_and(|partners| partners.iter().any(|&p| self.cluster_of[p as usize] == other))
        })
    }

    fn guard(&self, sa: u32, sb: u32, weight: f64, facts: &dyn RecordFacts, config: &ClusterConfig) -> Option<Refusal> {
        let a = &self.clusters[sa as usize].members;
        let b = &self.clusters[sb as usize].members;
        let need = config.threshold_bits + config.size_penalty_bits * ((a.len() * b.len()) as f64).log2();
        if weight < need {
            return Some(Refusal::WeakLink);
        }
        let a = &a[..a.len().min(GUARD_MEMBERS_MAX)];
        let b = &b[..b.len().min(GUARD_MEMBERS_MAX)];
        let ids = |m: &[u32]| m.iter().any(|&r| !facts.national_id(r).is_empty());
        if ids(a) && ids(b) {
            let compatible = a.iter().any(|&x| {
                let nx = facts.national_id(x);
                !nx.is_empty()
                    && b.iter().any(|&y| {
                        let ny = facts.national_id(y);
                        !ny.is_empty() && (nx == ny || crate::compare::metrics::osa_str(nx, ny) <= 1)
                    })
            });
            if !compatible {
                return Some(Refusal::NationalIdConflict);
            }
        }
        let sexes = |m: &[u32]| {
            m.iter().fold(0u8, |acc, &r| {
                acc | match facts.sex(r) {
                    Sex::Male => 1,
                    Sex::Female => 2,
                    Sex::Other => 4,
                    Sex::Unknown => 0,
                }
            })
        };
        let (sa_, sb_) = (sexes(a), sexes(b));
        if sa_ != 0 && sb_ != 0 && sa_ & sb_ == 0 {
            let miscoded = a.iter().any(|&x| {
                facts.birth(x).is_some_and(|d| {
                    b.iter()
                        .any(|&y| facts.birth(y) == Some(d) && facts.has_given(x) && facts.given_same(x, y))
                })
            });
            if !miscoded {
                return Some(Refusal::SexConflict);
            }
        }
        let named = |m: &[u32]| m.iter().any(|&r| facts.has_given(r));
        if named(a) && named(b) {
            let compatible = a
                .iter()
                .any(|&x| facts.has_given(x) && b.iter().any(|&y| facts.has_given(y) && facts.given_compatible(x, y)));
            if !compatible {
                return Some(Refusal::GivenNameConflict);
            }
        }
        None
    }

    /// Merges the clusters of `a` and `b` on a link of `weight` bits unless a rule refuses.
    pub fn try_merge(&mut self, a: u32, b: u32, weight: f64, facts: &dyn RecordFacts, config: &ClusterConfig) -> Merge {
        let (sa, sb) = (self.cluster_of[a as usize], self.cluster_of[b as usize]);
        if sa == sb {
            return Merge::Together;
        }
        if self.cannot_link(sa, sb) {
            return Merge::Refused(Refusal::CannotLink);
        }
        if config.guard {
            if let Some(r) = self.guard(sa, sb, weight, facts, config) {
                return Merge::Refused(r);
            }
        } else if weight < config.threshold_bits {
            return Merge::Refused(Refusal::WeakLink);
        }
        self.join(sa, sb)
    }

    /// Merges unconditionally (a steward link); refused only by a cannot-link.
    pub fn force_merge(&mut self, a: u32, b: u32) -> Merge {
        let (sa, sb) = (self.cluster_of[a as usize], self.cluster_of[b as usize]);
        if sa == sb {
            return Merge::Together;
        }
        if self.cannot_link(sa, sb) {
            return Merge::Refused(Refusal::CannotLink);
        }
        self.join(sa, sb)
    }

    /// Moves the smaller cluster into the larger; the older master id survives.
    fn join(&mut self, sa: u32, sb: u32) -> Merge {
        let (big, small) = if self.clusters[sa as usize].members.len() >= self.clusters[sb as usize].members.len() {
            (sa, sb)
        } else {
            (sb, sa)
        };
        let moved = std::mem::take(&mut self.clusters[small as usize].members);
        for &r in &moved {
            self.cluster_of[r as usize] = big;
        }
        self.clusters[big as usize].members.extend(moved);
        let (mb, ms) = (self.clusters[big as usize].master, self.clusters[small as usize].master);
        let (kept, absorbed) = if mb <= ms { (mb, ms) } else { (ms, mb) };
        self.clusters[big as usize].master = kept;
        self.slot_of.remove(&absorbed);
        self.slot_of.insert(kept, big);
        Merge::Merged { kept, absorbed }
    }

    /// Records a steward link and merges; refused when a steward unlink separates the two.
    pub fn link(&mut self, a: u32, b: u32) -> Merge {
        let m = self.force_merge(a, b);
        if !matches!(m, Merge::Refused(_)) {
            self.must.push((a, b));
        }
        m
    }

    /// Records a steward unlink. When both records share a cluster it must be split: the caller
    /// re-clusters the members with [`Self::recluster`]. Refused (false) when a steward link joins
    /// exactly these two records.
    pub fn unlink(&mut self, a: u32, b: u32) -> bool {
        if self.must.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b)) {
            return false;
        }
        self.cannot.entry(a).or_default().push(b);
        self.cannot.entry(b).or_default().push(a);
        true
    }

    /// Re-clusters the members of `id` from `edges` among them (scored by the caller): steward links
    /// first, then the guarded merges. The part holding the cluster's oldest member keeps `id`; the other
    /// parts get fresh ids, returned in order.
    pub fn recluster(
        &mut self,
        id: MasterId,
        edges: &mut [Edge],
        facts: &dyn RecordFacts,
        config: &ClusterConfig,
    ) -> Vec<MasterId> {
        let Some(&slot) = self.slot_of.get(&id) else {
            return Vec::new();
        };
        let mut members = std::mem::take(&mut self.clusters[slot as usize].members);
        members.sort_unstable();
        self.slot_of.remove(&id);
        // Each member becomes a singleton with a provisional id; the oldest member's part keeps `id`.
        for (i, &r) in members.iter().enumerate() {
            let s = if i == 0 { slot } else { self.clusters.len() as u32 };
            let master = if i == 0 { id } else { MasterId(u64::MAX - i as u64) };
            if i == 0 {
                self.clusters[slot as usize] = Cluster {
                    master,
                    members: vec![r],
                };
            } else {
                self.clusters.push(Cluster {
                    master,
                    members: vec![r],
                });
            }
            self.cluster_of[r as usize] = s;
            self.slot_of.insert(master, s);
        }
        let in_cluster = |r: u32| members.binary_search(&r).is_ok();
        let must: Vec<(u32, u32)> = self
            .must
            .iter()
            .copied()
            .filter(|&(a, b)| in_cluster(a) && in_cluster(b))
            .collect();
        for (a, b) in must {
            self.force_merge(a, b);
        }
        edges.sort_unstable_by(|x, y| y.weight.total_cmp(&x.weight).then(x.a.cmp(&y.a)).then(x.b.cmp(&y.b)));
        for e in edges.iter() {
            if f64::from(e.weight) >= config.threshold_bits && in_cluster(e.a) && in_cluster(e.b) {
                self.try_merge(e.a, e.b, f64::from(e.weight), facts, config);
            }
        }
        // Give the provisional parts fresh ids, in order of their oldest member.
        let mut parts: Vec<(u32, u32)> = Vec::new();
        for &r in &members {
            let s = self.cluster_of[r as usize];
            if self.clusters[s as usize].master != id && !parts.iter().any(|p| p.1 == s) {
                parts.push((r, s));
            }
        }
        let mut fresh = Vec::new();
        for (_, s) in parts {
            let old = self.clusters[s as usize].master;
            let new = MasterId(self.next_master);
            self.next_master += 1;
            self.slot_of.remove(&old);
            self.slot_of.insert(new, s);
            self.clusters[s as usize].master = new;
            fresh.push(new);
        }
        fresh
    }

    /// Takes record `r` out of its cluster into a new singleton (for an update that re-links it). The
    /// old cluster keeps its id; the record keeps it only when it was alone. Returns the remaining
    /// members' master id, if any remain.
    pub fn detach(&mut self, r: u32) -> Option<MasterId> {
        let slot = self.cluster_of[r as usize];
        let cluster = &mut self.clusters[slot as usize];
        if cluster.members.len() == 1 {
            return None;
        }
        cluster.members.retain(|&m| m != r);
        let old = cluster.master;
        let id = MasterId(self.next_master);
        self.next_master += 1;
        let s = self.clusters.len() as u32;
        self.clusters.push(Cluster {
            master: id,
            members: vec![r],
        });
        self.cluster_of[r as usize] = s;
        self.slot_of.insert(id, s);
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Facts {
        nid: Vec<&'static str>,
        sex: Vec<Sex>,
        birth: Vec<Option<Date>>,
        given: Vec<&'static str>,
    }

    impl RecordFacts for Facts {
        fn national_id(&self, r: u32) -> &str {
            self.nid[r as usize]
        }
        fn sex(&self, r: u32) -> Sex {
            self.sex[r as usize]
        }
        fn birth(&self, r: u32) -> Option<Date> {
            self.birth[r as usize]
        }
        fn has_given(&self, r: u32) -> bool {
            !self.given[r as usize].is_empty()
        }
        fn given_compatible(&self, a: u32, b: u32) -> bool {
            self.given[a as usize] == self.given[b as usize]
        }
        fn given_same(&self, a: u32, b: u32) -> bool {
            self.given[a as usize] == self.given[b as usize]
        }
    }

    fn facts(n: usize) -> Facts {
        Facts {
            nid: vec![""; n],
            sex: vec![Sex::Unknown; n],
            birth: vec![None; n],
            given: vec!["ANN"; n],
        }
    }

    fn e(a: u32, b: u32, weight: f32) -> Edge {
        Edge { a, b, weight }
    }

    fn groups(c: &Clusters) -> Vec<Vec<u32>> {
        let mut g: Vec<Vec<u32>> = c
            .iter()
            .map(|(_, m)| {
                let mut m = m.to_vec();
                m.sort_unstable();
                m
            })
            .collect();
        g.sort();
        g
    }

    #[test]
    fn components_above_threshold_with_stable_ids() {
        let f = facts(5);
        let config = ClusterConfig::default();
        let mut edges = vec![e(0, 1, 20.0), e(3, 4, 20.0), e(1, 2, 3.0)];
        let c = Clusters::bulk(5, &mut edges, &[], &[], &f, &config);
        assert_eq!(groups(&c), vec![vec![0, 1], vec![2], vec![3, 4]]);
        // Ids follow each cluster's oldest record.
        assert_eq!(c.master_of(0), Some(MasterId(1)));
        assert_eq!(c.master_of(2), Some(MasterId(2)));
        assert_eq!(c.master_of(4), Some(MasterId(3)));
        assert_eq!(c.labels(), vec![1, 1, 2, 3, 3]);
    }

    #[test]
    fn guard_refuses_conflicts() {
        let mut f = facts(6);
        f.nid = vec!["111", "", "222", "", "", ""];
        f.given = vec!["ANN", "ANN", "ANN", "ANN", "BEA", "ANN"];
        f.sex = vec![
            Sex::Female,
            Sex::Female,
            Sex::Female,
            Sex::Female,
            Sex::Female,
            Sex::Male,
        ];
        let d = Date::new(1980, 1, 1);
        f.birth = vec![d, d, d, d, d, Date::new(1990, 1, 1)];
        let config = ClusterConfig {
            threshold_bits: 6.0,
            ..ClusterConfig::default()
        };
        let mut c = Clusters::bulk(6, &mut [], &[], &[], &f, &config);
        assert!(matches!(c.try_merge(0, 1, 30.0, &f, &config), Merge::Merged { .. }));
        // 1 is now with 0 (id 111); 2 has id 222.
        assert_eq!(
            c.try_merge(1, 2, 30.0, &f, &config),
            Merge::Refused(Refusal::NationalIdConflict)
        );
        assert_eq!(
            c.try_merge(3, 4, 30.0, &f, &config),
            Merge::Refused(Refusal::GivenNameConflict)
        );
        assert_eq!(
            c.try_merge(3, 5, 30.0, &f, &config),
            Merge::Refused(Refusal::SexConflict)
        );
        // Two records against a pair: need threshold + 0.5 * log2(2) = 6.5 bits.
        assert_eq!(c.try_merge(3, 0, 6.2, &f, &config), Merge::Refused(Refusal::WeakLink));
        assert!(matches!(c.try_merge(3, 0, 6.6, &f, &config), Merge::Merged { .. }));
        // Without the guard only the threshold and steward constraints apply.
        let loose = ClusterConfig { guard: false, ..config };
        assert!(matches!(c.try_merge(3, 4, 30.0, &f, &loose), Merge::Merged { .. }));
    }

    #[test]
    fn steward_constraints_win_over_automatic_links() {
        let f = facts(4);
        let config = ClusterConfig::default();
        let mut edges = vec![e(0, 1, 40.0), e(1, 2, 40.0)];
        let c = Clusters::bulk(4, &mut edges, &[(2, 3)], &[(0, 2)], &f, &config);
        // 0-1 merge; 1-2 would put 0 with 2 (unlinked); 2-3 are linked by hand though they share no edge.
        assert_eq!(groups(&c), vec![vec![0, 1], vec![2, 3]]);
        let mut c = c;
        assert_eq!(c.link(0, 2), Merge::Refused(Refusal::CannotLink));
        assert!(
            !c.unlink(3, 2),
            "a steward link cannot be unlinked without removing it first"
        );
    }

    #[test]
    fn merges_keep_the_older_id_and_splits_keep_the_oldest_part() {
        let f = facts(4);
        let config = ClusterConfig::default();
        let mut c = Clusters::new();
        for _ in 0..4 {
            c.add_record();
        }
        assert_eq!(
            c.try_merge(2, 3, 30.0, &f, &config),
            Merge::Merged {
                kept: MasterId(3),
                absorbed: MasterId(4)
            }
        );
        assert_eq!(
            c.try_merge(3, 0, 30.0, &f, &config),
            Merge::Merged {
                kept: MasterId(1),
                absorbed: MasterId(3)
            }
        );
        assert_eq!(c.master_of(2), Some(MasterId(1)));
        // A steward separates 0 and 2; re-clustering keeps 0's part as M1 and gives {2, 3} a new id.
        assert!(c.unlink(0, 2));
        let mut edges = vec![e(0, 2, 30.0), e(2, 3, 30.0), e(0, 3, 10.0)];
        let fresh = c.recluster(MasterId(1), &mut edges, &f, &config);
        assert_eq!(fresh, vec![MasterId(5)]);
        assert_eq!(c.master_of(0), Some(MasterId(1)));
        assert_eq!(c.master_of(2), Some(MasterId(5)));
        assert_eq!(
            c.master_of(3),
            Some(MasterId(5)),
            "3 links to 2 first; then 0-3 would join 0 with 2"
        );
        assert_eq!(c.len(), 3);
        assert_eq!(c.detach(3), Some(MasterId(5)));
        assert_eq!(c.master_of(3), Some(MasterId(6)));
    }
}
