// Element-wise kernels: unary maps and activations, broadcast binary ops, linear combinations,
// GEGLU and dtype casts. All arithmetic is fp32; grid-stride loops over contiguous buffers.

// Unary op codes (shared with the Rust side): 0 affine x*a+b, 1 SiLU, 2 exact GELU,
// 3 quick GELU, 4 exp, 5 clamp to [a, b].
template <typename T>
__device__ void unary(const T* __restrict__ x, T* __restrict__ y, u64 n, int op, float a, float b) {
    GRID_STRIDE(i, n) {
        float v = to_f32(x[i]);
        float r;
        switch (op) {
            case 0: r = fmaf(v, a, b); break;
            case 1: r = activate(v, 1); break;
            case 2: r = activate(v, 2); break;
            case 3: r = activate(v, 3); break;
            case 4: r = expf(v); break;
            default: r = fminf(fmaxf(v, a), b); break;
        }
        y[i] = from_f32<T>(r);
    }
}

// Broadcast geometry: the output's dims, and per operand the element stride of each output dim
// (0 where the operand is broadcast). Rank is at most 6 (the Rust side folds leading dims).
struct BcastInfo {
    int rank;
    int dims[6];
    i64 a_strides[6];
    i64 b_strides[6];
};

__device__ __forceinline__ float binop(float a, float b, int op) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        default: return a / b;
    }
}

// `contiguous` = both operands have the output's shape: no index arithmetic.
template <typename T>
__device__ void binary(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, u64 n,
                       int op, int contiguous, BcastInfo info) {
    if (contiguous) {
        GRID_STRIDE(i, n) { y[i] = from_f32<T>(binop(to_f32(a[i]), to_f32(b[i]), op)); }
        return;
    }
    GRID_STRIDE(i, n) {
        u64 rem = i;
        i64 ia = 0, ib = 0;
        for (int d = info.rank - 1; d >= 0; --d) {
            const u64 idx = rem % (u64)info.dims[d];
            rem /= (u64)info.dims[d];
            ia += (i64)idx * info.a_strides[d];
            ib += (i64)idx * info.b_strides[d];
        }
        y[i] = from_f32<T>(binop(to_f32(a[ia]), to_f32(b[ib]), op));
    }
}

// Up to 8 terms of Σ c_i x_i in one pass; `acc` (fp32, may be null) is added first, so longer sums
// chain through an fp32 accumulator without rounding to 16 bits in between.
struct LinComb {
    const void* ptrs[8];
    float coefs[8];
    int terms;
};

template <typename T, typename O>
__device__ void lincomb(LinComb lc, const float* acc, O* y, u64 n) {  // acc may alias y
    GRID_STRIDE(i, n) {
        float s = acc ? acc[i] : 0.0f;
        for (int t = 0; t < lc.terms; ++t) s = fmaf(lc.coefs[t], to_f32(((const T*)lc.ptrs[t])[i]), s);
        y[i] = from_f32<O>(s);
    }
}

// GEGLU over the last dim: x is [rows, 2h] = [value | gate], y is [rows, h].
template <typename T>
__device__ void geglu(const T* __restrict__ x, T* __restrict__ y, u64 rows, u64 h) {
    GRID_STRIDE(i, rows * h) {
        const u64 r = i / h, j = i - r * h;
        const float v = to_f32(x[r * 2 * h + j]);
        const float g = to_f32(x[r * 2 * h + h + j]);
        y[i] = from_f32<T>(v * gelu_erf(g));
    }
}

template <typename S, typename D>
__device__ void cast(const S* __restrict__ x, D* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) { y[i] = from_f32<D>(to_f32(x[i])); }
}

#define SDRS_EW(name, T)                                                                               \
    extern "C" __global__ void unary_##name(const T* x, T* y, u64 n, int op, float a, float b) {     \
        unary<T>(x, y, n, op, a, b);                                                                   \
    }                                                                                                  \
    extern "C" __global__ void binary_##name(const T* a, const T* b, T* y, u64 n, int op, int contig, \
                                             BcastInfo info) {                                         \
        binary<T>(a, b, y, n, op, contig, info);                                                       \
    }                                                                                                  \
    extern "C" __global__ void lincomb_##name(LinComb lc, const float* acc, T* y, u64 n) {            \
        lincomb<T, T>(lc, acc, y, n);                                                                  \
    }                                                                                                  \
    extern "C" __global__ void lincomb_acc_##name(LinComb lc, const float* acc, float* y, u64 n) {     \
        lincomb<T, float>(lc, acc, y, n);                                                              \
    }                                                                                                  \
    extern "C" __global__ void geglu_##name(const T* x, T* y, u64 rows, u64 h) { geglu<T>(x, y, rows, h); } \
    extern "C" __global__ void cast_to_f32_##name(const T* x, float* y, u64 n) { cast<T, float>(x, y, n); } \
    extern "C" __global__ void cast_to_f16_##name(const T* x, f16_t* y, u64 n) { cast<T, f16_t>(x, y, n); } \
    extern "C" __global__ void cast_to_bf16_##name(const T* x, bf16_t* y, u64 n) { cast<T, bf16_t>(x, y, n); }

SDRS_FOR_EACH_DTYPE(SDRS_EW)
