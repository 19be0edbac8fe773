//! CPU aggregation: a plain scalar reference plus `std::arch` SIMD paths (AVX2+FMA and AVX-512F on
//! x86-64, NEON on aarch64) chosen at run time, run across threads over destination-row chunks that are
//! balanced by edge count. It is not a general sparse library: only the four [`AggOp`]s over one block.
//!
//! Summation order: every path walks a row's edges in stored order and keeps one accumulator per output
//! value, so sum, mean and max give bit-identical results on every ISA; only the GCN weights differ in
//! rounding (SIMD paths use fused multiply-add and a per-vertex `1/sqrt(deg)` instead of a per-edge one).

pub(crate) mod scalar;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use std::ops::Range;
use std::sync::Mutex;

use half::bf16;

use crate::csr::{check_shapes, CsrRef, FeatureData, Features};
use crate::error::KernelError;
use crate::AggOp;

/// How many row chunks each worker thread gets on average; more chunks balance skewed rows better, fewer
/// cost less hand-off. Chunks are cut by cost (edges + rows), so a hub row does not stall one thread.
const CHUNKS_PER_THREAD: usize = 16;

/// Smallest chunk cost (edges + rows) worth handing to a thread.
const CHUNK_COST_MIN: usize = 4096;

/// A CPU instruction-set path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The scalar reference (always available, single-threaded when used as a backend).
    Scalar,
    /// AVX2 with FMA, 8 `f32` lanes.
    Avx2,
    /// AVX-512F, 16 `f32` lanes.
    Avx512,
    /// NEON, 4 `f32` lanes.
    Neon,
}

impl Isa {
    /// Whether this CPU can run the path (run-time detection).
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The widest available path on this CPU.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

/// What one row-range kernel call needs besides the features and the output.
pub(crate) struct RowJob<'a> {
    /// CSR row offsets of the whole block.
    pub offsets: &'a [u32],
    /// CSR columns of the whole block.
    pub cols: &'a [u32],
    /// Values per feature row.
    pub dim: usize,
    /// The operator.
    pub op: AggOp,
    /// `1/sqrt(deg(j))` per source for [`AggOp::Gcn`], empty otherwise.
    pub src_w: &'a [f32],
}

impl RowJob<'_> {
    /// The columns of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[u32] {
        &self.cols[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The factor applied to a finished row: `1/deg` for mean (as a division), `1/sqrt(deg)` for GCN.
    #[inline]
    pub fn row_scale(&self, deg: usize) -> RowScale {
        match self.op {
            AggOp::Mean => RowScale::Div(deg as f32),
            AggOp::Gcn => RowScale::Mul(1.0 / (deg as f32).sqrt()),
            AggOp::Sum | AggOp::Max => RowScale::None,
        }
    }
}

/// The finishing step of a row (kept as an enum so that every path rounds identically).
#[derive(Clone, Copy)]
pub(crate) enum RowScale {
    /// Leave as is.
    None,
    /// Divide by the value (mean).
    Div(f32),
    /// Multiply by the value (GCN).
    Mul(f32),
}

impl RowScale {
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            RowScale::None => v,
            RowScale::Div(d) => v / d,
            RowScale::Mul(m) => v * m,
        }
    }
}

/// Aggregates `csr`'s rows of `x` into `out` (`rows × dim`, `f32`) with `isa` on up to `threads` threads.
/// [`Isa::Scalar`] runs the reference, which computes GCN weights per edge in `f64`.
pub fn aggregate(
    isa: Isa,
    threads: usize,
    csr: &CsrRef<'_>,
    x: &Features<'_>,
    op: AggOp,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_shapes(csr, x, out.len())?;
    if !isa.available() {
        return Err(KernelError::BackendUnavailable {
            backend: isa.name(),
            reason: "CPU lacks the feature".into(),
        });
    }
    if isa == Isa::Scalar {
        scalar::reference(csr, x, op, out);
        return Ok(());
    }
    let src_w = if op == AggOp::Gcn {
        csr.src_inv_sqrt_degree()
    } else {
        Vec::new()
    };
    let job = RowJob {
        offsets: csr.row_offsets(),
        cols: csr.col_indices(),
        dim: x.dim(),
        op,
        src_w: &src_w,
    };
    let chunks = partition_rows(csr.row_offsets(), threads.max(1));
    run_chunks(&chunks, threads.max(1), x.dim(), out, |rows, out_chunk| {
        // Safety of the ISA calls: `isa.available()` was checked above, which is what the
        // `#[target_feature]` functions require; slices are bounds-checked inside.
        match x.data() {
            FeatureData::F32(d) => rows_f32(isa, &job, d, rows, out_chunk),
            FeatureData::Bf16(d) => rows_bf16(isa, &job, d, rows, out_chunk),
        }
    });
    Ok(())
}

fn rows_f32(isa: Isa, job: &RowJob<'_>, x: &[f32], rows: Range<usize>, out: &mut [f32]) {
    match isa {
        // SAFETY: callers only pass an `isa` whose `available()` returned true.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_avx512::rows(job, x, rows, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_avx2::rows(job, x, rows, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::rows(job, x, rows, out) },
        _ => scalar::rows(job, x, rows, out),
    }
}

fn rows_bf16(isa: Isa, job: &RowJob<'_>, x: &[bf16], rows: Range<usize>, out: &mut [f32]) {
    match isa {
        // SAFETY: callers only pass an `isa` whose `available()` returned true.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_avx512::rows(job, x, rows, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_avx2::rows(job, x, rows, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::rows(job, x, rows, out) },
        _ => scalar::rows(job, x, rows, out),
    }
}

/// Cuts rows into contiguous chunks of roughly equal cost (edges + rows). A single row is never split:
/// a hub row's chunk is just that row, and the dynamic hand-out in [`run_chunks`] overlaps it with others.
pub(crate) fn partition_rows(offsets: &[u32], threads: usize) -> Vec<Range<usize>> {
    let rows = offsets.len().saturating_sub(1);
    let total = offsets.last().copied().unwrap_or(0) as usize + rows;
    let target = (total / (threads * CHUNKS_PER_THREAD).max(1)).max(CHUNK_COST_MIN);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut cost = 0;
    for i in 0..rows {
        cost += (offsets[i + 1] - offsets[i]) as usize + 1;
        if cost >= target {
            chunks.push(start..i + 1);
            start = i + 1;
            cost = 0;
        }
    }
    if start < rows {
        chunks.push(start..rows);
    }
    chunks
}

/// Runs `f` over every chunk on up to `threads` scoped threads, handing chunks out in order from a shared
/// queue so that cheap chunks fill in around expensive ones. Output rows of chunks are disjoint.
pub(crate) fn run_chunks<F>(chunks: &[Range<usize>], threads: usize, dim: usize, out: &mut [f32], f: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let mut work = Vec::with_capacity(chunks.len());
    let mut rest = out;
    for r in chunks {
        let (head, tail) = rest.split_at_mut(r.len() * dim);
        work.push((r.clone(), head));
        rest = tail;
    }
    let workers = threads.min(work.len());
    if workers <= 1 {
        for (r, o) in work {
            f(r, o);
        }
        return;
    }
    let queue = Mutex::new(work.into_iter());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                // A poisoned lock means another worker panicked; the scope re-raises that panic.
                let next = match queue.lock() {
                    Ok(mut q) => q.next(),
                    Err(_) => None,
                };
                let Some((r, o)) = next else { break };
                f(r, o);
            });
        }
    });
}

/// Number of worker threads to use by default: the machine's available parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The element types a SIMD row kernel can load; widening to `f32` is exact for both.
pub(crate) trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_and_isolate_hubs() {
        // 10k light rows of 1 edge, then one hub of 100k edges, then 10k light rows.
        let mut offsets = vec![0u32];
        for i in 0..20_001u32 {
            let deg = if i == 10_000 { 100_000 } else { 1 };
            offsets.push(offsets[offsets.len() - 1] + deg);
        }
        let chunks = partition_rows(&offsets, 2);
        let mut next = 0;
        for c in &chunks {
            assert_eq!(c.start, next);
            next = c.end;
        }
        assert_eq!(next, 20_001);
        let hub = chunks.iter().find(|c| c.contains(&10_000)).unwrap();
        assert_eq!(*hub, hub.start..10_001, "the hub ends its chunk");
        assert!(chunks.len() >= 3);
    }
}
