//! GraphSAGE inference: the dense steps of a layer (concat(self, aggregated) → linear with bias → ReLU →
//! L2 normalise) and a two-layer forward over a sampled 2-hop neighbourhood. Aggregation runs on the
//! chosen backend; the dense steps run on the CPU threads. Not a trainer and not a general tensor library.
//!
//! Relation to PyTorch Geometric's `SAGEConv`: `lin_l` is applied to the aggregated neighbours (with
//! bias) and `lin_r` to the vertex itself (no bias), which equals one linear map over the concatenation.
//! The order ReLU then L2 normalisation follows the GraphSAGE paper; PyG's `normalize=True` normalises
//! inside the conv, before the activation the surrounding model applies. Each layer has flags for both.

use crate::backend::Kernels;
use crate::csr::{Csr, Features};
use crate::error::KernelError;
use crate::similarity::dot;
use crate::AggOp;

/// Output rows per thread chunk of the dense step.
const DENSE_ROWS_PER_CHUNK: usize = 64;

/// One GraphSAGE layer; weights are row-major `[out_dim, in_dim]` like PyTorch's `Linear.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct SageLayer {
    /// Input feature width.
    pub in_dim: usize,
    /// Output feature width.
    pub out_dim: usize,
    /// Neighbour aggregation.
    pub agg: AggOp,
    /// `lin_l.weight`: applied to the aggregated neighbours.
    pub w_neigh: Vec<f32>,
    /// `lin_l.bias`.
    pub bias: Vec<f32>,
    /// `lin_r.weight`: applied to the vertex's own features.
    pub w_self: Vec<f32>,
    /// Apply ReLU after the linear map.
    pub relu: bool,
    /// L2-normalise each output row (after ReLU); a zero row stays zero.
    pub l2_normalize: bool,
}

impl SageLayer {
    /// Checks that the weight shapes agree with `in_dim` and `out_dim`.
    pub fn validate(&self) -> Result<(), KernelError> {
        let (i, o) = (self.in_dim, self.out_dim);
        if i == 0 || o == 0 || self.w_neigh.len() != o * i || self.w_self.len() != o * i || self.bias.len() != o {
            return Err(KernelError::Shape(format!(
                "layer {i}->{o}: w_neigh {}, w_self {}, bias {}",
                self.w_neigh.len(),
                self.w_self.len(),
                self.bias.len()
            )));
        }
        Ok(())
    }

    /// The dense steps for `rows` vertices: `own` and `agg` are `rows × in_dim`, the result `rows × out_dim`.
    pub fn dense(&self, own: &[f32], agg: &[f32], rows: usize, threads: usize) -> Result<Vec<f32>, KernelError> {
        self.validate()?;
        let (i, o) = (self.in_dim, self.out_dim);
        if own.len() < rows * i || agg.len() != rows * i {
            return Err(KernelError::Shape(format!(
                "dense: {rows} rows of {i} need own {} agg {}",
                own.len(),
                agg.len()
            )));
        }
        let mut out = vec![0.0f32; rows * o];
        let chunks: Vec<_> = (0..rows)
            .step_by(DENSE_ROWS_PER_CHUNK)
            .map(|s| s..(s + DENSE_ROWS_PER_CHUNK).min(rows))
            .collect();
        crate::cpu::run_chunks(&chunks, threads, o, &mut out, |range, dst| {
            for (k, r) in range.enumerate() {
                let (xs, xa) = (&own[r * i..(r + 1) * i], &agg[r * i..(r + 1) * i]);
                let row = &mut dst[k * o..(k + 1) * o];
                for (c, v) in row.iter_mut().enumerate() {
                    let h = self.bias[c]
                        + dot(&self.w_self[c * i..(c + 1) * i], xs)
                        + dot(&self.w_neigh[c * i..(c + 1) * i], xa);
                    *v = if self.relu { h.max(0.0) } else { h };
                }
                if self.l2_normalize {
                    let n = dot(row, row).sqrt();
                    if n > 0.0 {
                        row.iter_mut().for_each(|v| *v /= n);
                    }
                }
            }
        });
        Ok(out)
    }
}

/// A sampled 2-hop neighbourhood as two CSR blocks, in the nested-prefix convention of PyG's
/// `NeighborLoader` and DGL's blocks: the `n0` target vertices are the first rows of the `n1` hop-1
/// vertices, which are the first rows of the `n2` hop-2 vertices whose input features are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoHopSample {
    /// `n1` rows (hop-1 vertices) over `n2` sources (hop-2 vertices): the first layer's block.
    pub outer: Csr,
    /// `n0` rows (targets) over `n1` sources (hop-1 vertices): the second layer's block.
    pub inner: Csr,
}

impl TwoHopSample {
    /// Checks the nesting: `n0 <= n1 <= n2` and the inner block's sources are the outer block's rows.
    pub fn validate(&self) -> Result<(), KernelError> {
        let (n0, n1, n2) = (self.inner.num_rows(), self.outer.num_rows(), self.outer.num_src);
        if self.inner.num_src != n1 || n0 > n1 || n1 > n2 {
            return Err(KernelError::Shape(format!(
                "2-hop sample: targets {n0}, hop-1 {n1} (inner sources {}), hop-2 {n2}",
                self.inner.num_src
            )));
        }
        Ok(())
    }
}

/// A stack of GraphSAGE layers.
#[derive(Debug, Clone, PartialEq)]
pub struct SageModel {
    /// Layers, first applied first.
    pub layers: Vec<SageLayer>,
}

impl SageModel {
    /// One layer: aggregate `x` (rows of the block's sources) over `block`, then the dense steps with the
    /// first `block.num_rows()` rows of `x` as the vertices' own features.
    pub fn layer_forward(
        &self,
        kernels: &Kernels,
        layer: usize,
        block: &Csr,
        x: &[f32],
        threads: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let l = self
            .layers
            .get(layer)
            .ok_or_else(|| KernelError::Shape(format!("no layer {layer}")))?;
        let rows = block.num_rows();
        let feats = Features::f32(x, l.in_dim)?;
        let mut agg = vec![0.0f32; rows * l.in_dim];
        kernels.aggregate(&block.view()?, &feats, l.agg, &mut agg)?;
        l.dense(x, &agg, rows, threads)
    }

    /// Two-layer forward over `sample` with input features `x` (`n2 × in_dim`); returns `n0 × out_dim`.
    pub fn forward_two_hop(
        &self,
        kernels: &Kernels,
        sample: &TwoHopSample,
        x: &[f32],
        threads: usize,
    ) -> Result<Vec<f32>, KernelError> {
        sample.validate()?;
        if self.layers.len() != 2 {
            return Err(KernelError::Shape(format!(
                "two-hop forward needs 2 layers, model has {}",
                self.layers.len()
            )));
        }
        if self.layers[0].out_dim != self.layers[1].in_dim {
            return Err(KernelError::Shape(
                "layer 0 output width differs from layer 1 input width".into(),
            ));
        }
        let h1 = self.layer_forward(kernels, 0, &sample.outer, x, threads)?;
        self.layer_forward(kernels, 1, &sample.inner, &h1, threads)
    }
}
