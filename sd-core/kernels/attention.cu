// Flash-attention forward (online softmax) for fp16/bf16 Q/K/V with fp32 accumulation, head dims
// 40, 64, 80 and 160 (SD 1.x/2.x: 40/80/160 in the UNet, 64 in CLIP and SD2).
//
// grid = (ceil(Tq / 64), B * H), block = 128 threads = 4 warps; each warp owns 16 query rows.
// Q is read once into registers as mma.sync A fragments; K and V tiles of BN keys are staged in
// shared memory (16-byte vector loads, rows past the end zero-filled); V's B fragments come from
// ldmatrix.trans. S = Q Kᵀ (m16n8k16, plus one
// m16n8k8 for the last 8 columns of d = 40), scores scaled by log2(e)/√d and masked to -inf past
// Tk (and past the query for causal), a base-2 online softmax in fp32 registers, then O += P V with
// P converted in registers from C fragments to A fragments. The row sum is kept per thread and
// reduced over the quad only at the end. Q/K/V/O are addressed with batch and token strides, so
// they can be read straight out of a packed [B, T, 3C] projection.
//
// Shared-memory rows are D + pad halves with (row words) ≡ 4 (mod 8), which makes the 32-bit
// fragment loads of 8 rows x 4 lanes bank-conflict free: 40, 72, 88, 168 halves.
//
// Needs sm_80+ (bf16 mma.sync, cp.async); the host uses the GEMM path on older devices, where
// this module compiles to empty kernels that are never launched.

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define SDRS_HAS_MMA 1
#endif

__device__ __forceinline__ void mma_k16(float* c, const u32* a, u32 b0, u32 b1, f16_t) {
#ifdef SDRS_HAS_MMA
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ void mma_k16(float* c, const u32* a, u32 b0, u32 b1, bf16_t) {
#ifdef SDRS_HAS_MMA
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ void mma_k8(float* c, const u32* a, u32 b0, f16_t) {
#ifdef SDRS_HAS_MMA
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
#endif
}
__device__ __forceinline__ void mma_k8(float* c, const u32* a, u32 b0, bf16_t) {
#ifdef SDRS_HAS_MMA
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
#endif
}

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ u32 ld_u32(const u16* p) { return *reinterpret_cast<const u32*>(p); }

// ldmatrix .trans: lanes 8i..8i+7 give the addresses of the 8 rows (16 bytes each) of matrix i;
// register i of lane l receives (M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4]), i.e. the B fragment of a
// row-major [k][n] tile.
__device__ __forceinline__ void ldsm_x4_trans(u32* r, const u16* p) {
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x2_trans(u32* r, const u16* p) {
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a));
}

// Starts asynchronous copies (cp.async, 16 bytes each, bypassing L1) of `rows` rows of D 16-bit
// values (token stride `ts` elements) into shared memory rows of SD halves; rows at or past `valid`
// are zero-filled by the copy itself (source size 0, reading nothing). The caller commits the group
// and waits for it.
__device__ __forceinline__ void cp_async16(u16* dst, const u16* src, bool valid) {
#ifdef SDRS_HAS_MMA
    const u32 d = (u32)__cvta_generic_to_shared(dst);
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef SDRS_HAS_MMA
    asm volatile("cp.async.commit_group;");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef SDRS_HAS_MMA
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}

template <int D, int SD>
__device__ __forceinline__ void load_tile_async(u16* __restrict__ dst, const u16* __restrict__ src, i64 ts,
                                                int rows, int valid) {
    constexpr int CHUNKS = D / 8;
    for (int idx = threadIdx.x; idx < rows * CHUNKS; idx += blockDim.x) {
        const int r = idx / CHUNKS, cc = idx - r * CHUNKS;
        const bool ok = r < valid;
        // A masked row still needs a valid address; row 0 of the tile is (valid >= 1 always).
        cp_async16(dst + r * SD + cc * 8, src + (ok ? (i64)r * ts : 0) + cc * 8, ok);
    }
}

struct AttnArgs {
    int tq, tk, heads, causal;
    i64 q_bs, q_ts, k_bs, k_ts, v_bs, v_ts, o_bs, o_ts;  // batch and token strides, in elements
    float scale_log2;                                     // softmax scale * log2(e)
};

template <int D, int BN, typename T>
__device__ void flash_fwd(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                          u16* __restrict__ o, const AttnArgs a) {
    constexpr int BQ = 64;
    constexpr int SD = D == 40 ? 40 : D + 8;
    constexpr int KS = D / 16;       // full k16 steps over the head dim
    constexpr bool REM = D % 16 != 0; // one trailing k8 step (d = 40)
    constexpr int NT = BN / 8;       // n8 score tiles per key block
    constexpr int DT = D / 8;        // n8 output tiles
    // Shared memory: the Q tile, then two stages each of K and V (double buffering: the copies of
    // key block j + 1 run while block j is computed).
    extern __shared__ __align__(16) u16 smem[];
    u16* qs = smem;
    u16* ks_base = qs + BQ * SD;
    u16* vs_base = ks_base + 2 * BN * SD;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.y / a.heads, h = blockIdx.y - b * a.heads;
    const int q0 = blockIdx.x * BQ;
    const u16* qb = q + b * a.q_bs + (i64)q0 * a.q_ts + h * D;
    const u16* kb = k + b * a.k_bs + h * D;
    const u16* vb = v + b * a.v_bs + h * D;

    int kv_end = a.tk;
    if (a.causal) kv_end = min(a.tk, q0 + BQ);
    load_tile_async<D, SD>(qs, qb, a.q_ts, BQ, a.tq - q0);
    cp_async_commit();
    if (kv_end > 0) {
        load_tile_async<D, SD>(ks_base, kb, a.k_ts, BN, a.tk);
        load_tile_async<D, SD>(vs_base, vb, a.v_ts, BN, a.tk);
    }
    cp_async_commit();
    cp_async_wait<1>();  // the Q group is complete (key block 0 may still be in flight)
    __syncthreads();

    u32 qa[KS > 0 ? KS : 1][4];
    u32 qr[2];
    {
        const u16* r0 = qs + (warp * 16 + g) * SD + 2 * t;
        const u16* r1 = r0 + 8 * SD;
#pragma unroll
        for (int s = 0; s < KS; ++s) {
            qa[s][0] = ld_u32(r0 + s * 16);
            qa[s][1] = ld_u32(r1 + s * 16);
            qa[s][2] = ld_u32(r0 + s * 16 + 8);
            qa[s][3] = ld_u32(r1 + s * 16 + 8);
        }
        if (REM) {
            qr[0] = ld_u32(r0 + KS * 16);
            qr[1] = ld_u32(r1 + KS * 16);
        }
    }

    float acc[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    float m0 = SDRS_NEG_INF, m1 = SDRS_NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;

    for (int kv0 = 0, stage = 0; kv0 < kv_end; kv0 += BN, stage ^= 1) {
        // Prefetch the next key block into the other stage (consumed one iteration ago, and
        // released by the barrier at the end of that iteration), then wait for this block only.
        const int next = kv0 + BN;
        if (next < kv_end) {
            const int other = (stage ^ 1) * BN * SD;
            load_tile_async<D, SD>(ks_base + other, kb + (i64)next * a.k_ts, a.k_ts, BN, a.tk - next);
            load_tile_async<D, SD>(vs_base + other, vb + (i64)next * a.v_ts, a.v_ts, BN, a.tk - next);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // block kv0 is visible to every warp
        const u16* ks = ks_base + stage * BN * SD;
        const u16* vs = vs_base + stage * BN * SD;

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const u16* kr = ks + (nt * 8 + g) * SD + 2 * t;
#pragma unroll
            for (int st = 0; st < KS; ++st) mma_k16(s[nt], qa[st], ld_u32(kr + st * 16), ld_u32(kr + st * 16 + 8), T());
            if (REM) mma_k8(s[nt], qr, ld_u32(kr + KS * 16), T());
        }

        float mx0 = SDRS_NEG_INF, mx1 = SDRS_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = kv0 + nt * 8 + 2 * t + (e & 1);
                const int row = e < 2 ? row0 : row1;
                const bool masked = col >= a.tk || (a.causal && col > row);
                s[nt][e] = masked ? SDRS_NEG_INF : s[nt][e] * a.scale_log2;
            }
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        // A row that has seen only masked keys keeps m = -inf; shift by 0 so exp gives 0, not NaN.
        const float sh0 = mn0 == SDRS_NEG_INF ? 0.0f : mn0;
        const float sh1 = mn1 == SDRS_NEG_INF ? 0.0f : mn1;
        const float al0 = ex2(m0 - sh0), al1 = ex2(m1 - sh1);
        m0 = mn0;
        m1 = mn1;
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = ex2(s[nt][0] - sh0);
            s[nt][1] = ex2(s[nt][1] - sh0);
            s[nt][2] = ex2(s[nt][2] - sh1);
            s[nt][3] = ex2(s[nt][3] - sh1);
            ps0 += s[nt][0] + s[nt][1];
            ps1 += s[nt][2] + s[nt][3];
        }
        l0 = fmaf(l0, al0, ps0);
        l1 = fmaf(l1, al1, ps1);
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            acc[dt][0] *= al0;
            acc[dt][1] *= al0;
            acc[dt][2] *= al1;
            acc[dt][3] *= al1;
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            u32 pa[4];
            pa[0] = pack2(s[2 * kk][0], s[2 * kk][1], T());
            pa[1] = pack2(s[2 * kk][2], s[2 * kk][3], T());
            pa[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T());
            pa[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T());
            // V fragments by ldmatrix.trans, two n8 tiles of the head dim per x4: lane l points at
            // key kk*16 + 8*((l/8)&1) + l%8, columns 8*(dt + l/16) ...; matrices 0/1 are keys
            // 0-7/8-15 of tile dt (its b0/b1), matrices 2/3 the same for tile dt+1.
            const u16* vrow = vs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * SD + (lane >> 4) * 8;
#pragma unroll
            for (int dt = 0; dt + 1 < DT; dt += 2) {
                u32 vb[4];
                ldsm_x4_trans(vb, vrow + dt * 8);
                mma_k16(acc[dt], pa, vb[0], vb[1], T());
                mma_k16(acc[dt + 1], pa, vb[2], vb[3], T());
            }
            if (DT % 2 != 0) {
                // The odd last tile: an x2 (only lanes 0-15's addresses are used).
                u32 vb[2];
                ldsm_x2_trans(vb, vs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * SD + (DT - 1) * 8);
                mma_k16(acc[DT - 1], pa, vb[0], vb[1], T());
            }
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    u16* ob = o + b * a.o_bs + h * D + 2 * t;
    if (row0 < a.tq) {
        u16* orow = ob + (i64)row0 * a.o_ts;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<u32*>(orow + dt * 8) = pack2(acc[dt][0] * inv0, acc[dt][1] * inv0, T());
    }
    if (row1 < a.tq) {
        u16* orow = ob + (i64)row1 * a.o_ts;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<u32*>(orow + dt * 8) = pack2(acc[dt][2] * inv1, acc[dt][3] * inv1, T());
    }
}

// MINB = CTAs per SM the register allocation must allow (__launch_bounds__): 4 for d = 40
// (<= 128 registers), 3 for d = 64 and 80 (<= 168), 2 for d = 160. Without it ptxas picked 80 registers
// and spilled for d = 40 bf16 on sm_80.
#define SDRS_FLASH(D, BN, MINB, name, T)                                                              \
    extern "C" __global__ void __launch_bounds__(128, MINB) flash_fwd_d##D##_##name(                  \
        const u16* q, const u16* k, const u16* v, u16* o, AttnArgs a) {                               \
        flash_fwd<D, BN, T>(q, k, v, o, a);                                                            \
    }

SDRS_FLASH(40, 64, 4, f16, f16_t)
SDRS_FLASH(64, 64, 3, f16, f16_t)
SDRS_FLASH(80, 64, 3, f16, f16_t)
SDRS_FLASH(160, 32, 2, f16, f16_t)
SDRS_FLASH(40, 64, 4, bf16, bf16_t)
SDRS_FLASH(64, 64, 3, bf16, bf16_t)
SDRS_FLASH(80, 64, 3, bf16, bf16_t)
SDRS_FLASH(160, 32, 2, bf16, bf16_t)
