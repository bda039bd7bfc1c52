//! Element-wise kernels: activations, affine maps and broadcasting binary operations.

use rayon::prelude::*;

use crate::tensor::Activation;

/// Below this many elements, element-wise work stays on the calling thread.
const PAR_THRESHOLD: usize = 1 << 15;
const CHUNK: usize = 1 << 14;

/// Applies `f` to every element in place, in parallel for large buffers.
pub(crate) fn map_inplace(data: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    for_chunks(data, |chunk| chunk.iter_mut().for_each(|v| *v = f(*v)));
}

/// Runs `f` over `data` in place, on chunks in parallel for large buffers.
fn for_chunks(data: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() < PAR_THRESHOLD {
        f(data);
    } else {
        data.par_chunks_mut(CHUNK).for_each(f);
    }
}

/// `erf`-based GELU, as `torch.nn.functional.gelu` with `approximate="none"` (the exact form,
/// with a vectorisable `erf` accurate to 3 ulp).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + super::simd::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU (swish): `x * sigmoid(x)`.
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// CLIP's quick GELU: `x * sigmoid(1.702 x)`.
#[inline]
pub(crate) fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// Evaluates one activation.
#[inline]
pub(crate) fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Identity => x,
        Activation::Silu => silu(x),
        Activation::Gelu => gelu(x),
        Activation::QuickGelu => quick_gelu(x),
    }
}

/// Applies an activation to every element in place.
pub(crate) fn activation_inplace(data: &mut [f32], act: Activation) {
    match act {
        Activation::Identity => {}
        Activation::Silu => {
            if data.len() < PAR_THRESHOLD {
                super::simd::silu_inplace(data);
            } else {
                data.par_chunks_mut(CHUNK)
                    .for_each(super::simd::silu_inplace);
            }
        }
        Activation::Gelu => for_chunks(data, |chunk| {
            super::simd::vectorized(|| chunk.iter_mut().for_each(|v| *v = gelu(*v)))
        }),
        Activation::QuickGelu => map_inplace(data, quick_gelu),
    }
}

/// The binary operations with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    #[inline(always)]
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// The broadcast shape of two shapes (numpy rules), or `None` if they are incompatible.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Strides (in elements) that read `shape`, right-aligned into `out_shape`, with 0 on broadcast dims.
fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let rank = out_shape.len();
    let mut strides = vec![0; rank];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let o = i + rank - shape.len();
        strides[o] = if shape[i] == 1 { 0 } else { acc };
        acc *= shape[i];
    }
    strides
}

/// `out = a ∘ b` with broadcasting; `out_shape` must be [`broadcast_shape`] of the inputs.
pub(crate) fn binary(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out_shape: &[usize],
) -> Vec<f32> {
    let n: usize = out_shape.iter().product();
    if a_shape == b_shape {
        // One pass: out = a ∘ b, into a buffer every element of which is written.
        let mut out = super::pool::take(n);
        let work = |(o, (aa, bb)): (&mut [f32], (&[f32], &[f32]))| {
            super::simd::vectorized(|| match op {
                BinaryOp::Add => zip_map(o, aa, bb, |u, v| u + v),
                BinaryOp::Sub => zip_map(o, aa, bb, |u, v| u - v),
                BinaryOp::Mul => zip_map(o, aa, bb, |u, v| u * v),
                BinaryOp::Div => zip_map(o, aa, bb, |u, v| u / v),
            })
        };
        if n < PAR_THRESHOLD {
            work((&mut out, (a, b)));
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(work);
        }
        return out;
    }
    // Fast path: b repeats along the leading dims of a (bias-like, e.g. [C] onto [B, H, W, C]).
    let b_len = b.len();
    if a_shape == out_shape && b_len > 0 && out_shape.ends_with(trim_leading_ones(b_shape)) {
        let mut out = super::pool::take(n);
        let rows = |(o, aa): (&mut [f32], &[f32])| {
            super::simd::vectorized(|| {
                for (orow, arow) in o.chunks_mut(b_len).zip(aa.chunks(b_len)) {
                    match op {
                        BinaryOp::Add => zip_map(orow, arow, b, |u, v| u + v),
                        BinaryOp::Sub => zip_map(orow, arow, b, |u, v| u - v),
                        BinaryOp::Mul => zip_map(orow, arow, b, |u, v| u * v),
                        BinaryOp::Div => zip_map(orow, arow, b, |u, v| u / v),
                    }
                }
            })
        };
        if n < PAR_THRESHOLD {
            rows((&mut out, a));
        } else {
            let per_chunk = (CHUNK / b_len).max(1) * b_len;
            out.par_chunks_mut(per_chunk)
                .zip(a.par_chunks(per_chunk))
                .for_each(rows);
        }
        return out;
    }
    // General path: walk the output index with per-input strides.
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    let rank = out_shape.len();
    let mut out = vec![0.0; n];
    let mut idx = vec![0usize; rank];
    let (mut ia, mut ib) = (0usize, 0usize);
    for o in out.iter_mut() {
        *o = op.apply(a[ia], b[ib]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out_shape[d] {
                break;
            }
            ia -= sa[d] * out_shape[d];
            ib -= sb[d] * out_shape[d];
            idx[d] = 0;
        }
    }
    out
}

/// `out[i] = f(a[i], b[i])`, a loop the compiler vectorises once `f` is inlined.
#[inline(always)]
fn zip_map(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((x, &u), &v) in out.iter_mut().zip(a).zip(b) {
        *x = f(u, v);
    }
}

fn trim_leading_ones(shape: &[usize]) -> &[usize] {
    let first = shape.iter().position(|&d| d != 1).unwrap_or(shape.len());
    &shape[first..]
}

/// GEGLU: splits the last dimension `2h` into `[a, gate]` and returns `a * gelu(gate)` (`h` wide).
pub(crate) fn geglu(x: &[f32], last: usize) -> Vec<f32> {
    let half = last / 2;
    let rows = x.len() / last.max(1);
    let mut out = super::pool::take(rows * half);
    let work = |(row_out, row_in): (&mut [f32], &[f32])| {
        let (a, gate) = row_in.split_at(half);
        super::simd::vectorized(|| {
            for ((o, &av), &g) in row_out.iter_mut().zip(a).zip(gate) {
                *o = av * gelu(g);
            }
        });
    };
    if out.len() < PAR_THRESHOLD {
        out.chunks_mut(half).zip(x.chunks(last)).for_each(work);
    } else {
        out.par_chunks_mut(half)
            .zip(x.par_chunks(last))
            .for_each(work);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[2, 3, 4], &[4]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[2, 3], &[4]), None);
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect();
        // [2, 3] + [2, 1]
        let out = binary(BinaryOp::Add, &a, &[2, 3], &[10.0, 20.0], &[2, 1], &[2, 3]);
        assert_eq!(out, vec![10.0, 11.0, 12.0, 23.0, 24.0, 25.0]);
        // [2, 3] * [3]
        let out = binary(BinaryOp::Mul, &a, &[2, 3], &[1.0, 2.0, 3.0], &[3], &[2, 3]);
        assert_eq!(out, vec![0.0, 2.0, 6.0, 3.0, 8.0, 15.0]);
        // [3] - [2, 3] (lhs broadcast)
        let out = binary(BinaryOp::Sub, &[1.0, 1.0, 1.0], &[3], &a, &[2, 3], &[2, 3]);
        assert_eq!(out, vec![1.0, 0.0, -1.0, -2.0, -3.0, -4.0]);
    }

    #[test]
    fn large_same_shape_and_bias_like_ops_match_scalar() {
        // Above the parallel threshold, with a chunk boundary inside a row of the bias path.
        let n = 3 * PAR_THRESHOLD + 17;
        let a: Vec<f32> = (0..n).map(|i| (i % 97) as f32 - 40.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 13) as f32 + 0.5).collect();
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            let out = binary(op, &a, &[n], &b, &[n], &[n]);
            assert!(
                out.iter()
                    .enumerate()
                    .all(|(i, &o)| o == op.apply(a[i], b[i]))
            );
        }
        let c = 37;
        let rows = n / c;
        let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.25).collect();
        let out = binary(
            BinaryOp::Add,
            &a[..rows * c],
            &[rows, c],
            &bias,
            &[1, c],
            &[rows, c],
        );
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, &o)| o == a[i] + bias[i % c])
        );
    }

    #[test]
    fn activations_match_reference_values() {
        // torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.])) etc.
        assert!((gelu(-1.0) - -0.158_655_25).abs() < 1e-7);
        assert!((gelu(0.5) - 0.345_731_23).abs() < 1e-7);
        assert!((silu(2.0) - 1.761_594_2).abs() < 1e-6);
        assert!((quick_gelu(1.0) - 0.845_795_8).abs() < 1e-6);
    }
}
