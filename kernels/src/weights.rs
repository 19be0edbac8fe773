//! GraphSAGE weights in safetensors files, named as PyTorch Geometric's `SAGEConv` names them, so that a
//! model trained in PyG can be served. This module reads and writes tensors; it does not run them.
//!
//! Naming convention, for layer `n` under a prefix `P` (PyG's `GraphSAGE` model uses `convs.`, hand
//! written models often `layers.`): `P{n}.lin_l.weight` `[out, in]` (neighbours), `P{n}.lin_l.bias`
//! `[out]`, `P{n}.lin_r.weight` `[out, in]` (self). Layers are read from `n = 0` until one is missing.
//! Tensors may be F32, F16 or BF16; they are widened to `f32`. The file is untrusted input: every shape
//! and length is checked and a bad file is an error, never a panic.

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::KernelError;
use crate::sage::{SageLayer, SageModel};
use crate::AggOp;

/// Prefixes tried, in order, when the caller does not name one.
pub const KNOWN_PREFIXES: [&str; 3] = ["convs.", "layers.", ""];
/// Most layers read from one file.
pub const LAYERS_MAX: usize = 64;
/// Largest accepted layer width.
pub const LAYER_DIM_MAX: usize = 1 << 16;

fn tensor_f32(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, KernelError> {
    let t = st
        .tensor(name)
        .map_err(|e| KernelError::Weights(format!("{name}: {e}")))?;
    if t.shape() != shape {
        return Err(KernelError::Weights(format!(
            "{name}: shape {:?}, expected {shape:?}",
            t.shape()
        )));
    }
    let d = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(KernelError::Weights(format!("{name}: unsupported dtype {other:?}"))),
    };
    if v.len() != shape.iter().product::<usize>() {
        return Err(KernelError::Weights(format!(
            "{name}: {} values for shape {shape:?}",
            v.len()
        )));
    }
    Ok(v)
}

fn shape2(st: &SafeTensors<'_>, name: &str) -> Result<(usize, usize), KernelError> {
    let t = st
        .tensor(name)
        .map_err(|e| KernelError::Weights(format!("{name}: {e}")))?;
    match *t.shape() {
        [o, i] if (1..=LAYER_DIM_MAX).contains(&o) && (1..=LAYER_DIM_MAX).contains(&i) => Ok((o, i)),
        ref s => Err(KernelError::Weights(format!(
            "{name}: shape {s:?} is not [out, in] within limits"
        ))),
    }
}

/// Reads a GraphSAGE model from safetensors bytes. `prefix` `None` tries [`KNOWN_PREFIXES`]. Every layer
/// gets `agg`, ReLU and L2 normalisation except the last, which gets neither (logits/embeddings are
/// returned raw); change the flags on the result for another convention.
pub fn load_sage(bytes: &[u8], prefix: Option<&str>, agg: AggOp) -> Result<SageModel, KernelError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| KernelError::Weights(format!("not safetensors: {e}")))?;
    let prefix = match prefix {
        Some(p) => p.to_string(),
        None => KNOWN_PREFIXES
            .iter()
            .find(|p| st.tensor(&format!("{p}0.lin_l.weight")).is_ok())
            .ok_or_else(|| {
                KernelError::Weights(format!("no `<prefix>0.lin_l.weight` for prefixes {KNOWN_PREFIXES:?}"))
            })?
            .to_string(),
    };
    let mut layers = Vec::new();
    for n in 0..LAYERS_MAX {
        let base = format!("{prefix}{n}");
        if st.tensor(&format!("{base}.lin_l.weight")).is_err() {
            break;
        }
        let (o, i) = shape2(&st, &format!("{base}.lin_l.weight"))?;
        layers.push(SageLayer {
            in_dim: i,
            out_dim: o,
            agg,
            w_neigh: tensor_f32(&st, &format!("{base}.lin_l.weight"), &[o, i])?,
            bias: tensor_f32(&st, &format!("{base}.lin_l.bias"), &[o])?,
            w_self: tensor_f32(&st, &format!("{base}.lin_r.weight"), &[o, i])?,
            relu: true,
            l2_normalize: true,
        });
    }
    if layers.is_empty() {
        return Err(KernelError::Weights(format!("no layers under prefix {prefix:?}")));
    }
    for w in layers.windows(2) {
        if w[0].out_dim != w[1].in_dim {
            return Err(KernelError::Weights(format!(
                "layer widths {} then {} do not chain",
                w[0].out_dim, w[1].in_dim
            )));
        }
    }
    if let Some(last) = layers.last_mut() {
        last.relu = false;
        last.l2_normalize = false;
    }
    Ok(SageModel { layers })
}

/// Writes `model` as F32 safetensors bytes under `prefix` (the inverse of [`load_sage`]).
pub fn save_sage(model: &SageModel, prefix: &str) -> Result<Vec<u8>, KernelError> {
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, l) in model.layers.iter().enumerate() {
        l.validate()?;
        blobs.push((
            format!("{prefix}{n}.lin_l.weight"),
            vec![l.out_dim, l.in_dim],
            le(&l.w_neigh),
        ));
        blobs.push((format!("{prefix}{n}.lin_l.bias"), vec![l.out_dim], le(&l.bias)));
        blobs.push((
            format!("{prefix}{n}.lin_r.weight"),
            vec![l.out_dim, l.in_dim],
            le(&l.w_self),
        ));
    }
    let views = blobs
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| KernelError::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| KernelError::Weights(format!("serialize: {e}")))
}
