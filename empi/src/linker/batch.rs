//! The bulk path of [`Linker`]: one batch from records to clusters (see the module doc of `linker`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{pack, BatchReport, LinkError, Linker, Stage, LINKER_RECORDS_MAX};
use crate::blocking::{candidate_pairs, BlockIndex, KeyTable, CANDIDATE_PAIRS_MAX};
use crate::cluster::{Clusters, Edge};
use crate::compare::{ComparisonVector, Idf};
use crate::graph::RecordGraph;
use crate::model::{patterns, EmOptions, EmReport, Model, TermFrequencies, TrainingReport};
use crate::normalize::{normalize, NormalizedRecord};
use crate::schema::{PersonRecord, RecordExt, RecordKey};
use crate::util::{par_chunks, par_chunks_mut};

impl Linker {
    /// Links a batch from scratch, replacing whatever the linker held (steward constraints included).
    pub fn link_batch(
        &mut self,
        batch: Vec<PersonRecord>,
        observe: &mut dyn FnMut(Stage),
    ) -> Result<BatchReport, LinkError> {
        observe(Stage::Prepare);
        if batch.len() > LINKER_RECORDS_MAX {
            return Err(LinkError::TooManyRecords(batch.len()));
        }
        let mut rejected = Vec::new();
        let mut keyed: Vec<(RecordKey, u32)> = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            match (r.key(), r.validate()) {
                (Ok(k), Ok(())) => keyed.push((k, i as u32)),
                (_, Err(issues)) => {
                    rejected.push((i, issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
                }
                (Err(e), Ok(())) => rejected.push((i, e.to_string())),
            }
        }
        // Canonical order: by key; of repeated keys the last in the input wins.
        keyed.sort_unstable();
        let before = keyed.len();
        keyed.reverse();
        keyed.dedup_by(|later, earlier| later.0 == earlier.0);
        keyed.reverse();
        let replaced = before - keyed.len();
        let n = keyed.len();

        observe(Stage::Normalize);
        let input_index: Vec<u32> = keyed.iter().map(|k| k.1).collect();
        let mut records: Vec<NormalizedRecord> = par_chunks(&input_index, |_, c| {
            c.iter().map(|&i| normalize(&batch[i as usize])).collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        drop(batch);

        observe(Stage::Frequencies);
        let idf = Idf::build(&records);
        par_chunks_mut(&mut records, |_, c| {
            c.iter_mut().for_each(|r| r.apply_idf(|t| idf.weight(t)))
        });
        let tf = TermFrequencies::build(&self.config.spec, &records);
        let fields = self.config.spec.fields.len();
        let tf_values: Vec<f32> = if self.config.tf_adjust {
            par_chunks(&records, |_, c| {
                c.iter()
                    .flat_map(|r| tf.values(r).0.into_iter().take(fields))
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect()
        } else {
            vec![0.0; n * fields]
        };

        observe(Stage::Blocking);
        let blocking = &self.config.blocking;
        let key_rows = par_chunks(&records, |_, c| {
            c.iter().map(|r| blocking.key_hashes(r)).collect::<Vec<_>>()
        });
        let mut block_keys = KeyTable::new(blocking.rules.len());
        key_rows.iter().flatten().for_each(|k| block_keys.push(k));
        let candidates = candidate_pairs(&block_keys, blocking.block_records_max, CANDIDATE_PAIRS_MAX);

        observe(Stage::Graph);
        let graph = match self.config.graph {
            Some(g) => Some(RecordGraph::build(&records, &self.kernels, g)?),
            None => None,
        };

        self.records = records;
        self.keys = keyed.into_iter().map(|k| k.0).collect();
        self.by_key = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i as u32))
            .collect();
        self.block_keys = block_keys;
        self.idf = idf;
        self.tf = tf;
        self.tf_values = tf_values;
        self.graph = graph;

        observe(Stage::Compare);
        let vectors: Vec<ComparisonVector> = par_chunks(&candidates.pairs, |_, c| {
            c.iter().map(|&(a, b)| self.compare_held(a, b).0).collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();

        observe(Stage::EstimateU);
        let mut model = Model::new(self.config.spec.clone())?;
        model.set_tf_min(1.0 / n.max(1) as f64);
        if n >= 2 {
            let mut rng = StdRng::seed_from_u64(self.config.seed);
            let mut sample: Vec<(u32, u32)> = (0..self.config.u_sample_pairs)
                .map(|_| {
                    let a = rng.gen_range(0..n as u32);
                    let mut b = rng.gen_range(0..n as u32 - 1);
                    if b >= a {
                        b += 1;
                    }
                    (a, b)
                })
                .collect();
            // Only the counts matter; in record order one side of each pair is read sequentially.
            sample.sort_unstable();
            let u_vectors = par_chunks(&sample, |_, c| {
                c.iter().map(|&(a, b)| self.compare_held(a, b).0).collect::<Vec<_>>()
            });
            model.estimate_u(u_vectors.into_iter().flatten())?;
        }

        observe(Stage::Em);
        let training = if vectors.is_empty() {
            let none = EmReport {
                iterations: 0,
                converged: false,
                lambda_candidates: 0.0,
                lambda: model.lambda(),
            };
            TrainingReport {
                sessions: Vec::new(),
                lambda: none,
            }
        } else {
            let total_pairs = n as f64 * (n as f64 - 1.0) / 2.0;
            model.train(
                &patterns(vectors.iter().copied()),
                &self.training_rules()?,
                EmOptions {
                    total_pairs,
                    iterations_max: self.config.em_iterations_max,
                },
            )?
        };
        self.model = model;

        observe(Stage::Score);
        let threshold = self.config.cluster.threshold_bits;
        let scored = par_chunks(&candidates.pairs, |start, c| {
            let mut edges = Vec::new();
            for (k, &(a, b)) in c.iter().enumerate() {
                let w = self.model.score(&vectors[start + k], &self.tf_of(a));
                if w >= threshold {
                    edges.push(Edge { a, b, weight: w as f32 });
                }
            }
            edges
        });
        let mut edges: Vec<Edge> = scored.into_iter().flatten().collect();
        drop(vectors);

        observe(Stage::Cluster);
        let links = edges.len() as u64;
        self.clusters = Clusters::bulk(n, &mut edges, &[], &[], &self.facts(), &self.config.cluster);

        observe(Stage::Index);
        self.index = BlockIndex::build(&self.block_keys);
        self.candidate_pairs = if self.config.keep_candidate_pairs {
            let mut p: Vec<u64> = candidates.pairs.iter().map(|&(a, b)| pack(a, b)).collect();
            p.sort_unstable();
            p
        } else {
            Vec::new()
        };
        observe(Stage::Done);
        Ok(BatchReport {
            records: n,
            rejected,
            replaced,
            input_index,
            candidate_pairs: candidates.pairs.len() as u64,
            pairs_per_rule: self
                .config
                .blocking
                .rules
                .iter()
                .map(|r| r.id.clone())
                .zip(candidates.pairs_per_rule)
                .collect(),
            oversize_blocks: candidates.oversize_blocks,
            oversize_pairs: candidates.oversize_pairs,
            capped_blocks: candidates.capped_blocks,
            training,
            links,
            masters: self.clusters.len(),
            graph_hub_attributes: self.graph.as_ref().map(|g| g.hub_attributes).unwrap_or(0),
            kernel_backend: self.kernels.backend().name(),
        })
    }

    /// The training rules as field indexes.
    fn training_rules(&self) -> Result<Vec<Vec<usize>>, LinkError> {
        let fields = &self.config.spec.fields;
        self.config
            .training
            .iter()
            .map(|rule| {
                rule.iter()
                    .map(|name| {
                        fields
                            .iter()
                            .position(|f| &f.name == name)
                            .ok_or_else(|| LinkError::Config(format!("training rule names unknown field {name}")))
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether held records `a` and `b` were a candidate pair of the last batch (needs
    /// `keep_candidate_pairs`).
    pub fn was_candidate(&self, a: u32, b: u32) -> bool {
        self.candidate_pairs.binary_search(&pack(a, b)).is_ok()
    }
}
