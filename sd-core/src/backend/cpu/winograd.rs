//! 3x3 stride-1 "same" convolutions with Winograd's minimal filtering F(2x2, 3x3).
//!
//! Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015 (arXiv:1509.09308).
//! Each 2x2 block of output pixels (a *tile*) is computed from the 4x4 input patch around it as
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Over channels the element-wise product becomes 16 independent
//! matrix products `V[e] (tiles x c_in) · U[e] (c_in x c_out)`, which carry the work: 16 products
//! of `c_in·c_out` per tile instead of 36 for im2col, 2.25x fewer multiply-adds.
//!
//! The transforms use only additions and halvings, so the result stays within a few `f32`
//! roundings of the direct convolution (the tests bound it against an `f64` reference).
//!
//! Work is split into blocks of whole tile rows, so each block writes a contiguous range of output
//! rows; blocks run in parallel, each with its own transformed-input and product buffers of a few
//! megabytes. The transformed weight `U` (16·c_in·c_out values) is built once per call and shared;
//! when it would exceed 32 MiB (the widest layers), output channels are processed in chunks.

use rayon::prelude::*;

use super::conv::ConvGeometry;
use super::gemm::{MatRef, Threads, sgemm};
use super::simd::vectorized;

/// Per-block buffer budget for the transformed input and the products, in `f32` elements (8 MiB).
const BLOCK_BUDGET: usize = 1 << 21;
/// Largest transformed weight built at once, in `f32` elements (32 MiB).
const U_BUDGET: usize = 1 << 23;
/// Block budget when blocks run one at a time, each product on every thread (32 MiB).
const SHARED_BLOCK_BUDGET: usize = 1 << 23;
/// Largest transformed input kept for all tiles at once by [`channel_parallel`], in `f32`
/// elements (64 MiB).
const V_BUDGET: usize = 1 << 24;
/// Fewest tiles per thread for blocks to run in parallel with single-threaded products.
const MIN_BLOCK_TILES: usize = 128;
/// Channels handled together in the transforms (one AVX2 register per row of the patch).
const CB: usize = 8;

/// Whether the Winograd path computes this convolution (3x3, stride 1, padding 1 on every side).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    let p = g.params;
    g.kh == 3
        && g.kw == 3
        && p.stride == 1
        && p.pad_top == 1
        && p.pad_left == 1
        && p.pad_bottom == 1
        && p.pad_right == 1
}

/// Whether the Winograd path is expected to beat im2col for this shape: it needs enough tiles to
/// amortise the weight transform, which touches `16·c_in·c_out` values per call.
pub(crate) fn pays(g: &ConvGeometry) -> bool {
    let tiles = g.batch * g.in_h.div_ceil(2) * g.in_w.div_ceil(2);
    tiles >= 96 && g.c_in >= 8 && g.c_out >= 8
}

/// Input channels per parallel task of [`transform_weight`].
const WEIGHT_BLOCK: usize = 32;
/// Output channels transformed together (fixed-size arrays the compiler keeps in vector
/// registers).
const LANES: usize = 16;

/// `G g Gᵀ` for `LANES` kernels at once: `g[ky][kx][lane]` in, product `4i + j` out.
#[inline(always)]
fn transform_lanes(g: &[[[f32; LANES]; 3]; 3]) -> [[f32; LANES]; 16] {
    let half = |a: &[f32; LANES], b: &[f32; LANES], c: &[f32; LANES], sign: f32| {
        let mut r = [0.0f32; LANES];
        for l in 0..LANES {
            r[l] = 0.5 * (a[l] + sign * b[l] + c[l]);
        }
        r
    };
    // Rows of G g: one array per kernel column kx.
    let mut gg = [[[0.0f32; LANES]; 3]; 4];
    for kx in 0..3 {
        gg[0][kx] = g[0][kx];
        gg[1][kx] = half(&g[0][kx], &g[1][kx], &g[2][kx], 1.0);
        gg[2][kx] = half(&g[0][kx], &g[1][kx], &g[2][kx], -1.0);
        gg[3][kx] = g[2][kx];
    }
    let mut out = [[0.0f32; LANES]; 16];
    for (i, r) in gg.iter().enumerate() {
        out[4 * i] = r[0];
        out[4 * i + 1] = half(&r[0], &r[1], &r[2], 1.0);
        out[4 * i + 2] = half(&r[0], &r[1], &r[2], -1.0);
        out[4 * i + 3] = r[2];
    }
    out
}

/// The transformed weight `U` for output channels `co0 .. co0 + cw`, laid out `[16][c_in][cw]`:
/// product `e` reads the row-major `c_in x cw` matrix at `e·c_in·cw`.
///
/// One pass over the weight: each task takes a block of input channels, reads their nine taps
/// once and writes all sixteen products (`G g Gᵀ`), so the weight is read once per call rather
/// than once per row of `G` (the transform is memory-bound: 9 floats in, 16 out per pair).
fn transform_weight(
    weight: &[f32],
    c_in: usize,
    c_out: usize,
    (co0, cw): (usize, usize),
) -> Vec<f32> {
    let plane = c_in * cw;
    let mut u = super::pool::take(16 * plane);
    // Per block of input channels, its rows of each of the 16 product planes.
    let mut planes: Vec<_> = u
        .chunks_mut(plane)
        .map(|p| p.chunks_mut(WEIGHT_BLOCK * cw))
        .collect();
    let blocks: Vec<Vec<&mut [f32]>> = (0..c_in.div_ceil(WEIGHT_BLOCK))
        .map(|_| planes.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    blocks
        .into_par_iter()
        .enumerate()
        .for_each(|(bi, mut rows)| {
            vectorized(|| {
                let ci0 = bi * WEIGHT_BLOCK;
                for local in 0..(c_in - ci0).min(WEIGHT_BLOCK) {
                    let ci = ci0 + local;
                    let tap_at = |ky: usize, kx: usize| ((ky * 3 + kx) * c_in + ci) * c_out + co0;
                    let mut co = 0;
                    while co < cw {
                        let n = LANES.min(cw - co);
                        // The nine taps of LANES output channels (zero past the end).
                        let mut g = [[[0.0f32; LANES]; 3]; 3];
                        for (ky, gy) in g.iter_mut().enumerate() {
                            for (kx, gyx) in gy.iter_mut().enumerate() {
                                let at = tap_at(ky, kx) + co;
                                gyx[..n].copy_from_slice(&weight[at..at + n]);
                            }
                        }
                        let products = transform_lanes(&g);
                        let at = local * cw + co;
                        for (dst, src) in rows.iter_mut().zip(&products) {
                            dst[at..at + n].copy_from_slice(&src[..n]);
                        }
                        co += n;
                    }
                }
            })
        });
    u
}

/// Runs the convolution; `g` must satisfy [`applies`]. Returns `[batch, in_h, in_w, c_out]`.
pub(crate) fn conv3x3(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: ConvGeometry,
) -> Vec<f32> {
    let (h, w, c_in, c_out) = (g.in_h, g.in_w, g.c_in, g.c_out);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tile_rows = g.batch * th;
    // Every output pixel is written by the output transform.
    let mut out = super::pool::take(g.batch * h * w * c_out);
    if out.is_empty() {
        return out;
    }
    // Output channels per pass: all of them, unless the transformed weight would exceed
    // U_BUDGET (the widest layers); then in chunks as wide as it allows (at least 128, a
    // multiple of 16) and a narrower last one. Measured slightly faster than equal chunks.
    let co_chunk = if 16 * c_in * c_out <= U_BUDGET {
        c_out
    } else {
        (U_BUDGET / (16 * c_in)).max(128) / 16 * 16
    };

    let threads = super::num_threads();
    let tiles_total = th * tw * g.batch;
    let parallel_blocks = tiles_total >= threads * MIN_BLOCK_TILES && co_chunk == c_out;
    if !parallel_blocks && threads > 1 && 16 * tiles_total * c_in <= V_BUDGET {
        channel_parallel(x, weight, bias, g, &mut out, threads);
        return out;
    }

    // Blocks of whole tile rows. With enough tiles, blocks run in parallel, one single-threaded
    // product per block and thread, sized to BLOCK_BUDGET and to keep every thread busy. With few
    // tiles (deep, wide layers), per-thread blocks would be too short for efficient products and
    // each would stream all of `U`; then blocks run one after another, as large as allowed, with
    // each product split across the threads.
    let per_tile = 16 * (c_in + co_chunk);
    let rows_per_block = if parallel_blocks {
        let budget_rows = (BLOCK_BUDGET / (per_tile * tw)).max(1);
        let balance_rows = tile_rows.div_ceil(2 * threads).max(1);
        budget_rows.min(balance_rows)
    } else {
        (SHARED_BLOCK_BUDGET / (per_tile * tw)).max(1)
    };

    // Image rows covered by tile rows `r0 .. r1`: tile row r = b·th + ty covers rows 2ty and
    // 2ty + 1 of batch item b, clipped to h.
    let row_start = |r: usize| (r / th) * h + 2 * (r % th);
    let row_end = |r: usize| (r / th) * h + (2 * (r % th) + 2).min(h);
    let mut blocks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    let mut rest: &mut [f32] = &mut out;
    let mut r0 = 0;
    while r0 < tile_rows {
        let r1 = (r0 + rows_per_block).min(tile_rows);
        let len = (row_end(r1 - 1) - row_start(r0)) * w * c_out;
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        blocks.push((r0, r1, head));
        rest = tail;
        r0 = r1;
    }

    // Products and output transform of one block for output channels `co0 .. co0 + cw`; `v`
    // already holds the block's transformed input.
    let products = |u: &[f32],
                    v: &[f32],
                    m: &mut Vec<f32>,
                    (r0, r1, out_block): (usize, usize, &mut [f32]),
                    (co0, cw): (usize, usize),
                    gemm_threads: Threads| {
        let tiles = (r1 - r0) * tw;
        m.resize(tiles * 16 * cw, 0.0);
        for e in 0..16 {
            sgemm(
                tiles,
                cw,
                c_in,
                MatRef::row_major(&v[e * tiles * c_in..(e + 1) * tiles * c_in], c_in),
                MatRef::row_major(&u[e * c_in * cw..(e + 1) * c_in * cw], cw),
                &mut m[e * tiles * cw..(e + 1) * tiles * cw],
                false,
                gemm_threads,
            );
        }
        let bias = bias.map(|b| &b[co0..co0 + cw]);
        output_transform(m, bias, &g, r0, r1, out_block, (co0, cw));
    };
    if parallel_blocks {
        let u = transform_weight(weight, c_in, c_out, (0, c_out));
        blocks.into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(v, m), (r0, r1, out_block)| {
                v.resize((r1 - r0) * tw * 16 * c_in, 0.0);
                input_transform(x, &g, r0, r1, v);
                products(&u, v, m, (r0, r1, out_block), (0, c_out), Threads::Single);
            },
        );
        super::pool::give(u);
    } else {
        let (mut v, mut m) = (Vec::new(), Vec::new());
        let single_block = blocks.len() == 1;
        let mut co0 = 0;
        while co0 < c_out {
            let cw = co_chunk.min(c_out - co0);
            let u = transform_weight(weight, c_in, c_out, (co0, cw));
            for (r0, r1, out_block) in blocks.iter_mut() {
                // With one block, its transformed input serves every channel chunk.
                if !single_block || co0 == 0 {
                    v.resize((*r1 - *r0) * tw * 16 * c_in, 0.0);
                    input_transform(x, &g, *r0, *r1, &mut v);
                }
                products(
                    &u,
                    &v,
                    &mut m,
                    (*r0, *r1, &mut **out_block),
                    (co0, cw),
                    Threads::All,
                );
            }
            super::pool::give(u);
            co0 += cw;
        }
    }
    out
}

/// The convolution for few tiles and many channels (the deep, wide layers), where products
/// split across threads leave them idle: the transformed input of every tile is built once
/// (blocks of tile rows in parallel), then chunks of output channels run in parallel, each
/// transforming its slice of the weight and running single-threaded products over all tiles
/// into a buffer of its own, which is finally copied into place.
fn channel_parallel(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: ConvGeometry,
    out: &mut [f32],
    threads: usize,
) {
    let (h, w, c_in, c_out) = (g.in_h, g.in_w, g.c_in, g.c_out);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tile_rows = g.batch * th;
    let row_start = |r: usize| (r / th) * h + 2 * (r % th);
    let row_end = |r: usize| (r / th) * h + (2 * (r % th) + 2).min(h);

    let rows_per = tile_rows.div_ceil(threads).max(1);
    let ranges: Vec<(usize, usize)> = (0..tile_rows)
        .step_by(rows_per)
        .map(|r0| (r0, (r0 + rows_per).min(tile_rows)))
        .collect();
    let vs: Vec<Vec<f32>> = ranges
        .par_iter()
        .map(|&(r0, r1)| {
            let mut v = super::pool::take((r1 - r0) * tw * 16 * c_in);
            input_transform(x, &g, r0, r1, &mut v);
            v
        })
        .collect();

    // Chunks of output channels: a multiple of the thread count, each chunk's transformed
    // weight within its share of U_BUDGET, widths a multiple of 16.
    let max_cw = (U_BUDGET / threads / (16 * c_in)).max(16);
    let count = c_out.div_ceil(max_cw).div_ceil(threads) * threads;
    let cw = c_out.div_ceil(count).div_ceil(16) * 16;
    let chunks: Vec<(usize, usize)> = (0..c_out)
        .step_by(cw)
        .map(|co0| (co0, cw.min(c_out - co0)))
        .collect();
    let pixels = g.batch * h * w;
    let parts: Vec<Vec<f32>> = chunks
        .par_iter()
        .map(|&(co0, cw)| {
            let u = transform_weight(weight, c_in, c_out, (co0, cw));
            let mut part = super::pool::take(pixels * cw);
            let gp = ConvGeometry { c_out: cw, ..g };
            let bias = bias.map(|b| &b[co0..co0 + cw]);
            let mut m = Vec::new();
            let mut rest: &mut [f32] = &mut part;
            for (&(r0, r1), v) in ranges.iter().zip(&vs) {
                let len = (row_end(r1 - 1) - row_start(r0)) * w * cw;
                let (block_out, tail) = std::mem::take(&mut rest).split_at_mut(len);
                rest = tail;
                let tiles = (r1 - r0) * tw;
                m.resize(tiles * 16 * cw, 0.0);
                for e in 0..16 {
                    sgemm(
                        tiles,
                        cw,
                        c_in,
                        MatRef::row_major(&v[e * tiles * c_in..(e + 1) * tiles * c_in], c_in),
                        MatRef::row_major(&u[e * c_in * cw..(e + 1) * c_in * cw], cw),
                        &mut m[e * tiles * cw..(e + 1) * tiles * cw],
                        false,
                        Threads::Single,
                    );
                }
                output_transform(&m, bias, &gp, r0, r1, block_out, (0, cw));
            }
            super::pool::give(u);
            part
        })
        .collect();
    vs.into_iter().for_each(super::pool::give);

    const PIXELS_PER_TASK: usize = 256;
    out.par_chunks_mut(PIXELS_PER_TASK * c_out)
        .enumerate()
        .for_each(|(i, dst)| {
            let p0 = i * PIXELS_PER_TASK;
            for (p, row) in dst.chunks_mut(c_out).enumerate() {
                for (&(co0, cw), part) in chunks.iter().zip(&parts) {
                    let at = (p0 + p) * cw;
                    row[co0..co0 + cw].copy_from_slice(&part[at..at + cw]);
                }
            }
        });
    parts.into_iter().for_each(super::pool::give);
}

/// Writes `Bᵀ d B` for every tile of tile rows `r0 .. r1` into `v`, laid out `[16][tile][c_in]`.
fn input_transform(x: &[f32], g: &ConvGeometry, r0: usize, r1: usize, v: &mut [f32]) {
    let (h, w, c) = (g.in_h, g.in_w, g.c_in);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = (r1 - r0) * tw;
    let avx2 = super::simd::has_avx2_fma();
    vectorized(|| {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            for tx in 0..tw {
                let t = (r - r0) * tw + tx;
                // Offsets of the 16 input pixels of the patch, or None outside the image.
                let mut src = [None; 16];
                for (i, s) in src.iter_mut().enumerate() {
                    let iy = (2 * ty + i / 4).wrapping_sub(1);
                    let ix = (2 * tx + i % 4).wrapping_sub(1);
                    if iy < h && ix < w {
                        *s = Some(((b * h + iy) * w + ix) * c);
                    }
                }
                let mut c0 = 0;
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 and FMA support was checked at run time (`avx2`).
                    unsafe { avx2::input_tile(x, &src, c, v, tiles, t) };
                    c0 = c - c % 8;
                }
                while c0 < c {
                    let cw = CB.min(c - c0);
                    let mut d = [[0.0f32; CB]; 16];
                    for (di, s) in d.iter_mut().zip(&src) {
                        if let Some(off) = *s {
                            load(di, &x[off + c0..off + c0 + cw]);
                        }
                    }
                    let bt = transform_patch(&d);
                    for (e, row) in bt.iter().enumerate() {
                        let off = (e * tiles + t) * c + c0;
                        store(&mut v[off..off + cw], row);
                    }
                    c0 += cw;
                }
            }
        }
    });
}

/// `Bᵀ d B` of one 4x4 patch (row-major, index `4·row + col`), lane by lane.
#[inline(always)]
fn transform_patch(d: &[[f32; CB]; 16]) -> [[f32; CB]; 16] {
    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], applied to columns then rows.
    let mut t = [[0.0f32; CB]; 16];
    for col in 0..4 {
        for l in 0..CB {
            let (d0, d1, d2, d3) = (d[col][l], d[4 + col][l], d[8 + col][l], d[12 + col][l]);
            t[col][l] = d0 - d2;
            t[4 + col][l] = d1 + d2;
            t[8 + col][l] = d2 - d1;
            t[12 + col][l] = d1 - d3;
        }
    }
    let mut o = [[0.0f32; CB]; 16];
    for row in 0..4 {
        for l in 0..CB {
            let (t0, t1, t2, t3) = (
                t[4 * row][l],
                t[4 * row + 1][l],
                t[4 * row + 2][l],
                t[4 * row + 3][l],
            );
            o[4 * row][l] = t0 - t2;
            o[4 * row + 1][l] = t1 + t2;
            o[4 * row + 2][l] = t2 - t1;
            o[4 * row + 3][l] = t1 - t3;
        }
    }
    o
}

/// Copies `src` (at most `CB` values) into the front of `dst`; a fixed-size copy when full.
#[inline(always)]
fn load(dst: &mut [f32; CB], src: &[f32]) {
    match <&[f32; CB]>::try_from(src) {
        Ok(full) => *dst = *full,
        Err(_) => dst[..src.len()].copy_from_slice(src),
    }
}

/// Copies the front of `src` into `dst` (at most `CB` values); a fixed-size copy when full.
#[inline(always)]
fn store(dst: &mut [f32], src: &[f32; CB]) {
    match <&mut [f32; CB]>::try_from(&mut *dst) {
        Ok(full) => *full = *src,
        Err(_) => {
            let n = dst.len();
            dst.copy_from_slice(&src[..n]);
        }
    }
}

/// Turns the products `m` (`[16][tile][c]`) of tile rows `r0 .. r1` into output channels
/// `co0 .. co0 + c` of the pixels `Aᵀ m A + bias` (`bias` holds those `c` channels), written into
/// `out`, which starts at the first output row of tile row `r0`.
fn output_transform(
    m: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    r0: usize,
    r1: usize,
    out: &mut [f32],
    (co0, c): (usize, usize),
) {
    let (h, w, c_out) = (g.in_h, g.in_w, g.c_out);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let row0 = (r0 / th) * h + 2 * (r0 % th);
    let tiles = (r1 - r0) * tw;
    let avx2 = super::simd::has_avx2_fma();
    vectorized(|| {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            for tx in 0..tw {
                let t = (r - r0) * tw + tx;
                let mut c0 = 0;
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    let out_px = |i: usize| {
                        let (oy, ox) = (2 * ty + i / 2, 2 * tx + i % 2);
                        (oy < h && ox < w).then(|| (((b * h + oy) - row0) * w + ox) * c_out + co0)
                    };
                    let dst = [out_px(0), out_px(1), out_px(2), out_px(3)];
                    // SAFETY: AVX2 and FMA support was checked at run time (`avx2`).
                    unsafe { avx2::output_tile(m, bias, c, tiles, t, &dst, out) };
                    c0 = c - c % 8;
                }
                while c0 < c {
                    let cw = CB.min(c - c0);
                    let mut s = [[0.0f32; CB]; 16];
                    for (e, se) in s.iter_mut().enumerate() {
                        let off = (e * tiles + t) * c + c0;
                        load(se, &m[off..off + cw]);
                    }
                    let mut bias_l = [0.0f32; CB];
                    if let Some(bias) = bias {
                        load(&mut bias_l, &bias[c0..c0 + cw]);
                    }
                    let y = inverse_patch(&s, &bias_l);
                    for (i, yi) in y.iter().enumerate() {
                        let oy = 2 * ty + i / 2;
                        let ox = 2 * tx + i % 2;
                        if oy < h && ox < w {
                            let off = (((b * h + oy) - row0) * w + ox) * c_out + co0 + c0;
                            store(&mut out[off..off + cw], yi);
                        }
                    }
                    c0 += cw;
                }
            }
        }
    });
}

/// `Aᵀ m A + bias` of one tile: the 2x2 output pixels, row-major.
#[inline(always)]
fn inverse_patch(m: &[[f32; CB]; 16], bias: &[f32; CB]) -> [[f32; CB]; 4] {
    // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]], applied to columns then rows.
    let mut s = [[0.0f32; CB]; 8];
    for col in 0..4 {
        for l in 0..CB {
            let (m0, m1, m2, m3) = (m[col][l], m[4 + col][l], m[8 + col][l], m[12 + col][l]);
            s[col][l] = m0 + m1 + m2;
            s[4 + col][l] = m1 - m2 - m3;
        }
    }
    let mut y = [[0.0f32; CB]; 4];
    for row in 0..2 {
        for l in 0..CB {
            let (s0, s1, s2, s3) = (
                s[4 * row][l],
                s[4 * row + 1][l],
                s[4 * row + 2][l],
                s[4 * row + 3][l],
            );
            y[2 * row][l] = s0 + s1 + s2 + bias[l];
            y[2 * row + 1][l] = s1 - s2 - s3 + bias[l];
        }
    }
    y
}

/// The transforms for whole groups of 8 channels with AVX2 (the generic loops above handle the
/// remaining channels and processors without AVX2).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Loads 8 values at `s[off..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn ld(s: &[f32], off: usize) -> __m256 {
        let s = &s[off..off + 8];
        // SAFETY: `s` holds exactly 8 f32 values; unaligned loads are allowed.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    /// Stores 8 values at `d[off..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn st(d: &mut [f32], off: usize, v: __m256) {
        let d = &mut d[off..off + 8];
        // SAFETY: `d` holds exactly 8 f32 values; unaligned stores are allowed.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), v) }
    }

    /// `Bᵀ d B` of tile `t` for channels `0 .. c - c % 8`, written into `v` (`[16][tiles][c]`).
    /// `src` holds the offsets in `x` of the 16 patch pixels (`None`: padding).
    ///
    /// # Safety
    /// The processor must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_tile(
        x: &[f32],
        src: &[Option<usize>; 16],
        c: usize,
        v: &mut [f32],
        tiles: usize,
        t: usize,
    ) {
        let zero = _mm256_setzero_ps();
        let mut c0 = 0;
        while c0 + 8 <= c {
            let d: [__m256; 16] = std::array::from_fn(|i| match src[i] {
                Some(off) => ld(x, off + c0),
                None => zero,
            });
            // Columns: rows of Bᵀ applied down each column.
            let mut tt = [zero; 16];
            for col in 0..4 {
                let (d0, d1, d2, d3) = (d[col], d[4 + col], d[8 + col], d[12 + col]);
                tt[col] = _mm256_sub_ps(d0, d2);
                tt[4 + col] = _mm256_add_ps(d1, d2);
                tt[8 + col] = _mm256_sub_ps(d2, d1);
                tt[12 + col] = _mm256_sub_ps(d1, d3);
            }
            for row in 0..4 {
                let (t0, t1, t2, t3) = (
                    tt[4 * row],
                    tt[4 * row + 1],
                    tt[4 * row + 2],
                    tt[4 * row + 3],
                );
                let outs = [
                    _mm256_sub_ps(t0, t2),
                    _mm256_add_ps(t1, t2),
                    _mm256_sub_ps(t2, t1),
                    _mm256_sub_ps(t1, t3),
                ];
                for (j, o) in outs.into_iter().enumerate() {
                    st(v, ((4 * row + j) * tiles + t) * c + c0, o);
                }
            }
            c0 += 8;
        }
    }

    /// `Aᵀ m A + bias` of tile `t` for channels `0 .. c - c % 8`, reading `m` (`[16][tiles][c]`)
    /// and writing the 2x2 pixels at the offsets `dst` of `out` (`None`: outside the image).
    ///
    /// # Safety
    /// The processor must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_tile(
        m: &[f32],
        bias: Option<&[f32]>,
        c: usize,
        tiles: usize,
        t: usize,
        dst: &[Option<usize>; 4],
        out: &mut [f32],
    ) {
        let mut c0 = 0;
        while c0 + 8 <= c {
            let mm: [__m256; 16] = std::array::from_fn(|e| ld(m, (e * tiles + t) * c + c0));
            let b = match bias {
                Some(b) => ld(b, c0),
                None => _mm256_setzero_ps(),
            };
            // Columns: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3.
            let mut s = [_mm256_setzero_ps(); 8];
            for col in 0..4 {
                let (m0, m1, m2, m3) = (mm[col], mm[4 + col], mm[8 + col], mm[12 + col]);
                s[col] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                s[4 + col] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
            }
            for row in 0..2 {
                let (s0, s1, s2, s3) = (s[4 * row], s[4 * row + 1], s[4 * row + 2], s[4 * row + 3]);
                let y0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), s2), b);
                let y1 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s1, s2), s3), b);
                if let Some(off) = dst[2 * row] {
                    st(out, off + c0, y0);
                }
                if let Some(off) = dst[2 * row + 1] {
                    st(out, off + c0, y1);
                }
            }
            c0 += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Conv2dParams;

    fn geo(batch: usize, in_h: usize, in_w: usize, c_in: usize, c_out: usize) -> ConvGeometry {
        ConvGeometry {
            batch,
            in_h,
            in_w,
            c_in,
            kh: 3,
            kw: 3,
            c_out,
            params: Conv2dParams::new(1, 1),
        }
    }

    /// A deterministic pseudo-random value in [-1, 1).
    fn noise(i: usize, seed: u64) -> f32 {
        let mut z = (i as u64).wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// The direct convolution in `f64` at output pixel `(b, oy, ox)`, every output channel.
    fn direct_pixel(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        g: &ConvGeometry,
        (b, oy, ox): (usize, usize, usize),
    ) -> Vec<f64> {
        let mut acc: Vec<f64> = bias.iter().map(|&v| f64::from(v)).collect();
        for ky in 0..3 {
            for kx in 0..3 {
                let iy = (oy + ky).wrapping_sub(1);
                let ix = (ox + kx).wrapping_sub(1);
                if iy >= g.in_h || ix >= g.in_w {
                    continue;
                }
                for ci in 0..g.c_in {
                    let xv = f64::from(x[((b * g.in_h + iy) * g.in_w + ix) * g.c_in + ci]);
                    let wrow = &w[((ky * 3 + kx) * g.c_in + ci) * g.c_out..][..g.c_out];
                    for (a, &wv) in acc.iter_mut().zip(wrow) {
                        *a += xv * f64::from(wv);
                    }
                }
            }
        }
        acc
    }

    /// Max error over the checked pixels, relative to the largest |output| among them.
    fn relative_error(g: ConvGeometry, pixels: &[(usize, usize, usize)], wscale: f32) -> f64 {
        let x: Vec<f32> = (0..g.batch * g.in_h * g.in_w * g.c_in)
            .map(|i| noise(i, 1))
            .collect();
        let w: Vec<f32> = (0..9 * g.c_in * g.c_out)
            .map(|i| noise(i, 2) * wscale)
            .collect();
        let bias: Vec<f32> = (0..g.c_out).map(|i| noise(i, 3) * 0.1).collect();
        let got = conv3x3(&x, &w, Some(&bias), g);
        let (mut err, mut max) = (0.0f64, 0.0f64);
        for &p in pixels {
            let want = direct_pixel(&x, &w, &bias, &g, p);
            let (b, oy, ox) = p;
            let base = ((b * g.in_h + oy) * g.in_w + ox) * g.c_out;
            for (co, wv) in want.iter().enumerate() {
                err = err.max((f64::from(got[base + co]) - wv).abs());
                max = max.max(wv.abs());
            }
        }
        err / max
    }

    /// Every pixel of small images.
    fn all_pixels(g: &ConvGeometry) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for b in 0..g.batch {
            for y in 0..g.in_h {
                for x in 0..g.in_w {
                    v.push((b, y, x));
                }
            }
        }
        v
    }

    #[test]
    fn matches_direct_on_odd_and_small_shapes() {
        // Odd sizes, batch > 1, channel counts that are not multiples of the 8-lane blocks,
        // one-pixel images, and enough tile rows to split into several blocks.
        for g in [
            geo(2, 7, 5, 3, 4),
            geo(1, 1, 1, 5, 2),
            geo(3, 9, 12, 13, 17),
            geo(1, 40, 33, 8, 9),
            geo(2, 2, 31, 11, 1),
        ] {
            let err = relative_error(g, &all_pixels(&g), 1.0);
            assert!(err < 1e-6, "relative error {err} for {g:?}");
        }
    }

    #[test]
    fn matches_direct_at_sd_shapes() {
        // SD 1.5 UNet levels (batch 2) and the VAE's widest layer, weights scaled like a trained
        // model's (~1/sqrt(fan-in)); borders, corners and a spread of interior pixels checked.
        for (g, wscale) in [
            (geo(2, 64, 64, 320, 320), 0.06),
            (geo(2, 32, 32, 640, 640), 0.04),
            (geo(2, 16, 16, 1280, 1280), 0.03),
            (geo(1, 64, 64, 512, 512), 0.05),
            // A transformed weight over budget: output channels in chunks of 128 and 32, over
            // two blocks of tile rows.
            (geo(1, 40, 40, 4096, 160), 0.015),
            // Chunks of 256 and 53 channels (not a multiple of 8).
            (geo(1, 12, 20, 2048, 309), 0.02),
        ] {
            let mut pixels = Vec::new();
            for b in 0..g.batch {
                for &(y, x) in &[(0, 0), (0, 1), (1, 0), (g.in_h - 1, g.in_w - 1), (5, 9)] {
                    pixels.push((b, y, x));
                }
                for i in 0..6 {
                    pixels.push((b, (i * 7 + 3) % g.in_h, (i * 13 + 2) % g.in_w));
                }
            }
            // Two threads (as on the CI machines) take the parallel-blocks path at 64x64 and
            // 32x32 and the channel-parallel path at 16x16; one thread takes the sequential
            // path everywhere. Both are checked whatever the host's core count.
            for threads in [2, 1] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                let err = pool.install(|| relative_error(g, &pixels, wscale));
                eprintln!("winograd relative error {err:.3e} for {g:?} on {threads} thread(s)");
                assert!(
                    err <= 2e-6,
                    "relative error {err} for {g:?} on {threads} thread(s)"
                );
            }
        }
    }
}
