//! 2-D convolution over channels-last (NHWC) activations as tiled im2col + GEMM.
//!
//! The weight is `[kh, kw, c_in, c_out]` (HWIO), so that one im2col row (taps in `(ky, kx, ci)`
//! order, each tap a contiguous run of `c_in` channels) times the weight, read as a
//! `[kh·kw·c_in, c_out]` matrix, is one output pixel. Output pixels are processed in tiles whose
//! column buffer is about 2 MiB, so memory does not grow with the image; tiles run in parallel,
//! each with a single-threaded GEMM, unless there are too few tiles to feed every thread.

use rayon::prelude::*;

use super::gemm::{MatRef, Threads, sgemm};
use crate::tensor::Conv2dParams;

/// Column-buffer budget per tile, in `f32` elements (2 MiB).
const COL_BUDGET: usize = 1 << 19;
/// Fewest output pixels per tile (the column buffer may exceed the budget to reach it).
const MIN_TILE_ROWS: usize = 256;

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeometry {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub c_in: usize,
    pub kh: usize,
    pub kw: usize,
    pub c_out: usize,
    pub params: Conv2dParams,
}

impl ConvGeometry {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.in_h + self.params.pad_top + self.params.pad_bottom - self.kh) / self.params.stride
            + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.in_w + self.params.pad_left + self.params.pad_right - self.kw) / self.params.stride
            + 1
    }
}

/// Runs the convolution; returns `[batch, out_h, out_w, c_out]`.
pub(crate) fn conv2d_nhwc(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: ConvGeometry,
) -> Vec<f32> {
    if super::winograd::applies(&g) && super::winograd::pays(&g) {
        return super::winograd::conv3x3(x, weight, bias, g);
    }
    let (oh, ow) = (g.out_h(), g.out_w());
    let rows = g.batch * oh * ow;
    let k = g.kh * g.kw * g.c_in;
    let n = g.c_out;
    // Fully written: bias rows then accumulated products, or products.
    let mut out = super::pool::take(rows * n);
    if let Some(bias) = bias {
        out.par_chunks_mut(n)
            .for_each(|row| row.copy_from_slice(bias));
    }
    let accumulate = bias.is_some();
    let rhs = MatRef::row_major(weight, n);

    let pointwise = g.kh == 1
        && g.kw == 1
        && g.params.stride == 1
        && g.params.pad_top == 0
        && g.params.pad_left == 0
        && g.params.pad_bottom == 0
        && g.params.pad_right == 0;
    if pointwise {
        sgemm(
            rows,
            n,
            k,
            MatRef::row_major(x, k),
            rhs,
            &mut out,
            accumulate,
            Threads::All,
        );
        return out;
    }

    // At least MIN_TILE_ROWS rows per tile: shorter products re-read the whole weight matrix per
    // tile for little work, which makes deep layers (few pixels, large weights) memory-bound.
    let tile = (COL_BUDGET / k.max(1))
        .clamp(MIN_TILE_ROWS, 1024)
        .min(rows.max(1));
    let tiles = rows.div_ceil(tile);
    let threads = super::num_threads();
    let run_tile =
        |(t, out_tile): (usize, &mut [f32]), col: &mut Vec<f32>, gemm_threads: Threads| {
            let r0 = t * tile;
            let m = out_tile.len() / n;
            col.resize(m * k, 0.0);
            im2col_tile(x, &g, oh, ow, r0, m, col);
            sgemm(
                m,
                n,
                k,
                MatRef::row_major(col, k),
                rhs,
                out_tile,
                accumulate,
                gemm_threads,
            );
        };
    if tiles >= 2 * threads {
        out.par_chunks_mut(tile * n)
            .enumerate()
            .for_each_init(Vec::new, |col, item| run_tile(item, col, Threads::Single));
    } else {
        let mut col = Vec::new();
        for item in out.chunks_mut(tile * n).enumerate() {
            run_tile(item, &mut col, Threads::All);
        }
    }
    out
}

/// Fills `col` with the im2col rows of output pixels `r0 .. r0 + m`.
fn im2col_tile(
    x: &[f32],
    g: &ConvGeometry,
    oh: usize,
    ow: usize,
    r0: usize,
    m: usize,
    col: &mut [f32],
) {
    let c = g.c_in;
    let k = g.kh * g.kw * c;
    for (i, row) in col.chunks_mut(k).take(m).enumerate() {
        let r = r0 + i;
        let b = r / (oh * ow);
        let oy = (r / ow) % oh;
        let ox = r % ow;
        for ky in 0..g.kh {
            let iy = (oy * g.params.stride + ky) as isize - g.params.pad_top as isize;
            for kx in 0..g.kw {
                let ix = (ox * g.params.stride + kx) as isize - g.params.pad_left as isize;
                let dst = &mut row[(ky * g.kw + kx) * c..(ky * g.kw + kx + 1) * c];
                if iy < 0 || ix < 0 || iy as usize >= g.in_h || ix as usize >= g.in_w {
                    dst.fill(0.0);
                } else {
                    let src = ((b * g.in_h + iy as usize) * g.in_w + ix as usize) * c;
                    dst.copy_from_slice(&x[src..src + c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, the definition, for checking.
    fn direct(x: &[f32], w: &[f32], bias: &[f32], g: ConvGeometry) -> Vec<f32> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut out = vec![0.0; g.batch * oh * ow * g.c_out];
        for b in 0..g.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..g.c_out {
                        let mut acc = bias[co];
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.params.stride + ky) as isize
                                    - g.params.pad_top as isize;
                                let ix = (ox * g.params.stride + kx) as isize
                                    - g.params.pad_left as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy as usize >= g.in_h
                                    || ix as usize >= g.in_w
                                {
                                    continue;
                                }
                                for ci in 0..g.c_in {
                                    let xv = x[((b * g.in_h + iy as usize) * g.in_w + ix as usize)
                                        * g.c_in
                                        + ci];
                                    let wv = w[((ky * g.kw + kx) * g.c_in + ci) * g.c_out + co];
                                    acc += xv * wv;
                                }
                            }
                        }
                        out[((b * oh + oy) * ow + ox) * g.c_out + co] = acc;
                    }
                }
            }
        }
        out
    }

    fn check(g: ConvGeometry) {
        let nx = g.batch * g.in_h * g.in_w * g.c_in;
        let nw = g.kh * g.kw * g.c_in * g.c_out;
        let x: Vec<f32> = (0..nx)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..nw)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let bias: Vec<f32> = (0..g.c_out).map(|i| i as f32 * 0.25).collect();
        let want = direct(&x, &w, &bias, g);
        let got = conv2d_nhwc(&x, &w, Some(&bias), g);
        let err = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "max error {err} for {g:?}");
    }

    #[test]
    fn matches_direct_convolution() {
        let p = |stride, t, l, b, r| Conv2dParams {
            stride,
            pad_top: t,
            pad_left: l,
            pad_bottom: b,
            pad_right: r,
        };
        let geo = |batch, in_h, in_w, c_in, k, c_out, params| ConvGeometry {
            batch,
            in_h,
            in_w,
            c_in,
            kh: k,
            kw: k,
            c_out,
            params,
        };
        check(geo(2, 7, 5, 3, 3, 4, p(1, 1, 1, 1, 1)));
        check(geo(1, 8, 8, 5, 3, 6, p(2, 1, 1, 1, 1)));
        check(geo(1, 8, 6, 4, 3, 3, p(2, 0, 0, 1, 1)));
        check(geo(3, 4, 4, 6, 1, 2, p(1, 0, 0, 0, 0)));
        check(geo(1, 40, 40, 8, 3, 8, p(1, 1, 1, 1, 1)));
    }
}
