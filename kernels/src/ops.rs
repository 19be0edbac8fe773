//! Aggregation operators and feature storage types. This module names the choices; it computes nothing.

use serde::{Deserialize, Serialize};

/// How the neighbour features of a destination row are combined. Every operator produces 0 for a row with
/// no neighbours (an empty row), so that isolated vertices get a zero message rather than `-inf` or NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggOp {
    /// Sum of neighbour features.
    Sum,
    /// Sum divided by the row's degree.
    Mean,
    /// Element-wise maximum (initialised at `-inf`, so all-negative inputs keep their sign).
    Max,
    /// GCN-normalised sum: `out[i] = Σ_j x[j] / sqrt(deg(i)·deg(j))`, see [`crate::csr::Csr`] for degrees.
    Gcn,
}

impl AggOp {
    /// All operators, in a fixed order, for tests and benches.
    pub const ALL: [AggOp; 4] = [AggOp::Sum, AggOp::Mean, AggOp::Max, AggOp::Gcn];

    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            AggOp::Sum => "sum",
            AggOp::Mean => "mean",
            AggOp::Max => "max",
            AggOp::Gcn => "gcn",
        }
    }

    /// Parses a name produced by [`AggOp::name`].
    pub fn parse(name: &str) -> Option<AggOp> {
        AggOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The integer code the CUDA kernels switch on.
    pub(crate) fn code(self) -> i32 {
        match self {
            AggOp::Sum => 0,
            AggOp::Mean => 1,
            AggOp::Max => 2,
            AggOp::Gcn => 3,
        }
    }
}

/// Storage type of a feature matrix. Accumulation and output are always `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16 (`half::bf16`): the top 16 bits of an `f32`; widening to `f32` is exact.
    Bf16,
}

impl DType {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }

    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }

    /// Parses a name produced by [`DType::name`].
    pub fn parse(name: &str) -> Option<DType> {
        match name {
            "f32" => Some(DType::F32),
            "bf16" => Some(DType::Bf16),
            _ => None,
        }
    }
}
