//! Dense `f32` helpers for weight deltas on the CPU: row-major arrays with their shapes. The
//! matrix products run through [`Tensor::matmul`] (the CPU GEMM); the rest is plain loops.

use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// A row-major array and its shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dense {
    pub(crate) dims: Vec<usize>,
    pub(crate) data: Vec<f32>,
}

impl Dense {
    /// Wraps data whose length matches `dims`.
    pub(crate) fn new(dims: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        if dims.iter().product::<usize>() != data.len() {
            return Err(Error::Internal(format!(
                "dense array of {} values with shape {dims:?}",
                data.len()
            )));
        }
        Ok(Dense { dims, data })
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// Size of dimension `i` (1 past the last dimension).
    pub(crate) fn dim(&self, i: usize) -> usize {
        self.dims.get(i).copied().unwrap_or(1)
    }

    /// The same values seen as `[dims[0], rest]` (PyTorch's `reshape(shape[0], -1)`).
    pub(crate) fn rows(&self) -> (usize, usize) {
        let r = self.dim(0);
        (r, self.len().checked_div(r).unwrap_or(0))
    }

    /// The same values with another shape of equal size.
    pub(crate) fn reshaped(self, dims: Vec<usize>) -> Result<Self> {
        Dense::new(dims, self.data)
    }
}

/// `a [m, k] · b [k, n]`.
pub(crate) fn matmul(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Result<Vec<f32>> {
    if a.len() != m * k || b.len() != k * n {
        return Err(Error::Internal(format!(
            "matmul of {} and {} values as [{m}, {k}] x [{k}, {n}]",
            a.len(),
            b.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(Vec::new());
    }
    if k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let a = Tensor::from_vec(a.to_vec(), [m, k], Device::Cpu)?;
    let b = Tensor::from_vec(b.to_vec(), [k, n], Device::Cpu)?;
    a.matmul(&b)?.to_vec()
}

/// The transpose of `a [rows, cols]`.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

/// Swaps the two inner groups of `a [outer, x, y]` into `[outer, y, x]`.
fn swap_inner(a: &[f32], outer: usize, x: usize, y: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for o in 0..outer {
        let base = o * x * y;
        for i in 0..x {
            for j in 0..y {
                out[base + j * x + i] = a[base + i * y + j];
            }
        }
    }
    out
}

/// A1111 `lyco_helpers.make_weight_cp`: `einsum('i j k l, j r -> i r k l', t, wb)` then
/// `einsum('i j k l, i r -> r j k l', ·, wa)`, for `t [a, b, kh, kw]`, `wa [a, out]`,
/// `wb [b, in]`; the result is `[out, in, kh, kw]`.
pub(crate) fn make_weight_cp(t: &Dense, wa: &Dense, wb: &Dense) -> Result<Dense> {
    let (a, b) = (t.dim(0), t.dim(1));
    let k: usize = t.dims.iter().skip(2).product();
    let (wa_rows, out) = wa.rows();
    let (wb_rows, inp) = wb.rows();
    if t.dims.len() < 2 || wa_rows != a || wb_rows != b {
        return Err(Error::Internal(format!(
            "cp product of {:?}, {:?}, {:?}",
            t.dims, wa.dims, wb.dims
        )));
    }
    // [a, b, K] → [a, K, b] → · wb → [a, K, in]
    let tk = swap_inner(&t.data, a, b, k);
    let temp = matmul(&tk, a * k, b, &wb.data, inp)?;
    // waᵀ [out, a] · [a, K·in] → [out, K, in] → [out, in, K]
    let wat = transpose(&wa.data, a, out);
    let prod = matmul(&wat, out, a, &temp, k * inp)?;
    let data = swap_inner(&prod, out, k, inp);
    let mut dims = vec![out, inp];
    dims.extend(t.dims.iter().skip(2));
    Dense::new(dims, data)
}

/// A1111 `lyco_helpers.rebuild_cp_decomposition`: `einsum('n m k l, i n, m j -> i j k l', mid,
/// up, down)` with `up [out, r1]`, `down [r2, in]` flattened to matrices.
pub(crate) fn rebuild_cp(mid: &Dense, up: &Dense, down: &Dense) -> Result<Dense> {
    let (out, r1) = up.rows();
    let (r2, inp) = down.rows();
    let upt = Dense::new(vec![r1, out], transpose(&up.data, out, r1))?;
    let down2 = Dense::new(vec![r2, inp], down.data.clone())?;
    make_weight_cp(mid, &upt, &down2)
}

/// `torch.kron` of two arrays of equal rank: dimension `d` of the result is `a_d · b_d`, with
/// index `i_a · b_d + i_b`.
pub(crate) fn kron(a: &Dense, b: &Dense) -> Result<Dense> {
    if a.dims.len() != b.dims.len() {
        return Err(Error::Internal(format!(
            "kron of ranks {:?} and {:?}",
            a.dims, b.dims
        )));
    }
    let dims: Vec<usize> = a.dims.iter().zip(&b.dims).map(|(x, y)| x * y).collect();
    let total: usize = dims.iter().product();
    let mut data = vec![0.0f32; total];
    let rank = dims.len();
    let strides = |d: &[usize]| {
        let mut s = vec![1usize; d.len()];
        for i in (0..d.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * d[i + 1];
        }
        s
    };
    let (sa, sb, so) = (strides(&a.dims), strides(&b.dims), strides(&dims));
    let mut ia = vec![0usize; rank];
    for (fa, &va) in a.data.iter().enumerate() {
        let mut rem = fa;
        for d in 0..rank {
            ia[d] = rem / sa[d];
            rem %= sa[d];
        }
        for (fb, &vb) in b.data.iter().enumerate() {
            let mut rem = fb;
            let mut fo = 0;
            for d in 0..rank {
                let ib = rem / sb[d];
                rem %= sb[d];
                fo += (ia[d] * b.dims[d] + ib) * so[d];
            }
            data[fo] = va * vb;
        }
    }
    Dense::new(dims, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(dims: &[usize], data: &[f32]) -> Dense {
        Dense::new(dims.to_vec(), data.to_vec()).expect("dense")
    }

    #[test]
    fn matmul_and_transpose() {
        let c = matmul(
            &[1., 2., 3., 4., 5., 6.],
            2,
            3,
            &[1., 0., 0., 1., 1., 1.],
            2,
        )
        .expect("mm");
        assert_eq!(c, vec![4., 5., 10., 11.]);
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn kron_matches_its_definition() {
        let a = d(&[2, 1], &[1., 2.]);
        let b = d(&[1, 2], &[3., 4.]);
        let k = kron(&a, &b).expect("kron");
        assert_eq!(k.dims, vec![2, 2]);
        assert_eq!(k.data, vec![3., 4., 6., 8.]);
    }

    #[test]
    fn cp_with_identity_factors_is_the_core() {
        // t [2, 2, 1, 1], wa = wb = I: the result is t itself.
        let t = d(&[2, 2, 1, 1], &[1., 2., 3., 4.]);
        let eye = d(&[2, 2], &[1., 0., 0., 1.]);
        let w = make_weight_cp(&t, &eye, &eye).expect("cp");
        assert_eq!(w.dims, vec![2, 2, 1, 1]);
        assert_eq!(w.data, vec![1., 2., 3., 4.]);
        // A rank-1 core: out[r, j] = sum_i,jj t[i, jj] wb[jj, j] wa[i, r].
        let wa = d(&[2, 1], &[2., 3.]);
        let wb = d(&[2, 1], &[5., 7.]);
        let w = make_weight_cp(&t, &wa, &wb).expect("cp");
        let want = 2. * (1. * 5. + 2. * 7.) + 3. * (3. * 5. + 4. * 7.);
        assert_eq!(w.data, vec![want]);
    }
}
