//! The one-record path of [`Linker`]: look-ups, upserts, explanations and steward actions.

use super::{
    facts_of, LinkError, Linker, MatchCandidate, PairExplanation, Upserted, LINKER_RECORDS_MAX, MATCH_CANDIDATES_MAX,
    TOP_K_MAX,
};
use crate::cluster::{Edge, MasterId, Merge};
use crate::compare::{ComparisonVector, FIELDS_MAX};
use crate::graph::ATTRIBUTES_PER_RECORD_MAX;
use crate::model::TfValues;
use crate::normalize::NormalizedRecord;
use crate::schema::{PersonRecord, RecordExt, RecordKey};

impl Linker {
    /// Held records sharing a blocking key with `n` (by current keys; oversize blocks skipped), except
    /// `exclude`, sorted, at most `MATCH_CANDIDATES_MAX`.
    fn candidates(&self, n: &NormalizedRecord, exclude: Option<u32>) -> Vec<u32> {
        let keys = self.config.blocking.key_hashes(n);
        let mut out = Vec::new();
        for (rule, &h) in keys.iter().enumerate().take(self.block_keys.rules()) {
            if h == 0 {
                continue;
            }
            self.index.for_each(h, self.config.blocking.block_records_max, |r| {
                // Entries of records whose keys changed since indexing are stale: check the current key.
                if Some(r) != exclude && self.block_keys.get(r).get(rule) == Some(&h) {
                    out.push(r);
                }
            });
        }
        out.sort_unstable();
        out.dedup();
        out.truncate(MATCH_CANDIDATES_MAX);
        out
    }

    /// Scores `n` (not held, or held at `exclude`) against its candidates, best first.
    fn score_against(
        &self,
        n: &NormalizedRecord,
        exclude: Option<u32>,
    ) -> Vec<(u32, f64, ComparisonVector, Option<f32>)> {
        let cands = self.candidates(n, exclude);
        let mut query = vec![0f32; self.graph.as_ref().map(|g| g.dim()).unwrap_or(0)];
        let mut attrs = [u32::MAX; ATTRIBUTES_PER_RECORD_MAX];
        let embedded = self.graph.as_ref().is_some_and(|g| g.embed(n, &mut query, &mut attrs));
        let tf = if self.config.tf_adjust {
            self.tf.values(n)
        } else {
            TfValues::NONE
        };
        let mut scored: Vec<(u32, f64, ComparisonVector, Option<f32>)> = cands
            .into_iter()
            .map(|c| {
                let mut v = self.config.spec.compare(n, &self.records[c as usize]);
                let sim = if embedded {
                    self.graph.as_ref().and_then(|g| g.similarity_to(&query, &attrs, c))
                } else {
                    None
                };
                self.config.spec.set_graph(&mut v, sim);
                (c, self.model.score(&v, &tf), v, sim)
            })
            .collect();
        scored.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        scored
    }

    /// The `k` best-scoring held records for `record` (at most `TOP_K_MAX`), with explanations. A held
    /// record with the same key is left out.
    pub fn match_record(&self, record: &PersonRecord, k: usize) -> Vec<MatchCandidate> {
        let n = self.normalize(record);
        let exclude = record.key().ok().and_then(|key| self.by_key.get(&key).copied());
        let tf = if self.config.tf_adjust {
            self.tf.values(&n)
        } else {
            TfValues::NONE
        };
        self.score_against(&n, exclude)
            .into_iter()
            .take(k.min(TOP_K_MAX))
            .filter_map(|(c, w, v, sim)| {
                Some(MatchCandidate {
                    key: self.keys[c as usize].clone(),
                    master: self.clusters.master_of(c)?,
                    weight: w,
                    probability: crate::model::probability(w),
                    explanation: self.model.explain(&v, &tf, sim),
                })
            })
            .collect()
    }

    /// Links one record (new, or an update of a held key) and returns its master identity.
    pub fn upsert(&mut self, record: PersonRecord) -> Result<Upserted, LinkError> {
        let key = record.key()?;
        record.validate().map_err(|issues| LinkError::Invalid {
            key: key.to_string(),
            issues,
        })?;
        let n = self.normalize(&record);
        let block = self.config.blocking.key_hashes(&n);
        let mut embedding = vec![0f32; self.graph.as_ref().map(|g| g.dim()).unwrap_or(0)];
        let mut attrs = [u32::MAX; ATTRIBUTES_PER_RECORD_MAX];
        let embedded = self
            .graph
            .as_ref()
            .is_some_and(|g| g.embed(&n, &mut embedding, &mut attrs));
        let fields = self.config.spec.fields.len();
        let tf_row = if self.config.tf_adjust {
            self.tf.values(&n).0
        } else {
            [0.0; FIELDS_MAX]
        };
        let (r, updated) = match self.by_key.get(&key).copied() {
            Some(r) => {
                // An update: re-link from scratch; what remains of the old identity is re-clustered.
                if let Some(old) = self.clusters.detach(r) {
                    self.records[r as usize] = n.clone();
                    self.recluster(old);
                }
                self.records[r as usize] = n;
                self.block_keys.set(r, &block);
                self.index.insert(r, &block);
                self.tf_values[r as usize * fields..(r as usize + 1) * fields].copy_from_slice(&tf_row[..fields]);
                (r, true)
            }
            None => {
                if self.records.len() >= LINKER_RECORDS_MAX {
                    return Err(LinkError::TooManyRecords(self.records.len() + 1));
                }
                let (r, _) = self.clusters.add_record();
                self.idf.add(&n);
                self.tf.add(&n);
                self.records.push(n);
                self.keys.push(key.clone());
                self.by_key.insert(key, r);
                self.block_keys.push(&block);
                self.index.insert(r, &block);
                self.tf_values.extend_from_slice(&tf_row[..fields]);
                if let Some(g) = self.graph.as_mut() {
                    g.push(embedded.then_some(embedding.as_slice()), attrs);
                }
                (r, false)
            }
        };
        let scored = self.score_against(&self.records[r as usize].clone(), Some(r));
        let mut merged = Vec::new();
        for (c, w, _, _) in scored {
            if w < self.config.cluster.threshold_bits {
                break;
            }
            let facts = facts_of(&self.records);
            let m = self.clusters.try_merge(r, c, w, &facts, &self.config.cluster);
            if let Merge::Merged { absorbed, .. } = m {
                merged.push(absorbed);
            }
        }
        let master = self
            .clusters
            .master_of(r)
            .ok_or(LinkError::UnknownRecord(self.keys[r as usize].clone()))?;
        let created = merged.is_empty() && self.clusters.members(master).len() == 1;
        Ok(Upserted {
            master,
            updated,
            created,
            merged,
        })
    }

    /// Re-clusters the members of `id` from their pairwise scores (after an update or a steward unlink).
    fn recluster(&mut self, id: MasterId) -> Vec<MasterId> {
        let members = self.clusters.members(id).to_vec();
        let mut edges = Vec::new();
        for (i, &a) in members.iter().enumerate() {
            for &b in &members[i + 1..] {
                let (v, _) = self.compare_held(a, b);
                let w = self.model.score(&v, &self.tf_of(a));
                edges.push(Edge { a, b, weight: w as f32 });
            }
        }
        let facts = facts_of(&self.records);
        self.clusters.recluster(id, &mut edges, &facts, &self.config.cluster)
    }

    fn index_of(&self, key: &RecordKey) -> Result<u32, LinkError> {
        self.by_key
            .get(key)
            .copied()
            .ok_or_else(|| LinkError::UnknownRecord(key.clone()))
    }

    /// Explains the score of two held records and why they are or are not one identity.
    pub fn explain(&self, a: &RecordKey, b: &RecordKey) -> Result<PairExplanation, LinkError> {
        let (x, y) = (self.index_of(a)?, self.index_of(b)?);
        let (v, sim) = self.compare_held(x, y);
        let tf = self.tf_of(x);
        let explanation = self.model.explain(&v, &tf, sim);
        let masters = (
            self.clusters
                .master_of(x)
                .ok_or_else(|| LinkError::UnknownRecord(a.clone()))?,
            self.clusters
                .master_of(y)
                .ok_or_else(|| LinkError::UnknownRecord(b.clone()))?,
        );
        let refusal = if masters.0 != masters.1 && explanation.total >= self.config.cluster.threshold_bits {
            let mut probe = self.clusters.clone();
            match probe.try_merge(x, y, explanation.total, &self.facts(), &self.config.cluster) {
                Merge::Refused(r) => Some(r),
                _ => None,
            }
        } else {
            None
        };
        Ok(PairExplanation {
            explanation,
            masters,
            refusal,
            threshold_bits: self.config.cluster.threshold_bits,
        })
    }

    /// A steward link: the two records' identities merge, and no automatic step separates them.
    pub fn link(&mut self, a: &RecordKey, b: &RecordKey) -> Result<MasterId, LinkError> {
        let (x, y) = (self.index_of(a)?, self.index_of(b)?);
        match self.clusters.link(x, y) {
            Merge::Refused(_) => Err(LinkError::Constraint(format!("{a} and {b} were unlinked by a steward"))),
            _ => self
                .clusters
                .master_of(x)
                .ok_or_else(|| LinkError::UnknownRecord(a.clone())),
        }
    }

    /// A steward unlink: the two records never share an identity again through automatic linking; an
    /// identity holding both is split. Returns the identities created by the split.
    pub fn unlink(&mut self, a: &RecordKey, b: &RecordKey) -> Result<Vec<MasterId>, LinkError> {
        let (x, y) = (self.index_of(a)?, self.index_of(b)?);
        if !self.clusters.unlink(x, y) {
            return Err(LinkError::Constraint(format!("{a} and {b} were linked by a steward")));
        }
        match (self.clusters.master_of(x), self.clusters.master_of(y)) {
            (Some(m), Some(n)) if m == n => Ok(self.recluster(m)),
            _ => Ok(Vec::new()),
        }
    }
}
