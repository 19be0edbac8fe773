//! [`Linker`]: the whole pipeline in memory. In bulk ([`Linker::link_batch`]): normalise → blocking →
//! candidate pairs → compare → u from random pairs → m and λ by EM → score (+TF, +graph) → cluster. One
//! record at a time: [`Linker::match_record`] (top-k candidates with scores and explanations) and
//! [`Linker::upsert`] (links a record and returns its master id). Stewards: [`Linker::link`] and
//! [`Linker::unlink`]. Every step is also callable alone ([`Linker::normalize`],
//! [`Linker::blocking_keys`], [`Linker::compare`], [`Model::score`]) because the replicated version
//! reuses them piece by piece.
//!
//! A batch is put in canonical order (sorted by record key, the last copy of a repeated key winning)
//! before anything else, so the result — clusters and master ids included — depends only on the set of
//! records, not on their order in the input. Parallel steps split work into contiguous chunks and join
//! in order, so results do not depend on the thread count either.
//!
//! One record at a time uses what the last batch estimated: the model (m, u, λ), the IDF and
//! term-frequency tables (new records are counted in, held records' weights are not recomputed) and the
//! graph embeddings (a new record gets its own from the held attributes; held records' embeddings wait
//! for the next batch). An update re-links the record from scratch and re-clusters what remains of its
//! old identity. This is the reference implementation, not the replicated one: it knows nothing of
//! shards, logs or events, and reads no clock.

use std::collections::HashMap;

use plexus_kernels::Kernels;
use thiserror::Error;

use crate::blocking::{BlockIndex, BlockingError, BlockingSpec, KeyTable};
use crate::cluster::{ClusterConfig, Clusters, MasterId, RecordFacts, Refusal};
use crate::compare::{ComparisonSpec, ComparisonVector, Idf, SpecError};
use crate::date::Date;
use crate::graph::{GraphConfig, GraphError, RecordGraph};
use crate::model::{Explanation, Model, ModelError, TermFrequencies, TfValues, TrainingReport, EM_ITERATIONS_MAX};
use crate::normalize::{normalize, NormalizedRecord, Sex};
use crate::schema::{FieldIssue, KeyError, PersonRecord, RecordKey};

/// Most records a linker holds (indexes are `u32`).
pub const LINKER_RECORDS_MAX: usize = 100_000_000;

/// Default number of random pairs compared to estimate u.
pub const U_SAMPLE_PAIRS: usize = 1_000_000;

/// Most candidates one record is compared with in a look-up; the rest of an unusually large candidate
/// set is dropped (blocks are already capped, this bounds the union).
pub const MATCH_CANDIDATES_MAX: usize = 4096;

/// Most candidates returned by one look-up.
pub const TOP_K_MAX: usize = 100;

/// Why a linker operation failed.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The record is invalid.
    #[error("invalid record {key}: {}", .issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Its key as given.
        key: String,
        /// What is wrong.
        issues: Vec<FieldIssue>,
    },
    /// A record key could not be parsed.
    #[error("bad record key: {0}")]
    Key(#[from] KeyError),
    /// No record has this key.
    #[error("unknown record {0}")]
    UnknownRecord(RecordKey),
    /// The comparison spec is invalid.
    #[error("comparison spec: {0}")]
    Spec(#[from] SpecError),
    /// The blocking spec is invalid.
    #[error("blocking spec: {0}")]
    Blocking(#[from] BlockingError),
    /// Model training or loading failed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The graph signal could not be computed.
    #[error("graph: {0}")]
    Graph(#[from] GraphError),
    /// The linker would hold more than `LINKER_RECORDS_MAX` records.
    #[error("{0} records, more than {LINKER_RECORDS_MAX}")]
    TooManyRecords(usize),
    /// A steward action contradicts an earlier one.
    #[error("steward constraint: {0}")]
    Constraint(String),
    /// The configuration names something that does not exist.
    #[error("configuration: {0}")]
    Config(String),
}

/// Settings of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkerConfig {
    /// Field comparisons.
    pub spec: ComparisonSpec,
    /// Blocking rules.
    pub blocking: BlockingSpec,
    /// Clustering threshold and guard.
    pub cluster: ClusterConfig,
    /// The graph signal; `None` leaves the graph field null (weight 0) everywhere.
    pub graph: Option<GraphConfig>,
    /// Whether exact matches are weighted by term frequency.
    pub tf_adjust: bool,
    /// Random pairs compared to estimate u.
    pub u_sample_pairs: usize,
    /// Seed of the random pair sample.
    pub seed: u64,
    /// EM iteration cap.
    pub em_iterations_max: usize,
    /// Training rules: per EM session, the spec fields (by name) that must agree exactly; see
    /// [`Model::train`].
    pub training: Vec<Vec<String>>,
    /// Keep the batch's candidate pairs (for measuring pair completeness).
    pub keep_candidate_pairs: bool,
}

impl Default for LinkerConfig {
    fn default() -> Self {
        LinkerConfig {
            spec: ComparisonSpec::person_default(),
            blocking: BlockingSpec::person_default(),
            cluster: ClusterConfig::default(),
            graph: Some(GraphConfig::default()),
            tf_adjust: true,
            u_sample_pairs: U_SAMPLE_PAIRS,
            seed: 1,
            em_iterations_max: EM_ITERATIONS_MAX,
            training: vec![
                vec!["given_name".into(), "family_name".into()],
                vec!["birth_date".into()],
            ],
            keep_candidate_pairs: false,
        }
    }
}

/// The steps of a bulk link, reported to an observer as each starts (the caller may time them; the
/// linker itself reads no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Validation, de-duplication and canonical ordering.
    Prepare,
    /// Normalisation.
    Normalize,
    /// IDF and term-frequency tables.
    Frequencies,
    /// Blocking keys and candidate pairs.
    Blocking,
    /// Graph embeddings.
    Graph,
    /// Comparison of candidate pairs.
    Compare,
    /// u from random pairs.
    EstimateU,
    /// m and λ by EM.
    Em,
    /// Scoring of candidate pairs.
    Score,
    /// Clustering.
    Cluster,
    /// The look-up index.
    Index,
    /// Finished.
    Done,
}

/// What a bulk link did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReport {
    /// Records linked.
    pub records: usize,
    /// Records refused (invalid key or fields), with their input position and reason.
    pub rejected: Vec<(usize, String)>,
    /// Earlier copies of a repeated key, replaced by the last.
    pub replaced: usize,
    /// Per held record (canonical order), its position in the input.
    pub input_index: Vec<u32>,
    /// Candidate pairs compared.
    pub candidate_pairs: u64,
    /// Per blocking rule id, the pairs it found first.
    pub pairs_per_rule: Vec<(String, u64)>,
    /// Blocks skipped for size and the pairs they held.
    pub oversize_blocks: u64,
    /// Pairs in skipped blocks.
    pub oversize_pairs: u64,
    /// Blocks skipped because the batch reached `CANDIDATE_PAIRS_MAX`.
    pub capped_blocks: u64,
    /// The EM sessions and the λ run.
    pub training: TrainingReport,
    /// Candidate pairs scoring at or above the threshold.
    pub links: u64,
    /// Master identities.
    pub masters: usize,
    /// Graph attribute values dropped as hubs.
    pub graph_hub_attributes: usize,
    /// The kernel backend used for the graph.
    pub kernel_backend: &'static str,
}

/// One candidate of a look-up.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchCandidate {
    /// The held record.
    pub key: RecordKey,
    /// Its master identity.
    pub master: MasterId,
    /// Total match weight in bits.
    pub weight: f64,
    /// Match probability.
    pub probability: f64,
    /// Every term of the score.
    pub explanation: Explanation,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    /// The record's master identity after the upsert.
    pub master: MasterId,
    /// Whether the key was already held (an update).
    pub updated: bool,
    /// Whether the record founded a new identity (linked to nothing).
    pub created: bool,
    /// Identities merged into `master` by this record.
    pub merged: Vec<MasterId>,
}

/// A pair's explanation and the linking decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PairExplanation {
    /// The score's terms.
    pub explanation: Explanation,
    /// Master identity of each record.
    pub masters: (MasterId, MasterId),
    /// Why the two are not in one identity despite a score above the threshold, if a guard or steward
    /// rule says so now.
    pub refusal: Option<Refusal>,
    /// The clustering threshold, for the reader.
    pub threshold_bits: f64,
}

/// The in-memory linker.
pub struct Linker {
    config: LinkerConfig,
    kernels: Kernels,
    model: Model,
    records: Vec<NormalizedRecord>,
    keys: Vec<RecordKey>,
    by_key: HashMap<RecordKey, u32>,
    block_keys: KeyTable,
    index: BlockIndex,
    idf: Idf,
    tf: TermFrequencies,
    tf_values: Vec<f32>,
    graph: Option<RecordGraph>,
    clusters: Clusters,
    candidate_pairs: Vec<u64>,
}

/// Given names at least this close (Jaro-Winkler), or one edit apart, are compatible for the clustering
/// guard even when neither equal nor nickname-equal: typos pass (MARTHA, MARHTA: 0.96; JOCN, JOHN: one
/// edit), most sibling names do not (MARY, MARIA: 0.85, two edits). Phonetic agreement is deliberately
/// not enough (JOHN and JOAN share a code; they are one edit apart too, which is why a sex conflict
/// needs the same name, not a compatible one).
pub const GIVEN_COMPATIBLE_JW: f64 = 0.88;

/// Record facts for the clustering guard, read from normalised records: the linker's own
/// (`&[NormalizedRecord]`) or a decision's record and candidates (`&[&NormalizedRecord]`).
pub(crate) struct Facts<'a, R> {
    pub(crate) records: &'a [R],
}

impl<R: std::borrow::Borrow<NormalizedRecord>> Facts<'_, R> {
    fn at(&self, r: u32) -> &NormalizedRecord {
        self.records[r as usize].borrow()
    }
}

impl<R: std::borrow::Borrow<NormalizedRecord>> RecordFacts for Facts<'_, R> {
    fn national_id(&self, r: u32) -> &str {
        self.at(r).national_id()
    }
    fn sex(&self, r: u32) -> Sex {
        self.at(r).sex
    }
    fn birth(&self, r: u32) -> Option<Date> {
        self.at(r).birth
    }
    fn has_given(&self, r: u32) -> bool {
        !self.at(r).given().is_empty()
    }
    fn given_compatible(&self, a: u32, b: u32) -> bool {
        let (p, q) = (self.at(a).given(), self.at(b).given());
        p.is_empty()
            || q.is_empty()
            || self.given_same(a, b)
            || crate::compare::metrics::osa_str(p, q) <= 1
            || crate::compare::metrics::jw_str(p, q) >= GIVEN_COMPATIBLE_JW
    }
    fn given_same(&self, a: u32, b: u32) -> bool {
        let (x, y) = (self.at(a), self.at(b));
        x.given() == y.given() || crate::nicknames::nick_equal(&x.given_nicks, &y.given_nicks)
    }
}

fn facts_of(records: &[NormalizedRecord]) -> Facts<'_, NormalizedRecord> {
    Facts { records }
}

fn pack(a: u32, b: u32) -> u64 {
    (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
}

impl Linker {
    /// An empty linker with an untrained model; bulk-link a batch (or load a model) before relying on
    /// one-record matches.
    pub fn new(config: LinkerConfig) -> Result<Linker, LinkError> {
        config.spec.validate()?;
        config.blocking.validate()?;
        let model = Model::new(config.spec.clone())?;
        Ok(Linker {
            block_keys: KeyTable::new(config.blocking.rules.len()),
            tf: TermFrequencies::build(&config.spec, []),
            kernels: Kernels::auto(),
            model,
            records: Vec::new(),
            keys: Vec::new(),
            by_key: HashMap::new(),
            index: BlockIndex::default(),
            idf: Idf::default(),
            tf_values: Vec::new(),
            graph: None,
            clusters: Clusters::new(),
            candidate_pairs: Vec::new(),
            config,
        })
    }

    /// The address IDF and term-frequency tables of the last batch (for a [`crate::context::MatchContext`]).
    pub fn tables(&self) -> (&Idf, &TermFrequencies) {
        (&self.idf, &self.tf)
    }

    /// Replaces the model (one trained elsewhere, or stored); it must use this linker's spec.
    pub fn set_model(&mut self, model: Model) -> Result<(), LinkError> {
        if model.spec() != &self.config.spec {
            return Err(LinkError::Model(ModelError::Shape(
                "model spec differs from the linker's".into(),
            )));
        }
        self.model = model;
        Ok(())
    }

    /// The model in use.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The configuration.
    pub fn config(&self) -> &LinkerConfig {
        &self.config
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Normalises a record, with the address weights of the current IDF table.
    pub fn normalize(&self, r: &PersonRecord) -> NormalizedRecord {
        let mut n = normalize(r);
        if !self.records.is_empty() {
            n.apply_idf(|t| self.idf.weight(t));
        }
        n
    }

    /// The readable blocking keys of a record.
    pub fn blocking_keys(&self, r: &NormalizedRecord) -> Vec<String> {
        self.config.blocking.keys(r)
    }

    /// Compares two records field by field (the graph field stays null; see [`Self::compare_held`]).
    pub fn compare(&self, a: &NormalizedRecord, b: &NormalizedRecord) -> ComparisonVector {
        self.config.spec.compare(a, b)
    }

    /// The complete comparison of two held records, graph level included, and their graph similarity.
    pub fn compare_held(&self, a: u32, b: u32) -> (ComparisonVector, Option<f32>) {
        let mut v = self
            .config
            .spec
            .compare(&self.records[a as usize], &self.records[b as usize]);
        let sim = self.graph.as_ref().and_then(|g| g.similarity(a, b));
        self.config.spec.set_graph(&mut v, sim);
        (v, sim)
    }

    fn tf_of(&self, r: u32) -> TfValues {
        let n = self.config.spec.fields.len();
        let mut out = TfValues::NONE;
        if let Some(row) = self.tf_values.get(r as usize * n..(r as usize + 1) * n) {
            out.0[..n].copy_from_slice(row);
        }
        out
    }

    fn facts(&self) -> Facts<'_, NormalizedRecord> {
        facts_of(&self.records)
    }

    /// The master identity of a held record.
    pub fn master_of(&self, key: &RecordKey) -> Option<MasterId> {
        self.clusters.master_of(*self.by_key.get(key)?)
    }

    /// Every identity with its records' keys, by master id.
    pub fn clusters(&self) -> Vec<(MasterId, Vec<RecordKey>)> {
        self.clusters
            .iter()
            .map(|(m, members)| {
                let mut keys: Vec<RecordKey> = members.iter().map(|&r| self.keys[r as usize].clone()).collect();
                keys.sort();
                (m, keys)
            })
            .collect()
    }

    /// Per held record (canonical order), its identity label, for evaluation.
    pub fn labels(&self) -> Vec<u64> {
        self.clusters.labels()
    }

    /// Held record `r` in normalised form.
    pub fn record(&self, r: u32) -> Option<&NormalizedRecord> {
        self.records.get(r as usize)
    }

    /// The index of a held record.
    pub fn index(&self, key: &RecordKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The key of held record `r`.
    pub fn key(&self, r: u32) -> Option<&RecordKey> {
        self.keys.get(r as usize)
    }

    /// Bytes held by normalised records, keys and indexes, roughly, for capacity planning.
    pub fn size_bytes(&self) -> usize {
        self.records.iter().map(NormalizedRecord::size_bytes).sum::<usize>()
            + self
                .keys
                .iter()
                .map(|k| k.source.len() + k.id.len() + 48)
                .sum::<usize>()
            + self.block_keys.len() * self.block_keys.rules() * 8
            + self.index.len() * 12
            + self.tf_values.len() * 4
            + self.graph.as_ref().map(|g| g.len() * g.dim() * 4).unwrap_or(0)
    }
}

mod batch;
mod online;
#[cfg(test)]
mod tests;
