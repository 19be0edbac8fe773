//! The CUDA engine: one context and stream, the compiled kernels, and [`DeviceGraph`], a CSR block with
//! its features uploaded once so that repeated aggregations move no host data. Not a memory pool and not
//! multi-GPU: one engine drives one device.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::csr::{CsrRef, FeatureData, Features};
use crate::error::KernelError;
use crate::{AggOp, DType};

/// A row with more edges than this is cut into several work items processed by different warps and
/// combined with atomics, so that one hub row does not serialise the tail of a launch.
pub const SEGMENT_EDGES_MAX: u32 = 512;
/// Threads per block of every launch.
const BLOCK_THREADS: u32 = 256;
/// Blocks per multiprocessor a grid-stride launch is sized for.
const BLOCKS_PER_SM: u32 = 32;
/// Accumulator chunks per lane in `aggregate.cu` (`CHUNKS`); it sets the sub-warp width.
const CU_CHUNKS: usize = 2;

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> KernelError + '_ {
    move |e| KernelError::Cuda(format!("{what}: {e:?}"))
}

/// Features resident on the device.
enum DeviceFeatures {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

/// A CSR block and its features uploaded once; [`CudaEngine::aggregate`] writes into its output buffer.
pub struct DeviceGraph {
    rows: usize,
    dim: usize,
    dtype: DType,
    edges: usize,
    offsets: CudaSlice<u32>,
    cols: CudaSlice<u32>,
    x: DeviceFeatures,
    src_w: CudaSlice<f32>,
    items: CudaSlice<[u32; 4]>,
    num_items: u32,
    split_rows: CudaSlice<u32>,
    num_split_rows: u32,
    out: CudaSlice<f32>,
}

impl DeviceGraph {
    /// Destination rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Values per feature row.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Feature storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Edges in the block.
    pub fn edges(&self) -> usize {
        self.edges
    }
}

/// Builds the work items `{row, edge_begin, edge_end, split}` and the list of split rows.
pub(crate) fn build_items(offsets: &[u32], segment_edges_max: u32) -> (Vec<[u32; 4]>, Vec<u32>) {
    let mut items = Vec::with_capacity(offsets.len());
    let mut split = Vec::new();
    for (row, w) in offsets.windows(2).enumerate() {
        let (b, e) = (w[0], w[1]);
        let row = row as u32;
        if e - b <= segment_edges_max {
            items.push([row, b, e, 0]);
            continue;
        }
        split.push(row);
        let mut s = b;
        while s < e {
            let t = e.min(s + segment_edges_max);
            items.push([row, s, t, 1]);
            s = t;
        }
    }
    (items, split)
}

/// Sub-warp width for a feature width: enough lanes that each handles `CU_CHUNKS` vectors, 4 to 32.
pub(crate) fn lanes_per_row(dim: usize, vec: usize) -> u32 {
    let per_lane = vec * CU_CHUNKS;
    (dim.div_ceil(per_lane).next_power_of_two()).clamp(4, 32) as u32
}

/// One CUDA device with the crate's kernels loaded.
pub struct CudaEngine {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    agg_f32_v4: CudaFunction,
    agg_f32_v1: CudaFunction,
    agg_bf16_v4: CudaFunction,
    agg_bf16_v1: CudaFunction,
    init_split: CudaFunction,
    cosine: CudaFunction,
    sm_count: u32,
    name: String,
}

impl CudaEngine {
    /// Probes for the driver and NVRTC, opens device `ordinal`, and compiles the kernels for its
    /// compute capability.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        super::probe().map_err(|reason| KernelError::BackendUnavailable {
            backend: "cuda",
            reason,
        })?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("open device"))?;
        let (major, minor) = ctx.compute_capability().map_err(cuda_err("compute capability"))?;
        let arch = format!("{major}{minor}");
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("SM count"))?
            .max(1) as u32;
        // NVRTC takes a `&'static str` architecture only through `options`, so the string is passed there.
        let agg = ctx
            .load_module(super::compile_ptx(super::AGGREGATE_CU, "aggregate.cu", Some(&arch))?)
            .map_err(cuda_err("load aggregate.cu"))?;
        let sim = ctx
            .load_module(super::compile_ptx(super::SIMILARITY_CU, "similarity.cu", Some(&arch))?)
            .map_err(cuda_err("load similarity.cu"))?;
        let f = |m: &Arc<cudarc::driver::CudaModule>, n: &str| m.load_function(n).map_err(cuda_err("load function"));
        Ok(CudaEngine {
            stream: ctx.default_stream(),
            agg_f32_v4: f(&agg, "aggregate_f32_v4")?,
            agg_f32_v1: f(&agg, "aggregate_f32_v1")?,
            agg_bf16_v4: f(&agg, "aggregate_bf16_v4")?,
            agg_bf16_v1: f(&agg, "aggregate_bf16_v1")?,
            init_split: f(&agg, "init_split_rows")?,
            cosine: f(&sim, "cosine_f32")?,
            sm_count,
            name: format!("{name} (sm_{arch})"),
            ctx,
        })
    }

    /// The device's name and architecture.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Uploads a block and its features once.
    pub fn upload(&self, csr: &CsrRef<'_>, x: &Features<'_>) -> Result<DeviceGraph, KernelError> {
        if x.rows() != csr.num_src() {
            return Err(KernelError::Shape(format!(
                "features have {} rows, block has {}",
                x.rows(),
                csr.num_src()
            )));
        }
        if x.dim() > i32::MAX as usize || csr.num_edges() > u32::MAX as usize {
            return Err(KernelError::Limit("block too large for 32-bit kernel indices".into()));
        }
        let s = &self.stream;
        let (items, split) = build_items(csr.row_offsets(), SEGMENT_EDGES_MAX);
        let nonempty = |v: &[u32]| if v.is_empty() { vec![0u32] } else { v.to_vec() };
        let x_dev = match x.data() {
            FeatureData::F32(d) => DeviceFeatures::F32(s.clone_htod(d).map_err(cuda_err("upload features"))?),
            FeatureData::Bf16(d) => {
                let bits: Vec<u16> = d.iter().map(|v| v.to_bits()).collect();
                DeviceFeatures::Bf16(s.clone_htod(&bits).map_err(cuda_err("upload features"))?)
            }
        };
        let mut src_w = csr.src_inv_sqrt_degree();
        if src_w.is_empty() {
            src_w.push(0.0);
        }
        Ok(DeviceGraph {
            rows: csr.num_rows(),
            dim: x.dim(),
            dtype: x.dtype(),
            edges: csr.num_edges(),
            offsets: s.clone_htod(csr.row_offsets()).map_err(cuda_err("upload offsets"))?,
            cols: s
                .clone_htod(&nonempty(csr.col_indices()))
                .map_err(cuda_err("upload columns"))?,
            x: x_dev,
            src_w: s.clone_htod(&src_w).map_err(cuda_err("upload degrees"))?,
            num_items: items.len() as u32,
            items: s.clone_htod(&items).map_err(cuda_err("upload items"))?,
            num_split_rows: split.len() as u32,
            split_rows: s.clone_htod(&nonempty(&split)).map_err(cuda_err("upload split rows"))?,
            out: s
                .alloc_zeros((csr.num_rows() * x.dim()).max(1))
                .map_err(cuda_err("alloc output"))?,
        })
    }

    /// Enqueues one aggregation of `g` into its device output without waiting for it.
    pub fn launch_aggregate(&self, g: &mut DeviceGraph, op: AggOp) -> Result<(), KernelError> {
        if g.num_items == 0 {
            return Ok(());
        }
        let dim = g.dim as i32;
        let opc = op.code();
        if g.num_split_rows > 0 {
            let value = if op == AggOp::Max { f32::NEG_INFINITY } else { 0.0f32 };
            let total = (g.num_split_rows as u64 * g.dim as u64).div_ceil(BLOCK_THREADS as u64);
            let cfg = LaunchConfig {
                grid_dim: (total.clamp(1, (self.sm_count * BLOCKS_PER_SM) as u64) as u32, 1, 1),
                block_dim: (BLOCK_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(&self.init_split);
            b.arg(&g.split_rows)
                .arg(&g.num_split_rows)
                .arg(&dim)
                .arg(&value)
                .arg(&mut g.out);
            // SAFETY: argument types and order match `init_split_rows` in aggregate.cu; buffers are sized
            // by `upload` (split_rows holds num_split_rows rows, out holds rows × dim values).
            unsafe { b.launch(cfg) }.map_err(cuda_err("launch init_split_rows"))?;
        }
        let vec = if g.dim.is_multiple_of(4) { 4 } else { 1 };
        let lanes = lanes_per_row(g.dim, vec);
        let groups_per_block = BLOCK_THREADS / lanes;
        let blocks = g
            .num_items
            .div_ceil(groups_per_block)
            .clamp(1, self.sm_count * BLOCKS_PER_SM);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = match (&g.x, vec) {
            (DeviceFeatures::F32(_), 4) => &self.agg_f32_v4,
            (DeviceFeatures::F32(_), _) => &self.agg_f32_v1,
            (DeviceFeatures::Bf16(_), 4) => &self.agg_bf16_v4,
            (DeviceFeatures::Bf16(_), _) => &self.agg_bf16_v1,
        };
        let lanes_i = lanes as i32;
        let mut b = self.stream.launch_builder(func);
        b.arg(&g.offsets).arg(&g.cols);
        match &g.x {
            DeviceFeatures::F32(x) => b.arg(x),
            DeviceFeatures::Bf16(x) => b.arg(x),
        };
        b.arg(&g.src_w)
            .arg(&mut g.out)
            .arg(&g.items)
            .arg(&g.num_items)
            .arg(&dim)
            .arg(&opc)
            .arg(&lanes_i);
        // SAFETY: argument types and order match `aggregate_*` in aggregate.cu; every column index was
        // validated against the feature rows by `CsrRef::new`, and items only cover rows of the block.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch aggregate"))?;
        Ok(())
    }

    /// Waits for all enqueued work.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// Aggregates `g` on the device and waits; read the result with [`CudaEngine::read_output`].
    pub fn aggregate(&self, g: &mut DeviceGraph, op: AggOp) -> Result<(), KernelError> {
        self.launch_aggregate(g, op)?;
        self.synchronize()
    }

    /// Copies the output (`rows × dim` `f32`) back to the host.
    pub fn read_output(&self, g: &DeviceGraph) -> Result<Vec<f32>, KernelError> {
        let mut v = self.stream.clone_dtoh(&g.out).map_err(cuda_err("download output"))?;
        v.truncate(g.rows * g.dim);
        Ok(v)
    }

    /// Cosine similarity of `query` (`dim` values) against `candidates` (`n × dim`, row-major).
    pub fn cosine(&self, query: &[f32], candidates: &[f32]) -> Result<Vec<f32>, KernelError> {
        let dim = query.len();
        if dim == 0 || !candidates.len().is_multiple_of(dim) {
            return Err(KernelError::Shape(format!(
                "{} candidate values for dim {dim}",
                candidates.len()
            )));
        }
        let n = (candidates.len() / dim) as u32;
        if n == 0 {
            return Ok(Vec::new());
        }
        let qn = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        let s = &self.stream;
        let q = s.clone_htod(query).map_err(cuda_err("upload query"))?;
        let c = s.clone_htod(candidates).map_err(cuda_err("upload candidates"))?;
        let mut out = s.alloc_zeros::<f32>(n as usize).map_err(cuda_err("alloc scores"))?;
        let warps = BLOCK_THREADS / 32;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(warps).clamp(1, self.sm_count * BLOCKS_PER_SM), 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let dim_i = dim as i32;
        let mut b = s.launch_builder(&self.cosine);
        b.arg(&q).arg(&qn).arg(&c).arg(&n).arg(&dim_i).arg(&mut out);
        // SAFETY: argument types and order match `cosine_f32` in similarity.cu; sizes were checked above.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch cosine"))?;
        s.clone_dtoh(&out).map_err(cuda_err("download scores"))
    }

    /// The context, for callers that share it.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_rows_are_split_into_segments() {
        // Rows: 0 empty, 1 with 3 edges, 2 with 7 edges (split at 3).
        let (items, split) = build_items(&[0, 0, 3, 10], 3);
        assert_eq!(
            items,
            vec![[0, 0, 0, 0], [1, 0, 3, 0], [2, 3, 6, 1], [2, 6, 9, 1], [2, 9, 10, 1]]
        );
        assert_eq!(split, vec![2]);
    }

    #[test]
    fn sub_warp_width_follows_the_feature_width() {
        assert_eq!(
            [16, 64, 128, 256, 1024].map(|k| lanes_per_row(k, 4)),
            [4, 8, 16, 32, 32]
        );
        assert_eq!([1, 17, 63].map(|k| lanes_per_row(k, 1)), [4, 16, 32]);
    }
}
