// Neighbour aggregation over a CSR block (rows = destinations), compiled at run time by NVRTC.
// No headers are included so that NVRTC needs no CUDA toolkit: bf16 is handled as raw 16-bit words
// (a bf16 is the high half of an f32, so widening is a shift).
//
// Work decomposition: the host builds a list of work items {row, edge_begin, edge_end, split}. A row with
// more than `segment_edges_max` edges is cut into several items (split = 1) that different warps process
// concurrently and combine with atomics; all other rows are one item and are written without atomics.
// A sub-warp of G lanes (G = 4, 8, 16 or 32, a power of two chosen from K) handles one item: lanes run
// across the K columns with 16-byte float4 loads (f32) or 8-byte loads of four bf16, and the item's
// column indices are loaded once, G at a time and coalesced, then broadcast with __shfl_sync.
//
// Ops: 0 sum, 1 mean, 2 max, 3 GCN-normalised sum. Mean and GCN fold their row factor into the per-edge
// weight (1/deg, or rsqrt(deg_i) * src_w[j]) so that split segments stay independent and additive.
// Empty rows write 0.

#define OP_SUM 0
#define OP_MEAN 1
#define OP_MAX 2
#define OP_GCN 3
#define CHUNKS 2

struct F32Src {
    typedef float T;
    static __device__ __forceinline__ float4 load4(const float* p) {
        return __ldg(reinterpret_cast<const float4*>(p));
    }
    static __device__ __forceinline__ float load1(const float* p) { return __ldg(p); }
};

struct Bf16Src {
    typedef unsigned short T;
    static __device__ __forceinline__ float4 load4(const unsigned short* p) {
        uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
        return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                           __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
    }
    static __device__ __forceinline__ float load1(const unsigned short* p) {
        return __uint_as_float(((unsigned int)__ldg(p)) << 16);
    }
};

// Float max through integer atomics: non-negative floats order like signed ints, negative floats order
// in reverse like unsigned ints. The target must have been initialised to -inf.
__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
    if (v >= 0.0f) {
        atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
    } else {
        atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
    }
}

__device__ __forceinline__ float combine(int op, float acc, float v, float w) {
    if (op == OP_MAX) return v > acc ? v : acc;
    return fmaf(v, w, acc);
}

__device__ __forceinline__ void emit(float* dst, float v, int op, bool split) {
    if (!split) {
        *dst = v;
    } else if (op == OP_MAX) {
        atomic_max_float(dst, v);
    } else {
        atomicAdd(dst, v);
    }
}

// VEC = 4 requires dim % 4 == 0 (and thus 16-byte aligned f32 rows, 8-byte aligned bf16 rows).
template <typename S, int VEC>
__device__ __forceinline__ void aggregate_item(const unsigned int* __restrict__ row_offsets,
                                               const unsigned int* __restrict__ cols,
                                               const typename S::T* __restrict__ x,
                                               const float* __restrict__ src_w, float* __restrict__ out,
                                               uint4 item, int dim, int op, int g, int lane,
                                               unsigned int gmask) {
    const unsigned int row = item.x, begin = item.y, end = item.z;
    const bool split = item.w != 0;
    const unsigned int deg = row_offsets[row + 1] - row_offsets[row];
    const float row_w = op == OP_MEAN ? 1.0f / (float)deg : (op == OP_GCN ? rsqrtf((float)deg) : 1.0f);
    const float init = op == OP_MAX ? __int_as_float(0xff800000) : 0.0f;  // -inf, no math header needed
    const int tile = g * VEC * CHUNKS;
    for (int c0 = 0; c0 < dim; c0 += tile) {
        float acc[CHUNKS][VEC];
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k)
#pragma unroll
            for (int v = 0; v < VEC; ++v) acc[k][v] = init;
        for (unsigned int base = begin; base < end; base += g) {
            const unsigned int mine = base + lane < end ? __ldg(cols + base + lane) : 0u;
            float my_w = row_w;
            if (op == OP_GCN && base + lane < end) my_w *= __ldg(src_w + mine);
            const int n = (int)min((unsigned int)g, end - base);
#pragma unroll 4
            for (int t = 0; t < n; ++t) {
                const unsigned int j = __shfl_sync(gmask, mine, t, g);
                const float w = __shfl_sync(gmask, my_w, t, g);
                const typename S::T* xr = x + (size_t)j * dim;
#pragma unroll
                for (int k = 0; k < CHUNKS; ++k) {
                    const int c = c0 + (k * g + lane) * VEC;
                    if (c < dim) {
                        if (VEC == 4) {
                            float4 q = S::load4(xr + c);
                            acc[k][0] = combine(op, acc[k][0], q.x, w);
                            acc[k][VEC > 1 ? 1 : 0] = combine(op, acc[k][VEC > 1 ? 1 : 0], q.y, w);
                            acc[k][VEC > 2 ? 2 : 0] = combine(op, acc[k][VEC > 2 ? 2 : 0], q.z, w);
                            acc[k][VEC > 3 ? 3 : 0] = combine(op, acc[k][VEC > 3 ? 3 : 0], q.w, w);
                        } else {
                            acc[k][0] = combine(op, acc[k][0], S::load1(xr + c), w);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = c0 + (k * g + lane) * VEC;
            if (c < dim) {
                float* dst = out + (size_t)row * dim + c;
#pragma unroll
                for (int v = 0; v < VEC; ++v) emit(dst + v, deg == 0 ? 0.0f : acc[k][v], op, split);
            }
        }
    }
}

template <typename S, int VEC>
__device__ void aggregate_kernel(const unsigned int* row_offsets, const unsigned int* cols,
                                 const typename S::T* x, const float* src_w, float* out, const uint4* items,
                                 unsigned int num_items, int dim, int op, int g) {
    const int lane_in_warp = threadIdx.x & 31;
    const int sub = lane_in_warp / g;
    const int lane = lane_in_warp % g;
    const unsigned int gmask = (g == 32) ? 0xffffffffu : (((1u << g) - 1u) << (sub * g));
    const unsigned int groups_per_block = blockDim.x / g;
    const unsigned int group = blockIdx.x * groups_per_block + threadIdx.x / g;
    const unsigned int stride = gridDim.x * groups_per_block;
    for (unsigned int it = group; it < num_items; it += stride) {
        aggregate_item<S, VEC>(row_offsets, cols, x, src_w, out, items[it], dim, op, g, lane, gmask);
    }
}

extern "C" __global__ void aggregate_f32_v4(const unsigned int* row_offsets, const unsigned int* cols,
                                            const float* x, const float* src_w, float* out, const uint4* items,
                                            unsigned int num_items, int dim, int op, int g) {
    aggregate_kernel<F32Src, 4>(row_offsets, cols, x, src_w, out, items, num_items, dim, op, g);
}

extern "C" __global__ void aggregate_f32_v1(const unsigned int* row_offsets, const unsigned int* cols,
                                            const float* x, const float* src_w, float* out, const uint4* items,
                                            unsigned int num_items, int dim, int op, int g) {
    aggregate_kernel<F32Src, 1>(row_offsets, cols, x, src_w, out, items, num_items, dim, op, g);
}

extern "C" __global__ void aggregate_bf16_v4(const unsigned int* row_offsets, const unsigned int* cols,
                                             const unsigned short* x, const float* src_w, float* out,
                                             const uint4* items, unsigned int num_items, int dim, int op, int g) {
    aggregate_kernel<Bf16Src, 4>(row_offsets, cols, x, src_w, out, items, num_items, dim, op, g);
}

extern "C" __global__ void aggregate_bf16_v1(const unsigned int* row_offsets, const unsigned int* cols,
                                             const unsigned short* x, const float* src_w, float* out,
                                             const uint4* items, unsigned int num_items, int dim, int op, int g) {
    aggregate_kernel<Bf16Src, 1>(row_offsets, cols, x, src_w, out, items, num_items, dim, op, g);
}

// Initialises the output rows that split items combine into: 0 for sums, -inf for max.
extern "C" __global__ void init_split_rows(const unsigned int* rows, unsigned int num_rows, int dim, float value,
                                           float* out) {
    const size_t total = (size_t)num_rows * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        out[(size_t)rows[i / dim] * dim + i % dim] = value;
    }
}
