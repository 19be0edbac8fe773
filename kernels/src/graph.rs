//! Graphs for benchmarks and tests: a deterministic synthetic power-law generator and a text edge-list
//! reader and writer. Edges are `src dst`; aggregation gathers `src → dst`, so the CSR is built by
//! destination. Not a graph store: whole graphs are held in memory.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use crate::csr::Csr;
use crate::error::KernelError;

/// Longest accepted edge-list line in bytes; longer lines are rejected as malformed.
pub const EDGE_LINE_BYTES_MAX: usize = 4096;
/// Most edges one edge list may hold (CSR offsets are `u32`).
pub const EDGE_LIST_EDGES_MAX: usize = u32::MAX as usize;

/// SplitMix64: a small, fast, well-mixed generator; reproducible from the seed on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[-1, 1)` as `f32`.
    pub fn next_signed_f32(&mut self) -> f32 {
        (self.next_f64() * 2.0 - 1.0) as f32
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Exponent of the destination-rank sampler: rank `⌊N·u²⌋` gives in-degrees with a power-law tail whose
/// largest row holds about `E/√N` edges (≈ 9k for 200k vertices and 4M edges).
const DST_SKEW: f64 = 2.0;
/// Exponent of the source-rank sampler: milder skew, so popular sources are re-read as in real graphs.
const SRC_SKEW: f64 = 1.5;

/// A Chung–Lu-like power-law graph: `edges` edges over `vertices` vertices, destinations and sources drawn
/// with skewed popularity, vertex ids shuffled so hubs are spread over the id space. Deterministic in
/// `seed`. Returns `(src, dst)` pairs in generation order.
pub fn power_law_edges(vertices: usize, edges: usize, seed: u64) -> Result<Vec<(u32, u32)>, KernelError> {
    if vertices == 0 || vertices > u32::MAX as usize || edges > EDGE_LIST_EDGES_MAX {
        return Err(KernelError::Limit(format!(
            "{vertices} vertices / {edges} edges outside u32 ids"
        )));
    }
    let mut rng = SplitMix64::new(seed);
    let mut perm: Vec<u32> = (0..vertices as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let n = vertices as f64;
    let rank = |u: f64, skew: f64| ((n * u.powf(skew)) as usize).min(vertices - 1);
    let mut out = Vec::with_capacity(edges);
    for _ in 0..edges {
        let dst = perm[rank(rng.next_f64(), DST_SKEW)];
        let src = perm[rank(rng.next_f64(), SRC_SKEW)];
        out.push((src, dst));
    }
    Ok(out)
}

/// The CSR (by destination) of [`power_law_edges`].
pub fn power_law_csr(vertices: usize, edges: usize, seed: u64) -> Result<Csr, KernelError> {
    Csr::from_edges(vertices, vertices, &power_law_edges(vertices, edges, seed)?)
}

/// Reads a text edge list: one `src dst` pair of decimal `u32` per line, separated by whitespace;
/// blank lines and lines starting with `#` or `%` are skipped. Returns the pairs and the vertex count
/// (largest id + 1).
pub fn read_edge_list(path: &Path) -> Result<(Vec<(u32, u32)>, usize), KernelError> {
    let reader = BufReader::new(std::fs::File::open(path)?);
    let mut edges = Vec::new();
    let mut max_id: Option<u32> = None;
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let bad = |reason: &str| KernelError::EdgeList {
            line: n + 1,
            reason: reason.to_string(),
        };
        if line.len() > EDGE_LINE_BYTES_MAX {
            return Err(bad("line too long"));
        }
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with('%') {
            continue;
        }
        let mut it = t.split_whitespace();
        let (Some(a), Some(b)) = (it.next(), it.next()) else {
            return Err(bad("expected `src dst`"));
        };
        let src: u32 = a.parse().map_err(|_| bad("src is not a u32"))?;
        let dst: u32 = b.parse().map_err(|_| bad("dst is not a u32"))?;
        if edges.len() >= EDGE_LIST_EDGES_MAX {
            return Err(bad("too many edges"));
        }
        max_id = Some(max_id.unwrap_or(0).max(src).max(dst));
        edges.push((src, dst));
    }
    let vertices = max_id.map_or(0, |m| m as usize + 1);
    Ok((edges, vertices))
}

/// Writes the edges of a CSR block (by destination) as a text edge list `src dst`, row by row.
pub fn write_edge_list(path: &Path, csr: &Csr) -> Result<(), KernelError> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for dst in 0..csr.num_rows() {
        let (a, b) = (csr.row_offsets[dst] as usize, csr.row_offsets[dst + 1] as usize);
        for &src in &csr.col_indices[a..b] {
            writeln!(w, "{src} {dst}")?;
        }
    }
    w.flush()?;
    Ok(())
}
