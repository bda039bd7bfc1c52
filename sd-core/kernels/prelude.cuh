// Self-contained prelude for every sdrs kernel module.
//
// NVRTC 13.0 ships no cuda_fp16.h / cuda_bf16.h / stdint.h, so this file defines what the kernels need
// without including anything: 16-bit storage types with inline-PTX conversions, fp32 load/store
// helpers per dtype, warp reductions and the macros that stamp `extern "C"` kernels per dtype.
// The Rust side prepends it to each module's source before compiling.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// Storage-only 16-bit floats. Arithmetic is always done in fp32.
struct f16_t { u16 bits; };
struct bf16_t { u16 bits; };

#define SDRS_INF __int_as_float(0x7f800000)
#define SDRS_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_f32(bf16_t x) { return __uint_as_float(((u32)x.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float x) {
    f16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    return h;
}
// Round-to-nearest-even by integer arithmetic: works on every architecture (the PTX
// cvt.rn.bf16.f32 needs sm_80). NaN stays a quiet NaN.
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) {
    u32 u = __float_as_uint(x);
    bf16_t h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (u16)((u >> 16) | 0x0040u);
    } else {
        h.bits = (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return h;
}

// Packs two fp32 values into one 32-bit register of two 16-bit values, `lo` in the low half
// (the element with the lower index). cvt.rn.*x2.f32 d, a, b puts a in the UPPER half.
__device__ __forceinline__ u32 pack2(float lo, float hi, f16_t) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (u32)from_f32<f16_t>(lo).bits | ((u32)from_f32<f16_t>(hi).bits << 16);
#endif
}
__device__ __forceinline__ u32 pack2(float lo, float hi, bf16_t) {
    return (u32)from_f32<bf16_t>(lo).bits | ((u32)from_f32<bf16_t>(hi).bits << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions for blocks of up to 1024 threads. `scratch` holds 32 floats of shared
// memory; every thread of the block must call these and every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : SDRS_NEG_INF;
    return warp_max(v);
}

// Activations (codes shared with the Rust side: 0 identity, 1 SiLU, 2 exact GELU, 3 quick GELU).
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
        case 1: return x * sigmoidf(x);
        case 2: return gelu_erf(x);
        case 3: return x * sigmoidf(1.702f * x);
        default: return x;
    }
}

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// Stamps `M(name, type)` once per dtype.
#define SDRS_FOR_EACH_DTYPE(M) M(f32, float) M(f16, f16_t) M(bf16, bf16_t)
