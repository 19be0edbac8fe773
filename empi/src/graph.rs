//! The graph signal: records linked through shared attribute values (phone, e-mail, address, national
//! id) form a bipartite record-attribute graph; record embeddings aggregated over it make two records
//! similar when they share attributes directly or through other records.
//!
//! Each attribute value starts as a seeded pseudo-random unit vector (a hash of the value, so every node
//! derives the same one). With mean aggregation on `plexus_kernels` CSR blocks (SIMD on the CPU, CUDA
//! where a GPU exists): `r1 = mean(attributes of r)`, `a1 = mean(r1 of the records holding a)`,
//! `r2 = mean(a1 of the attributes of r)`, i.e. record←attribute←record, two hops; the embedding is the
//! unit vector of `r2`. Pair similarity is the cosine of embeddings, which the model turns into a
//! comparison level with its own m and u. (Adding `r1` back only adds the record's own unshared
//! attributes as noise, since direct sharing is excluded below: it lowered the two-hop cosine of the
//! unit test's bridged pair from 0.36 to 0.17.)
//!
//! The signal is meant for *indirect* connection: two records that share an attribute directly are
//! already compared on it field by field, so their graph similarity is reported as absent (a null
//! level, weight 0) rather than counted a second time; the graph speaks only for pairs linked, or not,
//! through other records. This module has no notion of matching.

use plexus_kernels::{AggOp, Csr, Features, KernelError, Kernels};
use thiserror::Error;

use crate::normalize::NormalizedRecord;
use crate::util::{mix64, u64_map, Fnv, U64Map};

/// Default embedding width, in values.
pub const GRAPH_DIM: usize = 32;

/// Attribute values held by more records than this are left out of the graph: a shared placeholder
/// (a clinic's front-desk phone) would otherwise pull unrelated records together.
pub const ATTRIBUTE_RECORDS_MAX: usize = 64;

/// Most attributes one record contributes (phone, e-mail, address, national id).
pub const ATTRIBUTES_PER_RECORD_MAX: usize = 4;

/// Why the graph could not be built.
#[derive(Debug, Error)]
pub enum GraphError {
    /// A kernel refused its input or failed on the device.
    #[error("aggregation kernel: {0}")]
    Kernel(#[from] KernelError),
    /// More records or attributes than `u32` indexes.
    #[error("graph too large: {0}")]
    TooLarge(String),
}

/// Settings of the graph signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphConfig {
    /// Embedding width.
    pub dim: usize,
    /// Seed of the attribute vectors (all nodes must share it).
    pub seed: u64,
    /// See [`ATTRIBUTE_RECORDS_MAX`].
    pub attribute_records_max: usize,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            dim: GRAPH_DIM,
            seed: 0x9e37_79b9_7f4a_7c15,
            attribute_records_max: ATTRIBUTE_RECORDS_MAX,
        }
    }
}

/// Hashes of a record's graph attributes, each tagged with its kind so equal strings of different kinds
/// stay apart. The address includes the postcode, so "1 MAIN ST" in two towns is two attributes.
pub fn attribute_keys(r: &NormalizedRecord, out: &mut Vec<u64>) {
    out.clear();
    let mut push = |tag: u8, parts: &[&str]| {
        if parts[0].is_empty() {
            return;
        }
        let mut h = Fnv::with_tag(tag);
        for p in parts {
            h.bytes(p.as_bytes()).sep();
        }
        out.push(h.finish());
    };
    push(1, &[r.phone()]);
    push(2, &[r.email()]);
    push(3, &[r.address(), r.postcode()]);
    push(4, &[r.national_id()]);
}

/// The embeddings of a batch and what one-record queries need.
#[derive(Debug, Clone)]
pub struct RecordGraph {
    config: GraphConfig,
    attr_ids: U64Map<u32>,
    /// Hop-1 attribute features (`a1`), attributes × dim.
    attr_hop1: Vec<f32>,
    /// Unit embeddings, records × dim; all zero for a record without attributes.
    embeddings: Vec<f32>,
    /// Attribute ids per record (hubs left out), `ATTRIBUTES_PER_RECORD_MAX` slots, `u32::MAX` unused.
    record_attrs: Vec<[u32; ATTRIBUTES_PER_RECORD_MAX]>,
    has_attributes: Vec<bool>,
    /// Attribute values dropped for exceeding the cap.
    pub hub_attributes: usize,
}

impl RecordGraph {
    /// Builds the graph of `records` and aggregates embeddings with `kernels`.
    pub fn build(records: &[NormalizedRecord], kernels: &Kernels, config: GraphConfig) -> Result<Self, GraphError> {
        let n = records.len();
        let dim = config.dim;
        if u32::try_from(n).is_err() {
            return Err(GraphError::TooLarge(format!("{n} records")));
        }
        // Attribute ids in first-seen order, so the build is deterministic for a given record order.
        let mut attr_ids: U64Map<u32> = u64_map(n * 2);
        let mut attr_keys: Vec<u64> = Vec::new();
        let mut degree: Vec<u32> = Vec::new();
        let mut edges: Vec<(u32, u32)> = Vec::with_capacity(n * 3);
        let mut keys = Vec::with_capacity(ATTRIBUTES_PER_RECORD_MAX);
        for (i, r) in records.iter().enumerate() {
            attribute_keys(r, &mut keys);
            for &k in &keys {
                let next = attr_keys.len() as u32;
                let id = *attr_ids.entry(k).or_insert(next);
                if id == next {
                    attr_keys.push(k);
                    degree.push(0);
                }
                degree[id as usize] += 1;
                edges.push((i as u32, id));
            }
        }
        let hub_attributes = degree
            .iter()
            .filter(|&&d| d as usize > config.attribute_records_max)
            .count();
        edges.retain(|&(_, a)| degree[a as usize] as usize <= config.attribute_records_max);
        let attrs = attr_keys.len();
        if u32::try_from(edges.len()).is_err() {
            return Err(GraphError::TooLarge(format!("{} edges", edges.len())));
        }
        let mut x0 = vec![0f32; attrs * dim];
        for (a, &k) in attr_keys.iter().enumerate() {
            attribute_vector(config.seed, k, &mut x0[a * dim..(a + 1) * dim]);
        }
        // Rows are destinations: record rows gather attribute columns, attribute rows gather records.
        let rec_from_attr = Csr::from_edges(n, attrs, &edges.iter().map(|&(r, a)| (a, r)).collect::<Vec<_>>())?;
        let attr_from_rec = Csr::from_edges(attrs, n, &edges)?;
        let mut has_attributes = vec![false; n];
        let mut record_attrs = vec![[u32::MAX; ATTRIBUTES_PER_RECORD_MAX]; n];
        for &(r, a) in &edges {
            has_attributes[r as usize] = true;
            if let Some(slot) = record_attrs[r as usize].iter_mut().find(|s| **s == u32::MAX) {
                *slot = a;
            }
        }
        let mut r1 = vec![0f32; n * dim];
        kernels.aggregate(&rec_from_attr.view()?, &Features::f32(&x0, dim)?, AggOp::Mean, &mut r1)?;
        drop(x0);
        let mut a1 = vec![0f32; attrs * dim];
        kernels.aggregate(&attr_from_rec.view()?, &Features::f32(&r1, dim)?, AggOp::Mean, &mut a1)?;
        let mut r2 = vec![0f32; n * dim];
        kernels.aggregate(&rec_from_attr.view()?, &Features::f32(&a1, dim)?, AggOp::Mean, &mut r2)?;
        drop(r1);
        let mut embeddings = r2;
        embeddings.chunks_exact_mut(dim).for_each(unit);
        Ok(RecordGraph {
            config,
            attr_ids,
            attr_hop1: a1,
            embeddings,
            record_attrs,
            has_attributes,
            hub_attributes,
        })
    }

    /// Records covered.
    pub fn len(&self) -> usize {
        self.has_attributes.len()
    }

    /// Whether no record is covered.
    pub fn is_empty(&self) -> bool {
        self.has_attributes.is_empty()
    }

    /// The embedding of record `r` (`None` past the end or without attributes).
    pub fn embedding(&self, r: u32) -> Option<&[f32]> {
        let i = r as usize;
        if !*self.has_attributes.get(i)? {
            return None;
        }
        let dim = self.config.dim;
        self.embeddings.get(i * dim..(i + 1) * dim)
    }

    /// Cosine of two records' embeddings; `None` when either has no attributes or when they share one
    /// directly (see the module doc).
    pub fn similarity(&self, a: u32, b: u32) -> Option<f32> {
        let (x, y) = (self.record_attrs.get(a as usize)?, self.record_attrs.get(b as usize)?);
        if x.iter().any(|&i| i != u32::MAX && y.contains(&i)) {
            return None;
        }
        Some(dot(self.embedding(a)?, self.embedding(b)?))
    }

    /// The embedding a new record would get, from its own attributes and the hop-1 features of the ones
    /// already in the graph (an attribute seen for the first time stands for this record alone). Fills
    /// `attrs` with the ids of its attributes already in the graph. Returns false, leaving `out` zero,
    /// when the record has no attributes.
    pub fn embed(&self, r: &NormalizedRecord, out: &mut [f32], attrs: &mut [u32; ATTRIBUTES_PER_RECORD_MAX]) -> bool {
        let dim = self.config.dim;
        out.iter_mut().for_each(|x| *x = 0.0);
        *attrs = [u32::MAX; ATTRIBUTES_PER_RECORD_MAX];
        let mut keys = Vec::with_capacity(ATTRIBUTES_PER_RECORD_MAX);
        attribute_keys(r, &mut keys);
        if keys.is_empty() || out.len() != dim {
            return false;
        }
        let mut r1 = vec![0f32; dim];
        let mut v = vec![0f32; dim];
        for &k in &keys {
            attribute_vector(self.config.seed, k, &mut v);
            r1.iter_mut().zip(&v).for_each(|(a, b)| *a += b / keys.len() as f32);
        }
        for (slot, &k) in keys.iter().enumerate() {
            match self.attr_ids.get(&k) {
                Some(&a) => {
                    attrs[slot] = a;
                    let row = &self.attr_hop1[a as usize * dim..(a as usize + 1) * dim];
                    out.iter_mut().zip(row).for_each(|(o, x)| *o += x / keys.len() as f32);
                }
                None => out.iter_mut().zip(&r1).for_each(|(o, x)| *o += x / keys.len() as f32),
            }
        }
        unit(out);
        true
    }

    /// Cosine of a query (embedding and attribute ids from [`Self::embed`]) with record `b`; `None` when
    /// `b` has no attributes or shares one with the query.
    pub fn similarity_to(&self, query: &[f32], attrs: &[u32; ATTRIBUTES_PER_RECORD_MAX], b: u32) -> Option<f32> {
        let y = self.record_attrs.get(b as usize)?;
        if attrs.iter().any(|&i| i != u32::MAX && y.contains(&i)) {
            return None;
        }
        Some(dot(query, self.embedding(b)?))
    }

    /// Appends the embedding of a record added after the build (as computed by [`Self::embed`]).
    pub fn push(&mut self, embedding: Option<&[f32]>, attrs: [u32; ATTRIBUTES_PER_RECORD_MAX]) {
        let dim = self.config.dim;
        self.record_attrs.push(attrs);
        match embedding {
            Some(e) if e.len() == dim => {
                self.embeddings.extend_from_slice(e);
                self.has_attributes.push(true);
            }
            _ => {
                self.embeddings.extend(std::iter::repeat_n(0.0, dim));
                self.has_attributes.push(false);
            }
        }
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.config.dim
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn unit(v: &mut [f32]) {
    let n = norm(v);
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Dot product with eight independent partial sums, so the compiler can keep them in one vector
/// register (a single running sum is a chain of dependent additions it may not reorder).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc.iter().sum::<f32>() + tail).clamp(-1.0, 1.0)
}

/// The seeded pseudo-random unit vector of an attribute hash (approximately Gaussian coordinates from a
/// SplitMix64 stream, normalised), identical on every node.
pub fn attribute_vector(seed: u64, key: u64, out: &mut [f32]) {
    let mut state = mix64(seed ^ key);
    for x in out.iter_mut() {
        // The sum of four uniforms is close enough to a Gaussian for random directions.
        let mut s = 0.0f32;
        for _ in 0..4 {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            s += (mix64(state) >> 40) as f32 / (1u64 << 24) as f32;
        }
        *x = s - 2.0;
    }
    unit(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::schema::{PersonRecord, RecordExt};

    fn rec(phone: &str, email: &str, address: &str) -> NormalizedRecord {
        let mut r = PersonRecord::new("S", "1");
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        r.phone = opt(phone);
        r.email = opt(email);
        r.address_line = opt(address);
        normalize(&r)
    }

    #[test]
    fn shared_attributes_make_records_similar() {
        let records = vec![
            rec("5550000001", "a@x.org", "1 Main St"),
            rec("5550000001", "", "1 Main St"),
            rec("5550000002", "b@x.org", "9 Oak Ave"),
            rec("", "", ""),
            // Shares only the e-mail of record 0: related to 1 through it.
            rec("5550000003", "a@x.org", ""),
            // Shares the second address of 4's person... nothing: a stranger.
            rec("5550000004", "c@x.org", "3 Elm Rd"),
        ];
        let g = RecordGraph::build(&records, &Kernels::auto(), GraphConfig::default()).unwrap();
        // Direct sharing is compared field by field, so the graph stays silent on it.
        assert_eq!(g.similarity(0, 1), None);
        assert_eq!(g.similarity(0, 4), None);
        let s14 = g.similarity(1, 4).unwrap();
        let s15 = g.similarity(1, 5).unwrap();
        let s02 = g.similarity(0, 2).unwrap();
        assert!(s14 > 0.3, "two hops relate 1 and 4 through 0: {s14}");
        assert!(s14 > s15 && s14 > s02, "{s14} vs {s15}, {s02}");
        assert_eq!(g.similarity(0, 3), None);
        // A query like record 4 is related to 1 through 0, and shares an attribute with 0.
        let mut q = vec![0f32; g.dim()];
        let mut attrs = [0u32; ATTRIBUTES_PER_RECORD_MAX];
        assert!(g.embed(&records[4], &mut q, &mut attrs));
        assert_eq!(g.similarity_to(&q, &attrs, 0), None);
        assert!(g.similarity_to(&q, &attrs, 1).unwrap() > 0.3);
        assert!(!g.embed(&records[3], &mut q, &mut attrs));
    }

    #[test]
    fn hubs_are_dropped_and_vectors_are_deterministic() {
        let mut records: Vec<NormalizedRecord> = (0..10).map(|_| rec("5559999999", "", "")).collect();
        records.push(rec("5551111111", "", ""));
        let config = GraphConfig {
            attribute_records_max: 5,
            ..GraphConfig::default()
        };
        let g = RecordGraph::build(&records, &Kernels::auto(), config).unwrap();
        assert_eq!(g.hub_attributes, 1);
        assert_eq!(g.similarity(0, 10), None, "the hub phone was 0's only attribute");
        assert!(
            g.similarity(10, 10).is_none(),
            "a record shares its attributes with itself"
        );
        let mut a = [0f32; 8];
        let mut b = [0f32; 8];
        attribute_vector(1, 42, &mut a);
        attribute_vector(1, 42, &mut b);
        assert_eq!(a, b);
        assert!((norm(&a) - 1.0).abs() < 1e-5);
        attribute_vector(2, 42, &mut b);
        assert_ne!(a, b);
    }
}
