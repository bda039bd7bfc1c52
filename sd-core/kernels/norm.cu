// Row softmax, layer norm and NHWC group norm (+ optional activation). Statistics in fp32, shifted
// or centred so that E[x²] - E[x]² cancellation never happens, and reduced in a fixed order
// (no atomics), so results are deterministic.

// Softmax over rows of `cols` values: y = softmax(x * scale). With `causal`, row r (query
// r % q_len) sees columns 0..=q only; masked entries are written as 0. A row with every entry
// masked or -inf is written as zeros rather than NaN. One block per row.
template <typename TI, typename TO>
__device__ void softmax_rows(const TI* __restrict__ x, TO* __restrict__ y, u64 rows, int cols, float scale,
                             int causal, int q_len) {
    __shared__ float scratch[32];
    const u64 row = blockIdx.x;
    if (row >= rows) return;
    const TI* xr = x + row * (u64)cols;
    TO* yr = y + row * (u64)cols;
    const int limit = causal ? min(cols, (int)(row % (u64)q_len) + 1) : cols;
    const float scale_log2 = scale * 1.4426950408889634f;
    float m = SDRS_NEG_INF;
    for (int c = threadIdx.x; c < limit; c += blockDim.x) m = fmaxf(m, to_f32(xr[c]) * scale_log2);
    m = block_max(m, scratch);
    const float shift = m == SDRS_NEG_INF ? 0.0f : m;
    float s = 0.0f;
    for (int c = threadIdx.x; c < limit; c += blockDim.x) s += exp2f(fmaf(to_f32(xr[c]), scale_log2, -shift));
    s = block_sum(s, scratch);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float p = c < limit ? exp2f(fmaf(to_f32(xr[c]), scale_log2, -shift)) * inv : 0.0f;
        yr[c] = from_f32<TO>(p);
    }
}

// Layer norm over rows of `cols`: one warp per row, exact two-pass (mean, then centred variance),
// the row re-read from L1/L2 rather than held in registers so any width works.
template <typename T>
__device__ void layer_norm(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                           T* __restrict__ y, u64 rows, int cols, float eps) {
    const u64 row = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* xr = x + row * (u64)cols;
    T* yr = y + row * (u64)cols;
    float s = 0.0f;
    for (int c = lane; c < cols; c += 32) s += to_f32(xr[c]);
    const float mean = warp_sum(s) / (float)cols;
    float v = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        const float d = to_f32(xr[c]) - mean;
        v = fmaf(d, d, v);
    }
    const float rstd = rsqrtf(warp_sum(v) / (float)cols + eps);
    for (int c = lane; c < cols; c += 32) {
        const float d = (to_f32(xr[c]) - mean) * rstd;
        yr[c] = from_f32<T>(fmaf(d, to_f32(gamma[c]), to_f32(beta[c])));
    }
}

// Group norm, NHWC [B, HW, C], G groups of Cg = C / G channels, in three deterministic launches.
//
// 1. gn_stats, grid (ceil(HW / rows_per_blk), B): each thread owns channels c = tid, tid + blockDim…
//    and sums (x - K_c) and (x - K_c)² over the block's rows, K_c = the channel's value in the
//    block's first row (a shift that removes the cancellation of E[x²] - E[x]²). The per-channel
//    (mean, M2) go to shared memory, then one thread per group folds its channels in order with
//    Chan's parallel formula and writes partial[b][blk][g] = (mean, M2).
// 2. gn_finalize, grid B: one thread per group folds the blocks' partials in order into
//    stats[b][g] = (mean, rstd).
// 3. gn_apply: y = act((x - mean) * rstd * gamma + beta), one read and one write.
__device__ __forceinline__ void chan_merge(float& n_a, float& mean_a, float& m2_a, float n_b, float mean_b,
                                           float m2_b) {
    const float n = n_a + n_b;
    if (n_b == 0.0f) return;
    const float delta = mean_b - mean_a;
    const float fb = n_b / n;
    mean_a = fmaf(delta, fb, mean_a);
    m2_a = m2_a + m2_b + delta * delta * n_a * fb;
    n_a = n;
}

template <typename T>
__device__ void gn_stats(const T* __restrict__ x, float2* __restrict__ partial, int hw, int c, int groups,
                         int rows_per_blk) {
    extern __shared__ float smem[];  // [2 * c]: per-channel mean, then M2
    const int blk = blockIdx.x, nblk = gridDim.x, b = blockIdx.y;
    const int r0 = blk * rows_per_blk;
    const int r1 = min(hw, r0 + rows_per_blk);
    const float n = (float)(r1 - r0);
    const T* xb = x + (u64)b * hw * c;
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
        const float k = to_f32(xb[(u64)r0 * c + ch]);
        float s = 0.0f, ss = 0.0f;
        for (int r = r0; r < r1; ++r) {
            const float d = to_f32(xb[(u64)r * c + ch]) - k;
            s += d;
            ss = fmaf(d, d, ss);
        }
        smem[ch] = k + s / n;
        smem[c + ch] = fmaxf(ss - s * s / n, 0.0f);
    }
    __syncthreads();
    const int cg = c / groups;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
        for (int j = 0; j < cg; ++j) chan_merge(cnt, mean, m2, n, smem[g * cg + j], smem[c + g * cg + j]);
        partial[((u64)b * nblk + blk) * groups + g] = make_float2(mean, m2);
    }
}

__global__ void gn_finalize_impl(const float2* __restrict__ partial, float2* __restrict__ stats, int hw, int c,
                                 int groups, int rows_per_blk, int nblk, float eps) {
    const int b = blockIdx.x;
    const float cg = (float)(c / groups);
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
        for (int blk = 0; blk < nblk; ++blk) {
            const float rows = (float)(min(hw, (blk + 1) * rows_per_blk) - blk * rows_per_blk);
            const float2 p = partial[((u64)b * nblk + blk) * groups + g];
            chan_merge(cnt, mean, m2, rows * cg, p.x, p.y);
        }
        const float var = cnt > 0.0f ? m2 / cnt : 0.0f;
        stats[(u64)b * groups + g] = make_float2(mean, rsqrtf(var + eps));
    }
}

extern "C" __global__ void gn_finalize(const float2* partial, float2* stats, int hw, int c, int groups,
                                       int rows_per_blk, int nblk, float eps) {
    gn_finalize_impl(partial, stats, hw, c, groups, rows_per_blk, nblk, eps);
}

template <typename T>
__device__ void gn_apply(const T* __restrict__ x, const float2* __restrict__ stats, const T* __restrict__ gamma,
                         const T* __restrict__ beta, T* __restrict__ y, u64 n, int hw, int c, int groups,
                         int act) {
    const int cg = c / groups;
    GRID_STRIDE(i, n) {
        const int ch = (int)(i % (u64)c);
        const u64 b = i / ((u64)hw * c);
        const float2 st = stats[b * groups + ch / cg];
        const float v = fmaf((to_f32(x[i]) - st.x) * st.y, to_f32(gamma[ch]), to_f32(beta[ch]));
        y[i] = from_f32<T>(activate(v, act));
    }
}

#define SDRS_NORM(name, T)                                                                              \
    extern "C" __global__ void softmax_##name(const T* x, T* y, u64 rows, int cols, float scale,       \
                                              int causal, int q_len) {                                  \
        softmax_rows<T, T>(x, y, rows, cols, scale, causal, q_len);                                     \
    }                                                                                                   \
    extern "C" __global__ void softmax_scores_##name(const float* x, T* y, u64 rows, int cols,         \
                                                     float scale, int causal, int q_len) {              \
        softmax_rows<float, T>(x, y, rows, cols, scale, causal, q_len);                                 \
    }                                                                                                   \
    extern "C" __global__ void layer_norm_##name(const T* x, const T* gamma, const T* beta, T* y,      \
                                                 u64 rows, int cols, float eps) {                       \
        layer_norm<T>(x, gamma, beta, y, rows, cols, eps);                                              \
    }                                                                                                   \
    extern "C" __global__ void gn_stats_##name(const T* x, float2* partial, int hw, int c, int groups, \
                                               int rows_per_blk) {                                      \
        gn_stats<T>(x, partial, hw, c, groups, rows_per_blk);                                           \
    }                                                                                                   \
    extern "C" __global__ void gn_apply_##name(const T* x, const float2* stats, const T* gamma,         \
                                               const T* beta, T* y, u64 n, int hw, int c, int groups,  \
                                               int act) {                                               \
        gn_apply<T>(x, stats, gamma, beta, y, n, hw, c, groups, act);                                   \
    }

SDRS_FOR_EACH_DTYPE(SDRS_NORM)
