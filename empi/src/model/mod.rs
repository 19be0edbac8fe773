//! The Fellegi-Sunter model: per field and level an m probability (of the level among true matches) and
//! a u probability (among non-matches), a prior λ (the chance that two random records match), match
//! weights `log2(m/u)`, term-frequency adjustments, and an [`Explanation`] of every score.
//!
//! Estimation follows Splink: u from comparisons of random record pairs ([`Model::estimate_u`]); m and
//! λ by expectation-maximisation over the blocked candidate pairs, unsupervised, in sessions that each
//! hold some fields fixed ([`Model::train`]; [`Model::em`] is the single-run form). A null level (value
//! missing on either side) contributes weight 0.
//!
//! The model is plain data with serde, so a node stores and ships it, in a self-describing format such
//! as JSON: its comparison spec uses internally tagged enums, which postcard cannot read (embed the JSON
//! text where postcard frames it). It does not compare records (see `compare`) or decide links (see
//! `cluster`).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::compare::{Attribute, ComparisonSpec, ComparisonVector, SpecError, FIELDS_MAX, NULL};
use crate::util::{u64_map, U64Map};

/// Floor of every m and u probability, so no level's weight is infinite.
pub const PROB_MIN: f64 = 1e-7;

/// Most EM iterations before giving up on convergence.
pub const EM_ITERATIONS_MAX: usize = 1000;

/// EM stops when no probability moves by more than this between iterations.
pub const EM_TOLERANCE: f64 = 1e-6;

/// Levels per field in the weight table: every nibble value, null included.
const SLOTS: usize = 16;

/// Why a model cannot be built or trained.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    /// The comparison spec is invalid.
    #[error("invalid comparison spec: {0}")]
    Spec(#[from] SpecError),
    /// The parameter tables do not fit the spec (a stored model edited by hand, say).
    #[error("parameters do not fit the spec: {0}")]
    Shape(String),
    /// Training was given no comparisons.
    #[error("no comparisons to train on")]
    NoData,
}

/// The stored form; [`Model`] adds the weight table computed from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelData {
    spec: ComparisonSpec,
    lambda: f64,
    m: Vec<Vec<f64>>,
    u: Vec<Vec<f64>>,
    tf_min: f64,
}

/// A trained (or default) Fellegi-Sunter model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelData", into = "ModelData")]
pub struct Model {
    data: ModelData,
    weights: Vec<[f64; SLOTS]>,
}

impl TryFrom<ModelData> for Model {
    type Error = ModelError;

    fn try_from(data: ModelData) -> Result<Self, ModelError> {
        data.spec.validate()?;
        let n = data.spec.fields.len();
        if data.m.len() != n || data.u.len() != n {
            return Err(ModelError::Shape(format!(
                "{n} fields but {} m and {} u rows",
                data.m.len(),
                data.u.len()
            )));
        }
        for i in 0..n {
            let levels = data.spec.level_count(i);
            if data.m[i].len() != levels || data.u[i].len() != levels {
                return Err(ModelError::Shape(format!("field {i} has {levels} levels")));
            }
        }
        if !(data.lambda > 0.0 && data.lambda < 1.0) {
            return Err(ModelError::Shape(format!("lambda {} outside (0, 1)", data.lambda)));
        }
        let mut model = Model {
            data,
            weights: Vec::new(),
        };
        model.refresh();
        Ok(model)
    }
}

impl From<Model> for ModelData {
    fn from(m: Model) -> ModelData {
        m.data
    }
}

/// Per field, the relative frequency of the value two records share (for the term-frequency
/// adjustment of an exact match); 0 where there is none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TfValues(pub [f32; FIELDS_MAX]);

impl TfValues {
    /// No adjustment anywhere.
    pub const NONE: TfValues = TfValues([0.0; FIELDS_MAX]);
}

/// Options of one EM run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmOptions {
    /// All record pairs of the population (`n(n-1)/2`), to turn the match share among candidates into
    /// the prior λ over random pairs.
    pub total_pairs: f64,
    /// Iteration cap.
    pub iterations_max: usize,
}

/// What an EM run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmReport {
    /// Iterations run.
    pub iterations: usize,
    /// Whether the tolerance was reached.
    pub converged: bool,
    /// Estimated share of matches among the candidate pairs.
    pub lambda_candidates: f64,
    /// The resulting prior over random pairs.
    pub lambda: f64,
}

impl Model {
    /// A model with neutral starting parameters for `spec`: the best level likely among matches and
    /// rare among non-matches, "else" the reverse. EM and u estimation replace them.
    pub fn new(spec: ComparisonSpec) -> Result<Model, ModelError> {
        spec.validate()?;
        let mut m = Vec::new();
        let mut u = Vec::new();
        for i in 0..spec.fields.len() {
            let n = spec.level_count(i);
            let mut mi: Vec<f64> = (0..n).map(|l| 0.5f64.powi(l as i32 + 1)).collect();
            mi[0] += 0.3;
            let mut ui: Vec<f64> = (0..n).map(|l| 0.01 * 2f64.powi(l as i32)).collect();
            ui[n - 1] = 0.9;
            normalise(&mut mi);
            normalise(&mut ui);
            m.push(mi);
            u.push(ui);
        }
        Model::try_from(ModelData {
            spec,
            lambda: 1e-4,
            m,
            u,
            tf_min: 1e-6,
        })
    }

    /// The comparison spec the parameters belong to.
    pub fn spec(&self) -> &ComparisonSpec {
        &self.data.spec
    }

    /// The prior probability that two random records match.
    pub fn lambda(&self) -> f64 {
        self.data.lambda
    }

    /// m probabilities, per field and level.
    pub fn m(&self) -> &[Vec<f64>] {
        &self.data.m
    }

    /// u probabilities, per field and level.
    pub fn u(&self) -> &[Vec<f64>] {
        &self.data.u
    }

    /// Sets parameters directly (tests, or a model trained elsewhere); checked like a stored model.
    pub fn with_parameters(self, lambda: f64, m: Vec<Vec<f64>>, u: Vec<Vec<f64>>) -> Result<Model, ModelError> {
        let tf_min = self.data.tf_min;
        Model::try_from(ModelData {
            spec: self.data.spec,
            lambda,
            m,
            u,
            tf_min,
        })
    }

    /// Sets the smallest term frequency used in adjustments (typically `1 / records`).
    pub fn set_tf_min(&mut self, tf_min: f64) {
        self.data.tf_min = tf_min.max(f64::MIN_POSITIVE);
    }

    fn refresh(&mut self) {
        self.weights = (0..self.data.spec.fields.len())
            .map(|i| {
                let mut w = [0.0; SLOTS];
                for (l, slot) in w.iter_mut().enumerate().take(self.data.m[i].len()) {
                    *slot = (self.data.m[i][l].max(PROB_MIN) / self.data.u[i][l].max(PROB_MIN)).log2();
                }
                w[usize::from(NULL)] = 0.0;
                w
            })
            .collect();
    }

    /// The match weight of level `level` of field `field` (0 for null).
    pub fn level_weight(&self, field: usize, level: Option<u8>) -> f64 {
        self.weights[field][usize::from(level.unwrap_or(NULL))]
    }

    /// The prior weight, `log2(λ / (1 - λ))`.
    pub fn prior_weight(&self) -> f64 {
        (self.data.lambda / (1.0 - self.data.lambda)).log2()
    }

    /// The term-frequency adjustment of field `field` at `level` for a shared value of frequency `tf`:
    /// `log2(u_exact / tf)` on the exact level of a `tf_adjust` field, 0 otherwise.
    pub fn tf_adjustment(&self, field: usize, level: Option<u8>, tf: f32) -> f64 {
        if level != Some(0) || tf <= 0.0 || !self.data.spec.fields[field].tf_adjust {
            return 0.0;
        }
        let u = self.data.u[field][0].max(PROB_MIN);
        (u / f64::from(tf).max(self.data.tf_min)).log2()
    }

    /// Total match weight in bits (prior + level weights + term-frequency adjustments) of a complete
    /// comparison vector (graph level included, see `ComparisonSpec::set_graph`). The hot path: table
    /// look-ups only.
    pub fn score(&self, v: &ComparisonVector, tf: &TfValues) -> f64 {
        let mut total = self.prior_weight();
        for (i, w) in self.weights.iter().enumerate() {
            let nibble = ((v.0 >> (4 * i)) & 0xf) as usize;
            total += w[nibble];
            if nibble == 0 && tf.0[i] > 0.0 {
                total += self.tf_adjustment(i, Some(0), tf.0[i]);
            }
        }
        total
    }

    /// The score with every term spelled out; `graph_similarity` is shown beside the graph level.
    pub fn explain(&self, v: &ComparisonVector, tf: &TfValues, graph_similarity: Option<f32>) -> Explanation {
        let spec = &self.data.spec;
        let mut fields = Vec::new();
        let mut graph = None;
        for (i, f) in spec.fields.iter().enumerate() {
            let level = v.get(i);
            let term = FieldTerm {
                field: f.name.clone(),
                level: spec.level_name(i, level).to_string(),
                weight: self.level_weight(i, level),
                tf_adjustment: self.tf_adjustment(i, level, tf.0[i]),
            };
            if f.attribute == Attribute::Graph {
                graph = Some(GraphTerm {
                    similarity: graph_similarity,
                    level: term.level,
                    weight: term.weight,
                });
            } else {
                fields.push(term);
            }
        }
        let total = self.score(v, tf);
        Explanation {
            fields,
            graph,
            prior: self.prior_weight(),
            total,
            probability: probability(total),
        }
    }

    /// Estimates u from comparisons of random record pairs: the share of each level among the non-null
    /// comparisons of each field, with half a pair of additive smoothing so unseen levels keep a small
    /// non-zero u.
    pub fn estimate_u(&mut self, samples: impl IntoIterator<Item = ComparisonVector>) -> Result<(), ModelError> {
        let n = self.data.spec.fields.len();
        let mut counts: Vec<[f64; SLOTS]> = vec![[0.0; SLOTS]; n];
        let mut any = false;
        for v in samples {
            any = true;
            for (i, c) in counts.iter_mut().enumerate() {
                if let Some(l) = v.get(i) {
                    c[usize::from(l)] += 1.0;
                }
            }
        }
        if !any {
            return Err(ModelError::NoData);
        }
        for (i, c) in counts.iter().enumerate() {
            let levels = self.data.spec.level_count(i);
            let total: f64 = c[..levels].iter().sum();
            if total == 0.0 {
                continue;
            }
            self.data.u[i] = (0..levels)
                .map(|l| ((c[l] + 0.5) / (total + 0.5 * levels as f64)).max(PROB_MIN))
                .collect();
        }
        self.refresh();
        Ok(())
    }

    /// Estimates m and λ by EM over candidate-pair patterns (each distinct vector with its count), with
    /// every field in the likelihood and every m free. The non-match distribution among candidates is
    /// fitted alongside as a nuisance parameter (blocking makes candidates agree far more than random
    /// pairs), starting from the random-pair u; the model keeps its random-pair u for scoring, as Splink
    /// does. λ over random pairs is the candidates' match share times `candidates / total_pairs`.
    ///
    /// Correlated fields (address, postcode, phone and the graph all agree within a household) can pull
    /// a single run towards "same household" instead of "same person"; [`Model::train`] avoids that
    /// with Splink-style sessions.
    pub fn em(&mut self, patterns: &[(ComparisonVector, u64)], opts: EmOptions) -> Result<EmReport, ModelError> {
        let n = self.data.spec.fields.len();
        let all = vec![true; n];
        let (m, report) = self.em_core(patterns, &all, &all, opts)?;
        self.data.m = m;
        self.set_prior(&report);
        Ok(report)
    }

    /// Splink-style training: one EM session per training rule over the candidate pairs whose rule
    /// fields all agree exactly (level 0), estimating m of every other field only (the rule's own
    /// fields are constant within the session and left out); each field's m is the mean over the
    /// sessions that estimated it. Then λ by EM over all candidates with m fixed.
    pub fn train(
        &mut self,
        patterns: &[(ComparisonVector, u64)],
        rules: &[Vec<usize>],
        opts: EmOptions,
    ) -> Result<TrainingReport, ModelError> {
        let n = self.data.spec.fields.len();
        let mut sum: Vec<Vec<f64>> = self.data.m.iter().map(|l| vec![0.0; l.len()]).collect();
        let mut times = vec![0usize; n];
        let mut sessions = Vec::new();
        for rule in rules {
            let subset: Vec<(ComparisonVector, u64)> = patterns
                .iter()
                .copied()
                .filter(|(v, _)| rule.iter().all(|&f| v.get(f) == Some(0)))
                .collect();
            let estimate: Vec<bool> = (0..n).map(|f| !rule.contains(&f)).collect();
            if subset.is_empty() {
                sessions.push(None);
                continue;
            }
            let (m, report) = self.em_core(&subset, &estimate, &estimate, opts)?;
            for f in (0..n).filter(|&f| estimate[f]) {
                sum[f].iter_mut().zip(&m[f]).for_each(|(s, x)| *s += x);
                times[f] += 1;
            }
            sessions.push(Some(report));
        }
        for f in (0..n).filter(|&f| times[f] > 0) {
            self.data.m[f] = sum[f].iter().map(|s| (s / times[f] as f64).max(PROB_MIN)).collect();
        }
        let (_, lambda) = self.em_core(patterns, &vec![true; n], &vec![false; n], opts)?;
        self.set_prior(&lambda);
        Ok(TrainingReport { sessions, lambda })
    }

    fn set_prior(&mut self, report: &EmReport) {
        self.data.lambda = report.lambda;
        self.refresh();
    }

    /// One EM run: `use_field` says which fields enter the likelihood, `update_m` whose m is re-estimated
    /// (others stay fixed). Returns the m table and the report (with the prior computed from λ).
    fn em_core(
        &self,
        patterns: &[(ComparisonVector, u64)],
        use_field: &[bool],
        update_m: &[bool],
        opts: EmOptions,
    ) -> Result<(Vec<Vec<f64>>, EmReport), ModelError> {
        let total: f64 = patterns.iter().map(|p| p.1 as f64).sum();
        if total == 0.0 {
            return Err(ModelError::NoData);
        }
        let n = self.data.spec.fields.len();
        let levels: Vec<usize> = (0..n).map(|i| self.data.spec.level_count(i)).collect();
        let mut m = self.data.m.clone();
        let mut u = self.data.u.clone();
        let mut lambda = 0.1f64;
        let mut report = EmReport {
            iterations: 0,
            converged: false,
            lambda_candidates: lambda,
            lambda: self.data.lambda,
        };
        for it in 0..opts.iterations_max.min(EM_ITERATIONS_MAX) {
            let mut mc = vec![[0.0f64; SLOTS]; n];
            let mut uc = vec![[0.0f64; SLOTS]; n];
            let mut match_mass = 0.0;
            for &(v, count) in patterns {
                let (mut pm, mut pu) = (lambda, 1.0 - lambda);
                for i in (0..n).filter(|&i| use_field[i]) {
                    if let Some(l) = v.get(i) {
                        let l = usize::from(l).min(levels[i] - 1);
                        pm *= m[i][l];
                        pu *= u[i][l];
                    }
                }
                let p = if pm + pu > 0.0 { pm / (pm + pu) } else { 0.0 };
                let c = count as f64;
                match_mass += c * p;
                for i in (0..n).filter(|&i| use_field[i]) {
                    if let Some(l) = v.get(i) {
                        let l = usize::from(l).min(levels[i] - 1);
                        mc[i][l] += c * p;
                        uc[i][l] += c * (1.0 - p);
                    }
                }
            }
            let mut delta: f64 = 0.0;
            for i in (0..n).filter(|&i| use_field[i]) {
                let mut tables: Vec<(&mut Vec<f64>, &[f64; SLOTS])> = vec![(&mut u[i], &uc[i])];
                if update_m[i] {
                    tables.push((&mut m[i], &mc[i]));
                }
                for (probs, counts) in tables {
                    let sum: f64 = counts[..levels[i]].iter().sum();
                    if sum <= 0.0 {
                        continue;
                    }
                    for (l, p) in probs.iter_mut().enumerate() {
                        let new = (counts[l] / sum).max(PROB_MIN);
                        delta = delta.max((new - *p).abs());
                        *p = new;
                    }
                }
            }
            let new_lambda = (match_mass / total).clamp(PROB_MIN, 1.0 - PROB_MIN);
            delta = delta.max((new_lambda - lambda).abs());
            lambda = new_lambda;
            report.iterations = it + 1;
            if delta < EM_TOLERANCE {
                report.converged = true;
                break;
            }
        }
        report.lambda_candidates = lambda;
        report.lambda = (lambda * total / opts.total_pairs.max(total)).clamp(PROB_MIN * PROB_MIN, 0.5);
        Ok((m, report))
    }
}

/// What [`Model::train`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingReport {
    /// Per training rule, its session (`None` when no candidate pair satisfied the rule).
    pub sessions: Vec<Option<EmReport>>,
    /// The final λ run.
    pub lambda: EmReport,
}

fn normalise(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    for x in p.iter_mut() {
        *x /= s;
    }
}

/// Match probability of a total weight in bits.
pub fn probability(weight: f64) -> f64 {
    let odds = weight.clamp(-1000.0, 1000.0).exp2();
    odds / (1.0 + odds)
}

/// Counts pairs by comparison vector, in a deterministic order, for [`Model::em`].
pub fn patterns(vectors: impl IntoIterator<Item = ComparisonVector>) -> Vec<(ComparisonVector, u64)> {
    let mut counts: U64Map<u64> = u64_map(4096);
    for v in vectors {
        *counts.entry(v.0).or_insert(0) += 1;
    }
    let mut out: Vec<(ComparisonVector, u64)> = counts.into_iter().map(|(k, c)| (ComparisonVector(k), c)).collect();
    out.sort_unstable();
    out
}

mod explain;
mod tf;

pub use explain::{Explanation, FieldTerm, GraphTerm};
pub use tf::TermFrequencies;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{FieldSpec, LevelSpec, Test};
    use rand::{Rng, SeedableRng};

    fn three_field_spec() -> ComparisonSpec {
        let field = |name: &str| FieldSpec {
            name: name.into(),
            attribute: Attribute::City,
            levels: vec![
                LevelSpec::new("exact", Test::Exact),
                LevelSpec::new("close", Test::JaroWinkler { min: 0.9 }),
            ],
            tf_adjust: false,
        };
        ComparisonSpec {
            fields: vec![field("a"), field("b"), field("c")],
        }
    }

    fn draw(rng: &mut impl Rng, p: &[f64]) -> u8 {
        let x: f64 = rng.gen();
        let mut acc = 0.0;
        for (i, q) in p.iter().enumerate() {
            acc += q;
            if x < acc {
                return i as u8;
            }
        }
        (p.len() - 1) as u8
    }

    #[test]
    fn em_recovers_known_m_and_lambda() {
        let m_true = [vec![0.85, 0.10, 0.05], vec![0.75, 0.15, 0.10], vec![0.90, 0.05, 0.05]];
        let u_true = [vec![0.02, 0.08, 0.90], vec![0.05, 0.10, 0.85], vec![0.01, 0.04, 0.95]];
        let lambda_true = 0.2;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut vectors = Vec::new();
        for _ in 0..200_000 {
            let is_match = rng.gen::<f64>() < lambda_true;
            let mut v = ComparisonVector::ALL_NULL;
            for i in 0..3 {
                let p = if is_match { &m_true[i] } else { &u_true[i] };
                // One value in twenty is missing, which must not bias anything.
                let level = (rng.gen::<f64>() >= 0.05).then(|| draw(&mut rng, p));
                v.set(i, level);
            }
            vectors.push(v);
        }
        let mut model = Model::new(three_field_spec()).unwrap();
        let pats = patterns(vectors.iter().copied());
        let report = model
            .em(
                &pats,
                EmOptions {
                    total_pairs: 200_000.0,
                    iterations_max: EM_ITERATIONS_MAX,
                },
            )
            .unwrap();
        assert!(report.converged, "{report:?}");
        assert!((report.lambda_candidates - lambda_true).abs() < 0.01, "{report:?}");
        for (i, want_row) in m_true.iter().enumerate() {
            for (l, want) in want_row.iter().enumerate() {
                let got = model.m()[i][l];
                assert!((got - want).abs() < 0.02, "m[{i}][{l}] = {got}, want {want}");
            }
        }
        // u from random pairs: estimate from non-matches only.
        let non: Vec<ComparisonVector> = (0..50_000)
            .map(|_| {
                let mut v = ComparisonVector::ALL_NULL;
                for (i, u) in u_true.iter().enumerate() {
                    v.set(i, Some(draw(&mut rng, u)));
                }
                v
            })
            .collect();
        model.estimate_u(non).unwrap();
        for (got_row, want_row) in model.u().iter().zip(&u_true) {
            for (got, want) in got_row.iter().zip(want_row) {
                assert!((got - want).abs() < 0.01, "u {got}, want {want}");
            }
        }
    }

    #[test]
    fn weights_nulls_and_tf_adjustment() {
        let mut spec = three_field_spec();
        spec.fields[0].tf_adjust = true;
        let model = Model::new(spec)
            .unwrap()
            .with_parameters(
                0.001,
                vec![vec![0.8, 0.1, 0.1]; 3],
                vec![vec![0.01, 0.04, 0.95], vec![0.05, 0.05, 0.9], vec![0.1, 0.1, 0.8]],
            )
            .unwrap();
        let mut v = ComparisonVector::ALL_NULL;
        v.set(0, Some(0));
        v.set(1, Some(2));
        let prior = (0.001f64 / 0.999).log2();
        let expect = prior + (0.8f64 / 0.01).log2() + (0.1f64 / 0.9).log2();
        assert!((model.score(&v, &TfValues::NONE) - expect).abs() < 1e-9);
        // A value shared by 5% of records is more common than u_exact = 1%: the match counts less.
        let mut tf = TfValues::NONE;
        tf.0[0] = 0.05;
        let adj = (0.01f64 / 0.05f64).log2();
        assert!((model.tf_adjustment(0, Some(0), 0.05) - adj).abs() < 1e-6);
        assert!((model.score(&v, &tf) - (expect + adj)).abs() < 1e-6);
        assert_eq!(model.tf_adjustment(1, Some(0), 0.05), 0.0, "field without tf_adjust");
        assert_eq!(model.tf_adjustment(0, Some(1), 0.05), 0.0, "only exact levels");
        let e = model.explain(&v, &tf, None);
        assert_eq!(e.fields[2].level, "null");
        assert_eq!(e.fields[2].weight, 0.0);
        assert!((e.total - (expect + adj)).abs() < 1e-6);
        let text = e.to_string();
        assert!(text.contains("a              exact"), "{text}");
        assert!(text.contains("match probability"), "{text}");
    }

    #[test]
    fn stored_model_round_trips_and_is_checked() {
        let model = Model::new(ComparisonSpec::person_default()).unwrap();
        let json = serde_json::to_string(&model).unwrap();
        let back: Model = serde_json::from_str(&json).unwrap();
        // serde_json's default float parser may differ in the last bit; a node stores models with postcard.
        assert_eq!(back.spec(), model.spec());
        for (x, y) in back.m().iter().flatten().zip(model.m().iter().flatten()) {
            assert!((x - y).abs() < 1e-15);
        }
        assert_eq!(back.u().len(), model.u().len());
        let mut bad: serde_json::Value = serde_json::from_str(&json).unwrap();
        bad["m"][0] = serde_json::json!([0.5]);
        assert!(serde_json::from_value::<Model>(bad).is_err());
    }

    #[test]
    fn probability_is_logistic_in_bits() {
        assert_eq!(probability(0.0), 0.5);
        assert!((probability(10.0) - 1024.0 / 1025.0).abs() < 1e-12);
        assert!(probability(-2000.0) >= 0.0);
    }
}
