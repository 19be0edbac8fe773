//! Per-vertex feature vectors of the vertices one shard owns: the inputs of
//! scoring (cosine similarity, neighbour aggregation).
//!
//! A vertex has at most one vector of 1..=`FEATURES_DIM_MAX` finite `f32`
//! values; vertices may have vectors of different widths (scoring skips rows
//! whose width differs from its query's). This module stores, validates and
//! serves them; it does not score, and it does not check that a vertex is
//! owned here (the state machine routes before it calls in).

use std::collections::BTreeMap;

use plexus_proto::{ErrorReply, VertexId};

/// Most values in one vertex's feature vector.
pub const FEATURES_DIM_MAX: usize = 1024;
/// Most vertices in one `ReadOp::Features`; with `FEATURES_DIM_MAX` it
/// bounds an answer to 1 MiB of values, well inside the frame limits.
pub const FEATURES_READ_VERTICES_MAX: usize = 256;

/// Feature vectors keyed by vertex; a vertex without features has no key.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FeatureStore {
    vectors: BTreeMap<VertexId, Vec<f32>>,
}

/// The store in snapshot form: `(vertex, values)` in ascending vertex order.
pub(crate) type FeatureForm = Vec<(VertexId, Vec<f32>)>;

/// `Ok` when `values` may be stored: non-empty, within the width limit, finite.
fn check_values(values: &[f32]) -> Result<(), String> {
    if values.is_empty() {
        return Err("a feature vector needs at least one value".into());
    }
    if values.len() > FEATURES_DIM_MAX {
        return Err(format!(
            "feature vector of {} values exceeds {FEATURES_DIM_MAX}",
            values.len()
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("feature value {i} is not finite ({})", values[i]));
    }
    Ok(())
}

/// Bit-exact equality, so `-0.0` and `0.0` differ exactly when their snapshot bytes do.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

impl FeatureStore {
    /// Replaces `vertex`'s vector with `values`, or removes it when `values`
    /// is empty; whether the stored bytes changed. Invalid values are
    /// `BadRequest` and change nothing.
    pub(crate) fn set(&mut self, vertex: VertexId, values: &[f32]) -> Result<bool, ErrorReply> {
        if values.is_empty() {
            return Ok(self.vectors.remove(&vertex).is_some());
        }
        check_values(values).map_err(|e| ErrorReply::BadRequest(format!("vertex {vertex}: {e}")))?;
        match self.vectors.get_mut(&vertex) {
            Some(old) if same_bits(old, values) => Ok(false),
            Some(old) => {
                old.clear();
                old.extend_from_slice(values);
                Ok(true)
            }
            None => {
                self.vectors.insert(vertex, values.to_vec());
                Ok(true)
            }
        }
    }

    /// `vertex`'s vector, if it has one.
    pub(crate) fn get(&self, vertex: VertexId) -> Option<&[f32]> {
        self.vectors.get(&vertex).map(Vec::as_slice)
    }

    /// Vertices holding a vector.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.vectors.len()
    }

    /// The snapshot form, borrowed: serde encodes `&[f32]` exactly as
    /// `Vec<f32>`, so this decodes as a `FeatureForm` without copying values.
    pub(crate) fn to_form(&self) -> Vec<(VertexId, &[f32])> {
        self.vectors.iter().map(|(v, x)| (*v, x.as_slice())).collect()
    }

    /// Rebuilds the store from snapshot form, checking every invariant
    /// `set` keeps: ascending unique vertices and valid vectors.
    pub(crate) fn from_form(form: FeatureForm) -> Result<Self, String> {
        let mut vectors = BTreeMap::new();
        for (vertex, values) in form {
            if vectors.last_key_value().is_some_and(|(last, _)| *last >= vertex) {
                return Err(format!("feature vertices are not ascending at {vertex}"));
            }
            check_values(&values).map_err(|e| format!("features of vertex {vertex}: {e}"))?;
            vectors.insert(vertex, values);
        }
        Ok(Self { vectors })
    }
}
