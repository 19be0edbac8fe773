//! [`MatchContext`]: what a node needs to match one record against held ones without holding
//! them — the comparison and blocking specs, the trained model, the clustering settings, and the
//! address IDF and term-frequency tables as they were when the model was trained — in one value
//! that serialises to JSON, so the cluster can replicate it and every node score alike.
//!
//! It also holds the decision of where a record goes ([`MatchContext::decide`]): the records it
//! matches, grouped by the identities they belong to, are clustered around it with the same
//! guard as bulk linking ([`crate::cluster`]): steward unlinks, the size-weighted link threshold,
//! and the national-id, sex and given-name consistency rules. The guard sees the candidates the
//! blocking keys found, not every member of their identities.
//!
//! It is not the replicated state, the index or the service: `plexus-core` holds records and
//! identities, and the node's EMPI service reads them and calls this.

use serde::{Deserialize, Serialize};

use crate::blocking::BlockingSpec;
use crate::cluster::{ClusterConfig, Clusters, Merge};
use crate::compare::{ComparisonSpec, Idf};
use crate::linker::{Facts, Linker, LinkerConfig};
use crate::model::{Explanation, Model, ModelError, TermFrequencies, TfValues};
use crate::normalize::{normalize, NormalizedRecord};
use crate::schema::PersonRecord;

/// Candidates one decision looks at, at most (the best by weight).
pub const DECIDE_CANDIDATES_MAX: usize = 256;

/// Why a context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The bytes are not a context.
    #[error("not a match context: {0}")]
    Decode(String),
    /// The model does not fit the comparison spec.
    #[error("match context: {0}")]
    Model(#[from] ModelError),
}

/// The serialisable matching context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchContext {
    /// Field comparisons.
    pub spec: ComparisonSpec,
    /// Blocking rules.
    pub blocking: BlockingSpec,
    /// Threshold and guard.
    pub cluster: ClusterConfig,
    /// Whether exact matches are weighted by term frequency.
    pub tf_adjust: bool,
    /// m, u and the prior.
    pub model: Model,
    /// Address-token document frequencies: `(token hash, count)` ascending, and the record count.
    idf: (Vec<(u64, u32)>, u32),
    /// Per adjusted field, value frequencies `(value hash, count)` ascending; and the record count.
    tf: (Vec<Vec<(u64, u32)>>, u64),
    /// Records the tables were built from.
    pub trained_on: u64,
    /// The tables built from `idf` and `tf`, once, on first use.
    #[serde(skip)]
    built: Built,
}

/// The lookup tables of a context, built once from its serialised parts: building them per
/// record (a hash map of every address token) cost more than the matching itself.
#[derive(Debug, Clone, Default)]
struct Built(std::sync::OnceLock<std::sync::Arc<(Idf, TermFrequencies)>>);

impl PartialEq for Built {
    /// A cache of the context's own parts: equal contexts are equal whatever it holds.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One candidate of a decision: a held record the blocking keys found, scored.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its key (`SOURCE:ID`).
    pub key: String,
    /// Its normalised form (shared: a record is a candidate of many).
    pub record: std::sync::Arc<NormalizedRecord>,
    /// Its identity.
    pub master: u64,
    /// When its identity was created (the older survives a merge).
    pub master_created_millis: u64,
    /// Its match weight with the record being placed.
    pub weight: f64,
    /// Whether a steward unlinked it from the record being placed.
    pub unlinked: bool,
}

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The identity it joins; `None`: a new one.
    pub join: Option<u64>,
    /// Other identities it bridges that merge into `join`.
    pub merge: Vec<u64>,
}

impl MatchContext {
    /// The default specs with the model's neutral starting parameters and empty tables: what a
    /// cluster matches with before a bulk ingest has trained a model.
    pub fn untrained() -> Result<MatchContext, ContextError> {
        let config = LinkerConfig::default();
        let model = Model::new(config.spec.clone())?;
        Ok(MatchContext {
            spec: config.spec,
            blocking: config.blocking,
            cluster: config.cluster,
            tf_adjust: config.tf_adjust,
            model,
            idf: (Vec::new(), 0),
            tf: (Vec::new(), 0),
            trained_on: 0,
            built: Built::default(),
        })
    }

    /// The context of a linker that has linked a batch (and so trained its model and tables).
    pub fn from_linker(linker: &Linker) -> MatchContext {
        let config = linker.config();
        let (idf, tf) = linker.tables();
        MatchContext {
            spec: config.spec.clone(),
            blocking: config.blocking.clone(),
            cluster: config.cluster,
            tf_adjust: config.tf_adjust,
            model: linker.model().clone(),
            idf: idf.to_parts(),
            tf: tf.to_parts(),
            trained_on: linker.len() as u64,
            built: Built::default(),
        }
    }

    /// The context as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Invariant: every field is plain data that serde_json writes without error.
        serde_json::to_vec(self).expect("a match context serialises to JSON")
    }

    /// A context from `to_json` bytes, checked.
    pub fn from_json(bytes: &[u8]) -> Result<MatchContext, ContextError> {
        let ctx: MatchContext = serde_json::from_slice(bytes).map_err(|e| ContextError::Decode(e.to_string()))?;
        if ctx.model.spec() != &ctx.spec {
            return Err(ContextError::Decode("model spec differs from the context's".into()));
        }
        Ok(ctx)
    }

    fn tables(&self) -> &(Idf, TermFrequencies) {
        self.built.0.get_or_init(|| {
            std::sync::Arc::new((
                Idf::from_parts(&self.idf),
                TermFrequencies::from_parts(&self.spec, &self.tf),
            ))
        })
    }

    fn idf(&self) -> &Idf {
        &self.tables().0
    }

    fn tf_table(&self) -> &TermFrequencies {
        &self.tables().1
    }

    /// Normalises a record, with the address weights of the context's IDF table.
    pub fn normalize(&self, r: &PersonRecord) -> NormalizedRecord {
        let mut n = normalize(r);
        if self.idf.1 > 0 {
            let idf = self.idf();
            n.apply_idf(|t| idf.weight(t));
        }
        n
    }

    /// Normalises many records with one IDF table.
    pub fn normalize_all<'a>(&self, rs: impl IntoIterator<Item = &'a PersonRecord>) -> Vec<NormalizedRecord> {
        let idf = (self.idf.1 > 0).then(|| self.idf());
        rs.into_iter()
            .map(|r| {
                let mut n = normalize(r);
                if let Some(idf) = &idf {
                    n.apply_idf(|t| idf.weight(t));
                }
                n
            })
            .collect()
    }

    /// The record's blocking keys (`RULE:VALUE`).
    pub fn blocks(&self, n: &NormalizedRecord) -> Vec<String> {
        self.blocking.keys(n)
    }

    fn tf_values(&self, tf: &TermFrequencies, n: &NormalizedRecord) -> TfValues {
        if self.tf_adjust && self.tf.1 > 0 {
            tf.values(n)
        } else {
            TfValues::NONE
        }
    }

    /// The match weight (bits) of `a` against each of `bs`.
    pub fn weights(&self, a: &NormalizedRecord, bs: &[&NormalizedRecord]) -> Vec<f64> {
        let tf = self.tf_table();
        let values = self.tf_values(tf, a);
        bs.iter()
            .map(|b| self.model.score(&self.spec.compare(a, b), &values))
            .collect()
    }

    /// Every field's level and weight for the pair, and the total.
    pub fn explain(&self, a: &NormalizedRecord, b: &NormalizedRecord) -> Explanation {
        let tf = self.tf_table();
        self.model
            .explain(&self.spec.compare(a, b), &self.tf_values(tf, a), None)
    }

    /// Links at or above this weight (bits) are merge candidates.
    pub fn threshold(&self) -> f64 {
        self.cluster.threshold_bits
    }

    /// Where `record` goes, given its scored candidates: the candidates' identities are the
    /// starting clusters (with the steward unlinks between the record and them), and the record
    /// joins them strongest link first, each join checked by the clustering guard. The record
    /// joins the oldest identity it reaches; the others it reached merge into that one.
    pub fn decide(&self, record: &NormalizedRecord, candidates: &[Candidate]) -> Decision {
        self.decide_apart(record, candidates, &[])
    }

    /// `decide`, with identities that must stay apart: each pair names two candidates (indexes
    /// into `candidates`) whose identities a steward's unlink between their members separates.
    pub fn decide_apart(
        &self,
        record: &NormalizedRecord,
        candidates: &[Candidate],
        apart: &[(usize, usize)],
    ) -> Decision {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&candidates[a], &candidates[b]);
            b.weight.total_cmp(&a.weight).then(a.key.cmp(&b.key))
        });
        order.truncate(DECIDE_CANDIDATES_MAX);
        let cands: Vec<&Candidate> = order.iter().map(|&i| &candidates[i]).collect();
        let mut clusters = Clusters::new();
        let records: Vec<&NormalizedRecord> = std::iter::once(record)
            .chain(cands.iter().map(|c| &*c.record))
            .collect();
        let facts = Facts { records: &records };
        for _ in 0..facts.records.len() {
            clusters.add_record();
        }
        // Candidates of one identity start together; the record starts alone.
        for (i, c) in cands.iter().enumerate() {
            if let Some(j) = cands[..i].iter().position(|d| d.master == c.master) {
                clusters.force_merge(j as u32 + 1, i as u32 + 1);
            }
        }
        for (i, c) in cands.iter().enumerate() {
            if c.unlinked {
                clusters.unlink(0, i as u32 + 1);
            }
        }
        let slot = |c: usize| order.iter().position(|&o| o == c).map(|p| p as u32 + 1);
        for &(x, y) in apart {
            // A candidate cut by the cap takes no part, and neither does its constraint.
            if let (Some(a), Some(b)) = (slot(x), slot(y)) {
                clusters.unlink(a, b);
            }
        }
        for (i, c) in cands.iter().enumerate() {
            if c.weight < self.cluster.threshold_bits {
                break;
            }
            // A refused join leaves the record where it is; the next candidate may still take it.
            let _: Merge = clusters.try_merge(0, i as u32 + 1, c.weight, &facts, &self.cluster);
        }
        let own = clusters.master_of(0);
        let mut masters: Vec<(u64, u64)> = cands
            .iter()
            .enumerate()
            .filter(|(i, _)| clusters.master_of(*i as u32 + 1) == own)
            .map(|(_, c)| (c.master_created_millis, c.master))
            .collect();
        masters.sort_unstable();
        masters.dedup_by_key(|m| m.1);
        let Some(&(_, join)) = masters.first() else {
            return Decision {
                join: None,
                merge: Vec::new(),
            };
        };
        Decision {
            join: Some(join),
            merge: masters.iter().skip(1).map(|(_, m)| *m).filter(|m| *m != join).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::RecordExt;

    fn person(id: &str, given: &str, family: &str, dob: &str, phone: &str) -> PersonRecord {
        let mut r = PersonRecord::new("test", id);
        r.given_name = Some(given.into());
        r.family_name = Some(family.into());
        r.birth_date = Some(dob.into());
        r.phone = Some(phone.into());
        r
    }

    fn candidate(ctx: &MatchContext, r: &NormalizedRecord, c: &PersonRecord, master: u64, created: u64) -> Candidate {
        let n = ctx.normalize(c);
        let weight = ctx.weights(r, &[&n])[0];
        Candidate {
            key: c.key_string(),
            record: std::sync::Arc::new(n),
            master,
            master_created_millis: created,
            weight,
            unlinked: false,
        }
    }

    #[test]
    fn a_context_round_trips_through_json() {
        let ctx = MatchContext::untrained().unwrap();
        let back = MatchContext::from_json(&ctx.to_json()).unwrap();
        assert_eq!(back, ctx);
        assert!(MatchContext::from_json(b"{}").is_err());
    }

    #[test]
    fn a_record_joins_the_older_identity_it_matches_and_merges_the_other() {
        let ctx = MatchContext::untrained().unwrap();
        let r = ctx.normalize(&person("new", "JOHN", "SMITH", "1980-02-03", "5551234567"));
        let same_a = person("a", "JOHN", "SMITH", "1980-02-03", "5551234567");
        let same_b = person("b", "JON", "SMITH", "1980-02-03", "5551234567");
        let other = person("c", "MARY", "JONES", "1975-07-08", "5559999999");
        let cands = vec![
            candidate(&ctx, &r, &same_a, 20, 2_000),
            candidate(&ctx, &r, &same_b, 10, 1_000),
            candidate(&ctx, &r, &other, 30, 500),
        ];
        assert!(cands[0].weight >= ctx.threshold(), "{}", cands[0].weight);
        assert!(cands[2].weight < ctx.threshold(), "{}", cands[2].weight);
        assert_eq!(
            ctx.decide(&r, &cands),
            Decision {
                join: Some(10),
                merge: vec![20]
            }
        );
        // Nothing matches: a new identity.
        assert_eq!(
            ctx.decide(&r, &cands[2..]),
            Decision {
                join: None,
                merge: vec![]
            }
        );
        // Identities a steward's unlink between their members keeps apart: the record joins
        // its best match's identity and the other is not merged.
        assert!(cands[0].weight > cands[1].weight);
        assert_eq!(
            ctx.decide_apart(&r, &cands, &[(0, 1)]),
            Decision {
                join: Some(20),
                merge: vec![]
            }
        );
        // A steward unlink keeps the record away from that candidate's identity.
        let mut unlinked = cands.clone();
        unlinked[1].unlinked = true;
        unlinked[0].unlinked = true;
        assert_eq!(ctx.decide(&r, &unlinked).join, None);
    }

    #[test]
    fn a_twin_with_another_given_name_is_kept_apart() {
        let ctx = MatchContext::untrained().unwrap();
        let r = ctx.normalize(&person("new", "ALICE", "SMITH", "1990-05-06", "5551112222"));
        let twin = person("t", "BEATRICE", "SMITH", "1990-05-06", "5551112222");
        let c = candidate(&ctx, &r, &twin, 7, 1);
        let mut strong = c.clone();
        strong.weight = ctx.threshold() + 20.0;
        assert_eq!(ctx.decide(&r, &[strong]).join, None, "the given-name guard refuses");
    }
}
