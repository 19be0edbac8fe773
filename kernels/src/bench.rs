//! The benchmark API behind `plexus kernels bench|info`: aggregation throughput on a synthetic power-law
//! or loaded graph, and a STREAM-style copy to measure the machine's memory bandwidth. It measures and
//! reports; it asserts nothing about speed.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{select_backend, Backend, Kernels};
use crate::csr::{to_bf16, Csr, Features};
use crate::error::KernelError;
use crate::graph::{power_law_csr, read_edge_list, SplitMix64};
use crate::{AggOp, DType};

/// Most timed iterations a bench runs.
pub const BENCH_ITERS_MAX: usize = 10_000;
/// Repetitions of the STREAM copy; the best is reported, as STREAM does.
const STREAM_REPS: usize = 5;

/// What to benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Vertices of the synthetic graph (ignored with `graph_path`).
    pub vertices: usize,
    /// Edges of the synthetic graph (ignored with `graph_path`).
    pub edges: usize,
    /// Seed of the synthetic graph and the features.
    pub seed: u64,
    /// A text edge list (`src dst` lines) to use instead of the synthetic graph.
    pub graph_path: Option<PathBuf>,
    /// Feature width K.
    pub dim: usize,
    /// Aggregation operator.
    pub op: AggOp,
    /// Feature storage type.
    pub dtype: DType,
    /// Backend; `None` runs [`select_backend`]'s choice.
    pub backend: Option<Backend>,
    /// Timed iterations (after one untimed warm-up).
    pub iters: usize,
    /// CPU worker threads; `None` uses all available.
    pub threads: Option<usize>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            vertices: 200_000,
            edges: 4_000_000,
            seed: 1,
            graph_path: None,
            dim: 128,
            op: AggOp::Sum,
            dtype: DType::F32,
            backend: None,
            iters: 10,
            threads: None,
        }
    }
}

/// The figures of one bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Backend name.
    pub backend: String,
    /// CPU threads used (1 for the scalar reference, 0 for CUDA).
    pub threads: usize,
    /// Vertices (destination rows).
    pub vertices: usize,
    /// Edges.
    pub edges: usize,
    /// Feature width.
    pub dim: usize,
    /// Operator name.
    pub op: AggOp,
    /// Storage type.
    pub dtype: DType,
    /// Timed iterations.
    pub iters: usize,
    /// Median milliseconds per aggregation.
    pub ms: f64,
    /// Fastest iteration in milliseconds.
    pub ms_min: f64,
    /// Edges per second at the median.
    pub edges_per_sec: f64,
    /// Bytes per aggregation: `edges·K·bytes_per_value + 4·edges + rows·K·4 + 4·(rows+1)`.
    pub bytes: u64,
    /// `bytes / ms` in GB/s (10⁹ bytes) at the median.
    pub gbps: f64,
}

/// The bytes one aggregation must move at least, the bench's roofline numerator.
pub fn aggregation_bytes(rows: usize, edges: usize, dim: usize, dtype: DType) -> u64 {
    let (r, e, k) = (rows as u64, edges as u64, dim as u64);
    e * k * dtype.bytes() as u64 + 4 * e + r * k * 4 + 4 * (r + 1)
}

/// Deterministic features in `[-1, 1)`.
pub fn random_features(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_f00d);
    (0..rows * dim).map(|_| rng.next_signed_f32()).collect()
}

/// Loads or generates the bench graph.
pub fn bench_graph(opts: &BenchOptions) -> Result<Csr, KernelError> {
    match &opts.graph_path {
        Some(p) => {
            let (edges, n) = read_edge_list(p)?;
            Csr::from_edges(n, n, &edges)
        }
        None => power_law_csr(opts.vertices, opts.edges, opts.seed),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the aggregation bench described by `opts`.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, KernelError> {
    if opts.iters == 0 || opts.iters > BENCH_ITERS_MAX {
        return Err(KernelError::Limit(format!(
            "iters {} outside 1..={BENCH_ITERS_MAX}",
            opts.iters
        )));
    }
    let csr = bench_graph(opts)?;
    let view = csr.view()?;
    let (rows, edges) = (csr.num_rows(), csr.num_edges());
    let xf = random_features(csr.num_src, opts.dim, opts.seed);
    let xb = if opts.dtype == DType::Bf16 {
        to_bf16(&xf)
    } else {
        Vec::new()
    };
    let x = match opts.dtype {
        DType::F32 => Features::f32(&xf, opts.dim)?,
        DType::Bf16 => Features::bf16(&xb, opts.dim)?,
    };
    let backend = opts.backend.unwrap_or_else(|| select_backend().backend);
    let mut kernels = Kernels::new(backend)?;
    let threads = match backend {
        Backend::Scalar => 1,
        Backend::Cuda => 0,
        _ => opts.threads.unwrap_or_else(crate::cpu::default_threads),
    };
    if threads > 0 {
        kernels = kernels.with_threads(threads);
    }
    let mut times = Vec::with_capacity(opts.iters);
    if let Some(engine) = kernels.cuda() {
        let mut g = engine.upload(&view, &x)?;
        engine.aggregate(&mut g, opts.op)?;
        for _ in 0..opts.iters {
            let t = Instant::now();
            engine.aggregate(&mut g, opts.op)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    } else {
        let mut out = vec![0.0f32; rows * opts.dim];
        kernels.aggregate(&view, &x, opts.op, &mut out)?;
        for _ in 0..opts.iters {
            let t = Instant::now();
            kernels.aggregate(&view, &x, opts.op, &mut out)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms_min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let ms = median(&mut times);
    let bytes = aggregation_bytes(rows, edges, opts.dim, opts.dtype);
    Ok(BenchReport {
        backend: backend.name().to_string(),
        threads,
        vertices: rows,
        edges,
        dim: opts.dim,
        op: opts.op,
        dtype: opts.dtype,
        iters: opts.iters,
        ms,
        ms_min,
        edges_per_sec: edges as f64 / (ms / 1e3),
        bytes,
        gbps: bytes as f64 / (ms / 1e3) / 1e9,
    })
}

/// STREAM-style copy bandwidth in GB/s (10⁹ bytes): copies an array of `bytes` bytes into another with all
/// CPU threads, best of several repetitions, counting `2·bytes` per copy (read + write, as STREAM does;
/// the write-allocate read is not counted). Use arrays well beyond the last-level cache.
pub fn stream_copy_gbps(bytes: usize) -> f64 {
    let n = (bytes / 4).max(1);
    let threads = crate::cpu::default_threads();
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    let per = n.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..STREAM_REPS {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    (2 * n * 4) as f64 / best / 1e9
}
