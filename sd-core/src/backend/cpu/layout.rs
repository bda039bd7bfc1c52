//! Data movement: permutations, slices, concatenation, upsampling and row gathers.

use rayon::prelude::*;

/// Transposes dimensions: output dim `i` is input dim `perm[i]`.
pub(crate) fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let in_strides = row_major_strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let n = x.len();
    let mut out = super::pool::take(n);
    if n == 0 {
        return out;
    }
    // Copy whole innermost rows: iterate over all but the last output dim.
    let inner = out_shape[rank - 1];
    let inner_stride = src_strides[rank - 1];
    let outer_shape = &out_shape[..rank - 1];
    let outer_strides = &src_strides[..rank - 1];
    let rows = n / inner.max(1);
    let fill_row = |(row, dst): (usize, &mut [f32])| {
        let mut rem = row;
        let mut src = 0;
        for d in (0..outer_shape.len()).rev() {
            src += (rem % outer_shape[d]) * outer_strides[d];
            rem /= outer_shape[d];
        }
        if inner_stride == 1 {
            dst.copy_from_slice(&x[src..src + inner]);
        } else {
            for (j, v) in dst.iter_mut().enumerate() {
                *v = x[src + j * inner_stride];
            }
        }
    };
    if n < 1 << 16 {
        out.chunks_mut(inner).enumerate().for_each(fill_row);
    } else {
        out.par_chunks_mut(inner).enumerate().for_each(fill_row);
    }
    debug_assert_eq!(rows * inner, n);
    out
}

/// Row-major strides of `shape`.
pub(crate) fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// `x.narrow(dim, start, len)`: a copy of `len` entries of dimension `dim` starting at `start`.
pub(crate) fn narrow(x: &[f32], shape: &[usize], dim: usize, start: usize, len: usize) -> Vec<f32> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let size = shape[dim];
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * size + start) * inner;
        out.extend_from_slice(&x[base..base + len * inner]);
    }
    out
}

/// Concatenates tensors that agree on every dimension but `dim`.
pub(crate) fn cat(parts: &[(&[f32], &[usize])], dim: usize) -> Vec<f32> {
    let Some(&(_, first_shape)) = parts.first() else {
        return Vec::new();
    };
    let outer: usize = first_shape[..dim].iter().product();
    let inner: usize = first_shape[dim + 1..].iter().product();
    let total: usize = parts.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (data, shape) in parts {
            let block = shape[dim] * inner;
            out.extend_from_slice(&data[o * block..(o + 1) * block]);
        }
    }
    out
}

/// Nearest-neighbour 2x upsampling of an NHWC tensor.
pub(crate) fn upsample_nearest2x_nhwc(
    x: &[f32],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
) -> Vec<f32> {
    let (oh, ow) = (2 * h, 2 * w);
    let mut out = super::pool::take(b * oh * ow * c);
    out.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let bi = row / oh;
            let y = (row % oh) / 2;
            let src_row = &x[(bi * h + y) * w * c..(bi * h + y + 1) * w * c];
            for xo in 0..ow {
                let xi = xo / 2;
                dst[xo * c..(xo + 1) * c].copy_from_slice(&src_row[xi * c..(xi + 1) * c]);
            }
        });
    out
}

/// Source index of output index `dst` for nearest resizing from `input` to `output` entries, as
/// PyTorch computes it for an explicit output size.
fn nearest_source(dst: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    ((dst as f32 * scale).floor() as usize).min(input - 1)
}

/// Nearest-neighbour resize of an NHWC tensor `[b, h, w, c]` to `out_h x out_w`.
pub(crate) fn upsample_nearest_nhwc(
    x: &[f32],
    dims: [usize; 4],
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let [b, h, w, c] = dims;
    let mut out = super::pool::take(b * out_h * out_w * c);
    if h == 0 || w == 0 {
        out.fill(0.0);
        return out;
    }
    out.par_chunks_mut(out_w * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let bi = row / out_h;
            let y = nearest_source(row % out_h, h, out_h);
            let src_row = &x[(bi * h + y) * w * c..(bi * h + y + 1) * w * c];
            for xo in 0..out_w {
                let xi = nearest_source(xo, w, out_w);
                dst[xo * c..(xo + 1) * c].copy_from_slice(&src_row[xi * c..(xi + 1) * c]);
            }
        });
    out
}

/// Gathers rows of a `[rows, width]` table.
pub(crate) fn gather_rows(table: &[f32], width: usize, ids: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * width);
    for &id in ids {
        out.extend_from_slice(&table[id * width..(id + 1) * width]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_transposes() {
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
        assert_eq!(
            permute(&x, &[2, 3], &[1, 0]),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        let y: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let p = permute(&y, &[2, 3, 4], &[2, 0, 1]);
        // p[k, i, j] = y[i, j, k]
        assert_eq!(p[0..6], [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]);
        assert_eq!(p[6], 1.0);
    }

    #[test]
    fn narrow_and_cat_round_trip() {
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let a = narrow(&x, &[2, 3, 4], 2, 0, 1);
        let b = narrow(&x, &[2, 3, 4], 2, 1, 3);
        assert_eq!(cat(&[(&a, &[2, 3, 1]), (&b, &[2, 3, 3])], 2), x);
    }

    #[test]
    fn upsample_repeats_pixels() {
        let x = vec![1.0, 2.0, 3.0, 4.0]; // 1x2x2x1
        let up = upsample_nearest2x_nhwc(&x, 1, 2, 2, 1);
        assert_eq!(
            up,
            vec![
                1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0
            ]
        );
    }
}
