//! Compressed sparse row blocks and feature matrices: the validated inputs of every aggregation.
//!
//! A block is stored *by destination*: row `i` lists the source vertices `j` whose features are gathered
//! into output row `i` (an edge `src → dst` of an edge list lands in row `dst`, column `src`). This module
//! validates shapes and computes degrees; it does no arithmetic on features.
//!
//! Degree convention used by [`crate::AggOp::Gcn`]: `deg(i)` is the length of row `i` (the in-degree of
//! the destination) and `deg(j)` is the number of times `j` occurs as a column in the block (the
//! out-degree of the source within this block). For a symmetric square block both equal the vertex degree.
//! No self-loops are added implicitly; GCN's `Â = A + I` is obtained with [`Csr::with_self_loops`].

use half::bf16;

use crate::error::KernelError;

/// Largest feature width accepted (values per row); it bounds per-row scratch in the kernels.
pub const DIM_MAX: usize = 1 << 16;

/// A borrowed, validated CSR block. Offsets are `u32`, so one block holds at most `u32::MAX` edges.
#[derive(Debug, Clone, Copy)]
pub struct CsrRef<'a> {
    row_offsets: &'a [u32],
    col_indices: &'a [u32],
    num_src: usize,
}

impl<'a> CsrRef<'a> {
    /// Validates and wraps a block with `row_offsets.len() - 1` destination rows whose columns index
    /// `num_src` source rows. Offsets must start at 0, never decrease and end at `col_indices.len()`.
    pub fn new(row_offsets: &'a [u32], col_indices: &'a [u32], num_src: usize) -> Result<Self, KernelError> {
        let Some((&first, _)) = row_offsets.split_first() else {
            return Err(KernelError::InvalidCsr(
                "row_offsets is empty (need rows + 1 entries)".into(),
            ));
        };
        if first != 0 {
            return Err(KernelError::InvalidCsr(format!("row_offsets[0] is {first}, not 0")));
        }
        if let Some(w) = row_offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(KernelError::InvalidCsr(format!("row_offsets decreases after row {w}")));
        }
        let last = row_offsets[row_offsets.len() - 1] as usize;
        if last != col_indices.len() {
            return Err(KernelError::InvalidCsr(format!(
                "row_offsets ends at {last} but there are {} column indices",
                col_indices.len()
            )));
        }
        if let Some(&index) = col_indices.iter().find(|&&c| c as usize >= num_src) {
            return Err(KernelError::ColumnOutOfRange { index, rows: num_src });
        }
        Ok(CsrRef {
            row_offsets,
            col_indices,
            num_src,
        })
    }

    /// Number of destination (output) rows.
    pub fn num_rows(&self) -> usize {
        self.row_offsets.len() - 1
    }

    /// Number of source rows the columns index.
    pub fn num_src(&self) -> usize {
        self.num_src
    }

    /// Number of stored edges.
    pub fn num_edges(&self) -> usize {
        self.col_indices.len()
    }

    /// Row offsets (`num_rows + 1` entries).
    pub fn row_offsets(&self) -> &'a [u32] {
        self.row_offsets
    }

    /// Column (source) indices, row after row.
    pub fn col_indices(&self) -> &'a [u32] {
        self.col_indices
    }

    /// The columns of row `i`. Panics if `i >= num_rows()`, like slice indexing.
    pub fn row(&self, i: usize) -> &'a [u32] {
        &self.col_indices[self.row_offsets[i] as usize..self.row_offsets[i + 1] as usize]
    }

    /// `1 / sqrt(deg(j))` for every source `j`, where `deg(j)` counts occurrences of `j` as a column.
    /// Sources that never occur get 0; they are never read by an aggregation.
    pub fn src_inv_sqrt_degree(&self) -> Vec<f32> {
        let mut count = vec![0u32; self.num_src];
        for &c in self.col_indices {
            count[c as usize] += 1;
        }
        count
            .into_iter()
            .map(|d| if d == 0 { 0.0 } else { 1.0 / (d as f32).sqrt() })
            .collect()
    }
}

/// An owned CSR block; see [`CsrRef`] for the invariants it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// Row offsets, `num_rows + 1` entries.
    pub row_offsets: Vec<u32>,
    /// Column indices, `num_edges` entries.
    pub col_indices: Vec<u32>,
    /// Number of source rows.
    pub num_src: usize,
}

impl Csr {
    /// Validates and takes ownership of the arrays.
    pub fn new(row_offsets: Vec<u32>, col_indices: Vec<u32>, num_src: usize) -> Result<Self, KernelError> {
        CsrRef::new(&row_offsets, &col_indices, num_src)?;
        Ok(Csr {
            row_offsets,
            col_indices,
            num_src,
        })
    }

    /// Builds the block from `(src, dst)` edges over `num_dst` destination and `num_src` source rows.
    /// Rows keep the input order of their edges (a stable counting sort), so results are reproducible.
    pub fn from_edges(num_dst: usize, num_src: usize, edges: &[(u32, u32)]) -> Result<Self, KernelError> {
        if edges.len() > u32::MAX as usize {
            return Err(KernelError::Limit(format!("{} edges exceed u32 offsets", edges.len())));
        }
        let mut counts = vec![0u32; num_dst + 1];
        for &(src, dst) in edges {
            if dst as usize >= num_dst {
                return Err(KernelError::ColumnOutOfRange {
                    index: dst,
                    rows: num_dst,
                });
            }
            if src as usize >= num_src {
                return Err(KernelError::ColumnOutOfRange {
                    index: src,
                    rows: num_src,
                });
            }
            counts[dst as usize + 1] += 1;
        }
        for i in 0..num_dst {
            counts[i + 1] += counts[i];
        }
        let mut cursor = counts.clone();
        let mut cols = vec![0u32; edges.len()];
        for &(src, dst) in edges {
            let slot = &mut cursor[dst as usize];
            cols[*slot as usize] = src;
            *slot += 1;
        }
        Ok(Csr {
            row_offsets: counts,
            col_indices: cols,
            num_src,
        })
    }

    /// The borrowed view. The invariants were checked at construction and the fields are only mutable
    /// through `&mut self`, so the view is re-validated to keep the contract even after a caller edits them.
    pub fn view(&self) -> Result<CsrRef<'_>, KernelError> {
        CsrRef::new(&self.row_offsets, &self.col_indices, self.num_src)
    }

    /// Number of destination rows.
    pub fn num_rows(&self) -> usize {
        self.row_offsets.len().saturating_sub(1)
    }

    /// Number of edges.
    pub fn num_edges(&self) -> usize {
        self.col_indices.len()
    }

    /// A copy with a self-loop `i → i` prepended to every row (square blocks only), as GCN's `A + I`.
    pub fn with_self_loops(&self) -> Result<Self, KernelError> {
        let rows = self.num_rows();
        if rows != self.num_src {
            return Err(KernelError::Shape(format!(
                "self-loops need a square block, got {rows}x{}",
                self.num_src
            )));
        }
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut cols = Vec::with_capacity(self.col_indices.len() + rows);
        offsets.push(0u32);
        for i in 0..rows {
            cols.push(i as u32);
            let (a, b) = (self.row_offsets[i] as usize, self.row_offsets[i + 1] as usize);
            cols.extend_from_slice(&self.col_indices[a..b]);
            let end = u32::try_from(cols.len()).map_err(|_| KernelError::Limit("edges exceed u32".into()))?;
            offsets.push(end);
        }
        Csr::new(offsets, cols, self.num_src)
    }
}

/// Feature storage borrowed by a kernel.
#[derive(Debug, Clone, Copy)]
pub enum FeatureData<'a> {
    /// `f32` values.
    F32(&'a [f32]),
    /// `bf16` values, widened to `f32` on load.
    Bf16(&'a [bf16]),
}

/// A borrowed row-major `rows × dim` feature matrix.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    data: FeatureData<'a>,
    rows: usize,
    dim: usize,
}

impl<'a> Features<'a> {
    /// Wraps `data` as rows of `dim` values; `data.len()` must be a multiple of `dim`.
    pub fn new(data: FeatureData<'a>, dim: usize) -> Result<Self, KernelError> {
        if dim == 0 || dim > DIM_MAX {
            return Err(KernelError::Limit(format!("dim {dim} outside 1..={DIM_MAX}")));
        }
        let len = match data {
            FeatureData::F32(d) => d.len(),
            FeatureData::Bf16(d) => d.len(),
        };
        if len % dim != 0 {
            return Err(KernelError::Shape(format!(
                "{len} values is not a multiple of dim {dim}"
            )));
        }
        Ok(Features {
            data,
            rows: len / dim,
            dim,
        })
    }

    /// `f32` rows of `dim` values.
    pub fn f32(data: &'a [f32], dim: usize) -> Result<Self, KernelError> {
        Features::new(FeatureData::F32(data), dim)
    }

    /// `bf16` rows of `dim` values.
    pub fn bf16(data: &'a [bf16], dim: usize) -> Result<Self, KernelError> {
        Features::new(FeatureData::Bf16(data), dim)
    }

    /// The storage.
    pub fn data(&self) -> FeatureData<'a> {
        self.data
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Storage type.
    pub fn dtype(&self) -> crate::DType {
        match self.data {
            FeatureData::F32(_) => crate::DType::F32,
            FeatureData::Bf16(_) => crate::DType::Bf16,
        }
    }

    /// Value `(r, c)` widened to `f32`; panics out of range, like slice indexing.
    pub fn get(&self, r: usize, c: usize) -> f32 {
        match self.data {
            FeatureData::F32(d) => d[r * self.dim + c],
            FeatureData::Bf16(d) => d[r * self.dim + c].to_f32(),
        }
    }
}

/// Converts `f32` values to `bf16` with round-to-nearest-even (NaN stays NaN), as PyTorch does.
pub fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Checks that a block and a feature matrix fit together and that `out` holds `rows × dim` values.
pub(crate) fn check_shapes(csr: &CsrRef<'_>, x: &Features<'_>, out_len: usize) -> Result<(), KernelError> {
    if x.rows() != csr.num_src() {
        return Err(KernelError::Shape(format!(
            "features have {} rows but the block indexes {} sources",
            x.rows(),
            csr.num_src()
        )));
    }
    let want = csr.num_rows() * x.dim();
    if out_len != want {
        return Err(KernelError::Shape(format!(
            "output holds {out_len} values, need {want}"
        )));
    }
    Ok(())
}
