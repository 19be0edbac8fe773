//! plexus kernels: GNN neighbour aggregation over CSR blocks (sum, mean, max, GCN-normalised sum), the
//! dense steps of GraphSAGE, and cosine top-k — with one API ([`Kernels`]) over several backends: a
//! scalar reference, `std::arch` SIMD CPU paths (AVX2+FMA, AVX-512F, NEON) chosen at run time and spread
//! over threads, and CUDA kernels compiled at run time with NVRTC and launched through `cudarc`.
//!
//! It is not a tensor library or a trainer: inputs are validated CSR blocks and row-major matrices,
//! outputs are `f32`, and models are loaded from safetensors files written by PyTorch Geometric.
//!
//! Conventions (see [`csr`] for details): blocks are stored by destination; empty rows aggregate to 0;
//! `bf16` features are widened exactly and accumulated in `f32`; GCN degrees come from the block itself
//! and no self-loops are added implicitly.

pub mod backend;
pub mod bench;
pub mod cpu;
pub mod csr;
pub mod cuda;
pub mod error;
pub mod graph;
pub mod ops;
pub mod sage;
pub mod similarity;
pub mod weights;

pub use backend::{info, select_backend, Backend, BackendInfo, Kernels};
pub use bench::{run_bench, stream_copy_gbps, BenchOptions, BenchReport};
pub use csr::{to_bf16, Csr, CsrRef, FeatureData, Features};
pub use error::KernelError;
pub use ops::{AggOp, DType};
pub use sage::{SageLayer, SageModel, TwoHopSample};
pub use similarity::{cosine_scores, cosine_top_k, top_k};
