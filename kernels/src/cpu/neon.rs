//! NEON row kernels (aarch64): 4 `f32` lanes per register, up to 16 accumulator registers (64 values)
//! per pass over a row's edges. Columns past the last full register go through the scalar path.

use std::arch::aarch64::*;
use std::ops::Range;

use half::bf16;

use super::scalar::cols_range;
use super::{Elem, RowJob, RowScale};
use crate::AggOp;

/// f32 values per register.
const LANES: usize = 4;

/// An element type this path can load 4 of at once, widened to `f32`.
pub(crate) trait LoadNeon: Elem {
    /// Loads 4 values starting at `p`.
    ///
    /// # Safety
    /// `p..p+4` must be readable and the CPU must support NEON.
    unsafe fn load4(p: *const Self) -> float32x4_t;
}

impl LoadNeon for f32 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
}

impl LoadNeon for bf16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        // bf16 is the high half of an f32: widen each u16 to u32 and shift left by 16 (exact).
        let h = vld1_u16(p as *const u16);
        vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(h)))
    }
}

/// Aggregates rows `rows` into `out` (`rows.len() × dim`).
///
/// # Safety
/// The CPU must support NEON. All indices were validated by [`crate::csr::CsrRef::new`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn rows<E: LoadNeon>(job: &RowJob<'_>, x: &[E], rows: Range<usize>, out: &mut [f32]) {
    let dim = job.dim;
    for (k, i) in rows.enumerate() {
        let o = &mut out[k * dim..(k + 1) * dim];
        let mut c0 = 0;
        while dim - c0 >= 16 * LANES {
            block::<E, 16>(job, x, i, c0, o);
            c0 += 16 * LANES;
        }
        for n in [8, 4, 2, 1] {
            if dim - c0 >= n * LANES {
                match n {
                    8 => block::<E, 8>(job, x, i, c0, o),
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

/// One pass over row `i`'s edges for columns `c0 .. c0 + N·4`, written to `o[c0..]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block<E: LoadNeon, const N: usize>(job: &RowJob<'_>, x: &[E], i: usize, c0: usize, o: &mut [f32]) {
    let dim = job.dim;
    let edges = job.row(i);
    let dst = &mut o[c0..c0 + N * LANES];
    if edges.is_empty() {
        dst.fill(0.0);
        return;
    }
    let base = x.as_ptr();
    let init = if job.op == AggOp::Max { f32::NEG_INFINITY } else { 0.0 };
    let mut acc = [vdupq_n_f32(init); N];
    for &j in edges {
        // The row start is in bounds: `j < rows` and `c0 + N·4 <= dim` (checked by the caller's loop).
        let p = base.add(j as usize * dim + c0);
        match job.op {
            AggOp::Sum | AggOp::Mean => {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = vaddq_f32(*a, E::load4(p.add(v * LANES)));
                }
            }
            AggOp::Max => {
                // Select `v` only where `v > a`, matching the reference exactly (vmaxq would propagate NaN).
                for (v, a) in acc.iter_mut().enumerate() {
                    let x = E::load4(p.add(v * LANES));
                    *a = vbslq_f32(vcgtq_f32(x, *a), x, *a);
                }
            }
            AggOp::Gcn => {
                let w = vdupq_n_f32(job.src_w[j as usize]);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, E::load4(p.add(v * LANES)), w);
                }
            }
        }
    }
    let d = dst.as_mut_ptr();
    match job.row_scale(edges.len()) {
        RowScale::None => {}
        RowScale::Div(s) => acc.iter_mut().for_each(|a| *a = vdivq_f32(*a, vdupq_n_f32(s))),
        RowScale::Mul(s) => acc.iter_mut().for_each(|a| *a = vmulq_f32(*a, vdupq_n_f32(s))),
    }
    for (v, a) in acc.iter().enumerate() {
        vst1q_f32(d.add(v * LANES), *a);
    }
}
