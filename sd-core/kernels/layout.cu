// Data movement: permutations, strided row copies (narrow and concatenation), nearest upsampling,
// row gathers (embedding lookups) and im2col for NHWC convolutions. Element types are moved as
// their raw bits, so one instantiation per element size would do; they are stamped per dtype
// anyway to keep the `<op>_<dtype>` naming uniform.

// out[i] = x[offset(i)] where output dim d walks input stride src_strides[d]. Rank ≤ 6.
struct PermInfo {
    int rank;
    int dims[6];
    i64 src_strides[6];
};

template <typename T>
__device__ void permute(const T* __restrict__ x, T* __restrict__ y, u64 n, PermInfo info) {
    GRID_STRIDE(i, n) {
        u64 rem = i;
        i64 src = 0;
        for (int d = info.rank - 1; d >= 0; --d) {
            const u64 idx = rem % (u64)info.dims[d];
            rem /= (u64)info.dims[d];
            src += (i64)idx * info.src_strides[d];
        }
        y[i] = x[src];
    }
}

// y[r * dst_ld + dst_off + c] = x[r * src_ld + src_off + c] for r < rows, c < cols.
template <typename T>
__device__ void copy_rows(const T* __restrict__ x, T* __restrict__ y, u64 rows, u64 cols, u64 src_ld,
                          u64 src_off, u64 dst_ld, u64 dst_off) {
    GRID_STRIDE(i, rows * cols) {
        const u64 r = i / cols, c = i - r * cols;
        y[r * dst_ld + dst_off + c] = x[r * src_ld + src_off + c];
    }
}

// PyTorch's nearest rule, in fp32 as the CPU backend computes it: src = min(floor(dst * in/out), in-1).
__device__ __forceinline__ int nearest_src(int dst, int in, int out) {
    const float scale = (float)in / (float)out;
    const int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

template <typename T>
__device__ void upsample_nearest(const T* __restrict__ x, T* __restrict__ y, int b, int h, int w, int c,
                                 int oh, int ow) {
    const u64 n = (u64)b * oh * ow * c;
    GRID_STRIDE(i, n) {
        u64 rem = i;
        const int ch = (int)(rem % c); rem /= c;
        const int ox = (int)(rem % ow); rem /= ow;
        const int oy = (int)(rem % oh); rem /= oh;
        const int bi = (int)rem;
        const int iy = nearest_src(oy, h, oh), ix = nearest_src(ox, w, ow);
        y[i] = x[(((u64)bi * h + iy) * w + ix) * c + ch];
    }
}

template <typename T>
__device__ void gather_rows(const T* __restrict__ table, const int* __restrict__ ids, T* __restrict__ y,
                            u64 count, u64 width) {
    GRID_STRIDE(i, count * width) {
        const u64 r = i / width, c = i - r * width;
        y[i] = table[(u64)ids[r] * width + c];
    }
}

// im2col for an NHWC input [B, H, W, C] into rows [m0, m0 + rows) of the column matrix
// [B*OH*OW, KH*KW*C], K ordered (kh, kw, c) with c fastest: exactly the row-major view of an HWIO
// weight [KH, KW, C, Cout] as a [K, Cout] matrix. Padding reads as zero.
struct ConvGeom {
    int b, h, w, c, kh, kw, oh, ow, stride, pad_top, pad_left;
};

template <typename T>
__device__ void im2col(const T* __restrict__ x, T* __restrict__ col, ConvGeom g, u64 m0, u64 rows) {
    const u64 k = (u64)g.kh * g.kw * g.c;
    GRID_STRIDE(i, rows * k) {
        const u64 r = i / k, kk = i - r * k;
        const u64 m = m0 + r;
        const int ch = (int)(kk % g.c);
        const int s = (int)((kk / g.c) % g.kw);
        const int rr = (int)(kk / ((u64)g.c * g.kw));
        const int ox = (int)(m % g.ow);
        const int oy = (int)((m / g.ow) % g.oh);
        const int bi = (int)(m / ((u64)g.ow * g.oh));
        const int iy = oy * g.stride - g.pad_top + rr;
        const int ix = ox * g.stride - g.pad_left + s;
        T v = from_f32<T>(0.0f);
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) v = x[(((u64)bi * g.h + iy) * g.w + ix) * g.c + ch];
        col[i] = v;
    }
}

#define SDRS_LAYOUT(name, T)                                                                          \
    extern "C" __global__ void permute_##name(const T* x, T* y, u64 n, PermInfo info) {              \
        permute<T>(x, y, n, info);                                                                    \
    }                                                                                                 \
    extern "C" __global__ void copy_rows_##name(const T* x, T* y, u64 rows, u64 cols, u64 src_ld,    \
                                                u64 src_off, u64 dst_ld, u64 dst_off) {               \
        copy_rows<T>(x, y, rows, cols, src_ld, src_off, dst_ld, dst_off);                             \
    }                                                                                                 \
    extern "C" __global__ void upsample_nearest_##name(const T* x, T* y, int b, int h, int w, int c, \
                                                       int oh, int ow) {                              \
        upsample_nearest<T>(x, y, b, h, w, c, oh, ow);                                                \
    }                                                                                                 \
    extern "C" __global__ void gather_rows_##name(const T* table, const int* ids, T* y, u64 count,   \
                                                  u64 width) {                                        \
        gather_rows<T>(table, ids, y, count, width);                                                  \
    }                                                                                                 \
    extern "C" __global__ void im2col_##name(const T* x, T* col, ConvGeom g, u64 m0, u64 rows) {     \
        im2col<T>(x, col, g, m0, rows);                                                               \
    }

SDRS_FOR_EACH_DTYPE(SDRS_LAYOUT)
