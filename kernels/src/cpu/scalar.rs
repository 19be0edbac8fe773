//! The scalar paths: [`reference`], the definition every other backend is tested against, and [`rows`],
//! the portable fallback that SIMD paths also use for the last `dim % lanes` columns.

use std::ops::Range;

use super::{Elem, RowJob};
use crate::csr::{CsrRef, Features};
use crate::AggOp;

/// The reference: single-threaded, one value at a time, GCN weights `1/sqrt(deg(i)·deg(j))` per edge in
/// `f64`. Empty rows give 0 for every operator. Shapes must already have been checked.
pub fn reference(csr: &CsrRef<'_>, x: &Features<'_>, op: AggOp, out: &mut [f32]) {
    let dim = x.dim();
    let mut src_deg = vec![0u64; csr.num_src()];
    if op == AggOp::Gcn {
        for &c in csr.col_indices() {
            src_deg[c as usize] += 1;
        }
    }
    for i in 0..csr.num_rows() {
        let cols = csr.row(i);
        let o = &mut out[i * dim..(i + 1) * dim];
        if cols.is_empty() {
            o.fill(0.0);
            continue;
        }
        let init = if op == AggOp::Max { f32::NEG_INFINITY } else { 0.0 };
        o.fill(init);
        for &j in cols {
            let j = j as usize;
            let w = if op == AggOp::Gcn {
                (1.0 / ((cols.len() as u64 * src_deg[j]) as f64).sqrt()) as f32
            } else {
                1.0
            };
            for (c, acc) in o.iter_mut().enumerate() {
                let v = x.get(j, c);
                match op {
                    AggOp::Sum | AggOp::Mean => *acc += v,
                    AggOp::Max => {
                        if v > *acc {
                            *acc = v;
                        }
                    }
                    AggOp::Gcn => *acc += v * w,
                }
            }
        }
        if op == AggOp::Mean {
            let d = cols.len() as f32;
            o.iter_mut().for_each(|v| *v /= d);
        }
    }
}

/// Portable row kernel with the SIMD paths' arithmetic (per-vertex GCN weights), for rows `rows`
/// writing `out` (`rows.len() × dim`).
pub(crate) fn rows<E: Elem>(job: &RowJob<'_>, x: &[E], rows: Range<usize>, out: &mut [f32]) {
    let dim = job.dim;
    for (k, i) in rows.enumerate() {
        cols_range(job, x, i, 0..dim, &mut out[k * dim..(k + 1) * dim]);
    }
}

/// Aggregates columns `cols` of row `i` into `o` (`cols.len()` values). SIMD paths call this for their
/// tail columns, so it must round exactly as they do for sum, mean and max.
#[inline]
pub(crate) fn cols_range<E: Elem>(job: &RowJob<'_>, x: &[E], i: usize, cols: Range<usize>, o: &mut [f32]) {
    let edges = job.row(i);
    if edges.is_empty() {
        o.fill(0.0);
        return;
    }
    let dim = job.dim;
    let init = if job.op == AggOp::Max { f32::NEG_INFINITY } else { 0.0 };
    o.fill(init);
    for &j in edges {
        let row = &x[j as usize * dim + cols.start..j as usize * dim + cols.end];
        match job.op {
            AggOp::Sum | AggOp::Mean => o.iter_mut().zip(row).for_each(|(a, v)| *a += v.to_f32()),
            AggOp::Max => o.iter_mut().zip(row).for_each(|(a, v)| {
                let v = v.to_f32();
                if v > *a {
                    *a = v;
                }
            }),
            AggOp::Gcn => {
                let w = job.src_w[j as usize];
                o.iter_mut().zip(row).for_each(|(a, v)| *a = v.to_f32().mul_add(w, *a));
            }
        }
    }
    let scale = job.row_scale(edges.len());
    o.iter_mut().for_each(|v| *v = scale.apply(*v));
}
