//! AVX2+FMA row kernels: 8 `f32` lanes per register, up to 8 accumulator registers (64 values) per pass
//! over a row's edges, software prefetch of the neighbour rows a few edges ahead (the gathers are random,
//! so the hardware prefetcher cannot help). Columns past the last full register go through the scalar path.

use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;

use super::scalar::cols_range;
use super::{Elem, RowJob, RowScale};
use crate::AggOp;

/// f32 values per register.
const LANES: usize = 8;
/// How many edges ahead the neighbour row is prefetched.
const PREFETCH_EDGES: usize = 8;

/// An element type this path can load 8 of at once, widened to `f32`.
pub(crate) trait Load256: Elem {
    /// Loads 8 values starting at `p`.
    ///
    /// # Safety
    /// `p..p+8` must be readable and the CPU must support AVX2 and FMA.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Load256 for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Load256 for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // bf16 is the high half of an f32: zero-extend each u16 to u32 and shift left by 16 (exact).
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

/// Aggregates rows `rows` into `out` (`rows.len() × dim`).
///
/// # Safety
/// The CPU must support AVX2 and FMA. All indices were validated by [`crate::csr::CsrRef::new`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rows<E: Load256>(job: &RowJob<'_>, x: &[E], rows: Range<usize>, out: &mut [f32]) {
    let dim = job.dim;
    for (k, i) in rows.enumerate() {
        let o = &mut out[k * dim..(k + 1) * dim];
        let mut c0 = 0;
        while dim - c0 >= 8 * LANES {
            block::<E, 8>(job, x, i, c0, o);
            c0 += 8 * LANES;
        }
        for n in [4, 2, 1] {
            if dim - c0 >= n * LANES {
                match n {
                    4 => block::<E, 4>(job, x, i, c0, o),
                    2 => block::<E, 2>(job, x, i, c0, o),
                    _ => block::<E, 1>(job, x, i, c0, o),
                }
                c0 += n * LANES;
            }
        }
        if c0 < dim {
            cols_range(job, x, i, c0..dim, &mut o[c0..]);
        }
    }
}

/// One pass over row `i`'s edges for columns `c0 .. c0 + N·8`, written to `o[c0..]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<E: Load256, const N: usize>(job: &RowJob<'_>, x: &[E], i: usize, c0: usize, o: &mut [f32]) {
    let dim = job.dim;
    let edges = job.row(i);
    let dst = &mut o[c0..c0 + N * LANES];
    if edges.is_empty() {
        dst.fill(0.0);
        return;
    }
    let base = x.as_ptr();
    let lines = (N * LANES * std::mem::size_of::<E>()).div_ceil(64);
    let init = if job.op == AggOp::Max { f32::NEG_INFINITY } else { 0.0 };
    let mut acc = [_mm256_set1_ps(init); N];
    for (e, &j) in edges.iter().enumerate() {
        if let Some(&jp) = edges.get(e + PREFETCH_EDGES) {
            let p = base.add(jp as usize * dim + c0) as *const i8;
            for l in 0..lines {
                _mm_prefetch::<_MM_HINT_T0>(p.add(64 * l));
            }
        }
        // The row start is in bounds: `j < rows` and `c0 + N·8 <= dim` (checked by the caller's loop).
        let p = base.add(j as usize * dim + c0);
        match job.op {
            AggOp::Sum | AggOp::Mean => {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, E::load8(p.add(v * LANES)));
                }
            }
            AggOp::Max => {
                // `max(v, a)` returns `a` unless `v > a`, matching the reference's `if v > a` exactly.
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_max_ps(E::load8(p.add(v * LANES)), *a);
                }
            }
            AggOp::Gcn => {
                let w = _mm256_set1_ps(job.src_w[j as usize]);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(E::load8(p.add(v * LANES)), w, *a);
                }
            }
        }
    }
    let d = dst.as_mut_ptr();
    match job.row_scale(edges.len()) {
        RowScale::None => {}
        RowScale::Div(s) => acc.iter_mut().for_each(|a| *a = _mm256_div_ps(*a, _mm256_set1_ps(s))),
        RowScale::Mul(s) => acc.iter_mut().for_each(|a| *a = _mm256_mul_ps(*a, _mm256_set1_ps(s))),
    }
    for (v, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(d.add(v * LANES), *a);
    }
}
