// Cosine similarity of one query against a batch of candidates (row-major n x dim, f32), compiled at
// run time by NVRTC. One warp per candidate: lanes stride across dim accumulating the dot product and the
// candidate's squared norm, then reduce with __shfl_xor_sync. The query norm is computed once on the host.
// A zero-norm candidate (or query) scores 0. Top-k selection runs on the host.

extern "C" __global__ void cosine_f32(const float* __restrict__ query, float query_norm,
                                      const float* __restrict__ cand, unsigned int n, int dim,
                                      float* __restrict__ out) {
    const unsigned int warps_per_block = blockDim.x / 32;
    const int lane = threadIdx.x & 31;
    for (unsigned int r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < n; r += gridDim.x * warps_per_block) {
        const float* c = cand + (size_t)r * dim;
        float dot = 0.0f, nn = 0.0f;
        for (int k = lane; k < dim; k += 32) {
            const float v = __ldg(c + k);
            dot = fmaf(v, __ldg(query + k), dot);
            nn = fmaf(v, v, nn);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            dot += __shfl_xor_sync(0xffffffffu, dot, o);
            nn += __shfl_xor_sync(0xffffffffu, nn, o);
        }
        if (lane == 0) {
            const float denom = sqrtf(nn) * query_norm;
            out[r] = denom > 0.0f ? dot / denom : 0.0f;
        }
    }
}
